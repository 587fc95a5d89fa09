//! Distributed mode: one pipeline replica among many, no enforcer in the process.
//!
//! Records come from Kafka (this replica's share of the partitions, in one consumer group);
//! decisions go to the `policies` topic and come back from it (every replica's); the replica
//! that holds the etcd leader key publishes the snapshot the enforcers watch. The operator API
//! (with `/health` and `/metrics`) serves on `api_listen`. See [`crate::policies_topic`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::etcd::{EtcdPublisher, EtcdSettings};
use crate::job::{CommandRequest, Job, JobConfig, SharedDecider};
use crate::kafka::{KafkaSource, KafkaSourceConfig};
use crate::policies_topic::{DecisionConsumer, DecisionProducer, PoliciesTopicConfig};
use crate::postgres::PgStore;
use crate::postgres::events::PgTeeSource;
use crate::postgres::policies::PgPolicyPublisher;

/// A running replica.
#[derive(Debug)]
pub struct Replica {
    /// Where the operator API listens.
    pub api_addr: SocketAddr,
    /// The job's decider.
    pub decider: SharedDecider,
    /// Operator commands.
    pub commands: tokio::sync::mpsc::Sender<CommandRequest>,
    /// Ends when the job stops.
    pub job: tokio::task::JoinHandle<()>,
}

/// What a replica connects to.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// PostgreSQL (`--pg-url`; attach the shared cluster index first with
    /// [`crate::postgres::install`]): error events and published policies written there,
    /// retention, similar-cluster search in the API.
    pub postgres: Option<Arc<PgStore>>,
    /// The record topics and the consumer group.
    pub kafka: KafkaSourceConfig,
    /// The decision topic (brokers, topic, this replica's name).
    pub policies: PoliciesTopicConfig,
    /// Where snapshots are published (instance name = the replica's name).
    pub etcd: EtcdSettings,
}

/// Loads the SQL, connects to Kafka and etcd, starts the job and the API.
pub async fn start(
    job: JobConfig,
    config: ReplicaConfig,
    api_listen: SocketAddr,
    api_token: String,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Replica> {
    anyhow::ensure!(!api_token.is_empty(), "the API token is empty");
    let job = Job::load(job, registry).await.context("loading the job")?;
    let api_listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("operator API on {api_listen}"))?;
    let api_addr = api_listener.local_addr()?;
    let source = KafkaSource::new(&config.kafka, registry).context("the kafka source")?;
    let out = DecisionProducer::new(&config.policies).context("the decision producer")?;
    let decisions_in = DecisionConsumer::new(&config.policies)
        .await
        .context("the decision consumer")?;
    let endpoints = config.etcd.endpoints.clone();
    let publisher = EtcdPublisher::connect(config.etcd)
        .await
        .with_context(|| format!("connecting to etcd at {endpoints:?}"))?;
    let decider = job.decider();
    let commands = job.commands();
    let job = match &config.postgres {
        None => tokio::spawn(job.run_distributed(
            source,
            out,
            decisions_in,
            publisher,
            shutdown.clone(),
        )),
        Some(store) => {
            let (events, policies) = crate::postgres::start_writers(store, &shutdown);
            tokio::spawn(job.run_distributed(
                PgTeeSource::new(source, events, Arc::clone(store)),
                out,
                decisions_in,
                PgPolicyPublisher::new(publisher, policies, Arc::clone(store)),
                shutdown.clone(),
            ))
        }
    };
    tokio::spawn(api::serve(
        api_listener,
        ApiState {
            decider: Arc::clone(&decider),
            commands: commands.clone(),
            token: api_token,
            registry: Some(registry.clone()),
            postgres: config.postgres.clone(),
        },
        shutdown,
    ));
    Ok(Replica {
        api_addr,
        decider,
        commands,
        job,
    })
}
