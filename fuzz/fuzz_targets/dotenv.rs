//! `.env` text: parsing never panics, every entry comes from one line of the input, and no key
//! or value keeps surrounding whitespace or a line break.
#![no_main]

use enclii_domain::dotenv::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let entries = parse(text);
    assert!(entries.len() <= text.lines().count());
    for (key, value) in &entries {
        assert_eq!(key.trim(), key);
        assert!(!key.contains('\n') && !value.contains('\n'), "{key:?}={value:?}");
        assert!(text.contains(key.as_str()) && text.contains(value.as_str()));
    }
});
