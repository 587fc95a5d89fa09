//! The windowed SQL engine: windows, watermark and lateness, SQL errors, UDFs, and
//! `sql/incident.sql` end to end against values computed here from the generated input.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should abort the test loudly

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use pipeline::engine::{Engine, EngineError, JobSpec, SinkOutput, Window};
use schemas::event::{EVENT_SCHEMA_VERSION, ErrorEvent, ErrorKind, GatewayRecord, RouteCounts};

// ---------------------------------------------------------------- helpers

type Collected = Arc<Mutex<Vec<SinkOutput>>>;

fn engine_for(files: &[(&str, &str)]) -> Result<(Engine, Collected), EngineError> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    let spec = JobSpec::from_sql(&files)?;
    let out: Collected = Arc::default();
    let sink_out = out.clone();
    let engine = Engine::new(spec, Box::new(move |o| sink_out.lock().unwrap().push(o)));
    Ok((engine, out))
}

/// One row as column name → displayed value.
type Row = BTreeMap<String, String>;

fn rows(outputs: &[SinkOutput], sink: &str) -> Vec<(Window, Row)> {
    let mut out = Vec::new();
    for o in outputs.iter().filter(|o| o.sink == sink) {
        for b in &o.batches {
            let fmt: Vec<ArrayFormatter> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
                .collect();
            for i in 0..b.num_rows() {
                let row = b
                    .schema()
                    .fields()
                    .iter()
                    .zip(&fmt)
                    .map(|(f, v)| (f.name().clone(), v.value(i).to_string()))
                    .collect();
                out.push((o.window, row));
            }
        }
    }
    out
}

/// A source `t(ts, k, v)` with 2 s lateness, counted per key per window.
fn counting_job(window: &str) -> String {
    format!(
        "CREATE TABLE t (\n  ts TIMESTAMP,\n  k TEXT,\n  v BIGINT,\n  \
         WATERMARK FOR ts AS ts - INTERVAL '2' SECOND\n) WITH (connector = 'kafka', type = 'source');\n\
         CREATE TABLE out WITH (connector = 'kafka', type = 'sink');\n\
         INSERT INTO out\nSELECT {window} AS window, k, COUNT(*) AS n, SUM(v) AS total\n\
         FROM t\nGROUP BY window, k;\n"
    )
}

fn batch(rows: &[(i64, &str, i64)]) -> RecordBatch {
    let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from_iter_values(
        rows.iter().map(|r| r.0),
    ));
    let k: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1)));
    let v: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2)));
    RecordBatch::try_from_iter(vec![("ts", ts), ("k", k), ("v", v)]).unwrap()
}

/// (window start s, key, n) for every output row, sorted.
fn counts(out: &Collected) -> Vec<(i64, String, String)> {
    let mut got: Vec<_> = rows(&out.lock().unwrap(), "out")
        .into_iter()
        .map(|(w, r)| (w.start_ms / 1000, r["k"].clone(), r["n"].clone()))
        .collect();
    // Rows within a window come in no particular order; windows come oldest first.
    got.sort();
    got
}

fn c(start_s: i64, k: &str, n: u64) -> (i64, String, String) {
    (start_s, k.to_string(), n.to_string())
}

// ---------------------------------------------------------------- windows and watermarks

#[tokio::test]
async fn tumbling_window_closes_when_the_watermark_passes_its_end() {
    let (mut engine, out) =
        engine_for(&[("job.sql", &counting_job("TUMBLE(INTERVAL '10 seconds')"))]).unwrap();
    engine
        .push_batch(
            "t",
            batch(&[(1_000, "a", 1), (5_000, "a", 2), (9_999, "b", 4)]),
        )
        .await
        .unwrap();
    assert!(counts(&out).is_empty(), "watermark 7.999 s closes nothing");
    // 11.999 s - 2 s = 9.999 s: still inside [0, 10).
    engine
        .push_batch("t", batch(&[(11_999, "a", 8)]))
        .await
        .unwrap();
    assert!(counts(&out).is_empty());
    // 12 s - 2 s = 10 s: [0, 10) closes; the row at exactly 10 s belongs to [10, 20).
    engine
        .push_batch("t", batch(&[(12_000, "a", 16), (10_000, "b", 32)]))
        .await
        .unwrap();
    assert_eq!(counts(&out), vec![c(0, "a", 2), c(0, "b", 1)]);
    let first = rows(&out.lock().unwrap(), "out");
    let a = first.iter().find(|(_, r)| r["k"] == "a").unwrap();
    assert_eq!(a.1["total"], "3");
    assert_eq!(
        a.0,
        Window {
            start_ms: 0,
            end_ms: 10_000
        }
    );
    assert!(a.1["window"].contains("start"), "{:?}", a.1);
    engine.flush().await.unwrap();
    assert_eq!(
        counts(&out),
        vec![c(0, "a", 2), c(0, "b", 1), c(10, "a", 2), c(10, "b", 1)]
    );
    assert_eq!(engine.stats().late_rows, 0);
}

