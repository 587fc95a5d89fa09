//! What the enforcer emits: error events, uniform traffic samples and per-route counts.
//!
//! All three travel as [`GatewayRecord`], a JSON object tagged by `kind`, with a
//! `schema_version` so consumers can refuse what they do not understand.

use serde::{Deserialize, Serialize};

use crate::dimension::Dimensions;

/// Version of the event wire format. Bump on any incompatible change.
pub const EVENT_SCHEMA_VERSION: u16 = 1;

/// Longest error message an event carries, in bytes (cut on a char boundary).
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// Most stack frames an event carries.
pub const MAX_STACK_FRAMES: usize = 2;

/// How a request counted as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The upstream answered with a status code the route counts as an error.
    Status,
    /// The upstream answered 2xx but the JSON body predicate said it was an error.
    BodyPredicate,
    /// The upstream could not be reached (refused, reset, DNS, TLS).
    Transport,
    /// The upstream did not answer within the route's timeout.
    Timeout,
}

/// One failed request, desensitized, as the enforcer saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorEvent {
    /// Wire format version; see [`EVENT_SCHEMA_VERSION`].
    pub schema_version: u16,
    /// Unique id (32 hex chars); consumers de-duplicate redeliveries on it.
    pub event_id: String,
    /// W3C trace id (32 hex chars), from `traceparent` or generated.
    pub trace_id: String,
    /// Span id of the enforcer's span (16 hex chars).
    pub span_id: String,
    /// When the response (or failure) was observed, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The configured route name (bounded cardinality).
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Request path, desensitized (no query string).
    pub path: String,
    /// The service / upstream host the request went to.
    pub upstream: String,
    /// HTTP status returned to the client (502 / 504 for transport failures and timeouts).
    pub status: u16,
    /// How the request counted as an error.
    pub error_kind: ErrorKind,
    /// The error text: JSON `message` / `error` field or the body text, desensitized, at most
    /// [`MAX_MESSAGE_BYTES`].
    pub message: String,
    /// The first stack frames found in the body, desensitized (at most [`MAX_STACK_FRAMES`]).
    #[serde(default)]
    pub stack: Vec<String>,
    /// Time from request start to response head (or failure), milliseconds.
    pub latency_ms: f64,
    /// The cheap template id of `message` ([`crate::text::template_id`]).
    pub template_id: u64,
    /// The request's configured dimension values.
    #[serde(default)]
    pub dimensions: Dimensions,
    /// Probability with which this event was kept by the sampler (weight = 1 / sample_rate).
    pub sample_rate: f64,
    /// The policy whose slice this request fell in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
}

/// One uniformly sampled request (error or not) with its dimensions, so the pipeline can
/// estimate any slice's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TrafficSample {
    /// Wire format version.
    pub schema_version: u16,
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    /// Route name.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Upstream host.
    pub upstream: String,
    /// Status returned to the client.
    pub status: u16,
    /// Whether the request counted as an error under the route's error definition.
    pub is_error: bool,
    /// Whether the enforcer itself rejected the request (policy or classic limit).
    #[serde(default)]
    pub rejected: bool,
    /// The request's configured dimension values.
    #[serde(default)]
    pub dimensions: Dimensions,
    /// Probability with which this request was sampled (weight = 1 / sample_rate).
    pub sample_rate: f64,
}

/// Exact per-route, per-second counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteCounts {
    /// Wire format version.
    pub schema_version: u16,
    /// Start of the second, Unix milliseconds (a multiple of 1000).
    pub second_ms: i64,
    /// Route name.
    pub route: String,
    /// Requests seen.
    pub requests: u64,
    /// Requests that counted as errors.
    pub errors: u64,
    /// Requests the enforcer rejected itself.
    pub rejected: u64,
}

/// Everything the enforcer sends to its event sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GatewayRecord {
    /// A failed request.
    Error(ErrorEvent),
    /// A uniformly sampled request.
    Sample(TrafficSample),
    /// Per-route counts for one second.
    Counts(RouteCounts),
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not one of the record shapes.
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A schema version this build does not understand.
    #[error("unsupported schema_version {0} (this build reads {EVENT_SCHEMA_VERSION})")]
    UnsupportedVersion(u16),
}

impl GatewayRecord {
    /// The key records are partitioned by, so a route's events stay ordered.
    pub fn route(&self) -> &str {
        match self {
            Self::Error(e) => &e.route,
            Self::Sample(s) => &s.route,
            Self::Counts(c) => &c.route,
        }
    }

    /// Which topic the record travels on: an index into
    /// [`crate::names::RECORD_TOPIC_SUFFIXES`] (error events 0, samples 1, counts 2).
    pub fn topic_index(&self) -> usize {
        match self {
            Self::Error(_) => 0,
            Self::Sample(_) => 1,
            Self::Counts(_) => 2,
        }
    }

    /// The record's kind as the enforcer's metrics label it (`error`, `sample`, `counts`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Error(_) => "error",
            Self::Sample(_) => "sample",
            Self::Counts(_) => "counts",
        }
    }

    /// The record's event time, Unix milliseconds.
    pub fn timestamp_ms(&self) -> i64 {
        match self {
            Self::Error(e) => e.timestamp_ms,
            Self::Sample(s) => s.timestamp_ms,
            Self::Counts(c) => c.second_ms,
        }
    }

    fn schema_version(&self) -> u16 {
        match self {
            Self::Error(e) => e.schema_version,
            Self::Sample(s) => s.schema_version,
            Self::Counts(c) => c.schema_version,
        }
    }

    /// Encodes as one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // custom serializers; f64 NaN becomes null.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes one JSON object, refusing unknown versions.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let rec: Self = serde_json::from_slice(bytes)?;
        match rec.schema_version() {
            EVENT_SCHEMA_VERSION => Ok(rec),
            v => Err(DecodeError::UnsupportedVersion(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> ErrorEvent {
        ErrorEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id: "0af7651916cd43dd8448eb211c80319c".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            timestamp_ms: 1_700_000_000_000,
            route: "payments".into(),
            method: "POST".into(),
            path: "/pay".into(),
            upstream: "127.0.0.1:9000".into(),
            status: 500,
            error_kind: ErrorKind::Status,
            message: "channel <*> timeout".into(),
            stack: vec![],
            latency_ms: 12.5,
            template_id: 42,
            dimensions: [("body:channel".to_string(), "alipay".to_string())].into(),
            sample_rate: 0.05,
            policy_id: None,
        }
    }

    #[test]
    fn records_round_trip() {
        let rec = GatewayRecord::Error(sample_event());
        let back = GatewayRecord::from_json(&rec.to_json()).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn refuses_future_versions_and_garbage() {
        let mut e = sample_event();
        e.schema_version = 99;
        let bytes = GatewayRecord::Error(e).to_json();
        assert!(matches!(
            GatewayRecord::from_json(&bytes),
            Err(DecodeError::UnsupportedVersion(99))
        ));
        assert!(matches!(
            GatewayRecord::from_json(b"\x00\xffnot json"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
