//! Distributed mode's store: PostgreSQL + pgvector.
//!
//! * **Schema** — versioned migrations in `pipeline/migrations/` (refinery, embedded at
//!   compile time), applied on the first connection under an advisory lock so replicas
//!   starting together do not race. Tables: `clusters`, `templates`, `vectors`,
//!   `error_events`, `cluster_members`, `policies`, `metrics`; `vector(384)` columns with
//!   HNSW indexes (cosine).
//! * **Shared cluster index** — [`PgStore::assign`] decides a new template's cluster for
//!   every replica: under a transaction-scoped advisory lock it returns the stored cluster of
//!   the template if a replica already assigned it, else applies the local store's rules
//!   ([`udfs::shared::pick_cluster`]) to the same-evidence cluster and the nearest centroids
//!   (`<=>` through the HNSW index), else founds `c<template id>`. The lock makes the
//!   decisions a sequence every replica sees, so two replicas racing on one template get
//!   one cluster. [`index::PgClusterIndex`] gives the sync SQL functions access to it.
//! * **Restore** — [`PgStore::restore`] returns every template with its vector and cluster;
//!   a restarted pipeline assigns them without embedding.
//! * **Events and retention** — [`events`] writes the error events the job reads;
//!   [`run_retention`] deletes those older than the configured age. [`policies`] records
//!   every published policy and when it stopped being in force.
//! * **Similar clusters** — [`PgStore::similar`] ranks clusters by cosine distance to a
//!   vector (the API's `GET /api/v1/clusters/similar`).
//!
//! Fail safe: nothing here is fatal. A failed call is logged (at most every few seconds),
//! counted in `pipeline_postgres_requests_total{op,result}`, and the caller carries on: the
//! clusterer assigns locally, events are dropped and counted, retention tries again later.
//! A closed connection is replaced on the next call.

pub mod events;
pub mod index;
pub mod policies;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgvector::Vector;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls, Transaction};
use tokio_util::sync::CancellationToken;
use udfs::cluster::ClusterConfig;
use udfs::evidence::{Evidence, FailureMode};
use udfs::shared::{Candidate, NewTemplate, SharedTemplate, founded_cluster_id, pick_cluster};

/// Vector length of the `vector(384)` columns (multilingual-e5-small; the n-gram fallback
/// is built with the same length).
pub const DIMS: usize = 384;

/// Least time between two log lines about failed calls.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// First key of the advisory locks (the second is the schema's hash): "LAG".
const LOCK_CLASS: i32 = 0x004c_4147;
/// Second key space offsets: migrations and cluster assignment take different locks.
const MIGRATION_LOCK: &str =
    "SELECT pg_advisory_lock($1, hashtext('migrations:' || current_schema()))";
const MIGRATION_UNLOCK: &str =
    "SELECT pg_advisory_unlock($1, hashtext('migrations:' || current_schema()))";
const ASSIGN_LOCK: &str =
    "SELECT pg_advisory_xact_lock($1, hashtext('assign:' || current_schema()))";

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The stored cluster of a template.
pub const TEMPLATE_CLUSTER_SQL: &str = "SELECT cluster_id FROM templates WHERE template_id = $1";

/// The oldest cluster with this dependency and failure mode (the evidence shortcut).
pub const SAME_EVIDENCE_SQL: &str = "SELECT cluster_id FROM clusters \
     WHERE dependency = $1 AND failure_mode = $2 \
     ORDER BY create_time, cluster_id LIMIT 1";

/// The `$2` clusters nearest to vector `$1` by cosine distance (HNSW index).
pub const NEAREST_SQL: &str = "SELECT cluster_id, dependency, failure_mode, \
     (centroid_vector <=> $1)::real AS distance \
     FROM clusters ORDER BY centroid_vector <=> $1 LIMIT $2";

/// Clusters similar to vector `$1`, with what an operator needs to recognise them.
pub const SIMILAR_SQL: &str = "SELECT cluster_id, (centroid_vector <=> $1)::real AS distance, \
     template_count, error_count, dependency, failure_mode, description \
     FROM clusters ORDER BY centroid_vector <=> $1 LIMIT $2";

