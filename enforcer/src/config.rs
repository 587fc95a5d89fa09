//! The enforcer's YAML configuration.
//!
//! Every struct denies unknown fields, every field has a doc comment and its default lives in
//! one `default_*` function. [`Config::load`] parses, then [`Config::validate`] checks what
//! serde cannot; both report the field path (`routes[2].upstreams[0]`) and what is wrong.
//! `enforcer/CONFIG.md` documents the file for operators.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemas::DimensionKey;
use serde::Deserialize;

use crate::predicate::Predicate;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// Field path where parsing failed.
        path: String,
        /// What serde said.
        message: String,
    },
    /// A value is inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// Field path of the bad value.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the admin listener (`/health`, `/ready`, `/metrics`). Default `127.0.0.1:9090`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Name reported as the service in events. Default `gateway`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Routes, tried in order; the first match wins. At least one.
    pub routes: Vec<RouteConfig>,
    /// Error events and traffic samples.
    #[serde(default)]
    pub events: EventsConfig,
    /// Where policies come from.
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// OpenTelemetry trace export. Default: off.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// How long in-flight requests may take to finish on shutdown, ms. Default 10000.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Proxy worker threads, each with its own single-threaded runtime, listener socket
    /// (`SO_REUSEPORT`) and upstream connection pool. Default: one per core.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Cluster-wide token buckets for rate-limit policies, shared through Redis. Default:
    /// none, each enforcer limits on its own.
    #[serde(default)]
    pub cluster_limits: Option<ClusterLimitsConfig>,
}

/// One route: which requests it takes, where they go, and how they are judged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name: a metrics label and the key of slices. Unique; `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Which requests this route takes.
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Upstream base URLs (`http://host:port`), load-balanced round robin. At least one.
    pub upstreams: Vec<String>,
    /// Time allowed for the upstream's response head, ms. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an upstream that failed at the transport level is skipped, ms. Default 5000.
    #[serde(default = "default_backoff_ms")]
    pub unhealthy_backoff_ms: u64,
    /// Largest request or response body inspected (JSON predicate, body dimensions), bytes.
    /// Request bodies above it are refused with 413 when inspection is needed. Default 65536.
    #[serde(default = "default_body_cap")]
    pub max_inspected_body_bytes: usize,
    /// What counts as an error on this route.
    #[serde(default)]
    pub errors: ErrorDefinition,
    /// Request attributes slices may be learned from.
    #[serde(default)]
    pub dimensions: DimensionsConfig,
    /// Response for the degrade action. Default: 503 with a JSON reason.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// Classic protections for the whole route.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Authentication. Default: none.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// Request matching. Empty fields match everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host header to match (without port). Default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match (`/api/`). Default `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Path pattern with named segments (`/users/{id}/orders`); exclusive with `path_prefix`.
    #[serde(default)]
    pub path_pattern: Option<String>,
    /// Methods to match (upper case). Default: any method.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// What counts as an error. Transport failures and timeouts always count.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDefinition {
    /// Status codes that count as errors. Default: 500 to 599.
    #[serde(default = "default_error_statuses")]
    pub statuses: Vec<u16>,
    /// A predicate on the JSON body of 2xx responses that marks them as errors, e.g.
    /// `$.code != 0`. Default: none.
    #[serde(default)]
    pub json_predicate: Option<String>,
}

impl Default for ErrorDefinition {
    fn default() -> Self {
        Self {
            statuses: default_error_statuses(),
            json_predicate: None,
        }
    }
}

/// Request attributes the pipeline may learn slices from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimensionsConfig {
    /// Request headers (case-insensitive names).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query-string parameters.
    #[serde(default)]
    pub query: Vec<String>,
    /// Top-level fields of a JSON request body (buffers the body up to the cap).
    #[serde(default)]
    pub body: Vec<String>,
    /// Named segments of `match.path_pattern`.
    #[serde(default)]
    pub path: Vec<String>,
    /// JWT claims (requires `auth.jwt`).
    #[serde(default)]
    pub claims: Vec<String>,
    /// Most distinct values kept per dimension per route; later values become `<other>`.
    /// Default 64.
    #[serde(default = "default_max_values")]
    pub max_values: usize,
}

impl Default for DimensionsConfig {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            query: Vec::new(),
            body: Vec::new(),
            path: Vec::new(),
            claims: Vec::new(),
            max_values: default_max_values(),
        }
    }
}

