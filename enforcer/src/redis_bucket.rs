//! The cluster buckets in Redis: one hash per rate-limit policy, `<key_prefix><policy id>`
//! with fields `tokens` and `ts`, changed only by [`LEASE_SCRIPT`] so that refilling and
//! taking happen atomically on the server, on the server's clock (`TIME`), whatever the
//! enforcers' clocks say.
//!
//! Only the [`Refiller`](crate::cluster_bucket::Refiller) task calls this, never a request.
//! One multiplexed connection; dropped on any I/O error and reopened on the next call, with
//! the connect and response timeouts of `cluster_limits.request_timeout_ms`.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

use crate::cluster_bucket::{BucketStore, Grant, LeaseRequest, StoreError};
use crate::config::ClusterLimitsConfig;

/// Refill to now, take up to `want` whole tokens, return `{granted, wait_ms}`.
///
/// `KEYS[1]` the bucket; `ARGV` rate (tokens/s), burst, want, ttl (ms). A missing key is a
/// full bucket. If the server clock steps back (a failover), time stands still until it
/// catches up. `wait_ms` is the time until one whole token is there again. Needs Redis >= 5
/// (`TIME` in a script with effects replication, the default since 5).
pub const LEASE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], ttl)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
return {granted, wait}
";

/// The Redis side of [`BucketStore`].
pub struct RedisBucketStore {
    client: Client,
    connection: Option<MultiplexedConnection>,
    script: Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisBucketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBucketStore")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl RedisBucketStore {
    /// A store for `config.redis_url`; connects on first use.
    pub fn new(config: &ClusterLimitsConfig) -> Result<Self, StoreError> {
        let client = Client::open(config.redis_url.as_str())
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        Ok(Self {
            client,
            connection: None,
            script: Script::new(LEASE_SCRIPT),
            timeout: Duration::from_millis(config.request_timeout_ms),
        })
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = &self.connection {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        self.connection = Some(c.clone());
        Ok(c)
    }
}

impl BucketStore for RedisBucketStore {
    async fn acquire(&mut self, r: &LeaseRequest<'_>) -> Result<Grant, StoreError> {
        let mut c = self.connection().await?;
        let reply: Result<(i64, i64), redis::RedisError> = self
            .script
            .key(r.key)
            .arg(r.rate)
            .arg(r.burst)
            .arg(r.want)
            .arg(r.ttl_ms)
            .invoke_async(&mut c)
            .await;
        match reply {
            Ok((granted, wait_ms)) => Ok(Grant {
                granted: u32::try_from(granted.max(0)).unwrap_or(u32::MAX),
                wait_ms: u64::try_from(wait_ms.max(0)).unwrap_or(u64::MAX),
            }),
            Err(e) if e.kind() == redis::ErrorKind::UnexpectedReturnType => {
                Err(StoreError::Reply(e.to_string()))
            }
            Err(e) => {
                // A lost or timed-out connection is replaced on the next call.
                self.connection = None;
                Err(StoreError::Command(e.to_string()))
            }
        }
    }
}
