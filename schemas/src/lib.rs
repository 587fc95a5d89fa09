//! Contracts both sides of the gateway rely on.
//!
//! * [`event`]: what the enforcer emits — error events, traffic samples, per-route counts.
//! * [`policy`]: what the pipeline decides — slices, actions, policies and versioned snapshots,
//!   validated on the way in (parse, don't validate: a [`policy::PolicySnapshot`] that exists is valid).
//! * [`dimension`]: the names of the request dimensions slices are learned from.
//! * [`text`]: desensitization and the cheap template id, shared so both sides agree on ids.
//!
//! This crate does no I/O and has no async code.

pub mod dimension;
pub mod event;
pub mod policy;
pub mod text;

pub use dimension::{DimensionKey, Dimensions, OVERFLOW_VALUE};
pub use event::{
    EVENT_SCHEMA_VERSION, ErrorEvent, ErrorKind, GatewayRecord, RouteCounts, TrafficSample,
};
pub use policy::{
    Action, Conjunction, DimensionMatch, Policy, PolicyError, PolicySnapshot, Ratio, Slice,
};

/// Well-known names shared across binaries (topics, etcd prefixes).
pub mod names {
    /// Kafka topic for error events.
    pub const ERROR_EVENTS_TOPIC: &str = "error-events";
    /// Kafka topic for traffic samples and per-route counts.
    pub const TRAFFIC_TOPIC: &str = "traffic-stats";
    /// Kafka topic carrying policy decisions from an external engine to the applier.
    pub const POLICIES_TOPIC: &str = "policies";
    /// Default prefix of the topics the enforcer's Kafka sink writes and the pipeline's
    /// Kafka source reads (`sql/incident.sql` names `gateway.error_events` and so on).
    pub const DEFAULT_TOPIC_PREFIX: &str = "gateway.";
    /// Topic suffix for error events (after the prefix).
    pub const ERROR_EVENTS_SUFFIX: &str = "error_events";
    /// Topic suffix for traffic samples (after the prefix).
    pub const TRAFFIC_SAMPLES_SUFFIX: &str = "traffic_samples";
    /// Topic suffix for per-route counts (after the prefix).
    pub const ROUTE_COUNTS_SUFFIX: &str = "route_counts";
    /// Every record topic suffix, in the order of [`crate::GatewayRecord::topic_index`].
    pub const RECORD_TOPIC_SUFFIXES: [&str; 3] = [
        ERROR_EVENTS_SUFFIX,
        TRAFFIC_SAMPLES_SUFFIX,
        ROUTE_COUNTS_SUFFIX,
    ];
    /// Default etcd prefix under which policies live (configurable on both sides).
    pub const ETCD_POLICY_PREFIX: &str = "/lag/policies/";
    /// Key under the prefix holding the current policy snapshot (JSON), replaced atomically
    /// by the leading pipeline and attached to its lease.
    pub const ETCD_SNAPSHOT_KEY: &str = "snapshot";
    /// Key under the prefix the pipeline replicas elect their one publisher with.
    pub const ETCD_LEADER_KEY: &str = "leader";
}