impl DimensionsConfig {
    /// Every configured dimension as a key.
    pub fn keys(&self) -> Result<Vec<DimensionKey>, schemas::dimension::DimensionKeyError> {
        let groups: [(&str, &Vec<String>); 5] = [
            ("header", &self.headers),
            ("query", &self.query),
            ("body", &self.body),
            ("path", &self.path),
            ("claim", &self.claims),
        ];
        groups
            .iter()
            .flat_map(|(kind, names)| names.iter().map(move |n| format!("{kind}:{n}").parse()))
            .collect()
    }
}

/// The degrade response.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Status code. Default 200.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Extra headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Body, sent as is. Default empty.
    #[serde(default)]
    pub body: String,
}

/// Classic protections: what every gateway has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Token-bucket rate limit for the route. Default: none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Circuit breaker for the route. Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Circuit breaker per upstream host of the route. Default: none.
    #[serde(default)]
    pub upstream_circuit_breaker: Option<BreakerConfig>,
}

/// A token bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second (> 0).
    pub requests_per_second: f64,
    /// Bucket size. Default: one second's worth, at least 1.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A circuit breaker on error and slow-call ratios over a time window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Length of the sliding window, ms. Default 10000.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Calls needed in the window before the breaker may open. Default 20.
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    /// Error share that opens the breaker. Default 0.5.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// A call slower than this counts as slow, ms. Default: slow calls not judged.
    #[serde(default)]
    pub slow_call_ms: Option<u64>,
    /// Slow-call share that opens the breaker. Default 1.0 (never, unless lowered).
    #[serde(default = "default_slow_ratio")]
    pub slow_call_ratio: f64,
    /// How long the breaker stays open before probing, ms. Default 30000.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    /// Share of traffic added back per successful half-open step. Default 0.2.
    #[serde(default = "default_ramp_step")]
    pub ramp_step: f64,
    /// Probe outcomes judged per half-open step. Default 5.
    #[serde(default = "default_probes")]
    pub probes: u32,
}

/// Route authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct AuthConfig {
    /// Accept requests carrying one of these keys. Default: not required.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// Require a valid JWT bearer token. Default: not required.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// API key authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Header carrying the key. Default `x-api-key`.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// File with one accepted key per line.
    pub keys_file: PathBuf,
}

/// JWT bearer authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` or `RS256`.
    pub algorithm: String,
    /// HS256: file holding the shared secret; RS256: PEM file with the public key.
    pub key_file: PathBuf,
    /// Required `iss`, if any.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    #[serde(default)]
    pub audience: Option<String>,
}

/// Events out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Where events go. Default `embedded` (an in-process channel the pipeline reads).
    #[serde(default)]
    pub sink: SinkKind,
    /// Share of error events kept after the first ones of each template in each second.
    /// Default 0.05 (the plan's rate).
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: f64,
    /// Error events of one template always kept per second before sampling starts. Default 5.
    #[serde(default = "default_first_per_template")]
    pub first_per_template: u32,
    /// Share of all requests sent as traffic samples with their dimensions. Default 0.05.
    #[serde(default = "default_sampling_rate")]
    pub traffic_sampling_rate: f64,
    /// Capacity of the queue to the sink; when full, records are dropped and counted.
    /// Default 65536.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// The Kafka producer, for `sink: kafka` (required then). Default: none.
    #[serde(default)]
    pub kafka: Option<KafkaSinkConfig>,
}

/// The Kafka sink: each record goes to `<topic_prefix><kind>` keyed by its route, as its
/// serde JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Required.
    pub brokers: String,
    /// Prepended to `error_events`, `traffic_samples`, `route_counts`. Default `gateway.`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// How long the producer waits to fill a batch, ms (librdkafka `linger.ms`). Default 100:
    /// at 5 ms the batches were small enough that producing cost 18–25 % of the enforcer's
    /// saturated throughput on two cores, at 100 ms none measurable; 100 ms is far inside the
    /// pipeline's 1 s lateness.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How long a record may wait for delivery before it is dropped and counted, ms
    /// (librdkafka `message.timeout.ms`); older than a few windows it is useless. Default 10000.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Acknowledgements the producer waits for: `all`, `leader` or `none`. Default `all`.
    #[serde(default)]
    pub acks: KafkaAcks,
}

/// Producer acknowledgements (librdkafka `acks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaAcks {
    /// Every in-sync replica (`acks=all`).
    #[default]
    All,
    /// The partition leader only (`acks=1`).
    Leader,
    /// None: fire and forget (`acks=0`).
    None,
}

impl KafkaAcks {
    /// The librdkafka value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Leader => "1",
            Self::None => "0",
        }
    }
}

