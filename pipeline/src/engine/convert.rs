//! The enforcer's records as Arrow batches: error events → `error_events`, traffic samples →
//! `traffic_samples`, per-route counts → `route_counts`.
//!
//! Every table carries `ts`, the record's event time as a millisecond timestamp, for the
//! watermark. Dimensions travel as a JSON object string (`{"body:channel":"alipay"}`).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use schemas::event::{ErrorEvent, ErrorKind, GatewayRecord, RouteCounts, TrafficSample};

/// Table name of error events.
pub const ERROR_EVENTS: &str = "error_events";
/// Table name of traffic samples.
pub const TRAFFIC_SAMPLES: &str = "traffic_samples";
/// Table name of per-route counts.
pub const ROUTE_COUNTS: &str = "route_counts";

fn ts_field() -> Field {
    Field::new(
        "ts",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// Schema of [`ERROR_EVENTS`].
pub fn error_events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts_field(),
        utf8("event_id"),
        utf8("trace_id"),
        utf8("span_id"),
        utf8("route"),
        utf8("method"),
        utf8("path"),
        utf8("upstream"),
        Field::new("status", DataType::Int32, false),
        utf8("error_kind"),
        utf8("message"),
        utf8("stack"),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("template_id", DataType::UInt64, false),
        utf8("dimensions"),
        Field::new("sample_rate", DataType::Float64, false),
        Field::new("policy_id", DataType::Utf8, true),
    ]))
}

/// Schema of [`TRAFFIC_SAMPLES`].
pub fn traffic_samples_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts_field(),
        utf8("route"),
        utf8("method"),
        utf8("upstream"),
        Field::new("status", DataType::Int32, false),
        Field::new("is_error", DataType::Boolean, false),
        Field::new("rejected", DataType::Boolean, false),
        utf8("dimensions"),
        Field::new("sample_rate", DataType::Float64, false),
    ]))
}

/// Schema of [`ROUTE_COUNTS`].
pub fn route_counts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts_field(),
        utf8("route"),
        Field::new("requests", DataType::UInt64, false),
        Field::new("errors", DataType::UInt64, false),
        Field::new("rejected", DataType::UInt64, false),
    ]))
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Status => "status",
        ErrorKind::BodyPredicate => "body_predicate",
        ErrorKind::Transport => "transport",
        ErrorKind::Timeout => "timeout",
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

fn strings<'a, T: 'a>(rows: &'a [&T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
}

/// Error events as one batch of [`error_events_schema`].
pub fn error_events_batch(rows: &[&ErrorEvent]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|e| e.timestamp_ms),
        )),
        strings(rows, |e| &e.event_id),
        strings(rows, |e| &e.trace_id),
        strings(rows, |e| &e.span_id),
        strings(rows, |e| &e.route),
        strings(rows, |e| &e.method),
        strings(rows, |e| &e.path),
        strings(rows, |e| &e.upstream),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|e| i32::from(e.status)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|e| kind_name(e.error_kind)),
        )),
        strings(rows, |e| &e.message),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|e| json(&e.stack)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|e| e.latency_ms),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|e| e.template_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|e| json(&e.dimensions)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|e| e.sample_rate),
        )),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|e| e.policy_id.as_deref())
                .collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(error_events_schema(), columns)
}

/// Traffic samples as one batch of [`traffic_samples_schema`].
pub fn traffic_samples_batch(rows: &[&TrafficSample]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|s| s.timestamp_ms),
        )),
        strings(rows, |s| &s.route),
        strings(rows, |s| &s.method),
        strings(rows, |s| &s.upstream),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|s| i32::from(s.status)),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|s| s.is_error).collect::<Vec<_>>(),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|s| s.rejected).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|s| json(&s.dimensions)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|s| s.sample_rate),
        )),
    ];
    RecordBatch::try_new(traffic_samples_schema(), columns)
}

/// Route counts as one batch of [`route_counts_schema`].
pub fn route_counts_batch(rows: &[&RouteCounts]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|c| c.second_ms),
        )),
        strings(rows, |c| &c.route),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|c| c.requests),
        )),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|c| c.errors))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|c| c.rejected),
        )),
    ];
    RecordBatch::try_new(route_counts_schema(), columns)
}

/// Splits records by kind into `(table, batch)` pairs; kinds with no records are left out.
pub fn records_to_batches(
    records: &[GatewayRecord],
) -> Result<Vec<(&'static str, RecordBatch)>, ArrowError> {
    let mut errors = Vec::new();
    let mut samples = Vec::new();
    let mut counts = Vec::new();
    for r in records {
        match r {
            GatewayRecord::Error(e) => errors.push(e),
            GatewayRecord::Sample(s) => samples.push(s),
            GatewayRecord::Counts(c) => counts.push(c),
        }
    }
    let mut out = Vec::new();
    if !errors.is_empty() {
        out.push((ERROR_EVENTS, error_events_batch(&errors)?));
    }
    if !samples.is_empty() {
        out.push((TRAFFIC_SAMPLES, traffic_samples_batch(&samples)?));
    }
    if !counts.is_empty() {
        out.push((ROUTE_COUNTS, route_counts_batch(&counts)?));
    }
    Ok(out)
}
