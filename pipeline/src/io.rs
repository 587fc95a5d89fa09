//! The job's edges: where its records come from and where applied policy snapshots go.
//!
//! The embedded default connects both ends in process (a channel from the enforcer, the
//! enforcer's policy store); the distributed adapters (Kafka in, etcd out) implement the same
//! traits, so nothing in the job changes with the deployment.

use std::future::Future;

use schemas::{GatewayRecord, PolicySnapshot};
use tokio::sync::mpsc;

/// A source or publisher failed; the job logs it, counts it and carries on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IoError(pub String);

/// The enforcers' records (error events, traffic samples, per-route counts), in order per route.
pub trait RecordSource: Send {
    /// Waits for the next records, at most `max`; `None` once the source has ended for good.
    fn next_batch(&mut self, max: usize)
    -> impl Future<Output = Option<Vec<GatewayRecord>>> + Send;

    /// Everything returned so far has been processed and its results applied: a durable
    /// source commits its position here (at-least-once delivery); the channel does nothing.
    fn commit(&mut self) -> impl Future<Output = Result<(), IoError>> + Send;
}

/// Where the policy applier's snapshots go: the enforcers' policy source reads them.
pub trait PolicyPublisher: Send {
    /// Publishes one validated snapshot; a newer one always replaces an older one.
    fn publish(
        &mut self,
        snapshot: &PolicySnapshot,
    ) -> impl Future<Output = Result<(), IoError>> + Send;

    /// Whether a refusal means another replica publishes (this one stands by, keeping its
    /// newest snapshot for when it takes over) rather than a failure.
    fn is_standby(&self) -> bool {
        false
    }
}

/// The embedded source: the enforcer's bounded event channel in the same process.
#[derive(Debug)]
pub struct ChannelSource(pub mpsc::Receiver<GatewayRecord>);

impl RecordSource for ChannelSource {
    async fn next_batch(&mut self, max: usize) -> Option<Vec<GatewayRecord>> {
        let mut batch = Vec::with_capacity(max.min(1024));
        match self.0.recv_many(&mut batch, max.max(1)).await {
            0 => None,
            _ => Some(batch),
        }
    }

    async fn commit(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}