impl KafkaSinkConfig {
    /// A config with the defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: default_topic_prefix(),
            linger_ms: default_linger_ms(),
            message_timeout_ms: default_message_timeout_ms(),
            acks: KafkaAcks::default(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad_broker = self.brokers.split(',').map(str::trim).find(|b| {
            b.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        });
        if self.brokers.trim().is_empty() {
            return Err(invalid("events.kafka.brokers", "must not be empty"));
        }
        if let Some(b) = bad_broker {
            return Err(invalid(
                "events.kafka.brokers",
                format!("{b:?} is not host:port"),
            ));
        }
        let p = &self.topic_prefix;
        if p.len() > 200
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "events.kafka.topic_prefix",
                format!("{p:?}: at most 200 of [A-Za-z0-9._-]"),
            ));
        }
        if self.linger_ms > 900_000 {
            return Err(invalid("events.kafka.linger_ms", "must be <= 900000"));
        }
        if self.message_timeout_ms == 0 || self.message_timeout_ms > i32::MAX as u64 {
            return Err(invalid(
                "events.kafka.message_timeout_ms",
                "must be in 1..=2147483647 (0 would wait forever)",
            ));
        }
        if self.message_timeout_ms <= self.linger_ms {
            return Err(invalid(
                "events.kafka.message_timeout_ms",
                "must be greater than linger_ms",
            ));
        }
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            sink: SinkKind::default(),
            sampling_rate: default_sampling_rate(),
            first_per_template: default_first_per_template(),
            traffic_sampling_rate: default_sampling_rate(),
            queue_capacity: default_queue_capacity(),
            kafka: None,
        }
    }
}

/// The event sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// In-process channel (the embedded default).
    #[default]
    Embedded,
    /// Discard everything (benchmarks).
    Discard,
    /// Kafka topics (`events.kafka`): the distributed mode.
    Kafka,
}

/// Where policies come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Source. Default `embedded` (in-process store fed by the pipeline).
    #[serde(default)]
    pub source: PolicySourceKind,
    /// A snapshot file to load at start (`file` source). Default: none.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Where the snapshot lives in etcd (`etcd` source). Default: none; required then.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// Count "would have rejected" for every policy without rejecting. Default false.
    #[serde(default)]
    pub shadow: bool,
}

/// The etcd cluster holding the policy snapshot (`policies.source: etcd`).
///
/// The snapshot is the JSON at `<prefix>snapshot`; the enforcer gets it, then watches the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` (TLS is not compiled in). At least one.
    pub endpoints: Vec<String>,
    /// Key prefix; must start and end with `/`. Default `/lag/policies/`.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Time allowed to open a connection to an endpoint, ms. Default 2000.
    #[serde(default = "default_etcd_dial_timeout_ms")]
    pub dial_timeout_ms: u64,
    /// Time allowed for one request (the initial read, opening the watch), ms. Default 5000.
    #[serde(default = "default_etcd_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl EtcdConfig {
    /// The key holding the current snapshot: `<prefix>snapshot`.
    pub fn snapshot_key(&self) -> String {
        format!("{}{}", self.prefix, schemas::names::ETCD_SNAPSHOT_KEY)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid(
                "policies.etcd.endpoints",
                "at least one endpoint is required",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let ok = e.parse::<http::Uri>().is_ok_and(|u| {
                u.scheme_str() == Some("http")
                    && u.host().is_some()
                    && u.port_u16().is_some()
                    && matches!(u.path(), "" | "/")
            });
            if !ok {
                return Err(invalid(
                    format!("policies.etcd.endpoints[{i}]"),
                    format!("{e:?} must be an http://host:port URL such as http://127.0.0.1:2379"),
                ));
            }
        }
        if !(self.prefix.starts_with('/') && self.prefix.ends_with('/')) {
            return Err(invalid(
                "policies.etcd.prefix",
                format!("{:?} must start and end with '/'", self.prefix),
            ));
        }
        for (field, v) in [
            ("dial_timeout_ms", self.dial_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(format!("policies.etcd.{field}"), "must be > 0"));
            }
        }
        Ok(())
    }
}

fn default_etcd_prefix() -> String {
    schemas::names::ETCD_POLICY_PREFIX.to_owned()
}
fn default_etcd_dial_timeout_ms() -> u64 {
    2_000
}
fn default_etcd_request_timeout_ms() -> u64 {
    5_000
}

