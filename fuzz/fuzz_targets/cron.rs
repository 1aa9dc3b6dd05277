//! Cron schedules: validation never panics on any text.
#![no_main]

use enclii_domain::spec::validate_cron;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = validate_cron(text);
});
