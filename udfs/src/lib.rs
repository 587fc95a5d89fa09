//! The pipeline's functions, as plain Rust: masking, template mining, embeddings, clusters.
//!
//! The streaming job calls them through SQL (DataFusion registrations; Arroyo wrappers), and
//! the offline command runs them over files.

pub mod calibration;
pub mod cluster;
pub mod clusterer;
pub mod embed;
pub mod eval;
pub mod evidence;
#[cfg(feature = "faiss")]
pub mod faiss_index;
pub mod hnsw;
pub mod miner;
pub mod shared;
pub mod slice;
pub mod sql;
pub mod vector_cache;

pub use sql::mask_pii;
