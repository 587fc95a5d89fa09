//! The enforcer's metrics, registered into a registry the caller passes in (no globals).
//!
//! The plan's names (`gateway_requests_total`, `gateway_request_duration_seconds`,
//! `rate_limit_hits_total`, `circuit_breaker_state`) keep their names; the enforcer's own
//! follow `enforcer_<noun>_<unit>`. Labels are bounded: `path` is the route name, never the
//! raw path; `cluster_id` only takes values of live policies.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the enforcer exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `gateway_requests_total{method,path,status,cluster_id}`.
    pub requests: IntCounterVec,
    /// `gateway_request_duration_seconds{method,path,cluster_id}`.
    pub duration: HistogramVec,
    /// `rate_limit_hits_total{cluster_id,policy_type}`: requests a policy or classic limit rejected.
    pub rate_limit_hits: IntCounterVec,
    /// `circuit_breaker_state{cluster_id}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `enforcer_shadow_rejections_total{cluster_id}`: would-have-rejected in shadow mode.
    pub shadow_rejections: IntCounterVec,
    /// `enforcer_shadow_outcomes_total{cluster_id,outcome}`: what became of the requests a
    /// shadow policy would have rejected (`succeeded` or `failed` upstream).
    pub shadow_outcomes: IntCounterVec,
    /// `enforcer_event_queue_depth`: records waiting for the sink.
    pub queue_depth: IntGauge,
    /// `enforcer_events_enqueued_total{kind}`.
    pub events_enqueued: IntCounterVec,
    /// `enforcer_events_dropped_total{kind,reason}`: queue full or sink gone.
    pub events_dropped: IntCounterVec,
    /// `enforcer_policy_snapshot_version`.
    pub snapshot_version: IntGauge,
    /// `enforcer_policy_snapshots_refused_total`.
    pub snapshots_refused: IntCounter,
    /// `enforcer_policies_live`.
    pub policies_live: IntGauge,
    /// `enforcer_policy_source_errors_total`: a remote policy source (etcd) failed to
    /// connect, read or watch; the last good snapshot stays while it reconnects.
    pub policy_source_errors: IntCounter,
    /// `enforcer_policy_source_connected`: 1 while a remote policy source is being watched.
    pub policy_source_connected: IntGauge,
    /// `enforcer_upstream_errors_total{route,kind}`: refused / timeout / body errors.
    pub upstream_errors: IntCounterVec,
    /// `enforcer_cluster_limit_fallback_total`: rate-limit decisions made on this enforcer's
    /// local share because Redis was unreachable (`cluster_limits`).
    pub cluster_limit_fallback: IntCounter,
    /// `enforcer_cluster_limit_bridged_total`: decisions made on the local share while a
    /// lease refill was on its way (Redis reachable, lease spent early).
    pub cluster_limit_bridged: IntCounter,
    /// `enforcer_cluster_limit_leased_tokens_total`: tokens leased from cluster buckets.
    pub cluster_limit_leased: IntCounter,
    /// `enforcer_cluster_limit_lease_requests_total`: lease round trips to Redis attempted.
    pub cluster_limit_lease_requests: IntCounter,
    /// `enforcer_redis_errors_total{reason}`: failed Redis round trips (`connect`,
    /// `command`, `reply`, `timeout`).
    pub redis_errors: IntCounterVec,
    /// `enforcer_redis_connected`: 1 after a Redis answer, 0 after a failure.
    pub redis_connected: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "gateway_requests_total",
                    "Requests handled, by route (path), status and policy cluster.",
                ),
                &["method", "path", "status", "cluster_id"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "gateway_request_duration_seconds",
                    "Request latency through the enforcer.",
                ),
                &["method", "path", "cluster_id"],
            )?,
            rate_limit_hits: IntCounterVec::new(
                Opts::new(
                    "rate_limit_hits_total",
                    "Requests rejected by a policy or a classic limit.",
                ),
                &["cluster_id", "policy_type"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "circuit_breaker_state",
                    "Breaker state: 0 closed, 1 open, 2 half-open.",
                ),
                &["cluster_id"],
            )?,
            shadow_rejections: IntCounterVec::new(
                Opts::new(
                    "enforcer_shadow_rejections_total",
                    "Requests a shadow policy would have rejected.",
                ),
                &["cluster_id"],
            )?,
            shadow_outcomes: IntCounterVec::new(
                Opts::new(
                    "enforcer_shadow_outcomes_total",
                    "Requests a shadow policy would have rejected, by what the upstream answered.",
                ),
                &["cluster_id", "outcome"],
            )?,
            queue_depth: IntGauge::new(
                "enforcer_event_queue_depth",
                "Records waiting for the event sink.",
            )?,
            events_enqueued: IntCounterVec::new(
                Opts::new(
                    "enforcer_events_enqueued_total",
                    "Records queued for the event sink.",
                ),
                &["kind"],
            )?,
            events_dropped: IntCounterVec::new(
                Opts::new(
                    "enforcer_events_dropped_total",
                    "Records dropped: queue full or sink gone.",
                ),
                &["kind", "reason"],
            )?,
            snapshot_version: IntGauge::new(
                "enforcer_policy_snapshot_version",
                "Version of the policy snapshot in force.",
            )?,
            snapshots_refused: IntCounter::new(
                "enforcer_policy_snapshots_refused_total",
                "Snapshots refused as invalid or stale.",
            )?,
            policies_live: IntGauge::new(
                "enforcer_policies_live",
                "Policies in the snapshot in force.",
            )?,
            policy_source_errors: IntCounter::new(
                "enforcer_policy_source_errors_total",
                "Connection, read or watch failures of the remote policy source.",
            )?,
            policy_source_connected: IntGauge::new(
                "enforcer_policy_source_connected",
                "1 while the remote policy source is watched, 0 while reconnecting.",
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "enforcer_upstream_errors_total",
                    "Upstream failures by kind.",
                ),
                &["route", "kind"],
            )?,
            cluster_limit_fallback: IntCounter::new(
                "enforcer_cluster_limit_fallback_total",
                "Rate-limit decisions on the local share because Redis was unreachable.",
            )?,
            cluster_limit_bridged: IntCounter::new(
                "enforcer_cluster_limit_bridged_total",
                "Rate-limit decisions on the local share while a lease refill was pending.",
            )?,
            cluster_limit_leased: IntCounter::new(
                "enforcer_cluster_limit_leased_tokens_total",
                "Tokens leased from cluster-wide rate-limit buckets.",
            )?,
            cluster_limit_lease_requests: IntCounter::new(
                "enforcer_cluster_limit_lease_requests_total",
                "Lease round trips to Redis attempted.",
            )?,
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "enforcer_redis_errors_total",
                    "Failed Redis round trips of the cluster-wide buckets, by reason.",
                ),
                &["reason"],
            )?,
            redis_connected: IntGauge::new(
                "enforcer_redis_connected",
                "1 after a Redis answer, 0 after a failure.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.rate_limit_hits.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.shadow_rejections.clone()))?;
        registry.register(Box::new(m.shadow_outcomes.clone()))?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.events_enqueued.clone()))?;
        registry.register(Box::new(m.events_dropped.clone()))?;
        registry.register(Box::new(m.snapshot_version.clone()))?;
        registry.register(Box::new(m.snapshots_refused.clone()))?;
        registry.register(Box::new(m.policies_live.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.policy_source_errors.clone()))?;
        registry.register(Box::new(m.policy_source_connected.clone()))?;
        registry.register(Box::new(m.cluster_limit_fallback.clone()))?;
        registry.register(Box::new(m.cluster_limit_bridged.clone()))?;
        registry.register(Box::new(m.cluster_limit_leased.clone()))?;
        registry.register(Box::new(m.cluster_limit_lease_requests.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.redis_connected.clone()))?;
        Ok(m)
    }
}
