//! Input = predicate source, a NUL byte, then a body (no NUL: whole input is the source,
//! evaluated against a fixed body). Parse then `eval_bytes` must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

const DEFAULT_BODY: &[u8] = br#"{"code":1,"error":{"type":"x","msg":"boom"},"items":[1,2,{"a":null}]}"#;

fuzz_target!(|data: &[u8]| {
    let (src, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, DEFAULT_BODY),
    };
    let Ok(src) = std::str::from_utf8(src) else { return };
    if let Ok(p) = enforcer::predicate::Predicate::parse(src) {
        let _ = p.eval_bytes(body);
    }
});
