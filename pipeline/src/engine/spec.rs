//! Loading a job: Arroyo-dialect SQL files become a [`JobSpec`] of tables and windowed queries.
//!
//! The files are parsed with the `sqlparser` DataFusion re-exports. Arroyo's
//! `WATERMARK FOR ts AS ts - INTERVAL '2' SECOND` clause is not standard SQL, so it is cut out
//! of the text first (replaced by spaces, so every line and column stays where it was) and read
//! on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::Path;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::Spanned;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CreateTableOptions, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, Query, SqlOption, Statement, TableObject, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Span;

use super::EngineError;
use super::window::WindowSpec;

/// Whether a table feeds the job or receives its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Rows come in (`type = 'source'`, or any table no query inserts into).
    Source,
    /// Query results go out (`type = 'sink'`, or the target of an `INSERT INTO`).
    Sink,
}

/// The event-time column of a source and how late its rows may arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTime {
    /// The timestamp column the watermark is defined on.
    pub column: String,
    /// `ts - INTERVAL '2' SECOND` → 2000.
    pub lateness_ms: i64,
}

/// One `CREATE TABLE`.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Lower-cased table name.
    pub name: String,
    /// Source or sink.
    pub kind: TableKind,
    /// Declared columns as Arrow fields (empty for sinks that let the query decide).
    pub schema: SchemaRef,
    /// The `WITH (...)` options (connector, topic, ...), kept for the distributed mode.
    pub options: BTreeMap<String, String>,
    /// The watermark; required for sources.
    pub event_time: Option<EventTime>,
    /// File the table was declared in.
    pub file: String,
    /// Line of the `CREATE TABLE`.
    pub line: u64,
}

/// One `INSERT INTO sink SELECT ...` with its window.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    /// The sink table the results go to.
    pub sink: String,
    /// The `SELECT`, still holding the `TUMBLE` / `HOP` calls.
    pub query: Query,
    /// The window every `TUMBLE` / `HOP` call in the query names.
    pub window: WindowSpec,
    /// Source tables the query reads (lower-cased).
    pub sources: BTreeSet<String>,
    /// File the query is in.
    pub file: String,
    /// Line of the `INSERT`.
    pub line: u64,
}

/// A parsed job: its tables and windowed queries, in file order.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// Every declared table.
    pub tables: Vec<TableSpec>,
    /// Every query.
    pub queries: Vec<QuerySpec>,
}

