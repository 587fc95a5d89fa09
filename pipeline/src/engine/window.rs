//! Window shapes and event-time arithmetic: which windows a row belongs to, when a row is late.
//!
//! All times are Unix milliseconds. Windows are half-open, `[start, end)`, aligned to the epoch,
//! as in Arroyo: `TUMBLE(w)` is `HOP(w, w)`; `HOP(slide, width)` starts a window every `slide`.

/// One window's bounds, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Inclusive start, Unix milliseconds.
    pub start_ms: i64,
    /// Exclusive end, Unix milliseconds.
    pub end_ms: i64,
}

impl Window {
    /// Whether `t_ms` falls in `[start, end)`.
    pub fn contains(&self, t_ms: i64) -> bool {
        self.start_ms <= t_ms && t_ms < self.end_ms
    }
}

/// The window function a query groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// `TUMBLE(width)`: consecutive, non-overlapping windows.
    Tumble {
        /// Window width, milliseconds (> 0).
        width_ms: i64,
    },
    /// `HOP(slide, width)`: a window of `width` every `slide`.
    Hop {
        /// Time between consecutive window starts, milliseconds (> 0).
        slide_ms: i64,
        /// Window width, milliseconds (>= slide).
        width_ms: i64,
    },
}

impl WindowSpec {
    /// Time between consecutive window ends.
    pub fn slide_ms(&self) -> i64 {
        match *self {
            Self::Tumble { width_ms } => width_ms,
            Self::Hop { slide_ms, .. } => slide_ms,
        }
    }

    /// Width of each window.
    pub fn width_ms(&self) -> i64 {
        match *self {
            Self::Tumble { width_ms } | Self::Hop { width_ms, .. } => width_ms,
        }
    }

    /// The window that ends at `end_ms` (which must be a multiple of the slide).
    pub fn ending_at(&self, end_ms: i64) -> Window {
        Window {
            start_ms: end_ms - self.width_ms(),
            end_ms,
        }
    }

    /// The end of the earliest window containing `t_ms`: the first slide boundary after it.
    pub fn first_end_after(&self, t_ms: i64) -> i64 {
        let slide = self.slide_ms();
        t_ms.div_euclid(slide) * slide + slide
    }

    /// Every window containing `t_ms`, oldest first.
    pub fn windows_of(&self, t_ms: i64) -> Vec<Window> {
        let first_end = self.first_end_after(t_ms);
        let mut out = Vec::new();
        let mut end = first_end;
        // Windows ending in (t, t + width] contain t.
        while end <= t_ms + self.width_ms() {
            out.push(self.ending_at(end));
            end += self.slide_ms();
        }
        out
    }

    /// Whether a row at `t_ms` missed a window already emitted: its earliest window ended at or
    /// before `closed_until_ms` (every window ending there or earlier has been evaluated).
    pub fn is_late(&self, t_ms: i64, closed_until_ms: Option<i64>) -> bool {
        closed_until_ms.is_some_and(|closed| self.first_end_after(t_ms) <= closed)
    }

    /// The window ends in `(after_ms, up_to_ms]`, oldest first.
    pub fn ends_between(&self, after_ms: i64, up_to_ms: i64) -> impl Iterator<Item = i64> + use<> {
        let slide = self.slide_ms();
        let first = after_ms.div_euclid(slide) * slide + slide;
        (0..)
            .map(move |k| first + k * slide)
            .take_while(move |end| *end <= up_to_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: WindowSpec = WindowSpec::Tumble { width_ms: 10_000 };
    const HOP: WindowSpec = WindowSpec::Hop {
        slide_ms: 10_000,
        width_ms: 20_000,
    };

    fn w(start_ms: i64, end_ms: i64) -> Window {
        Window { start_ms, end_ms }
    }

    #[test]
    fn tumble_assigns_boundaries_to_the_later_window() {
        assert_eq!(TEN.windows_of(0), vec![w(0, 10_000)]);
        assert_eq!(TEN.windows_of(9_999), vec![w(0, 10_000)]);
        assert_eq!(TEN.windows_of(10_000), vec![w(10_000, 20_000)]);
        assert_eq!(TEN.windows_of(-1), vec![w(-10_000, 0)]);
    }

    #[test]
    fn hop_assigns_each_row_to_width_over_slide_windows() {
        assert_eq!(
            HOP.windows_of(10_000),
            vec![w(0, 20_000), w(10_000, 30_000)]
        );
        assert_eq!(
            HOP.windows_of(19_999),
            vec![w(0, 20_000), w(10_000, 30_000)]
        );
        assert_eq!(
            HOP.windows_of(9_999),
            vec![w(-10_000, 10_000), w(0, 20_000)]
        );
        let uneven = WindowSpec::Hop {
            slide_ms: 5_000,
            width_ms: 15_000,
        };
        assert_eq!(
            uneven.windows_of(12_000),
            vec![w(0, 15_000), w(5_000, 20_000), w(10_000, 25_000)]
        );
        for win in uneven.windows_of(12_000) {
            assert!(win.contains(12_000));
        }
    }

    #[test]
    fn lateness_is_judged_against_the_earliest_window() {
        assert!(!TEN.is_late(5_000, None));
        assert!(TEN.is_late(9_999, Some(10_000)));
        assert!(!TEN.is_late(10_000, Some(10_000)));
        // HOP: a row at 12 s belongs to [0, 20) and [10, 30); once [0, 20) closed it is late.
        assert!(HOP.is_late(12_000, Some(20_000)));
        assert!(!HOP.is_late(12_000, Some(19_999)));
    }

    #[test]
    fn ends_between_is_half_open() {
        let ends: Vec<i64> = TEN.ends_between(10_000, 30_000).collect();
        assert_eq!(ends, vec![20_000, 30_000]);
        let ends: Vec<i64> = TEN.ends_between(9_999, 29_999).collect();
        assert_eq!(ends, vec![10_000, 20_000]);
        assert_eq!(TEN.ends_between(30_000, 30_000).count(), 0);
    }
}