const INSERT_CLUSTER_SQL: &str = "INSERT INTO clusters \
     (cluster_id, centroid_vector, dependency, failure_mode, description) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cluster_id) DO NOTHING";

const INSERT_TEMPLATE_SQL: &str = "INSERT INTO templates \
     (template_id, template, cluster_id, dependency, failure_mode) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (template_id) DO NOTHING";

const INSERT_VECTOR_SQL: &str = "INSERT INTO vectors (vector_id, vector_data) VALUES ($1, $2) \
     ON CONFLICT (vector_id) DO NOTHING";

/// Centroid = unit-length mean of the members' vectors (each template counts once, so the
/// centroid does not depend on which replica saw how many events); evidence = the members'
/// most common dependency and mode.
const REFRESH_CLUSTER_SQL: &str = "UPDATE clusters c SET \
     centroid_vector = l2_normalize(s.mean), template_count = s.n, \
     dependency = (SELECT t.dependency FROM templates t \
         WHERE t.cluster_id = $1 AND t.dependency IS NOT NULL \
         GROUP BY t.dependency ORDER BY count(*) DESC, t.dependency LIMIT 1), \
     failure_mode = (SELECT t.failure_mode FROM templates t \
         WHERE t.cluster_id = $1 AND t.failure_mode IS NOT NULL \
         GROUP BY t.failure_mode ORDER BY count(*) DESC, t.failure_mode LIMIT 1), \
     update_time = now() \
     FROM (SELECT avg(v.vector_data) AS mean, count(*)::int AS n \
         FROM templates t JOIN vectors v ON v.vector_id = t.template_id \
         WHERE t.cluster_id = $1) s \
     WHERE c.cluster_id = $1 AND s.n > 0";

const TEMPLATES_SQL: &str = "SELECT t.template_id, t.template, t.cluster_id, v.vector_data, \
     t.dependency, t.failure_mode \
     FROM templates t JOIN vectors v ON v.vector_id = t.template_id";

/// Deletes error events older than `$1` seconds.
pub const RETENTION_SQL: &str =
    "DELETE FROM error_events WHERE \"timestamp\" < now() - make_interval(secs => $1)";

/// Where and how to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// Connection URL, `postgres://user:password@host:port/database`.
    pub url: String,
    /// Schema for the tables (created when missing, then first on the `search_path`, with
    /// `public` after it for the `vector` type). `None`: the server's default.
    pub schema: Option<String>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one call may take, and how long a SQL function waits for the shared index.
    pub request_timeout: Duration,
    /// How long restoring every template at start may take.
    pub restore_timeout: Duration,
    /// After a failed shared-index call, calls fail at once for this long (the job does not
    /// wait on a dead server for every new template).
    pub retry_after: Duration,
    /// Error events older than this are deleted.
    pub event_retention: Duration,
    /// How often retention runs.
    pub retention_every: Duration,
    /// Error events waiting to be written; more are dropped and counted.
    pub event_queue: usize,
}