/// Rate-limit policies enforced cluster-wide (`cluster_limits`): one token bucket per policy in
/// Redis, leased to each enforcer in small batches (see `src/cluster_bucket.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimitsConfig {
    /// `redis://host:port[/db]` (TLS is not compiled in). Required.
    pub redis_url: String,
    /// Prefix of the bucket keys, `<prefix><policy id>`. Default `lag:rl:`.
    #[serde(default = "default_cluster_key_prefix")]
    pub key_prefix: String,
    /// Enforcers sharing the buckets: while Redis is unreachable each one admits
    /// `rate / enforcers` (burst likewise, at least 1) on its own. Default 1.
    #[serde(default = "default_cluster_enforcers")]
    pub enforcers: u32,
    /// How often leases are topped up, ms (a lease running low also wakes the refiller).
    /// Default 20.
    #[serde(default = "default_cluster_sync_interval_ms")]
    pub sync_interval_ms: u64,
    /// How long leased tokens stay usable, ms; unused ones are dropped after that. At least
    /// `sync_interval_ms`. Default 1000.
    #[serde(default = "default_cluster_lease_ms")]
    pub lease_ms: u64,
    /// Time allowed for one Redis round trip (connecting included), ms; slower counts as
    /// unreachable and the enforcer falls back to its share. Default 50.
    #[serde(default = "default_cluster_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl ClusterLimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url_ok = self.redis_url.starts_with("redis://")
            && redis::Client::open(self.redis_url.as_str()).is_ok();
        if !url_ok {
            return Err(invalid(
                "cluster_limits.redis_url",
                format!(
                    "{:?} must be a redis://host:port[/db] URL (TLS is not compiled in)",
                    self.redis_url
                ),
            ));
        }
        if !(1..=100_000).contains(&self.enforcers) {
            return Err(invalid(
                "cluster_limits.enforcers",
                format!("{} must be between 1 and 100000", self.enforcers),
            ));
        }
        for (field, v) in [
            ("sync_interval_ms", self.sync_interval_ms),
            ("lease_ms", self.lease_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(format!("cluster_limits.{field}"), "must be > 0"));
            }
        }
        if self.lease_ms < self.sync_interval_ms {
            return Err(invalid(
                "cluster_limits.lease_ms",
                "must be at least sync_interval_ms",
            ));
        }
        Ok(())
    }
}

fn default_cluster_key_prefix() -> String {
    "lag:rl:".to_owned()
}
fn default_cluster_enforcers() -> u32 {
    1
}
fn default_cluster_sync_interval_ms() -> u64 {
    20
}
fn default_cluster_lease_ms() -> u64 {
    1_000
}
fn default_cluster_request_timeout_ms() -> u64 {
    50
}

