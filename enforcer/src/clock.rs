//! Time, injected: monotonic milliseconds for breakers and buckets, wall-clock milliseconds
//! for event timestamps and policy expiry.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The process clock. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock {
    /// Milliseconds since the clock was made; never goes backwards.
    pub fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Unix milliseconds.
    pub fn wall_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}
