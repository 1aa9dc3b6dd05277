//! Service Specs as JSON: parsing never panics, and a spec that parses comes back equal from its
//! canonical JSON.
#![no_main]

use enclii_domain::spec::{ServiceSpec, SpecFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = ServiceSpec::parse(text, SpecFormat::Json) else {
        return;
    };
    let json = serde_json::to_string(&spec).expect("a parsed spec serializes");
    let again = ServiceSpec::parse(&json, SpecFormat::Json).expect("its canonical JSON parses");
    assert_eq!(again, spec, "canonical JSON round trip of {text:?}");
});
