//! Policy enforcement: snapshots compiled into a per-route matcher, swapped atomically.
//!
//! One task owns the policy source and calls [`PolicyStore::apply`]; the request path only
//! loads the current [`CompiledPolicies`] (an `arc-swap` read, no lock). Each policy carries
//! its own local state — a breaker for circuit-break, a token bucket for rate-limit — which
//! survives a snapshot that renews the policy unchanged, so a renewal does not reset
//! recovery. An invalid snapshot is refused and the last good one keeps serving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use schemas::{Action, Dimensions, Policy, PolicyError, PolicySnapshot};

use crate::breaker::{Admission, Breaker, BreakerSettings, Outcome, State};
use crate::cluster_bucket::{ClusterLimits, SharedBucket};
use crate::limiter::TokenBucket;

/// The attributes of one request that slices test.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Route name.
    pub route: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Upstream `host:port`.
    pub upstream: &'a str,
    /// Configured dimensions.
    pub dimensions: &'a Dimensions,
}

impl RequestView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "method" => Some(self.method),
            "upstream" => Some(self.upstream),
            _ => self.dimensions.get(key).map(String::as_str),
        }
    }
}

#[derive(Debug)]
enum ActionState {
    Breaker(Box<Breaker>),
    Bucket(TokenBucket),
    /// A rate limit shared by every enforcer (`cluster_limits`): leased tokens, or the
    /// local share while Redis is away.
    Shared(Arc<SharedBucket>),
    Degrade,
}

/// A live policy with its local state.
#[derive(Debug)]
pub struct PolicyRuntime {
    /// The policy as issued.
    pub policy: Policy,
    /// Conjunctions for one route, keys pre-rendered: `(route, [(key, value)])`.
    conjunctions: Vec<(String, Vec<(String, String)>)>,
    state: Arc<Mutex<ActionState>>,
    /// Shadow: count, never reject.
    pub shadow: bool,
    /// Requests rejected (or, in shadow, that would have been).
    pub rejections: AtomicU64,
}

/// What the policies say about one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Let it through; these policies' slices contain it (for outcome attribution).
    Pass {
        /// Matching policies.
        matched: Vec<Arc<PolicyRuntime>>,
        /// The first shadow policy that would have rejected it.
        would_reject: Option<Arc<PolicyRuntime>>,
    },
    /// Reject it.
    Reject {
        /// The deciding policy.
        policy: Arc<PolicyRuntime>,
        /// Which response.
        kind: RejectKind,
        /// Suggested wait, ms.
        retry_after_ms: u64,
    },
}

/// How a policy rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// 429: rate limit.
    RateLimited,
    /// 503: circuit open.
    CircuitOpen,
    /// The route's fallback: degrade.
    Degraded,
}

impl RejectKind {
    /// The plan's `policy_type` label.
    pub fn policy_type(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limit",
            Self::CircuitOpen => "circuit_break",
            Self::Degraded => "degrade",
        }
    }
}

