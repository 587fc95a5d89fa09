//! The scenario bench's scorer on hand-built request records; every expected number is
//! worked out by hand in the comments.

use e2e::scenarios::score::{Incident, Params, Record, Timing, percentile, score};

fn rec(t: f64) -> Record {
    Record {
        t,
        status: 200,
        latency_ms: 5.0,
        rejected: false,
        succeeded: true,
        would_succeed: true,
        slices: 0,
    }
}

fn failed(t: f64, slices: u8) -> Record {
    Record {
        status: 500,
        succeeded: false,
        would_succeed: false,
        slices,
        ..rec(t)
    }
}

fn rejected(t: f64, slices: u8, would_succeed: bool) -> Record {
    Record {
        status: 503,
        rejected: true,
        succeeded: false,
        would_succeed,
        slices,
        ..rec(t)
    }
}

fn incident(windows: &[(f64, f64)]) -> Vec<Incident> {
    vec![Incident {
        bit: 0,
        windows: windows.to_vec(),
    }]
}

#[test]
fn collateral_false_kills_and_the_faults_own_success_share() {
    let mut r = Vec::new();
    // 10 healthy-slice requests, one rejected although it would have succeeded.
    for i in 0..9 {
        r.push(rec(12.0 + f64::from(i) * 0.1));
    }
    r.push(rejected(13.0, 0, true));
    // 10 faulty-slice requests inside the window: 8 would fail (6 rejected, 2 passed and
    // failed), 2 would succeed (1 rejected, 1 passed and succeeded).
    for i in 0..6 {
        r.push(rejected(11.0 + f64::from(i) * 0.1, 1, false));
    }
    r.push(failed(11.7, 1));
    r.push(failed(11.8, 1));
    r.push(rejected(11.9, 1, true));
    r.push(Record {
        slices: 1,
        ..rec(11.95)
    });
    let s = score(&r, &incident(&[(10.0, 20.0)]), 30.0, Params::default());
    // Collateral: 1 of 10 healthy-slice requests.
    assert_eq!((s.healthy_rejected, s.healthy), (1, 10));
    assert!((s.collateral() - 0.1).abs() < 1e-12);
    // Rejected 1 + 6 + 1 = 8; of those, the healthy one and the faulty one that would have
    // succeeded: 2 / 8 = 25 %.
    assert_eq!((s.false_kills, s.rejected), (2, 8));
    assert!((s.false_kill_share() - 0.25).abs() < 1e-12);
    // Inside the window the slice had 10 requests, 2 of which would have succeeded: 20 %.
    assert!((s.fault_success_share - 0.2).abs() < 1e-12);
    // Upstream-caused failures: the two passed-and-failed ones, both in second 11.
    assert_eq!((s.total_upstream_5xx, s.peak_upstream_5xx), (2, 2));
    // Gateway rejections by second: 11 → 7, 13 → 1.
    assert_eq!(s.peak_gateway_rejections, 7);
}

#[test]
fn peak_upstream_5xx_counts_per_second_of_send_time_and_leaves_out_rejections() {
    let r = vec![
        failed(1.2, 0),
        failed(1.7, 0),
        rejected(1.9, 0, false), // the gateway's own 503: not upstream-caused
        failed(2.1, 0),
        // An error inside a 200 passed through counts as an upstream failure too.
        Record {
            succeeded: false,
            would_succeed: false,
            ..rec(2.5)
        },
        // No answer at all (status 0) also counts.
        Record {
            status: 0,
            succeeded: false,
            ..rec(2.6)
        },
        rec(2.7),
        failed(3.0, 0),
    ];
    let s = score(&r, &[], 5.0, Params::default());
    // Second 1: 2, second 2: 3, second 3: 1.
    assert_eq!(s.peak_upstream_5xx, 3);
    assert_eq!(s.total_upstream_5xx, 6);
    assert_eq!(s.peak_gateway_rejections, 1);
    assert_eq!(s.mitigation, Timing::NotApplicable);
    assert_eq!(s.recovery, Timing::NotApplicable);
}

/// The faulty slice at 10 requests/s, sent at 10.05, 10.15, …, so no request sits on a
/// bucket boundary.
fn slice_at(from: f64, to: f64) -> impl Iterator<Item = f64> {
    let n = ((to - from) * 10.0).round() as i32;
    (0..n).map(move |i| from + 0.05 + f64::from(i) * 0.1)
}

