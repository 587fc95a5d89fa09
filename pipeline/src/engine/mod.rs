//! The embedded windowed SQL engine: Arroyo-dialect SQL run on DataFusion, one closed window at
//! a time.
//!
//! Rows arrive per source table as Arrow batches (or as [`GatewayRecord`]s, converted by
//! [`convert`]). Each source buffers them by event time. The watermark is the newest event time
//! seen minus the source's allowed lateness (`WATERMARK FOR ts AS ts - INTERVAL '2' SECOND`);
//! all sources share one clock (they are the same enforcer stream), so the engine watermark is
//! the highest source watermark and a source that falls silent (no errors while healthy) never
//! holds windows open. When the watermark passes a window's end the window closes: its rows are
//! registered as DataFusion memory tables, the query's `TUMBLE` / `HOP` calls are rewritten to
//! that window's bounds ([`rewrite`]), the query runs and its rows go to the sink callback.
//!
//! A row whose earliest window has already closed is late: it is counted, logged and kept in a
//! side output ([`Engine::take_late_rows`]), never silently dropped, and never added to later
//! windows (which would report a partial count as if it were whole).
//!
//! HOP windows keep each row for the window width, so a query sees every row of its
//! `[start, end)` span across slides — enough for growth against the previous slide in SQL.
//!
//! A UDF call on a source's columns (`cluster_of(message)`) runs once per row, when the row
//! arrives, not once per window the row falls in ([`derive`]), as in Arroyo; and the constant
//! window is not hashed as a `GROUP BY` key ([`constant_keys`]).

mod constant_keys;
pub mod convert;
mod derive;
pub mod rewrite;
pub mod spec;
pub mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Query, Spanned, Visit, Visitor};
use schemas::event::GatewayRecord;

pub use spec::{EventTime, JobSpec, QuerySpec, TableKind, TableSpec};
pub use window::{Window, WindowSpec};

/// Why a job could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A SQL file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A SQL file does not parse.
    #[error("{file}:{line}: syntax error: {reason}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line (0 if the parser gave none).
        line: u64,
        /// The parser's message.
        reason: String,
    },
    /// A query names a table no `CREATE TABLE` declares.
    #[error("{file}:{line}: unknown table {table}")]
    UnknownTable {
        /// The file.
        file: String,
        /// 1-based line of the reference.
        line: u64,
        /// The name as written, lower-cased.
        table: String,
    },
    /// A query does not plan: unknown function, unknown column, type error.
    #[error("{file}:{line}: {reason}")]
    Plan {
        /// The file.
        file: String,
        /// 1-based line of the offending call, or of the query.
        line: u64,
        /// DataFusion's message.
        reason: String,
    },
    /// Valid SQL the engine does not run.
    #[error("{file}:{line}: unsupported: {reason}")]
    Unsupported {
        /// The file.
        file: String,
        /// 1-based line.
        line: u64,
        /// What is not supported.
        reason: String,
    },
    /// A batch pushed to a table that is not a source, or without the declared columns.
    #[error("input for {table}: {reason}")]
    Input {
        /// The table.
        table: String,
        /// What is wrong with the batch.
        reason: String,
    },
    /// Arrow failed converting or slicing rows.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// A row-level UDF call failed on arriving rows ([`derive`]); the rows are not buffered.
    #[error("input for {table}: {call}: {source}")]
    RowCall {
        /// The source table.
        table: String,
        /// The call, as SQL.
        call: String,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// DataFusion failed running a window's query.
    #[error("{file}:{line}: window [{start_ms}, {end_ms}): {source}")]
    Execution {
        /// The query's file.
        file: String,
        /// The query's line.
        line: u64,
        /// Window start, ms.
        start_ms: i64,
        /// Window end, ms.
        end_ms: i64,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
}

/// One closed window's result for one query.
#[derive(Debug, Clone)]
pub struct SinkOutput {
    /// The sink table the query inserts into.
    pub sink: String,
    /// Index of the query in [`JobSpec::queries`].
    pub query: usize,
    /// The window the rows are for.
    pub window: Window,
    /// The result rows (never all empty).
    pub batches: Vec<RecordBatch>,
}

/// Receives every non-empty window result.
pub type Sink = Box<dyn FnMut(SinkOutput) + Send>;

/// Counters the engine keeps; read with [`Engine::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Rows accepted into a window buffer.
    pub rows_in: u64,
    /// Rows that arrived after their earliest window closed.
    pub late_rows: u64,
    /// Window evaluations that ran (windows with rows).
    pub windows_closed: u64,
    /// Result rows handed to the sink.
    pub rows_out: u64,
}

