//! Image references (`host:5000/a/b:tag`, `…@sha256:…`): splitting never panics, the name is a
//! prefix of the reference, and pinning a reference keeps its name.
#![no_main]

use enclii_domain::image::{image_name, pinned, split_tag};
use libfuzzer_sys::fuzz_target;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(reference) = std::str::from_utf8(data) else {
        return;
    };
    let name = image_name(reference);
    assert!(reference.starts_with(name), "{name:?} is not a prefix of {reference:?}");
    let (repository, tag) = split_tag(reference);
    assert!(reference.starts_with(repository));
    assert!(tag == "latest" || reference.ends_with(tag));
    // A name with no tag left in it (the well-formed case) survives pinning.
    if split_tag(name).1 == "latest" {
        assert_eq!(image_name(&pinned(reference, DIGEST)), name, "pinning {reference:?}");
    }
});
