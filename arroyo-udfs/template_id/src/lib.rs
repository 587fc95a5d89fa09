/*
[dependencies]
arroyo-udf-plugin = "0.2.0"
udfs = { git = "{{ LAG_UDFS_GIT }}", rev = "{{ LAG_UDFS_REV }}" }
*/

//! `template_id(text) -> Option<i64>` for Arroyo: a thin wrapper over `udfs::sql::template_id`, the same function
//! the embedded engine registers with DataFusion (pipeline/src/udf/mod.rs).
//!
//! This file is posted verbatim as the UDF definition by `pipeline submit --arroyo`; the
//! comment above is the dependency header Arroyo's compiler turns into the crate's Cargo.toml
//! (`{{ NAME }}` is filled from the compiler's environment, or by `--udfs-git/--udfs-rev`).

use arroyo_udf_plugin::udf;

/// The mined template's id (bit-cast to signed), from this worker's template miner.
/// NULL or unusable text gives NULL, never a panic.
#[udf]
pub fn template_id(text: Option<&str>) -> Option<i64> {
    udfs::sql::template_id(text)
}
