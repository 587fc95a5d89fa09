//! The plan's policy lifecycle, per failure cluster.
//!
//! ```text
//! MONITORING → EVALUATING → TRIGGERED → POLICY_GENERATED → POLICY_APPLIED → ACTIVE
//! ACTIVE → ESCALATING → ACTIVE          (worse: a stronger policy replaces the old one)
//! ACTIVE → RECOVERING → MONITORING      (the trigger stopped holding for `recovery_windows`)
//! ACTIVE → EXPIRED → MONITORING         (nobody renewed the policy before it expired)
//! ```
//!
//! The tracker is a plain state machine driven by closed windows and by the applier; time
//! comes in as arguments, so tests run without clocks.
//!
//! Protection comes first: a policy is issued as soon as the trigger holds, never held back.
//! Flapping is damped on the way out instead, as BGP damps route flaps: a policy is withdrawn
//! or escalated no sooner than a dwell after it was issued or last changed, and every time a
//! cluster's policy comes back within `flap_window_ms` of its withdrawal, that dwell doubles
//! (up to `max_dwell_ms`). A one-off incident is let go seconds after it ends; a fault that
//! comes and goes keeps its policy longer each time. A circuit break's own local breaker
//! re-admits the slice as soon as it heals whatever the dwell.

use std::collections::VecDeque;

/// Where a cluster stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No incident; watching.
    Monitoring,
    /// Errors seen; the trigger is being evaluated.
    Evaluating,
    /// The trigger holds; a policy is about to be generated.
    Triggered,
    /// A policy was generated and handed to the applier.
    PolicyGenerated,
    /// The applier published the policy.
    PolicyApplied,
    /// The policy is in force.
    Active,
    /// The incident is worsening; a stronger policy is being applied.
    Escalating,
    /// The trigger stopped holding; waiting before withdrawing the policy.
    Recovering,
    /// The policy expired without renewal.
    Expired,
}

impl Phase {
    /// The plan's upper-case name, used in metrics labels and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monitoring => "MONITORING",
            Self::Evaluating => "EVALUATING",
            Self::Triggered => "TRIGGERED",
            Self::PolicyGenerated => "POLICY_GENERATED",
            Self::PolicyApplied => "POLICY_APPLIED",
            Self::Active => "ACTIVE",
            Self::Escalating => "ESCALATING",
            Self::Recovering => "RECOVERING",
            Self::Expired => "EXPIRED",
        }
    }
}

/// What one closed window said about a cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowVerdict {
    /// End of the window, Unix milliseconds.
    pub window_end_ms: i64,
    /// Errors of the cluster in the window.
    pub errors: u64,
    /// Whether the SQL trigger held.
    pub triggered: bool,
    /// Severity computed by the SQL, in `[0, 1]`.
    pub severity: f64,
}

/// What the caller should do with the cluster's policy after a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyChange {
    /// Nothing changes.
    Keep,
    /// Issue a new policy at this severity.
    Issue { severity: f64 },
    /// Replace the policy with a stronger one at this severity.
    Escalate { severity: f64 },
    /// Renew the current policy's expiry.
    Renew,
    /// Withdraw the policy.
    Withdraw,
}

/// Tunables; [`Default`] holds the plan's values.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleConfig {
    /// Least time a new policy stays before it is withdrawn or escalated, ms (default 5 s).
    pub min_dwell_ms: i64,
    /// The dwell never grows beyond this, ms (default 60 s).
    pub max_dwell_ms: i64,
    /// A policy issued again within this long after its withdrawal is a flap: the dwell
    /// doubles. A cluster quiet for longer starts over at `min_dwell_ms` (default 60 s).
    pub flap_window_ms: i64,
    /// Quiet windows (trigger not holding) before a policy is withdrawn (default 2).
    pub recovery_windows: u32,
    /// Severity rise that counts as escalation (default 0.2).
    pub escalation_step: f64,
    /// Timeline entries kept per cluster (default 64).
    pub timeline_len: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            min_dwell_ms: 5_000,
            max_dwell_ms: 60_000,
            flap_window_ms: 60_000,
            recovery_windows: 2,
            escalation_step: 0.2,
            timeline_len: 64,
        }
    }
}