#[tokio::test]
async fn late_rows_are_counted_and_kept_and_on_time_rows_are_never_lost() {
    let (mut engine, out) =
        engine_for(&[("job.sql", &counting_job("TUMBLE(INTERVAL '10 seconds')"))]).unwrap();
    engine
        .push_batch("t", batch(&[(1_000, "a", 1), (15_000, "a", 1)]))
        .await
        .unwrap();
    assert_eq!(
        counts(&out),
        vec![c(0, "a", 1)],
        "watermark 13 s closed [0, 10)"
    );
    // 9.5 s belongs to the closed [0, 10): late. 11 s is older than the watermark (13 s) but
    // its window [10, 20) is still open, so it counts.
    engine
        .push_batch("t", batch(&[(9_500, "late", 1), (11_000, "a", 1)]))
        .await
        .unwrap();
    assert_eq!(engine.stats().late_rows, 1);
    let late = engine.take_late_rows();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].0, "t");
    assert_eq!(late[0].1.num_rows(), 1);
    let keys = late[0].1.column_by_name("k").unwrap();
    let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(keys.value(0), "late");
    engine.flush().await.unwrap();
    assert_eq!(counts(&out), vec![c(0, "a", 1), c(10, "a", 2)]);
    // Every row pushed is either in a window or in the late output.
    let stats = engine.stats();
    assert_eq!(stats.rows_in + stats.late_rows, 4);
}

#[tokio::test]
async fn out_of_order_rows_within_lateness_land_in_their_window() {
    let (mut engine, out) =
        engine_for(&[("job.sql", &counting_job("TUMBLE(INTERVAL '10 seconds')"))]).unwrap();
    // Arrival order 11 s, 9.5 s, 10.5 s, 8 s: all within 2 s of the newest.
    for t in [11_000, 9_500, 10_500, 8_000] {
        engine.push_batch("t", batch(&[(t, "a", t)])).await.unwrap();
    }
    assert!(counts(&out).is_empty());
    engine.flush().await.unwrap();
    assert_eq!(counts(&out), vec![c(0, "a", 2), c(10, "a", 2)]);
    let r = rows(&out.lock().unwrap(), "out");
    assert_eq!(r[0].1["total"], (9_500 + 8_000).to_string());
    assert_eq!(r[1].1["total"], (11_000 + 10_500).to_string());
    assert_eq!(engine.stats().late_rows, 0);
}

