//! `pipeline submit --arroyo URL`: the same job, posted to an Arroyo cluster.
//!
//! The request is Arroyo's `PipelinePost` (`POST /api/v1/pipelines`, published in Arroyo's
//! OpenAPI spec): a name, the query, the UDFs, a parallelism and a checkpoint interval.
//!
//! - **The query** is the job's SQL with its tables rewritten for Arroyo's Kafka connector: a
//!   source reads the JSON records the enforcer writes (their event time is the wire field
//!   `timestamp_ms` / `second_ms`, turned into `ts` by a generated column the watermark is on;
//!   object-valued fields such as `dimensions` are Arroyo `JSON` columns); the decisions sink
//!   writes to the `policies` topic, the other sinks to the topics the SQL names. The `INSERT`
//!   statements are the SQL's own, re-printed from the parsed statements.
//! - **The UDFs** are the wrapper crates under `arroyo-udfs/`, one definition each, with their
//!   dependency header (`udfs` as a git dependency: it is not on crates.io).
//!
//! A query that calls one of our functions without an Arroyo wrapper (`learn_slice`: it takes
//! lists and returns a struct, which Arroyo's `#[udf]` cannot express) is refused, skipped or
//! kept, as [`Unsupported`] says.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
use serde::{Deserialize, Serialize};

use crate::engine::convert::{ERROR_EVENTS, ROUTE_COUNTS, TRAFFIC_SAMPLES};
use crate::engine::{EngineError, JobSpec, QuerySpec, TableKind, TableSpec};

/// One Arroyo wrapper: the SQL function it defines and its crate's `src/lib.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrapper {
    /// The SQL function name, as [`crate::udf`] registers it.
    pub name: &'static str,
    /// The definition posted to Arroyo, dependency header included.
    pub source: &'static str,
}

/// The wrappers: the text functions in the order of [`crate::udf::NAMES`], then the slice
/// learner's `request_row`. `learn_slice` has none: it takes lists and returns a struct, and
/// Arroyo's `#[udf]` takes and returns scalars (a `Vec` argument makes an aggregate).
pub const WRAPPERS: [Wrapper; 6] = [
    Wrapper {
        name: "mask_pii",
        source: include_str!("../../arroyo-udfs/mask_pii/src/lib.rs"),
    },
    Wrapper {
        name: "template_id",
        source: include_str!("../../arroyo-udfs/template_id/src/lib.rs"),
    },
    Wrapper {
        name: "template",
        source: include_str!("../../arroyo-udfs/template/src/lib.rs"),
    },
    Wrapper {
        name: "cluster_of",
        source: include_str!("../../arroyo-udfs/cluster_of/src/lib.rs"),
    },
    Wrapper {
        name: "embedding",
        source: include_str!("../../arroyo-udfs/embedding/src/lib.rs"),
    },
    Wrapper {
        name: "request_row",
        source: include_str!("../../arroyo-udfs/request_row/src/lib.rs"),
    },
];

/// Placeholder for the git URL of this repository in a wrapper's dependency header; Arroyo's
/// compiler fills `{{ NAME }}` from its environment when `--udfs-git` does not.
pub const UDFS_GIT_PLACEHOLDER: &str = "{{ LAG_UDFS_GIT }}";
/// Placeholder for the git revision in a wrapper's dependency header.
pub const UDFS_REV_PLACEHOLDER: &str = "{{ LAG_UDFS_REV }}";

/// Source columns whose wire value is a JSON object or array, not a scalar.
const JSON_COLUMNS: &[&str] = &["dimensions", "stack"];

/// What to do with a query that calls a function no Arroyo wrapper defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Unsupported {
    /// Refuse to build the request (the default).
    #[default]
    Fail,
    /// Leave the query (and tables only it used) out, and say so on stderr.
    Skip,
    /// Post it anyway; Arroyo's planner will reject it until the function exists there.
    Keep,
}

/// How to build the request.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// The pipeline's name in Arroyo.
    pub name: String,
    /// Kafka bootstrap servers the Arroyo workers reach.
    pub kafka_brokers: String,
    /// Topic the decisions sink writes (the policy applier reads it).
    pub policies_topic: String,
    /// Arroyo parallelism.
    pub parallelism: u64,
    /// Checkpoint interval.
    pub checkpoint_interval: Duration,
    /// Git URL of this repository for the wrappers' `udfs` dependency.
    pub udfs_git: Option<String>,
    /// Git revision for the wrappers' `udfs` dependency.
    pub udfs_rev: Option<String>,
    /// Queries that call functions without a wrapper.
    pub unsupported: Unsupported,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            name: "lag-incident".into(),
            kafka_brokers: "localhost:9092".into(),
            policies_topic: schemas::names::POLICIES_TOPIC.into(),
            parallelism: 1,
            checkpoint_interval: Duration::from_secs(10),
            udfs_git: None,
            udfs_rev: None,
            unsupported: Unsupported::Fail,
        }
    }
}