/// One entry of a cluster's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The phase entered.
    pub phase: Phase,
}

/// The lifecycle of one cluster.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    config: LifecycleConfig,
    phase: Phase,
    severity: f64,
    last_change_ms: Option<i64>,
    last_withdraw_ms: Option<i64>,
    last_window_ms: Option<i64>,
    dwell_ms: i64,
    quiet_windows: u32,
    timeline: VecDeque<Transition>,
}

impl Lifecycle {
    /// A cluster just discovered, in MONITORING.
    pub fn new(config: LifecycleConfig) -> Self {
        Self {
            dwell_ms: config.min_dwell_ms,
            config,
            phase: Phase::Monitoring,
            severity: 0.0,
            last_change_ms: None,
            last_withdraw_ms: None,
            last_window_ms: None,
            quiet_windows: 0,
            timeline: VecDeque::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Severity of the policy in force (0 without one).
    pub fn severity(&self) -> f64 {
        self.severity
    }

    /// The most recent transitions, oldest first.
    pub fn timeline(&self) -> impl Iterator<Item = &Transition> {
        self.timeline.iter()
    }

    fn enter(&mut self, phase: Phase, at_ms: i64) {
        self.phase = phase;
        if self.timeline.len() == self.config.timeline_len {
            self.timeline.pop_front();
        }
        self.timeline.push_back(Transition { at_ms, phase });
    }

    /// How long the current policy must stay before it is withdrawn or escalated.
    pub fn dwell_ms(&self) -> i64 {
        self.dwell_ms
    }

    fn may_change(&self, now_ms: i64) -> bool {
        self.last_change_ms
            .is_none_or(|t| now_ms - t >= self.dwell_ms)
    }

    /// A new policy: a flap (back soon after its withdrawal) doubles the dwell.
    fn issued(&mut self, now_ms: i64) {
        let flap = self
            .last_withdraw_ms
            .is_some_and(|t| now_ms - t <= self.config.flap_window_ms);
        self.dwell_ms = if flap {
            (self.dwell_ms * 2).min(self.config.max_dwell_ms)
        } else {
            self.config.min_dwell_ms
        };
        self.changed(now_ms);
    }

    fn changed(&mut self, now_ms: i64) {
        self.last_change_ms = Some(now_ms);
    }

    /// Feeds one closed window; returns what to do with the policy. Each window is judged
    /// once: a verdict for a window not newer than the last one judged changes nothing.
    pub fn on_window(&mut self, v: WindowVerdict) -> PolicyChange {
        let now = v.window_end_ms;
        if self.last_window_ms.is_some_and(|w| now <= w) {
            return PolicyChange::Keep;
        }
        self.last_window_ms = Some(now);
        match self.phase {
            Phase::Monitoring | Phase::Evaluating | Phase::Expired => {
                if self.phase == Phase::Expired {
                    self.enter(Phase::Monitoring, now);
                }
                if v.errors == 0 {
                    if self.phase == Phase::Evaluating {
                        self.enter(Phase::Monitoring, now);
                    }
                    return PolicyChange::Keep;
                }
                if self.phase == Phase::Monitoring {
                    self.enter(Phase::Evaluating, now);
                }
                if !v.triggered {
                    return PolicyChange::Keep;
                }
                self.enter(Phase::Triggered, now);
                self.enter(Phase::PolicyGenerated, now);
                self.severity = v.severity;
                self.quiet_windows = 0;
                self.issued(now);
                PolicyChange::Issue {
                    severity: v.severity,
                }
            }
            // Waiting for the applier; windows keep the policy alive.
            Phase::Triggered
            | Phase::PolicyGenerated
            | Phase::PolicyApplied
            | Phase::Escalating => PolicyChange::Keep,
            Phase::Active | Phase::Recovering => {
                if v.triggered {
                    self.quiet_windows = 0;
                    if self.phase == Phase::Recovering {
                        self.enter(Phase::Active, now);
                    }
                    if v.severity >= self.severity + self.config.escalation_step
                        && self.may_change(now)
                    {
                        self.enter(Phase::Escalating, now);
                        self.severity = v.severity;
                        self.changed(now);
                        return PolicyChange::Escalate {
                            severity: v.severity,
                        };
                    }
                    return PolicyChange::Renew;
                }
                self.quiet_windows += 1;
                if self.phase == Phase::Active {
                    self.enter(Phase::Recovering, now);
                }
                if self.quiet_windows >= self.config.recovery_windows && self.may_change(now) {
                    self.enter(Phase::Monitoring, now);
                    self.severity = 0.0;
                    self.changed(now);
                    self.last_withdraw_ms = Some(now);
                    return PolicyChange::Withdraw;
                }
                PolicyChange::Keep
            }
        }
    }

    /// The applier published the cluster's policy.
    pub fn on_applied(&mut self, at_ms: i64) {
        if matches!(self.phase, Phase::PolicyGenerated | Phase::Escalating) {
            if self.phase == Phase::PolicyGenerated {
                self.enter(Phase::PolicyApplied, at_ms);
            }
            self.enter(Phase::Active, at_ms);
        }
    }

    /// The generated policy was refused (no slice, bad parameters): a new incident goes back
    /// to MONITORING so a later window can try again; a refused escalation keeps the policy
    /// in force.
    pub fn on_refused(&mut self, at_ms: i64) {
        match self.phase {
            Phase::Triggered | Phase::PolicyGenerated => {
                self.enter(Phase::Monitoring, at_ms);
                self.severity = 0.0;
                self.last_change_ms = None;
            }
            Phase::Escalating => self.enter(Phase::Active, at_ms),
            _ => {}
        }
    }

    /// The policy's expiry passed without renewal.
    pub fn on_expired(&mut self, at_ms: i64) {
        if self.severity > 0.0 || self.phase != Phase::Monitoring {
            self.enter(Phase::Expired, at_ms);
            self.severity = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(end_s: i64, errors: u64, triggered: bool, severity: f64) -> WindowVerdict {
        WindowVerdict {
            window_end_ms: end_s * 1000,
            errors,
            triggered,
            severity,
        }
    }

    fn phases(l: &Lifecycle) -> Vec<&'static str> {
        l.timeline().map(|t| t.phase.as_str()).collect()
    }

    #[test]
    fn an_incident_walks_the_plan_s_path_and_recovers() {
        let mut l = Lifecycle::new(LifecycleConfig::default());
        assert_eq!(l.on_window(window(10, 3, false, 0.1)), PolicyChange::Keep);
        assert_eq!(
            l.on_window(window(20, 80, true, 0.5)),
            PolicyChange::Issue { severity: 0.5 }
        );
        l.on_applied(20_500);
        assert_eq!(l.phase(), Phase::Active);
        assert_eq!(l.on_window(window(30, 90, true, 0.55)), PolicyChange::Renew);
        assert_eq!(
            l.on_window(window(40, 200, true, 0.9)),
            PolicyChange::Escalate { severity: 0.9 }
        );
        l.on_applied(40_200);
        assert_eq!(l.on_window(window(50, 0, false, 0.0)), PolicyChange::Keep);
        assert_eq!(l.phase(), Phase::Recovering);
        assert_eq!(
            l.on_window(window(60, 0, false, 0.0)),
            PolicyChange::Withdraw
        );
        assert_eq!(
            phases(&l),
            [
                "EVALUATING",
                "TRIGGERED",
                "POLICY_GENERATED",
                "POLICY_APPLIED",
                "ACTIVE",
                "ESCALATING",
                "ACTIVE",
                "RECOVERING",
                "MONITORING"
            ]
        );
    }

    #[test]
    fn a_cluster_hovering_at_the_threshold_is_damped_not_left_unprotected() {
        let mut l = Lifecycle::new(LifecycleConfig {
            recovery_windows: 1,
            ..Default::default()
        });
        let mut log = Vec::new();
        for i in 1..=24 {
            let hot = i % 2 == 1;
            let change = l.on_window(window(i * 5, 60, hot, 0.5));
            if hot {
                // Whenever the trigger holds, a policy is in force or issued right now.
                assert!(
                    matches!(
                        change,
                        PolicyChange::Issue { .. } | PolicyChange::Renew | PolicyChange::Keep
                    ) && l.phase() != Phase::Monitoring,
                    "unprotected at {}s: {change:?} {:?}",
                    i * 5,
                    l.phase()
                );
            }
            match change {
                PolicyChange::Issue { .. } => log.push((i * 5, "issue", l.dwell_ms())),
                PolicyChange::Withdraw => log.push((i * 5, "withdraw", l.dwell_ms())),
                _ => {}
            }
            l.on_applied(i * 5_000 + 1);
        }
        // 5 s on / 5 s off for 120 s: the dwell doubles on each return (5, 10, 20 s), so
        // the policy is withdrawn three times and then stays.
        assert_eq!(
            log,
            [
                (5, "issue", 5_000),
                (10, "withdraw", 5_000),
                (15, "issue", 10_000),
                (30, "withdraw", 10_000),
                (35, "issue", 20_000),
                (60, "withdraw", 20_000),
                (65, "issue", 40_000),
                (110, "withdraw", 40_000),
                (115, "issue", 60_000),
            ]
        );
    }

    #[test]
    fn each_window_is_judged_once() {
        let mut l = Lifecycle::new(LifecycleConfig {
            min_dwell_ms: 0,
            ..Default::default()
        });
        l.on_window(window(10, 80, true, 0.5));
        l.on_applied(10_100);
        // The same quiet window reported again does not count as a second quiet window.
        assert_eq!(l.on_window(window(11, 0, false, 0.0)), PolicyChange::Keep);
        assert_eq!(l.on_window(window(11, 0, false, 0.0)), PolicyChange::Keep);
        assert_eq!(l.on_window(window(10, 0, false, 0.0)), PolicyChange::Keep);
        assert_eq!(l.phase(), Phase::Recovering);
        assert_eq!(
            l.on_window(window(12, 0, false, 0.0)),
            PolicyChange::Withdraw
        );
    }

    #[test]
    fn a_quiet_minute_resets_the_dwell() {
        let mut l = Lifecycle::new(LifecycleConfig::default());
        l.on_window(window(10, 80, true, 0.5));
        l.on_applied(10_100);
        l.on_window(window(16, 0, false, 0.0));
        assert_eq!(
            l.on_window(window(17, 0, false, 0.0)),
            PolicyChange::Withdraw
        );
        l.on_window(window(20, 80, true, 0.5));
        assert_eq!(l.dwell_ms(), 10_000, "back within a minute: a flap");
        l.on_applied(20_100);
        l.on_window(window(31, 0, false, 0.0));
        assert_eq!(
            l.on_window(window(32, 0, false, 0.0)),
            PolicyChange::Withdraw
        );
        assert_eq!(
            l.on_window(window(100, 80, true, 0.5)),
            PolicyChange::Issue { severity: 0.5 }
        );
        assert_eq!(l.dwell_ms(), 5_000, "a new incident after a quiet minute");
    }

    #[test]
    fn a_returning_fault_reactivates_a_recovering_policy() {
        let mut l = Lifecycle::new(LifecycleConfig::default());
        l.on_window(window(10, 80, true, 0.5));
        l.on_applied(10_100);
        l.on_window(window(20, 0, false, 0.0));
        assert_eq!(l.phase(), Phase::Recovering);
        assert_eq!(l.on_window(window(30, 70, true, 0.5)), PolicyChange::Renew);
        assert_eq!(l.phase(), Phase::Active);
    }

    #[test]
    fn expiry_returns_to_monitoring_and_allows_a_new_policy() {
        let mut l = Lifecycle::new(LifecycleConfig::default());
        l.on_window(window(10, 80, true, 0.5));
        l.on_applied(10_100);
        l.on_expired(310_000);
        assert_eq!(l.phase(), Phase::Expired);
        assert_eq!(
            l.on_window(window(320, 80, true, 0.6)),
            PolicyChange::Issue { severity: 0.6 }
        );
    }

    #[test]
    fn quiet_clusters_never_trigger_and_the_timeline_is_bounded() {
        let mut l = Lifecycle::new(LifecycleConfig {
            timeline_len: 4,
            ..Default::default()
        });
        for i in 1..=50 {
            assert_eq!(
                l.on_window(window(i * 10, i as u64 % 2, false, 0.0)),
                PolicyChange::Keep
            );
        }
        assert_eq!(l.timeline().count(), 4);
    }
}