#[tokio::test]
async fn hop_windows_see_every_row_of_their_span() {
    let (mut engine, out) = engine_for(&[(
        "job.sql",
        &counting_job("HOP(INTERVAL '10 seconds', INTERVAL '20 seconds')"),
    )])
    .unwrap();
    engine
        .push_batch(
            "t",
            batch(&[(5_000, "a", 1), (15_000, "a", 10), (25_000, "a", 100)]),
        )
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let r = rows(&out.lock().unwrap(), "out");
    let got: Vec<(i64, i64, String, String)> = r
        .iter()
        .map(|(w, row)| (w.start_ms, w.end_ms, row["n"].clone(), row["total"].clone()))
        .collect();
    let want = vec![
        (-10_000, 10_000, "1".to_string(), "1".to_string()),
        (0, 20_000, "2".to_string(), "11".to_string()),
        (10_000, 30_000, "2".to_string(), "110".to_string()),
        (20_000, 40_000, "1".to_string(), "100".to_string()),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn hop_rows_that_missed_a_closed_window_are_late() {
    let (mut engine, out) = engine_for(&[(
        "job.sql",
        &counting_job("HOP(INTERVAL '10 seconds', INTERVAL '20 seconds')"),
    )])
    .unwrap();
    engine
        .push_batch("t", batch(&[(22_000, "a", 1)]))
        .await
        .unwrap();
    // Watermark 20 s: [0, 20) closed (no rows, so nothing emitted). A row at 12 s belonged to it.
    engine
        .push_batch("t", batch(&[(12_000, "a", 1)]))
        .await
        .unwrap();
    assert_eq!(engine.stats().late_rows, 1);
    engine.flush().await.unwrap();
    assert_eq!(counts(&out), vec![c(10, "a", 1), c(20, "a", 1)]);
}

#[tokio::test]
async fn an_external_clock_closes_windows_when_the_stream_is_idle() {
    let (mut engine, out) =
        engine_for(&[("job.sql", &counting_job("TUMBLE(INTERVAL '10 seconds')"))]).unwrap();
    engine
        .push_batch("t", batch(&[(3_000, "a", 1)]))
        .await
        .unwrap();
    engine.advance_watermark(9_999).await.unwrap();
    assert!(counts(&out).is_empty());
    engine.advance_watermark(10_000).await.unwrap();
    assert_eq!(counts(&out), vec![c(0, "a", 1)]);
}

// ---------------------------------------------------------------- SQL errors

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let sql = "CREATE TABLE t (\n  ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND\n) WITH (connector = 'x');\nINSERT INTO out SELECT (k FROM t GROUP BY;\n";
    let err = JobSpec::from_sql(&[("jobs/bad.sql".to_string(), sql.to_string())]).unwrap_err();
    assert!(matches!(err, EngineError::Parse { line: 5, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("jobs/bad.sql:5: syntax error"), "{msg}");
}

#[test]
fn an_unknown_table_names_the_file_and_line() {
    let sql = counting_job("TUMBLE(INTERVAL '10 seconds')").replace("FROM t\n", "FROM\n  nope\n");
    let line = sql.lines().position(|l| l.contains("nope")).unwrap() as u64 + 1;
    let err = JobSpec::from_sql(&[("job.sql".to_string(), sql)]).unwrap_err();
    match &err {
        EngineError::UnknownTable {
            file,
            line: l,
            table,
        } => {
            assert_eq!(
                (file.as_str(), *l, table.as_str()),
                ("job.sql", line, "nope")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("job.sql:{line}: unknown table nope")
    );
}

#[tokio::test]
async fn an_unknown_function_fails_at_start_with_the_file_and_line() {
    let sql = counting_job("TUMBLE(INTERVAL '10 seconds')")
        .replace("SUM(v) AS total", "SUM(v) AS total,\n  no_such_fn(k) AS x");
    let line = sql.lines().position(|l| l.contains("no_such_fn")).unwrap() as u64 + 1;
    let (mut engine, _) = engine_for(&[("job.sql", &sql)]).unwrap();
    let err = engine.validate().await.unwrap_err();
    match &err {
        EngineError::Plan {
            file,
            line: l,
            reason,
        } => {
            assert_eq!((file.as_str(), *l), ("job.sql", line));
            assert!(reason.contains("no_such_fn"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Pushing rows validates too, so a job never runs half-checked.
    assert!(engine.push_batch("t", batch(&[(1, "a", 1)])).await.is_err());
}

#[test]
fn a_query_without_a_window_or_with_a_bad_window_is_refused() {
    let sql = counting_job("TUMBLE(INTERVAL '10 seconds')")
        .replace("TUMBLE(INTERVAL '10 seconds') AS window, ", "")
        .replace("GROUP BY window, k", "GROUP BY k");
    let err = JobSpec::from_sql(&[("job.sql".to_string(), sql)]).unwrap_err();
    assert!(err.to_string().contains("no TUMBLE"), "{err}");
    let sql = counting_job("HOP(INTERVAL '20 seconds', INTERVAL '10 seconds')");
    let err = JobSpec::from_sql(&[("job.sql".to_string(), sql)]).unwrap_err();
    assert!(err.to_string().contains("width >= slide"), "{err}");
}

// ---------------------------------------------------------------- UDFs

/// `template_id(text) -> UInt64`: the cheap template id, through a thin DataFusion adapter.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TemplateIdUdf {
    signature: Signature,
}

impl ScalarUDFImpl for TemplateIdUdf {
    fn name(&self) -> &str {
        "template_id"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(v)) => Ok(ColumnarValue::Scalar(
                ScalarValue::UInt64(v.as_deref().map(schemas::text::template_id)),
            )),
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::UInt64(None))),
            ColumnarValue::Array(a) => {
                let Some(text) = a.as_any().downcast_ref::<StringArray>() else {
                    return Ok(ColumnarValue::Array(Arc::new(UInt64Array::new_null(
                        a.len(),
                    ))));
                };
                let ids: UInt64Array = text
                    .iter()
                    .map(|t| t.map(schemas::text::template_id))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(ids)))
            }
        }
    }
}

#[tokio::test]
async fn registered_udfs_run_in_the_sql() {
    let sql = "CREATE TABLE errs (ts TIMESTAMP, message TEXT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'kafka');\n\
               CREATE TABLE out WITH (connector = 'kafka', type = 'sink');\n\
               INSERT INTO out SELECT TUMBLE(INTERVAL '10 seconds') AS window, \
               template_id(message) AS tid, COUNT(*) AS n FROM errs GROUP BY window, tid;";
    let (mut unregistered, _) = engine_for(&[("udf.sql", sql)]).unwrap();
    let err = unregistered.validate().await.unwrap_err();
    assert!(matches!(err, EngineError::Plan { line: 3, .. }), "{err:?}");

    let (mut engine, out) = engine_for(&[("udf.sql", sql)]).unwrap();
    engine.register_udf(ScalarUDF::from(TemplateIdUdf {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
    }));
    engine.validate().await.unwrap();
    let messages = [
        "connection refused to 10.0.0.1:5432",
        "connection refused to 10.0.0.2:5432",
        "order 12345 not found",
    ];
    let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000, 3_000]));
    let msg: ArrayRef = Arc::new(StringArray::from(messages.to_vec()));
    let b = RecordBatch::try_from_iter(vec![("ts", ts), ("message", msg)]).unwrap();
    engine.push_batch("errs", b).await.unwrap();
    engine.flush().await.unwrap();
    let mut got: Vec<(String, String)> = rows(&out.lock().unwrap(), "out")
        .into_iter()
        .map(|(_, r)| (r["tid"].clone(), r["n"].clone()))
        .collect();
    got.sort();
    let mut want = vec![
        (
            schemas::text::template_id(messages[0]).to_string(),
            "2".to_string(),
        ),
        (
            schemas::text::template_id(messages[2]).to_string(),
            "1".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn the_udfs_crate_functions_are_callable_from_sql() {
    let sql = "CREATE TABLE errs (ts TIMESTAMP, message TEXT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'kafka');\n\
               CREATE TABLE out WITH (connector = 'kafka', type = 'sink');\n\
               INSERT INTO out SELECT TUMBLE(INTERVAL '10 seconds') AS window, message, \
               mask_pii(message) AS masked, template_id(message) AS tid, \
               template(message) AS tpl, cluster_of(message) AS cluster, \
               embedding(message) AS emb FROM errs;";
    let (mut engine, out) = engine_for(&[("udfs.sql", sql)]).unwrap();
    pipeline::udf::register(&mut engine);
    engine.validate().await.unwrap();
    let messages = [
        "dial tcp 10.0.0.1:5432: connect: connection refused (user a.b@example.com)",
        "dial tcp 10.0.0.9:5432: connect: connection refused (user c.d@example.com)",
        "x509: certificate has expired or is not yet valid: current time 2026-11-28T10:00:00Z",
    ];
    let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000, 3_000]));
    let msg: ArrayRef = Arc::new(StringArray::from(messages.to_vec()));
    let b = RecordBatch::try_from_iter(vec![("ts", ts), ("message", msg)]).unwrap();
    engine.push_batch("errs", b).await.unwrap();
    engine.flush().await.unwrap();
    let got: BTreeMap<String, Row> = rows(&out.lock().unwrap(), "out")
        .into_iter()
        .map(|(_, r)| (r["message"].clone(), r))
        .collect();
    let (a, b, c) = (&got[messages[0]], &got[messages[1]], &got[messages[2]]);
    assert!(
        a["masked"].contains("<EMAIL>") && !a["masked"].contains("example.com"),
        "{a:?}"
    );
    assert_eq!(a["tid"], b["tid"], "same template");
    assert_ne!(a["tid"], c["tid"]);
    assert_eq!(a["tpl"], b["tpl"]);
    assert!(!a["tpl"].contains("10.0.0.1"), "{a:?}");
    assert_eq!(a["cluster"], b["cluster"], "same failure, same cluster");
    assert_ne!(
        a["cluster"], c["cluster"],
        "refused database vs expired certificate"
    );
    let dim = udfs::sql::embedding(Some("x")).unwrap().len();
    assert!(dim > 0 && dim.is_multiple_of(4));
    assert_eq!(a["emb"].len(), 2 * dim, "packed f32, shown as hex");
}

