//! Circuit breaker: CLOSED / OPEN / HALF_OPEN with a linear ramp back to full traffic.
//!
//! * CLOSED: outcomes go into a sliding time window of ten buckets; once the window holds
//!   `min_calls`, an error share >= `failure_ratio` or a slow-call share >= `slow_call_ratio`
//!   opens the breaker.
//! * OPEN: everything is rejected until `open_ms` has passed, then HALF_OPEN.
//! * HALF_OPEN: a share of requests is admitted, starting at `ramp_step` and growing by
//!   `ramp_step` each time `probes` outcomes come back healthy; at 100 % the breaker closes.
//!   Failures among a step's probes at `failure_ratio` re-open it at once. A step that gets no
//!   verdict within `open_ms` (traffic gone, probes lost) is judged on what it has, so the
//!   breaker is never stuck half-open — but while a probe it admitted is still in flight (a
//!   slow failure: the upstream has not answered yet), the step waits for it, up to
//!   `STALE_WAIT` open periods, rather than ramp up into a failure it cannot see yet.
//!
//! The same machine serves the classic per-route / per-upstream breakers and each circuit-break
//! policy (which starts OPEN: the pipeline already judged the slice). Time is passed in as
//! monotonic milliseconds; admission in HALF_OPEN is deterministic (a credit counter), so
//! tests are exact.

/// Breaker tunables.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Sliding window length, ms.
    pub window_ms: u64,
    /// Calls needed in the window before it may open.
    pub min_calls: u32,
    /// Error share that opens it, in (0, 1].
    pub failure_ratio: f64,
    /// Latency above which a call is slow, ms; `None` disables slow-call judging.
    pub slow_call_ms: Option<u64>,
    /// Slow-call share that opens it, in (0, 1].
    pub slow_call_ratio: f64,
    /// Time spent OPEN before probing, ms.
    pub open_ms: u64,
    /// Share added per healthy half-open step, in (0, 1].
    pub ramp_step: f64,
    /// Outcomes judged per half-open step, >= 1.
    pub probes: u32,
}

impl From<&crate::config::BreakerConfig> for BreakerSettings {
    fn from(c: &crate::config::BreakerConfig) -> Self {
        Self {
            window_ms: c.window_ms,
            min_calls: c.min_calls,
            failure_ratio: c.failure_ratio,
            slow_call_ms: c.slow_call_ms,
            slow_call_ratio: c.slow_call_ratio,
            open_ms: c.open_ms,
            ramp_step: c.ramp_step,
            probes: c.probes,
        }
    }
}

/// The externally visible state (the plan's `circuit_breaker_state` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// All traffic flows.
    Closed = 0,
    /// All traffic is rejected.
    Open = 1,
    /// A growing share of traffic flows.
    HalfOpen = 2,
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let it through.
    Allow,
    /// Reject it; retrying after this many ms may succeed.
    Reject {
        /// Suggested wait, ms.
        retry_after_ms: u64,
    },
}

/// How one admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// It counted as a failure.
    pub failure: bool,
    /// It took this long, ms.
    pub latency_ms: u64,
}

const BUCKETS: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start_ms: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug, Clone)]
enum Inner {
    Closed {
        buckets: Box<[Bucket; BUCKETS as usize]>,
    },
    Open {
        until_ms: u64,
    },
    HalfOpen {
        share: f64,
        credit: f64,
        admitted: u32,
        outcomes: u32,
        failures: u32,
        step_started_ms: u64,
    },
}

/// How many open periods a half-open step waits for probes still in flight.
const STALE_WAIT: u64 = 4;

