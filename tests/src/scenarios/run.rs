//! Runs a scenario in one mode: a fresh simulator, a fresh enforcer (and, in semantic mode, a
//! fresh embedded pipeline), the load, and the score.
//!
//! The SQL functions share one process-wide template miner and cluster index
//! (`udfs::sql`'s `CLUSTERER`, a `OnceLock` with no reset). So that no run sees templates or
//! clusters learned in an earlier one, the bench runs every scenario × mode in a child process
//! of its own ([`child_command`]); the parent only collects the scores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::load;
use super::plan::Scenario;
use super::score::{self, Incident, Params, Record, Score};
use super::sim::{self, Capacity};

/// How the gateway protects the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The enforcer with no limits and no policies: a plain proxy.
    None,
    /// The enforcer's classic per-route breaker and rate limiter.
    Classic,
    /// The embedded semantic pipeline feeding the enforcer's slice policies.
    Semantic,
}

impl Mode {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Classic => "classic",
            Mode::Semantic => "semantic",
        }
    }
}

/// Which embedder the semantic mode's `cluster_of` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Embedder {
    /// The built-in multilingual-e5-small model (candle).
    E5,
    /// Hashed character n-grams (no model; fast to start).
    Ngram,
}

/// A policy the pipeline issued, as seen by polling it every 250 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySeen {
    /// Policy id.
    pub id: String,
    /// Its slice, readable.
    pub slice: String,
    /// Its action(s), readable (a change of action keeps the id).
    pub action: String,
    /// First seen, s since the scenario started.
    pub from: f64,
    /// Last seen, s.
    pub to: f64,
}

/// What one child run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Mode.
    pub mode: Mode,
    /// The figures.
    pub score: Score,
    /// Requests the simulator answered 503 "busy" (its worker pool was full).
    pub upstream_busy: u64,
    /// Semantic mode: the policies issued.
    pub policies: Vec<PolicySeen>,
    /// Semantic mode: clusters the pipeline formed (id, phase, last templates).
    pub clusters: Vec<String>,
    /// Per second: (sent, upstream failures, rejected) of incident slices and healthy ones.
    pub per_second: Vec<[usize; 6]>,
}

/// The incidents of `scenario` for the scorer.
pub fn incidents(scenario: &Scenario) -> Vec<Incident> {
    scenario
        .plan()
        .incidents()
        .enumerate()
        .map(|(i, f)| Incident {
            bit: i as u8,
            windows: f
                .windows
                .iter()
                .map(|&(s, e)| (s as f64 / 1e3, e as f64 / 1e3))
                .collect(),
        })
        .collect()
}

/// The enforcer's config in front of `upstream` for `mode`.
pub fn enforcer_yaml(upstream: SocketAddr, mode: Mode) -> String {
    let sink = if mode == Mode::Semantic {
        "embedded"
    } else {
        "discard"
    };
    // A sensible operator's classic protection: a token bucket at 1.5x each route's normal
    // rate, and a route breaker opening at 50 % errors or 50 % calls slower than 1.5 s over
    // 10 s (at least 20 calls), open for 10 s, then five probes per 20 % step.
    let limits = |rps: u32| {
        if mode == Mode::Classic {
            format!(
                "    limits:
      rate_limit: {{ requests_per_second: {rps}, burst: {rps} }}
      circuit_breaker: {{ window_ms: 10000, min_calls: 20, failure_ratio: 0.5, slow_call_ms: 1500, slow_call_ratio: 0.5, open_ms: 10000, ramp_step: 0.2, probes: 5 }}
"
            )
        } else {
            String::new()
        }
    };
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
service_name: scenario-bench
events: {{ sink: {sink}, traffic_sampling_rate: 0.2 }}
routes:
  - name: payments
    match: {{ path_prefix: /pay, methods: [POST] }}
    upstreams: ["http://{upstream}"]
    timeout_ms: 2000
    errors: {{ json_predicate: "$.code != 0" }}
    dimensions: {{ body: [channel], headers: [x-tenant], max_values: 64 }}
    fallback: {{ status: 200, headers: {{ content-type: application/json }}, body: '{{"code":0,"status":"queued"}}' }}
{pay_limits}  - name: orders
    match: {{ path_pattern: "/orders/{{id}}", methods: [GET] }}
    upstreams: ["http://{upstream}"]
    timeout_ms: 2000
    errors: {{ json_predicate: "$.code != 0" }}
    dimensions: {{ query: [region], path: [id], max_values: 64 }}
{order_limits}"#,
        pay_limits = limits(180),
        order_limits = limits(90),
    )
}

fn sql_path() -> PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql").into()
}