impl PgSettings {
    /// Defaults for `url`: 3 s connect, 2 s calls, 30 s restore, 5 s back-off, events kept
    /// 24 h, retention every minute, 10,000 queued events.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
            restore_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
            event_retention: Duration::from_secs(24 * 3600),
            retention_every: Duration::from_secs(60),
            event_queue: 10_000,
        }
    }

    /// Checks the settings; the connection config they make.
    pub fn validate(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| PgError::Config(format!("{}: {e}", redact(&self.url))))?;
        if let Some(schema) = &self.schema
            && !is_identifier(schema)
        {
            return Err(PgError::Config(format!(
                "schema {schema:?} must be a lower-case identifier: [a-z_][a-z0-9_]*, at most 63 bytes"
            )));
        }
        for (name, d) in [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
            ("restore timeout", self.restore_timeout),
            ("event retention", self.event_retention),
            ("retention interval", self.retention_every),
        ] {
            if d.is_zero() {
                return Err(PgError::Config(format!("{name} must be above zero")));
            }
        }
        if self.event_queue == 0 {
            return Err(PgError::Config(
                "event queue must hold at least one event".into(),
            ));
        }
        config.connect_timeout(self.connect_timeout);
        // Operators find the pipeline's sessions by name, unless the URL names them.
        if config.get_application_name().is_none() {
            config.application_name("lag-pipeline");
        }
        Ok(config)
    }

    /// The URL without its password, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A schema name safe to put in SQL unquoted.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The settings are unusable.
    #[error("postgres settings: {0}")]
    Config(String),
    /// Connecting failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// Applying the migrations failed.
    #[error("applying migrations: {0}")]
    Migrate(String),
    /// A statement failed.
    #[error("{op}: {}", describe(source))]
    Query {
        /// The operation (`assign`, `lookup`, ...).
        op: &'static str,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// A call took longer than the request timeout.
    #[error("{op}: no answer within {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// A value did not fit the schema.
    #[error("{0}")]
    Invalid(String),
    /// The store's worker is gone.
    #[error("the postgres worker has stopped")]
    Closed,
}

/// The server's own message and SQLSTATE when there is one (tokio-postgres says only
/// "db error" otherwise).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Whether an error means the session is gone: the connection closed, or the server said
/// so (SQLSTATE class 08, connection exception; class 57, operator intervention such as
/// `pg_terminate_backend` or a shutdown).
fn session_ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"))
}

/// The adapter's metrics.
#[derive(Debug, Clone)]
pub struct PgMetrics {
    /// `pipeline_postgres_requests_total{op,result}`: result ok, error or timeout.
    pub requests: IntCounterVec,
    /// `pipeline_postgres_events_written_total`.
    pub events_written: IntCounter,
    /// `pipeline_postgres_events_dropped_total`: the queue was full or the write failed.
    pub events_dropped: IntCounter,
    /// `pipeline_postgres_events_deleted_total`: removed by retention.
    pub events_deleted: IntCounter,
}

impl PgMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "pipeline_postgres_requests_total",
                    "Calls to PostgreSQL by operation and result (ok, error, timeout).",
                ),
                &["op", "result"],
            )?,
            events_written: IntCounter::new(
                "pipeline_postgres_events_written_total",
                "Error events written to PostgreSQL.",
            )?,
            events_dropped: IntCounter::new(
                "pipeline_postgres_events_dropped_total",
                "Error events not written (queue full or write failed).",
            )?,
            events_deleted: IntCounter::new(
                "pipeline_postgres_events_deleted_total",
                "Error events deleted by retention.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.events_written.clone()))?;
        registry.register(Box::new(m.events_dropped.clone()))?;
        registry.register(Box::new(m.events_deleted.clone()))?;
        Ok(m)
    }
}

/// One answer to "clusters similar to this message".
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimilarCluster {
    /// Cluster id.
    pub cluster_id: String,
    /// Cosine distance of the message to the cluster's centroid (0 = same direction).
    pub distance: f32,
    /// Templates in the cluster.
    pub template_count: i32,
    /// Error events counted for it.
    pub error_count: i64,
    /// Its majority dependency.
    pub dependency: Option<String>,
    /// Its majority failure mode.
    pub failure_mode: Option<String>,
    /// Its founding template.
    pub description: String,
}

/// A connection to PostgreSQL, made on first use and replaced when it closes; the schema
/// migrated once per process.
pub struct PgStore {
    settings: PgSettings,
    config: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
    migrated: std::sync::atomic::AtomicBool,
    metrics: PgMetrics,
    last_log: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.settings.redacted_url())
            .field("schema", &self.settings.schema)
            .finish_non_exhaustive()
    }
}

/// The template id as stored (BIGINT): the u64 bit-cast.
pub fn to_db_id(id: u64) -> i64 {
    id as i64
}

/// The template id from its stored BIGINT.
pub fn from_db_id(id: i64) -> u64 {
    id as u64
}

