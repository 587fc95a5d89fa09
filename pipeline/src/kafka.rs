//! The Kafka record source: the distributed mode's way in.
//!
//! [`KafkaSource`] is a consumer in a group on the enforcers' three topics
//! (`<prefix>error_events`, `<prefix>traffic_samples`, `<prefix>route_counts`; each message's
//! body is a [`GatewayRecord`] as JSON, keyed by route). Offsets are never committed
//! automatically: [`RecordSource::commit`] commits the positions after everything
//! [`RecordSource::next_batch`] has returned so far, and the job calls it only once the results
//! of those records are published — at-least-once. A message that does not decode is counted
//! in `pipeline_kafka_records_skipped_total{reason}`, logged (at most every few seconds) and
//! skipped; its offset is committed with the records around it, so it never stops the job.
//!
//! `next_batch` is cancel-safe (the job `select!`s on it): records taken from the consumer are
//! kept in the source until a call returns them, and only returned records are committed.
//!
//! Processing is idempotent across redeliveries: a message at an offset this source already
//! took (a partition handed back after a rebalance, re-read from its last commit) is skipped,
//! and so is an error event whose `event_id` was seen among the last [`RECENT_EVENT_IDS`]
//! (a producer retry that wrote it twice); both are counted as `reason="duplicate"`.
//!
//! The three topics must have the same partition count, and the group assigns partitions by
//! range: a route's error events, samples and counts (all keyed by the route) then land on
//! the same replica, so its slice learner sees the route's traffic with its errors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::GatewayRecord;
use schemas::event::DecodeError;
use schemas::names::{DEFAULT_TOPIC_PREFIX, RECORD_TOPIC_SUFFIXES};
use xxhash_rust::xxh3::xxh3_64;

use crate::io::{IoError, RecordSource};

/// Least time between two log lines about skipped messages or consumer errors.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Once a batch has its first record, how long it may wait for more before returning.
const BATCH_LINGER: Duration = Duration::from_millis(10);

/// Error-event ids remembered for de-duplication (between this and twice this many, in two
/// generations: about 1.6 MB at the upper bound).
pub const RECENT_EVENT_IDS: usize = 100_000;

/// Ids seen recently, in two generations: when the current one is full it becomes the
/// previous one and the oldest generation is dropped — bounded memory, O(1) per id, and an
/// id is remembered for at least `capacity` further ids.
#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl RecentIds {
    /// Remembers at least the last `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
        }
    }

    /// Records `id`; `false` when it was seen before (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        let h = xxh3_64(id.as_bytes());
        if self.current.contains(&h) || self.previous.contains(&h) {
            return false;
        }
        if self.current.len() >= self.capacity {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(h);
        true
    }
}

/// Where and how the source reads.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group; committed positions belong to it.
    pub group_id: String,
    /// The enforcers' `events.kafka.topic_prefix`. Default `gateway.`.
    pub topic_prefix: String,
    /// How long `next_batch` waits for a first record before returning an empty batch, so
    /// the job's other work (ticks, commands) keeps going. Default 200 ms.
    pub idle_wait: Duration,
    /// How long the group waits for a silent replica before handing its partitions to the
    /// others. Default 10 s (Kafka's 45 s would leave a dead replica's routes undecided for
    /// most of a minute); the broker's `group.min.session.timeout.ms` (6 s) is the floor.
    pub session_timeout: Duration,
}

impl KafkaSourceConfig {
    /// The defaults for `brokers` and `group_id`.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            idle_wait: Duration::from_millis(200),
            session_timeout: Duration::from_secs(10),
        }
    }

    /// The three topics, in the order of [`RECORD_TOPIC_SUFFIXES`].
    pub fn topics(&self) -> [String; 3] {
        RECORD_TOPIC_SUFFIXES.map(|s| format!("{}{s}", self.topic_prefix))
    }
}

/// One consumed record with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The topic it was read from.
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The message key (the enforcer writes the route).
    pub key: Option<String>,
    /// The decoded record.
    pub record: GatewayRecord,
}

