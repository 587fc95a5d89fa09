//! Decisions over Kafka: the `policies` topic between the windowed SQL and the applier.
//!
//! ```text
//! replica A: error topics (its partitions) ─► engine ─► DecisionBatch ─┐
//! replica B: error topics (its partitions) ─► engine ─► DecisionBatch ─┤► policies topic
//! Arroyo job (optional): cluster_decisions rows ────────────────────────┘        │
//!            every replica's applier reads all of it; the etcd leader publishes ◄─┘
//! ```
//!
//! In distributed mode the engine replicas split the record partitions in one consumer group,
//! so no replica sees every cluster. Each sends what its closed windows decided — and, even
//! when nothing was decided, which decision window it has closed — as one [`DecisionBatch`]
//! per pass, keyed by replica. Every replica's applier reads every batch (manual assignment of
//! all partitions, from the end: old decisions are stale), so a standby's decider holds the
//! same state as the leader's and takes over warm. A cluster is judged quiet for a window only
//! once every replica heard from in the last [`REPLICA_SILENCE`] has closed that window
//! ([`ClosedWindows`]).
//!
//! An external engine (an Arroyo job whose Kafka sink writes the SQL's `cluster_decisions`
//! rows) reaches the same applier: a message that is a JSON object without `decisions` is
//! read as one row, by the same column reader the embedded engine's output goes through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::decision::{self, Decision};
use crate::engine::{SinkOutput, Window};
use crate::io::IoError;

/// Version of [`DecisionBatch`]'s JSON form.
pub const DECISION_SCHEMA_VERSION: u16 = 1;

/// A replica not heard from for this long no longer holds quiet verdicts back.
pub const REPLICA_SILENCE: Duration = Duration::from_secs(30);

/// One engine pass of one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionBatch {
    /// [`DECISION_SCHEMA_VERSION`].
    pub schema_version: u16,
    /// The sending replica (its etcd instance name).
    pub replica: String,
    /// End of the newest decision window this replica has closed, Unix ms.
    pub closed_window_end_ms: Option<i64>,
    /// The decisions of the windows that closed in this pass.
    pub decisions: Vec<Decision>,
}

/// A message on the policies topic, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A batch from one of our engine replicas.
    Batch(DecisionBatch),
    /// Rows from an external engine (`cluster_decisions` columns, one message per row).
    Rows(Vec<Decision>),
}

/// Why a message on the policies topic could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not an object.
    #[error("not a JSON object: {0}")]
    Malformed(String),
    /// A batch of a version this build does not read.
    #[error("decision batch schema_version {0} (this build reads {DECISION_SCHEMA_VERSION})")]
    UnsupportedVersion(u64),
    /// A `cluster_decisions` row the column reader refused.
    #[error("{0}")]
    Row(String),
}

/// Reads one message: a [`DecisionBatch`], or one `cluster_decisions` row from an external
/// engine (its window end from a `window_end_ms` column when present, else `now_ms`).
pub fn decode(body: &[u8], now_ms: i64) -> Result<Received, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(DecodeError::Malformed("expected an object".into()));
    };
    if map.contains_key("decisions") {
        let version = map
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if version != u64::from(DECISION_SCHEMA_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        return serde_json::from_value(value)
            .map(Received::Batch)
            .map_err(|e| DecodeError::Malformed(e.to_string()));
    }
    let end = map
        .get("window_end_ms")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(now_ms);
    row_decisions(&value, end).map(Received::Rows)
}

