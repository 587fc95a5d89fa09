//! Event sinks: where the enforcer's records go once they leave the request path.
//!
//! The request path only `try_send`s into the bounded queue ([`crate::events::EventEmitter`]);
//! one task per enforcer drains the queue in batches into an [`EventSink`]. A sink that fails
//! loses that batch (counted), never blocks the queue for long, and never reaches back into a
//! request. The embedded mode skips the sink entirely and hands the queue's receiver to the
//! in-process pipeline; distributed mode plugs the Kafka sink ([`crate::kafka_sink`]) in here.

use std::future::Future;

use schemas::GatewayRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most records handed to a sink at once.
pub const MAX_BATCH: usize = 512;

/// Why a sink could not deliver a batch.
#[derive(Debug, thiserror::Error)]
#[error("event sink: {0}")]
pub struct SinkError(pub String);

/// Delivers batches of records somewhere.
pub trait EventSink: Send + 'static {
    /// Delivers one batch; on error the batch is dropped and counted.
    fn deliver(
        &mut self,
        batch: &[GatewayRecord],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once when the queue ends (shutdown): a sink that buffers gives what it holds a
    /// bounded chance to leave. Default: nothing.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Drops everything (benchmarks, or an enforcer whose events nobody reads).
#[derive(Debug, Default)]
pub struct DiscardSink;

impl EventSink for DiscardSink {
    async fn deliver(&mut self, _batch: &[GatewayRecord]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Drains `rx` into `sink` until shutdown or until every sender is gone.
pub async fn run<S: EventSink>(
    mut rx: mpsc::Receiver<GatewayRecord>,
    mut sink: S,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            () = shutdown.cancelled() => break,
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        metrics
            .queue_depth
            .set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
        if let Err(e) = sink.deliver(&batch).await {
            metrics
                .events_dropped
                .with_label_values(&["batch", "sink_error"])
                .inc_by(batch.len() as u64);
            tracing::warn!(records = batch.len(), error = %e, "event batch dropped");
        }
        batch.clear();
    }
    sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;
    impl EventSink for Failing {
        async fn deliver(&mut self, _batch: &[GatewayRecord]) -> Result<(), SinkError> {
            Err(SinkError("broker down".into()))
        }
    }

    #[tokio::test]
    async fn a_failing_sink_loses_its_batch_counted_and_keeps_draining() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let counts = schemas::RouteCounts {
            schema_version: 1,
            second_ms: 0,
            route: "r".into(),
            requests: 1,
            errors: 0,
            rejected: 0,
        };
        for _ in 0..3 {
            tx.send(GatewayRecord::Counts(counts.clone()))
                .await
                .unwrap();
        }
        drop(tx);
        run(rx, Failing, metrics.clone(), CancellationToken::new()).await;
        assert_eq!(
            metrics
                .events_dropped
                .with_label_values(&["batch", "sink_error"])
                .get(),
            3
        );
    }
}