/// A consumer-group source over the enforcers' topics.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    topics: [Arc<str>; 3],
    idle_wait: Duration,
    /// Taken from the consumer, not yet returned (kept across cancelled calls).
    buf: Vec<Received>,
    /// Next offset per partition of everything taken (records and skipped messages).
    taken: HashMap<(Arc<str>, i32), i64>,
    /// Next offset per partition of everything returned, not yet committed.
    returned: HashMap<(Arc<str>, i32), i64>,
    /// Next offset per partition of everything ever taken: lower offsets are redeliveries.
    seen: HashMap<(Arc<str>, i32), i64>,
    /// Error-event ids seen lately.
    event_ids: RecentIds,
    skipped: IntCounterVec,
    last_log: Option<Instant>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topics", &self.topics)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins the group and subscribes; registers `pipeline_kafka_records_skipped_total` in
    /// `registry`. The group is joined in the background on the first `next_batch`.
    pub fn new(config: &KafkaSourceConfig, registry: &Registry) -> Result<Self, IoError> {
        let skipped = IntCounterVec::new(
            Opts::new(
                "pipeline_kafka_records_skipped_total",
                "Kafka messages skipped: not a gateway record, or a duplicate (redelivered offset, repeated event id).",
            ),
            &["reason"],
        )
        .map_err(|e| IoError(e.to_string()))?;
        registry
            .register(Box::new(skipped.clone()))
            .map_err(|e| IoError(format!("registering kafka metrics: {e}")))?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            // At least once: positions move only in `commit`, after the job published.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A new group starts at the oldest retained record, not at "now".
            .set("auto.offset.reset", "earliest")
            // Topics created after the subscription are found within seconds, not minutes.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            // Partition i of every topic to the same replica: a route's records stay together.
            .set("partition.assignment.strategy", "range")
            .create()
            .map_err(|e| IoError(format!("creating the kafka consumer: {e}")))?;
        let topics = config.topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| IoError(format!("subscribing to {names:?}: {e}")))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topics: topics.map(Arc::from),
            idle_wait: config.idle_wait,
            buf: Vec::new(),
            taken: HashMap::new(),
            returned: HashMap::new(),
            seen: HashMap::new(),
            event_ids: RecentIds::new(RECENT_EVENT_IDS),
            skipped,
            last_log: None,
        })
    }

    /// Messages skipped so far (all reasons).
    pub fn skipped_total(&self) -> u64 {
        ["empty", "malformed", "unsupported_version", "duplicate"]
            .iter()
            .map(|r| self.skipped.with_label_values(&[r]).get())
            .sum()
    }

    /// Like [`RecordSource::next_batch`], with each record's topic, partition, offset and key.
    pub async fn next_received(&mut self, max: usize) -> Vec<Received> {
        let max = max.max(1);
        let consumer = Arc::clone(&self.consumer);
        let idle_deadline = tokio::time::Instant::now() + self.idle_wait;
        let mut linger_deadline = None;
        while self.buf.len() < max {
            let deadline = match linger_deadline {
                Some(d) => d,
                None if !self.buf.is_empty() => {
                    let d = tokio::time::Instant::now() + BATCH_LINGER;
                    linger_deadline = Some(d);
                    d
                }
                None => idle_deadline,
            };
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => self.take(&message),
                Ok(Err(e)) => self.log_consumer_error(&e),
            }
        }
        for (tp, next) in self.taken.drain() {
            let e = self.returned.entry(tp).or_insert(next);
            *e = (*e).max(next);
        }
        std::mem::take(&mut self.buf)
    }

    fn take(&mut self, m: &BorrowedMessage<'_>) {
        let topic = self
            .topics
            .iter()
            .find(|t| ***t == *m.topic())
            .cloned()
            .unwrap_or_else(|| Arc::from(m.topic()));
        let next = m.offset() + 1;
        let tp = (Arc::clone(&topic), m.partition());
        let e = self.taken.entry(tp.clone()).or_insert(next);
        *e = (*e).max(next);
        let seen = self.seen.entry(tp).or_insert(0);
        let redelivered = m.offset() < *seen;
        *seen = (*seen).max(next);
        let decoded = match m.payload() {
            _ if redelivered => Err("duplicate"),
            None => Err("empty"),
            Some(body) => match GatewayRecord::from_json(body) {
                Ok(GatewayRecord::Error(e)) if !self.event_ids.insert(&e.event_id) => {
                    Err("duplicate")
                }
                Ok(r) => Ok(r),
                Err(DecodeError::Malformed(_)) => Err("malformed"),
                Err(DecodeError::UnsupportedVersion(_)) => Err("unsupported_version"),
            },
        };
        match decoded {
            Ok(record) => self.buf.push(Received {
                topic,
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                record,
            }),
            Err("duplicate") => self.skipped.with_label_values(&["duplicate"]).inc(),
            Err(reason) => {
                self.skipped.with_label_values(&[reason]).inc();
                if self.should_log() {
                    tracing::warn!(
                        topic = %topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        reason,
                        skipped_total = self.skipped_total(),
                        "kafka message skipped: not a gateway record (logged at most every 5 s)"
                    );
                }
            }
        }
    }

    fn log_consumer_error(&mut self, e: &KafkaError) {
        if self.should_log() {
            tracing::warn!(error = %e, "kafka consumer error; still consuming (logged at most every 5 s)");
        }
    }

    fn should_log(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            return false;
        }
        self.last_log = Some(now);
        true
    }
}

