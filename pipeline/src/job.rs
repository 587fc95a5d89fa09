//! The live job: records in, windowed SQL, decisions, policies out.
//!
//! ```text
//! RecordSource ──► Engine (sql/*.sql + UDFs) ──► cluster_decisions ──► Decider ──► PolicyPublisher
//!      ▲                                                                 ▲
//!      └── commit after the window's snapshot is published          operator commands (API)
//! ```
//!
//! The engine's watermark follows the records; when they stop (a healthy quiet service), a
//! wall clock moves it so windows still close and policies still recover. Nothing here is
//! fatal: an engine error, an unreadable decision, a refused policy or a failed publish is
//! logged and counted, and the job carries on with the next records.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use schemas::{Policy, PolicySnapshot};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::decider::{Decider, Mode, Step};
use crate::decision::{self, Decision};
use crate::engine::{Engine, EngineError, JobSpec, SinkOutput};
use crate::io::{PolicyPublisher, RecordSource};
use crate::lifecycle::LifecycleConfig;
use crate::policies_topic::{self, ClosedWindows, DecisionConsumer, DecisionProducer, Received};

/// How the job runs.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The SQL files, in order.
    pub sql_files: Vec<PathBuf>,
    /// Lifecycle tunables (dwell, recovery windows, escalation step).
    pub lifecycle: LifecycleConfig,
    /// Issue every policy in shadow mode.
    pub global_shadow: bool,
    /// When no records arrive the watermark moves to wall time minus this, ms (default 2000:
    /// the SQL's 1 s lateness plus delivery slack).
    pub idle_lag_ms: i64,
    /// How often the wall clock is checked, and expiries applied.
    pub tick: Duration,
    /// Records taken from the source at once.
    pub max_batch: usize,
}

impl JobConfig {
    /// The shipped SQL with the plan's defaults.
    pub fn new(sql_files: Vec<PathBuf>) -> Self {
        Self {
            sql_files,
            lifecycle: LifecycleConfig::default(),
            global_shadow: false,
            idle_lag_ms: 2_000,
            tick: Duration::from_millis(250),
            max_batch: 4_096,
        }
    }
}

/// An operator's command, applied by the job loop (which owns publishing).
#[derive(Debug)]
pub enum Command {
    /// Mark a cluster benign (never act on it) or clear the mark.
    Benign {
        /// The cluster.
        cluster_id: String,
        /// Benign or not.
        benign: bool,
    },
    /// Override one policy's mode; `None` clears the override.
    Mode {
        /// The policy id.
        policy_id: String,
        /// The mode.
        mode: Option<Mode>,
    },
    /// Shadow every policy, or enforce again.
    GlobalShadow(bool),
    /// Force a policy onto a slice.
    Force(Box<Policy>),
}

/// A command with the channel its result goes back on: the snapshot version now in force.
pub type CommandRequest = (Command, oneshot::Sender<Result<u64, String>>);

/// The job's metrics.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// `pipeline_policy_changes_total{change}`: issued, escalated, renewed, withdrawn,
    /// left_armed, expired, refused.
    pub changes: IntCounterVec,
    /// `pipeline_snapshots_published_total{result}`: ok, error, standby (another replica
    /// leads).
    pub published: IntCounterVec,
    /// `pipeline_snapshot_version`.
    pub version: IntGauge,
    /// `pipeline_cluster_phase{cluster_id,phase}`: 1 for the phase a cluster is in.
    pub phase: IntGaugeVec,
    /// `cluster_severity{cluster_id}` (the plan's name), in thousandths.
    pub severity: IntGaugeVec,
    /// `cluster_size{cluster_id}` (the plan's name): the cluster's weighted errors in its
    /// latest decision window (10 s); the ClusterSizeAnomaly alert watches it.
    pub size: IntGaugeVec,
    /// `pipeline_late_rows_total` and other engine counters: `pipeline_engine_rows_total{kind}`.
    pub engine_rows: IntCounterVec,
    /// `pipeline_errors_total{stage}`: engine, decision, publish, source.
    pub errors: IntCounterVec,
}

