//! Cluster-wide token buckets for rate-limit policies (`cluster_limits`).
//!
//! A rate-limit policy says "this slice gets N requests per second", and with several
//! enforcers behind a load balancer each one enforcing N on its own lets N × enforcers
//! through. With `cluster_limits` every rate-limit policy has one token bucket in a shared
//! store (Redis, [`crate::redis_bucket`]) and each enforcer **leases** tokens from it in small
//! batches, so:
//!
//! * the request path never talks to Redis: [`SharedBucket::try_take`] takes a leased token
//!   under a mutex, or decides at once without one;
//! * one task per enforcer ([`Refiller`]) tops leases up every `sync_interval_ms`, and early
//!   when a lease runs low. A batch is sized to what this enforcer used lately (about two
//!   intervals' worth, at most `burst`), so a busy enforcer gets more and an idle one holds
//!   nearly nothing; a bucket without recent requests is never asked for, and requests that
//!   match no rate-limit policy have no bucket at all;
//! * leased tokens are usable for `lease_ms`, then dropped (never returned: the cluster
//!   under-admits by what was leased and unused, never over-admits);
//! * when the store answers with fewer tokens than asked, the cluster bucket is empty: once
//!   the lease is spent, requests are rejected (429) until a later refill gets tokens;
//! * when the lease is spent but the store had tokens at its last answer (the refill is on
//!   its way), the request is judged against the local share (`rate / enforcers`) instead
//!   of waiting — the *bridge*, counted in `enforcer_cluster_limit_bridged_total`;
//! * when the store fails or is slower than `request_timeout_ms`, every bucket falls back to
//!   its local share (`rate / enforcers`, counted per decision in
//!   `enforcer_cluster_limit_fallback_total`), and the refiller retries with capped
//!   exponential back-off while there is traffic to limit; the first answer switches back.
//!
//! Decisions take monotonic milliseconds from the caller, so tests drive time directly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ClusterLimitsConfig;
use crate::limiter::TokenBucket;
use crate::metrics::Metrics;

/// Longest pause between two attempts while the store is unreachable.
const MAX_BACKOFF_MS: u64 = 1_000;

/// One lease request to the shared store.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    /// The bucket's key (`<key_prefix><policy id>`).
    pub key: &'a str,
    /// Refill rate, tokens per second.
    pub rate: f64,
    /// Bucket capacity.
    pub burst: u32,
    /// Tokens wanted (>= 1).
    pub want: u32,
    /// How long the store keeps an untouched bucket, ms.
    pub ttl_ms: u64,
}

/// What the shared store granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens taken from the cluster bucket for this enforcer (0..=want).
    pub granted: u32,
    /// When fewer than wanted: ms until the cluster bucket holds a token again.
    pub wait_ms: u64,
}

/// Why the shared store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be made.
    #[error("connecting: {0}")]
    Connect(String),
    /// The command failed (connection lost, server error).
    #[error("command: {0}")]
    Command(String),
    /// The answer was not what the script returns.
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl StoreError {
    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Command(_) => "command",
            Self::Reply(_) => "reply",
        }
    }
}

/// The shared store of cluster buckets: takes up to `want` tokens atomically.
pub trait BucketStore: Send {
    /// Leases tokens from one bucket (creating it full when absent).
    fn acquire(
        &mut self,
        request: &LeaseRequest<'_>,
    ) -> impl Future<Output = Result<Grant, StoreError>> + Send;
}

/// The metrics of cluster-wide limiting (registered with the rest in [`Metrics`]).
#[derive(Debug, Clone)]
struct LimitMetrics {
    fallback: IntCounter,
    bridged: IntCounter,
    leased: IntCounter,
    requests: IntCounter,
    errors: IntCounterVec,
    connected: IntGauge,
}