impl RecordSource for KafkaSource {
    async fn next_batch(&mut self, max: usize) -> Option<Vec<GatewayRecord>> {
        Some(
            self.next_received(max)
                .await
                .into_iter()
                .map(|r| r.record)
                .collect(),
        )
    }

    async fn commit(&mut self) -> Result<(), IoError> {
        if self.returned.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &self.returned {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| IoError(format!("offset list: {e}")))?;
        }
        let consumer = Arc::clone(&self.consumer);
        let committed = tokio::task::spawn_blocking(move || {
            consumer.commit(&list, CommitMode::Sync).map(|()| list)
        })
        .await
        .map_err(|e| IoError(format!("commit task: {e}")))?;
        match committed {
            Ok(_) => {
                self.returned.clear();
                Ok(())
            }
            Err(e) => {
                // Partitions taken away by a rebalance cannot be committed by us any more;
                // their new owner re-reads them (at least once). Keep the rest for a retry.
                if let Ok(assigned) = self.consumer.assignment() {
                    let still: Vec<(String, i32)> = assigned
                        .elements()
                        .iter()
                        .map(|el| (el.topic().to_owned(), el.partition()))
                        .collect();
                    self.returned
                        .retain(|(t, p), _| still.iter().any(|(st, sp)| **st == **t && sp == p));
                }
                Err(IoError(format!("kafka commit: {e}")))
            }
        }
    }
}

/// Creates the three record topics with `partitions` partitions each (replication 1 when the
/// cluster has one broker, as on loopback); topics that exist already are left alone.
pub async fn create_topics(
    brokers: &str,
    topic_prefix: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), IoError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| IoError(format!("kafka admin client: {e}")))?;
    let names = RECORD_TOPIC_SUFFIXES.map(|s| format!("{topic_prefix}{s}"));
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| IoError(format!("creating topics: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(IoError(format!("creating topic {topic}: {code}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_id_is_a_duplicate_until_two_generations_have_passed() {
        let mut ids = RecentIds::new(2);
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        assert!(ids.insert("b"));
        // "c" starts a new generation; "a" and "b" are the previous one, still remembered.
        assert!(ids.insert("c"));
        assert!(!ids.insert("a"));
        assert!(!ids.insert("b"));
        assert!(ids.insert("d"));
        // "e" retires the generation holding "a" and "b": at least 2 ids are always kept.
        assert!(ids.insert("e"));
        assert!(!ids.insert("c"));
        assert!(!ids.insert("d"));
        assert!(ids.insert("a"));
    }
}
