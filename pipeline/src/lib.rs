//! The streaming job (see the crate description).