/// Arroyo's `Udf` (OpenAPI `components.schemas.Udf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdfPost {
    /// The Rust source with its dependency header.
    pub definition: String,
    /// Always `rust`.
    pub language: String,
}

/// Arroyo's `PipelinePost` (OpenAPI `components.schemas.PipelinePost`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelinePost {
    /// Pipeline name.
    pub name: String,
    /// The SQL: tables and `INSERT` statements.
    pub query: String,
    /// One entry per wrapper.
    pub udfs: Vec<UdfPost>,
    /// Arroyo parallelism.
    pub parallelism: u64,
    /// Checkpoint interval, microseconds.
    pub checkpoint_interval_micros: u64,
}

/// Why a request could not be built or was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The job's SQL does not load.
    #[error(transparent)]
    Sql(#[from] EngineError),
    /// A query calls functions that have no Arroyo wrapper.
    #[error(
        "{file}:{line}: INSERT INTO {sink} calls {functions}, which have no Arroyo UDF wrapper \
         (arroyo-udfs/); --unsupported skip leaves this query out, --unsupported keep posts it \
         for Arroyo to reject"
    )]
    Unsupported {
        /// The query's file.
        file: String,
        /// The query's line.
        line: u64,
        /// Its sink.
        sink: String,
        /// The functions, comma-separated.
        functions: String,
    },
    /// A source table has no known Kafka record shape.
    #[error("{table}: no Kafka record mapping for this source table ({reason})")]
    UnknownSource {
        /// The table.
        table: String,
        /// What is missing.
        reason: String,
    },
    /// Every query was skipped.
    #[error("no query left to submit")]
    Empty,
    /// The Arroyo API could not be reached.
    #[error("could not reach the Arroyo API at {url}: {reason}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The Arroyo API answered with an error status.
    #[error("Arroyo API {url} answered {status}: {message}")]
    Rejected {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// Its `error` field, or the body.
        message: String,
    },
    /// The Arroyo API answered 2xx with a body that is not a pipeline.
    #[error("Arroyo API {url} answered {status} without a pipeline id: {body}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The body (cut).
        body: String,
    },
}

/// What one query needs that Arroyo lacks.
fn missing_functions(q: &QuerySpec) -> BTreeSet<String> {
    struct Calls(BTreeSet<String>);
    impl Visitor for Calls {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = expr {
                self.0.insert(f.name.to_string().to_lowercase());
            }
            ControlFlow::Continue(())
        }
    }
    let mut calls = Calls(BTreeSet::new());
    let _ = q.query.visit(&mut calls);
    let ours: BTreeSet<&str> = crate::udf::NAMES
        .iter()
        .chain(crate::udf::SLICE_NAMES)
        .copied()
        .collect();
    let wrapped: BTreeSet<&str> = WRAPPERS.iter().map(|w| w.name).collect();
    calls
        .0
        .into_iter()
        .filter(|f| ours.contains(f.as_str()) && !wrapped.contains(f.as_str()))
        .collect()
}

/// The wire field holding a source's event time (Unix ms), by table.
fn wire_time_field(table: &str) -> Option<&'static str> {
    match table {
        ERROR_EVENTS | TRAFFIC_SAMPLES => Some("timestamp_ms"),
        ROUTE_COUNTS => Some("second_ms"),
        _ => None,
    }
}

/// The SQL type for a column the loader declared (the inverse of its type mapping).
fn sql_type(t: &DataType) -> Option<&'static str> {
    Some(match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT",
        DataType::UInt64 => "BIGINT UNSIGNED",
        DataType::Int64 => "BIGINT",
        DataType::UInt32 => "INT UNSIGNED",
        DataType::Int32 => "INT",
        DataType::Int16 => "SMALLINT",
        DataType::Float64 => "DOUBLE",
        DataType::Float32 => "REAL",
        DataType::Boolean => "BOOLEAN",
        DataType::Timestamp(_, _) => "TIMESTAMP",
        _ => return None,
    })
}