/// A UDF `tag(text) -> text` (upper case) that counts the rows it is called on.
fn counting_tag_udf() -> (ScalarUDF, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let udf = create_udf(
        "tag",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| {
            let rows = ColumnarValue::values_to_arrays(args)?;
            let text = rows[0].as_any().downcast_ref::<StringArray>().unwrap();
            counted.fetch_add(text.len(), Ordering::SeqCst);
            let upper: StringArray = text.iter().map(|v| v.map(str::to_uppercase)).collect();
            Ok(ColumnarValue::Array(Arc::new(upper)))
        }),
    );
    (udf, calls)
}

/// Ten rows at 0..9 s, keys alternating a / b, through a 5 s window sliding by 1 s.
async fn run_hop_with_tag(query: &str) -> (Vec<(Window, Row)>, usize, String) {
    let sql = format!(
        "CREATE TABLE t (ts TIMESTAMP, k TEXT, v BIGINT, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'kafka');\n\
         CREATE TABLE out WITH (connector = 'kafka', type = 'sink');\n\
         INSERT INTO out {query};"
    );
    let (mut engine, out) = engine_for(&[("tag.sql", &sql)]).unwrap();
    let (udf, calls) = counting_tag_udf();
    engine.register_udf(udf);
    engine.validate().await.unwrap();
    let keys = ["a", "b"];
    let rows_in: Vec<(i64, &str, i64)> = (0..10)
        .map(|i| (i * 1000, keys[i as usize % 2], i))
        .collect();
    engine.push_batch("t", batch(&rows_in)).await.unwrap();
    engine.flush().await.unwrap();
    let got = rows(&out.lock().unwrap(), "out");
    (
        got,
        calls.load(Ordering::SeqCst),
        engine.running_sql(0).unwrap(),
    )
}

