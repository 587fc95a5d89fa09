//! The request-path cost of a rate-limit policy: a local token bucket vs a cluster-wide bucket
//! whose tokens are leased from Redis by the refiller task (`cluster_limits`), in the same
//! run. The policy's rate is far above what one thread judges, so every decision takes a
//! token (local, or leased) rather than being rejected.
//!
//! `eval "$(bash deploy/services.sh env)"; cargo bench -p enforcer --bench cluster_limit`
//! (without `LAG_REDIS_URL` only the local case runs).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use enforcer::clock::Clock;
use enforcer::cluster_bucket::{ClusterLimits, Refiller};
use enforcer::config::ClusterLimitsConfig;
use enforcer::metrics::Metrics;
use enforcer::policy::{PolicyStore, RequestView, Verdict};
use enforcer::redis_bucket::RedisBucketStore;
use schemas::{Action, Conjunction, Dimensions, Policy, PolicySnapshot, Ratio, Slice};
use tokio_util::sync::CancellationToken;

fn snapshot() -> PolicySnapshot {
    let policy = Policy {
        id: format!("bench-{}", std::process::id()),
        cluster_id: "c".into(),
        slice: Slice {
            any: vec![Conjunction {
                route: "payments".into(),
                all: vec![],
            }],
        },
        action: Action::RateLimit {
            requests_per_second: 1e8,
            burst: 1_000_000,
        },
        signature: [1].into(),
        severity: Ratio::new(0.5).expect("ratio"),
        created_at_ms: 0,
        expires_at_ms: i64::MAX,
        shadow: false,
    };
    PolicySnapshot::new(1, 0, vec![policy]).expect("valid snapshot")
}

fn judge_loop(c: &mut Criterion, name: &str, store: &PolicyStore, clock: Clock) -> (u64, u64) {
    let dims = Dimensions::default();
    let req = RequestView {
        route: "payments",
        method: "POST",
        upstream: "127.0.0.1:9000",
        dimensions: &dims,
    };
    let (mut passed, mut rejected) = (0u64, 0u64);
    c.bench_function(name, |b| {
        b.iter(
            || match black_box(store.load().judge(&req, clock.monotonic_ms(), 0)) {
                Verdict::Pass { .. } => passed += 1,
                Verdict::Reject { .. } => rejected += 1,
            },
        );
    });
    (passed, rejected)
}

fn rate_limited_slice(c: &mut Criterion) {
    let clock = Clock::default();
    let local = PolicyStore::new(false, true);
    local
        .apply(&snapshot(), clock.monotonic_ms())
        .expect("applied");
    let (p, r) = judge_loop(c, "rate_limited_slice/local_bucket", &local, clock);
    eprintln!("local bucket: {p} passed, {r} rejected");

    let Ok(url) = std::env::var("LAG_REDIS_URL") else {
        eprintln!("LAG_REDIS_URL unset: the cluster bucket case is skipped");
        return;
    };
    let config = ClusterLimitsConfig {
        redis_url: url,
        key_prefix: format!("lag-bench:{}:", std::process::id()),
        enforcers: 1,
        sync_interval_ms: 20,
        lease_ms: 1_000,
        request_timeout_ms: 50,
    };
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let limits = ClusterLimits::new(config.clone(), &metrics);
    let shared = PolicyStore::new(false, true).with_cluster_limits(Some(Arc::clone(&limits)));
    shared
        .apply(&snapshot(), clock.monotonic_ms())
        .expect("applied");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let shutdown = CancellationToken::new();
    let redis = RedisBucketStore::new(&config).expect("redis url");
    runtime.spawn(Refiller::new(Arc::clone(&limits), redis).run(clock, shutdown.child_token()));
    let (p, r) = judge_loop(
        c,
        "rate_limited_slice/cluster_bucket_leased",
        &shared,
        clock,
    );
    eprintln!(
        "cluster bucket: {p} passed, {r} rejected; redis round trips {}, tokens leased {}, \
         bridged on the local share {}, fallback decisions {}",
        metrics.cluster_limit_lease_requests.get(),
        metrics.cluster_limit_leased.get(),
        metrics.cluster_limit_bridged.get(),
        metrics.cluster_limit_fallback.get(),
    );
    shutdown.cancel();
    runtime.shutdown_timeout(Duration::from_secs(1));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = rate_limited_slice
}
criterion_main!(benches);
