//! From the SQL's decisions to policies: one lifecycle per cluster, the operator's controls,
//! and the policy applier.
//!
//! The [`Decider`] is a plain state machine: decisions and operator commands go in with the
//! time, snapshots to publish come out. The async job ([`crate::job`]) feeds it; tests drive it
//! directly.
//!
//! - A decision whose trigger holds (an action) issues a policy when the cluster's lifecycle
//!   allows it; a later, clearly worse one escalates it; while `holding` stays true the policy
//!   is renewed before it lapses and its signature grows with the templates the enforcer
//!   reports in the slice; once the cluster is quiet for the lifecycle's recovery windows the
//!   policy is withdrawn (never sooner than the lifecycle's dwell after the last change).
//! - A cluster with no row in a closed window is quiet (no errors reached the upstream).
//! - Operator controls: a benign cluster is never acted on; a policy can be forced into
//!   shadow or enforce mode, pinned (kept and renewed whatever the windows say) or disabled
//!   (withdrawn, not re-issued); a forced policy goes straight to the applier.

use std::collections::{BTreeMap, BTreeSet};

use schemas::{Action, Policy, PolicySnapshot, Ratio, Slice};
use serde::{Deserialize, Serialize};

use crate::applier::PolicyApplier;
use crate::decision::Decision;
use crate::lifecycle::{
    Lifecycle, LifecycleConfig, Phase, PolicyChange, Transition, WindowVerdict,
};

/// The id of the policy protecting against `cluster_id`.
pub fn policy_id(cluster_id: &str) -> String {
    format!("policy-{cluster_id}")
}

/// How an operator overrode one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Count "would have rejected" without rejecting.
    Shadow,
    /// Enforce even when the job runs in global shadow mode.
    Enforce,
    /// Keep it in force and renewed, whatever the windows say.
    Pin,
    /// Withdraw it and do not issue it again.
    Disable,
}

/// What the decider knows about one cluster.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The lifecycle.
    pub lifecycle: Lifecycle,
    /// The latest decision seen.
    pub last: Option<Decision>,
    /// The policy the cluster has in force, if any.
    pub policy: Option<Policy>,
    /// Windows seen.
    pub windows: u64,
}

/// Counters for metrics and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeciderStats {
    /// Policies issued (first time for an incident).
    pub issued: u64,
    /// Policies replaced by stronger ones.
    pub escalated: u64,
    /// Renewals published.
    pub renewed: u64,
    /// Policies withdrawn after recovery.
    pub withdrawn: u64,
    /// Circuit-break policies left armed (breaker closed) after recovery, until they lapse.
    pub left_armed: u64,
    /// Policies that lapsed without renewal.
    pub expired: u64,
    /// Decisions or policies refused (bad slice, bad parameters).
    pub refused: u64,
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct Step {
    /// The snapshot to publish, when the live set changed.
    pub snapshot: Option<PolicySnapshot>,
    /// Refusals, with the reason.
    pub refused: Vec<String>,
}

/// Decisions in, snapshots out.
#[derive(Debug)]
pub struct Decider {
    config: LifecycleConfig,
    global_shadow: bool,
    clusters: BTreeMap<String, Tracked>,
    applier: PolicyApplier,
    benign: BTreeSet<String>,
    modes: BTreeMap<String, Mode>,
    forced: BTreeSet<String>,
    stats: DeciderStats,
}

impl Decider {
    /// A decider whose first snapshot is above `last_version`.
    pub fn new(config: LifecycleConfig, global_shadow: bool, last_version: u64) -> Self {
        Self {
            config,
            global_shadow,
            clusters: BTreeMap::new(),
            applier: PolicyApplier::new(last_version),
            benign: BTreeSet::new(),
            modes: BTreeMap::new(),
            forced: BTreeSet::new(),
            stats: DeciderStats::default(),
        }
    }

    /// The clusters seen so far.
    pub fn clusters(&self) -> &BTreeMap<String, Tracked> {
        &self.clusters
    }

    /// The live policies.
    pub fn policies(&self) -> Vec<Policy> {
        self.applier.live().cloned().collect()
    }

