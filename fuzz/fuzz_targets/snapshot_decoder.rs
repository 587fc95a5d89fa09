//! `PolicySnapshot::from_json` on arbitrary bytes; a decoded snapshot must round-trip through
//! `to_json`/`from_json` unchanged and be accepted by `PolicyStore::apply` without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use schemas::PolicySnapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = PolicySnapshot::from_json(data) else { return };
    let bytes = snap.to_json();
    let again = PolicySnapshot::from_json(&bytes)
        .unwrap_or_else(|e| panic!("re-decoding our own encoding failed: {e}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(snap, again, "round trip changed the snapshot");
    for shadow in [false, true] {
        let store = enforcer::policy::PolicyStore::new(shadow, false);
        let _ = store.apply(&snap, 0);
        let _ = store.apply(&snap, u64::MAX / 2);
        let _ = store.apply_json(&bytes, 1_000);
    }
});
