//! Optional OpenTelemetry export: one `SERVER` span per request, sent over OTLP/HTTP
//! (protobuf) by the SDK's batch processor on its own thread.
//!
//! The proxy already owns the W3C trace context (it keeps or starts a trace and forwards
//! `traceparent` with its own span id), so spans are built from those ids and handed straight
//! to the batch processor: the exported span is exactly the one the upstream sees as its
//! parent. The request path only pushes into the processor's bounded queue; when the
//! collector is slow or down, spans are dropped (the SDK counts and logs them), never waited
//! for. Sampling follows the caller: a sampled `traceparent` is exported, an unsampled one is
//! not, and new traces are kept at `sample_ratio`.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

use crate::config::TelemetryConfig;

/// The exporter, present only when `telemetry.otlp_endpoint` is set.
#[derive(Debug)]
pub struct Telemetry {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    sample_ratio: f64,
}

/// One finished request, as the proxy saw it.
#[derive(Debug)]
pub struct RequestSpan<'a> {
    /// 32 hex digits.
    pub trace_id: &'a str,
    /// The enforcer's span id (forwarded upstream in `traceparent`), 16 hex digits.
    pub span_id: &'a str,
    /// The caller's span id when a valid `traceparent` came in.
    pub parent_span_id: Option<&'a str>,
    /// The caller's `sampled` flag when a `traceparent` came in.
    pub parent_sampled: Option<bool>,
    /// Route name (bounded cardinality).
    pub route: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Request path without the query.
    pub path: &'a str,
    /// Response status sent to the client.
    pub status: u16,
    /// Failure cluster of the policy involved, or empty.
    pub cluster: &'a str,
    /// The response counted as an error on the route.
    pub is_error: bool,
    /// The enforcer rejected the request itself.
    pub rejected: bool,
    /// When the request arrived and when it finished.
    pub start: SystemTime,
    /// When the response head was ready.
    pub end: SystemTime,
}

impl Telemetry {
    /// Builds the OTLP/HTTP exporter and its batch processor; `None` when disabled.
    pub fn start(config: &TelemetryConfig, service_name: &str) -> Result<Option<Self>, String> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_millis(config.export_timeout_ms))
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue)
            .with_max_export_batch_size(config.max_queue.min(512))
            .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(service_name.to_owned())
                .build(),
        );
        let scope = InstrumentationScope::builder("llm-aware-gateway/enforcer")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Some(Self {
            processor,
            scope,
            sample_ratio: config.sample_ratio,
        }))
    }

    /// Queues the request's span if it is sampled; never blocks.
    pub fn record(&self, span: &RequestSpan<'_>) {
        let sampled = match span.parent_sampled {
            Some(s) => s,
            None => self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio,
        };
        if !sampled {
            return;
        }
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(span.trace_id),
            SpanId::from_hex(span.span_id),
        ) else {
            return; // ids are generated or validated upstream of here; nothing to export
        };
        let parent = span
            .parent_span_id
            .and_then(|p| SpanId::from_hex(p).ok())
            .unwrap_or(SpanId::INVALID);
        let status = if span.is_error || span.status >= 500 {
            Status::error(format!("HTTP {}", span.status))
        } else {
            Status::Unset
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", span.method.to_owned()),
            KeyValue::new("http.route", span.route.to_owned()),
            KeyValue::new("url.path", span.path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(span.status)),
            KeyValue::new("gateway.rejected", span.rejected),
        ];
        if !span.cluster.is_empty() {
            attributes.push(KeyValue::new("gateway.cluster", span.cluster.to_owned()));
        }
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: span.parent_span_id.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("{} {}", span.method, span.route)),
            start_time: span.start,
            end_time: span.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Exports what is queued and stops the processor's thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(error = %e, "telemetry shutdown");
        }
    }
}