#[test]
fn mitigation_is_the_start_of_the_first_3_s_of_90_percent_rejections() {
    let mut r = Vec::new();
    for t in slice_at(10.0, 30.0) {
        // Rejected from 12.0 on, except one request at 12.35 that got through and failed:
        // bucket [12.0, 12.5) is 4 / 5 = 80 % rejected, below 90 %, so the run of six
        // 0.5 s buckets starts at 12.5: 2.5 s after the fault began.
        if t >= 12.0 && (t - 12.35).abs() > 1e-6 {
            r.push(rejected(t, 1, false));
        } else {
            r.push(failed(t, 1));
        }
    }
    for t in slice_at(30.0, 50.0) {
        // After the end (30): still rejected until 34.0, then answered; one failure at 36.25
        // breaks the run that began at 34.0 (bucket [36.0, 36.5) is 4 / 5); the next run of
        // six clean buckets starts at 36.5: recovery 6.5 s.
        if t < 34.0 {
            r.push(rejected(t, 1, true));
        } else if (t - 36.25).abs() < 1e-6 {
            r.push(failed(t, 1));
        } else {
            r.push(Record {
                slices: 1,
                ..rec(t)
            });
        }
    }
    let s = score(&r, &incident(&[(10.0, 30.0)]), 50.0, Params::default());
    assert_eq!(s.mitigation, Timing::Seconds(2.5));
    assert_eq!(s.recovery, Timing::Seconds(6.5));
    assert_eq!(s.mitigation.within(5.0), Some(true));
    assert_eq!(s.recovery.within(5.0), Some(false));
}

#[test]
fn a_run_must_fit_inside_the_window_and_the_worst_window_counts() {
    let mut r = Vec::new();
    // Window 1, [10, 20): rejected from 11.0 → mitigation 1.0 s; answered from 20.0 on →
    // recovery 0.0 s.
    // Window 2, [30, 40): rejected from 38.0 → only 2 s of rejections before the window
    // ends, never 3 s: never mitigated.
    for t in slice_at(10.0, 50.0) {
        let in_first = (11.0..20.0).contains(&t);
        let in_second = (38.0..40.0).contains(&t);
        if in_first || in_second {
            r.push(rejected(t, 1, false));
        } else if (30.0..38.0).contains(&t) || (10.0..11.0).contains(&t) {
            r.push(failed(t, 1));
        } else {
            r.push(Record {
                slices: 1,
                ..rec(t)
            });
        }
    }
    let windows = [(10.0, 20.0), (30.0, 40.0)];
    let s = score(&r, &incident(&windows), 50.0, Params::default());
    assert_eq!(s.mitigation, Timing::Never);
    // Recovery after window 1 counts until window 2 starts; after window 2, until the end.
    assert_eq!(s.recovery, Timing::Seconds(0.0));

    // With the second window mitigated from 31.0 (1 s), the worst is still 1.0 s.
    let r2: Vec<Record> = r
        .iter()
        .map(|x| {
            if (31.0..40.0).contains(&x.t) {
                rejected(x.t, 1, false)
            } else {
                x.clone()
            }
        })
        .collect();
    let s2 = score(&r2, &incident(&windows), 50.0, Params::default());
    assert_eq!(s2.mitigation, Timing::Seconds(1.0));
}

#[test]
fn recovery_needs_the_slice_answered_and_succeeding_not_just_unrejected() {
    // After the end at 10, nothing is rejected but the upstream keeps failing until 15.0:
    // recovery 5.0 s. A run of 6 clean buckets from 15.0 fits before the end at 25.
    let mut r = Vec::new();
    for t in slice_at(5.0, 10.0) {
        r.push(failed(t, 1));
    }
    for t in slice_at(10.0, 25.0) {
        if t < 15.0 {
            r.push(failed(t, 1));
        } else {
            r.push(Record {
                slices: 1,
                ..rec(t)
            });
        }
    }
    let s = score(&r, &incident(&[(5.0, 10.0)]), 25.0, Params::default());
    assert_eq!(s.recovery, Timing::Seconds(5.0));
    assert_eq!(s.mitigation, Timing::Never);
    assert_eq!((s.rejected, s.false_kills), (0, 0));
    assert_eq!(s.false_kill_share(), 0.0);
}

#[test]
fn healthy_p95_is_nearest_rank_over_healthy_requests_during_the_incidents() {
    let mut r = Vec::new();
    // 100 healthy requests inside [10, 20) with latencies 1..=100 ms: p95 = the 95th = 95.
    for i in 1..=100 {
        r.push(Record {
            latency_ms: f64::from(i),
            ..rec(10.0 + f64::from(i) * 0.05)
        });
    }
    // Outside the incident span and in the faulty slice: ignored.
    r.push(Record {
        latency_ms: 5000.0,
        ..rec(25.0)
    });
    r.push(Record {
        latency_ms: 5000.0,
        slices: 1,
        ..rec(15.0)
    });
    let s = score(&r, &incident(&[(10.0, 20.0)]), 30.0, Params::default());
    assert_eq!(s.healthy_p95_ms, 95.0);
    assert_eq!(percentile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
    assert_eq!(percentile(&mut [], 0.95), 0.0);
}
