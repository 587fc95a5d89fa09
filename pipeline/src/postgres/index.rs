//! The shared cluster index for the SQL functions: [`PgClusterIndex`] implements
//! [`SharedClusterIndex`] over a [`PgStore`].
//!
//! The functions are synchronous and run on DataFusion's tokio workers, where a client that
//! blocks on its own runtime would panic. So the store lives on a dedicated thread with a
//! current-thread runtime; a call hands it a request through a bounded queue (`try_send`,
//! never blocking on the queue) and waits for the answer on a std channel, at most the
//! request timeout. After a failure, calls fail at once for `retry_after`, so a dead server
//! costs the job one timeout, not one per new template; the clusterer assigns locally.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use udfs::cluster::ClusterConfig;
use udfs::evidence::Evidence;
use udfs::shared::{NewTemplate, SharedClusterIndex, SharedIndexError, SharedTemplate};

use super::{PgError, PgStore};

type Reply<T> = SyncSender<Result<T, PgError>>;

enum Request {
    Lookup(u64, Reply<Option<SharedTemplate>>),
    Assign(Box<OwnedTemplate>, Box<ClusterConfig>, Reply<String>),
    Restore(Reply<Vec<SharedTemplate>>),
}

struct OwnedTemplate {
    template_id: u64,
    template: String,
    vector: Vec<f32>,
    evidence: Evidence,
}

/// The shared index, answered by a [`PgStore`] on its own thread.
#[derive(Debug, Clone)]
pub struct PgClusterIndex {
    requests: mpsc::Sender<Request>,
    request_timeout: Duration,
    restore_timeout: Duration,
    retry_after: Duration,
    down_until: Arc<Mutex<Option<Instant>>>,
}

impl PgClusterIndex {
    /// Starts the thread serving `store`; it connects (and migrates) on the first request
    /// and ends when every handle is dropped.
    pub fn start(store: PgStore) -> Result<Self, PgError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Config(format!("runtime for the postgres index: {e}")))?;
        let (requests, rx) = mpsc::channel(256);
        let settings = store.settings().clone();
        std::thread::Builder::new()
            .name("lag-pg-index".into())
            .spawn(move || runtime.block_on(serve(store, rx)))
            .map_err(|e| PgError::Config(format!("thread for the postgres index: {e}")))?;
        Ok(Self {
            requests,
            request_timeout: settings.request_timeout,
            restore_timeout: settings.restore_timeout,
            retry_after: settings.retry_after,
            down_until: Arc::new(Mutex::new(None)),
        })
    }

    fn call<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, SharedIndexError> {
        let mut down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = *down {
            if Instant::now() < until {
                return Err(SharedIndexError(
                    "postgres failed recently; not asking again yet".into(),
                ));
            }
            *down = None;
        }
        drop(down);
        let (tx, rx) = sync_channel(1);
        let answer = match self.requests.try_send(make(tx)) {
            Err(mpsc::error::TrySendError::Full(_)) => Err("the request queue is full".into()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PgError::Closed.to_string()),
            Ok(()) => match rx.recv_timeout(timeout) {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            },
        };
        answer.map_err(|e| {
            *self
                .down_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + self.retry_after);
            SharedIndexError(e)
        })
    }
}

impl SharedClusterIndex for PgClusterIndex {
    fn lookup(&self, template_id: u64) -> Result<Option<SharedTemplate>, SharedIndexError> {
        self.call(self.request_timeout, |r| Request::Lookup(template_id, r))
    }

    fn assign(
        &self,
        t: &NewTemplate<'_>,
        config: &ClusterConfig,
    ) -> Result<String, SharedIndexError> {
        let owned = OwnedTemplate {
            template_id: t.template_id,
            template: t.template.to_owned(),
            vector: t.vector.to_vec(),
            evidence: t.evidence.clone(),
        };
        self.call(self.request_timeout, |r| {
            Request::Assign(Box::new(owned), Box::new(config.clone()), r)
        })
    }

    fn restore(&self) -> Result<Vec<SharedTemplate>, SharedIndexError> {
        self.call(self.restore_timeout, Request::Restore)
    }
}

/// Answers requests one at a time (the store serialises them anyway) until every sender
/// is gone. A reply nobody waits for any more (timed out) is dropped.
async fn serve(store: PgStore, mut requests: mpsc::Receiver<Request>) {
    while let Some(request) = requests.recv().await {
        match request {
            Request::Lookup(id, reply) => {
                let _ = reply.send(store.lookup(id).await);
            }
            Request::Assign(t, config, reply) => {
                let new = NewTemplate {
                    template_id: t.template_id,
                    template: &t.template,
                    vector: &t.vector,
                    evidence: &t.evidence,
                };
                let _ = reply.send(store.assign(&new, &config).await);
            }
            Request::Restore(reply) => {
                let _ = reply.send(store.restore().await);
            }
        }
    }
}