fn interval(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("INTERVAL '{}' SECOND", ms / 1000)
    } else {
        format!("INTERVAL '{ms}' MILLISECOND")
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn source_ddl(t: &TableSpec, brokers: &str) -> Result<String, SubmitError> {
    let Some(wire) = wire_time_field(&t.name) else {
        return Err(SubmitError::UnknownSource {
            table: t.name.clone(),
            reason: format!(
                "the enforcer writes {}",
                [ERROR_EVENTS, TRAFFIC_SAMPLES, ROUTE_COUNTS].join(", ")
            ),
        });
    };
    let event_time = t.event_time.as_ref();
    let ts = event_time.map_or("ts", |e| e.column.as_str());
    let mut cols = vec![format!("    {wire} BIGINT NOT NULL")];
    for f in t.schema.fields() {
        if f.name() == ts || f.name() == wire {
            continue;
        }
        let ty = if JSON_COLUMNS.contains(&f.name().as_str()) {
            "JSON"
        } else {
            sql_type(f.data_type()).ok_or_else(|| SubmitError::UnknownSource {
                table: t.name.clone(),
                reason: format!("column {} has type {}", f.name(), f.data_type()),
            })?
        };
        cols.push(format!("    {} {ty}", f.name()));
    }
    cols.push(format!(
        "    {ts} TIMESTAMP GENERATED ALWAYS AS (CAST(to_timestamp_millis({wire}) AS TIMESTAMP))"
    ));
    if let Some(e) = event_time {
        cols.push(format!(
            "    WATERMARK FOR {ts} AS {ts} - {}",
            interval(e.lateness_ms)
        ));
    }
    let topic = t
        .options
        .get("topic")
        .cloned()
        .unwrap_or_else(|| format!("{}{}", schemas::names::DEFAULT_TOPIC_PREFIX, t.name));
    Ok(format!(
        "CREATE TABLE {} (\n{}\n) WITH (\n    connector = 'kafka',\n    type = 'source',\n    \
         format = 'json',\n    topic = {},\n    bootstrap_servers = {}\n);\n",
        t.name,
        cols.join(",\n"),
        quote(&topic),
        quote(brokers)
    ))
}

fn sink_ddl(t: &TableSpec, opts: &SubmitOptions) -> String {
    let topic = if t.name == crate::decision::SINK {
        opts.policies_topic.clone()
    } else {
        t.options
            .get("topic")
            .cloned()
            .unwrap_or_else(|| format!("{}{}", schemas::names::DEFAULT_TOPIC_PREFIX, t.name))
    };
    format!(
        "CREATE TABLE {} WITH (\n    connector = 'kafka',\n    type = 'sink',\n    \
         format = 'json',\n    topic = {},\n    bootstrap_servers = {}\n);\n",
        t.name,
        quote(&topic),
        quote(&opts.kafka_brokers)
    )
}

/// The Arroyo SQL for `spec`, and the notes worth printing (skipped queries).
pub fn arroyo_sql(
    spec: &JobSpec,
    opts: &SubmitOptions,
) -> Result<(String, Vec<String>), SubmitError> {
    let mut notes = Vec::new();
    let mut queries = Vec::new();
    for q in &spec.queries {
        let missing = missing_functions(q);
        if missing.is_empty() {
            queries.push(q);
            continue;
        }
        let functions = missing.into_iter().collect::<Vec<_>>().join(", ");
        match opts.unsupported {
            Unsupported::Fail => {
                return Err(SubmitError::Unsupported {
                    file: q.file.clone(),
                    line: q.line,
                    sink: q.sink.clone(),
                    functions,
                });
            }
            Unsupported::Skip => notes.push(format!(
                "{}:{}: INSERT INTO {} left out: it calls {functions} (no Arroyo UDF wrapper)",
                q.file, q.line, q.sink
            )),
            Unsupported::Keep => {
                notes.push(format!(
                    "{}:{}: INSERT INTO {} kept although it calls {functions} (no Arroyo UDF wrapper); \
                     Arroyo will reject it",
                    q.file, q.line, q.sink
                ));
                queries.push(q);
            }
        }
    }
    if queries.is_empty() {
        return Err(SubmitError::Empty);
    }
    let used: BTreeSet<&str> = queries
        .iter()
        .flat_map(|q| {
            q.sources
                .iter()
                .map(String::as_str)
                .chain([q.sink.as_str()])
        })
        .collect();
    let mut out = String::from(
        "-- Generated by `pipeline submit --arroyo` from the job's SQL: Kafka tables for Arroyo's\n\
         -- connector (event time from the records' Unix-ms field), the decisions sink on the\n\
         -- policies topic, and the job's INSERT statements as parsed (comments dropped).\n\n",
    );
    for t in spec
        .tables
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
    {
        match t.kind {
            TableKind::Source => out.push_str(&source_ddl(t, &opts.kafka_brokers)?),
            TableKind::Sink => out.push_str(&sink_ddl(t, opts)),
        }
        out.push('\n');
    }
    for q in queries {
        out.push_str(&format!("INSERT INTO {}\n{:#};\n\n", q.sink, q.query));
    }
    Ok((out.trim_end().to_owned() + "\n", notes))
}

/// The UDF entries: every wrapper, with the `udfs` git URL and revision filled in where given.
pub fn udf_posts(opts: &SubmitOptions) -> Vec<UdfPost> {
    WRAPPERS
        .iter()
        .map(|w| {
            let mut definition = w.source.to_owned();
            if let Some(git) = &opts.udfs_git {
                definition = definition.replace(UDFS_GIT_PLACEHOLDER, git);
            }
            if let Some(rev) = &opts.udfs_rev {
                definition = definition.replace(UDFS_REV_PLACEHOLDER, rev);
            }
            UdfPost {
                definition,
                language: "rust".into(),
            }
        })
        .collect()
}

/// The whole request for `spec`, and the notes worth printing.
pub fn pipeline_post(
    spec: &JobSpec,
    opts: &SubmitOptions,
) -> Result<(PipelinePost, Vec<String>), SubmitError> {
    let (query, notes) = arroyo_sql(spec, opts)?;
    Ok((
        PipelinePost {
            name: opts.name.clone(),
            query,
            udfs: udf_posts(opts),
            parallelism: opts.parallelism,
            checkpoint_interval_micros: u64::try_from(opts.checkpoint_interval.as_micros())
                .unwrap_or(u64::MAX),
        },
        notes,
    ))
}

/// `POST /api/v1/pipelines` under `base` (`http://host:5115`, `.../api` or the full path).
pub fn pipelines_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/api/v1/pipelines") {
        base.to_owned()
    } else if base.ends_with("/api/v1") {
        format!("{base}/pipelines")
    } else if base.ends_with("/api") {
        format!("{base}/v1/pipelines")
    } else {
        format!("{base}/api/v1/pipelines")
    }
}

