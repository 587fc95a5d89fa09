//! Error events into PostgreSQL, off the job's path.
//!
//! [`PgTeeSource`] wraps the job's record source: every error event it returns is also
//! offered (`try_send`, never waiting) to a bounded queue; [`run_writer`] drains the queue
//! into `error_events`, with the cluster of the event's template when a replica assigned it
//! (`templates`), a `cluster_members` row and the cluster's `error_count`. A full queue or a
//! failed write drops events and counts them (`pipeline_postgres_events_dropped_total`):
//! the job never waits on the database. Redelivered events (same `event_id`) are written
//! once.

use std::sync::Arc;

use schemas::{ErrorEvent, GatewayRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PgError, PgStore, query, to_db_id};
use crate::io::{IoError, RecordSource};

/// Most events written in one transaction.
const WRITE_BATCH: usize = 256;

/// One statement per event: the event, its membership and the cluster's count, only when
/// the event is new.
pub const INSERT_EVENT_SQL: &str = "WITH e AS ( \
     INSERT INTO error_events (event_id, trace_id, span_id, request_path, method, service_name, \
         status_code, error_message, stack_trace, \"timestamp\", route, template_id, cluster_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_timestamp($10::float8 / 1000), $11, $12, \
         (SELECT cluster_id FROM templates WHERE template_id = $12)) \
     ON CONFLICT (event_id) DO NOTHING \
     RETURNING event_id, cluster_id), \
   m AS (INSERT INTO cluster_members (cluster_id, event_id) \
     SELECT cluster_id, event_id FROM e WHERE cluster_id IS NOT NULL \
     ON CONFLICT DO NOTHING) \
   UPDATE clusters SET error_count = error_count + 1, update_time = now() \
     WHERE cluster_id = (SELECT cluster_id FROM e)";

/// A record source that also queues its error events for PostgreSQL.
#[derive(Debug)]
pub struct PgTeeSource<S> {
    inner: S,
    events: mpsc::Sender<ErrorEvent>,
    store: Arc<PgStore>,
}

impl<S: RecordSource> PgTeeSource<S> {
    /// Wraps `inner`; events go to `events` (see [`event_queue`]).
    pub fn new(inner: S, events: mpsc::Sender<ErrorEvent>, store: Arc<PgStore>) -> Self {
        Self {
            inner,
            events,
            store,
        }
    }
}

/// The bounded queue between the job and [`run_writer`].
pub fn event_queue(store: &PgStore) -> (mpsc::Sender<ErrorEvent>, mpsc::Receiver<ErrorEvent>) {
    mpsc::channel(store.settings().event_queue.max(1))
}

impl<S: RecordSource> RecordSource for PgTeeSource<S> {
    async fn next_batch(&mut self, max: usize) -> Option<Vec<GatewayRecord>> {
        let batch = self.inner.next_batch(max).await?;
        for record in &batch {
            if let GatewayRecord::Error(e) = record
                && self.events.try_send(e.clone()).is_err()
            {
                self.store.metrics().events_dropped.inc();
            }
        }
        Some(batch)
    }

    async fn commit(&mut self) -> Result<(), IoError> {
        self.inner.commit().await
    }
}

/// Writes queued events until `shutdown` (or every sender is gone).
pub async fn run_writer(
    store: Arc<PgStore>,
    mut events: mpsc::Receiver<ErrorEvent>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        batch.clear();
        tokio::select! {
            () = shutdown.cancelled() => return,
            n = events.recv_many(&mut batch, WRITE_BATCH) => if n == 0 { return },
        }
        let n = batch.len() as u64;
        match write(&store, &batch).await {
            Ok(()) => store.metrics().events_written.inc_by(n),
            Err(_) => store.metrics().events_dropped.inc_by(n),
        }
    }
}

/// Writes `events` in one transaction.
pub async fn write(store: &PgStore, events: &[ErrorEvent]) -> Result<(), PgError> {
    store
        .call(
            "write_events",
            store.settings().request_timeout * 5,
            async |c| {
                let q = query("write_events");
                let tx = c.transaction().await.map_err(&q)?;
                let statement = tx.prepare(INSERT_EVENT_SQL).await.map_err(&q)?;
                for e in events {
                    let stack = e.stack.join("\n");
                    let template_id = to_db_id(e.template_id);
                    let timestamp = e.timestamp_ms as f64;
                    tx.execute(
                        &statement,
                        &[
                            &e.event_id,
                            &e.trace_id,
                            &e.span_id,
                            &e.path,
                            &e.method,
                            &e.upstream,
                            &i32::from(e.status),
                            &e.message,
                            &stack,
                            &timestamp,
                            &e.route,
                            &template_id,
                        ],
                    )
                    .await
                    .map_err(&q)?;
                }
                tx.commit().await.map_err(&q)
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ChannelSource;
    use crate::postgres::{PgMetrics, PgSettings};

    fn error(id: &str) -> GatewayRecord {
        GatewayRecord::Error(ErrorEvent {
            schema_version: schemas::event::EVENT_SCHEMA_VERSION,
            event_id: id.into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            timestamp_ms: 1_700_000_000_000,
            route: "payments".into(),
            method: "POST".into(),
            path: "/pay".into(),
            upstream: "127.0.0.1:9000".into(),
            status: 503,
            error_kind: schemas::event::ErrorKind::Status,
            message: "channel timeout".into(),
            stack: vec![],
            latency_ms: 1.0,
            template_id: 1,
            dimensions: Default::default(),
            sample_rate: 1.0,
            policy_id: None,
        })
    }

    #[tokio::test]
    async fn the_job_gets_every_record_and_a_full_queue_drops_and_counts() {
        let metrics =
            PgMetrics::register(&prometheus::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
        // Never connected: the tee only queues.
        let store = Arc::new(
            PgStore::new(PgSettings::new("postgres://u:p@127.0.0.1:1/db"), metrics)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let (tx, mut rx) = mpsc::channel(2);
        let (records_tx, records_rx) = mpsc::channel(16);
        let counts = GatewayRecord::Counts(schemas::RouteCounts {
            schema_version: schemas::event::EVENT_SCHEMA_VERSION,
            second_ms: 1_700_000_000_000,
            route: "payments".into(),
            requests: 10,
            errors: 3,
            rejected: 0,
        });
        let sent = vec![error("a"), counts, error("b"), error("c")];
        for r in &sent {
            records_tx
                .send(r.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut tee = PgTeeSource::new(ChannelSource(records_rx), tx, Arc::clone(&store));
        assert_eq!(tee.next_batch(16).await, Some(sent));
        let queued: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.event_id)
            .collect();
        assert_eq!(queued, ["a", "b"], "errors only, up to the queue's bound");
        assert_eq!(store.metrics().events_dropped.get(), 1);
    }
}