/// The buckets of one enforcer and whether the shared store is usable.
#[derive(Debug)]
pub struct ClusterLimits {
    config: ClusterLimitsConfig,
    /// `true` while the store answers; `false`: every bucket decides on its local share.
    shared: AtomicBool,
    buckets: Mutex<Vec<Weak<SharedBucket>>>,
    wake: Notify,
    metrics: LimitMetrics,
}

impl ClusterLimits {
    /// Buckets per `config`, counting into `metrics`. Starts in shared mode: until the first
    /// answer, requests are bridged on the local share.
    pub fn new(config: ClusterLimitsConfig, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            config,
            shared: AtomicBool::new(true),
            buckets: Mutex::new(Vec::new()),
            wake: Notify::new(),
            metrics: LimitMetrics {
                fallback: metrics.cluster_limit_fallback.clone(),
                bridged: metrics.cluster_limit_bridged.clone(),
                leased: metrics.cluster_limit_leased.clone(),
                requests: metrics.cluster_limit_lease_requests.clone(),
                errors: metrics.redis_errors.clone(),
                connected: metrics.redis_connected.clone(),
            },
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClusterLimitsConfig {
        &self.config
    }

    /// Whether buckets are shared now (`false`: each enforcer on its local share).
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// A bucket for a rate-limit policy, registered for leasing. The policy's id names the
    /// cluster bucket, so every enforcer holding the policy shares it.
    pub fn bucket(
        self: &Arc<Self>,
        policy_id: &str,
        rate: f64,
        burst: u32,
        now_ms: u64,
    ) -> Arc<SharedBucket> {
        let share = f64::from(self.config.enforcers.max(1));
        let bucket = Arc::new(SharedBucket {
            key: format!("{}{policy_id}", self.config.key_prefix),
            rate,
            burst: burst.max(1),
            limits: Arc::clone(self),
            state: Mutex::new(LeaseState {
                tokens: 0,
                low_water: 0,
                expires_ms: 0,
                starved: false,
                wait_hint_ms: 1,
                share: TokenBucket::new(
                    rate / share,
                    ((f64::from(burst) / share).ceil() as u32).max(1),
                    now_ms,
                ),
                demand: 0,
                rate_estimate: 0.0,
                last_plan_ms: now_ms,
                last_demand_ms: None,
                woken: false,
            }),
        });
        let mut all = lock(&self.buckets);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&bucket));
        bucket
    }

    /// The buckets of live policies (dropped policies' buckets are forgotten here).
    fn live(&self) -> Vec<Arc<SharedBucket>> {
        let mut all = lock(&self.buckets);
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    }
}

/// One policy's cluster bucket as this enforcer sees it: its lease and its local share.
#[derive(Debug)]
pub struct SharedBucket {
    key: String,
    rate: f64,
    burst: u32,
    limits: Arc<ClusterLimits>,
    state: Mutex<LeaseState>,
}

#[derive(Debug)]
struct LeaseState {
    /// Leased tokens not used yet.
    tokens: u32,
    /// At or below this many tokens left, the refiller is woken.
    low_water: u32,
    /// Leased tokens are dropped at this time.
    expires_ms: u64,
    /// The store's last answer was short: the cluster bucket is empty.
    starved: bool,
    /// The store's estimate of the wait for the next token, ms.
    wait_hint_ms: u64,
    /// The local share: the bridge, and the whole limit while the store is unreachable.
    share: TokenBucket,
    /// Requests since the last plan.
    demand: u64,
    /// Requests per second here, smoothed.
    rate_estimate: f64,
    last_plan_ms: u64,
    last_demand_ms: Option<u64>,
    /// The refiller was woken for this bucket since its last round: one wake per round, so
    /// a spent lease does not turn every request into a Redis call.
    woken: bool,
}

impl LeaseState {
    /// Marks a wake; `false` when one is already pending.
    fn wake(&mut self) -> bool {
        !std::mem::replace(&mut self.woken, true)
    }
}