/// (window start s, tag, n) of the rows above: row i (key a when even) is in the windows
/// that start at i - 4 ..= i seconds.
fn expected_tag_counts() -> Vec<(i64, String, String)> {
    let mut want = Vec::new();
    for start in -4..10 {
        for (key, parity) in [("A", 0), ("B", 1)] {
            let n = (start.max(0)..start + 5)
                .filter(|i| *i < 10 && i % 2 == parity)
                .count();
            if n > 0 {
                want.push((start, key.to_string(), n.to_string()));
            }
        }
    }
    want.sort();
    want
}

/// (window start s, the tag in `column`, n) of each output row, sorted.
fn tag_counts(got: &[(Window, Row)], column: &str) -> Vec<(i64, String, String)> {
    let mut counts: Vec<_> = got
        .iter()
        .map(|(w, r)| (w.start_ms / 1000, r[column].clone(), r["n"].clone()))
        .collect();
    counts.sort();
    counts
}

#[tokio::test]
async fn a_udf_on_a_source_column_runs_once_per_row_not_once_per_window() {
    let (got, calls, running) = run_hop_with_tag(
        "SELECT HOP(INTERVAL '1 second', INTERVAL '5 seconds') AS window, tag(t.k) AS k, \
         COUNT(*) AS n FROM t GROUP BY window, tag(k)",
    )
    .await;
    assert_eq!(
        calls, 10,
        "each row once, not once per window it falls in (5)"
    );
    assert!(!running.contains("tag("), "{running}");
    assert_eq!(tag_counts(&got, "k"), expected_tag_counts());
}

#[tokio::test]
async fn a_udf_whose_unnamed_result_names_a_column_still_runs_per_window() {
    // Reading a hidden column would rename the output column `tag(t.k)`, so the query runs
    // as written: same rows, same names, the call made in every window.
    let (got, calls, running) = run_hop_with_tag(
        "SELECT HOP(INTERVAL '1 second', INTERVAL '5 seconds') AS window, tag(k), \
         COUNT(*) AS n FROM t GROUP BY window, tag(k)",
    )
    .await;
    assert!(running.contains("tag(k)"), "{running}");
    assert!(calls >= 50, "{calls}: each row in each of its 5 windows");
    assert_eq!(tag_counts(&got, "tag(t.k)"), expected_tag_counts());
}