/// OpenTelemetry export: one server span per request over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Collector traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (plain HTTP; run the
    /// collector as a local agent or sidecar). Default: none, export off.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces exported (0.0 to 1.0); a caller's `traceparent` decides for its
    /// own traces. Default 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Spans queued for export; beyond it spans are dropped, never waited for. Default 4096.
    #[serde(default = "default_telemetry_queue")]
    pub max_queue: usize,
    /// How often queued spans are sent, ms. Default 1000.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
    /// Time allowed for one export request, ms. Default 5000.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            max_queue: default_telemetry_queue(),
            export_interval_ms: default_export_interval_ms(),
            export_timeout_ms: default_export_timeout_ms(),
        }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.otlp_endpoint {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    format!(
                        "{url:?} must be an http:// URL such as http://127.0.0.1:4318/v1/traces"
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.max_queue == 0 {
            return Err(invalid("telemetry.max_queue", "must be > 0"));
        }
        if self.export_interval_ms == 0 || self.export_timeout_ms == 0 {
            let field = if self.export_interval_ms == 0 {
                "export_interval_ms"
            } else {
                "export_timeout_ms"
            };
            return Err(invalid(format!("telemetry.{field}"), "must be > 0"));
        }
        Ok(())
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_telemetry_queue() -> usize {
    4096
}
fn default_export_interval_ms() -> u64 {
    1000
}
fn default_export_timeout_ms() -> u64 {
    5000
}

/// The policy source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySourceKind {
    /// In-process store (the embedded default).
    #[default]
    Embedded,
    /// A JSON snapshot file, re-read when it changes.
    File,
    /// The snapshot key in etcd (`policies.etcd`), read once and then watched.
    Etcd,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_service_name() -> String {
    "gateway".to_owned()
}
impl Config {
    /// Proxy worker threads: `workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_backoff_ms() -> u64 {
    5_000
}
fn default_body_cap() -> usize {
    64 * 1024
}
fn default_error_statuses() -> Vec<u16> {
    (500..=599).collect()
}
fn default_max_values() -> usize {
    64
}
fn default_fallback_status() -> u16 {
    200
}
fn default_window_ms() -> u64 {
    10_000
}
fn default_min_calls() -> u32 {
    20
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_slow_ratio() -> f64 {
    1.0
}
fn default_open_ms() -> u64 {
    30_000
}
fn default_ramp_step() -> f64 {
    0.2
}
fn default_probes() -> u32 {
    5
}
fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}
fn default_sampling_rate() -> f64 {
    0.05
}
fn default_first_per_template() -> u32 {
    5
}
fn default_topic_prefix() -> String {
    schemas::names::DEFAULT_TOPIC_PREFIX.to_owned()
}
fn default_linger_ms() -> u64 {
    100
}
fn default_message_timeout_ms() -> u64 {
    10_000
}
fn default_queue_capacity() -> usize {
    65_536
}

/// Overrides `policies.etcd.endpoints` (comma-separated) in [`Config::apply_env`].
pub const ETCD_ENDPOINTS_ENV: &str = "LAG_ETCD_ENDPOINTS";
/// Overrides `events.kafka.brokers` in [`Config::apply_env`].
pub const KAFKA_BROKERS_ENV: &str = "LAG_KAFKA_BROKERS";
/// Overrides `cluster_limits.redis_url` in [`Config::apply_env`].
pub const REDIS_URL_ENV: &str = "LAG_REDIS_URL";

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Parse {
                path: if path == "." { "(root)".into() } else { path },
                message: e.inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies the distributed mode's environment overrides, then validates again:
    /// `LAG_ETCD_ENDPOINTS` (comma-separated URLs) replaces `policies.etcd.endpoints` when the
    /// policy source is etcd, and `LAG_KAFKA_BROKERS` replaces `events.kafka.brokers` when the
    /// sink is Kafka, and `LAG_REDIS_URL` replaces `cluster_limits.redis_url` when the file has
    /// `cluster_limits`. One config file (a Kubernetes ConfigMap) then serves every environment,
    /// the endpoints coming from the pod's env. Unset or empty variables change nothing, and
    /// neither variable adds a section the file does not have. `var` looks a variable up
    /// (`std::env::var` in the binaries); returns the names of the variables applied.
    pub fn apply_env(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<&'static str>, ConfigError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut applied = Vec::new();
        if self.policies.source == PolicySourceKind::Etcd
            && let Some(etcd) = self.policies.etcd.as_mut()
            && let Some(v) = set(ETCD_ENDPOINTS_ENV)
        {
            etcd.endpoints = v.split(',').map(|e| e.trim().to_owned()).collect();
            applied.push(ETCD_ENDPOINTS_ENV);
        }
        if self.events.sink == SinkKind::Kafka
            && let Some(kafka) = self.events.kafka.as_mut()
            && let Some(v) = set(KAFKA_BROKERS_ENV)
        {
            kafka.brokers = v.trim().to_owned();
            applied.push(KAFKA_BROKERS_ENV);
        }
        if let Some(limits) = self.cluster_limits.as_mut()
            && let Some(v) = set(REDIS_URL_ENV)
        {
            limits.redis_url = v.trim().to_owned();
            applied.push(REDIS_URL_ENV);
        }
        self.validate().map_err(|e| match e {
            ConfigError::Invalid { path, message } => ConfigError::Invalid {
                path: format!("{path} (from the environment)"),
                message,
            },
            other => other,
        })?;
        Ok(applied)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        if let Some(n) = self.workers
            && !(1..=1024).contains(&n)
        {
            return Err(invalid(
                "workers",
                format!("{n} must be between 1 and 1024"),
            ));
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one route is required"));
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("routes[{i}].{field}");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(invalid(
                    at("name"),
                    format!("{:?} must be non-empty and use only [A-Za-z0-9_.-]", r.name),
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            if r.upstreams.is_empty() {
                return Err(invalid(
                    at("upstreams"),
                    "at least one upstream URL is required",
                ));
            }
            for (j, u) in r.upstreams.iter().enumerate() {
                crate::route::parse_upstream(u)
                    .map_err(|m| invalid(at(&format!("upstreams[{j}]")), m))?;
            }
            if r.timeout_ms == 0 {
                return Err(invalid(at("timeout_ms"), "must be > 0"));
            }
            if r.matcher.path_prefix.is_some() && r.matcher.path_pattern.is_some() {
                return Err(invalid(
                    at("match"),
                    "use either path_prefix or path_pattern, not both",
                ));
            }
            for (field, p) in [
                ("path_prefix", &r.matcher.path_prefix),
                ("path_pattern", &r.matcher.path_pattern),
            ] {
                if let Some(p) = p
                    && !p.starts_with('/')
                {
                    return Err(invalid(
                        at(&format!("match.{field}")),
                        "must start with '/'",
                    ));
                }
            }
            for (j, m) in r.matcher.methods.iter().enumerate() {
                if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
                    return Err(invalid(
                        at(&format!("match.methods[{j}]")),
                        format!("{m:?} is not an upper-case HTTP method"),
                    ));
                }
            }
            for (j, s) in r.errors.statuses.iter().enumerate() {
                if !(100..=599).contains(s) {
                    return Err(invalid(
                        at(&format!("errors.statuses[{j}]")),
                        format!("{s} is not an HTTP status"),
                    ));
                }
            }
            if let Some(p) = &r.errors.json_predicate {
                Predicate::parse(p)
                    .map_err(|e| invalid(at("errors.json_predicate"), e.to_string()))?;
            }
            r.dimensions
                .keys()
                .map_err(|e| invalid(at("dimensions"), e.to_string()))?;
            if r.dimensions.max_values == 0 {
                return Err(invalid(at("dimensions.max_values"), "must be > 0"));
            }
            let pattern_params = r
                .matcher
                .path_pattern
                .as_deref()
                .map(crate::route::pattern_params)
                .unwrap_or_default();
            for (j, p) in r.dimensions.path.iter().enumerate() {
                if !pattern_params.contains(p) {
                    return Err(invalid(
                        at(&format!("dimensions.path[{j}]")),
                        format!("{{{p}}} is not a segment of match.path_pattern"),
                    ));
                }
            }
            if !r.dimensions.claims.is_empty() && r.auth.jwt.is_none() {
                return Err(invalid(at("dimensions.claims"), "claims need auth.jwt"));
            }
            if let Some(f) = &r.fallback
                && http::StatusCode::from_u16(f.status).is_err()
            {
                return Err(invalid(
                    at("fallback.status"),
                    format!("{} is not an HTTP status", f.status),
                ));
            }
            if let Some(rl) = &r.limits.rate_limit
                && !(rl.requests_per_second.is_finite() && rl.requests_per_second > 0.0)
            {
                return Err(invalid(
                    at("limits.rate_limit.requests_per_second"),
                    "must be > 0",
                ));
            }
            for (field, b) in [
                ("limits.circuit_breaker", &r.limits.circuit_breaker),
                (
                    "limits.upstream_circuit_breaker",
                    &r.limits.upstream_circuit_breaker,
                ),
            ] {
                if let Some(b) = b {
                    b.validate()
                        .map_err(|(f, m)| invalid(at(&format!("{field}.{f}")), m))?;
                }
            }
            if let Some(jwt) = &r.auth.jwt
                && !matches!(jwt.algorithm.as_str(), "HS256" | "RS256")
            {
                return Err(invalid(at("auth.jwt.algorithm"), "must be HS256 or RS256"));
            }
        }
        let e = &self.events;
        for (field, v) in [
            ("events.sampling_rate", e.sampling_rate),
            ("events.traffic_sampling_rate", e.traffic_sampling_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(field, format!("{v} is outside [0, 1]")));
            }
        }
        if e.queue_capacity == 0 {
            return Err(invalid("events.queue_capacity", "must be > 0"));
        }
        match (&e.sink, &e.kafka) {
            (SinkKind::Kafka, None) => {
                return Err(invalid(
                    "events.kafka",
                    "sink: kafka needs events.kafka.brokers",
                ));
            }
            (SinkKind::Kafka, Some(k)) => k.validate()?,
            (_, Some(_)) => {
                return Err(invalid("events.kafka", "only used with sink: kafka"));
            }
            (_, None) => {}
        }
        if self.policies.source == PolicySourceKind::File && self.policies.file.is_none() {
            return Err(invalid("policies.file", "the file source needs a file"));
        }
        match (&self.policies.source, &self.policies.etcd) {
            (PolicySourceKind::Etcd, None) => {
                return Err(invalid(
                    "policies.etcd",
                    "the etcd source needs `etcd: {endpoints: [...]}`",
                ));
            }
            (_, Some(etcd)) => etcd.validate()?,
            _ => {}
        }
        if let Some(c) = &self.cluster_limits {
            c.validate()?;
        }
        Ok(())
    }
}

impl BreakerConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let ratio = |f: &'static str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err((f, format!("{v} must be in (0, 1]")))
            }
        };
        ratio("failure_ratio", self.failure_ratio)?;
        ratio("slow_call_ratio", self.slow_call_ratio)?;
        ratio("ramp_step", self.ramp_step)?;
        if self.window_ms == 0 {
            return Err(("window_ms", "must be > 0".into()));
        }
        if self.open_ms == 0 {
            return Err(("open_ms", "must be > 0".into()));
        }
        if self.probes == 0 {
            return Err(("probes", "must be >= 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "routes:\n  - name: api\n    upstreams: [\"http://127.0.0.1:9000\"]\n";

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.listen, default_listen());
        let r = &c.routes[0];
        assert_eq!(r.timeout_ms, 5_000);
        assert_eq!(r.errors.statuses.len(), 100);
        assert_eq!(c.events.sampling_rate, 0.05);
        assert_eq!(c.policies.source, PolicySourceKind::Embedded);
    }

    #[test]
    fn kafka_sink_gets_the_documented_defaults() {
        let c = Config::parse(&format!(
            "{MINIMAL}events: {{sink: kafka, kafka: {{brokers: \"127.0.0.1:9092,k2:9093\"}}}}\n"
        ))
        .unwrap();
        let k = c.events.kafka.unwrap();
        assert_eq!(k.topic_prefix, "gateway.");
        assert_eq!(k.linger_ms, 100);
        assert_eq!(k.message_timeout_ms, 10_000);
        assert_eq!(k.acks, KafkaAcks::All);
    }

    fn err(yaml: &str) -> String {
        Config::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases = [
            ("routes: []\n", "routes: at least one route"),
            (
                "telemetry: {otlp_endpoint: \"grpc://collector:4317\"}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "telemetry: {sample_ratio: 1.5}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "telemetry.sample_ratio: must be between",
            ),
            (
                "workers: 0\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "workers: 0 must be between 1 and 1024",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://127.0.0.1:9000\"]\n    timeout: 3\n",
                "routes[0]: unknown field `timeout`",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"ftp://x\"]\n",
                "routes[0].upstreams[0]",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n    errors: {json_predicate: \"$.code !!= 0\"}\n",
                "routes[0].errors.json_predicate",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n    limits: {circuit_breaker: {failure_ratio: 2}}\n",
                "routes[0].limits.circuit_breaker.failure_ratio",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "routes[1].name: duplicate",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n    dimensions: {path: [id]}\n",
                "routes[0].dimensions.path[0]",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sampling_rate: 1.5}\n",
                "events.sampling_rate",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n    timeout_ms: -1\n",
                "routes[0].timeout_ms",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sink: kafka}\n",
                "events.kafka: sink: kafka needs",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sink: kafka, kafka: {brokers: \"k1\"}}\n",
                "events.kafka.brokers: \"k1\" is not host:port",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sink: kafka, kafka: {brokers: \"k:9092\", acks: 2}}\n",
                "events.kafka.acks",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sink: kafka, kafka: {brokers: \"k:9092\", topic_prefix: \"a/b\"}}\n",
                "events.kafka.topic_prefix",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sink: kafka, kafka: {brokers: \"k:9092\", linger_ms: 50, message_timeout_ms: 50}}\n",
                "events.kafka.message_timeout_ms: must be greater than linger_ms",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {sink: kafka, kafka: {brokers: \"k:9092\", lingr_ms: 5}}\n",
                "events.kafka: unknown field `lingr_ms`",
            ),
            (
                "routes:\n  - name: api\n    upstreams: [\"http://a:1\"]\nevents: {kafka: {brokers: \"k:9092\"}}\n",
                "events.kafka: only used with sink: kafka",
            ),
            (
                "policies: {source: etcd}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "policies.etcd: the etcd source needs",
            ),
            (
                "policies: {source: etcd, etcd: {endpoints: []}}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "policies.etcd.endpoints: at least one",
            ),
            (
                "policies: {source: etcd, etcd: {endpoints: [\"http://a:2379\", \"a:2379\"]}}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "policies.etcd.endpoints[1]",
            ),
            (
                "policies: {source: etcd, etcd: {endpoints: [\"http://a:2379\"], prefix: lag}}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "policies.etcd.prefix",
            ),
            (
                "policies: {source: etcd, etcd: {endpoints: [\"http://a:2379\"], dial_timeout_ms: 0}}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "policies.etcd.dial_timeout_ms: must be > 0",
            ),
            (
                "policies: {source: etcd, etcd: {endpoints: [\"http://a:2379\"], watch: true}}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "policies.etcd: unknown field `watch`",
            ),
            (
                "cluster_limits: {}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "cluster_limits: missing field `redis_url`",
            ),
            (
                "cluster_limits: {redis_url: \"rediss://r:6379\"}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "cluster_limits.redis_url",
            ),
            (
                "cluster_limits: {redis_url: \"redis://r:6379\", enforcers: 0}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "cluster_limits.enforcers: 0 must be between",
            ),
            (
                "cluster_limits: {redis_url: \"redis://r:6379\", lease_ms: 5}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "cluster_limits.lease_ms: must be at least sync_interval_ms",
            ),
            (
                "cluster_limits: {redis_url: \"redis://r:6379\", request_timeout_ms: 0}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "cluster_limits.request_timeout_ms: must be > 0",
            ),
            (
                "cluster_limits: {redis_url: \"redis://r:6379\", lua: true}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
                "cluster_limits: unknown field `lua`",
            ),
        ];
        for (yaml, want) in cases {
            let got = err(yaml);
            assert!(
                got.contains(want),
                "for {yaml:?}\n got: {got}\nwant: {want}"
            );
        }
    }

    #[test]
    fn etcd_source_gets_the_documented_defaults() {
        let c = Config::parse(
            "policies:\n  source: etcd\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
        )
        .unwrap();
        assert_eq!(c.policies.source, PolicySourceKind::Etcd);
        let etcd = c.policies.etcd.unwrap();
        assert_eq!(etcd.prefix, "/lag/policies/");
        assert_eq!(etcd.snapshot_key(), "/lag/policies/snapshot");
        assert_eq!(etcd.dial_timeout_ms, 2_000);
        assert_eq!(etcd.request_timeout_ms, 5_000);
    }

    #[test]
    fn redis_url_from_the_environment_only_where_the_file_has_cluster_limits() {
        let env = |name: &str| (name == "LAG_REDIS_URL").then(|| "redis://redis-0:6379".to_owned());
        let mut c = Config::parse(&format!(
            "{MINIMAL}cluster_limits: {{redis_url: \"redis://127.0.0.1:6379\"}}\n"
        ))
        .unwrap();
        assert_eq!(c.apply_env(env).unwrap(), ["LAG_REDIS_URL"]);
        assert_eq!(c.cluster_limits.unwrap().redis_url, "redis://redis-0:6379");
        let mut plain = Config::parse(MINIMAL).unwrap();
        assert!(plain.apply_env(env).unwrap().is_empty());
        assert!(plain.cluster_limits.is_none());
        let mut c = Config::parse(&format!(
            "{MINIMAL}cluster_limits: {{redis_url: \"redis://127.0.0.1:6379\"}}\n"
        ))
        .unwrap();
        let err = c
            .apply_env(|n| (n == "LAG_REDIS_URL").then(|| "rediss://r:6379".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster_limits.redis_url (from the environment)"),
            "{err}"
        );
    }

    #[test]
    fn cluster_limits_get_the_documented_defaults() {
        let c = Config::parse(&format!(
            "{MINIMAL}cluster_limits: {{redis_url: \"redis://127.0.0.1:6379\"}}\n"
        ))
        .unwrap();
        let l = c.cluster_limits.unwrap();
        assert_eq!(l.key_prefix, "lag:rl:");
        assert_eq!(l.enforcers, 1);
        assert_eq!(l.sync_interval_ms, 20);
        assert_eq!(l.lease_ms, 1_000);
        assert_eq!(l.request_timeout_ms, 50);
        assert!(Config::parse(MINIMAL).unwrap().cluster_limits.is_none());
    }

    #[test]
    fn env_overrides_endpoints_only_where_the_file_uses_them() {
        let env = |name: &str| match name {
            "LAG_ETCD_ENDPOINTS" => Some("http://etcd-0:2379, http://etcd-1:2379".to_owned()),
            "LAG_KAFKA_BROKERS" => Some("kafka-0:9092,kafka-1:9092".to_owned()),
            _ => None,
        };
        let mut c = Config::parse(
            "policies:\n  source: etcd\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nevents: {sink: kafka, kafka: {brokers: \"127.0.0.1:9092\"}}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
        )
        .unwrap();
        let applied = c.apply_env(env).unwrap();
        assert_eq!(applied, ["LAG_ETCD_ENDPOINTS", "LAG_KAFKA_BROKERS"]);
        assert_eq!(
            c.policies.etcd.unwrap().endpoints,
            ["http://etcd-0:2379", "http://etcd-1:2379"]
        );
        assert_eq!(c.events.kafka.unwrap().brokers, "kafka-0:9092,kafka-1:9092");

        // Embedded sink and source: the variables add nothing.
        let mut plain = Config::parse(MINIMAL).unwrap();
        assert!(plain.apply_env(env).unwrap().is_empty());
        assert!(plain.policies.etcd.is_none() && plain.events.kafka.is_none());

        // A bad value from the environment is refused like one in the file.
        let mut c = Config::parse(
            "policies:\n  source: etcd\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nroutes:\n  - name: api\n    upstreams: [\"http://a:1\"]\n",
        )
        .unwrap();
        let err = c
            .apply_env(|n| (n == "LAG_ETCD_ENDPOINTS").then(|| "etcd-0:2379".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policies.etcd.endpoints[0] (from the environment)"),
            "{err}"
        );
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("enforcer") && name.ends_with(".yaml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 1, "no enforcer*.yaml in deploy/");
    }
}