impl SharedBucket {
    /// The cluster bucket's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Takes one token, or says how long to wait (ms, at least 1). Never waits on the store.
    pub fn try_take(&self, now_ms: u64) -> Result<(), u64> {
        let mut st = lock(&self.state);
        st.demand += 1;
        st.last_demand_ms = Some(now_ms);
        if !self.limits.is_shared() {
            self.limits.metrics.fallback.inc();
            return st.share.try_take(now_ms);
        }
        if st.tokens > 0 && now_ms < st.expires_ms {
            st.tokens -= 1;
            if st.tokens == st.low_water {
                st.wake();
                self.limits.wake.notify_one();
            }
            return Ok(());
        }
        st.tokens = 0;
        if st.starved {
            // The cluster bucket is empty: the periodic round asks again, no sooner.
            return Err(st.wait_hint_ms.max(1));
        }
        if st.wake() {
            self.limits.wake.notify_one();
        }
        self.limits.metrics.bridged.inc();
        st.share.try_take(now_ms)
    }

    /// How many tokens to ask the store for now, if any; resets the demand count.
    fn plan(&self, now_ms: u64, horizon_ms: u64, lease_ms: u64) -> Option<u32> {
        let mut st = lock(&self.state);
        let elapsed = now_ms.saturating_sub(st.last_plan_ms).max(1);
        let observed = st.demand as f64 * 1000.0 / elapsed as f64;
        st.rate_estimate = 0.5 * st.rate_estimate + 0.5 * observed;
        st.demand = 0;
        st.last_plan_ms = now_ms;
        st.woken = false;
        if now_ms >= st.expires_ms {
            st.tokens = 0;
        }
        let recent = st
            .last_demand_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= lease_ms);
        if !recent {
            return None;
        }
        let target = (st.rate_estimate * horizon_ms as f64 / 1000.0)
            .ceil()
            .clamp(1.0, f64::from(self.burst)) as u32;
        (st.starved || st.tokens <= target / 2).then(|| target.saturating_sub(st.tokens).max(1))
    }

    /// Adds what the store granted.
    fn grant(&self, now_ms: u64, want: u32, grant: Grant, lease_ms: u64) {
        let mut st = lock(&self.state);
        if now_ms >= st.expires_ms {
            st.tokens = 0;
        }
        if grant.granted > 0 {
            st.tokens = st.tokens.saturating_add(grant.granted.min(want));
            st.expires_ms = now_ms.saturating_add(lease_ms);
            st.low_water = st.tokens / 2;
        }
        st.starved = grant.granted < want;
        st.wait_hint_ms = grant.wait_ms.max(1);
    }

    /// Forgets the lease (entering fallback: what was leased is not trusted any more).
    fn reset_lease(&self) {
        let mut st = lock(&self.state);
        st.tokens = 0;
        st.starved = false;
    }

    /// Time-to-live of the cluster bucket: long enough to refill completely, so an expired
    /// key means a full bucket, as a missing key does.
    fn ttl_ms(&self) -> u64 {
        let refill_ms = f64::from(self.burst) * 1000.0 / self.rate.max(f64::MIN_POSITIVE);
        (refill_ms.min(86_400_000.0) as u64)
            .saturating_add(1_000)
            .max(10_000)
    }
}

/// Tops up the leases of one enforcer's buckets from the shared store; owns the fallback
/// state machine (shared ⇄ local share).
#[derive(Debug)]
pub struct Refiller<S> {
    limits: Arc<ClusterLimits>,
    store: S,
    backoff_ms: u64,
    next_try_ms: u64,
}

impl<S: BucketStore> Refiller<S> {
    /// A refiller for `limits` over `store`.
    pub fn new(limits: Arc<ClusterLimits>, store: S) -> Self {
        let backoff_ms = limits.config.sync_interval_ms;
        Self {
            limits,
            store,
            backoff_ms,
            next_try_ms: 0,
        }
    }

