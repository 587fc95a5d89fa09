//! The pipeline's functions, as plain Rust: masking, template mining, embeddings, clusters.
//!
//! The streaming job calls them through SQL (DataFusion registrations; Arroyo wrappers), and
//! the offline command runs them over files.

pub mod embed;
pub mod slice;
