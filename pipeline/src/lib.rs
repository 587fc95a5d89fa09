//! The streaming job: sources, windowed SQL with the UDFs, the policy applier, sinks, API.

pub mod applier;
pub mod engine;
pub mod io;
pub mod lifecycle;
pub mod udf;
