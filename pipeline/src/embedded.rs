//! The embedded default: enforcer, job and operator API in one process, joined by the
//! enforcer's bounded event channel and its policy store — no services to install.

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
use crate::io::{ChannelSource, IoError, PolicyPublisher};
use crate::job::{CommandRequest, Job, JobConfig, SharedDecider};

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
    anyhow::ensure!(
        config.events.sink == SinkKind::Embedded,
        "events.sink must be embedded for the in-process pipeline"
    );
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
    let mut gateway = Gateway::start(config, registry, shutdown.clone()).await?;
    let events = gateway
        .take_events()
        .context("the enforcer's event channel was already taken")?;
    let decider = job.decider();
    let commands = job.commands();
    match etcd {
        None => {
            let publisher = StorePublisher {
                store: Arc::clone(&gateway.policies),
                clock: gateway.clock,
            };
            tokio::spawn(job.run(ChannelSource(events), publisher, shutdown.clone()));
        }
        Some(e) => {
            let mut settings = EtcdSettings::new(e.endpoints.clone(), instance_name());
            settings.prefix = e.prefix.clone();
            settings.dial_timeout = Duration::from_millis(e.dial_timeout_ms);
            settings.request_timeout = Duration::from_millis(e.request_timeout_ms);
            let publisher = EtcdPublisher::connect(settings)
                .await
                .with_context(|| format!("connecting to etcd at {:?}", e.endpoints))?;
            tokio::spawn(job.run(ChannelSource(events), publisher, shutdown.clone()));
        }
    }
    tokio::spawn(api::serve(
        api_listener,
        ApiState {
            decider: Arc::clone(&decider),
            commands: commands.clone(),
            token: api_token,
            registry: Some(registry.clone()),
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

/// This replica's name in the etcd election: host and process id.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}