impl PolicyRuntime {
    fn new(
        policy: Policy,
        previous: Option<&Arc<PolicyRuntime>>,
        now_ms: u64,
        global_shadow: bool,
        cluster: Option<&Arc<ClusterLimits>>,
    ) -> Self {
        let state = match (&policy.action, previous) {
            // Same action as before: share the running breaker / bucket (requests still
            // holding the old snapshot keep updating the same state).
            (action, Some(prev)) if prev.policy.action == *action => Arc::clone(&prev.state),
            (
                Action::CircuitBreak {
                    open_ms,
                    ramp_step,
                    probes,
                    failure_ratio,
                },
                _,
            ) => fresh(ActionState::Breaker(Box::new(Breaker::new_open(
                BreakerSettings {
                    window_ms: (*open_ms).max(10_000),
                    min_calls: *probes,
                    failure_ratio: failure_ratio.get().max(f64::MIN_POSITIVE),
                    slow_call_ms: None,
                    slow_call_ratio: 1.0,
                    open_ms: *open_ms,
                    ramp_step: ramp_step.get(),
                    probes: *probes,
                },
                now_ms,
            )))),
            (
                Action::RateLimit {
                    requests_per_second,
                    burst,
                },
                _,
            ) => fresh(match cluster {
                Some(c) => {
                    ActionState::Shared(c.bucket(&policy.id, *requests_per_second, *burst, now_ms))
                }
                None => ActionState::Bucket(TokenBucket::new(*requests_per_second, *burst, now_ms)),
            }),
            (Action::Degrade, _) => fresh(ActionState::Degrade),
        };
        let conjunctions = policy
            .slice
            .any
            .iter()
            .map(|c| {
                (
                    c.route.clone(),
                    c.all
                        .iter()
                        .map(|m| (m.key.to_string(), m.value.clone()))
                        .collect(),
                )
            })
            .collect();
        Self {
            shadow: policy.shadow || global_shadow,
            rejections: AtomicU64::new(
                previous.map_or(0, |p| p.rejections.load(Ordering::Relaxed)),
            ),
            policy,
            conjunctions,
            state,
        }
    }

    /// Whether the request is in this policy's slice.
    pub fn contains(&self, req: &RequestView<'_>) -> bool {
        self.conjunctions.iter().any(|(route, all)| {
            route == req.route && all.iter().all(|(k, v)| req.get(k) == Some(v.as_str()))
        })
    }

    fn decide(&self, now_ms: u64) -> Option<(RejectKind, u64)> {
        match &mut *lock(&self.state) {
            ActionState::Breaker(b) => match b.admit(now_ms) {
                Admission::Allow => None,
                Admission::Reject { retry_after_ms } => {
                    Some((RejectKind::CircuitOpen, retry_after_ms))
                }
            },
            ActionState::Bucket(bucket) => bucket
                .try_take(now_ms)
                .err()
                .map(|wait| (RejectKind::RateLimited, wait)),
            ActionState::Shared(bucket) => bucket
                .try_take(now_ms)
                .err()
                .map(|wait| (RejectKind::RateLimited, wait)),
            ActionState::Degrade => Some((RejectKind::Degraded, 1_000)),
        }
    }

    /// Attributes a finished request in the slice to this policy's cluster: an error whose
    /// template is in the signature is a failure, a success is a success, anything else (a
    /// different failure) says nothing about this cluster.
    pub fn record(&self, now_ms: u64, error_template: Option<u64>, latency_ms: u64) {
        let failure = match error_template {
            Some(t) if self.policy.signature.contains(&t) => true,
            Some(_) => return,
            None => false,
        };
        if let ActionState::Breaker(b) = &mut *lock(&self.state) {
            b.record(
                now_ms,
                Outcome {
                    failure,
                    latency_ms,
                },
            );
        }
    }

    /// The breaker state, for circuit-break policies.
    pub fn breaker_state(&self, now_ms: u64) -> Option<State> {
        match &*lock(&self.state) {
            ActionState::Breaker(b) => Some(b.state(now_ms)),
            _ => None,
        }
    }
}

fn fresh(state: ActionState) -> Arc<Mutex<ActionState>> {
    Arc::new(Mutex::new(state))
}

/// A poisoned lock only means another request panicked mid-update; the state inside is
/// still a valid breaker or bucket, so keep serving with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A snapshot compiled for the request path.
#[derive(Debug, Default)]
pub struct CompiledPolicies {
    version: u64,
    by_route: HashMap<String, RouteIndex>,
    all: Vec<Arc<PolicyRuntime>>,
}

/// A policy with its rank (0 = most severe).
type Ranked = (usize, Arc<PolicyRuntime>);

/// The policies of one route, indexed so a request costs a few hash lookups however many
/// policies there are: each conjunction is filed under its first `key = value` test (or as
/// route-wide when it has none), and only the policies filed under the request's own values
/// are checked in full.
#[derive(Debug, Default)]
struct RouteIndex {
    /// Policies with a route-wide conjunction, by rank.
    whole_route: Vec<Ranked>,
    /// key → value → policies, by rank (few keys per route: a vector scan beats hashing).
    by_atom: Vec<(String, HashMap<String, Vec<Ranked>>)>,
}

