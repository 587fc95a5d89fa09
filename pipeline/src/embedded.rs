//! The embedded default: enforcer, job and operator API in one process, joined by the
//! enforcer's bounded event channel and its policy store — no services to install. With
//! [`JobSource::Kafka`] the job reads Kafka instead (`pipeline run --source kafka`), so it
//! also sees the records of enforcers in other processes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use enforcer::clock::Clock;
use enforcer::config::{Config, PolicySourceKind, SinkKind};
use enforcer::policy::PolicyStore;
use enforcer::server::Gateway;
use prometheus::Registry;
use schemas::PolicySnapshot;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::etcd::{EtcdPublisher, EtcdSettings};
use crate::io::{ChannelSource, IoError, PolicyPublisher, RecordSource};
use crate::job::{CommandRequest, Job, JobConfig, SharedDecider};
use crate::kafka::{KafkaSource, KafkaSourceConfig};
use crate::postgres::PgStore;
use crate::postgres::events::PgTeeSource;
use crate::postgres::policies::PgPolicyPublisher;

/// Publishes straight into an in-process enforcer's policy store.
#[derive(Debug, Clone)]
pub struct StorePublisher {
    /// The store.
    pub store: Arc<PolicyStore>,
    /// The enforcer's clock (new breakers open relative to its monotonic time).
    pub clock: Clock,
}

impl PolicyPublisher for StorePublisher {
    async fn publish(&mut self, snapshot: &PolicySnapshot) -> Result<(), IoError> {
        self.store
            .apply(snapshot, self.clock.monotonic_ms())
            .map(|_| ())
            .map_err(|e| IoError(e.to_string()))
    }
}

/// The running embedded default.
#[derive(Debug)]
pub struct Embedded {
    /// The enforcer.
    pub gateway: Gateway,
    /// Where the operator API listens.
    pub api_addr: SocketAddr,
    /// The job's decider (clusters, policies).
    pub decider: SharedDecider,
    /// Operator commands.
    pub commands: tokio::sync::mpsc::Sender<CommandRequest>,
}

/// Where the job reads the enforcer's records.
#[derive(Debug, Clone, Default)]
pub enum JobSource {
    /// The enforcer's in-process queue (`events.sink: embedded`).
    #[default]
    Embedded,
    /// Kafka topics (`events.sink: kafka`; the enforcer here, and any others, write them).
    Kafka(KafkaSourceConfig),
}

