//! Service Specs as YAML: parsing never panics, and a spec that parses comes back equal from its
//! canonical JSON and from YAML written out again.
#![no_main]

use enclii_domain::spec::{ServiceSpec, SpecFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = ServiceSpec::parse(text, SpecFormat::Yaml) else {
        return;
    };
    let json = serde_json::to_string(&spec).expect("a parsed spec serializes");
    let again = ServiceSpec::parse(&json, SpecFormat::Json).expect("its canonical JSON parses");
    assert_eq!(again, spec, "canonical JSON round trip of {text:?}");
    let yaml = serde_yaml::to_string(&spec).expect("a parsed spec serializes as YAML");
    let again = ServiceSpec::parse(&yaml, SpecFormat::Yaml).expect("its YAML parses");
    assert_eq!(again, spec, "YAML round trip of {text:?}");
});