impl JobSpec {
    /// Reads and parses SQL files, in order; tables declared in one are visible in the next.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, EngineError> {
        let mut sources = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
                file: path.display().to_string(),
                source,
            })?;
            sources.push((path.display().to_string(), text));
        }
        Self::from_sql(&sources)
    }

    /// Parses SQL texts given as `(file name, text)` pairs, in order.
    pub fn from_sql(files: &[(String, String)]) -> Result<Self, EngineError> {
        let mut spec = JobSpec::default();
        let mut inserts = Vec::new();
        for (file, text) in files {
            let (cleaned, watermarks) = cut_watermarks(file, text)?;
            let statements = Parser::parse_sql(&GenericDialect {}, &cleaned)
                .map_err(|e| parse_error(file, &e))?;
            for stmt in statements {
                let line = stmt.span().start.line;
                match stmt {
                    Statement::CreateTable(ct) => {
                        let name = normalize(&ct.name.to_string());
                        let fields = ct
                            .columns
                            .iter()
                            .map(|c| {
                                let ty = arrow_type(&c.data_type.to_string()).ok_or_else(|| {
                                    EngineError::Unsupported {
                                        file: file.clone(),
                                        line: c.span().start.line.max(line),
                                        reason: format!(
                                            "column {} has type {} the engine does not map to Arrow",
                                            c.name, c.data_type
                                        ),
                                    }
                                })?;
                                Ok(Field::new(normalize(&c.name.value), ty, true))
                            })
                            .collect::<Result<Vec<_>, EngineError>>()?;
                        let options = match &ct.table_options {
                            CreateTableOptions::With(opts) | CreateTableOptions::Options(opts) => {
                                opts.iter().filter_map(option_pair).collect()
                            }
                            _ => BTreeMap::new(),
                        };
                        let kind = match options.get("type").map(String::as_str) {
                            Some("sink") => TableKind::Sink,
                            _ => TableKind::Source,
                        };
                        let event_time =
                            watermarks
                                .iter()
                                .find(|w| w.table == name)
                                .map(|w| EventTime {
                                    column: w.column.clone(),
                                    lateness_ms: w.lateness_ms,
                                });
                        if spec.tables.iter().any(|t| t.name == name) {
                            return Err(EngineError::Unsupported {
                                file: file.clone(),
                                line,
                                reason: format!("table {name} is declared twice"),
                            });
                        }
                        spec.tables.push(TableSpec {
                            name,
                            kind,
                            schema: Schema::new(fields).into(),
                            options,
                            event_time,
                            file: file.clone(),
                            line,
                        });
                    }
                    Statement::Insert(insert) => {
                        let TableObject::TableName(target) = &insert.table else {
                            return Err(unsupported(file, line, "INSERT into a table function"));
                        };
                        let Some(source) = insert.source.clone() else {
                            return Err(unsupported(file, line, "INSERT without a SELECT"));
                        };
                        let target_line = target.span().start.line;
                        inserts.push((file.clone(), line, target_line, target.to_string(), source));
                    }
                    Statement::Query(_) => {
                        return Err(unsupported(
                            file,
                            line,
                            "a bare SELECT has no sink; write INSERT INTO <sink> SELECT ...",
                        ));
                    }
                    other => {
                        return Err(unsupported(
                            file,
                            line,
                            &format!(
                                "statement not supported by the engine: {}",
                                first_words(&other)
                            ),
                        ));
                    }
                }
            }
        }
        for (file, line, target_line, target, query) in inserts {
            let sink = normalize(&target);
            let Some(table) = spec.tables.iter_mut().find(|t| t.name == sink) else {
                return Err(EngineError::UnknownTable {
                    file,
                    line: target_line,
                    table: sink,
                });
            };
            table.kind = TableKind::Sink;
            spec.queries.push(QuerySpec {
                sink,
                window: WindowSpec::Tumble { width_ms: 1 },
                sources: BTreeSet::new(),
                query: *query,
                file,
                line,
            });
        }
        for i in 0..spec.queries.len() {
            let q = &spec.queries[i];
            let sources = referenced_sources(&spec, q)?;
            let window = find_window(q)?;
            let q = &mut spec.queries[i];
            q.sources = sources;
            q.window = window;
        }
        for t in &spec.tables {
            if t.kind == TableKind::Source && t.event_time.is_none() {
                return Err(EngineError::Unsupported {
                    file: t.file.clone(),
                    line: t.line,
                    reason: format!(
                        "source {} has no WATERMARK FOR <column> AS <column> - INTERVAL '..'; \
                         the engine needs event time",
                        t.name
                    ),
                });
            }
            if let Some(et) = &t.event_time
                && t.schema.field_with_name(&et.column).is_err()
            {
                return Err(EngineError::Unsupported {
                    file: t.file.clone(),
                    line: t.line,
                    reason: format!(
                        "watermark column {} is not a column of {}",
                        et.column, t.name
                    ),
                });
            }
        }
        Ok(spec)
    }

    /// The table called `name` (lower-cased).
    pub fn table(&self, name: &str) -> Option<&TableSpec> {
        let name = normalize(name);
        self.tables.iter().find(|t| t.name == name)
    }
}

fn unsupported(file: &str, line: u64, reason: &str) -> EngineError {
    EngineError::Unsupported {
        file: file.to_string(),
        line,
        reason: reason.to_string(),
    }
}

fn first_words(stmt: &Statement) -> String {
    stmt.to_string()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lower-cases an identifier and drops its quotes.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_matches(|c| c == '"' || c == '`').to_lowercase()
}

