//! `pipeline`: the live job and the offline commands over files.
//!
//! - `pipeline demo` — the embedded default: the demo upstream, the enforcer in front of it,
//!   the windowed SQL job over its events and the operator API, in one process.
//! - `pipeline run --config enforcer.yaml [--source kafka --kafka-brokers H:P]` — the same
//!   without the demo upstream; with `--source kafka` the job reads the Kafka topics.
//! - `pipeline job --kafka-brokers H:P --etcd-endpoints URL` — one replica of the distributed
//!   job, no enforcer: Kafka in, decisions through the `policies` topic, etcd out (the leader).
//! - `--pg-url URL [--pg-schema NAME]` on `demo`, `run` and `job`: new templates are clustered
//!   through PostgreSQL + pgvector, shared by every replica; events, policies, retention and
//!   similar-cluster search there too.
//! - `pipeline cluster --input FILE [--csv-column NAME] [--level template|cluster] --output FILE.jsonl`
//!   writes `{line, template_id, template, cluster_id}` for every input line, in order.
//! - `pipeline eval [--corpus FILE] [--sweep]` prints template- and cluster-level scores on
//!   the labelled corpus.
//! - `pipeline submit --arroyo URL [--dry-run] [--out FILE]` posts the same SQL and the UDF
//!   wrappers to an Arroyo cluster (`POST /api/v1/pipelines`) and prints the pipeline id.

mod live;
mod offline;
mod submit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "pipeline",
    about = "LLM-Aware Gateway pipeline: offline failure clustering"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which embedder turns new templates into vectors.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EmbedderChoice {
    /// Hashed character n-grams (no model).
    Ngram,
    /// The built-in multilingual-e5-small model (candle), when compiled in.
    E5,
}

/// How far the command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Level {
    /// Templates only (no embeddings).
    Template,
    /// Templates and failure clusters.
    Cluster,
}

/// What the live commands share.
#[derive(Debug, clap::Args)]
struct LiveArgs {
    /// The enforcer's YAML config (events `embedded`, or `kafka` with `--source kafka`;
    /// policies `embedded`, or `etcd` to publish through etcd when this replica leads).
    #[arg(long, default_value = "deploy/enforcer.demo.yaml")]
    config: PathBuf,
    #[command(flatten)]
    job: JobCommon,
    /// Where the job reads records: the enforcer's in-process queue (`events.sink: embedded`)
    /// or Kafka (`events.sink: kafka`; every enforcer writing the topics is read).
    #[arg(long, value_enum, default_value_t = SourceChoice::Embedded)]
    source: SourceChoice,
    /// Kafka bootstrap brokers for `--source kafka`.
    #[arg(long, env = "LAG_KAFKA_BROKERS", required_if_eq("source", "kafka"))]
    kafka_brokers: Option<String>,
    /// Consumer group for `--source kafka` (committed positions belong to it).
    #[arg(long, default_value = "lag-pipeline")]
    kafka_group: String,
    /// Topic prefix for `--source kafka` (the enforcers' `events.kafka.topic_prefix`).
    #[arg(long, default_value = schemas::names::DEFAULT_TOPIC_PREFIX)]
    kafka_topic_prefix: String,
}

/// The job's own settings, the same for `demo`, `run` and `job`.
#[derive(Debug, clap::Args)]
struct JobCommon {
    /// The job's SQL files, in order.
    #[arg(long = "sql", default_value = "sql/incident.sql")]
    sql: Vec<PathBuf>,
    /// Where the operator API (and /health, /metrics) listens.
    #[arg(long, default_value = "127.0.0.1:9091")]
    api_listen: SocketAddr,
    /// Bearer token for the operator API; a random one is generated and printed when unset.
    #[arg(long, env = "PIPELINE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Issue every policy in shadow mode (count what would be rejected; reject nothing).
    #[arg(long)]
    shadow: bool,
    /// Embedder for new templates in `cluster_of` (e5: the built-in multilingual model).
    #[arg(long, value_enum, default_value_t = EmbedderChoice::E5)]
    embedder: EmbedderChoice,
    /// Share template vectors with the other replicas through Redis (`redis://host:port`):
    /// the model runs only for templates no replica has embedded. Unset: no sharing.
    #[arg(long, env = "LAG_REDIS_URL")]
    redis_url: Option<String>,
    #[command(flatten)]
    pg: PgArgs,
}

/// PostgreSQL + pgvector, for `demo`, `run` and `job`.
#[derive(Debug, Clone, clap::Args)]
struct PgArgs {
    /// PostgreSQL + pgvector (distributed mode): the replicas' shared cluster index, error
    /// events and policies with retention, similar-cluster search.
    /// `postgres://user:pass@host:port/db`. Not read from LAG_PG_URL on purpose:
    /// `deploy/services.sh env` exports that in every shell, and replicas that share a
    /// database share clusters.
    #[arg(long, env = "LAG_PIPELINE_PG_URL", hide_env_values = true)]
    pg_url: Option<String>,
    /// Schema for the tables (created when missing); the server's default when unset.
    /// Replicas that should agree on clusters use the same one.
    #[arg(long, requires = "pg_url")]
    pg_schema: Option<String>,
    /// Error events older than this many seconds are deleted from PostgreSQL.
    #[arg(long, default_value_t = 86_400)]
    pg_event_retention_secs: u64,
}

