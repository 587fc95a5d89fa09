//! The enforcer: a thin hyper + tokio reverse proxy that applies policies to slices of
//! traffic, captures errors, and streams events out without ever slowing a request.

pub mod auth;
pub mod body;
pub mod breaker;
pub mod capture;
pub mod clock;
pub mod cluster_bucket;
pub mod config;
pub mod demo;
pub mod etcd_source;
pub mod events;
pub mod kafka_sink;
pub mod limiter;
pub mod metrics;
pub mod policy;
pub mod policy_source;
pub mod predicate;
pub mod proxy;
pub mod redis_bucket;
pub mod route;
pub mod server;
pub mod sink;
pub mod telemetry;