/// One circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Inner,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Inner::Closed {
                buckets: Box::new([Bucket::default(); BUCKETS as usize]),
            },
        }
    }

    /// A breaker that starts open at `now_ms` (a circuit-break policy just arrived).
    pub fn new_open(settings: BreakerSettings, now_ms: u64) -> Self {
        let until_ms = now_ms.saturating_add(settings.open_ms);
        Self {
            settings,
            inner: Inner::Open { until_ms },
        }
    }

    /// The settings.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The state as of `now_ms` (an expired OPEN reads as HALF_OPEN).
    pub fn state(&self, now_ms: u64) -> State {
        match self.inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until_ms } if now_ms < until_ms => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// The share of traffic currently admitted, in [0, 1].
    pub fn admitted_share(&self, now_ms: u64) -> f64 {
        match (&self.inner, self.state(now_ms)) {
            (Inner::Closed { .. }, _) => 1.0,
            (Inner::HalfOpen { share, .. }, _) => *share,
            (Inner::Open { .. }, State::HalfOpen) => self.settings.ramp_step,
            _ => 0.0,
        }
    }

    fn half_open(&mut self, share: f64, now_ms: u64) {
        self.inner = Inner::HalfOpen {
            share: share.min(1.0),
            credit: 0.0,
            admitted: 0,
            outcomes: 0,
            failures: 0,
            step_started_ms: now_ms,
        };
    }

    fn open(&mut self, now_ms: u64) {
        self.inner = Inner::Open {
            until_ms: now_ms.saturating_add(self.settings.open_ms),
        };
    }

    fn close(&mut self) {
        self.inner = Inner::Closed {
            buckets: Box::new([Bucket::default(); BUCKETS as usize]),
        };
    }

    /// Decides whether a request may go through.
    pub fn admit(&mut self, now_ms: u64) -> Admission {
        if let Inner::Open { until_ms } = self.inner {
            if now_ms < until_ms {
                return Admission::Reject {
                    retry_after_ms: until_ms - now_ms,
                };
            }
            self.half_open(self.settings.ramp_step, now_ms);
        }
        self.judge_stale_step(now_ms);
        match &mut self.inner {
            Inner::Closed { .. } => Admission::Allow,
            Inner::HalfOpen {
                share,
                credit,
                admitted,
                ..
            } => {
                *credit += *share;
                if *credit >= 1.0 - 1e-9 {
                    *credit -= 1.0;
                    *admitted += 1;
                    Admission::Allow
                } else {
                    Admission::Reject {
                        retry_after_ms: 1_000,
                    }
                }
            }
            Inner::Open { until_ms } => Admission::Reject {
                retry_after_ms: until_ms.saturating_sub(now_ms),
            },
        }
    }

    /// A half-open step without a verdict after `open_ms` is judged on the outcomes it has;
    /// a healthy-looking step with probes still in flight waits for them (bounded).
    fn judge_stale_step(&mut self, now_ms: u64) {
        if let Inner::HalfOpen {
            share,
            admitted,
            outcomes,
            failures,
            step_started_ms,
            ..
        } = self.inner
        {
            let open_ms = self.settings.open_ms;
            let elapsed = now_ms.saturating_sub(step_started_ms);
            if elapsed < open_ms {
                return;
            }
            if failures > 0 {
                self.open(now_ms);
            } else if admitted <= outcomes || elapsed >= open_ms.saturating_mul(STALE_WAIT) {
                self.advance(share, now_ms);
            }
        }
    }

    fn advance(&mut self, share: f64, now_ms: u64) {
        let next = share + self.settings.ramp_step;
        if next >= 1.0 - 1e-9 {
            self.close();
        } else {
            self.half_open(next, now_ms);
        }
    }

    /// Records how an admitted call ended.
    pub fn record(&mut self, now_ms: u64, outcome: Outcome) {
        let s = &self.settings;
        let slow = s
            .slow_call_ms
            .is_some_and(|limit| outcome.latency_ms >= limit);
        match &mut self.inner {
            Inner::Closed { buckets } => {
                let width = (s.window_ms / BUCKETS).max(1);
                let start = now_ms - now_ms % width;
                let b = &mut buckets[((now_ms / width) % BUCKETS) as usize];
                if b.start_ms != start {
                    *b = Bucket {
                        start_ms: start,
                        ..Bucket::default()
                    };
                }
                b.calls += 1;
                b.failures += u32::from(outcome.failure);
                b.slow += u32::from(slow);
                let horizon = now_ms.saturating_sub(s.window_ms);
                let (calls, failures, slows) = buckets
                    .iter()
                    .filter(|b| b.calls > 0 && b.start_ms + width > horizon)
                    .fold((0u32, 0u32, 0u32), |(c, f, sl), b| {
                        (c + b.calls, f + b.failures, sl + b.slow)
                    });
                if calls >= s.min_calls
                    && calls > 0
                    && (f64::from(failures) / f64::from(calls) >= s.failure_ratio
                        || (s.slow_call_ms.is_some()
                            && f64::from(slows) / f64::from(calls) >= s.slow_call_ratio))
                {
                    self.open(now_ms);
                }
            }
            Inner::Open { .. } => {}
            Inner::HalfOpen {
                share,
                outcomes,
                failures,
                ..
            } => {
                *outcomes += 1;
                *failures += u32::from(outcome.failure || slow);
                let allowed_failures =
                    (f64::from(s.probes) * s.failure_ratio).ceil().max(1.0) as u32;
                if *failures >= allowed_failures {
                    self.open(now_ms);
                } else if *outcomes >= s.probes {
                    let share = *share;
                    self.advance(share, now_ms);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window_ms: 10_000,
            min_calls: 10,
            failure_ratio: 0.5,
            slow_call_ms: Some(1_000),
            slow_call_ratio: 0.8,
            open_ms: 5_000,
            ramp_step: 0.2,
            probes: 3,
        }
    }

    const OK: Outcome = Outcome {
        failure: false,
        latency_ms: 10,
    };
    const FAIL: Outcome = Outcome {
        failure: true,
        latency_ms: 10,
    };
    const SLOW: Outcome = Outcome {
        failure: false,
        latency_ms: 2_000,
    };

    #[test]
    fn opens_on_error_ratio_only_after_min_calls() {
        // (outcomes recorded at t=0, expected state after)
        let table: [(&[Outcome], State); 4] = [
            (&[FAIL; 9], State::Closed), // below min_calls
            (&[FAIL; 10], State::Open),  // 100 % errors
            (
                &[FAIL, OK, FAIL, OK, FAIL, OK, FAIL, OK, FAIL, OK],
                State::Open,
            ), // exactly 50 %
            (
                &[FAIL, OK, OK, FAIL, OK, OK, FAIL, OK, OK, OK],
                State::Closed,
            ), // 30 %
        ];
        for (i, (outcomes, want)) in table.iter().enumerate() {
            let mut b = Breaker::new(settings());
            for o in *outcomes {
                b.record(0, *o);
            }
            assert_eq!(b.state(0), *want, "case {i}");
        }
    }

    #[test]
    fn opens_on_slow_calls() {
        let mut b = Breaker::new(settings());
        for _ in 0..8 {
            b.record(0, SLOW);
        }
        for _ in 0..2 {
            b.record(0, OK);
        }
        assert_eq!(b.state(0), State::Open);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut b = Breaker::new(settings());
        for _ in 0..9 {
            b.record(0, FAIL);
        }
        // 11 s later the nine failures are out of the window.
        b.record(11_000, FAIL);
        assert_eq!(b.state(11_000), State::Closed);
    }

    #[test]
    fn rejects_while_open_then_ramps_back_in_20_percent_steps() {
        let mut b = Breaker::new_open(settings(), 0);
        assert_eq!(
            b.admit(1_000),
            Admission::Reject {
                retry_after_ms: 4_000
            }
        );
        let mut t = 5_000;
        for want_share in [0.2, 0.4, 0.6, 0.8] {
            // Of 100 requests, exactly the share is admitted.
            let admitted = (0..100).filter(|_| b.admit(t) == Admission::Allow).count();
            assert_eq!(
                admitted,
                (want_share * 100.0_f64).round() as usize,
                "share {want_share}"
            );
            assert_eq!(b.state(t), State::HalfOpen);
            for _ in 0..3 {
                b.record(t, OK);
            }
            t += 100;
        }
        assert_eq!(b.state(t), State::Closed);
        assert_eq!(b.admit(t), Admission::Allow);
    }

    #[test]
    fn failing_probes_reopen() {
        let mut b = Breaker::new_open(settings(), 0);
        assert_eq!(
            b.admit(5_000),
            Admission::Reject {
                retry_after_ms: 1_000
            }
        );
        b.record(5_001, OK);
        b.record(5_002, FAIL);
        b.record(5_003, FAIL);
        assert_eq!(b.state(5_003), State::Open);
        assert_eq!(
            b.admit(6_000),
            Admission::Reject {
                retry_after_ms: 4_003
            }
        );
    }

    #[test]
    fn a_slow_probe_holds_the_ramp_until_it_answers() {
        let fast = BreakerSettings {
            open_ms: 1_000,
            ..settings()
        };
        // (outcome of the one probe, when it lands; expected state/share at 3_000 ms)
        type Probe = Option<(u64, Outcome)>;
        let table: [(Probe, State, f64); 3] = [
            // The probe times out as a failure after 1.5 s: the step is failed, re-open.
            (Some((2_500, FAIL)), State::Open, 0.0),
            // It answers fine after 1.5 s: the step is judged healthy at 3 s, ramp to 40 %.
            (Some((2_500, OK)), State::HalfOpen, 0.4),
            // Still in flight at 3 s (2 s into the step): wait, do not ramp into it.
            (None, State::HalfOpen, 0.2),
        ];
        for (i, (probe, state, share)) in table.iter().enumerate() {
            let mut b = Breaker::new_open(fast.clone(), 0);
            // 1 s: half-open at 20 %: one request in five goes through.
            let admitted = (0..5)
                .filter(|_| b.admit(1_000) == Admission::Allow)
                .count();
            assert_eq!(admitted, 1, "case {i}");
            if let Some((at, outcome)) = probe {
                b.record(*at, *outcome);
            }
            let _ = b.admit(3_000);
            assert_eq!(b.state(3_000), *state, "case {i}");
            assert!(
                (b.admitted_share(3_000) - share).abs() < 1e-9,
                "case {i}: {}",
                b.admitted_share(3_000)
            );
        }
        // A probe that never answers holds the step for at most four open periods.
        let mut b = Breaker::new_open(fast, 0);
        let admitted = (0..5)
            .filter(|_| b.admit(1_000) == Admission::Allow)
            .count();
        assert_eq!(admitted, 1);
        let _ = b.admit(4_999);
        assert!((b.admitted_share(4_999) - 0.2).abs() < 1e-9);
        let _ = b.admit(5_000);
        assert!((b.admitted_share(5_000) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn never_stuck_half_open_when_probes_never_return() {
        let mut b = Breaker::new_open(settings(), 0);
        let _ = b.admit(5_000);
        assert_eq!(b.admitted_share(5_000), 0.2);
        // No outcomes for a whole open period: the step is judged healthy and the ramp moves.
        let _ = b.admit(10_000);
        assert!((b.admitted_share(10_000) - 0.4).abs() < 1e-9);
        // A step with a failure and no verdict re-opens instead.
        b.record(10_001, FAIL);
        let _ = b.admit(15_001);
        assert_eq!(b.state(15_001), State::Open);
    }
}