// ---------------------------------------------------------------- sql/incident.sql end to end

const T0: i64 = 1_700_000_000_000; // a multiple of 10 s

fn incident_sql() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql")).unwrap()
}

fn error_event(ts: i64, route: &str, message: &str, sample_rate: f64) -> GatewayRecord {
    GatewayRecord::Error(ErrorEvent {
        schema_version: EVENT_SCHEMA_VERSION,
        event_id: format!("{ts:032x}"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        timestamp_ms: ts,
        route: route.into(),
        method: "POST".into(),
        path: format!("/{route}"),
        upstream: "127.0.0.1:9000".into(),
        status: 500,
        error_kind: ErrorKind::Status,
        message: message.into(),
        stack: vec![],
        latency_ms: 3.0,
        template_id: schemas::text::template_id(message),
        dimensions: [("body:channel".to_string(), "alipay".to_string())].into(),
        sample_rate,
        policy_id: None,
    })
}

const MSG_A: &str = "upstream timeout after 3000 ms";
const MSG_B: &str = "alipay channel 7 returned code 502";
const MSG_C: &str = "search index shard 4 unavailable";
const MSG_D: &str = "invalid cursor abc";

/// 30 s of traffic, one Vec of records per second, in event-time order.
///
/// payments: 100 requests/s; 2 errors/s (A) in 0–10 s, 25 (B) + 5 (A) per s in 10–20 s,
/// 1 (A) per s in 20–30 s. search: 50 requests/s; 3 sampled errors/s (C, sample rate 0.5)
/// in 10–20 s; 3 errors (D) in 20–30 s.
fn thirty_seconds() -> Vec<Vec<GatewayRecord>> {
    let mut seconds = Vec::new();
    for s in 0..30i64 {
        let base = T0 + s * 1000;
        let mut recs = Vec::new();
        let errors = |route: &str, msg: &str, n: i64, rate: f64, recs: &mut Vec<GatewayRecord>| {
            for i in 0..n {
                recs.push(error_event(
                    base + (i * 37 + s * 11) % 1000,
                    route,
                    msg,
                    rate,
                ));
            }
        };
        match s {
            0..=9 => errors("payments", MSG_A, 2, 1.0, &mut recs),
            10..=19 => {
                errors("payments", MSG_B, 25, 1.0, &mut recs);
                errors("payments", MSG_A, 5, 1.0, &mut recs);
                errors("search", MSG_C, 3, 0.5, &mut recs);
            }
            _ => errors("payments", MSG_A, 1, 1.0, &mut recs),
        }
        if (20..23).contains(&s) {
            errors("search", MSG_D, 1, 1.0, &mut recs);
        }
        for (route, requests) in [("payments", 100u64), ("search", 50)] {
            recs.push(GatewayRecord::Counts(RouteCounts {
                schema_version: EVENT_SCHEMA_VERSION,
                second_ms: base,
                route: route.into(),
                requests,
                errors: 0,
                rejected: 0,
            }));
        }
        seconds.push(recs);
    }
    seconds
}

/// Expected `route_window_stats`, computed straight from the records:
/// (window start, route) → (errors, requests, error rate, incident).
fn expected_stats(
    seconds: &[Vec<GatewayRecord>],
    rate_threshold: f64,
) -> BTreeMap<(i64, String), (i64, u64, f64, bool)> {
    let mut errors: BTreeMap<(i64, String), f64> = BTreeMap::new();
    let mut requests: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for r in seconds.iter().flatten() {
        let w = r.timestamp_ms().div_euclid(10_000) * 10_000;
        let key = (w, r.route().to_string());
        match r {
            GatewayRecord::Error(e) => *errors.entry(key).or_default() += 1.0 / e.sample_rate,
            GatewayRecord::Counts(c) => *requests.entry(key).or_default() += c.requests,
            GatewayRecord::Sample(_) => {}
        }
    }
    requests
        .into_iter()
        .map(|(key, req)| {
            let err = errors.get(&key).copied().unwrap_or(0.0).round() as i64;
            let rate = err as f64 / req as f64;
            (key, (err, req, rate, rate >= rate_threshold && err >= 50))
        })
        .collect()
}

/// Expected `route_template_errors`: (window start, route, template id) → count, if >= min.
fn expected_templates(
    seconds: &[Vec<GatewayRecord>],
    min: u64,
) -> BTreeMap<(i64, String, u64), u64> {
    let mut n: BTreeMap<(i64, String, u64), u64> = BTreeMap::new();
    for r in seconds.iter().flatten() {
        if let GatewayRecord::Error(e) = r {
            let w = e.timestamp_ms.div_euclid(10_000) * 10_000;
            *n.entry((w, e.route.clone(), e.template_id)).or_default() += 1;
        }
    }
    n.retain(|_, c| *c >= min);
    n
}

type Stats = BTreeMap<(i64, String), (i64, u64, f64, bool)>;
type Templates = BTreeMap<(i64, String, u64), u64>;
/// (window end, route, cluster id) → (errors, previous errors, growth).
type Clusters = BTreeMap<(i64, String, String), (i64, i64, f64)>;

/// Expected `cluster_window_stats` for the 20 s hops ending every 10 s: errors of the last
/// 10 s, of the 10 s before, and their ratio. Cluster ids come from the same `cluster_of`.
fn expected_clusters(seconds: &[Vec<GatewayRecord>]) -> Clusters {
    let mut halves: BTreeMap<(i64, String, String), (f64, f64)> = BTreeMap::new();
    for r in seconds.iter().flatten() {
        let GatewayRecord::Error(e) = r else { continue };
        let cluster = udfs::sql::cluster_of(Some(&e.message)).unwrap();
        let end = (e.timestamp_ms.div_euclid(10_000) + 1) * 10_000;
        let w = 1.0 / e.sample_rate;
        halves
            .entry((end, e.route.clone(), cluster.clone()))
            .or_default()
            .0 += w;
        halves
            .entry((end + 10_000, e.route.clone(), cluster))
            .or_default()
            .1 += w;
    }
    halves
        .into_iter()
        .map(|(k, (cur, prev))| {
            let (cur, prev) = (cur.round() as i64, prev.round() as i64);
            (k, (cur, prev, cur as f64 / prev.max(1) as f64))
        })
        .collect()
}

async fn run_incident(
    sql: &str,
    seconds: &[Vec<GatewayRecord>],
) -> (Stats, Templates, Clusters, Engine) {
    let (mut engine, out) = engine_for(&[("sql/incident.sql", sql)]).unwrap();
    pipeline::udf::register(&mut engine);
    engine.validate().await.unwrap();
    let mut emitted_before_end = 0;
    for (s, recs) in seconds.iter().enumerate() {
        engine.push_records(recs).await.unwrap();
        if s == 12 {
            // Watermark 12.999 s - 1 s: the first 10 s window is out, the second is not.
            // (cluster_decisions slides by 1 s and has closed many windows by now.)
            emitted_before_end = out
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.sink != "cluster_decisions")
                .count();
        }
    }
    engine.flush().await.unwrap();
    assert_eq!(
        emitted_before_end, 3,
        "by 12 s, window 0 closed once per query (the 20 s hop ending at 10 s included)"
    );
    let outputs = out.lock().unwrap();
    let mut stats = Stats::new();
    for (w, r) in rows(&outputs, "route_window_stats") {
        assert!(r["window"].contains("start"), "{r:?}");
        let key = (w.start_ms, r["route"].clone());
        let value = (
            r["errors"].parse().unwrap(),
            r["requests"].parse().unwrap(),
            r["error_rate"].parse().unwrap(),
            r["incident"].parse().unwrap(),
        );
        assert!(
            stats.insert(key, value).is_none(),
            "one row per window and route"
        );
    }
    let mut clusters = Clusters::new();
    for (w, r) in rows(&outputs, "cluster_window_stats") {
        let key = (w.end_ms, r["route"].clone(), r["cluster_id"].clone());
        let value = (
            r["errors"].parse().unwrap(),
            r["previous_errors"].parse().unwrap(),
            r["growth"].parse().unwrap(),
        );
        assert!(clusters.insert(key, value).is_none(), "{r:?}");
    }
    let mut templates = Templates::new();
    for (w, r) in rows(&outputs, "route_template_errors") {
        let key = (
            w.start_ms,
            r["route"].clone(),
            r["template_id"].parse().unwrap(),
        );
        assert!(
            templates
                .insert(key, r["errors"].parse().unwrap())
                .is_none()
        );
    }
    drop(outputs);
    (stats, templates, clusters, engine)
}

