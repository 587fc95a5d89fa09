//! The streaming job: sources, windowed SQL with the UDFs, the policy applier, sinks, API.

pub mod api;
pub mod applier;
pub mod arroyo;
pub mod decider;
pub mod decision;
pub mod distributed;
pub mod embedded;
pub mod engine;
pub mod etcd;
pub mod io;
pub mod job;
pub mod kafka;
pub mod lifecycle;
pub mod policies_topic;
pub mod postgres;
pub mod redis_cache;
pub mod udf;