fn option_pair(opt: &SqlOption) -> Option<(String, String)> {
    match opt {
        SqlOption::KeyValue { key, value } => Some((
            key.value.to_lowercase(),
            value.to_string().trim_matches('\'').to_string(),
        )),
        _ => None,
    }
}

/// SQL column types as Arrow types. Timestamps are milliseconds, like the events.
fn arrow_type(sql: &str) -> Option<DataType> {
    let sql = sql.to_uppercase();
    let base = sql.split('(').next().unwrap_or_default().trim();
    Some(match base {
        "TEXT" | "STRING" | "VARCHAR" | "CHAR" => DataType::Utf8,
        // Arroyo's JSON type: any JSON value, carried as its text.
        "JSON" => DataType::Utf8,
        "BIGINT UNSIGNED" => DataType::UInt64,
        "BIGINT" => DataType::Int64,
        "INT" | "INTEGER" => DataType::Int32,
        "INT UNSIGNED" | "INTEGER UNSIGNED" => DataType::UInt32,
        "SMALLINT" => DataType::Int16,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "FLOAT8" => DataType::Float64,
        "REAL" | "FLOAT4" => DataType::Float32,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Millisecond, None),
        _ => return None,
    })
}

/// Turns a sqlparser error into one naming the file and the line.
fn parse_error(file: &str, e: &ParserError) -> EngineError {
    let text = e.to_string();
    let line = text
        .rfind("Line: ")
        .and_then(|i| {
            text[i + 6..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    EngineError::Parse {
        file: file.to_string(),
        line,
        reason: text,
    }
}

/// A watermark clause cut out of a `CREATE TABLE`.
#[derive(Debug)]
struct Watermark {
    table: String,
    column: String,
    lateness_ms: i64,
}

/// Replaces every `WATERMARK FOR ...` clause (and the comma before it) by spaces and reads it.
fn cut_watermarks(file: &str, text: &str) -> Result<(String, Vec<Watermark>), EngineError> {
    let mut bytes = text.as_bytes().to_vec();
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut search_from = 0;
    while let Some(rel) = find_keyword(&lower, "watermark", search_from) {
        let start = rel;
        let line = text[..start].matches('\n').count() as u64 + 1;
        let end = clause_end(text, start);
        let clause = &text[start..end];
        let table = lower[..start]
            .rfind("create table")
            .map(|i| {
                let rest = &text[i + "create table".len()..start];
                let name: String = rest
                    .trim_start()
                    .trim_start_matches("if not exists")
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '"' | '.'))
                    .collect();
                normalize(&name)
            })
            .ok_or_else(|| unsupported(file, line, "WATERMARK outside a CREATE TABLE"))?;
        let (column, lateness_ms) = read_watermark(clause).ok_or_else(|| EngineError::Parse {
            file: file.to_string(),
            line,
            reason: format!(
                "cannot read `{}`; expected WATERMARK FOR <column> AS <column> [- INTERVAL '<n>' SECOND]",
                clause.trim()
            ),
        })?;
        out.push(Watermark {
            table,
            column,
            lateness_ms,
        });
        // Blank the clause and the comma that separated it from the previous column.
        let comma = text[..start].trim_end().len();
        let blank_from = if comma > 0 && text.as_bytes()[comma - 1] == b',' {
            comma - 1
        } else {
            start
        };
        for b in &mut bytes[blank_from..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        search_from = end;
    }
    let cleaned = String::from_utf8(bytes).map_err(|_| unsupported(file, 0, "not UTF-8"))?;
    Ok((cleaned, out))
}

/// The next whole-word `keyword` at or after `from`, outside strings and `--` comments.
fn find_keyword(lower: &str, keyword: &str, from: usize) -> Option<usize> {
    let b = lower.as_bytes();
    let mut i = from;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\'' {
                in_str = false;
            }
        } else if c == b'\'' {
            in_str = true;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if lower[i..].starts_with(keyword)
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && !b
                .get(i + keyword.len())
                .is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_')
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Where a clause starting at `start` ends: the next `,` or `)` at parenthesis depth 0.
fn clause_end(text: &str, start: usize) -> usize {
    let b = text.as_bytes();
    let mut depth = 0i32;
    let mut in_str = false;
    for (i, &c) in b.iter().enumerate().skip(start) {
        match c {
            b'\'' => in_str = !in_str,
            b'(' if !in_str => depth += 1,
            b')' if !in_str && depth == 0 => return i,
            b')' if !in_str => depth -= 1,
            b',' if !in_str && depth == 0 => return i,
            _ => {}
        }
    }
    b.len()
}

/// `WATERMARK FOR ts AS ts - INTERVAL '2' SECOND` → `("ts", 2000)`.
fn read_watermark(clause: &str) -> Option<(String, i64)> {
    let mut words = clause.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("watermark")
        || !words.next()?.eq_ignore_ascii_case("for")
    {
        return None;
    }
    let column = normalize(words.next()?);
    let (_, rest) = clause.split_once(char::is_whitespace)?;
    let as_at = rest.to_ascii_lowercase().find(" as ")?;
    let expr_text = &rest[as_at + 4..];
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(expr_text)
        .ok()?
        .parse_expr()
        .ok()?;
    match expr {
        Expr::Identifier(id) if normalize(&id.value) == column => Some((column, 0)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } => match *left {
            Expr::Identifier(id) if normalize(&id.value) == column => {
                Some((column, interval_ms(&right)?))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `INTERVAL '10 seconds'`, `INTERVAL '10' SECOND`, `INTERVAL '500 milliseconds'` → ms.
pub(crate) fn interval_ms(expr: &Expr) -> Option<i64> {
    let Expr::Interval(iv) = expr else {
        return None;
    };
    let value = iv.value.to_string();
    let value = value.trim_matches('\'');
    let text = match &iv.leading_field {
        Some(unit) => format!("{value} {unit}"),
        None => value.to_string(),
    };
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next()?.parse().ok()?;
    let unit = parts.next().unwrap_or("second").to_lowercase();
    if parts.next().is_some() {
        return None;
    }
    let scale = match unit.trim_end_matches('s') {
        "m" if unit == "ms" => 1.0,
        "millisecond" => 1.0,
        "" | "second" | "sec" => 1_000.0,
        "minute" | "min" => 60_000.0,
        "hour" | "h" => 3_600_000.0,
        "day" | "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = n * scale;
    (ms.is_finite() && ms >= 0.0).then_some(ms.round() as i64)
}

/// Which window function a call is, if any: `tumble` or `hop`.
pub(crate) fn window_call(f: &Function) -> Option<&'static str> {
    if f.name.0.len() != 1 {
        return None;
    }
    match f.name.to_string().to_lowercase().as_str() {
        "tumble" => Some("tumble"),
        "hop" => Some("hop"),
        _ => None,
    }
}

fn call_args(f: &Function) -> Vec<&Expr> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The one window every `TUMBLE` / `HOP` in the query names.
fn find_window(q: &QuerySpec) -> Result<WindowSpec, EngineError> {
    struct Finder {
        found: Vec<(Result<WindowSpec, String>, Span)>,
    }
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = expr
                && let Some(kind) = window_call(f)
            {
                let args: Vec<Option<i64>> = call_args(f).into_iter().map(interval_ms).collect();
                let spec = match (kind, args.as_slice()) {
                    ("tumble", [Some(w)]) if *w > 0 => Ok(WindowSpec::Tumble { width_ms: *w }),
                    ("hop", [Some(slide), Some(width)]) if *slide > 0 && width >= slide => {
                        Ok(WindowSpec::Hop {
                            slide_ms: *slide,
                            width_ms: *width,
                        })
                    }
                    ("tumble", _) => Err(format!(
                        "{f}: TUMBLE takes one positive interval, e.g. TUMBLE(INTERVAL '10 seconds')"
                    )),
                    _ => Err(format!(
                        "{f}: HOP takes (slide, width) intervals with width >= slide, e.g. \
                         HOP(INTERVAL '10 seconds', INTERVAL '20 seconds')"
                    )),
                };
                self.found.push((spec, f.span()));
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder { found: Vec::new() };
    let _ = q.query.visit(&mut finder);
    let mut window = None;
    for (spec, span) in finder.found {
        let line = span.start.line.max(q.line);
        let spec = spec.map_err(|reason| EngineError::Unsupported {
            file: q.file.clone(),
            line,
            reason,
        })?;
        match window {
            None => window = Some(spec),
            Some(w) if w == spec => {}
            Some(_) => {
                return Err(unsupported(
                    &q.file,
                    line,
                    "a query must use one window (every TUMBLE / HOP call the same)",
                ));
            }
        }
    }
    window.ok_or_else(|| {
        unsupported(
            &q.file,
            q.line,
            "the query has no TUMBLE(...) or HOP(...) window in its GROUP BY; the engine runs windowed queries",
        )
    })
}

/// The source tables a query reads; any other name (not a CTE) is an unknown table.
fn referenced_sources(spec: &JobSpec, q: &QuerySpec) -> Result<BTreeSet<String>, EngineError> {
    struct Relations {
        ctes: BTreeSet<String>,
        names: Vec<(String, u64)>,
    }
    impl Visitor for Relations {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.ctes.insert(normalize(&cte.alias.name.value));
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(
            &mut self,
            relation: &datafusion::sql::sqlparser::ast::ObjectName,
        ) -> ControlFlow<()> {
            self.names
                .push((normalize(&relation.to_string()), relation.span().start.line));
            ControlFlow::Continue(())
        }
    }
    let mut rel = Relations {
        ctes: BTreeSet::new(),
        names: Vec::new(),
    };
    let _ = q.query.visit(&mut rel);
    let mut sources = BTreeSet::new();
    for (name, line) in rel.names {
        if rel.ctes.contains(&name) {
            continue;
        }
        match spec.tables.iter().find(|t| t.name == name) {
            Some(t) if t.kind == TableKind::Source => {
                sources.insert(name);
            }
            Some(_) => {
                return Err(unsupported(
                    &q.file,
                    line.max(q.line),
                    &format!("{name} is a sink; queries read sources only"),
                ));
            }
            None => {
                return Err(EngineError::UnknownTable {
                    file: q.file.clone(),
                    line: line.max(q.line),
                    table: name,
                });
            }
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_interval(s: &str) -> Option<i64> {
        let e = Parser::new(&GenericDialect {})
            .try_with_sql(s)
            .ok()?
            .parse_expr()
            .ok()?;
        interval_ms(&e)
    }

    #[test]
    fn intervals_in_both_arroyo_forms() {
        assert_eq!(parse_interval("INTERVAL '10 seconds'"), Some(10_000));
        assert_eq!(parse_interval("INTERVAL '10' SECOND"), Some(10_000));
        assert_eq!(parse_interval("INTERVAL '2' SECONDS"), Some(2_000));
        assert_eq!(parse_interval("INTERVAL '1 minute'"), Some(60_000));
        assert_eq!(parse_interval("INTERVAL '500 milliseconds'"), Some(500));
        assert_eq!(parse_interval("INTERVAL '3 fortnights'"), None);
    }

    #[test]
    fn watermark_clause_is_cut_and_read() {
        let sql = "CREATE TABLE t (\n  ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND\n) WITH (connector = 'x');";
        let (cleaned, wms) = cut_watermarks("f.sql", sql).unwrap();
        assert_eq!(cleaned.lines().count(), sql.lines().count());
        assert!(!cleaned.to_lowercase().contains("watermark"));
        assert_eq!(wms[0].table, "t");
        assert_eq!(wms[0].column, "ts");
        assert_eq!(wms[0].lateness_ms, 2_000);
    }
}