#[tokio::test]
async fn incident_sql_end_to_end_over_thirty_seconds() {
    let seconds = thirty_seconds();
    let (stats, templates, clusters, engine) = run_incident(&incident_sql(), &seconds).await;

    assert_eq!(stats, expected_stats(&seconds, 0.2));
    assert_eq!(templates, expected_templates(&seconds, 5));
    assert_eq!(clusters, expected_clusters(&seconds));
    // Payments' alipay failure (B) appears at 10-20 s: 250 errors against none before.
    let b = udfs::sql::cluster_of(Some(MSG_B)).unwrap();
    let a = udfs::sql::cluster_of(Some(MSG_A)).unwrap();
    assert_ne!(a, b, "a timeout and a channel error are different failures");
    let pay =
        |end: i64, c: &str| clusters[&(T0 + end * 1000, "payments".to_string(), c.to_string())];
    assert_eq!(pay(20, &b), (250, 0, 250.0));
    assert_eq!(pay(30, &b), (0, 250, 0.0), "the next window sees it gone");
    assert_eq!(pay(20, &a), (50, 20, 2.5));
    // A few cells written out, so a wrong expectation function cannot hide a wrong engine.
    let p = |w: i64| stats[&(T0 + w * 1000, "payments".to_string())];
    let s = |w: i64| stats[&(T0 + w * 1000, "search".to_string())];
    assert_eq!(p(0), (20, 1000, 0.02, false));
    assert_eq!(p(10), (300, 1000, 0.3, true));
    assert_eq!(p(20), (10, 1000, 0.01, false));
    assert_eq!(s(0), (0, 500, 0.0, false));
    assert_eq!(
        s(10),
        (60, 500, 0.12, false),
        "sampled events weigh 1 / sample_rate"
    );
    assert_eq!(s(20), (3, 500, 0.006, false));
    assert_eq!(stats.len(), 6);
    let id = schemas::text::template_id;
    assert_eq!(
        templates[&(T0 + 10_000, "payments".to_string(), id(MSG_B))],
        250
    );
    assert_eq!(
        templates[&(T0 + 10_000, "search".to_string(), id(MSG_C))],
        30
    );
    assert!(
        !templates.contains_key(&(T0 + 20_000, "search".to_string(), id(MSG_D))),
        "3 < 5 errors"
    );
    assert_eq!(engine.stats().late_rows, 0);
}

