//! The JSON Schema files in `schemas/json/` are generated from the wire types; this test
//! fails when a type changes without its checked-in schema being regenerated.
//! Regenerate with `UPDATE_SCHEMAS=1 cargo test -p e2e --test json_schemas`.

use std::path::PathBuf;

use schemars::{JsonSchema, schema_for};

fn check<T: JsonSchema>(file: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json")
        .join(file);
    let generated =
        serde_json::to_string_pretty(&schema_for!(T)).expect("schema serializes") + "\n";
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale; regenerate with UPDATE_SCHEMAS=1 cargo test -p e2e --test json_schemas",
        path.display()
    );
}

#[test]
fn gateway_record_schema_is_current() {
    check::<schemas::GatewayRecord>("gateway-record.schema.json");
}

#[test]
fn policy_snapshot_schema_is_current() {
    check::<schemas::PolicySnapshot>("policy-snapshot.schema.json");
}