/// Posts `post` and returns the created pipeline's id.
pub fn submit(base: &str, post: &PipelinePost, timeout: Duration) -> Result<String, SubmitError> {
    let url = pipelines_url(base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent
        .post(&url)
        .send_json(post)
        .map_err(|e| SubmitError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| SubmitError::Unreachable {
            url: url.clone(),
            reason: format!("reading the answer: {e}"),
        })?;
    let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    if !(200..300).contains(&status) {
        // Arroyo's `ErrorResp` is `{"error": "..."}`.
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| cut(&body));
        return Err(SubmitError::Rejected {
            url,
            status,
            message,
        });
    }
    json.as_ref()
        .and_then(|j| j.get("id"))
        .and_then(|id| id.as_str())
        .map(str::to_owned)
        .ok_or(SubmitError::BadResponse {
            url,
            status,
            body: cut(&body),
        })
}

fn cut(body: &str) -> String {
    schemas::text::truncate_at_char_boundary(body, 500).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql");
        JobSpec::from_files(&[path]).expect("sql/incident.sql loads")
    }

    #[test]
    fn urls() {
        for base in [
            "http://a:5115",
            "http://a:5115/",
            "http://a:5115/api",
            "http://a:5115/api/v1",
            "http://a:5115/api/v1/pipelines",
        ] {
            assert_eq!(pipelines_url(base), "http://a:5115/api/v1/pipelines");
        }
    }

    #[test]
    fn the_slice_learner_is_refused_by_default_and_named() {
        let err = arroyo_sql(&spec(), &SubmitOptions::default()).expect_err("learn_slice");
        let text = err.to_string();
        assert!(text.contains("learn_slice"), "{text}");
        assert!(text.contains("cluster_decisions"), "{text}");
    }

    #[test]
    fn skip_leaves_out_the_decisions_and_keep_sends_them_to_policies() {
        let skip = SubmitOptions {
            unsupported: Unsupported::Skip,
            ..SubmitOptions::default()
        };
        let (sql, notes) = arroyo_sql(&spec(), &skip).expect("builds");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(!sql.contains("cluster_decisions"), "{sql}");
        assert!(sql.contains("cluster_of(message)"), "{sql}");
        let keep = SubmitOptions {
            unsupported: Unsupported::Keep,
            ..SubmitOptions::default()
        };
        let (sql, _) = arroyo_sql(&spec(), &keep).expect("builds");
        assert!(sql.contains("CREATE TABLE cluster_decisions WITH"), "{sql}");
        assert!(sql.contains("topic = 'policies'"), "{sql}");
        assert!(sql.contains("dimensions JSON"), "{sql}");
        assert!(sql.contains("second_ms BIGINT NOT NULL"), "{sql}");
    }

    #[test]
    fn definitions_fill_only_what_they_are_given() {
        let opts = SubmitOptions {
            udfs_git: Some("https://git.example/lag.git".into()),
            ..SubmitOptions::default()
        };
        for (post, w) in udf_posts(&opts).iter().zip(WRAPPERS) {
            assert!(
                post.definition
                    .contains("git = \"https://git.example/lag.git\"")
            );
            assert!(post.definition.contains(UDFS_REV_PLACEHOLDER));
            assert!(post.definition.contains(&format!("pub fn {}(", w.name)));
            assert_eq!(post.language, "rust");
        }
    }
}
