//! `policies.source: etcd`: the snapshot key in etcd, read once and then watched.
//!
//! Contract (the pipeline's `EtcdPublisher` writes it): `<prefix>snapshot` holds the current
//! [`PolicySnapshot`](schemas::PolicySnapshot) JSON, replaced in one transaction and attached
//! to the publisher's lease. This task
//!
//! 1. connects, GETs the key and applies what it holds (an absent key is "no policies yet");
//!    the store counts as synced from then on, so `/ready` turns ready after the first
//!    successful read and never before;
//! 2. WATCHes the key from the next revision (no polling) and applies every PUT through
//!    [`PolicyStore::apply_json`] on the enforcer clock's monotonic milliseconds; an invalid
//!    or older snapshot is refused (logged, `enforcer_policy_snapshots_refused_total`) and the
//!    last good one keeps serving;
//! 3. on a DELETE (the publisher's lease ended: the pipeline died) keeps the last good
//!    snapshot: its policies still lapse on their own `expires_at_ms`, so protection is never
//!    dropped because of etcd or a pipeline restart, and stale policies still clear;
//! 4. when etcd goes away (connect, read or watch fails; the watch is cancelled by a
//!    compaction) counts it (`enforcer_policy_source_errors_total`), keeps serving, and
//!    reconnects with capped exponential back-off, re-reading the key before watching again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::EtcdConfig;
use crate::metrics::Metrics;
use crate::policy::{ApplyError, PolicyStore};
use crate::policy_source::{PolicySource, apply_counted};

/// First pause before reconnecting; doubled on every failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Reads and watches the snapshot key.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    /// Endpoints, prefix and timeouts.
    pub config: EtcdConfig,
}

/// Why a watch session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch stream ended")]
    StreamClosed,
    #[error("the watch was cancelled (compacted at revision {0}); re-reading")]
    Cancelled(i64),
}

impl PolicySource for EtcdSource {
    async fn run(
        self,
        store: Arc<PolicyStore>,
        metrics: Metrics,
        clock: Clock,
        shutdown: CancellationToken,
    ) {
        let key = self.config.snapshot_key();
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut watching = false;
            let ended = tokio::select! {
                () = shutdown.cancelled() => break,
                e = self.session(&key, &store, &metrics, clock, &mut watching) => e,
            };
            metrics.policy_source_connected.set(0);
            if watching {
                // The session got as far as watching: start the back-off over.
                backoff = MIN_BACKOFF;
            }
            metrics.policy_source_errors.inc();
            tracing::warn!(
                key = %key,
                error = %ended,
                retry_in_ms = backoff.as_millis() as u64,
                synced = store.is_synced(),
                "etcd policy source lost; the last good snapshot keeps serving"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        metrics.policy_source_connected.set(0);
    }
}

impl EtcdSource {
    /// One connection: read, then watch until something fails. Never returns `Ok`.
    async fn session(
        &self,
        key: &str,
        store: &PolicyStore,
        metrics: &Metrics,
        clock: Clock,
        watching: &mut bool,
    ) -> SessionEnd {
        match self
            .read_then_watch(key, store, metrics, clock, watching)
            .await
        {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn read_then_watch(
        &self,
        key: &str,
        store: &PolicyStore,
        metrics: &Metrics,
        clock: Clock,
        watching: &mut bool,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(self.config.dial_timeout_ms))
            .with_timeout(Duration::from_millis(self.config.request_timeout_ms))
            // HTTP/2 pings find a dead connection (a partition, not only a closed socket).
            .with_keep_alive(
                Duration::from_secs(5),
                Duration::from_millis(self.config.request_timeout_ms),
            )
            .with_keep_alive_while_idle(true);
        let mut client = Client::connect(&self.config.endpoints, Some(options)).await?;
        let got = client.get(key, None).await?;
        let revision = got.header().map_or(0, |h| h.revision());
        match got.kvs().first() {
            Some(kv) => apply(store, metrics, clock, key, kv.value(), kv.mod_revision()),
            None => tracing::info!(key = %key, revision, "no policy snapshot in etcd yet"),
        }
        // Synced on the first successful read, even when what it held was refused: etcd
        // answered, and an enforcer with no policies is no worse than before the read.
        store.mark_synced();
        let mut stream = client
            .watch(
                key,
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            )
            .await?;
        *watching = true;
        metrics.policy_source_connected.set(1);
        tracing::info!(key = %key, revision, "watching the etcd policy snapshot");
        loop {
            let Some(resp) = stream.message().await? else {
                return Err(SessionEnd::StreamClosed);
            };
            if resp.canceled() {
                return Err(SessionEnd::Cancelled(resp.compact_revision()));
            }
            for event in resp.events() {
                match (event.event_type(), event.kv()) {
                    (EventType::Put, Some(kv)) => {
                        apply(store, metrics, clock, key, kv.value(), kv.mod_revision());
                    }
                    (EventType::Delete, _) => tracing::warn!(
                        key = %key,
                        version = store.load().version(),
                        "policy snapshot deleted in etcd (the publisher's lease ended?); \
                         keeping the last good one until its policies expire"
                    ),
                    (EventType::Put, None) => {}
                }
            }
        }
    }
}

/// Applies one stored value; a refusal is logged and counted, the last good snapshot stays.
fn apply(
    store: &PolicyStore,
    metrics: &Metrics,
    clock: Clock,
    key: &str,
    value: &[u8],
    mod_revision: i64,
) {
    match apply_counted(store, metrics, clock, value) {
        Ok(version) => {
            tracing::info!(key = %key, mod_revision, version, "policy snapshot applied");
        }
        Err(e) => {
            let kind = match e {
                ApplyError::Invalid(_) => "invalid",
                ApplyError::Stale { .. } => "stale",
            };
            tracing::warn!(
                key = %key,
                mod_revision,
                kind,
                error = %e,
                "policy snapshot refused; the last good one stays"
            );
        }
    }
}