/// Runs `scenario` in `mode` in this process. Call once per process (see the module docs).
pub async fn run_one(
    scenario: &Scenario,
    mode: Mode,
    embedder: Embedder,
) -> anyhow::Result<RunReport> {
    let shutdown = CancellationToken::new();
    let (upstream, stats) =
        sim::start(scenario.plan(), Capacity::default(), shutdown.child_token())
            .await
            .context("starting the simulator")?;
    let config = enforcer::config::Config::parse(&enforcer_yaml(upstream, mode))
        .map_err(|e| anyhow::anyhow!("enforcer config: {e}"))?;
    let registry = prometheus::Registry::new();
    let (proxy, decider, _gateway) = if mode == Mode::Semantic {
        let model: Arc<dyn udfs::cluster::TextEmbedder> = match embedder {
            Embedder::Ngram => Arc::new(udfs::cluster::NgramEmbedder::new(384)),
            Embedder::E5 => udfs::embed::default_embedder()
                .map_err(|e| anyhow::anyhow!("loading the built-in e5 model: {e}"))?,
        };
        let installed = udfs::sql::install_embedder(model);
        anyhow::ensure!(
            installed,
            "an embedder was already installed in this process"
        );
        let e = pipeline::embedded::start(
            config,
            pipeline::job::JobConfig::new(vec![sql_path()]),
            "127.0.0.1:0".parse()?,
            "scenario-bench-token".into(),
            &registry,
            shutdown.clone(),
        )
        .await
        .context("starting the embedded pipeline")?;
        (e.gateway.proxy_addr, Some(e.decider), Some(e.gateway))
    } else {
        let g = enforcer::server::Gateway::start(config, &registry, shutdown.clone())
            .await
            .context("starting the enforcer")?;
        (g.proxy_addr, None, Some(g))
    };

    let started = tokio::time::Instant::now();
    let watch = decider.clone().map(|d| {
        let stop = shutdown.child_token();
        tokio::spawn(async move {
            let mut seen: BTreeMap<(String, String), PolicySeen> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64();
                for p in pipeline::job::lock(&d).policies() {
                    let action = action_text(&p);
                    let slice = slice_text(&p.slice);
                    seen.entry((p.id.clone(), action.clone()))
                        .and_modify(|s| s.to = t)
                        .or_insert(PolicySeen {
                            id: p.id.clone(),
                            slice,
                            action,
                            from: t,
                            to: t,
                        });
                }
            }
            let mut out: Vec<PolicySeen> = seen.into_values().collect();
            out.sort_by(|a, b| a.from.total_cmp(&b.from));
            out
        })
    });
    let records = load::run(scenario, proxy).await;
    let duration_s = scenario.duration_ms as f64 / 1e3;
    let incidents = incidents(scenario);
    let score = score::score(&records, &incidents, duration_s, Params::default());
    let clusters = decider
        .as_ref()
        .map(|d| {
            pipeline::job::lock(d)
                .cluster_views()
                .into_iter()
                .map(|c| {
                    let templates = c
                        .last
                        .as_ref()
                        .map(|l| l.templates.iter().take(3).cloned().collect::<Vec<_>>())
                        .unwrap_or_default();
                    format!(
                        "{} {} (max severity {:.2}): {}",
                        c.cluster_id,
                        c.phase,
                        c.severity,
                        templates.join(" | ")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    shutdown.cancel();
    let policies = match watch {
        Some(w) => w.await.unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(RunReport {
        scenario: scenario.name.to_owned(),
        mode,
        score,
        upstream_busy: stats.busy.load(std::sync::atomic::Ordering::Relaxed),
        policies,
        clusters,
        per_second: per_second(&records, duration_s),
    })
}

fn per_second(records: &[Record], duration_s: f64) -> Vec<[usize; 6]> {
    let mut out = vec![[0usize; 6]; duration_s.ceil() as usize + 1];
    for r in records {
        let k = (r.t.max(0.0) as usize).min(out.len() - 1);
        let base = if r.healthy_slice() { 3 } else { 0 };
        out[k][base] += 1;
        if r.upstream_failure() {
            out[k][base + 1] += 1;
        }
        if r.rejected {
            out[k][base + 2] += 1;
        }
    }
    out
}

fn action_text(p: &schemas::Policy) -> String {
    let kind = match &p.action {
        schemas::Action::RateLimit {
            requests_per_second,
            ..
        } => format!("rate_limit {requests_per_second:.1}/s"),
        schemas::Action::CircuitBreak { open_ms, .. } => format!("circuit_break open {open_ms} ms"),
        schemas::Action::Degrade => "degrade".to_owned(),
    };
    if p.shadow {
        format!("{kind} (shadow)")
    } else {
        kind
    }
}

fn slice_text(slice: &schemas::Slice) -> String {
    let v = serde_json::to_value(slice).unwrap_or_default();
    let any = v["any"].as_array().cloned().unwrap_or_default();
    any.iter()
        .map(|c| {
            let mut parts = vec![c["route"].as_str().unwrap_or("?").to_owned()];
            for kv in c["all"].as_array().into_iter().flatten() {
                parts.push(format!(
                    "{}={}",
                    kv["key"].as_str().unwrap_or("?"),
                    kv["value"].as_str().unwrap_or("?")
                ));
            }
            parts.join(" ∧ ")
        })
        .collect::<Vec<_>>()
        .join(" ∨ ")
}

/// The command that runs `scenario` in `mode` in a child process, writing its report to `out`.
pub fn child_command(
    scenario: &str,
    mode: Mode,
    embedder: Embedder,
    quick: bool,
    out: &std::path::Path,
) -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--child")
        .arg("--only")
        .arg(scenario)
        .arg("--modes")
        .arg(mode.name())
        .arg("--embedder")
        .arg(match embedder {
            Embedder::E5 => "e5",
            Embedder::Ngram => "ngram",
        })
        .arg("--child-report")
        .arg(out);
    if quick {
        cmd.arg("--quick");
    }
    Ok(cmd)
}
