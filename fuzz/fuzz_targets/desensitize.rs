//! `desensitize` / `template_id` on arbitrary UTF-8 must never panic, and masking a masked
//! text must change nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use schemas::text::{desensitize, template_id};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let once = desensitize(text);
    let _ = template_id(text);
    let _ = template_id(&once);
    let twice = desensitize(&once);
    assert_eq!(once, twice, "desensitize is not idempotent for {text:?}");
});