/// Starts the enforcer with `config`, the job over its events, and the API on `api_listen`
/// with `api_token`. The enforcer must use the embedded event sink; its policy source is
/// embedded (the job writes the in-process store) or etcd (the job publishes to etcd when
/// this replica leads, and the enforcer follows the key like any other).
pub async fn start(
    config: Config,
    job: JobConfig,
    api_listen: SocketAddr,
    api_token: String,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Embedded> {
    start_with_source(
        config,
        job,
        JobSource::Embedded,
        api_listen,
        api_token,
        registry,
        shutdown,
    )
    .await
}

/// [`start`], with the job reading `source`: the in-process queue (the enforcer's sink must
/// be `embedded`) or Kafka (its sink must be `kafka`, so its records reach the topics).
pub async fn start_with_source(
    config: Config,
    job: JobConfig,
    source: JobSource,
    api_listen: SocketAddr,
    api_token: String,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Embedded> {
    start_distributed(
        config, job, source, None, api_listen, api_token, registry, shutdown,
    )
    .await
}

/// [`start_with_source`], with PostgreSQL when `postgres` is given (distributed mode, see
/// [`crate::postgres::install`], which attaches the shared cluster index first): the job's
/// error events are written to it, old ones deleted, and the API answers similar-cluster
/// queries from it.
#[allow(clippy::too_many_arguments)] // one per edge of the process; a struct would only rename them
pub async fn start_distributed(
    config: Config,
    job: JobConfig,
    source: JobSource,
    postgres: Option<Arc<PgStore>>,
    api_listen: SocketAddr,
    api_token: String,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Embedded> {
    match &source {
        JobSource::Embedded => anyhow::ensure!(
            config.events.sink == SinkKind::Embedded,
            "events.sink must be embedded for the in-process pipeline"
        ),
        JobSource::Kafka(_) => anyhow::ensure!(
            config.events.sink == SinkKind::Kafka,
            "events.sink must be kafka when the job reads Kafka"
        ),
    }
    anyhow::ensure!(
        matches!(
            config.policies.source,
            PolicySourceKind::Embedded | PolicySourceKind::Etcd
        ),
        "policies.source must be embedded or etcd for the in-process pipeline"
    );
    // With `policies.source: etcd` the job publishes to etcd (when this replica leads) and the
    // in-process enforcer, like every other enforcer, follows the key there.
    let etcd = match config.policies.source {
        PolicySourceKind::Etcd => config.policies.etcd.clone(),
        _ => None,
    };
    anyhow::ensure!(!api_token.is_empty(), "the API token is empty");
    let job = Job::load(job, registry).await.context("loading the job")?;
    let api_listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("operator API on {api_listen}"))?;
    let api_addr = api_listener.local_addr()?;
    let kafka = match &source {
        JobSource::Kafka(k) => Some(KafkaSource::new(k, registry).context("the kafka source")?),
        JobSource::Embedded => None,
    };
    let mut gateway = Gateway::start(config, registry, shutdown.clone()).await?;
    let decider = job.decider();
    let commands = job.commands();
    match etcd {
        None => {
            let publisher = StorePublisher {
                store: Arc::clone(&gateway.policies),
                clock: gateway.clock,
            };
            spawn_job(
                job,
                kafka,
                &mut gateway,
                publisher,
                postgres.clone(),
                shutdown.clone(),
            )?;
        }
        Some(e) => {
            let mut settings = EtcdSettings::new(e.endpoints.clone(), instance_name());
            settings.prefix = e.prefix.clone();
            settings.dial_timeout = Duration::from_millis(e.dial_timeout_ms);
            settings.request_timeout = Duration::from_millis(e.request_timeout_ms);
            let publisher = EtcdPublisher::connect(settings)
                .await
                .with_context(|| format!("connecting to etcd at {:?}", e.endpoints))?;
            spawn_job(
                job,
                kafka,
                &mut gateway,
                publisher,
                postgres.clone(),
                shutdown.clone(),
            )?;
        }
    }

    tokio::spawn(api::serve(
        api_listener,
        ApiState {
            decider: Arc::clone(&decider),
            commands: commands.clone(),
            token: api_token,
            registry: Some(registry.clone()),
            postgres,
        },
        shutdown,
    ));
    Ok(Embedded {
        gateway,
        api_addr,
        decider,
        commands,
    })
}

/// Runs the job over Kafka when it reads Kafka, else over the enforcer's in-process queue.
fn spawn_job<P: PolicyPublisher + 'static>(
    job: Job,
    kafka: Option<KafkaSource>,
    gateway: &mut Gateway,
    publisher: P,
    postgres: Option<Arc<PgStore>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match kafka {
        Some(source) => run_job(job, source, publisher, postgres, shutdown),
        None => {
            let events = gateway
                .take_events()
                .context("the enforcer's event channel was already taken")?;
            run_job(job, ChannelSource(events), publisher, postgres, shutdown);
        }
    }
    Ok(())
}

/// Spawns the job; with PostgreSQL its error events and published policies are also
/// written there.
fn run_job<S: RecordSource + 'static, P: PolicyPublisher + 'static>(
    job: Job,
    source: S,
    publisher: P,
    postgres: Option<Arc<PgStore>>,
    shutdown: CancellationToken,
) {
    match postgres {
        None => {
            tokio::spawn(job.run(source, publisher, shutdown));
        }
        Some(store) => {
            let (events, policies) = crate::postgres::start_writers(&store, &shutdown);
            let publisher = PgPolicyPublisher::new(publisher, policies, Arc::clone(&store));
            tokio::spawn(job.run(PgTeeSource::new(source, events, store), publisher, shutdown));
        }
    }
}

/// This replica's name in the etcd election: host and process id.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}