/// One `cluster_decisions` row as JSON, through Arrow and [`decision::read`].
fn row_decisions(
    row: &serde_json::Value,
    window_end_ms: i64,
) -> Result<Vec<Decision>, DecodeError> {
    let bad = |e: &dyn std::fmt::Display| DecodeError::Row(format!("cluster_decisions row: {e}"));
    let schema =
        infer_json_schema_from_iterator(std::iter::once(Ok(row.clone()))).map_err(|e| bad(&e))?;
    let mut decoder = ReaderBuilder::new(Arc::new(schema))
        .build_decoder()
        .map_err(|e| bad(&e))?;
    decoder
        .serialize(std::slice::from_ref(row))
        .map_err(|e| bad(&e))?;
    let batch = decoder
        .flush()
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad(&"empty"))?;
    let output = SinkOutput {
        sink: decision::SINK.to_owned(),
        query: 0,
        window: Window {
            start_ms: window_end_ms,
            end_ms: window_end_ms,
        },
        batches: vec![batch],
    };
    decision::read(&output)
        .into_iter()
        .map(|r| r.map_err(|e| DecodeError::Row(e.to_string())))
        .collect()
}

/// The newest decision window every live replica has closed.
#[derive(Debug, Default)]
pub struct ClosedWindows {
    replicas: HashMap<String, (i64, Instant)>,
}

impl ClosedWindows {
    /// Notes that `replica` has closed windows up to `end_ms`, as of `now`.
    pub fn report(&mut self, replica: &str, end_ms: i64, now: Instant) {
        let e = self
            .replicas
            .entry(replica.to_owned())
            .or_insert((end_ms, now));
        e.0 = e.0.max(end_ms);
        e.1 = now;
    }

    /// The smallest closed window end among replicas heard from within [`REPLICA_SILENCE`]
    /// of `now`; replicas silent longer are forgotten (a dead replica does not hold every
    /// quiet verdict back). `None` when no replica is live.
    pub fn closed(&mut self, now: Instant) -> Option<i64> {
        self.replicas
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < REPLICA_SILENCE);
        self.replicas.values().map(|(end, _)| *end).min()
    }
}

/// Where the decision topic lives.
#[derive(Debug, Clone)]
pub struct PoliciesTopicConfig {
    /// Bootstrap brokers.
    pub brokers: String,
    /// The topic (default [`schemas::names::POLICIES_TOPIC`]).
    pub topic: String,
    /// This replica's name (the message key, and how the applier tells replicas apart).
    pub replica: String,
}

/// Sends this replica's decision batches; each send waits for the broker's acknowledgement,
/// so the job commits its record offsets only after their decisions are durable.
pub struct DecisionProducer {
    producer: FutureProducer,
    topic: String,
    replica: String,
}

impl std::fmt::Debug for DecisionProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionProducer")
            .field("topic", &self.topic)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl DecisionProducer {
    /// A producer with idempotent, fully acknowledged writes.
    pub fn new(config: &PoliciesTopicConfig) -> Result<Self, IoError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(|e| IoError(format!("creating the decision producer: {e}")))?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            replica: config.replica.clone(),
        })
    }

    /// Sends one pass's decisions and closed window; `Ok` once the broker has it.
    pub async fn send(
        &self,
        closed_window_end_ms: Option<i64>,
        decisions: Vec<Decision>,
    ) -> Result<(), IoError> {
        let batch = DecisionBatch {
            schema_version: DECISION_SCHEMA_VERSION,
            replica: self.replica.clone(),
            closed_window_end_ms,
            decisions,
        };
        let body = serde_json::to_vec(&batch).map_err(|e| IoError(e.to_string()))?;
        let record = FutureRecord::to(&self.topic)
            .key(self.replica.as_str())
            .payload(&body);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| IoError(format!("sending decisions to {}: {e}", self.topic)))
    }
}

/// Reads every partition of the policies topic from its end (no consumer group: every
/// replica's applier sees every batch).
pub struct DecisionConsumer {
    consumer: Arc<StreamConsumer>,
    topic: String,
}