    /// The store (tests look inside).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// One round at `now_ms`: every bucket with recent requests and a low lease asks the
    /// store; the first failure ends the round and switches to the local shares.
    pub async fn sync(&mut self, now_ms: u64) {
        if now_ms < self.next_try_ms {
            return;
        }
        let cfg = &self.limits.config;
        let (horizon_ms, lease_ms) = (cfg.sync_interval_ms * 2, cfg.lease_ms);
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        for bucket in self.limits.live() {
            let Some(want) = bucket.plan(now_ms, horizon_ms, lease_ms) else {
                continue;
            };
            let request = LeaseRequest {
                key: &bucket.key,
                rate: bucket.rate,
                burst: bucket.burst,
                want,
                ttl_ms: bucket.ttl_ms(),
            };
            self.limits.metrics.requests.inc();
            match tokio::time::timeout(timeout, self.store.acquire(&request)).await {
                Ok(Ok(grant)) => {
                    self.limits
                        .metrics
                        .leased
                        .inc_by(u64::from(grant.granted.min(want)));
                    bucket.grant(now_ms, want, grant, lease_ms);
                    self.answered();
                }
                Ok(Err(e)) => return self.failed(now_ms, e.reason(), &e.to_string()),
                Err(_) => {
                    return self.failed(
                        now_ms,
                        "timeout",
                        &format!("no answer within {} ms", timeout.as_millis()),
                    );
                }
            }
        }
    }

    fn answered(&mut self) {
        self.backoff_ms = self.limits.config.sync_interval_ms;
        self.next_try_ms = 0;
        self.limits.metrics.connected.set(1);
        if !self.limits.shared.swap(true, Ordering::Relaxed) {
            tracing::info!("redis answers again; rate-limit policies share cluster-wide buckets");
        }
    }

    fn failed(&mut self, now_ms: u64, reason: &'static str, error: &str) {
        self.limits
            .metrics
            .errors
            .with_label_values(&[reason])
            .inc();
        self.limits.metrics.connected.set(0);
        if self.limits.shared.swap(false, Ordering::Relaxed) {
            for bucket in self.limits.live() {
                bucket.reset_lease();
            }
            tracing::warn!(
                reason,
                error,
                enforcers = self.limits.config.enforcers,
                "redis unreachable; each rate-limit policy falls back to this enforcer's share (rate / enforcers)"
            );
        }
        self.next_try_ms = now_ms.saturating_add(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS.max(self.backoff_ms));
    }

    /// Runs until shutdown: a round every `sync_interval_ms`, or sooner when a lease runs low.
    pub async fn run(mut self, clock: Clock, shutdown: CancellationToken) {
        let interval_ms = self.limits.config.sync_interval_ms;
        let limits = Arc::clone(&self.limits);
        loop {
            // ±25 % jitter: under contention the first to ask after a refill gets the new
            // tokens, so no enforcer may stay on a fixed phase just behind another.
            let pause = Duration::from_millis(
                interval_ms.saturating_mul(3) / 4 + fastrand::u64(0..=interval_ms / 2),
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                () = limits.wake.notified() => {}
            }
            self.sync(clock.monotonic_ms()).await;
        }
        limits.metrics.connected.set(0);
    }
}

