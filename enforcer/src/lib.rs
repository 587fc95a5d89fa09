//! The enforcer (see the crate description).
