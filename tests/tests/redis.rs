//! Redis where the plan puts it, against a real server:
//!
//! * cluster-wide token buckets: two enforcers' policy stores (`cluster_limits`) share one
//!   rate-limit policy's bucket, each with its own refiller task, and admit about the
//!   policy's rate in total, not twice it; with their Redis killed each falls back to its
//!   share and counts it; with Redis back they share again;
//! * the pipeline's shared vector cache: a second replica gets the first one's vector
//!   without running its model; garbage in Redis is a miss; an unreachable Redis means
//!   embedding locally.
//!
//! Needs `LAG_REDIS_URL` (`bash deploy/services.sh up redis`, then
//! `eval "$(bash deploy/services.sh env)"`); skipped with a printed reason when unset, failed
//! when unset under `CI=true`. Every test uses its own key prefix on the shared server. The
//! outage test starts and kills its own `redis-server` on a free port, never the shared one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::own::{OwnRedis, free_port};
use e2e::require_service;
use enforcer::clock::Clock;
use enforcer::cluster_bucket::{ClusterLimits, Refiller};
use enforcer::config::{ClusterLimitsConfig, Config};
use enforcer::metrics::Metrics;
use enforcer::policy::{PolicyStore, RequestView, Verdict};
use enforcer::redis_bucket::RedisBucketStore;
use enforcer::server::Gateway;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use pipeline::redis_cache::{RedisCacheConfig, RedisVectorCache};
use schemas::{Action, Conjunction, Dimensions, Policy, PolicySnapshot, Ratio, Slice};
use tokio_util::sync::CancellationToken;
use udfs::cluster::{EmbedFailure, TextEmbedder};
use udfs::clusterer::FailureClusterer;
use udfs::vector_cache::VectorCache;

/// A prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("lag-test:{test}:{}-{nanos}:", std::process::id())
}

// ---------------------------------------------------------------- cluster-wide buckets

const RATE: f64 = 100.0;
const BURST: u32 = 10;

/// A rate-limit policy on the whole `pay` route.
fn rate_limit_snapshot() -> PolicySnapshot {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let policy = Policy {
        id: "rl-pay".into(),
        cluster_id: "cluster-rl".into(),
        slice: Slice {
            any: vec![Conjunction {
                route: "pay".into(),
                all: vec![],
            }],
        },
        action: Action::RateLimit {
            requests_per_second: RATE,
            burst: BURST,
        },
        signature: [1].into(),
        severity: Ratio::new(0.5).expect("a ratio"),
        created_at_ms: now,
        expires_at_ms: now + 600_000,
        shadow: false,
    };
    PolicySnapshot::new(1, now, vec![policy]).expect("a valid snapshot")
}

/// One enforcer's policy path with cluster-wide buckets and its refiller task.
struct Enforcer {
    store: PolicyStore,
    metrics: Metrics,
    limits: Arc<ClusterLimits>,
    clock: Clock,
}

fn enforcer(url: &str, prefix: &str, shutdown: &CancellationToken) -> Enforcer {
    let config = ClusterLimitsConfig {
        redis_url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        enforcers: 2,
        sync_interval_ms: 20,
        lease_ms: 1_000,
        // Generous: these tests are about sharing, and a loaded 2-core CI machine can stall
        // a loopback round trip past the default 50 ms (which would count as a fallback).
        request_timeout_ms: 500,
    };
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let limits = ClusterLimits::new(config.clone(), &metrics);
    let clock = Clock::default();
    let store = PolicyStore::new(false, true).with_cluster_limits(Some(Arc::clone(&limits)));
    store
        .apply(&rate_limit_snapshot(), clock.monotonic_ms())
        .expect("applied");
    let redis = RedisBucketStore::new(&config).expect("a redis url");
    tokio::spawn(Refiller::new(Arc::clone(&limits), redis).run(clock, shutdown.child_token()));
    Enforcer {
        store,
        metrics,
        limits,
        clock,
    }
}

