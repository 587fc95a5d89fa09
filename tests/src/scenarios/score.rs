//! The scorer: pure functions from request records to the bench's figures.
//!
//! Definitions (all times are the requests' scheduled send times, seconds since the scenario
//! started):
//!
//! - **upstream-caused failure**: a request the gateway passed on that did not succeed: a 5xx
//!   (including the enforcer's 502 / 504 when the upstream refused or timed out), an error
//!   inside a 200 (`code != 0`), or no answer at all. The gateway's own rejections (any answer
//!   carrying `X-Gateway-Policy`: 429, 503, or the route's fallback) are counted apart.
//! - **peak upstream 5xx/s**: the most upstream-caused failures among requests sent in one
//!   whole second (buckets `[k, k+1)`).
//! - **collateral**: healthy-slice requests rejected / healthy-slice requests, where a
//!   healthy-slice request is one outside every incident's slice (at any time).
//! - **false kills**: rejected requests that would have succeeded / rejected requests. The
//!   fault's own success share is the share of incident-slice requests sent inside the
//!   incident windows that would have succeeded; the target allows 2 points beyond it.
//! - **mitigation**: per incident window `[s, e)`, the slice's requests are bucketed by
//!   `bucket_s` from `s`; mitigation is the start of the first bucket that begins a run of
//!   buckets covering `run_s` seconds, inside the window, in each of which ≥ 90 % of the
//!   slice's requests were rejected or degraded. No such run: never. Over several windows
//!   (flapping) or incidents: the worst.
//! - **recovery**: per window, the same bucketing from `e`, until the next window of the same
//!   incident starts or the run ends; recovery is the start of the first run of `run_s`
//!   seconds where every bucket has ≥ 99 % of the slice's requests passed through and
//!   succeeding. Worst over windows; never if no such run.
//! - **healthy p95**: latency of healthy-slice requests sent between the first incident's
//!   start and the last one's end (no incident: the whole run), rejected ones included.

use serde::{Deserialize, Serialize};

/// One request as the load generator saw it, with its ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Scheduled send time, s since the scenario started.
    pub t: f64,
    /// HTTP status; 0 when no answer came (connection failed or the client timed out).
    pub status: u16,
    /// Time to the whole answer, ms.
    pub latency_ms: f64,
    /// The gateway rejected it (`X-Gateway-Policy` naming a policy or classic limit; not the
    /// `-` the enforcer puts on its own 502 / 504 for upstream failures).
    pub rejected: bool,
    /// Passed through and succeeded: 2xx and `code == 0`.
    pub succeeded: bool,
    /// Ground truth: the upstream's fault plan would have answered it successfully.
    pub would_succeed: bool,
    /// Bit `i`: the request is in the slice of incident `i`.
    pub slices: u8,
}

impl Record {
    /// Passed through and failed (see the module docs).
    pub fn upstream_failure(&self) -> bool {
        !self.rejected && !self.succeeded
    }

    /// Outside every incident's slice.
    pub fn healthy_slice(&self) -> bool {
        self.slices == 0
    }
}

/// An incident: which bit of [`Record::slices`] marks its slice, and its windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Bit index.
    pub bit: u8,
    /// `[start, end)`, seconds, in order.
    pub windows: Vec<(f64, f64)>,
}

/// Scoring parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Bucket width for mitigation and recovery, s.
    pub bucket_s: f64,
    /// How long the condition must hold, s.
    pub run_s: f64,
    /// Share rejected that counts as mitigated.
    pub mitigated_share: f64,
    /// Share passed and succeeding that counts as recovered.
    pub recovered_share: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            bucket_s: 0.5,
            run_s: 3.0,
            mitigated_share: 0.9,
            recovered_share: 0.99,
        }
    }
}

/// A time figure: not applicable, never reached, or seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Timing {
    /// No incident to measure.
    NotApplicable,
    /// Never reached inside the window.
    Never,
    /// Seconds.
    Seconds(f64),
}

impl Timing {
    fn worst(self, other: Timing) -> Timing {
        match (self, other) {
            (Timing::Never, _) | (_, Timing::Never) => Timing::Never,
            (Timing::NotApplicable, x) | (x, Timing::NotApplicable) => x,
            (Timing::Seconds(a), Timing::Seconds(b)) => Timing::Seconds(a.max(b)),
        }
    }

    /// Met when measured and at most `limit` seconds.
    pub fn within(self, limit: f64) -> Option<bool> {
        match self {
            Timing::NotApplicable => None,
            Timing::Never => Some(false),
            Timing::Seconds(s) => Some(s <= limit + 1e-9),
        }
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timing::NotApplicable => write!(f, "–"),
            Timing::Never => write!(f, "never"),
            Timing::Seconds(s) => write!(f, "{s:.1} s"),
        }
    }
}

