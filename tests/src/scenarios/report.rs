//! The results as markdown: one row per scenario × mode, then the targets for the
//! semantic mode marked met / missed, then what the pipeline did in each semantic run.

use std::fmt::Write as _;

use super::plan::Scenario;
use super::run::{Mode, RunReport};

/// A target's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Which target.
    pub target: &'static str,
    /// Met, missed, or not applicable (`None`).
    pub met: Option<bool>,
    /// The measured value, readable.
    pub value: String,
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn reduction(mode: &RunReport, none: Option<&RunReport>) -> Option<f64> {
    let base = none?.score.peak_upstream_5xx;
    (base > 0).then(|| 1.0 - mode.score.peak_upstream_5xx as f64 / base as f64)
}

/// The targets for the semantic run of `scenario`.
pub fn verdicts(scenario: &Scenario, runs: &[RunReport]) -> Vec<Verdict> {
    let find = |m: Mode| {
        runs.iter()
            .find(|r| r.scenario == scenario.name && r.mode == m)
    };
    let Some(sem) = find(Mode::Semantic) else {
        return Vec::new();
    };
    let none = find(Mode::None);
    let classic = find(Mode::Classic);
    let s = &sem.score;
    let mut v = Vec::new();
    let red = reduction(sem, none);
    v.push(Verdict {
        target: "peak 5xx −≥80 %",
        met: if scenario.peak_target {
            red.map(|r| r >= 0.8)
        } else {
            None
        },
        value: red.map_or("–".into(), |r| format!("−{}", pct(r))),
    });
    let noise = scenario.faults.iter().all(|f| !f.incident);
    v.push(Verdict {
        target: if noise {
            "zero rejections"
        } else {
            "collateral ≤0.5 %"
        },
        met: Some(if noise {
            s.rejected == 0
        } else {
            s.collateral() <= 0.005
        }),
        value: if noise {
            format!("{} rejected", s.rejected)
        } else {
            pct(s.collateral())
        },
    });
    v.push(Verdict {
        target: "false kills ≤ own success share +2 pt",
        met: (!noise).then(|| s.false_kill_share() <= s.fault_success_share + 0.02 + 1e-9),
        value: format!(
            "{} (share {})",
            pct(s.false_kill_share()),
            pct(s.fault_success_share)
        ),
    });
    v.push(Verdict {
        target: "mitigation ≤5 s",
        met: s.mitigation.within(5.0),
        value: s.mitigation.to_string(),
    });
    v.push(Verdict {
        target: "recovery ≤15 s",
        met: s.recovery.within(15.0),
        value: s.recovery.to_string(),
    });
    if let Some(c) = classic
        && !noise
    {
        let c = &c.score;
        let (sc, cc) = (s.collateral(), c.collateral());
        let (sf, cf) = (s.false_kill_share(), c.false_kill_share());
        if scenario.whole_route {
            // No worse: collateral within 0.5 pt, false kills within 2 pt, and no more than
            // 10 % more failures passed through.
            let met = sc <= cc + 0.005
                && sf <= cf + 0.02
                && s.total_upstream_5xx as f64 <= c.total_upstream_5xx as f64 * 1.1 + 1.0;
            v.push(Verdict {
                target: "no worse than classic",
                met: Some(met),
                value: format!(
                    "coll {} vs {}, fk {} vs {}, failures {} vs {}",
                    pct(sc),
                    pct(cc),
                    pct(sf),
                    pct(cf),
                    s.total_upstream_5xx,
                    c.total_upstream_5xx
                ),
            });
        } else {
            // Clearly ahead: no worse on either, and at least 1 pt better on one.
            let met = sc <= cc && sf <= cf && (cc - sc >= 0.01 || cf - sf >= 0.01);
            v.push(Verdict {
                target: "ahead of classic",
                met: Some(met),
                value: format!(
                    "coll {} vs {}, fk {} vs {}",
                    pct(sc),
                    pct(cc),
                    pct(sf),
                    pct(cf)
                ),
            });
        }
    }
    v
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "n/a",
    }
}

/// The whole report.
pub fn markdown(scenarios: &[Scenario], runs: &[RunReport], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "| scenario | mode | peak upstream-caused 5xx/s | vs none | upstream-caused failures | \
         peak gateway rejections/s | collateral | false kills (own success share) | \
         mitigation | recovery | healthy p95 ms | upstream busy 503s |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for sc in scenarios {
        let none = runs
            .iter()
            .find(|r| r.scenario == sc.name && r.mode == Mode::None);
        for r in runs.iter().filter(|r| r.scenario == sc.name) {
            let s = &r.score;
            let red = reduction(r, none).map_or("–".into(), |x| format!("−{}", pct(x)));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} | {} | {} ({} / {}) | {} ({}) | {} | {} | {:.1} | {} |",
                sc.name,
                r.mode.name(),
                s.peak_upstream_5xx,
                if r.mode == Mode::None {
                    "–".into()
                } else {
                    red
                },
                s.total_upstream_5xx,
                s.requests,
                s.peak_gateway_rejections,
                pct(s.collateral()),
                s.healthy_rejected,
                s.healthy,
                pct(s.false_kill_share()),
                pct(s.fault_success_share),
                s.mitigation,
                s.recovery,
                s.healthy_p95_ms,
                r.upstream_busy,
            );
        }
    }
    let _ = writeln!(out, "\n### Targets (semantic mode, from issue 3)\n");
    let _ = writeln!(
        out,
        "| scenario | peak 5xx −≥80 % | collateral ≤0.5 % / zero rejections (noise) | false kills ≤ own success share + 2 pt | mitigation ≤5 s | recovery ≤15 s | vs classic |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for sc in scenarios {
        let v = verdicts(sc, runs);
        if v.is_empty() {
            continue;
        }
        let cell = |i: usize| {
            v.get(i).map_or("n/a".to_owned(), |x| {
                format!("{}: {}", mark(x.met), x.value)
            })
        };
        let classic = v.get(5).map_or("n/a".to_owned(), |x| {
            format!("{} ({}): {}", mark(x.met), x.target, x.value)
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            sc.name,
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            cell(4),
            classic
        );
    }
    let _ = writeln!(out, "\n### Scenarios\n");
    for sc in scenarios {
        let _ = writeln!(
            out,
            "- **{}** ({:.0} s): {}. Faults: {}.",
            sc.name,
            sc.duration_ms as f64 / 1e3,
            sc.description,
            sc.describe_faults()
        );
    }
    let _ = writeln!(out, "\n### What the pipeline did (semantic runs)\n");
    for r in runs.iter().filter(|r| r.mode == Mode::Semantic) {
        let _ = writeln!(out, "**{}**: policies (first–last seen, s):", r.scenario);
        if r.policies.is_empty() {
            let _ = writeln!(out, "- none");
        }
        for p in &r.policies {
            let _ = writeln!(
                out,
                "- `{}` {:.1}–{:.1}: {} on `{}`",
                p.id, p.from, p.to, p.action, p.slice
            );
        }
        let _ = writeln!(out, "\nclusters at the end ({}):", r.clusters.len());
        for c in r.clusters.iter().take(12) {
            let _ = writeln!(out, "- {}", c.replace('|', "\\|"));
        }
        let _ = writeln!(out);
    }
    out
}