impl std::fmt::Debug for DecisionConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionConsumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DecisionConsumer {
    /// Assigns every partition of the topic at its end. Fails when the topic cannot be found.
    pub async fn new(config: &PoliciesTopicConfig) -> Result<Self, IoError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            // Assigned, not subscribed: the group id only satisfies the client.
            .set("group.id", format!("lag-applier-{}", config.replica))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| IoError(format!("creating the decision consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let topic = config.topic.clone();
        let (c, t) = (Arc::clone(&consumer), topic.clone());
        let partitions = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(10))
                .map(|m| {
                    m.topics()
                        .iter()
                        .filter(|mt| mt.name() == t && mt.error().is_none())
                        .flat_map(|mt| mt.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                        .collect::<Vec<i32>>()
                })
        })
        .await
        .map_err(|e| IoError(format!("metadata task: {e}")))?
        .map_err(|e| IoError(format!("reading the metadata of {topic}: {e}")))?;
        if partitions.is_empty() {
            return Err(IoError(format!(
                "topic {topic} has no partitions (create it: deploy/services.sh up kafka does)"
            )));
        }
        let mut list = TopicPartitionList::new();
        for p in partitions {
            list.add_partition_offset(&topic, p, Offset::End)
                .map_err(|e| IoError(format!("assigning {topic}/{p}: {e}")))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| IoError(format!("assigning {topic}: {e}")))?;
        Ok(Self { consumer, topic })
    }

    /// The next message's body (cancel-safe); a consumer error is returned, not fatal.
    pub async fn next(&self) -> Result<Vec<u8>, IoError> {
        let m = self
            .consumer
            .recv()
            .await
            .map_err(|e| IoError(format!("reading {}: {e}", self.topic)))?;
        Ok(m.payload().unwrap_or_default().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(cluster: &str, end: i64) -> Decision {
        let row = serde_json::json!({
            "cluster_id": cluster, "errors": 80, "decision": "none", "severity": 0.5,
        });
        match row_decisions(&row, end) {
            Ok(mut d) if d.len() == 1 => d.remove(0),
            other => panic!("row: {other:?}"),
        }
    }

    #[test]
    fn a_batch_round_trips_through_json() {
        let batch = DecisionBatch {
            schema_version: DECISION_SCHEMA_VERSION,
            replica: "a".into(),
            closed_window_end_ms: Some(10_000),
            decisions: vec![decision("c1", 10_000)],
        };
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        assert_eq!(decode(&body, 0), Ok(Received::Batch(batch)));
    }

    #[test]
    fn an_external_engine_row_is_read_by_the_sql_column_reader() {
        let row = br#"{"cluster_id":"c9","errors":120,"decision":"circuit_break","severity":0.9,
            "slice":"{\"any\":[{\"route\":\"pay\",\"all\":[]}]}",
            "window_end_ms":20000}"#;
        let Ok(Received::Rows(rows)) = decode(row, 0) else {
            panic!("not read: {:?}", decode(row, 0));
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cluster_id, "c9");
        assert_eq!(rows[0].errors, 120);
        assert_eq!(rows[0].window_end_ms, 20_000);
        assert_eq!(
            rows[0].slice.as_ref().map(|s| s.any[0].route.as_str()),
            Some("pay")
        );
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert!(matches!(decode(b"nope", 0), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode(b"[1,2]", 0),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode(br#"{"schema_version":9,"decisions":[]}"#, 0),
            Err(DecodeError::UnsupportedVersion(9))
        );
        // A row without the required columns is refused by the column reader.
        assert!(matches!(
            decode(br#"{"errors":3}"#, 0),
            Err(DecodeError::Row(_))
        ));
    }

    #[test]
    fn a_window_is_closed_once_every_live_replica_closed_it() {
        let t0 = Instant::now();
        let mut w = ClosedWindows::default();
        assert_eq!(w.closed(t0), None);
        w.report("a", 20_000, t0);
        w.report("b", 15_000, t0);
        assert_eq!(w.closed(t0), Some(15_000));
        w.report("b", 25_000, t0 + Duration::from_secs(1));
        assert_eq!(w.closed(t0 + Duration::from_secs(1)), Some(20_000));
        // A stays silent past REPLICA_SILENCE (it died): B alone decides.
        let later = t0 + REPLICA_SILENCE + Duration::from_secs(1);
        w.report("b", 30_000, later);
        assert_eq!(w.closed(later), Some(30_000));
        // Reports never move a replica's window backwards.
        w.report("b", 5_000, later);
        assert_eq!(w.closed(later), Some(30_000));
    }
}