/// A poisoned lock only means a panic elsewhere mid-update; the counts inside stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// The shared store in memory, on the test's clock: what Redis does, minus the network.
    #[derive(Debug, Clone, Default)]
    struct MemoryStore {
        buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
        now_ms: Arc<AtomicU64>,
        down: Arc<AtomicBool>,
        calls: Arc<AtomicU64>,
    }

    impl BucketStore for MemoryStore {
        fn acquire(
            &mut self,
            r: &LeaseRequest<'_>,
        ) -> impl Future<Output = Result<Grant, StoreError>> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Connect("refused".into()))
            } else {
                let now = self.now_ms.load(Ordering::SeqCst);
                let mut all = lock(&self.buckets);
                let b = all
                    .entry(r.key.to_owned())
                    .or_insert_with(|| TokenBucket::new(r.rate, r.burst, now));
                let mut granted = 0;
                let mut wait_ms = 0;
                while granted < r.want {
                    match b.try_take(now) {
                        Ok(()) => granted += 1,
                        Err(w) => {
                            wait_ms = w;
                            break;
                        }
                    }
                }
                Ok(Grant { granted, wait_ms })
            };
            std::future::ready(answer)
        }
    }

    fn config(enforcers: u32) -> ClusterLimitsConfig {
        ClusterLimitsConfig {
            redis_url: "redis://127.0.0.1:1".into(),
            key_prefix: "t:".into(),
            enforcers,
            sync_interval_ms: 20,
            lease_ms: 1_000,
            request_timeout_ms: 50,
        }
    }

    struct Enforcer {
        metrics: Metrics,
        bucket: Arc<SharedBucket>,
        refiller: Refiller<MemoryStore>,
    }

    fn enforcer(store: &MemoryStore, enforcers: u32, rate: f64, burst: u32) -> Enforcer {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let limits = ClusterLimits::new(config(enforcers), &metrics);
        let bucket = limits.bucket("p1", rate, burst, 0);
        Enforcer {
            metrics,
            bucket,
            refiller: Refiller::new(limits, store.clone()),
        }
    }

    /// Drives `enforcers` from `from_ms` to `to_ms` in 5 ms steps, `per_step` requests each
    /// per step, a refill round every 20 ms (the second enforcer's 10 ms later); returns the
    /// requests each admitted.
    async fn drive(
        store: &MemoryStore,
        enforcers: &mut [Enforcer],
        from_ms: u64,
        to_ms: u64,
        per_step: usize,
    ) -> Vec<usize> {
        let mut admitted = vec![0; enforcers.len()];
        let mut t = from_ms;
        while t < to_ms {
            store.now_ms.store(t, Ordering::SeqCst);
            for (i, (e, n)) in enforcers.iter_mut().zip(admitted.iter_mut()).enumerate() {
                // Each refiller on its own phase, as independent tasks are.
                if (t + 10 * i as u64).is_multiple_of(20) {
                    e.refiller.sync(t).await;
                }
                *n += (0..per_step)
                    .filter(|_| e.bucket.try_take(t).is_ok())
                    .count();
            }
            t += 5;
        }
        admitted
    }

    #[tokio::test]
    async fn two_enforcers_admit_the_cluster_rate_not_twice_it() {
        let store = MemoryStore::default();
        let mut es = vec![
            enforcer(&store, 2, 100.0, 10),
            enforcer(&store, 2, 100.0, 10),
        ];
        // 2 s at 400 requests/s each, against a 100/s cluster-wide policy with burst 10.
        let admitted = drive(&store, &mut es, 0, 2_000, 2).await;
        let total: usize = admitted.iter().sum();
        // 200 refilled + 10 burst + at most one local share's burst bridged per enforcer
        // before the first lease (5 each); a per-enforcer limiter would give about 420.
        assert!((195..=225).contains(&total), "admitted {admitted:?}");
        // Both got a fair part (each asks for what it used lately).
        assert!(admitted.iter().all(|&n| n > 60), "admitted {admitted:?}");
        for e in &es {
            assert_eq!(e.metrics.cluster_limit_fallback.get(), 0);
            assert!(e.metrics.cluster_limit_bridged.get() <= 10);
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_means_the_local_share_and_recovery_shares_again() {
        let store = MemoryStore::default();
        let mut es = vec![
            enforcer(&store, 2, 100.0, 10),
            enforcer(&store, 2, 100.0, 10),
        ];
        drive(&store, &mut es, 0, 1_000, 2).await;
        store.down.store(true, Ordering::SeqCst);
        // The first failed round switches to fallback; each admits its share, 50/s.
        let admitted = drive(&store, &mut es, 1_000, 3_000, 2).await;
        for (e, n) in es.iter().zip(&admitted) {
            assert!(!e.refiller.limits.is_shared());
            assert!((95..=115).contains(n), "admitted {admitted:?}");
            assert!(e.metrics.cluster_limit_fallback.get() > 700);
            assert!(e.metrics.redis_errors.with_label_values(&["connect"]).get() >= 1);
            assert_eq!(e.metrics.redis_connected.get(), 0);
        }
        // Back-off: far fewer attempts than rounds (100 rounds in 2 s).
        let calls_down = store.calls.load(Ordering::SeqCst);
        store.down.store(false, Ordering::SeqCst);
        let admitted = drive(&store, &mut es, 3_000, 5_000, 2).await;
        let total: usize = admitted.iter().sum();
        for e in &es {
            assert!(e.refiller.limits.is_shared());
            assert_eq!(e.metrics.redis_connected.get(), 1);
        }
        // Shared again: about the cluster rate in total (the bucket was full again).
        assert!((195..=240).contains(&total), "admitted {admitted:?}");
        assert!(calls_down > 0);
    }

    #[tokio::test]
    async fn the_back_off_caps_attempts_while_the_store_is_down() {
        let store = MemoryStore::default();
        store.down.store(true, Ordering::SeqCst);
        let mut es = vec![enforcer(&store, 1, 100.0, 10)];
        drive(&store, &mut es, 0, 5_000, 1).await;
        // Rounds every 20 ms would be 250; back-off doubles from 20 ms to 1 s.
        let calls = store.calls.load(Ordering::SeqCst);
        assert!((5..=12).contains(&calls), "{calls} attempts");
    }

    #[tokio::test]
    async fn buckets_without_requests_never_touch_the_store() {
        let store = MemoryStore::default();
        let mut es = vec![enforcer(&store, 1, 100.0, 10)];
        drive(&store, &mut es, 0, 1_000, 0).await;
        assert_eq!(store.calls.load(Ordering::SeqCst), 0);
        // One request: a lease of one token, then nothing once the demand is old.
        drive(&store, &mut es, 1_000, 1_005, 1).await;
        drive(&store, &mut es, 1_005, 4_000, 0).await;
        let calls = store.calls.load(Ordering::SeqCst);
        assert!((1..=2).contains(&calls), "{calls} calls");
    }

    #[tokio::test]
    async fn an_empty_cluster_bucket_rejects_with_its_wait_and_leases_expire() {
        let store = MemoryStore::default();
        let mut es = [enforcer(&store, 1, 1.0, 3)];
        // Bridge once (no lease yet), then lease what the store holds.
        assert_eq!(es[0].bucket.try_take(0), Ok(()));
        es[0].refiller.sync(20).await;
        let taken = (0..10)
            .filter(|_| es[0].bucket.try_take(21).is_ok())
            .count();
        assert!(taken <= 3, "{taken}");
        es[0].refiller.sync(40).await;
        // The store could not give all that was asked: once the lease is spent, requests
        // are rejected with the store's wait, not bridged on the local share.
        let bridged = es[0].metrics.cluster_limit_bridged.get();
        let wait = (0..10)
            .find_map(|_| es[0].bucket.try_take(41).err())
            .unwrap();
        assert!((1..=1_000).contains(&wait), "{wait}");
        assert_eq!(es[0].metrics.cluster_limit_bridged.get(), bridged);
        // Tokens leased and unused are gone after lease_ms.
        {
            let mut st = lock(&es[0].bucket.state);
            st.tokens = 5;
            st.starved = false;
            st.expires_ms = 100;
        }
        assert!(es[0].bucket.try_take(99).is_ok());
        assert_eq!(lock(&es[0].bucket.state).tokens, 4);
        es[0].refiller.sync(100).await;
        assert!(lock(&es[0].bucket.state).tokens <= 1);
    }
}
