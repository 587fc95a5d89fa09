//! `scenarios`: the scenario bench. Every scenario × mode runs in a child process of its own
//! (the SQL functions' cluster index is process-wide), one after the other; the table goes to
//! stdout and, as markdown, to `--out`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use e2e::scenarios::plan;
use e2e::scenarios::report;
use e2e::scenarios::run::{self, Embedder, Mode, RunReport};

#[derive(Debug, Parser)]
#[command(
    name = "scenarios",
    about = "The scenario bench: none vs classic vs semantic"
)]
struct Args {
    /// Run only these scenarios (comma-separated): slow-slice, two-slices, noise, route-down,
    /// flapping.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "none,classic,semantic")]
    modes: Vec<Mode>,
    /// Write the markdown table here (and the per-second details next to it as .json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A smoke run: every time in the scenarios halved.
    #[arg(long)]
    quick: bool,
    /// Embedder for new templates in semantic mode.
    #[arg(long, value_enum, default_value_t = Embedder::E5)]
    embedder: Embedder,
    /// Internal: run one scenario in one mode in this process.
    #[arg(long, hide = true)]
    child: bool,
    /// Internal: where the child writes its report.
    #[arg(long, hide = true)]
    child_report: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scale = if args.quick { 0.5 } else { 1.0 };
    let scenarios: Vec<plan::Scenario> = plan::all(scale)
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name))
        .collect();
    anyhow::ensure!(
        !scenarios.is_empty(),
        "no scenario matches --only {:?}",
        args.only
    );
    if args.child {
        return child(&args, &scenarios[0]);
    }
    let dir = std::env::temp_dir().join(format!("scenario-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let started = std::time::Instant::now();
    let mut runs: Vec<RunReport> = Vec::new();
    for sc in &scenarios {
        for &mode in &args.modes {
            let file = dir.join(format!("{}-{}.json", sc.name, mode.name()));
            eprintln!(
                "[{:>5.0} s] {} / {} ({:.0} s)…",
                started.elapsed().as_secs_f64(),
                sc.name,
                mode.name(),
                sc.duration_ms as f64 / 1e3
            );
            let status = run::child_command(sc.name, mode, args.embedder, args.quick, &file)?
                .status()
                .context("running a child")?;
            if !status.success() {
                eprintln!("  {} / {} failed: {status}", sc.name, mode.name());
                continue;
            }
            let r: RunReport = serde_json::from_slice(&std::fs::read(&file)?)
                .with_context(|| file.display().to_string())?;
            eprintln!(
                "  peak upstream 5xx/s {}, rejected {}, collateral {}/{}, mitigation {}, recovery {}",
                r.score.peak_upstream_5xx,
                r.score.rejected,
                r.score.healthy_rejected,
                r.score.healthy,
                r.score.mitigation,
                r.score.recovery
            );
            runs.push(r);
        }
    }
    let header = format!(
        "## Scenario bench\n\n`cargo run --release -p e2e --bin scenarios -- {}` on this machine \
         (2 vCPUs shared with other builds), embedder {:?}{}; {} runs in {:.0} s. Each scenario × \
         mode ran in a fresh process (fresh simulator, enforcer and pipeline; the SQL functions' \
         template miner and cluster index are process-wide, so a process per run isolates them). \
         Load: 4 payment channels × 30 req/s (tenants t1–t4 mixed) + 3 order regions × 20 req/s, \
         open loop. Upstream: 40 workers shared by both routes, 2.5 s queue limit. \
         **Peak 5xx** counts upstream-caused failures only (5xx incl. the enforcer's 502/504 for a \
         refused / timed-out upstream, errors inside 200s, no answer within 5 s), per second of \
         send time; the gateway's own rejections (429 / 503 / fallback, all with \
         `X-Gateway-Policy`) are counted apart. Definitions: `tests/src/scenarios/score.rs`.",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        args.embedder,
        if args.quick {
            ", --quick (times halved)"
        } else {
            ""
        },
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    let md = report::markdown(&scenarios, &runs, &header);
    println!("{md}");
    if let Some(out) = &args.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, &md).with_context(|| out.display().to_string())?;
        std::fs::write(out.with_extension("json"), serde_json::to_vec(&runs)?)?;
        eprintln!("wrote {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn child(args: &Args, scenario: &plan::Scenario) -> anyhow::Result<()> {
    let mode = *args.modes.first().context("--modes is empty")?;
    let out = args
        .child_report
        .as_ref()
        .context("--child-report is required")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run::run_one(scenario, mode, args.embedder))?;
    std::fs::write(out, serde_json::to_vec(&report)?)?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