impl JobMetrics {
    /// Registers the job's metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            changes: IntCounterVec::new(
                Opts::new(
                    "pipeline_policy_changes_total",
                    "Policy lifecycle changes by kind.",
                ),
                &["change"],
            )?,
            published: IntCounterVec::new(
                Opts::new(
                    "pipeline_snapshots_published_total",
                    "Snapshots handed to the publisher, by result.",
                ),
                &["result"],
            )?,
            version: IntGauge::new("pipeline_snapshot_version", "Last snapshot version.")?,
            phase: IntGaugeVec::new(
                Opts::new(
                    "pipeline_cluster_phase",
                    "1 for the lifecycle phase each cluster is in.",
                ),
                &["cluster_id", "phase"],
            )?,
            severity: IntGaugeVec::new(
                Opts::new(
                    "cluster_severity",
                    "Severity of each cluster's policy in force, in thousandths.",
                ),
                &["cluster_id"],
            )?,
            size: IntGaugeVec::new(
                Opts::new(
                    "cluster_size",
                    "Weighted errors of each tracked cluster in its latest 10 s decision window.",
                ),
                &["cluster_id"],
            )?,
            engine_rows: IntCounterVec::new(
                Opts::new(
                    "pipeline_engine_rows_total",
                    "Rows through the windowed engine: in, late, out.",
                ),
                &["kind"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "pipeline_errors_total",
                    "Job errors by stage (never fatal).",
                ),
                &["stage"],
            )?,
        };
        registry.register(Box::new(m.changes.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.version.clone()))?;
        registry.register(Box::new(m.phase.clone()))?;
        registry.register(Box::new(m.severity.clone()))?;
        registry.register(Box::new(m.size.clone()))?;
        registry.register(Box::new(m.engine_rows.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        Ok(m)
    }
}

/// The decider, shared with the operator API (read-only there; changes go through
/// [`Command`]s so the job publishes them).
pub type SharedDecider = Arc<Mutex<Decider>>;

/// Locks the decider; a panic elsewhere while holding it does not take the job down.
pub fn lock(d: &SharedDecider) -> MutexGuard<'_, Decider> {
    d.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running job.
