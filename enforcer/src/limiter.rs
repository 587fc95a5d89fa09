//! Token bucket: the classic rate limit, and the rate-limit policy action.
//!
//! Time comes in as monotonic milliseconds, so tests drive it directly.

/// A token bucket refilled continuously at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket. `rate` must be > 0 and `burst` >= 1 (validated config guarantees both;
    /// other values are clamped so the bucket still admits something).
    pub fn new(rate_per_second: f64, burst: u32, now_ms: u64) -> Self {
        let rate = if rate_per_second.is_finite() && rate_per_second > 0.0 {
            rate_per_second
        } else {
            f64::MIN_POSITIVE
        };
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.rate / 1000.0).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes one token, or says how long until one is available (ms, at least 1).
    pub fn try_take(&mut self, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) * 1000.0 / self.rate).ceil();
            Err(if wait.is_finite() {
                (wait as u64).max(1)
            } else {
                u64::MAX
            })
        }
    }

    /// Changes the rate, keeping the tokens already earned.
    pub fn set_rate(&mut self, rate_per_second: f64, burst: u32, now_ms: u64) {
        self.refill(now_ms);
        if rate_per_second.is_finite() && rate_per_second > 0.0 {
            self.rate = rate_per_second;
        }
        self.burst = f64::from(burst.max(1));
        self.tokens = self.tokens.min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_s_case_half_of_a_burst_passes() {
        // Plan: base 100 TPS at severity 0.5 → 50 TPS; 100 immediate requests → 50 pass.
        let mut b = TokenBucket::new(100.0 * (1.0 - 0.5), 50, 0);
        let passed = (0..100).filter(|_| b.try_take(0).is_ok()).count();
        assert_eq!(passed, 50);
    }

    #[test]
    fn refills_over_time_and_reports_the_wait() {
        // (at ms, expected outcome)
        let mut b = TokenBucket::new(10.0, 2, 0);
        let table: [(u64, Result<(), u64>); 6] = [
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(100)),
            (50, Err(50)),
            (100, Ok(())),
            (100, Err(100)),
        ];
        for (i, (at, want)) in table.into_iter().enumerate() {
            assert_eq!(b.try_take(at), want, "step {i} at {at} ms");
        }
    }

    #[test]
    fn never_exceeds_the_burst_and_tolerates_time_going_backwards() {
        let mut b = TokenBucket::new(1000.0, 3, 0);
        let passed = (0..10).filter(|_| b.try_take(1_000_000).is_ok()).count();
        assert_eq!(passed, 3);
        assert!(b.try_take(5).is_err());
    }

    #[test]
    fn rate_changes_apply_at_once() {
        let mut b = TokenBucket::new(1.0, 1, 0);
        assert!(b.try_take(0).is_ok());
        b.set_rate(1000.0, 1, 0);
        assert_eq!(b.try_take(1), Ok(()));
    }
}