/// Every 2 ms for `duration`, one request on `pay` through each enforcer (500/s each);
/// returns how many each admitted.
async fn drive(enforcers: &[&Enforcer], duration: Duration) -> Vec<usize> {
    let dims = Dimensions::default();
    let view = RequestView {
        route: "pay",
        method: "POST",
        upstream: "127.0.0.1:1",
        dimensions: &dims,
    };
    let mut admitted = vec![0; enforcers.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tick.tick().await;
        for (e, n) in enforcers.iter().zip(admitted.iter_mut()) {
            let verdict = e
                .store
                .load()
                .judge(&view, e.clock.monotonic_ms(), e.clock.wall_ms());
            if matches!(verdict, Verdict::Pass { .. }) {
                *n += 1;
            }
        }
    }
    admitted
}

/// What one 2 s phase may admit in total at 100/s: 200 refilled plus at most a burst and
/// what the local shares bridge at the start; twice the rate (each enforcer on its own)
/// would be 400 or more.
const PHASE: Duration = Duration::from_secs(2);
const TOTAL_RANGE: std::ops::RangeInclusive<usize> = 170..=270;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_enforcers_share_one_policy_bucket() {
    let Some(url) = require_service("LAG_REDIS_URL") else {
        return;
    };
    let prefix = unique_prefix("share");
    let shutdown = CancellationToken::new();
    let a = enforcer(&url, &prefix, &shutdown);
    let b = enforcer(&url, &prefix, &shutdown);
    let admitted = drive(&[&a, &b], PHASE).await;
    let total: usize = admitted.iter().sum();
    eprintln!("shared bucket, 2 s at 1000 requests/s against 100/s: admitted {admitted:?}");
    assert!(TOTAL_RANGE.contains(&total), "admitted {admitted:?}");
    for e in [&a, &b] {
        assert!(e.limits.is_shared());
        assert_eq!(e.metrics.cluster_limit_fallback.get(), 0);
        assert!(e.metrics.cluster_limit_leased.get() > 0);
        assert_eq!(e.metrics.redis_connected.get(), 1);
    }
    // The bucket lives in Redis under the prefix, with a TTL.
    let mut c = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}rl-pay"))
        .query(&mut c)
        .expect("PTTL");
    assert!(ttl > 0, "bucket key ttl {ttl}");
    shutdown.cancel();
}

