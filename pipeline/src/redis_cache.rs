//! Template vectors shared by the pipeline's replicas through Redis (`pipeline run
//! --redis-url`, or `LAG_REDIS_URL`): `<prefix><model>:<template id, 16 hex digits>` holds the
//! vector as packed little-endian f32 ([`udfs::sql::pack_f32`]) with a TTL, so the model
//! runs only for templates no replica has embedded yet.
//!
//! The UDFs calling it are synchronous, so this is the blocking client over `std::net`, with
//! short connect / read / write timeouts. Nothing here fails the caller:
//!
//! * Redis unreachable or slow: the lookup is a miss (the template is embedded locally), the
//!   error is counted (`pipeline_vector_cache_errors_total`), and Redis is not tried again
//!   for [`RETRY_AFTER`], so an outage costs one timeout per second, not one per template;
//! * a value that is not a vector (wrong length, not finite) is a miss, counted as
//!   `pipeline_vector_cache_lookups_total{result="invalid"}`, and overwritten by the fresh one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use redis::{Client, Commands, Connection};
use udfs::vector_cache::VectorCache;

/// How long Redis is left alone after a failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Settings of the shared vector cache.
#[derive(Debug, Clone)]
pub struct RedisCacheConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Key prefix. Default `lag:vec:`.
    pub prefix: String,
    /// Time to live of a stored vector. Default 7 days.
    pub ttl: Duration,
    /// Connect, read and write timeout. Default 50 ms.
    pub timeout: Duration,
}

impl RedisCacheConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "lag:vec:".into(),
            ttl: Duration::from_secs(7 * 24 * 3600),
            timeout: Duration::from_millis(50),
        }
    }
}

/// Counters, readable in tests and exported when registered.
#[derive(Debug, Default)]
pub struct CacheCounts {
    /// Vectors found.
    pub hits: AtomicU64,
    /// Keys absent.
    pub misses: AtomicU64,
    /// Values that were not a vector.
    pub invalid: AtomicU64,
    /// Failed round trips (connect, timeout, server error).
    pub errors: AtomicU64,
    /// Vectors stored.
    pub stored: AtomicU64,
}

/// [`VectorCache`] on Redis.
pub struct RedisVectorCache {
    client: Client,
    config: RedisCacheConfig,
    connection: Mutex<Option<Connection>>,
    /// Redis is not tried before this instant after a failure.
    resting_until: Mutex<Option<Instant>>,
    counts: CacheCounts,
    lookups: Option<IntCounterVec>,
    errors: Option<IntCounter>,
}

impl std::fmt::Debug for RedisVectorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisVectorCache")
            .field("prefix", &self.config.prefix)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CacheSetupError {
    /// The URL is not a Redis URL.
    #[error("redis url {0:?}: {1}")]
    Url(String, redis::RedisError),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl RedisVectorCache {
    /// A cache on `config.url`; connects on first use (an unreachable server is not an error
    /// here: the job runs without sharing until it answers).
    pub fn new(config: RedisCacheConfig) -> Result<Self, CacheSetupError> {
        let client = Client::open(config.url.as_str())
            .map_err(|e| CacheSetupError::Url(config.url.clone(), e))?;
        Ok(Self {
            client,
            config,
            connection: Mutex::new(None),
            resting_until: Mutex::new(None),
            counts: CacheCounts::default(),
            lookups: None,
            errors: None,
        })
    }

    /// Also counts into `pipeline_vector_cache_lookups_total{result}` and
    /// `pipeline_vector_cache_errors_total` in `registry`.
    pub fn with_metrics(mut self, registry: &Registry) -> Result<Self, CacheSetupError> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "pipeline_vector_cache_lookups_total",
                "Shared vector cache lookups by result (hit, miss, invalid, error).",
            ),
            &["result"],
        )?;
        let errors = IntCounter::new(
            "pipeline_vector_cache_errors_total",
            "Failed Redis round trips of the shared vector cache (the template is embedded locally).",
        )?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        self.lookups = Some(lookups);
        self.errors = Some(errors);
        Ok(self)
    }

    /// The counters.
    pub fn counts(&self) -> &CacheCounts {
        &self.counts
    }

    fn key(&self, model: &str, template_id: u64) -> String {
        format!("{}{model}:{template_id:016x}", self.config.prefix)
    }

    fn count(&self, result: &str, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &self.lookups {
            l.with_label_values(&[result]).inc();
        }
    }

    /// Runs `f` on the connection (opened when needed), unless Redis is resting after a
    /// failure. A failure drops the connection, counts, and rests.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        {
            let mut resting = self
                .resting_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *resting {
                Some(until) if Instant::now() < until => return None,
                Some(_) => *resting = None,
                None => {}
            }
        }
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = match &mut *slot {
            Some(c) => f(c),
            None => self.connect().and_then(|mut c| {
                let r = f(&mut c);
                *slot = Some(c);
                r
            }),
        };
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                *slot = None;
                drop(slot);
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.errors {
                    c.inc();
                }
                if let Some(l) = &self.lookups {
                    l.with_label_values(&["error"]).inc();
                }
                *self
                    .resting_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + RETRY_AFTER);
                tracing::warn!(error = %e, retry_in_ms = RETRY_AFTER.as_millis() as u64, "shared vector cache unavailable; embedding locally");
                None
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let c = self
            .client
            .get_connection_with_timeout(self.config.timeout)?;
        c.set_read_timeout(Some(self.config.timeout))?;
        c.set_write_timeout(Some(self.config.timeout))?;
        Ok(c)
    }
}

impl VectorCache for RedisVectorCache {
    fn get(&self, model: &str, template_id: u64) -> Option<Vec<f32>> {
        let key = self.key(model, template_id);
        let bytes: Option<Vec<u8>> = self.with_connection(|c| c.get(&key))?;
        let Some(bytes) = bytes else {
            self.count("miss", &self.counts.misses);
            return None;
        };
        match udfs::sql::unpack_f32(&bytes)
            .filter(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
        {
            Some(v) => {
                self.count("hit", &self.counts.hits);
                Some(v)
            }
            None => {
                self.count("invalid", &self.counts.invalid);
                None
            }
        }
    }

    fn put(&self, model: &str, template_id: u64, vector: &[f32]) {
        let key = self.key(model, template_id);
        let bytes = udfs::sql::pack_f32(vector);
        let ttl = self.config.ttl.as_secs().max(1);
        if self
            .with_connection(|c| c.set_ex::<_, _, ()>(&key, bytes, ttl))
            .is_some()
        {
            self.counts.stored.fetch_add(1, Ordering::Relaxed);
        }
    }
}
