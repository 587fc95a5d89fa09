//! Events out: error events, traffic samples and per-route counts, through a bounded queue.
//!
//! Nothing on the request path waits for the sink: records go in with `try_send`, and a full
//! queue or a dead sink drops the record and counts it. Error events are sampled at the
//! configured rate, except that the first few of each template in each second are always
//! kept — a new failure is never invisible. Each kept record carries the probability it was
//! kept with, so the pipeline can weight it back (1 / sample_rate).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use schemas::{ErrorEvent, GatewayRecord, RouteCounts, TrafficSample};
use tokio::sync::mpsc;

use crate::config::EventsConfig;
use crate::metrics::Metrics;

/// Per-template counts for the current second.
#[derive(Debug, Default)]
struct Sampler {
    second: i64,
    counts: HashMap<u64, u32>,
}

/// Exact per-route counters, flushed once a second as [`RouteCounts`].
#[derive(Debug, Default)]
pub struct RouteCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
}

impl RouteCounters {
    /// Counts one request.
    pub fn count(&self, is_error: bool, rejected: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if is_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if rejected {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> (u64, u64, u64) {
        (
            self.requests.swap(0, Ordering::Relaxed),
            self.errors.swap(0, Ordering::Relaxed),
            self.rejected.swap(0, Ordering::Relaxed),
        )
    }
}

/// The sending side of the event queue.
#[derive(Debug)]
pub struct EventEmitter {
    tx: mpsc::Sender<GatewayRecord>,
    sampler: Mutex<Sampler>,
    sampling_rate: f64,
    first_per_template: u32,
    traffic_sampling_rate: f64,
    metrics: Metrics,
}

impl EventEmitter {
    /// An emitter and the receiving end the sink drains.
    pub fn new(config: &EventsConfig, metrics: Metrics) -> (Self, mpsc::Receiver<GatewayRecord>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let emitter = Self {
            tx,
            sampler: Mutex::new(Sampler::default()),
            sampling_rate: config.sampling_rate,
            first_per_template: config.first_per_template,
            traffic_sampling_rate: config.traffic_sampling_rate,
            metrics,
        };
        (emitter, rx)
    }

    /// Decides whether the error event of `template_id` at `wall_ms` is kept; `Some(rate)` is
    /// the probability it was kept with.
    pub fn sample_error(&self, template_id: u64, wall_ms: i64) -> Option<f64> {
        let second = wall_ms.div_euclid(1000);
        {
            let mut s = self
                .sampler
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.second != second {
                s.second = second;
                s.counts.clear();
            }
            let n = s.counts.entry(template_id).or_insert(0);
            *n = n.saturating_add(1);
            if *n <= self.first_per_template {
                return Some(1.0);
            }
        }
        (self.sampling_rate > 0.0 && fastrand::f64() < self.sampling_rate)
            .then_some(self.sampling_rate)
    }

    /// Whether this request is sent as a traffic sample.
    pub fn sample_traffic(&self) -> bool {
        self.traffic_sampling_rate > 0.0 && fastrand::f64() < self.traffic_sampling_rate
    }

    /// The traffic sampling rate.
    pub fn traffic_sampling_rate(&self) -> f64 {
        self.traffic_sampling_rate
    }

    /// Queues an error event.
    pub fn error(&self, event: ErrorEvent) {
        self.push(GatewayRecord::Error(event), "error");
    }

    /// Queues a traffic sample.
    pub fn traffic(&self, sample: TrafficSample) {
        self.push(GatewayRecord::Sample(sample), "sample");
    }

    /// Queues per-route counts for one second, skipping idle routes.
    pub fn flush_counts<'a>(
        &self,
        second_ms: i64,
        routes: impl IntoIterator<Item = (&'a str, &'a RouteCounters)>,
    ) {
        for (route, c) in routes {
            let (requests, errors, rejected) = c.take();
            if requests == 0 {
                continue;
            }
            let counts = RouteCounts {
                schema_version: schemas::EVENT_SCHEMA_VERSION,
                second_ms,
                route: route.to_owned(),
                requests,
                errors,
                rejected,
            };
            self.push(GatewayRecord::Counts(counts), "counts");
        }
    }

    fn push(&self, record: GatewayRecord, kind: &'static str) {
        match self.tx.try_send(record) {
            Ok(()) => self
                .metrics
                .events_enqueued
                .with_label_values(&[kind])
                .inc(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .events_dropped
                    .with_label_values(&[kind, "queue_full"])
                    .inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics
                    .events_dropped
                    .with_label_values(&[kind, "sink_gone"])
                    .inc();
            }
        }
        let depth = self.tx.max_capacity() - self.tx.capacity();
        self.metrics
            .queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitter(
        capacity: usize,
        rate: f64,
    ) -> (EventEmitter, mpsc::Receiver<GatewayRecord>, Metrics) {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let config = EventsConfig {
            queue_capacity: capacity,
            sampling_rate: rate,
            ..EventsConfig::default()
        };
        let (e, rx) = EventEmitter::new(&config, metrics.clone());
        (e, rx, metrics)
    }

    #[test]
    fn keeps_the_first_events_of_each_template_every_second() {
        let (e, _rx, _) = emitter(16, 0.0);
        let kept: Vec<bool> = (0..8).map(|_| e.sample_error(1, 1_500).is_some()).collect();
        assert_eq!(kept, [true, true, true, true, true, false, false, false]);
        assert_eq!(
            e.sample_error(2, 1_500),
            Some(1.0),
            "another template has its own budget"
        );
        assert_eq!(
            e.sample_error(1, 2_000),
            Some(1.0),
            "a new second starts a new budget"
        );
    }

    #[test]
    fn samples_beyond_the_budget_at_the_configured_rate() {
        let (e, _rx, _) = emitter(16, 0.05);
        let kept = (0..20_000)
            .filter(|_| e.sample_error(1, 0).is_some())
            .count()
            - 5;
        // Binomial(19995, 0.05): mean 1000, sd ~31; 6 sd either side.
        assert!((800..1200).contains(&kept), "kept {kept}");
    }

    #[test]
    fn a_full_queue_or_dead_sink_drops_and_counts() {
        let (e, rx, m) = emitter(2, 1.0);
        let counters = RouteCounters::default();
        for _ in 0..5 {
            counters.count(false, false);
            e.flush_counts(0, [("r", &counters)]);
        }
        assert_eq!(m.events_enqueued.with_label_values(&["counts"]).get(), 2);
        assert_eq!(
            m.events_dropped
                .with_label_values(&["counts", "queue_full"])
                .get(),
            3
        );
        assert_eq!(m.queue_depth.get(), 2);
        drop(rx);
        counters.count(true, false);
        e.flush_counts(0, [("r", &counters)]);
        assert_eq!(
            m.events_dropped
                .with_label_values(&["counts", "sink_gone"])
                .get(),
            1
        );
    }

    #[test]
    fn counts_are_exact_and_reset_each_flush() {
        let (e, mut rx, _) = emitter(16, 1.0);
        let c = RouteCounters::default();
        c.count(false, false);
        c.count(true, false);
        c.count(true, true);
        e.flush_counts(7_000, [("r", &c)]);
        e.flush_counts(8_000, [("r", &c)]);
        match rx.try_recv().unwrap() {
            GatewayRecord::Counts(rc) => assert_eq!(
                (rc.requests, rc.errors, rc.rejected, rc.second_ms),
                (3, 2, 1, 7_000)
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "idle second emits nothing");
    }
}
