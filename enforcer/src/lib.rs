//! The enforcer: a thin hyper + tokio reverse proxy that applies policies to slices of
//! traffic, captures errors, and streams events out without ever slowing a request.

pub mod auth;
pub mod breaker;
pub mod capture;
pub mod config;
pub mod events;
pub mod limiter;
pub mod metrics;
pub mod policy;
pub mod predicate;
pub mod route;
