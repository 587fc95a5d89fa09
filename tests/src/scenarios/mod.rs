//! The scenario bench: an upstream simulator with fault injection by slice and time, an
//! open-loop load generator that knows each request's ground truth, a scorer, and the runner
//! that plays every scenario with no protection, the classic breaker and limiter, and the
//! semantic pipeline. `cargo run --release -p e2e --bin scenarios -- --help`.

pub mod load;
pub mod plan;
pub mod report;
pub mod run;
pub mod score;
pub mod sim;