impl RouteIndex {
    /// Candidate policies for a request, most severe first, each once.
    fn candidates(&self, req: &RequestView<'_>) -> Vec<&Ranked> {
        let mut out: Vec<&Ranked> = self.whole_route.iter().collect();
        for (key, by_value) in &self.by_atom {
            if let Some(ps) = req.get(key).and_then(|v| by_value.get(v)) {
                out.extend(ps.iter());
            }
        }
        if out.len() > 1 {
            out.sort_by_key(|(rank, _)| *rank);
            out.dedup_by_key(|(rank, _)| *rank);
        }
        out
    }
}

impl CompiledPolicies {
    /// Compiles `snapshot`, carrying state over from `previous` by policy id.
    pub fn compile(
        snapshot: &PolicySnapshot,
        previous: &CompiledPolicies,
        now_ms: u64,
        global_shadow: bool,
    ) -> Self {
        Self::compile_with(snapshot, previous, now_ms, global_shadow, None)
    }

    /// [`compile`](Self::compile), with rate-limit policies on cluster-wide buckets when
    /// `cluster` is given.
    pub fn compile_with(
        snapshot: &PolicySnapshot,
        previous: &CompiledPolicies,
        now_ms: u64,
        global_shadow: bool,
        cluster: Option<&Arc<ClusterLimits>>,
    ) -> Self {
        let prev_by_id: HashMap<&str, &Arc<PolicyRuntime>> = previous
            .all
            .iter()
            .map(|p| (p.policy.id.as_str(), p))
            .collect();
        let mut all: Vec<Arc<PolicyRuntime>> = snapshot
            .policies()
            .iter()
            .map(|p| {
                Arc::new(PolicyRuntime::new(
                    p.clone(),
                    prev_by_id.get(p.id.as_str()).copied(),
                    now_ms,
                    global_shadow,
                    cluster,
                ))
            })
            .collect();
        // Most severe first: when slices overlap, the strongest action decides.
        all.sort_by(|a, b| b.policy.severity.get().total_cmp(&a.policy.severity.get()));
        let mut by_route: HashMap<String, RouteIndex> = HashMap::new();
        for (rank, p) in all.iter().enumerate() {
            for (route, tests) in &p.conjunctions {
                let index = by_route.entry(route.clone()).or_default();
                let entry = (rank, Arc::clone(p));
                match tests.first() {
                    None => index.whole_route.push(entry),
                    Some((k, v)) => {
                        let slot = match index.by_atom.iter().position(|(key, _)| key == k) {
                            Some(i) => i,
                            None => {
                                index.by_atom.push((k.clone(), HashMap::new()));
                                index.by_atom.len() - 1
                            }
                        };
                        index.by_atom[slot]
                            .1
                            .entry(v.clone())
                            .or_default()
                            .push(entry);
                    }
                }
            }
        }
        Self {
            version: snapshot.version(),
            by_route,
            all,
        }
    }

    /// The snapshot version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// All live policies.
    pub fn policies(&self) -> &[Arc<PolicyRuntime>] {
        &self.all
    }

    /// Judges one request at monotonic `now_ms` / wall-clock `wall_ms`.
    pub fn judge(&self, req: &RequestView<'_>, now_ms: u64, wall_ms: i64) -> Verdict {
        let candidates = match self.by_route.get(req.route) {
            Some(index) => index.candidates(req),
            None => Vec::new(),
        };
        let mut matched = Vec::new();
        let mut would_reject = None;
        for (_, p) in candidates {
            if !p.policy.is_live(wall_ms) || !p.contains(req) {
                continue;
            }
            if let Some((kind, retry_after_ms)) = p.decide(now_ms) {
                p.rejections.fetch_add(1, Ordering::Relaxed);
                if !p.shadow {
                    return Verdict::Reject {
                        policy: Arc::clone(p),
                        kind,
                        retry_after_ms,
                    };
                }
                would_reject.get_or_insert_with(|| Arc::clone(p));
            }
            matched.push(Arc::clone(p));
        }
        Verdict::Pass {
            matched,
            would_reject,
        }
    }
}

