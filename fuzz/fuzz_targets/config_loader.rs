//! `Config::parse` on arbitrary UTF-8 must return Ok or Err, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = enforcer::config::Config::parse(text);
});