/// Evidence from the stored columns; an unknown mode name reads as unknown.
pub fn evidence_from_columns(dependency: Option<String>, mode: Option<&str>) -> Evidence {
    Evidence {
        dependency,
        mode: mode.and_then(FailureMode::parse),
    }
}

/// A vector that fits `vector(384)`: the right length, every component finite.
pub fn db_vector(v: &[f32]) -> Result<Vector, PgError> {
    if v.len() != DIMS {
        return Err(PgError::Invalid(format!(
            "the shared index stores {DIMS}-dimension vectors; this embedder gives {}",
            v.len()
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(PgError::Invalid("vector has a non-finite component".into()));
    }
    Ok(Vector::from(v.to_vec()))
}

fn query(op: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |source| PgError::Query { op, source }
}

impl PgStore {
    /// A store for `settings` (checked here); connects on first use.
    pub fn new(settings: PgSettings, metrics: PgMetrics) -> Result<Self, PgError> {
        let config = settings.validate()?;
        Ok(Self {
            settings,
            config,
            client: Mutex::new(None),
            migrated: std::sync::atomic::AtomicBool::new(false),
            metrics,
            last_log: std::sync::Mutex::new(None),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// The metrics.
    pub fn metrics(&self) -> &PgMetrics {
        &self.metrics
    }

    /// Connects (if not connected) and applies the migrations (once per process); returns
    /// the migrations applied now.
    pub async fn ready(&self) -> Result<Vec<String>, PgError> {
        let mut guard = self.client.lock().await;
        self.connected(&mut guard).await.map(|(_, applied)| applied)
    }

    async fn connected<'g>(
        &self,
        guard: &'g mut MutexGuard<'_, Option<Client>>,
    ) -> Result<(&'g mut Client, Vec<String>), PgError> {
        if guard.as_ref().is_some_and(Client::is_closed) {
            **guard = None;
        }
        let mut applied = Vec::new();
        if guard.is_none() {
            let mut client = self.connect().await?;
            if !self.migrated.load(std::sync::atomic::Ordering::Acquire) {
                applied = self.migrate(&mut client).await?;
                self.migrated
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            **guard = Some(client);
        }
        match guard.as_mut() {
            Some(c) => Ok((c, applied)),
            None => Err(PgError::Closed),
        }
    }

    async fn connect(&self) -> Result<Client, PgError> {
        let url = self.settings.redacted_url();
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| PgError::Connect {
                    url: url.clone(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(url = %url, error = %e, "postgres connection closed");
            }
        });
        if let Some(schema) = &self.settings.schema {
            // `schema` is a checked identifier (validate), so it is safe unquoted.
            let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            if let Err(e) = client.batch_execute(&create).await {
                // Two replicas creating it at once: one of them gets a unique violation
                // (IF NOT EXISTS is not atomic in PostgreSQL); by now it exists.
                if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    return Err(query("create schema")(e));
                }
            }
            client
                .batch_execute(&format!("SET search_path TO {schema}, public"))
                .await
                .map_err(query("set schema"))?;
        }
        Ok(client)
    }

    async fn migrate(&self, client: &mut Client) -> Result<Vec<String>, PgError> {
        client
            .execute(MIGRATION_LOCK, &[&LOCK_CLASS])
            .await
            .map_err(query("migration lock"))?;
        let report = embedded::migrations::runner()
            .set_grouped(false)
            .run_async(client)
            .await;
        let unlocked = client.execute(MIGRATION_UNLOCK, &[&LOCK_CLASS]).await;
        let report = report.map_err(|e| PgError::Migrate(e.to_string()))?;
        unlocked.map_err(query("migration unlock"))?;
        let applied: Vec<String> = report
            .applied_migrations()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !applied.is_empty() {
            tracing::info!(?applied, schema = ?self.settings.schema, "postgres migrations applied");
        }
        Ok(applied)
    }

    /// Runs `op` on the connection under the request timeout; counts and logs the result.
    async fn call<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        let outcome = tokio::time::timeout(timeout, async {
            let mut guard = self.client.lock().await;
            let (client, _) = self.connected(&mut guard).await?;
            let r = f(client).await;
            // The server ended the session (restart, failover, terminate): the next call
            // connects anew, even before the connection task has noticed.
            let closed = matches!(&r, Err(PgError::Query { source, .. }) if session_ended(source));
            if closed || client.is_closed() {
                *guard = None;
            }
            r
        })
        .await
        .unwrap_or(Err(PgError::Timeout { op, timeout }));
        let result = match &outcome {
            Ok(_) => "ok",
            Err(PgError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        self.metrics.requests.with_label_values(&[op, result]).inc();
        if let Err(e) = &outcome {
            self.log_failure(op, e);
        }
        outcome
    }

    fn log_failure(&self, op: &str, e: &PgError) {
        let mut last = self
            .last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(op, error = %e, "postgres call failed; carrying on without it");
        }
    }

    /// The stored assignment of a template.
    pub async fn lookup(&self, template_id: u64) -> Result<Option<SharedTemplate>, PgError> {
        let sql = format!("{TEMPLATES_SQL} WHERE t.template_id = $1");
        self.call("lookup", self.settings.request_timeout, async |c| {
            let row = c
                .query_opt(&sql, &[&to_db_id(template_id)])
                .await
                .map_err(query("lookup"))?;
            row.map(|r| template_from_row(&r)).transpose()
        })
        .await
    }

    /// Every stored template, ordered by id.
    pub async fn restore(&self) -> Result<Vec<SharedTemplate>, PgError> {
        let sql = format!("{TEMPLATES_SQL} ORDER BY t.template_id");
        self.call("restore", self.settings.restore_timeout, async |c| {
            let rows = c.query(&sql, &[]).await.map_err(query("restore"))?;
            rows.iter().map(template_from_row).collect()
        })
        .await
    }

    /// Assigns a new template for every replica (see the module docs); returns its cluster.
    pub async fn assign(
        &self,
        template: &NewTemplate<'_>,
        config: &ClusterConfig,
    ) -> Result<String, PgError> {
        let vector = db_vector(template.vector)?;
        self.call("assign", self.settings.request_timeout, async |c| {
            let tx = c.transaction().await.map_err(query("assign"))?;
            let id = assign_in(&tx, template, &vector, config).await?;
            tx.commit().await.map_err(query("assign commit"))?;
            Ok(id)
        })
        .await
    }

    /// The `k` clusters nearest to `vector`, nearest first.
    pub async fn similar(&self, vector: &[f32], k: usize) -> Result<Vec<SimilarCluster>, PgError> {
        let vector = db_vector(vector)?;
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        self.call("similar", self.settings.request_timeout, async |c| {
            let rows = c
                .query(SIMILAR_SQL, &[&vector, &k])
                .await
                .map_err(query("similar"))?;
            rows.iter()
                .map(|r| {
                    Ok(SimilarCluster {
                        cluster_id: r.try_get(0).map_err(query("similar"))?,
                        distance: r.try_get(1).map_err(query("similar"))?,
                        template_count: r.try_get(2).map_err(query("similar"))?,
                        error_count: r.try_get(3).map_err(query("similar"))?,
                        dependency: r.try_get(4).map_err(query("similar"))?,
                        failure_mode: r.try_get(5).map_err(query("similar"))?,
                        description: r.try_get(6).map_err(query("similar"))?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Deletes error events older than `age`; returns how many.
    pub async fn delete_events_older_than(&self, age: Duration) -> Result<u64, PgError> {
        let secs = age.as_secs_f64();
        let deleted = self
            .call("retention", self.settings.request_timeout * 5, async |c| {
                c.execute(RETENTION_SQL, &[&secs])
                    .await
                    .map_err(query("retention"))
            })
            .await?;
        self.metrics.events_deleted.inc_by(deleted);
        Ok(deleted)
    }
}

/// The decision of [`PgStore::assign`], inside its transaction.
async fn assign_in(
    tx: &Transaction<'_>,
    t: &NewTemplate<'_>,
    vector: &Vector,
    config: &ClusterConfig,
) -> Result<String, PgError> {
    let q = query("assign");
    // Every assignment in this schema happens in turn; the lock ends with the transaction.
    tx.execute(ASSIGN_LOCK, &[&LOCK_CLASS]).await.map_err(&q)?;
    let id = to_db_id(t.template_id);
    if let Some(row) = tx
        .query_opt(TEMPLATE_CLUSTER_SQL, &[&id])
        .await
        .map_err(&q)?
    {
        return row.try_get(0).map_err(q);
    }
    let dependency = t.evidence.dependency.as_deref();
    let mode = t.evidence.mode.map(FailureMode::as_str);
    let same_evidence: Option<String> = match (dependency, mode) {
        (Some(d), Some(m)) => match tx
            .query_opt(SAME_EVIDENCE_SQL, &[&d, &m])
            .await
            .map_err(&q)?
        {
            Some(row) => Some(row.try_get(0).map_err(&q)?),
            None => None,
        },
        _ => None,
    };
    let k = i64::try_from(config.candidates.max(1)).unwrap_or(16);
    let rows = tx.query(NEAREST_SQL, &[vector, &k]).await.map_err(&q)?;
    let mut nearest = Vec::with_capacity(rows.len());
    for r in &rows {
        let distance: f32 = r.try_get(3).map_err(&q)?;
        let mode: Option<String> = r.try_get(2).map_err(&q)?;
        nearest.push(Candidate {
            cluster_id: r.try_get(0).map_err(&q)?,
            cosine: 1.0 - distance,
            evidence: evidence_from_columns(r.try_get(1).map_err(&q)?, mode.as_deref()),
        });
    }
    let cluster = pick_cluster(t.evidence, same_evidence.as_deref(), &nearest, config)
        .unwrap_or_else(|| founded_cluster_id(t.template_id));
    tx.execute(
        INSERT_CLUSTER_SQL,
        &[&cluster, vector, &dependency, &mode, &t.template],
    )
    .await
    .map_err(&q)?;
    tx.execute(
        INSERT_TEMPLATE_SQL,
        &[&id, &t.template, &cluster, &dependency, &mode],
    )
    .await
    .map_err(&q)?;
    tx.execute(INSERT_VECTOR_SQL, &[&id, vector])
        .await
        .map_err(&q)?;
    tx.execute(REFRESH_CLUSTER_SQL, &[&cluster])
        .await
        .map_err(&q)?;
    Ok(cluster)
}

fn template_from_row(r: &tokio_postgres::Row) -> Result<SharedTemplate, PgError> {
    let q = query("read template");
    let vector: Vector = r.try_get(3).map_err(&q)?;
    let mode: Option<String> = r.try_get(5).map_err(&q)?;
    Ok(SharedTemplate {
        template_id: from_db_id(r.try_get(0).map_err(&q)?),
        template: r.try_get(1).map_err(&q)?,
        cluster_id: r.try_get(2).map_err(&q)?,
        vector: vector.to_vec(),
        evidence: evidence_from_columns(r.try_get(4).map_err(&q)?, mode.as_deref()),
    })
}

/// Distributed mode's start: registers the metrics, starts the shared cluster index and
/// attaches it to the SQL functions' clusterer (install the embedder first), restoring the
/// templates every replica assigned so far. Returns the store for the API, the event
/// writer and retention. PostgreSQL being down is not an error here: the index retries on
/// later calls, and the clusterer assigns locally meanwhile.
pub fn install(settings: PgSettings, registry: &Registry) -> Result<Arc<PgStore>, PgError> {
    let metrics =
        PgMetrics::register(registry).map_err(|e| PgError::Config(format!("metrics: {e}")))?;
    let index = index::PgClusterIndex::start(PgStore::new(settings.clone(), metrics.clone())?)?;
    let url = settings.redacted_url();
    match udfs::sql::install_shared_index(Box::new(index)) {
        Ok(n) => {
            tracing::info!(url = %url, schema = ?settings.schema, restored = n, "shared cluster index attached")
        }
        Err(e) => {
            tracing::error!(url = %url, error = %e, "shared cluster index not restored; assigning locally until it answers")
        }
    }
    Ok(Arc::new(PgStore::new(settings, metrics)?))
}

/// Starts this process's background writers on `store` — error events, published
/// policies, retention — each ending with `shutdown`; returns the queues the job's source
/// and publisher feed ([`events::PgTeeSource`], [`policies::PgPolicyPublisher`]).
pub fn start_writers(
    store: &Arc<PgStore>,
    shutdown: &CancellationToken,
) -> (
    tokio::sync::mpsc::Sender<schemas::ErrorEvent>,
    tokio::sync::mpsc::Sender<schemas::PolicySnapshot>,
) {
    let (events_tx, events_rx) = events::event_queue(store);
    tokio::spawn(events::run_writer(
        Arc::clone(store),
        events_rx,
        shutdown.child_token(),
    ));
    let (policies_tx, policies_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(policies::run_writer(
        Arc::clone(store),
        policies_rx,
        shutdown.child_token(),
    ));
    tokio::spawn(run_retention(Arc::clone(store), shutdown.child_token()));
    (events_tx, policies_tx)
}

/// Deletes old error events every `retention_every` until `shutdown`.
pub async fn run_retention(store: Arc<PgStore>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(store.settings.retention_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(n) = store
            .delete_events_older_than(store.settings.event_retention)
            .await
            && n > 0
        {
            tracing::info!(deleted = n, "old error events deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = PgSettings::new("postgres://lag:lag@127.0.0.1:15432/lag");
        assert!(ok.validate().is_ok());
        let mut s = ok.clone();
        s.schema = Some("lag_test_1".into());
        assert!(s.validate().is_ok());
        for bad in ["Lag", "1abc", "a-b", "a;drop table x", "", &"a".repeat(64)] {
            s.schema = Some(bad.into());
            assert!(
                matches!(s.validate(), Err(PgError::Config(_))),
                "{bad:?} accepted"
            );
        }
        let mut s = ok.clone();
        s.event_retention = Duration::ZERO;
        assert!(s.validate().is_err());
        let s = PgSettings::new("postgres://lag:secret@host:1/db?bogus=1");
        let e = s.validate().map(|_| ()).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://lag:s3cr@t@127.0.0.1:15432/lag"),
            "postgres://lag:***@127.0.0.1:15432/lag"
        );
        assert_eq!(redact("postgres://lag@h/db"), "postgres://lag@h/db");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
    }

    #[test]
    fn rows_map_back_to_ids_and_evidence() {
        for id in [0u64, 1, u64::MAX, 1 << 63, 0xdead_beef] {
            assert_eq!(from_db_id(to_db_id(id)), id);
        }
        assert!(to_db_id(u64::MAX) < 0, "the high bit becomes the sign");
        let e = evidence_from_columns(Some("redis".into()), Some("refused"));
        assert_eq!(e.dependency.as_deref(), Some("redis"));
        assert_eq!(e.mode, Some(FailureMode::Refused));
        assert_eq!(evidence_from_columns(None, Some("nonsense")).mode, None);
    }

    #[test]
    fn vectors_must_fit_the_column() {
        assert!(db_vector(&vec![0.1; DIMS]).is_ok());
        assert!(matches!(db_vector(&[0.1; 3]), Err(PgError::Invalid(_))));
        let mut v = vec![0.1; DIMS];
        v[7] = f32::NAN;
        assert!(db_vector(&v).is_err());
    }

    #[test]
    fn nearest_queries_order_by_the_indexed_operator() {
        // pgvector uses the HNSW index only for ORDER BY <column> <=> <value> LIMIT n.
        for sql in [NEAREST_SQL, SIMILAR_SQL] {
            assert!(
                sql.contains("ORDER BY centroid_vector <=> $1 LIMIT $2"),
                "{sql}"
            );
        }
        let migration = include_str!("../../migrations/V1__initial_schema.sql");
        assert!(migration.contains("USING hnsw (centroid_vector vector_cosine_ops)"));
        assert!(migration.contains("centroid_vector vector(384)"));
    }
}