/// `pipeline job`: what one distributed replica connects to.
#[derive(Debug, clap::Args)]
struct JobArgs {
    /// Kafka bootstrap brokers (records in, decisions through the policies topic).
    #[arg(long, env = "LAG_KAFKA_BROKERS")]
    kafka_brokers: String,
    /// Consumer group the replicas share (each reads its share of the partitions).
    #[arg(long, default_value = "lag-pipeline")]
    kafka_group: String,
    /// Topic prefix of the record topics (the enforcers' `events.kafka.topic_prefix`).
    #[arg(long, default_value = schemas::names::DEFAULT_TOPIC_PREFIX)]
    kafka_topic_prefix: String,
    /// The topic decisions travel on, from every replica (and any external engine) to the
    /// applier.
    #[arg(long, default_value = schemas::names::POLICIES_TOPIC)]
    policies_topic: String,
    /// etcd client URLs, comma-separated.
    #[arg(long, env = "LAG_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix of the snapshot and leader keys (the enforcers' `policies.etcd.prefix`).
    #[arg(long, default_value = schemas::names::ETCD_POLICY_PREFIX)]
    etcd_prefix: String,
    /// Lease TTL, seconds: how long a dead leader's snapshot and leadership outlive it.
    #[arg(long, default_value_t = 10)]
    etcd_lease_ttl_s: i64,
    /// This replica's name (leader key value, decision batch key); default host/pid.
    #[arg(long)]
    instance: Option<String>,
    #[command(flatten)]
    job: JobCommon,
}

/// Where the live job reads records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceChoice {
    /// The enforcer's in-process queue.
    Embedded,
    /// Kafka topics, in a consumer group (at-least-once).
    Kafka,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The embedded default: demo upstream + enforcer + job + operator API in one process.
    Demo {
        #[command(flatten)]
        live: LiveArgs,
        /// Where the demo upstream listens (the example config routes to 127.0.0.1:18081).
        #[arg(long, default_value = "127.0.0.1:18081")]
        upstream: SocketAddr,
    },
    /// The enforcer and the job in one process, in front of your own upstreams.
    Run {
        #[command(flatten)]
        live: LiveArgs,
    },
    /// One replica of the distributed job (no enforcer in the process): records from Kafka,
    /// decisions through the policies topic, snapshots to etcd while this replica leads.
    Job {
        #[command(flatten)]
        job: JobArgs,
    },
    /// Mine templates (and clusters) for one message per line, or a CSV column.
    Cluster {
        /// Input file: one message per line, or CSV with --csv-column.
        #[arg(long)]
        input: PathBuf,
        /// Read this column of a CSV file (with a header row).
        #[arg(long)]
        csv_column: Option<String>,
        /// Stop at templates, or go on to clusters.
        #[arg(long, value_enum, default_value_t = Level::Cluster)]
        level: Level,
        /// Output JSON lines.
        #[arg(long)]
        output: PathBuf,
        /// Embedder for new templates.
        #[arg(long, value_enum, default_value_t = EmbedderChoice::Ngram)]
        embedder: EmbedderChoice,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Score templates and clusters on the labelled corpus.
    Eval {
        /// JSON lines with {root_cause, variant, text}.
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Embedder for new templates.
        #[arg(long, value_enum, default_value_t = EmbedderChoice::Ngram)]
        embedder: EmbedderChoice,
        /// Also sweep the threshold and bonuses and print the best settings.
        #[arg(long)]
        sweep: bool,
        /// Print the merged root-cause pairs.
        #[arg(long)]
        verbose: bool,
    },
    /// Print the evidence (dependency/mode) and cheap template of each stdin line.
    Explain,
    /// Post the job's SQL and the UDF wrappers to an Arroyo cluster (or print the request).
    Submit(submit::SubmitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { live, upstream } => live::run(live, Some(upstream)),
        Command::Run { live } => live::run(live, None),
        Command::Job { job } => live::replica(job),
        Command::Cluster {
            input,
            csv_column,
            level,
            output,
            embedder,
            quiet,
        } => offline::cluster(&offline::ClusterArgs {
            input,
            csv_column,
            level,
            output,
            embedder,
            quiet,
        }),
        Command::Eval {
            corpus,
            embedder,
            sweep,
            verbose,
        } => offline::eval(corpus, embedder, sweep, verbose),
        Command::Explain => offline::explain(),
        Command::Submit(args) => submit::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