/// The figures of one scenario run in one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Requests sent.
    pub requests: usize,
    /// Most upstream-caused failures sent in one second.
    pub peak_upstream_5xx: usize,
    /// Upstream-caused failures in all.
    pub total_upstream_5xx: usize,
    /// Most gateway rejections sent in one second.
    pub peak_gateway_rejections: usize,
    /// Gateway rejections in all.
    pub rejected: usize,
    /// Healthy-slice requests rejected.
    pub healthy_rejected: usize,
    /// Healthy-slice requests.
    pub healthy: usize,
    /// Rejected requests that would have succeeded.
    pub false_kills: usize,
    /// Share of incident-slice requests inside incident windows that would have succeeded.
    pub fault_success_share: f64,
    /// Seconds from fault start to mitigation (worst window).
    pub mitigation: Timing,
    /// Seconds from fault end to full recovery (worst window).
    pub recovery: Timing,
    /// Healthy-slice p95 latency, ms.
    pub healthy_p95_ms: f64,
}

impl Score {
    /// Collateral share.
    pub fn collateral(&self) -> f64 {
        ratio(self.healthy_rejected, self.healthy)
    }

    /// False-kill share.
    pub fn false_kill_share(&self) -> f64 {
        ratio(self.false_kills, self.rejected)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Scores `records` against the scenario's `incidents`; `duration_s` is the run's length.
pub fn score(records: &[Record], incidents: &[Incident], duration_s: f64, p: Params) -> Score {
    let seconds = duration_s.ceil().max(1.0) as usize;
    let mut upstream = vec![0usize; seconds + 1];
    let mut gateway = vec![0usize; seconds + 1];
    for r in records {
        let k = (r.t.max(0.0) as usize).min(seconds);
        if r.upstream_failure() {
            upstream[k] += 1;
        }
        if r.rejected {
            gateway[k] += 1;
        }
    }
    let healthy: Vec<&Record> = records.iter().filter(|r| r.healthy_slice()).collect();
    let rejected = records.iter().filter(|r| r.rejected).count();
    let in_fault: Vec<&Record> = records
        .iter()
        .filter(|r| {
            incidents.iter().any(|i| {
                r.slices & (1 << i.bit) != 0 && i.windows.iter().any(|&(s, e)| r.t >= s && r.t < e)
            })
        })
        .collect();
    let (from, to) = incidents
        .iter()
        .flat_map(|i| i.windows.iter())
        .fold(None, |acc: Option<(f64, f64)>, &(s, e)| match acc {
            None => Some((s, e)),
            Some((a, b)) => Some((a.min(s), b.max(e))),
        })
        .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    let mut latencies: Vec<f64> = healthy
        .iter()
        .filter(|r| r.t >= from && r.t < to)
        .map(|r| r.latency_ms)
        .collect();
    let mut mitigation = Timing::NotApplicable;
    let mut recovery = Timing::NotApplicable;
    for inc in incidents {
        let slice: Vec<&Record> = records
            .iter()
            .filter(|r| r.slices & (1 << inc.bit) != 0)
            .collect();
        for (w, &(s, e)) in inc.windows.iter().enumerate() {
            let next = inc.windows.get(w + 1).map_or(duration_s, |n| n.0);
            mitigation = mitigation.worst(first_run(
                &slice,
                s,
                e,
                p,
                |r| r.rejected,
                p.mitigated_share,
            ));
            recovery = recovery.worst(first_run(
                &slice,
                e,
                next.min(duration_s),
                p,
                |r| r.succeeded,
                p.recovered_share,
            ));
        }
    }
    Score {
        requests: records.len(),
        peak_upstream_5xx: upstream.iter().copied().max().unwrap_or(0),
        total_upstream_5xx: upstream.iter().sum(),
        peak_gateway_rejections: gateway.iter().copied().max().unwrap_or(0),
        rejected,
        healthy_rejected: healthy.iter().filter(|r| r.rejected).count(),
        healthy: healthy.len(),
        false_kills: records
            .iter()
            .filter(|r| r.rejected && r.would_succeed)
            .count(),
        fault_success_share: ratio(
            in_fault.iter().filter(|r| r.would_succeed).count(),
            in_fault.len(),
        ),
        mitigation,
        recovery,
        healthy_p95_ms: percentile(&mut latencies, 0.95),
    }
}

/// Seconds from `from` to the start of the first run of buckets, all before `until`, covering
/// `p.run_s` in each of which at least `share` of `slice`'s requests satisfy `good`.
fn first_run(
    slice: &[&Record],
    from: f64,
    until: f64,
    p: Params,
    good: impl Fn(&Record) -> bool,
    share: f64,
) -> Timing {
    let n = ((until - from) / p.bucket_s + 1e-9).floor().max(0.0) as usize;
    let need = (p.run_s / p.bucket_s).round().max(1.0) as usize;
    let mut counts = vec![(0usize, 0usize); n];
    for r in slice {
        if r.t < from || r.t >= from + n as f64 * p.bucket_s {
            continue;
        }
        let k = (((r.t - from) / p.bucket_s) as usize).min(n.saturating_sub(1));
        counts[k].1 += 1;
        if good(r) {
            counts[k].0 += 1;
        }
    }
    let ok = |&(g, t): &(usize, usize)| t > 0 && g as f64 >= share * t as f64 - 1e-9;
    let mut run = 0;
    for (k, c) in counts.iter().enumerate() {
        if ok(c) {
            run += 1;
            if run == need {
                return Timing::Seconds((k + 1 - need) as f64 * p.bucket_s);
            }
        } else {
            run = 0;
        }
    }
    Timing::Never
}

/// The `q` quantile by nearest rank; 0 for no values.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
