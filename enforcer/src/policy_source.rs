//! Policy sources: one task owns the source and writes the [`PolicyStore`]; requests only read.
//!
//! The embedded source needs no task: the in-process pipeline calls [`PolicyStore::apply`]
//! directly. [`FileSource`] reads a JSON snapshot file whenever it changes; distributed mode
//! plugs the etcd watcher ([`crate::etcd_source::EtcdSource`]) in through the same trait.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::policy::{ApplyError, PolicyStore};

/// Feeds snapshots into the store until shutdown.
pub trait PolicySource: Send + 'static {
    /// Runs the source. Refused snapshots are counted and logged; the last good one stays.
    fn run(
        self,
        store: Arc<PolicyStore>,
        metrics: Metrics,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Applies one snapshot from any source (file, etcd, the admin `PUT /policies`) and keeps the
/// metrics in step: the version gauge on success, the refusal counter otherwise. Callers log.
pub fn apply_counted(
    store: &PolicyStore,
    metrics: &Metrics,
    clock: Clock,
    bytes: &[u8],
) -> Result<u64, ApplyError> {
    let applied = store.apply_json(bytes, clock.monotonic_ms());
    match &applied {
        Ok(version) => metrics
            .snapshot_version
            .set(i64::try_from(*version).unwrap_or(i64::MAX)),
        Err(_) => metrics.snapshots_refused.inc(),
    }
    applied
}

/// A JSON snapshot file, re-read when its modification time changes (checked every `poll`).
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The snapshot file.
    pub path: PathBuf,
    /// How often to check it.
    pub poll: Duration,
}

impl PolicySource for FileSource {
    async fn run(
        self,
        store: Arc<PolicyStore>,
        metrics: Metrics,
        clock: Clock,
        shutdown: CancellationToken,
    ) {
        let mut last_modified = None;
        let mut interval = tokio::time::interval(self.poll);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let modified = tokio::fs::metadata(&self.path)
                .await
                .and_then(|m| m.modified())
                .ok();
            if modified.is_none() || modified == last_modified {
                continue;
            }
            last_modified = modified;
            match tokio::fs::read(&self.path).await {
                Ok(bytes) => match apply_counted(&store, &metrics, clock, &bytes) {
                    Ok(v) => {
                        tracing::info!(path = %self.path.display(), version = v, "policy snapshot applied")
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "policy snapshot refused; the last good one stays");
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the policy file")
                }
            }
        }
    }
}