pub struct Job {
    engine: Engine,
    outputs: Arc<Mutex<Vec<SinkOutput>>>,
    decider: SharedDecider,
    config: JobConfig,
    metrics: JobMetrics,
    commands: mpsc::Receiver<CommandRequest>,
    command_tx: mpsc::Sender<CommandRequest>,
    last_engine: crate::engine::EngineStats,
    /// A snapshot the publisher refused, retried on the next tick.
    pending: Option<PolicySnapshot>,
    /// When the tick last handed the shared cluster index the templates assigned while it was
    /// down (a dead index costs one request timeout per attempt, so not every tick).
    last_index_sync: Option<std::time::Instant>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Job {
    /// Loads and checks the SQL (a file that does not parse or names an unknown function
    /// fails here, with the file and line) and registers the UDFs.
    pub async fn load(config: JobConfig, registry: &Registry) -> Result<Self, JobError> {
        let spec = JobSpec::from_files(&config.sql_files)?;
        if !spec.queries.iter().any(|q| q.sink == decision::SINK) {
            return Err(JobError::NoDecisions);
        }
        let outputs: Arc<Mutex<Vec<SinkOutput>>> = Arc::default();
        let sink_outputs = Arc::clone(&outputs);
        let mut engine = Engine::new(
            spec,
            Box::new(move |o| {
                if o.sink == decision::SINK {
                    sink_outputs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(o);
                }
            }),
        );
        crate::udf::register(&mut engine);
        engine.validate().await?;
        let metrics = JobMetrics::register(registry).map_err(JobError::Metrics)?;
        let decider = Decider::new(
            config.lifecycle.clone(),
            config.global_shadow,
            u64::try_from(wall_ms()).unwrap_or(0),
        );
        let (command_tx, commands) = mpsc::channel(64);
        Ok(Self {
            engine,
            outputs,
            decider: Arc::new(Mutex::new(decider)),
            config,
            metrics,
            commands,
            command_tx,
            last_engine: Default::default(),
            pending: None,
            last_index_sync: None,
        })
    }

    /// The decider, for the API's views.
    pub fn decider(&self) -> SharedDecider {
        Arc::clone(&self.decider)
    }

    /// Where the API sends operator commands.
    pub fn commands(&self) -> mpsc::Sender<CommandRequest> {
        self.command_tx.clone()
    }

    /// Runs until the source ends or `shutdown` is cancelled.
    pub async fn run<S: RecordSource, P: PolicyPublisher>(
        mut self,
        mut source: S,
        mut publisher: P,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                batch = source.next_batch(self.config.max_batch) => {
                    let Some(batch) = batch else { break };
                    self.push(&batch).await;
                }
                _ = tick.tick() => self.on_tick(&mut publisher).await,
                Some((command, reply)) = self.commands.recv() => {
                    let step = self.command(command);
                    let _ = reply.send(self.publish(step, &mut publisher).await);
                }
            }
            let step = self.decide();
            let _ = self.publish(step, &mut publisher).await;
            if self.pending.is_some() {
                // At least once: records stay uncommitted until their results are published.
                continue;
            }
            if let Err(e) = source.commit().await {
                self.metrics.errors.with_label_values(&["source"]).inc();
                tracing::warn!(error = %e, "source commit failed; records may be redelivered");
            }
        }
    }

    /// Distributed mode: this replica's share of the record partitions goes through the
    /// engine and its decisions to the policies topic (records are committed once the broker
    /// has them); every batch on the topic — this replica's, the other replicas', an external
    /// engine's rows — feeds the decider, and the publisher (etcd) publishes when this replica
    /// leads. See [`crate::policies_topic`].
    pub async fn run_distributed<S: RecordSource, P: PolicyPublisher>(
        mut self,
        mut source: S,
        out: DecisionProducer,
        decisions_in: DecisionConsumer,
        mut publisher: P,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closed = ClosedWindows::default();
        // Decisions not yet acknowledged by the broker; records stay uncommitted meanwhile.
        let mut unsent: Option<(Vec<Decision>, Option<i64>)> = None;
        let mut last_sent_closed = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                batch = source.next_batch(self.config.max_batch), if unsent.is_none() => {
                    let Some(batch) = batch else { break };
                    self.push(&batch).await;
                }
                message = decisions_in.next() => {
                    let step = match message.map(|m| policies_topic::decode(&m, wall_ms())) {
                        Ok(Ok(Received::Batch(b))) => {
                            if let Some(end) = b.closed_window_end_ms {
                                closed.report(&b.replica, end, Instant::now());
                            }
                            let until = closed.closed(Instant::now());
                            lock(&self.decider).on_decisions(b.decisions, until, wall_ms())
                        }
                        Ok(Ok(Received::Rows(rows))) => {
                            lock(&self.decider).on_decisions(rows, None, wall_ms())
                        }
                        Ok(Err(e)) => {
                            self.metrics.errors.with_label_values(&["decision"]).inc();
                            tracing::warn!(error = %e, "policies topic: message skipped");
                            Step::default()
                        }
                        Err(e) => {
                            self.metrics.errors.with_label_values(&["source"]).inc();
                            tracing::warn!(error = %e, "policies topic: consumer error");
                            Step::default()
                        }
                    };
                    let _ = self.publish(step, &mut publisher).await;
                }
                _ = tick.tick() => self.on_tick(&mut publisher).await,
                Some((command, reply)) = self.commands.recv() => {
                    let step = self.command(command);
                    let _ = reply.send(self.publish(step, &mut publisher).await);
                }
            }
            if unsent.is_none() {
                unsent = self
                    .take_decisions()
                    .filter(|(d, c)| !d.is_empty() || *c != last_sent_closed);
            }
            let Some((decisions, closed_end)) = unsent.take() else {
                continue;
            };
            match out.send(closed_end, decisions.clone()).await {
                Ok(()) => {
                    last_sent_closed = closed_end;
                    if let Err(e) = source.commit().await {
                        self.metrics.errors.with_label_values(&["source"]).inc();
                        tracing::warn!(error = %e, "source commit failed; records may be redelivered");
                    }
                }
                Err(e) => {
                    // Kept, and sent again before more records are read (at least once).
                    self.metrics.errors.with_label_values(&["publish"]).inc();
                    tracing::error!(error = %e, decisions = decisions.len(), "sending decisions failed; retrying");
                    unsent = Some((decisions, closed_end));
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Pushes records through the engine; a failure (a UDF call on the arriving rows, or a
    /// window evaluation) is logged and counted.
    async fn push(&mut self, batch: &[schemas::GatewayRecord]) {
        if let Err(e) = self.engine.push_records(batch).await {
            self.metrics.errors.with_label_values(&["engine"]).inc();
            tracing::error!(error = %e, records = batch.len(), "the engine failed on pushed records");
        }
    }

    /// The wall clock's turn: close windows the quiet moved past, forget idle clusters, let
    /// policies expire, and retry a snapshot the publisher refused (unless a newer one
    /// replaced it).
    async fn on_tick<P: PolicyPublisher>(&mut self, publisher: &mut P) {
        let lagged = wall_ms() - self.config.idle_lag_ms;
        if let Err(e) = self.engine.advance_watermark(lagged).await {
            self.metrics.errors.with_label_values(&["engine"]).inc();
            tracing::error!(error = %e, "window evaluation failed");
        }
        self.prune();
        // Templates assigned while the shared cluster index was down go to it once it answers
        // (also on the next new template the index assigns); tried every 30 s at most.
        if self
            .last_index_sync
            .is_none_or(|t| t.elapsed() >= INDEX_SYNC_EVERY)
        {
            self.last_index_sync = Some(std::time::Instant::now());
            let handed = udfs::sql::sync_shared_index();
            if handed > 0 {
                tracing::info!(
                    templates = handed,
                    "handed the shared cluster index the templates assigned while it was down"
                );
            }
            if handed == udfs::clusterer::SYNC_BATCH {
                // A backlog and the index answers: go on at the next tick, a batch at a time.
                self.last_index_sync = None;
            }
        }
        let mut step = lock(&self.decider).expire(wall_ms());
        if step.snapshot.is_none() {
            step.snapshot = self.pending.take();
        }
        let _ = self.publish(step, publisher).await;
    }

    /// Forgets clusters idle for 10 minutes, and their metric labels.
    fn prune(&mut self) {
        let gone = lock(&self.decider).prune(wall_ms(), 600_000);
        for id in gone {
            for p in PHASES {
                let _ = self.metrics.phase.remove_label_values(&[id.as_str(), p]);
            }
            let _ = self.metrics.severity.remove_label_values(&[id.as_str()]);
            let _ = self.metrics.size.remove_label_values(&[id.as_str()]);
        }
    }

    fn command(&mut self, command: Command) -> Step {
        let now = wall_ms();
        let mut d = lock(&self.decider);
        match command {
            Command::Benign { cluster_id, benign } => d.set_benign(&cluster_id, benign, now),
            Command::Mode { policy_id, mode } => d.set_mode(&policy_id, mode, now),
            Command::GlobalShadow(on) => d.set_global_shadow(on, now),
            Command::Force(p) => d.force(*p, now),
        }
    }

    /// Reads the decisions of the windows that closed and feeds them to the decider.
    fn decide(&mut self) -> Step {
        match self.take_decisions() {
            None => Step::default(),
            Some((decisions, closed)) => {
                lock(&self.decider).on_decisions(decisions, closed, wall_ms())
            }
        }
    }

    /// The decisions of the windows that closed since the last call, and the end of the
    /// newest closed decision window; `None` when nothing closed.
    fn take_decisions(&mut self) -> Option<(Vec<Decision>, Option<i64>)> {
        let stats = self.engine.stats();
        let rows = &self.metrics.engine_rows;
        rows.with_label_values(&["in"])
            .inc_by(stats.rows_in - self.last_engine.rows_in);
        rows.with_label_values(&["late"])
            .inc_by(stats.late_rows - self.last_engine.late_rows);
        rows.with_label_values(&["out"])
            .inc_by(stats.rows_out - self.last_engine.rows_out);
        self.last_engine = stats;
        // Late rows were counted and logged by the engine; the job has no use for them.
        drop(self.engine.take_late_rows());

        let outputs =
            std::mem::take(&mut *self.outputs.lock().unwrap_or_else(PoisonError::into_inner));
        // Quiet verdicts are for decision windows that closed without a row for a cluster,
        // not for the watermark, which moves between window ends.
        let closed = self.engine.closed_window_end(decision::SINK);
        if outputs.is_empty() && closed.is_none() {
            return None;
        }
        let mut decisions = Vec::new();
        for o in &outputs {
            for d in decision::read(o) {
                match d {
                    Ok(d) => decisions.push(d),
                    Err(e) => {
                        self.metrics.errors.with_label_values(&["decision"]).inc();
                        tracing::warn!(error = %e, "decision row skipped");
                    }
                }
            }
        }
        Some((decisions, closed))
    }

    /// Publishes a step's snapshot, if any; returns the version in force.
    async fn publish<P: PolicyPublisher>(
        &mut self,
        step: Step,
        publisher: &mut P,
    ) -> Result<u64, String> {
        for r in &step.refused {
            tracing::warn!(reason = %r, "policy refused");
        }
        let result = match &step.snapshot {
            None => Ok(lock(&self.decider).version()),
            Some(snapshot) => match publisher.publish(snapshot).await {
                Ok(()) => {
                    self.pending = None;
                    self.metrics.published.with_label_values(&["ok"]).inc();
                    lock(&self.decider).on_published(snapshot, wall_ms());
                    log_snapshot(snapshot);
                    Ok(snapshot.version())
                }
                Err(e) if publisher.is_standby() => {
                    // Another replica leads: this one keeps the newest snapshot and publishes
                    // it the moment it takes over (the retry on every tick campaigns).
                    self.metrics.published.with_label_values(&["standby"]).inc();
                    tracing::debug!(error = %e, version = snapshot.version(), "standby: another replica publishes");
                    self.pending = Some(snapshot.clone());
                    Err(e.to_string())
                }
                Err(e) => {
                    self.metrics.published.with_label_values(&["error"]).inc();
                    self.metrics.errors.with_label_values(&["publish"]).inc();
                    tracing::error!(error = %e, version = snapshot.version(), "publishing the snapshot failed; retrying");
                    self.pending = Some(snapshot.clone());
                    Err(e.to_string())
                }
            },
        };
        self.refresh_metrics();
        result
    }

    fn refresh_metrics(&self) {
        let d = lock(&self.decider);
        let s = d.stats();
        let m = &self.metrics;
        for (label, value) in [
            ("issued", s.issued),
            ("escalated", s.escalated),
            ("renewed", s.renewed),
            ("withdrawn", s.withdrawn),
            ("left_armed", s.left_armed),
            ("expired", s.expired),
            ("refused", s.refused),
        ] {
            let c = m.changes.with_label_values(&[label]);
            c.inc_by(value.saturating_sub(c.get()));
        }
        m.version
            .set(i64::try_from(d.version()).unwrap_or(i64::MAX));
        for (id, t) in d.clusters() {
            let phase = t.lifecycle.phase().as_str();
            for p in PHASES {
                m.phase
                    .with_label_values(&[id.as_str(), p])
                    .set(i64::from(*p == phase));
            }
            m.severity
                .with_label_values(&[id.as_str()])
                .set((t.lifecycle.severity() * 1000.0).round() as i64);
            m.size.with_label_values(&[id.as_str()]).set(
                t.last
                    .as_ref()
                    .map_or(0, |d| i64::try_from(d.errors).unwrap_or(i64::MAX)),
            );
        }
    }
}

/// How often the tick hands the shared cluster index what was assigned while it was down.
const INDEX_SYNC_EVERY: Duration = Duration::from_secs(30);

const PHASES: &[&str] = &[
    "MONITORING",
    "EVALUATING",
    "TRIGGERED",
    "POLICY_GENERATED",
    "POLICY_APPLIED",
    "ACTIVE",
    "ESCALATING",
    "RECOVERING",
    "EXPIRED",
];

fn log_snapshot(s: &PolicySnapshot) {
    let policies: Vec<String> = s
        .policies()
        .iter()
        .map(|p| {
            let slice = serde_json::to_string(&p.slice).unwrap_or_default();
            let action = serde_json::to_string(&p.action).unwrap_or_default();
            format!("{} {action} on {slice}", p.id)
        })
        .collect();
    tracing::info!(
        version = s.version(),
        ?policies,
        "policy snapshot published"
    );
}

/// Why the job could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The SQL did not load.
    #[error(transparent)]
    Sql(#[from] EngineError),
    /// The SQL has no `INSERT INTO cluster_decisions`.
    #[error(
        "the SQL has no INSERT INTO cluster_decisions: the job reads its decisions from that sink"
    )]
    NoDecisions,
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(prometheus::Error),
}
