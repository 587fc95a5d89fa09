/*
[dependencies]
arroyo-udf-plugin = "0.2.0"
udfs = { git = "{{ LAG_UDFS_GIT }}", rev = "{{ LAG_UDFS_REV }}" }
*/

//! `embedding(text) -> Option<Vec<u8>>` for Arroyo: a thin wrapper over `udfs::sql::embedding`, the same function
//! the embedded engine registers with DataFusion (pipeline/src/udf/mod.rs).
//!
//! This file is posted verbatim as the UDF definition by `pipeline submit --arroyo`; the
//! comment above is the dependency header Arroyo's compiler turns into the crate's Cargo.toml
//! (`{{ NAME }}` is filled from the compiler's environment, or by `--udfs-git/--udfs-rev`).

use arroyo_udf_plugin::udf;

/// The desensitized text's vector as packed little-endian f32.
/// NULL or unusable text gives NULL, never a panic.
#[udf]
pub fn embedding(text: Option<&str>) -> Option<Vec<u8>> {
    udfs::sql::embedding(text)
}
