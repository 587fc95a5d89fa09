//! The Kafka event sink (`events.sink: kafka`): the distributed mode's way out.
//!
//! Each record goes to `<topic_prefix>error_events`, `<topic_prefix>traffic_samples` or
//! `<topic_prefix>route_counts`, keyed by its route (so one route's records share a partition
//! and stay in order), with the record's serde JSON as the body ([`GatewayRecord::to_json`],
//! tagged by `kind`).
//!
//! Nothing here waits on a broker. [`sink::run`](crate::sink::run) hands batches to
//! [`KafkaSink::deliver`], which only enqueues into librdkafka's bounded producer queue; a
//! background thread owned by the producer sends and collects delivery reports. Records that
//! do not make it are counted in `enforcer_events_dropped_total{kind,reason}`:
//! `kafka_queue_full` when the producer queue is full (the rest of the batch is dropped),
//! `kafka_delivery_failed` when a record was not acknowledged within `message_timeout_ms`
//! (broker down, topic unwritable), `kafka_error` for any other enqueue failure. Each reason
//! is logged at most once every [`LOG_EVERY`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use schemas::GatewayRecord;
use schemas::names::RECORD_TOPIC_SUFFIXES;

use crate::config::KafkaSinkConfig;
use crate::metrics::Metrics;
use crate::sink::{EventSink, SinkError};

/// Least time between two log lines about the same kind of loss.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Records librdkafka holds waiting for the broker (`queue.buffering.max.messages`); beyond
/// it, enqueueing fails at once and the batch is dropped and counted.
pub const PRODUCER_QUEUE_MESSAGES: u32 = 200_000;

/// Longest a shutdown waits for queued records to be delivered (or `message_timeout_ms`
/// when shorter: by then every record is delivered or expired anyway).
const CLOSE_FLUSH: Duration = Duration::from_secs(10);

const KINDS: [&str; 3] = ["error", "sample", "counts"];

/// Logs one line per reason at most every [`LOG_EVERY`] (shared with the producer thread).
#[derive(Debug)]
struct LogLimiter {
    start: Instant,
    /// Milliseconds after `start` of the last line, plus one (0 = never).
    last_ms: AtomicU64,
}

impl LogLimiter {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Counts delivery failures reported by librdkafka's producer thread.
#[derive(Debug)]
pub struct DeliveryCounter {
    dropped: IntCounterVec,
    log: LogLimiter,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    /// The record's index in [`RECORD_TOPIC_SUFFIXES`] (its kind), for the drop label.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, kind: usize) {
        if let Err((e, _)) = result {
            let kind = KINDS.get(kind).copied().unwrap_or("unknown");
            self.dropped
                .with_label_values(&[kind, "kafka_delivery_failed"])
                .inc();
            if self.log.allow() {
                tracing::warn!(kind, error = %e, "kafka delivery failed; records dropped (logged at most every 5 s)");
            }
        }
    }
}

/// Produces the enforcer's records to Kafka without ever waiting for a broker.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryCounter>,
    topics: [String; 3],
    dropped: IntCounterVec,
    log: Arc<LogLimiter>,
    close_flush: Duration,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer (no broker contact yet: librdkafka connects in the background).
    pub fn new(config: &KafkaSinkConfig, metrics: &Metrics) -> Result<Self, SinkError> {
        let context = DeliveryCounter {
            dropped: metrics.events_dropped.clone(),
            log: LogLimiter::new(),
        };
        let producer: ThreadedProducer<DeliveryCounter> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .set("acks", config.acks.as_librdkafka())
            .set(
                "queue.buffering.max.messages",
                PRODUCER_QUEUE_MESSAGES.to_string(),
            )
            // Per-route order: no reordering on retry (idempotence needs acks=all).
            .set(
                "enable.idempotence",
                if config.acks == crate::config::KafkaAcks::All {
                    "true"
                } else {
                    "false"
                },
            )
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", "none")
            .create_with_context(context)
            .map_err(|e| SinkError(format!("creating the kafka producer: {e}")))?;
        let topics = RECORD_TOPIC_SUFFIXES.map(|s| format!("{}{s}", config.topic_prefix));
        Ok(Self {
            producer,
            topics,
            dropped: metrics.events_dropped.clone(),
            log: Arc::new(LogLimiter::new()),
            close_flush: CLOSE_FLUSH.min(Duration::from_millis(config.message_timeout_ms)),
        })
    }

    /// The topics records go to: error events, traffic samples, route counts.
    pub fn topics(&self) -> &[String; 3] {
        &self.topics
    }

    fn count_dropped(&self, rest: &[GatewayRecord], reason: &'static str, error: &KafkaError) {
        let mut by_kind = [0u64; 3];
        for r in rest {
            by_kind[r.topic_index()] += 1;
        }
        for (kind, n) in KINDS.iter().zip(by_kind) {
            if n > 0 {
                self.dropped.with_label_values(&[kind, reason]).inc_by(n);
            }
        }
        if self.log.allow() {
            tracing::warn!(records = rest.len(), reason, error = %error, "kafka producer refused records; dropped (logged at most every 5 s)");
        }
    }
}

impl EventSink for KafkaSink {
    async fn deliver(&mut self, batch: &[GatewayRecord]) -> Result<(), SinkError> {
        for (i, record) in batch.iter().enumerate() {
            let kind = record.topic_index();
            let body = record.to_json();
            let sent = self.producer.send(
                BaseRecord::with_opaque_to(&self.topics[kind], kind)
                    .key(record.route())
                    .payload(&body),
            );
            if let Err((e, _)) = sent {
                // Enqueueing failed synchronously: the producer is full or broken. Waiting
                // would back up the event queue, so the rest of the batch goes, counted.
                let reason = match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        "kafka_queue_full"
                    }
                    _ => "kafka_error",
                };
                self.count_dropped(&batch[i..], reason, &e);
                break;
            }
        }
        Ok(())
    }

    async fn close(&mut self) {
        // Give queued records a bounded chance to leave; the rest are purged on drop and
        // reported (and counted) as failed deliveries.
        let wait = self.close_flush;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(wait)).await;
    }
}