    /// The last snapshot version handed out.
    pub fn version(&self) -> u64 {
        self.applier.version()
    }

    /// Counters so far.
    pub fn stats(&self) -> DeciderStats {
        self.stats
    }

    /// Whether every new policy is issued in shadow mode.
    pub fn global_shadow(&self) -> bool {
        self.global_shadow
    }

    /// Clusters marked benign.
    pub fn benign(&self) -> &BTreeSet<String> {
        &self.benign
    }

    /// Operator overrides by policy id.
    pub fn modes(&self) -> &BTreeMap<String, Mode> {
        &self.modes
    }

    /// Feeds the decisions of the windows that just closed. `closed_until_ms` is the end of
    /// the newest closed window: tracked clusters without a row for it get a quiet verdict.
    pub fn on_decisions(
        &mut self,
        decisions: Vec<Decision>,
        closed_until_ms: Option<i64>,
        now_ms: i64,
    ) -> Step {
        let mut offers = Vec::new();
        let mut withdrawals = Vec::new();
        let mut refused = Vec::new();
        let mut seen_at_latest = BTreeSet::new();
        // The SQL names a group of clusters that learned one slice after its busiest member,
        // which can change from one window to the next. A slice that already has a policy
        // stays with the cluster holding it, so the policy (and its breaker) is not replaced.
        let holders: Vec<(Slice, String)> = self
            .clusters
            .iter()
            .filter_map(|(id, t)| t.policy.as_ref().map(|p| (p.slice.clone(), id.clone())))
            .collect();
        for mut d in decisions {
            if let Some(slice) = &d.slice
                && let Some((_, holder)) = holders.iter().find(|(s, _)| s == slice)
            {
                d.cluster_id.clone_from(holder);
            }
            if closed_until_ms == Some(d.window_end_ms) {
                seen_at_latest.insert(d.cluster_id.clone());
            }
            if self.benign.contains(&d.cluster_id) {
                continue;
            }
            let id = policy_id(&d.cluster_id);
            let mode = self.modes.get(&id).copied();
            let tracked = self
                .clusters
                .entry(d.cluster_id.clone())
                .or_insert_with(|| Tracked {
                    lifecycle: Lifecycle::new(self.config.clone()),
                    last: None,
                    policy: None,
                    windows: 0,
                });
            tracked.windows += 1;
            let in_force = matches!(tracked.lifecycle.phase(), Phase::Active | Phase::Recovering);
            let verdict = WindowVerdict {
                window_end_ms: d.window_end_ms,
                errors: d.errors,
                triggered: mode != Some(Mode::Disable)
                    && if in_force {
                        d.holding || mode == Some(Mode::Pin)
                    } else {
                        d.action.is_some()
                    },
                severity: d.severity,
            };
            let change = tracked.lifecycle.on_window(verdict);
            match change {
                PolicyChange::Issue { .. } | PolicyChange::Escalate { .. } => {
                    match self.policy_from(&d, mode, now_ms) {
                        Ok(p) => {
                            if matches!(change, PolicyChange::Issue { .. }) {
                                self.stats.issued += 1;
                            } else {
                                self.stats.escalated += 1;
                            }
                            let tracked = self.tracked_mut(&d.cluster_id);
                            tracked.policy = Some(p.clone());
                            offers.push(p);
                        }
                        Err(reason) => {
                            self.tracked_mut(&d.cluster_id)
                                .lifecycle
                                .on_refused(d.window_end_ms);
                            self.stats.refused += 1;
                            refused.push(format!("cluster {}: {reason}", d.cluster_id));
                        }
                    }
                }
                PolicyChange::Renew => {
                    let tracked = self.tracked_mut(&d.cluster_id);
                    if let Some(p) = renewed(tracked.policy.as_ref(), &d, now_ms) {
                        tracked.policy = Some(p.clone());
                        self.stats.renewed += 1;
                        offers.push(p);
                    }
                }
                PolicyChange::Withdraw => {
                    if mode != Some(Mode::Pin) {
                        self.recovered(&d.cluster_id, &mut withdrawals);
                    }
                }
                PolicyChange::Keep => {}
            }
            let cluster = d.cluster_id.clone();
            self.tracked_mut(&cluster).last = Some(d);
        }
        if let Some(end) = closed_until_ms {
            let quiet: Vec<String> = self
                .clusters
                .keys()
                .filter(|c| !seen_at_latest.contains(*c))
                .cloned()
                .collect();
            for c in quiet {
                let id = policy_id(&c);
                let pinned = self.modes.get(&id) == Some(&Mode::Pin);
                let tracked = self.tracked_mut(&c);
                if tracked.lifecycle.phase() == Phase::Monitoring {
                    continue;
                }
                let change = tracked.lifecycle.on_window(WindowVerdict {
                    window_end_ms: end,
                    errors: 0,
                    triggered: pinned,
                    severity: 0.0,
                });
                match change {
                    PolicyChange::Withdraw if !pinned => self.recovered(&c, &mut withdrawals),
                    PolicyChange::Renew => {
                        if let Some(p) = tracked.policy.as_ref().map(|p| extend(p, now_ms)) {
                            tracked.policy = Some(p.clone());
                            offers.push(p);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut step = self.apply(offers, &withdrawals, now_ms);
        step.refused.extend(refused);
        step
    }

    /// Forgets clusters idle in MONITORING, without a policy, whose last window ended more
    /// than `idle_ms` ago (noise that came and went), so memory and metric labels stay
    /// bounded. Benign marks are kept. Returns the forgotten ids.
    pub fn prune(&mut self, now_ms: i64, idle_ms: i64) -> Vec<String> {
        let stale: Vec<String> = self
            .clusters
            .iter()
            .filter(|(_, t)| {
                t.policy.is_none()
                    && t.lifecycle.phase() == Phase::Monitoring
                    && t.last
                        .as_ref()
                        .is_none_or(|d| now_ms - d.window_end_ms > idle_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &stale {
            self.clusters.remove(id);
        }
        stale
    }

    /// Drops lapsed policies (their clusters' lifecycles record EXPIRED).
    pub fn expire(&mut self, now_ms: i64) -> Step {
        self.apply(Vec::new(), &[], now_ms)
    }

    /// The snapshot was published: the policies in it are in force.
    pub fn on_published(&mut self, snapshot: &PolicySnapshot, now_ms: i64) {
        for p in snapshot.policies() {
            if let Some(t) = self.clusters.get_mut(&p.cluster_id) {
                t.lifecycle.on_applied(now_ms);
            }
        }
    }

    /// Marks a cluster benign (never acted on) or not; a benign cluster's policy is withdrawn.
    pub fn set_benign(&mut self, cluster_id: &str, benign: bool, now_ms: i64) -> Step {
        if !benign {
            self.benign.remove(cluster_id);
            return Step::default();
        }
        self.benign.insert(cluster_id.to_owned());
        let id = policy_id(cluster_id);
        if let Some(t) = self.clusters.get_mut(cluster_id) {
            t.policy = None;
            t.lifecycle = Lifecycle::new(self.config.clone());
        }
        self.apply(Vec::new(), &[id], now_ms)
    }

    /// Overrides one policy's mode (`None` clears the override). It applies to the live
    /// policy with that id now, and to any later one with the same id.
    pub fn set_mode(&mut self, policy: &str, mode: Option<Mode>, now_ms: i64) -> Step {
        match mode {
            None => {
                self.modes.remove(policy);
            }
            Some(m) => {
                self.modes.insert(policy.to_owned(), m);
            }
        }
        let live = self.applier.live().find(|p| p.id == policy).cloned();
        let Some(mut p) = live else {
            return Step::default();
        };
        if mode == Some(Mode::Disable) {
            self.forced.remove(policy);
            if let Some(t) = self.clusters.get_mut(&p.cluster_id) {
                t.policy = None;
            }
            return self.apply(Vec::new(), &[policy.to_owned()], now_ms);
        }
        p.shadow = self.shadow_for(mode);
        if let Some(t) = self.clusters.get_mut(&p.cluster_id)
            && t.policy.as_ref().is_some_and(|tp| tp.id == p.id)
        {
            t.policy = Some(p.clone());
        }
        self.apply(vec![p], &[], now_ms)
    }

    /// Puts every new and live policy in shadow mode (or back to enforcing).
    pub fn set_global_shadow(&mut self, shadow: bool, now_ms: i64) -> Step {
        self.global_shadow = shadow;
        let updated: Vec<Policy> = self
            .applier
            .live()
            .map(|p| {
                let mut p = p.clone();
                p.shadow = self.shadow_for(self.modes.get(&p.id).copied());
                p
            })
            .collect();
        for p in &updated {
            if let Some(t) = self.clusters.get_mut(&p.cluster_id)
                && t.policy.as_ref().is_some_and(|tp| tp.id == p.id)
            {
                t.policy = Some(p.clone());
            }
        }
        self.apply(updated, &[], now_ms)
    }

    /// Forces a policy onto a slice (an operator's decision); the lifecycle never withdraws
    /// it, it lapses at its expiry or when disabled.
    pub fn force(&mut self, mut policy: Policy, now_ms: i64) -> Step {
        policy.shadow = policy.shadow || self.shadow_for(self.modes.get(&policy.id).copied());
        self.forced.insert(policy.id.clone());
        self.apply(vec![policy], &[], now_ms)
    }

    /// The cluster recovered. A rate limit or degrade policy is withdrawn: it would keep
    /// holding back a healthy slice. A circuit-break policy stays armed until it lapses: its
    /// local breaker has closed (the slice is fully let back in, at no cost), and it re-opens
    /// on its own within a few requests if the same failure returns — no pipeline round trip.
    fn recovered(&mut self, cluster_id: &str, withdrawals: &mut Vec<String>) {
        let tracked = self.tracked_mut(cluster_id);
        let Some(policy) = &tracked.policy else {
            return;
        };
        if matches!(policy.action, Action::CircuitBreak { .. }) {
            self.stats.left_armed += 1;
            return;
        }
        withdrawals.push(policy.id.clone());
        tracked.policy = None;
        self.stats.withdrawn += 1;
    }

    fn tracked_mut(&mut self, cluster_id: &str) -> &mut Tracked {
        let config = self.config.clone();
        self.clusters
            .entry(cluster_id.to_owned())
            .or_insert_with(|| Tracked {
                lifecycle: Lifecycle::new(config),
                last: None,
                policy: None,
                windows: 0,
            })
    }

    fn shadow_for(&self, mode: Option<Mode>) -> bool {
        match mode {
            Some(Mode::Shadow) => true,
            Some(Mode::Enforce) => false,
            _ => self.global_shadow,
        }
    }

    fn policy_from(&self, d: &Decision, mode: Option<Mode>, now_ms: i64) -> Result<Policy, String> {
        let action: Action = d.action.clone().ok_or("no action")?;
        let slice = d.slice.clone().ok_or("no slice was learned")?;
        let policy = Policy {
            id: policy_id(&d.cluster_id),
            cluster_id: d.cluster_id.clone(),
            slice,
            action,
            signature: d.signature.clone(),
            severity: Ratio::new(d.severity).map_err(|e| e.to_string())?,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(d.expires_in_ms),
            shadow: self.shadow_for(mode),
        };
        policy.validate().map_err(|e| e.to_string())?;
        Ok(policy)
    }

    fn apply(&mut self, offers: Vec<Policy>, withdrawals: &[String], now_ms: i64) -> Step {
        let before: BTreeSet<(String, String)> = self
            .applier
            .live()
            .map(|p| (p.id.clone(), p.cluster_id.clone()))
            .collect();
        let mut snapshot = None;
        for id in withdrawals {
            if let Some(s) = self.applier.withdraw(id, now_ms) {
                snapshot = Some(s);
            }
        }
        let applied = self.applier.offer(offers, now_ms);
        let mut refused = Vec::new();
        for (id, e) in applied.rejected {
            if let Some(t) = self
                .clusters
                .values_mut()
                .find(|t| t.policy.as_ref().is_some_and(|p| p.id == id))
            {
                t.lifecycle.on_refused(now_ms);
                t.policy = None;
            }
            self.stats.refused += 1;
            refused.push(format!("policy {id}: {e}"));
        }
        if applied.snapshot.is_some() {
            snapshot = applied.snapshot;
        }
        // Policies that left without a withdrawal lapsed.
        let after: BTreeSet<String> = self.applier.live().map(|p| p.id.clone()).collect();
        for (id, cluster) in before {
            if after.contains(&id) || withdrawals.contains(&id) {
                continue;
            }
            self.forced.remove(&id);
            if let Some(t) = self.clusters.get_mut(&cluster) {
                t.lifecycle.on_expired(now_ms);
                t.policy = None;
                self.stats.expired += 1;
            }
        }
        Step { snapshot, refused }
    }
}

/// The policy renewed by a window that still holds: a later expiry once half its life is
/// gone, and the templates the enforcer reported in the slice added to its signature.
fn renewed(current: Option<&Policy>, d: &Decision, now_ms: i64) -> Option<Policy> {
    let p = current?;
    let grows = !d.signature.is_subset(&p.signature);
    let half_gone = now_ms - p.created_at_ms >= (p.expires_at_ms - p.created_at_ms) / 2;
    if !grows && !half_gone {
        return None;
    }
    let mut next = if half_gone {
        extend(p, now_ms)
    } else {
        p.clone()
    };
    next.signature.extend(d.signature.iter().copied());
    Some(next)
}

/// `p` with its lifetime restarted at `now_ms`.
fn extend(p: &Policy, now_ms: i64) -> Policy {
    let life = p.expires_at_ms - p.created_at_ms;
    let mut next = p.clone();
    next.created_at_ms = now_ms;
    next.expires_at_ms = now_ms.saturating_add(life);
    next
}

/// One cluster as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The cluster.
    pub cluster_id: String,
    /// Lifecycle phase (the plan's names).
    pub phase: &'static str,
    /// Severity of the policy in force.
    pub severity: f64,
    /// Marked benign by an operator.
    pub benign: bool,
    /// Latest window: errors, growth, slice, in-slice error rate, decision.
    pub last: Option<DecisionView>,
    /// The policy in force.
    pub policy_id: Option<String>,
    /// Recent transitions, oldest first.
    pub timeline: Vec<TransitionView>,
}

/// The latest decision, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    /// Window end, Unix ms.
    pub window_end_ms: i64,
    /// Errors in the current 10 s.
    pub errors: u64,
    /// Growth against the 10 s before.
    pub growth: f64,
    /// Template ids seen.
    pub signature: BTreeSet<u64>,
    /// Masked template texts (examples).
    pub templates: Vec<String>,
    /// The learned slice.
    pub slice: Option<schemas::Slice>,
    /// Estimated requests in the slice.
    pub slice_traffic: f64,
    /// Errors per request in the slice.
    pub slice_error_rate: f64,
    /// Severity.
    pub severity: f64,
    /// The action, if the trigger held.
    pub action: Option<Action>,
}

/// One timeline entry, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    /// When, Unix ms.
    pub at_ms: i64,
    /// The phase entered.
    pub phase: &'static str,
}

impl Decider {
    /// Every cluster, for the API.
    pub fn cluster_views(&self) -> Vec<ClusterView> {
        self.clusters
            .iter()
            .map(|(id, t)| ClusterView {
                cluster_id: id.clone(),
                phase: t.lifecycle.phase().as_str(),
                severity: t.lifecycle.severity(),
                benign: self.benign.contains(id),
                last: t.last.as_ref().map(|d| DecisionView {
                    window_end_ms: d.window_end_ms,
                    errors: d.errors,
                    growth: d.growth,
                    signature: d.signature.clone(),
                    templates: d.templates.clone(),
                    slice: d.slice.clone(),
                    slice_traffic: d.slice_traffic,
                    slice_error_rate: d.slice_error_rate,
                    severity: d.severity,
                    action: d.action.clone(),
                }),
                policy_id: t.policy.as_ref().map(|p| p.id.clone()),
                timeline: t
                    .lifecycle
                    .timeline()
                    .map(|tr: &Transition| TransitionView {
                        at_ms: tr.at_ms,
                        phase: tr.phase.as_str(),
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use schemas::{Conjunction, DimensionMatch, Slice};

    use super::*;

    const S: i64 = 1_000;

    fn slice() -> Slice {
        Slice {
            any: vec![Conjunction {
                route: "payments".into(),
                all: vec![DimensionMatch {
                    key: "body:channel".parse().unwrap(),
                    value: "alipay".into(),
                }],
            }],
        }
    }

    /// A decision for cluster "c1" at `t` seconds: `action` when the trigger holds.
    fn decision(t: i64, errors: u64, action: Option<Action>, holding: bool) -> Decision {
        Decision {
            window_end_ms: t * S,
            cluster_id: "c1".into(),
            errors,
            previous_errors: 0,
            growth: 1.0,
            signature: [7].into(),
            templates: vec!["alipay refused <NUM>".into()],
            slice: Some(slice()),
            slice_traffic: 300.0,
            slice_error_rate: if holding { 1.0 } else { 0.0 },
            coverage: 1.0,
            severity: if action.is_some() { 1.0 } else { 0.0 },
            action,
            holding,
            expires_in_ms: 300_000,
        }
    }

    fn brk() -> Option<Action> {
        Some(Action::CircuitBreak {
            open_ms: 5_000,
            ramp_step: Ratio::new(0.2).unwrap(),
            probes: 5,
            failure_ratio: Ratio::new(0.5).unwrap(),
        })
    }

    fn decider() -> Decider {
        Decider::new(LifecycleConfig::default(), false, 0)
    }

    /// Feeds one window (with its own end as the newest closed window) and publishes.
    fn window(d: &mut Decider, rows: Vec<Decision>, t: i64) -> Option<PolicySnapshot> {
        let step = d.on_decisions(rows, Some(t * S), t * S);
        assert!(step.refused.is_empty(), "{:?}", step.refused);
        if let Some(s) = &step.snapshot {
            d.on_published(s, t * S);
        }
        step.snapshot
    }

    fn phase(d: &Decider) -> &'static str {
        d.clusters()["c1"].lifecycle.phase().as_str()
    }

    fn limit() -> Option<Action> {
        Some(Action::RateLimit {
            requests_per_second: 10.0,
            burst: 10,
        })
    }

    #[test]
    fn issues_renews_and_withdraws_after_the_dwell() {
        let mut d = decider();
        assert!(window(&mut d, vec![decision(1, 30, None, true)], 1).is_none());
        assert_eq!(phase(&d), "EVALUATING");
        let s = window(&mut d, vec![decision(2, 60, limit(), true)], 2).unwrap();
        assert_eq!(s.policies().len(), 1);
        assert_eq!(s.policies()[0].id, "policy-c1");
        assert_eq!(s.policies()[0].signature, [7].into());
        assert_eq!(phase(&d), "ACTIVE");
        // Holding windows renew only once half the lifetime is gone: no churn every second.
        for t in 3..5 {
            assert!(window(&mut d, vec![decision(t, 8, None, true)], t).is_none());
        }
        // Quiet windows: RECOVERING; two quiet windows (5 s, 6 s) would do, but the policy
        // stays the 5 s dwell after it was issued at 2 s.
        for t in 5..7 {
            assert!(
                window(&mut d, vec![], t).is_none(),
                "withdrawn too early at {t}"
            );
        }
        assert_eq!(phase(&d), "RECOVERING");
        let s = window(&mut d, vec![], 7).unwrap();
        assert!(s.policies().is_empty());
        assert_eq!(phase(&d), "MONITORING");
        assert_eq!(d.stats().issued, 1);
        assert_eq!(d.stats().withdrawn, 1);
    }

    #[test]
    fn a_window_reported_again_without_rows_is_not_a_quiet_window() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        for t in 3..12 {
            window(&mut d, vec![decision(t, 60, brk(), true)], t);
            // The job asks again before the next window closes: nothing new happened.
            assert!(
                d.on_decisions(vec![], Some(t * S), t * S + 19)
                    .snapshot
                    .is_none()
            );
            assert_eq!(phase(&d), "ACTIVE", "at {t}");
        }
    }

    #[test]
    fn a_row_that_came_in_an_earlier_batch_is_not_a_quiet_window() {
        // Distributed mode: replica A sends the row for window t before the slowest replica
        // has closed window t; the closing batch (from B) carries no row for the cluster, and
        // the window, already judged from A's row, must not be judged quiet.
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        for t in 3..12 {
            assert!(
                d.on_decisions(vec![decision(t, 60, brk(), true)], Some((t - 1) * S), t * S)
                    .snapshot
                    .is_none()
            );
            assert!(
                d.on_decisions(vec![], Some(t * S), t * S + 1)
                    .snapshot
                    .is_none()
            );
            assert_eq!(phase(&d), "ACTIVE", "at {t}");
        }
    }

    #[test]
    fn a_slice_keeps_its_policy_when_the_sql_names_its_group_after_another_cluster() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        // The same slice, now named after another cluster of the group (more errors there).
        for t in 3..12 {
            let mut other = decision(t, 90, brk(), true);
            other.cluster_id = "c2".into();
            window(&mut d, vec![other], t);
        }
        assert_eq!(d.policies().len(), 1);
        assert_eq!(d.policies()[0].id, "policy-c1");
        assert_eq!(phase(&d), "ACTIVE");
        assert!(!d.clusters().contains_key("c2"));
        assert_eq!(d.stats().issued, 1);
    }

    #[test]
    fn a_recovered_breaker_stays_armed_until_it_lapses() {
        let mut d = decider();
        let mut first = decision(2, 60, brk(), true);
        first.expires_in_ms = 60_000;
        window(&mut d, vec![first], 2).unwrap();
        for t in 3..40 {
            assert!(window(&mut d, vec![], t).is_none(), "changed at {t}");
        }
        assert_eq!(phase(&d), "MONITORING");
        assert_eq!(d.policies().len(), 1, "armed, its local breaker closed");
        assert_eq!(d.stats().left_armed, 1);
        let s = d.expire(62 * S).snapshot.unwrap();
        assert!(s.policies().is_empty());
        assert_eq!(phase(&d), "MONITORING", "the incident had already ended");
        assert!(d.clusters()["c1"].policy.is_none());
    }

    #[test]
    fn idle_clusters_are_forgotten_but_not_while_they_hold_a_policy() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        let mut noise = decision(2, 3, None, false);
        noise.cluster_id = "c2".into();
        noise.slice = None;
        window(&mut d, vec![noise], 2);
        for t in 3..6 {
            window(&mut d, vec![decision(t, 60, None, true)], t);
        }
        assert!(
            d.prune(700 * S, 800_000).is_empty(),
            "c2 seen 698 s ago: kept"
        );
        assert_eq!(d.prune(700 * S, 60_000), vec!["c2".to_string()]);
        assert!(d.clusters().contains_key("c1"), "c1 holds a policy");
    }

    #[test]
    fn a_holding_window_adds_new_templates_to_the_signature() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        let mut later = decision(3, 10, None, true);
        later.signature = [7, 9].into();
        let s = window(&mut d, vec![later], 3).unwrap();
        assert_eq!(s.policies()[0].signature, [7, 9].into());
        assert_eq!(
            s.policies()[0].expires_at_ms,
            2 * S + 300_000,
            "growth alone does not extend the lifetime"
        );
    }

    #[test]
    fn renewal_after_half_the_lifetime_extends_it() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        let t = 2 + 151;
        let s = window(&mut d, vec![decision(t, 10, None, true)], t).unwrap();
        assert_eq!(s.policies()[0].expires_at_ms, t * S + 300_000);
        assert_eq!(d.stats().renewed, 1);
    }

    #[test]
    fn an_unrenewed_policy_expires_and_the_cluster_records_it() {
        let mut d = decider();
        let mut first = decision(2, 60, brk(), true);
        first.expires_in_ms = 5_000;
        window(&mut d, vec![first], 2).unwrap();
        let s = d.expire(8 * S).snapshot.unwrap();
        assert!(s.policies().is_empty());
        assert_eq!(phase(&d), "EXPIRED");
        assert_eq!(d.stats().expired, 1);
    }

    #[test]
    fn a_benign_cluster_is_never_acted_on() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        let s = d.set_benign("c1", true, 3 * S).snapshot.unwrap();
        assert!(s.policies().is_empty());
        for t in 4..40 {
            assert!(window(&mut d, vec![decision(t, 60, brk(), true)], t).is_none());
        }
        d.set_benign("c1", false, 40 * S);
        assert!(window(&mut d, vec![decision(41, 60, brk(), true)], 41).is_some());
    }

    #[test]
    fn disabled_policies_stay_out_and_pinned_ones_stay_in() {
        let mut d = decider();
        window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        let s = d
            .set_mode("policy-c1", Some(Mode::Disable), 3 * S)
            .snapshot
            .unwrap();
        assert!(s.policies().is_empty());
        for t in 4..60 {
            assert!(
                window(&mut d, vec![decision(t, 60, brk(), true)], t).is_none(),
                "re-issued a disabled policy at {t}"
            );
        }
        d.set_mode("policy-c1", Some(Mode::Pin), 60 * S);
        for t in 61..63 {
            window(&mut d, vec![decision(t, 60, brk(), true)], t);
        }
        assert_eq!(
            d.policies().len(),
            1,
            "issued again once no longer disabled"
        );
        for t in 63..120 {
            window(&mut d, vec![], t);
        }
        assert_eq!(d.policies().len(), 1, "a pinned policy is not withdrawn");
    }

    #[test]
    fn global_shadow_and_per_policy_overrides() {
        let mut d = Decider::new(LifecycleConfig::default(), true, 0);
        let s = window(&mut d, vec![decision(2, 60, brk(), true)], 2).unwrap();
        assert!(s.policies()[0].shadow);
        let s = d
            .set_mode("policy-c1", Some(Mode::Enforce), 3 * S)
            .snapshot
            .unwrap();
        assert!(!s.policies()[0].shadow);
        let s = d.set_mode("policy-c1", None, 4 * S).snapshot.unwrap();
        assert!(s.policies()[0].shadow, "back to the global mode");
        let s = d.set_global_shadow(false, 5 * S).snapshot.unwrap();
        assert!(!s.policies()[0].shadow);
        assert!(
            d.set_global_shadow(false, 6 * S).snapshot.is_none(),
            "already enforcing: nothing changed"
        );
    }

    #[test]
    fn a_decision_without_a_slice_is_refused_and_retried_later() {
        let mut d = decider();
        let mut bad = decision(2, 60, brk(), true);
        bad.slice = None;
        let step = d.on_decisions(vec![bad], Some(2 * S), 2 * S);
        assert!(step.snapshot.is_none());
        assert_eq!(step.refused.len(), 1, "{:?}", step.refused);
        assert_eq!(phase(&d), "MONITORING");
        assert!(window(&mut d, vec![decision(3, 60, brk(), true)], 3).is_some());
    }

    #[test]
    fn escalation_replaces_the_action_of_the_same_policy() {
        let mut d = decider();
        let mut first = decision(2, 60, Some(Action::Degrade), true);
        first.severity = 0.3;
        window(&mut d, vec![first], 2).unwrap();
        // Worse, but inside the 5 s dwell: kept.
        assert!(window(&mut d, vec![decision(5, 200, brk(), true)], 5).is_none());
        let s = window(&mut d, vec![decision(7, 200, brk(), true)], 7).unwrap();
        assert_eq!(s.policies().len(), 1);
        assert!(matches!(
            s.policies()[0].action,
            Action::CircuitBreak { .. }
        ));
        assert_eq!(d.stats().escalated, 1);
    }

    #[test]
    fn a_forced_policy_goes_live_and_lapses_at_its_expiry() {
        let mut d = decider();
        let policy = Policy {
            id: "forced-1".into(),
            cluster_id: "operator".into(),
            slice: slice(),
            action: Action::Degrade,
            signature: BTreeSet::new(),
            severity: Ratio::new(1.0).unwrap(),
            created_at_ms: 0,
            expires_at_ms: 10 * S,
            shadow: false,
        };
        let s = d.force(policy, S).snapshot.unwrap();
        assert_eq!(s.policies()[0].id, "forced-1");
        assert!(d.expire(11 * S).snapshot.unwrap().policies().is_empty());
    }
}