/// Why a snapshot was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// It did not decode or validate.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// It is older than the one in force.
    #[error("snapshot version {got} is older than the current {current}")]
    Stale {
        /// Offered version.
        got: u64,
        /// Version in force.
        current: u64,
    },
}

/// Holds the policies in force; written by one task, read by every request.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<CompiledPolicies>,
    synced: AtomicBool,
    global_shadow: bool,
    cluster: Option<Arc<ClusterLimits>>,
}

impl PolicyStore {
    /// An empty store; `synced` says whether the source is considered in sync from the start
    /// (the embedded source is).
    pub fn new(global_shadow: bool, synced: bool) -> Self {
        Self {
            current: ArcSwap::from_pointee(CompiledPolicies::default()),
            synced: AtomicBool::new(synced),
            global_shadow,
            cluster: None,
        }
    }

    /// Rate-limit policies applied from now on share cluster-wide buckets (`cluster_limits`).
    pub fn with_cluster_limits(mut self, cluster: Option<Arc<ClusterLimits>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The policies in force.
    pub fn load(&self) -> arc_swap::Guard<Arc<CompiledPolicies>> {
        self.current.load()
    }

    /// Whether a snapshot was ever applied (or the source needs none).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Marks the source in sync without a snapshot: it answered, and holds none yet.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Applies a validated snapshot unless it is older than the current one. `now_ms` is the
    /// enforcer's [`Clock::monotonic_ms`](crate::clock::Clock::monotonic_ms) (new breakers
    /// open until `now_ms + open_ms` on that clock), not wall time.
    pub fn apply(&self, snapshot: &PolicySnapshot, now_ms: u64) -> Result<u64, ApplyError> {
        let current = self.current.load();
        if snapshot.version() < current.version() {
            return Err(ApplyError::Stale {
                got: snapshot.version(),
                current: current.version(),
            });
        }
        let compiled = CompiledPolicies::compile_with(
            snapshot,
            &current,
            now_ms,
            self.global_shadow,
            self.cluster.as_ref(),
        );
        self.current.store(Arc::new(compiled));
        self.synced.store(true, Ordering::Relaxed);
        Ok(snapshot.version())
    }

    /// Decodes, validates and applies a JSON snapshot; on any error the last good one stays.
    pub fn apply_json(&self, bytes: &[u8], now_ms: u64) -> Result<u64, ApplyError> {
        let snapshot = PolicySnapshot::from_json(bytes)?;
        self.apply(&snapshot, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use schemas::{Conjunction, DimensionMatch, Ratio, Slice};

    use super::*;

    pub(crate) fn policy(
        id: &str,
        route: &str,
        matches: &[(&str, &str)],
        action: Action,
    ) -> Policy {
        Policy {
            id: id.into(),
            cluster_id: format!("c-{id}"),
            slice: Slice {
                any: vec![Conjunction {
                    route: route.into(),
                    all: matches
                        .iter()
                        .map(|(k, v)| DimensionMatch {
                            key: k.parse().unwrap(),
                            value: (*v).into(),
                        })
                        .collect(),
                }],
            },
            action,
            signature: [11, 12].into(),
            severity: Ratio::new(0.9).unwrap(),
            created_at_ms: 0,
            expires_at_ms: 300_000,
            shadow: false,
        }
    }

    fn breaker_action() -> Action {
        Action::CircuitBreak {
            open_ms: 5_000,
            ramp_step: Ratio::new(0.2).unwrap(),
            probes: 2,
            failure_ratio: Ratio::new(0.5).unwrap(),
        }
    }

    fn dims(pairs: &[(&str, &str)]) -> Dimensions {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn view<'a>(route: &'a str, d: &'a Dimensions) -> RequestView<'a> {
        RequestView {
            route,
            method: "POST",
            upstream: "127.0.0.1:1",
            dimensions: d,
        }
    }

    fn is_reject(v: &Verdict) -> Option<RejectKind> {
        match v {
            Verdict::Reject { kind, .. } => Some(*kind),
            Verdict::Pass { .. } => None,
        }
    }

    #[test]
    fn rejects_only_the_slice() {
        let store = PolicyStore::new(false, true);
        let snap = PolicySnapshot::new(
            1,
            0,
            vec![policy(
                "p",
                "pay",
                &[("body:channel", "alipay")],
                breaker_action(),
            )],
        )
        .unwrap();
        store.apply(&snap, 0).unwrap();
        let alipay = dims(&[("body:channel", "alipay")]);
        let card = dims(&[("body:channel", "card")]);
        let table = [
            (view("pay", &alipay), Some(RejectKind::CircuitOpen)),
            (view("pay", &card), None),
            (view("refund", &alipay), None),
            (
                RequestView {
                    method: "GET",
                    ..view("pay", &alipay)
                },
                Some(RejectKind::CircuitOpen),
            ),
        ];
        for (i, (req, want)) in table.iter().enumerate() {
            assert_eq!(
                is_reject(&store.load().judge(req, 1_000, 1_000)),
                *want,
                "case {i}"
            );
        }
    }

    #[test]
    fn the_index_finds_exactly_the_matching_policies_most_severe_first() {
        let mut policies: Vec<Policy> = (0..500)
            .map(|i| {
                policy(
                    &format!("p{i}"),
                    "pay",
                    &[("body:channel", &format!("ch{i}"))],
                    Action::Degrade,
                )
            })
            .collect();
        // Two conjunctions on one route: still judged once.
        let mut twice = policy(
            "twice",
            "pay",
            &[("header:x-tenant", "acme")],
            breaker_action(),
        );
        twice.severity = Ratio::new(1.0).unwrap();
        let again = twice.slice.any[0].clone();
        twice.slice.any.push(again);
        policies.push(twice);
        // A conjunction whose first test does not match but the request still must not match.
        policies.push(policy(
            "two-tests",
            "pay",
            &[("body:channel", "ch7"), ("method", "GET")],
            Action::Degrade,
        ));
        let store = PolicyStore::new(false, true);
        store
            .apply(&PolicySnapshot::new(1, 0, policies).unwrap(), 0)
            .unwrap();
        let d = dims(&[("body:channel", "ch7"), ("header:x-tenant", "acme")]);
        match store.load().judge(&view("pay", &d), 1_000, 0) {
            Verdict::Reject { policy, .. } => assert_eq!(policy.policy.id, "twice"),
            other => panic!("{other:?}"),
        }
        let d = dims(&[("body:channel", "ch7")]);
        match store.load().judge(&view("pay", &d), 1_000, 0) {
            Verdict::Reject { policy, .. } => assert_eq!(policy.policy.id, "p7"),
            other => panic!("{other:?}"),
        }
        let d = dims(&[("body:channel", "nope")]);
        assert!(matches!(
            store.load().judge(&view("pay", &d), 1_000, 0),
            Verdict::Pass { .. }
        ));
        assert!(matches!(
            store.load().judge(&view("refund", &d), 1_000, 0),
            Verdict::Pass { .. }
        ));
    }

    #[test]
    fn method_and_upstream_are_matchable_and_expired_policies_pass() {
        let store = PolicyStore::new(false, true);
        let p = policy(
            "p",
            "pay",
            &[("method", "POST"), ("upstream", "127.0.0.1:1")],
            Action::Degrade,
        );
        store
            .apply(&PolicySnapshot::new(1, 0, vec![p]).unwrap(), 0)
            .unwrap();
        let d = dims(&[]);
        assert_eq!(
            is_reject(&store.load().judge(&view("pay", &d), 0, 1_000)),
            Some(RejectKind::Degraded)
        );
        assert_eq!(
            is_reject(&store.load().judge(&view("pay", &d), 0, 300_000)),
            None
        );
    }

    #[test]
    fn shadow_counts_without_rejecting() {
        let store = PolicyStore::new(true, true);
        store
            .apply(
                &PolicySnapshot::new(1, 0, vec![policy("p", "pay", &[], Action::Degrade)]).unwrap(),
                0,
            )
            .unwrap();
        let d = dims(&[]);
        for _ in 0..3 {
            assert!(is_reject(&store.load().judge(&view("pay", &d), 0, 0)).is_none());
        }
        assert_eq!(
            store.load().policies()[0]
                .rejections
                .load(Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn rate_limit_policies_admit_their_rate() {
        let store = PolicyStore::new(false, true);
        let action = Action::RateLimit {
            requests_per_second: 10.0,
            burst: 5,
        };
        store
            .apply(
                &PolicySnapshot::new(1, 0, vec![policy("p", "pay", &[], action)]).unwrap(),
                0,
            )
            .unwrap();
        let d = dims(&[]);
        let passed = (0..20)
            .filter(|_| is_reject(&store.load().judge(&view("pay", &d), 0, 0)).is_none())
            .count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn half_open_probes_attributed_by_signature_close_the_breaker() {
        let store = PolicyStore::new(false, true);
        store
            .apply(
                &PolicySnapshot::new(1, 0, vec![policy("p", "pay", &[], breaker_action())])
                    .unwrap(),
                0,
            )
            .unwrap();
        let d = dims(&[]);
        let mut t = 5_000;
        for _ in 0..5 {
            // Admit whatever the ramp lets through; those probes succeed.
            for _ in 0..10 {
                if let Verdict::Pass { matched, .. } = store.load().judge(&view("pay", &d), t, 0) {
                    for p in matched {
                        p.record(t, None, 5);
                    }
                }
            }
            t += 10;
        }
        assert_eq!(
            store.load().policies()[0].breaker_state(t),
            Some(State::Closed)
        );
    }

    #[test]
    fn other_failures_do_not_count_against_a_cluster() {
        let store = PolicyStore::new(false, true);
        store
            .apply(
                &PolicySnapshot::new(1, 0, vec![policy("p", "pay", &[], breaker_action())])
                    .unwrap(),
                0,
            )
            .unwrap();
        let p = Arc::clone(&store.load().policies()[0]);
        let _ = p.decide(5_000); // half-open
        p.record(5_001, Some(999), 5);
        p.record(5_002, Some(999), 5);
        assert_eq!(p.breaker_state(5_002), Some(State::HalfOpen));
        p.record(5_003, Some(11), 5);
        assert_eq!(p.breaker_state(5_003), Some(State::Open));
    }

    #[test]
    fn renewals_keep_state_invalid_and_stale_snapshots_are_refused() {
        let store = PolicyStore::new(false, true);
        let p = policy("p", "pay", &[], breaker_action());
        store
            .apply(&PolicySnapshot::new(1, 0, vec![p.clone()]).unwrap(), 0)
            .unwrap();
        let mut renewed = p.clone();
        renewed.expires_at_ms = 600_000;
        // Renewed at t=4000: the breaker opened at 0 must still probe at 5000, not at 9000.
        store
            .apply(&PolicySnapshot::new(2, 0, vec![renewed]).unwrap(), 4_000)
            .unwrap();
        assert_eq!(
            store.load().policies()[0].breaker_state(5_000),
            Some(State::HalfOpen)
        );

        assert!(matches!(
            store.apply_json(
                b"{\"version\": 3, \"issued_at_ms\": 0, \"policies\": [{}]}",
                0
            ),
            Err(ApplyError::Invalid(_))
        ));
        assert!(matches!(
            store.apply(&PolicySnapshot::new(1, 0, vec![]).unwrap(), 0),
            Err(ApplyError::Stale { .. })
        ));
        assert_eq!(store.load().version(), 2);
        assert_eq!(store.load().policies().len(), 1);
    }
}