/// A row-level UDF call computed on a source's rows as they arrive ([`derive`]).
#[derive(Debug, Clone)]
struct RowCall {
    sql: String,
    expr: Arc<dyn PhysicalExpr>,
}

/// One source's buffered rows and event-time state.
#[derive(Debug)]
struct SourceBuffer {
    schema: SchemaRef,
    /// The buffered rows' schema: the declared columns, then one per row-level call.
    buffered_schema: SchemaRef,
    row_calls: Vec<RowCall>,
    ts_index: usize,
    lateness_ms: i64,
    /// Batches (declared columns, then row-level calls) with their rows' event times (ms), in
    /// arrival order.
    batches: Vec<(RecordBatch, Int64Array)>,
    max_ts_ms: Option<i64>,
    /// Widest window of any query reading this source; 0 if none reads it.
    keep_ms: i64,
    /// Slides of the queries that read it, for the lateness check.
    readers: Vec<WindowSpec>,
}

/// The running job.
pub struct Engine {
    spec: JobSpec,
    /// The queries as run: the spec's, with row-level calls reading their hidden columns.
    queries: Vec<Query>,
    ctx: SessionContext,
    /// Lower-cased names (and aliases) of the registered UDFs.
    udf_names: BTreeSet<String>,
    sources: BTreeMap<String, SourceBuffer>,
    sink: Sink,
    /// Every window ending at or before this has been evaluated.
    closed_until_ms: Option<i64>,
    /// Floor set from outside (a clock), for when no rows arrive.
    external_watermark_ms: Option<i64>,
    validated: bool,
    late: Vec<(String, RecordBatch)>,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tables", &self.spec.tables.len())
            .field("queries", &self.spec.queries.len())
            .field("closed_until_ms", &self.closed_until_ms)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine for `spec` handing results to `sink`. Register UDFs, then call
    /// [`Engine::validate`] (pushing rows validates too).
    pub fn new(spec: JobSpec, sink: Sink) -> Self {
        let mut sources = BTreeMap::new();
        for t in spec.tables.iter().filter(|t| t.kind == TableKind::Source) {
            let Some(et) = &t.event_time else { continue };
            let Ok(ts_index) = t.schema.index_of(&et.column) else {
                continue;
            };
            let readers: Vec<WindowSpec> = spec
                .queries
                .iter()
                .filter(|q| q.sources.contains(&t.name))
                .map(|q| q.window)
                .collect();
            sources.insert(
                t.name.clone(),
                SourceBuffer {
                    schema: t.schema.clone(),
                    buffered_schema: t.schema.clone(),
                    row_calls: Vec::new(),
                    ts_index,
                    lateness_ms: et.lateness_ms,
                    batches: Vec::new(),
                    max_ts_ms: None,
                    keep_ms: readers.iter().map(|w| w.width_ms()).max().unwrap_or(0),
                    readers,
                },
            );
        }
        Self {
            queries: spec.queries.iter().map(|q| q.query.clone()).collect(),
            spec,
            ctx: session(),
            udf_names: BTreeSet::new(),
            sources,
            sink,
            closed_until_ms: None,
            external_watermark_ms: None,
            validated: false,
            late: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    /// Makes a scalar UDF callable from the job's SQL. Register before validating.
    pub fn register_udf(&mut self, udf: ScalarUDF) {
        self.udf_names.extend(
            std::iter::once(udf.name())
                .chain(udf.aliases().iter().map(String::as_str))
                .map(str::to_lowercase),
        );
        self.ctx.register_udf(udf);
        self.validated = false;
    }

    /// The job being run.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Plans every query once over empty tables, so an unknown function or column fails now,
    /// naming the file and line, rather than at the first window; then moves row-level UDF
    /// calls to ingestion where the rewritten query plans to the same output.
    pub async fn validate(&mut self) -> Result<(), EngineError> {
        let empty: Vec<(String, SchemaRef)> = self
            .sources
            .iter()
            .map(|(n, s)| (n.clone(), s.schema.clone()))
            .collect();
        for (name, schema) in &empty {
            self.register(name, schema.clone(), Vec::new())
                .map_err(|e| EngineError::Input {
                    table: name.clone(),
                    reason: e.to_string(),
                })?;
        }
        let mut outputs = Vec::with_capacity(self.spec.queries.len());
        for q in &self.spec.queries {
            let window = q.window.ending_at(q.window.width_ms());
            let sql = rewrite::for_window(&q.query, window);
            match self.ctx.sql(&sql).await {
                Ok(df) => outputs.push(df.schema().as_arrow().clone()),
                Err(e) => {
                    return Err(EngineError::Plan {
                        file: q.file.clone(),
                        line: offending_line(q, &e.to_string()),
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.derive_row_calls(&outputs).await?;
        self.validated = true;
        Ok(())
    }

    /// Finds the row-level calls ([`derive::plan`]), keeps each rewritten query that plans to
    /// the same columns as the original (`outputs`), and computes the calls those queries read
    /// on every buffered row. A call or query that does not plan stays as written.
    async fn derive_row_calls(&mut self, outputs: &[Schema]) -> Result<(), EngineError> {
        let buffered: BTreeMap<String, SchemaRef> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.readers.is_empty())
            .map(|(n, s)| (n.clone(), s.schema.clone()))
            .collect();
        let plan = derive::plan(&self.spec, &buffered, &self.udf_names);
        let mut built: BTreeMap<(String, String), (Field, RowCall)> = BTreeMap::new();
        for (source, calls) in &plan.calls {
            let schema = &buffered[source];
            let df_schema =
                DFSchema::try_from(schema.as_ref().clone()).map_err(|e| EngineError::Input {
                    table: source.clone(),
                    reason: e.to_string(),
                })?;
            for call in calls {
                let expr = self
                    .ctx
                    .parse_sql_expr(&call.sql, &df_schema)
                    .and_then(|e| self.ctx.create_physical_expr(e, &df_schema))
                    .and_then(|p| Ok((p.data_type(schema)?, p)));
                match expr {
                    Ok((data_type, expr)) => {
                        let field = Field::new(&call.column, data_type, true);
                        let call = RowCall {
                            sql: call.sql.clone(),
                            expr,
                        };
                        built.insert((source.clone(), field.name().clone()), (field, call));
                    }
                    Err(e) => tracing::debug!(
                        table = %source, call = %call.sql, error = %e,
                        "row-level call left to the window queries"
                    ),
                }
            }
        }
        let with_calls = |source: &str, keep: &dyn Fn(&String) -> bool| -> Schema {
            let mut fields: Vec<Field> = buffered[source]
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.extend(
                built
                    .iter()
                    .filter(|((s, c), _)| s == source && keep(c))
                    .map(|(_, (f, _))| f.clone()),
            );
            Schema::new(fields)
        };
        for source in plan.calls.keys() {
            let schema = Arc::new(with_calls(source, &|_| true));
            let table = derive::derived_table(source);
            self.register(&table, schema, Vec::new())
                .map_err(|e| EngineError::Input {
                    table,
                    reason: e.to_string(),
                })?;
        }
        let mut queries: Vec<Query> = self.spec.queries.iter().map(|q| q.query.clone()).collect();
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        for (i, rewritten) in plan.queries.into_iter().enumerate() {
            let Some(rewritten) = rewritten else { continue };
            if !rewritten.uses.iter().all(|u| built.contains_key(u)) {
                continue;
            }
            let q = &self.spec.queries[i];
            let sql =
                rewrite::for_window(&rewritten.query, q.window.ending_at(q.window.width_ms()));
            let same = match self.ctx.sql(&sql).await {
                Ok(df) => same_columns(df.schema().as_arrow(), &outputs[i]),
                Err(e) => {
                    tracing::debug!(file = %q.file, line = q.line, error = %e, "rewritten query does not plan");
                    false
                }
            };
            if same {
                queries[i] = rewritten.query;
                used.extend(rewritten.uses);
            } else {
                tracing::info!(
                    file = %q.file,
                    line = q.line,
                    "this query's UDF calls run once per window, not once per row"
                );
            }
        }
        self.queries = queries;
        for (name, source) in &mut self.sources {
            let keep = |c: &String| used.contains(&(name.clone(), c.clone()));
            let schema = Arc::new(with_calls(name, &keep));
            let calls: Vec<RowCall> = built
                .iter()
                .filter(|((s, c), _)| s == name && keep(c))
                .map(|(_, (_, call))| call.clone())
                .collect();
            let unchanged = schema == source.buffered_schema
                && calls
                    .iter()
                    .map(|c| &c.sql)
                    .eq(source.row_calls.iter().map(|c| &c.sql));
            if !unchanged {
                // Rows buffered before the calls changed (UDFs registered after rows came in).
                let declared: Vec<usize> = (0..source.schema.fields().len()).collect();
                let mut batches = Vec::with_capacity(source.batches.len());
                for (batch, ts) in source.batches.drain(..) {
                    let plain = batch.project(&declared)?;
                    batches.push((with_row_calls(name, plain, &schema, &calls)?, ts));
                }
                source.batches = batches;
            }
            source.buffered_schema = schema;
            source.row_calls = calls;
        }
        Ok(())
    }

    /// Query `query` of the spec as the engine runs it: row-level UDF calls on a source's
    /// columns read the hidden columns computed as rows arrive ([`derive`]), once validated.
    pub fn running_sql(&self, query: usize) -> Option<String> {
        self.queries.get(query).map(ToString::to_string)
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Every window ending at or before this has been evaluated.
    pub fn closed_until_ms(&self) -> Option<i64> {
        self.closed_until_ms
    }

    /// The end of the newest closed window of the query that writes to `sink`, whether or not
    /// it had rows (a window without rows is not evaluated: nothing happened in it).
    pub fn closed_window_end(&self, sink: &str) -> Option<i64> {
        let closed = self.closed_until_ms?;
        let q = self
            .spec
            .queries
            .iter()
            .find(|q| q.sink.eq_ignore_ascii_case(sink))?;
        let slide = q.window.slide_ms();
        Some(closed.div_euclid(slide) * slide)
    }

    /// The current watermark: the highest source watermark, or the external clock's if later.
    pub fn watermark_ms(&self) -> Option<i64> {
        let from_rows = self
            .sources
            .values()
            .filter_map(|s| s.max_ts_ms.map(|t| t - s.lateness_ms))
            .max();
        match (from_rows, self.external_watermark_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Late rows kept since the last call, per source table.
    pub fn take_late_rows(&mut self) -> Vec<(String, RecordBatch)> {
        std::mem::take(&mut self.late)
    }

    /// Adds rows to a source and closes every window the watermark has passed.
    pub async fn push_batch(&mut self, table: &str, batch: RecordBatch) -> Result<(), EngineError> {
        self.ensure_validated().await?;
        self.ingest(&spec::normalize(table), &batch)?;
        self.close_windows().await
    }

    /// Adds the enforcer's records (to the source tables the job declares; other kinds are
    /// ignored) and closes every window the watermark has passed. All records are buffered
    /// before the watermark moves, so a batch's own rows are never late against each other.
    pub async fn push_records(&mut self, records: &[GatewayRecord]) -> Result<(), EngineError> {
        self.ensure_validated().await?;
        for (table, batch) in convert::records_to_batches(records)? {
            if self.sources.contains_key(table) {
                self.ingest(table, &batch)?;
            }
        }
        self.close_windows().await
    }

    /// Moves the watermark from an outside clock (e.g. wall time minus lateness when the
    /// stream is idle) and closes the windows it passed.
    pub async fn advance_watermark(&mut self, watermark_ms: i64) -> Result<(), EngineError> {
        self.ensure_validated().await?;
        self.external_watermark_ms = Some(
            self.external_watermark_ms
                .unwrap_or(i64::MIN)
                .max(watermark_ms),
        );
        self.close_windows().await
    }

    /// Closes every window that holds buffered rows (end of input).
    pub async fn flush(&mut self) -> Result<(), EngineError> {
        let newest = self.sources.values().filter_map(|s| s.max_ts_ms).max();
        let widest = self.sources.values().map(|s| s.keep_ms).max().unwrap_or(0);
        match newest {
            Some(t) => self.advance_watermark(t + widest).await,
            None => Ok(()),
        }
    }

    async fn ensure_validated(&mut self) -> Result<(), EngineError> {
        if self.validated {
            Ok(())
        } else {
            self.validate().await
        }
    }

    /// Conforms a batch to the declared schema, splits off late rows, buffers the rest.
    fn ingest(&mut self, table: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        let input_err = |reason: String| EngineError::Input {
            table: table.to_string(),
            reason,
        };
        let Some(source) = self.sources.get_mut(table) else {
            return Err(input_err("not a source table of this job".to_string()));
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut columns = Vec::with_capacity(source.schema.fields().len());
        for field in source.schema.fields() {
            let col = batch
                .column_by_name(field.name())
                .ok_or_else(|| input_err(format!("missing column {}", field.name())))?;
            columns.push(cast(col, field.data_type())?);
        }
        let conformed = RecordBatch::try_new(source.schema.clone(), columns)?;
        let ts = event_times(conformed.column(source.ts_index))
            .map_err(|e| input_err(format!("event time column: {e}")))?;
        if ts.null_count() > 0 {
            return Err(input_err("event time column has nulls".to_string()));
        }
        let closed = self.closed_until_ms;
        let late_mask: BooleanArray = ts
            .values()
            .iter()
            .map(|&t| Some(source.readers.iter().any(|w| w.is_late(t, closed))))
            .collect();
        let late_count = late_mask.true_count();
        let on_time = if late_count == 0 {
            conformed
        } else {
            let late = filter_record_batch(&conformed, &late_mask)?;
            let keep = datafusion::arrow::compute::not(&late_mask)?;
            let on_time = filter_record_batch(&conformed, &keep)?;
            tracing::warn!(
                table,
                late_rows = late_count,
                closed_until_ms = ?closed,
                "rows arrived after their window closed; kept in the late side output"
            );
            self.stats.late_rows += late_count as u64;
            self.late.push((table.to_string(), late));
            on_time
        };
        if on_time.num_rows() == 0 {
            return Ok(());
        }
        let on_time = with_row_calls(table, on_time, &source.buffered_schema, &source.row_calls)?;
        let ts = event_times(on_time.column(source.ts_index))
            .map_err(|e| input_err(format!("event time column: {e}")))?;
        let newest = ts.values().iter().copied().max();
        source.max_ts_ms = source.max_ts_ms.max(newest);
        self.stats.rows_in += on_time.num_rows() as u64;
        if source.readers.is_empty() {
            // Still moves the shared clock, but no query needs the rows.
            return Ok(());
        }
        source.batches.push((on_time, ts));
        Ok(())
    }

    /// Evaluates every window with rows that ends at or before the watermark, oldest first.
    async fn close_windows(&mut self) -> Result<(), EngineError> {
        let Some(watermark) = self.watermark_ms() else {
            return Ok(());
        };
        if self.closed_until_ms.is_some_and(|c| c >= watermark) {
            return Ok(());
        }
        // Every (end, query) pair to evaluate, ordered by end so sinks see time move forward.
        let mut due: Vec<(i64, usize)> = Vec::new();
        for (qi, q) in self.spec.queries.iter().enumerate() {
            let oldest = q
                .sources
                .iter()
                .filter_map(|s| self.sources.get(s))
                .flat_map(|s| s.batches.iter())
                .filter_map(|(_, ts)| ts.values().iter().copied().min())
                .min();
            let Some(oldest) = oldest else { continue };
            let after = self
                .closed_until_ms
                .unwrap_or(i64::MIN)
                .max(q.window.first_end_after(oldest) - 1);
            due.extend(q.window.ends_between(after, watermark).map(|end| (end, qi)));
        }
        due.sort_unstable();
        for (end, qi) in due {
            self.evaluate(qi, end).await?;
        }
        self.closed_until_ms = Some(watermark);
        // Drop rows no open window can need: windows still to come end after the watermark,
        // so they start after `watermark - width`.
        for s in self.sources.values_mut() {
            let keep_from = watermark - s.keep_ms;
            let mut kept = Vec::with_capacity(s.batches.len());
            for (batch, ts) in s.batches.drain(..) {
                let mask: BooleanArray = ts.values().iter().map(|&t| Some(t > keep_from)).collect();
                match mask.true_count() {
                    0 => {}
                    n if n == batch.num_rows() => kept.push((batch, ts)),
                    _ => {
                        let b = filter_record_batch(&batch, &mask)?;
                        let t = event_times(b.column(s.ts_index))?;
                        kept.push((b, t));
                    }
                }
            }
            s.batches = kept;
        }
        Ok(())
    }

    /// Runs query `qi` over the window ending at `end_ms`.
    async fn evaluate(&mut self, qi: usize, end_ms: i64) -> Result<(), EngineError> {
        let q = &self.spec.queries[qi];
        let window = q.window.ending_at(end_ms);
        let mut any_rows = false;
        let mut tables = Vec::new();
        for name in &q.sources {
            let Some(s) = self.sources.get(name) else {
                continue;
            };
            let mut rows = Vec::new();
            for (batch, ts) in &s.batches {
                let mask: BooleanArray = ts
                    .values()
                    .iter()
                    .map(|&t| Some(window.contains(t)))
                    .collect();
                if mask.true_count() > 0 {
                    rows.push(filter_record_batch(batch, &mask)?);
                }
            }
            any_rows |= !rows.is_empty();
            if !s.row_calls.is_empty() {
                let declared: Vec<usize> = (0..s.schema.fields().len()).collect();
                let plain = rows
                    .iter()
                    .map(|b| b.project(&declared))
                    .collect::<Result<Vec<_>, _>>()?;
                tables.push((derive::derived_table(name), s.buffered_schema.clone(), rows));
                tables.push((name.clone(), s.schema.clone(), plain));
            } else {
                tables.push((name.clone(), s.schema.clone(), rows));
            }
        }
        if !any_rows {
            return Ok(());
        }
        let exec_err = |source: DataFusionError| EngineError::Execution {
            file: q.file.clone(),
            line: q.line,
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            source,
        };
        for (name, schema, rows) in tables {
            self.register(&name, schema, rows).map_err(exec_err)?;
        }
        let sql = rewrite::for_window(&self.queries[qi], window);
        let batches = self
            .ctx
            .sql(&sql)
            .await
            .map_err(exec_err)?
            .collect()
            .await
            .map_err(exec_err)?;
        self.stats.windows_closed += 1;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 0 {
            self.stats.rows_out += rows as u64;
            (self.sink)(SinkOutput {
                sink: q.sink.clone(),
                query: qi,
                window,
                batches: batches.into_iter().filter(|b| b.num_rows() > 0).collect(),
            });
        }
        Ok(())
    }

    fn register(
        &self,
        name: &str,
        schema: SchemaRef,
        rows: Vec<RecordBatch>,
    ) -> Result<(), DataFusionError> {
        let table = MemTable::try_new(schema, vec![rows])?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }
}

/// A DataFusion session that groups by constant windows without hashing them.
fn session() -> SessionContext {
    let ctx = SessionContext::new();
    ctx.add_optimizer_rule(Arc::new(constant_keys::ConstantGroupKeys));
    ctx
}

/// `batch` (the declared columns) with the row-level calls' columns added, as `schema`.
fn with_row_calls(
    table: &str,
    batch: RecordBatch,
    schema: &SchemaRef,
    calls: &[RowCall],
) -> Result<RecordBatch, EngineError> {
    if calls.is_empty() {
        return Ok(batch);
    }
    let rows = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    for call in calls {
        let column = call
            .expr
            .evaluate(&batch)
            .and_then(|v| v.into_array(rows))
            .map_err(|source| EngineError::RowCall {
                table: table.to_string(),
                call: call.sql.clone(),
                source,
            })?;
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Whether two query outputs have the same column names and types, in order.
fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// An event-time column (any timestamp unit, or integer milliseconds) as milliseconds.
fn event_times(col: &dyn Array) -> Result<Int64Array, ArrowError> {
    let ms = match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => {
            cast(col, &DataType::Int64)?
        }
        DataType::Timestamp(_, _) => cast(
            &cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
            &DataType::Int64,
        )?,
        other => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{other} is not a timestamp"
            )));
        }
    };
    ms.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError("event time is not Int64".to_string()))
}

/// The line of the function DataFusion complains about, or the query's line.
fn offending_line(q: &QuerySpec, message: &str) -> u64 {
    struct Calls {
        found: Vec<(String, u64)>,
    }
    impl Visitor for Calls {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Function(f) = expr {
                self.found
                    .push((f.name.to_string().to_lowercase(), f.span().start.line));
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut calls = Calls { found: Vec::new() };
    let _ = q.query.visit(&mut calls);
    let message = message.to_lowercase();
    calls
        .found
        .into_iter()
        .find(|(name, _)| message.contains(&format!("'{name}'")))
        .map(|(_, line)| line)
        .filter(|line| *line > 0)
        .unwrap_or(q.line)
}