/// Two real enforcers (`Gateway` with `cluster_limits`) in front of the demo upstream, the
/// same rate-limit policy applied to both, requests over HTTP to each in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_answer_429_beyond_the_cluster_wide_rate() {
    let Some(url) = require_service("LAG_REDIS_URL") else {
        return;
    };
    let prefix = unique_prefix("gateway");
    let shutdown = CancellationToken::new();
    let upstream = enforcer::demo::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Default::default(),
        shutdown.child_token(),
    )
    .await
    .expect("demo upstream");
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nworkers: 1\nevents: {{sink: discard}}\n\
             cluster_limits: {{redis_url: {url:?}, key_prefix: {prefix:?}, enforcers: 2, request_timeout_ms: 500}}\n\
             routes:\n  - name: pay\n    upstreams: [\"http://{upstream}\"]\n"
        );
        let config = Config::parse(&yaml).expect("config");
        let gw = Gateway::start(config, &prometheus::Registry::new(), shutdown.child_token())
            .await
            .expect("gateway");
        gw.policies
            .apply(&rate_limit_snapshot(), gw.clock.monotonic_ms())
            .expect("applied");
        gateways.push(gw);
    }
    let client: HttpClient<_, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut ok = [0usize; 2];
    let mut limited = [0usize; 2];
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        tick.tick().await;
        for (i, gw) in gateways.iter().enumerate() {
            let uri: http::Uri = format!("http://{}/pay", gw.proxy_addr)
                .parse()
                .expect("uri");
            let resp = client.get(uri).await.expect("request");
            match resp.status().as_u16() {
                200 => ok[i] += 1,
                429 => limited[i] += 1,
                s => panic!("status {s}"),
            }
            let _ = resp.into_body().collect().await;
        }
    }
    let round_trips: Vec<u64> = gateways
        .iter()
        .map(|g| g.metrics.cluster_limit_lease_requests.get())
        .collect();
    eprintln!(
        "two gateways, 2 s against 100/s cluster-wide: 200 {ok:?}, 429 {limited:?}, \
         redis round trips {round_trips:?}"
    );
    // Whatever rate the debug build manages, the limit is cluster-wide: at most the rate
    // plus burst and bridging in total, and both enforcers rejected some.
    let total: usize = ok.iter().sum();
    assert!(total <= *TOTAL_RANGE.end(), "200 {ok:?}, 429 {limited:?}");
    assert!(limited.iter().all(|&n| n > 0), "429 {limited:?}");
    for gw in &gateways {
        assert!(gw.metrics.cluster_limit_leased.get() > 0);
        // Leases are topped up about every 20 ms, not once per request.
        let trips = gw.metrics.cluster_limit_lease_requests.get();
        assert!(trips < 300, "{trips} round trips");
        assert_eq!(gw.metrics.cluster_limit_fallback.get(), 0);
    }
    shutdown.cancel();
    for gw in gateways {
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_enforcer_falls_back_to_its_share_and_shares_again_after() {
    // The shared server is not used, but CI must run this test, so the same switch applies.
    if require_service("LAG_REDIS_URL").is_none() {
        return;
    }
    let port = free_port();
    let mut own = OwnRedis::start(port);
    let prefix = unique_prefix("outage");
    let shutdown = CancellationToken::new();
    let a = enforcer(&own.url(), &prefix, &shutdown);
    let b = enforcer(&own.url(), &prefix, &shutdown);

    let shared = drive(&[&a, &b], PHASE).await;
    eprintln!("before the outage: admitted {shared:?}");
    assert!(
        TOTAL_RANGE.contains(&shared.iter().sum()),
        "admitted {shared:?}"
    );

    own.kill();
    let alone = drive(&[&a, &b], PHASE).await;
    eprintln!("redis killed: admitted {alone:?} (share: 50/s each)");
    for (e, n) in [&a, &b].iter().zip(&alone) {
        assert!(!e.limits.is_shared(), "still shared with redis dead");
        // 2 s at the 50/s share plus its burst of 5, give or take the last leased tokens.
        assert!((80..=135).contains(n), "admitted {alone:?}");
        assert!(e.metrics.cluster_limit_fallback.get() > 500);
        let errors: u64 = ["connect", "command", "timeout", "reply"]
            .iter()
            .map(|r| e.metrics.redis_errors.with_label_values(&[r]).get())
            .sum();
        assert!(errors >= 1);
        assert_eq!(e.metrics.redis_connected.get(), 0);
    }

    let _own = OwnRedis::start(port);
    // Back-off is at most 1 s between attempts while there is traffic.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.limits.is_shared() && b.limits.is_shared()) {
        assert!(Instant::now() < deadline, "did not share again");
        drive(&[&a, &b], Duration::from_millis(100)).await;
    }
    let fallback_before: Vec<u64> = [&a, &b]
        .iter()
        .map(|e| e.metrics.cluster_limit_fallback.get())
        .collect();
    let again = drive(&[&a, &b], PHASE).await;
    eprintln!("redis back: admitted {again:?}");
    assert!(
        TOTAL_RANGE.contains(&again.iter().sum()),
        "admitted {again:?}"
    );
    for (e, before) in [&a, &b].iter().zip(fallback_before) {
        assert_eq!(e.metrics.cluster_limit_fallback.get(), before);
        assert_eq!(e.metrics.redis_connected.get(), 1);
    }
    shutdown.cancel();
}

// ---------------------------------------------------------------- shared vector cache

/// Counts texts embedded; 8-dim vectors from the text.
#[derive(Default)]
struct CountingEmbedder(AtomicUsize);

impl TextEmbedder for CountingEmbedder {
    fn dims(&self) -> usize {
        8
    }
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        self.0.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.0; 8];
                v[0] = t.len() as f32;
                v[1] = 1.0;
                v
            })
            .collect())
    }
    fn name(&self) -> &str {
        "counting-8"
    }
}

