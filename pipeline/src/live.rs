//! `pipeline demo` and `pipeline run`: the embedded default as a command.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use enforcer::config::Config;
use pipeline::distributed::{self, ReplicaConfig};
use pipeline::embedded::{self, JobSource};
use pipeline::etcd::EtcdSettings;
use pipeline::job::JobConfig;
use pipeline::kafka::KafkaSourceConfig;
use pipeline::policies_topic::PoliciesTopicConfig;
use pipeline::postgres::{self, PgSettings, PgStore};
use pipeline::redis_cache::{RedisCacheConfig, RedisVectorCache};
use tokio_util::sync::CancellationToken;

use crate::{JobArgs, LiveArgs, PgArgs, SourceChoice};

/// Runs until Ctrl-C / SIGTERM; with `upstream`, the demo upstream too.
pub fn run(args: LiveArgs, upstream: Option<SocketAddr>) -> anyhow::Result<()> {
    // A bad config exits before anything starts, naming the field.
    // LAG_ETCD_ENDPOINTS / LAG_KAFKA_BROKERS override the file's endpoints (deployments set them).
    let mut config =
        Config::load(&args.config).with_context(|| args.config.display().to_string())?;
    config
        .apply_env(|name| std::env::var(name).ok())
        .with_context(|| args.config.display().to_string())?;
    // New templates are embedded by the process-wide clusterer the SQL's cluster_of uses.
    udfs::sql::install_embedder(crate::offline::embedder(args.job.embedder)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        init_logs();
        let registry = prometheus::Registry::new();
        install_redis_cache(args.job.redis_url.as_deref(), &registry)?;
        let pg = start_postgres(&args.job.pg, &registry).await?;
        let shutdown = CancellationToken::new();
        if let Some(addr) = upstream {
            let up = enforcer::demo::start(addr, Default::default(), shutdown.child_token())
                .await
                .with_context(|| format!("demo upstream on {addr}"))?;
            eprintln!("demo upstream on http://{up}");
        }
        let (token, generated) = api_token(args.job.api_token.clone())?;
        let mut job = JobConfig::new(args.job.sql);
        job.global_shadow = args.job.shadow;
        let source = match args.source {
            SourceChoice::Embedded => JobSource::Embedded,
            SourceChoice::Kafka => {
                let brokers = args
                    .kafka_brokers
                    .clone()
                    .context("--source kafka needs --kafka-brokers")?;
                let mut k = KafkaSourceConfig::new(brokers, args.kafka_group.clone());
                k.topic_prefix = args.kafka_topic_prefix.clone();
                JobSource::Kafka(k)
            }
        };
        let e = embedded::start_distributed(
            config,
            job,
            source,
            pg,
            args.job.api_listen,
            token.clone(),
            &registry,
            shutdown.clone(),
        )
        .await?;
        let proxy = e.gateway.proxy_addr;
        eprintln!(
            "enforcer on http://{proxy} (admin http://{admin}: /health /ready /metrics /policies)\n\
             operator API on http://{api}/api/v1 (Authorization: Bearer {shown})",
            admin = e.gateway.admin_addr,
            api = e.api_addr,
            shown = if generated {
                token.as_str()
            } else {
                "<PIPELINE_API_TOKEN>"
            },
        );
        if let Some(up) = upstream {
            eprintln!(
                "try:   curl -s -XPOST {proxy}/pay -d '{{\"channel\":\"alipay\"}}'\n\
                 fail one channel:   curl -s -XPUT {up}/faults/alipay -d '{{\"mode\":\"error\"}}'\n\
                 then, under load:   curl -s -H 'Authorization: Bearer ...' {api}/api/v1/policies",
                api = e.api_addr
            );
        }
        tokio::spawn(shutdown_on_signal(shutdown));
        e.gateway.wait().await;
        Ok(())
    })
}

/// With `--pg-url`, before the job's first row: the SQL functions' clusterer restores from
/// PostgreSQL and decides new templates through it.
async fn start_postgres(
    args: &PgArgs,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<std::sync::Arc<PgStore>>> {
    let Some(url) = &args.pg_url else {
        return Ok(None);
    };
    let mut settings = PgSettings::new(url.clone());
    settings.schema = args.pg_schema.clone();
    settings.event_retention = std::time::Duration::from_secs(args.pg_event_retention_secs);
    let redacted = settings.redacted_url();
    let registry = registry.clone();
    // Restoring blocks (up to the restore timeout) on the index's own thread.
    let store = tokio::task::spawn_blocking(move || postgres::install(settings, &registry))
        .await
        .context("starting the postgres index")?
        .with_context(|| format!("postgres at {redacted}"))?;
    Ok(Some(store))
}

/// `pipeline job`: one distributed replica, until Ctrl-C / SIGTERM.
pub fn replica(args: JobArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.etcd_endpoints.is_empty(),
        "--etcd-endpoints (or LAG_ETCD_ENDPOINTS) is required"
    );
    udfs::sql::install_embedder(crate::offline::embedder(args.job.embedder)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        init_logs();
        let shutdown = CancellationToken::new();
        let (token, generated) = api_token(args.job.api_token.clone())?;
        let instance = args.instance.unwrap_or_else(embedded::instance_name);
        let mut kafka = KafkaSourceConfig::new(args.kafka_brokers.clone(), args.kafka_group);
        kafka.topic_prefix = args.kafka_topic_prefix;
        let mut etcd = EtcdSettings::new(args.etcd_endpoints, instance.clone());
        etcd.prefix = args.etcd_prefix;
        etcd.lease_ttl_s = args.etcd_lease_ttl_s;
        let registry = prometheus::Registry::new();
        install_redis_cache(args.job.redis_url.as_deref(), &registry)?;
        let postgres = start_postgres(&args.job.pg, &registry).await?;
        let config = ReplicaConfig {
            postgres,
            kafka,
            policies: PoliciesTopicConfig {
                brokers: args.kafka_brokers,
                topic: args.policies_topic,
                replica: instance.clone(),
            },
            etcd,
        };
        let mut job = JobConfig::new(args.job.sql);
        job.global_shadow = args.job.shadow;
        let r = distributed::start(
            job,
            config,
            args.job.api_listen,
            token.clone(),
            &registry,
            shutdown.clone(),
        )
        .await?;
        eprintln!(
            "pipeline replica {instance}: operator API on http://{api}/api/v1 (Authorization: Bearer {shown}); /health and /metrics without a token",
            api = r.api_addr,
            shown = if generated { token.as_str() } else { "<PIPELINE_API_TOKEN>" },
        );
        tokio::spawn(shutdown_on_signal(shutdown));
        r.job.await.context("the job task")?;
        Ok(())
    })
}

fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The given API token, or a random one; `true` when generated (it is printed then).
fn api_token(given: Option<String>) -> anyhow::Result<(String, bool)> {
    match given {
        Some(t) if !t.is_empty() => Ok((t, false)),
        _ => Ok((random_token()?, true)),
    }
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        } else {
            let _ = ctrl_c.await;
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}

/// `--redis-url`: template vectors shared with the other replicas through Redis. Installed
/// before the job starts: the SQL's `cluster_of` builds the clusterer on first use.
fn install_redis_cache(url: Option<&str>, registry: &prometheus::Registry) -> anyhow::Result<()> {
    if let Some(url) = url {
        let cache = RedisVectorCache::new(RedisCacheConfig::new(url))?.with_metrics(registry)?;
        udfs::sql::install_vector_cache(Arc::new(cache));
        tracing::info!(url = %url, "template vectors shared through redis");
    }
    Ok(())
}