#[tokio::test]
async fn editing_a_threshold_in_the_sql_changes_the_output() {
    let seconds = thirty_seconds();
    let original = incident_sql();
    assert!(
        original.contains(">= 0.2"),
        "the rate threshold is in the SQL"
    );
    assert!(
        original.contains("HAVING COUNT(*) >= 5"),
        "the template threshold is in the SQL"
    );
    let edited = original
        .replace(">= 0.2", ">= 0.1")
        .replace("HAVING COUNT(*) >= 5", "HAVING COUNT(*) >= 3");
    let (stats, templates, _, _) = run_incident(&edited, &seconds).await;
    assert_eq!(stats, expected_stats(&seconds, 0.1));
    assert_eq!(templates, expected_templates(&seconds, 3));
    // search at 12 % with 60 errors is now an incident; the rare template D now shows.
    assert!(stats[&(T0 + 10_000, "search".to_string())].3);
    assert_eq!(
        templates[&(
            T0 + 20_000,
            "search".to_string(),
            schemas::text::template_id(MSG_D)
        )],
        3
    );
}

#[tokio::test]
async fn every_shipped_sql_file_loads_and_plans() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let spec = JobSpec::from_files(&[&f]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!spec.queries.is_empty(), "{}", f.display());
        let queries = spec.queries.len();
        let mut engine = Engine::new(spec, Box::new(|_| {}));
        pipeline::udf::register(&mut engine);
        engine.validate().await.unwrap_or_else(|e| panic!("{e}"));
        // Every per-row call on a source's columns runs once per row, as rows arrive.
        for q in 0..queries {
            let running = engine.running_sql(q).unwrap();
            for call in ["cluster_of(", "template(", "request_row("] {
                assert!(!running.contains(call), "{}: {running}", f.display());
            }
        }
    }
}