fn replica(cache: &Arc<RedisVectorCache>) -> (Arc<CountingEmbedder>, FailureClusterer) {
    let embedder = Arc::new(CountingEmbedder::default());
    let mut c = FailureClusterer::new(embedder.clone());
    c.set_vector_cache(cache.clone());
    (embedder, c)
}

fn cache(url: &str, prefix: &str) -> Arc<RedisVectorCache> {
    let mut config = RedisCacheConfig::new(url);
    config.prefix = prefix.to_owned();
    config.ttl = Duration::from_secs(600);
    Arc::new(RedisVectorCache::new(config).expect("a redis url"))
}

#[test]
fn a_second_replica_gets_the_first_replica_s_vector_without_running_its_model() {
    let Some(url) = require_service("LAG_REDIS_URL") else {
        return;
    };
    let prefix = unique_prefix("vec");
    let (c1, c2) = (cache(&url, &prefix), cache(&url, &prefix));
    let (e1, mut r1) = replica(&c1);
    let (e2, mut r2) = replica(&c2);
    let a = r1
        .process("pq: could not connect to 10.1.2.3:5432")
        .expect("embedded");
    assert_eq!(e1.0.load(Ordering::SeqCst), 1);
    let b = r2
        .process("pq: could not connect to 10.9.9.9:5432")
        .expect("embedded");
    assert_eq!(a.template_id, b.template_id);
    assert_eq!(e2.0.load(Ordering::SeqCst), 0, "replica 2 ran its model");
    assert_eq!(c2.counts().hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        c2.get("counting-8", a.template_id),
        c1.get("counting-8", a.template_id)
    );
    // Another model's vectors are separate.
    assert_eq!(c2.get("other-model", a.template_id), None);
    // The key carries a TTL.
    let mut c = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}counting-8:{:016x}", a.template_id))
        .query(&mut c)
        .expect("TTL");
    assert!((1..=600).contains(&ttl), "ttl {ttl}");
}

#[test]
fn garbage_in_redis_is_a_miss_and_is_replaced() {
    let Some(url) = require_service("LAG_REDIS_URL") else {
        return;
    };
    let prefix = unique_prefix("garbage");
    let c1 = cache(&url, &prefix);
    let (e1, mut r1) = replica(&c1);
    let text = "disk quota exceeded for user 4711";
    let template_id = r1.template(text).0;
    let key = format!("{prefix}counting-8:{template_id:016x}");
    let mut c = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    // Not a multiple of 4 bytes: not a vector at all.
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(b"abc".as_slice())
        .query(&mut c)
        .expect("SET");
    r1.process(text).expect("embedded anyway");
    assert_eq!(e1.0.load(Ordering::SeqCst), 1);
    assert_eq!(c1.counts().invalid.load(Ordering::SeqCst), 1);
    // The fresh vector replaced it.
    assert_eq!(c1.get("counting-8", template_id).map(|v| v.len()), Some(8));

    // A vector of the wrong length (three floats) is a miss for a new replica too.
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(udfs::sql::pack_f32(&[1.0, 2.0, 3.0]))
        .query(&mut c)
        .expect("SET");
    let (e2, mut r2) = replica(&cache(&url, &prefix));
    r2.process(text).expect("embedded anyway");
    assert_eq!(e2.0.load(Ordering::SeqCst), 1);
}

#[test]
fn unreachable_redis_means_embedding_locally_without_waiting() {
    if require_service("LAG_REDIS_URL").is_none() {
        return;
    }
    let url = format!("redis://127.0.0.1:{}", free_port());
    let c1 = cache(&url, "lag-test:down:");
    let (e1, mut r1) = replica(&c1);
    let started = Instant::now();
    let messages = [
        "disk full",
        "connection refused by upstream payments",
        "TLS certificate expired yesterday for the host",
        "permission denied for table orders while running the nightly job",
        "deadline exceeded",
    ];
    for m in messages {
        r1.process(m).expect("embedded locally");
    }
    assert_eq!(e1.0.load(Ordering::SeqCst), messages.len());
    // One failed attempt, then Redis rests for a second: not one timeout per template.
    assert_eq!(c1.counts().errors.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}
