//! The pipeline functions (see the crate description).
