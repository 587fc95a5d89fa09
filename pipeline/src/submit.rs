//! `pipeline submit`: builds Arroyo's pipeline request from the job's SQL and the UDF wrappers
//! ([`pipeline::arroyo`]), writes it where asked and posts it unless `--dry-run`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use pipeline::arroyo::{self, SubmitOptions, Unsupported};
use pipeline::engine::JobSpec;

/// `pipeline submit` arguments.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Arroyo API base URL (`http://arroyo:5115`); the request goes to `/api/v1/pipelines`.
    #[arg(long, required_unless_present = "dry_run")]
    arroyo: Option<String>,
    /// Build and print (or write, with --out) the request; post nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also write the request JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The job's SQL files, in order.
    #[arg(long = "sql", default_value = "sql/incident.sql")]
    sql: Vec<PathBuf>,
    /// The pipeline's name in Arroyo.
    #[arg(long, default_value = "lag-incident")]
    name: String,
    /// Kafka bootstrap servers as the Arroyo workers reach them.
    #[arg(long, env = "LAG_KAFKA_BROKERS", default_value = "localhost:9092")]
    kafka_brokers: String,
    /// Topic the decisions sink writes.
    #[arg(long, default_value = schemas::names::POLICIES_TOPIC)]
    policies_topic: String,
    /// Arroyo parallelism (the clustering UDFs keep per-process state: see the notes).
    #[arg(long, default_value_t = 1)]
    parallelism: u64,
    /// Checkpoint interval, seconds.
    #[arg(long, default_value_t = 10)]
    checkpoint_interval_secs: u64,
    /// Git URL of this repository, which the UDF wrappers depend on (`udfs` is not on
    /// crates.io). Unset: the `{{ LAG_UDFS_GIT }}` placeholder stays for Arroyo's compiler to
    /// fill from its environment.
    #[arg(long, env = "LAG_UDFS_GIT")]
    udfs_git: Option<String>,
    /// Git revision of that repository (unset: `{{ LAG_UDFS_REV }}` stays, as above).
    #[arg(long, env = "LAG_UDFS_REV")]
    udfs_rev: Option<String>,
    /// Queries calling functions without an Arroyo wrapper (the slice learner): fail, skip
    /// them, or keep them for Arroyo to reject.
    #[arg(long, value_enum, default_value_t = Unsupported::Fail)]
    unsupported: Unsupported,
    /// HTTP timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

/// Runs `pipeline submit`.
pub fn run(args: SubmitArgs) -> anyhow::Result<()> {
    let spec = JobSpec::from_files(&args.sql).context("loading the job's SQL")?;
    let opts = SubmitOptions {
        name: args.name,
        kafka_brokers: args.kafka_brokers,
        policies_topic: args.policies_topic,
        parallelism: args.parallelism,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval_secs),
        udfs_git: args.udfs_git,
        udfs_rev: args.udfs_rev,
        unsupported: args.unsupported,
    };
    let (post, notes) = arroyo::pipeline_post(&spec, &opts)?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    if opts.udfs_git.is_none() || opts.udfs_rev.is_none() {
        eprintln!(
            "note: the UDF wrappers depend on `udfs` by git; without --udfs-git/--udfs-rev, \
             Arroyo's compiler must have LAG_UDFS_GIT and LAG_UDFS_REV in its environment"
        );
    }
    let json = serde_json::to_string_pretty(&post)?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if args.dry_run {
        if args.out.is_none() {
            println!("{json}");
        }
        return Ok(());
    }
    let Some(base) = args.arroyo else {
        bail!("--arroyo URL is required unless --dry-run");
    };
    let id = arroyo::submit(&base, &post, Duration::from_secs(args.timeout_secs))?;
    println!("{id}");
    eprintln!("created Arroyo pipeline {id} ({})", post.name);
    Ok(())
}
