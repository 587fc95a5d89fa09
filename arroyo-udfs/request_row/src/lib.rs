/*
[dependencies]
arroyo-udf-plugin = "0.2.0"
udfs = { git = "{{ LAG_UDFS_GIT }}", rev = "{{ LAG_UDFS_REV }}" }
*/

//! `request_row(route, method, upstream, dimensions, sample_rate) -> Option<String>` for Arroyo:
//! a thin wrapper over `udfs::sql::request_row`, the same function the embedded engine
//! registers with DataFusion (pipeline/src/udf/slice.rs).
//!
//! This file is posted verbatim as the UDF definition by `pipeline submit --arroyo`; the
//! comment above is the dependency header Arroyo's compiler turns into the crate's Cargo.toml
//! (`{{ NAME }}` is filled from the compiler's environment, or by `--udfs-git/--udfs-rev`).

use arroyo_udf_plugin::udf;

/// One request's attributes as the JSON text the slice learner reads. NULL when the route or
/// the sample rate is NULL, never a panic.
#[udf]
pub fn request_row(
    route: Option<&str>,
    method: Option<&str>,
    upstream: Option<&str>,
    dimensions: Option<&str>,
    sample_rate: Option<f64>,
) -> Option<String> {
    udfs::sql::request_row(route, method, upstream, dimensions, sample_rate)
}
