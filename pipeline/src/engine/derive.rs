//! Row-level UDF calls, evaluated once per row as the row arrives.
//!
//! The engine runs a window's query over every row of the window, and a HOP window holds each
//! row in `width / slide` windows (twenty for a 1 s slide over 20 s). A UDF call on a source's
//! columns, such as `cluster_of(message)`, would run once for every window the row falls in:
//! twenty maskings and template look-ups of the same message, and the stateful functions (the
//! template miner, the cluster index) would count the row twenty times. Arroyo evaluates such a
//! projection once, upstream of its window operator; the embedded engine does the same.
//!
//! [`plan`] finds, in every `SELECT` that reads one source table directly (one table in `FROM`,
//! no join, no `*`), the calls of the job's registered UDFs whose arguments are that source's
//! columns or literals. Each distinct call becomes a hidden column of the source's buffered
//! rows, computed when on-time rows arrive, and the `SELECT` reads it from a second table,
//! [`derived_table`], which holds the source's columns plus the hidden ones, under the same
//! name or alias. The engine keeps a rewritten query only if it plans to the same output
//! columns as the original; otherwise the original runs as written.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query,
    Select, SelectItem, TableAlias, TableFactor, VisitMut, VisitorMut,
};

use super::spec::{JobSpec, normalize};

/// One hidden column: a UDF call over a source's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerivedCall {
    /// The hidden column's name.
    pub column: String,
    /// The call as SQL over the source's columns.
    pub sql: String,
}

/// A query whose row-level calls read hidden columns.
#[derive(Debug, Clone)]
pub(crate) struct Rewritten {
    /// The query as rewritten.
    pub query: Query,
    /// The `(source, hidden column)` pairs it reads.
    pub uses: BTreeSet<(String, String)>,
}

/// What [`plan`] found.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Per source table, its hidden columns in the order first seen.
    pub calls: BTreeMap<String, Vec<DerivedCall>>,
    /// Per query of the spec (same order), its rewrite, if it has a row-level call.
    pub queries: Vec<Option<Rewritten>>,
}

/// The table a rewritten `SELECT` reads a source's rows and hidden columns from.
pub(crate) fn derived_table(source: &str) -> String {
    format!("__lag_derived_{source}")
}

/// Finds the row-level calls of `udfs` (lower-case names) on the columns of `sources` (the
/// source tables whose rows are buffered, with their declared schemas).
pub(crate) fn plan(
    spec: &JobSpec,
    sources: &BTreeMap<String, SchemaRef>,
    udfs: &BTreeSet<String>,
) -> Plan {
    // A declared table could be called like a derived table; then its source is left alone.
    let sources: BTreeMap<String, SchemaRef> = sources
        .iter()
        .filter(|(name, _)| spec.table(&derived_table(name)).is_none())
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let mut out = Plan::default();
    for q in &spec.queries {
        let mut query = q.query.clone();
        let mut rewriter = Rewriter {
            sources: &sources,
            udfs,
            calls: &mut out.calls,
            scopes: Vec::new(),
            uses: BTreeSet::new(),
        };
        let _ = query.visit(&mut rewriter);
        let uses = rewriter.uses;
        out.queries
            .push((!uses.is_empty()).then_some(Rewritten { query, uses }));
    }
    out
}

/// The source a `SELECT` reads directly, and the name its columns are qualified with.
struct Scope {
    source: String,
    qualifier: String,
    used: bool,
}

struct Rewriter<'a> {
    sources: &'a BTreeMap<String, SchemaRef>,
    udfs: &'a BTreeSet<String>,
    calls: &'a mut BTreeMap<String, Vec<DerivedCall>>,
    /// One entry per `SELECT` being visited, innermost last.
    scopes: Vec<Option<Scope>>,
    uses: BTreeSet<(String, String)>,
}

impl Rewriter<'_> {
    /// The scope of a `SELECT` whose only input is a source table, read without `*`.
    fn scope_of(&self, select: &Select) -> Option<Scope> {
        let [from] = select.from.as_slice() else {
            return None;
        };
        if !from.joins.is_empty() || !select.lateral_views.is_empty() {
            return None;
        }
        if select.projection.iter().any(|item| {
            matches!(
                item,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        }) {
            return None;
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = &from.relation
        else {
            return None;
        };
        if name.0.len() != 1 || alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
            return None;
        }
        let source = normalize(&name.to_string());
        if !self.sources.contains_key(&source) {
            return None;
        }
        let qualifier = alias
            .as_ref()
            .map_or_else(|| source.clone(), |a| normalize(&a.name.value));
        Some(Scope {
            source,
            qualifier,
            used: false,
        })
    }

    /// The call as SQL over `scope`'s source, if it is a plain call of a registered UDF whose
    /// arguments are all the source's columns or literals.
    fn call_sql(&self, f: &Function, scope: &Scope) -> Option<String> {
        if f.name.0.len() != 1
            || f.filter.is_some()
            || f.over.is_some()
            || f.null_treatment.is_some()
            || !f.within_group.is_empty()
            || !matches!(f.parameters, FunctionArguments::None)
        {
            return None;
        }
        let name = normalize(&f.name.to_string());
        if !self.udfs.contains(&name) {
            return None;
        }
        let FunctionArguments::List(list) = &f.args else {
            return None;
        };
        if list.args.is_empty() || list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
            return None;
        }
        let schema = self.sources.get(&scope.source)?;
        let column = |id: &Ident| {
            let c = normalize(&id.value);
            schema.field_with_name(&c).ok()?;
            Some(format!("\"{c}\""))
        };
        let args = list
            .args
            .iter()
            .map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => match e {
                    Expr::Identifier(id) => column(id),
                    Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                        [q, c] if normalize(&q.value) == scope.qualifier => column(c),
                        _ => None,
                    },
                    Expr::Value(v) => Some(v.to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<String>>>()?;
        Some(format!("{name}({})", args.join(", ")))
    }

    /// The hidden column computing `sql` on `source`'s rows, added if new.
    fn column_for(&mut self, source: &str, sql: String) -> String {
        let taken: usize = self.calls.values().map(Vec::len).sum();
        let calls = self.calls.entry(source.to_string()).or_default();
        if let Some(c) = calls.iter().find(|c| c.sql == sql) {
            return c.column.clone();
        }
        let column = format!("__lag_call_{taken}");
        calls.push(DerivedCall {
            column: column.clone(),
            sql,
        });
        column
    }
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        let scope = self.scope_of(select);
        self.scopes.push(scope);
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        let Some(Some(scope)) = self.scopes.pop() else {
            return ControlFlow::Continue(());
        };
        if !scope.used {
            return ControlFlow::Continue(());
        }
        if let Some(TableFactor::Table { name, alias, .. }) =
            select.from.first_mut().map(|f| &mut f.relation)
        {
            *name = ObjectName::from(vec![Ident::with_quote('"', derived_table(&scope.source))]);
            if alias.is_none() {
                *alias = Some(TableAlias {
                    explicit: true,
                    name: Ident::with_quote('"', scope.source.clone()),
                    columns: Vec::new(),
                    at: None,
                });
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let Some(Some(scope)) = self.scopes.last() else {
            return ControlFlow::Continue(());
        };
        let Some(sql) = self.call_sql(f, scope) else {
            return ControlFlow::Continue(());
        };
        let source = scope.source.clone();
        let column = self.column_for(&source, sql);
        *expr = Expr::Identifier(Ident::with_quote('"', column.clone()));
        if let Some(Some(scope)) = self.scopes.last_mut() {
            scope.used = true;
        }
        self.uses.insert((source, column));
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(sql: &str) -> Plan {
        let spec = JobSpec::from_sql(&[("t.sql".to_string(), sql.to_string())]).unwrap();
        let sources = spec
            .tables
            .iter()
            .filter(|t| t.event_time.is_some())
            .map(|t| (t.name.clone(), t.schema.clone()))
            .collect();
        let udfs = ["cluster_of", "request_row"]
            .into_iter()
            .map(String::from)
            .collect();
        plan(&spec, &sources, &udfs)
    }

    const TABLES: &str = "
        CREATE TABLE events (ts TIMESTAMP NOT NULL, route TEXT NOT NULL, message TEXT NOT NULL,
            WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (type = 'source');
        CREATE TABLE other (ts TIMESTAMP NOT NULL, message TEXT NOT NULL,
            WATERMARK FOR ts AS ts) WITH (type = 'source');
        CREATE TABLE out WITH (type = 'sink');
    ";

    fn rewritten(p: &Plan, i: usize) -> String {
        p.queries[i]
            .as_ref()
            .map(|r| r.query.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_call_on_a_source_column_reads_a_hidden_column_computed_once() {
        let p = plan_of(&format!(
            "{TABLES}
            INSERT INTO out SELECT TUMBLE(INTERVAL '10 seconds') AS window,
                cluster_of(message) AS c, count(*) AS n
            FROM events GROUP BY window, cluster_of(message);
            INSERT INTO out SELECT HOP(INTERVAL '1 second', INTERVAL '2 seconds') AS window,
                upper(cluster_of(e.message)) AS c
            FROM events e"
        ));
        // One hidden column for both queries and all three calls.
        assert_eq!(
            p.calls["events"],
            vec![DerivedCall {
                column: "__lag_call_0".into(),
                sql: "cluster_of(\"message\")".into()
            }]
        );
        let first = rewritten(&p, 0);
        assert!(!first.contains("cluster_of"), "{first}");
        assert_eq!(first.matches("\"__lag_call_0\"").count(), 2, "{first}");
        assert!(
            first.contains("FROM \"__lag_derived_events\" AS \"events\""),
            "{first}"
        );
        let second = rewritten(&p, 1);
        assert!(second.contains("upper(\"__lag_call_0\")"), "{second}");
        assert!(
            second.contains("FROM \"__lag_derived_events\" e"),
            "{second}"
        );
    }

    #[test]
    fn each_select_is_rewritten_against_its_own_source() {
        let p = plan_of(&format!(
            "{TABLES}
            INSERT INTO out SELECT a.window, a.c, b.c AS d FROM (
                SELECT TUMBLE(INTERVAL '10 seconds') AS window, cluster_of(message) AS c
                FROM events) a
            JOIN (
                SELECT TUMBLE(INTERVAL '10 seconds') AS window,
                    request_row(message, 'x', 1.5) AS c
                FROM other) b ON a.window = b.window"
        ));
        assert_eq!(p.calls["events"][0].sql, "cluster_of(\"message\")");
        assert_eq!(
            p.calls["other"][0].sql,
            "request_row(\"message\", 'x', 1.5)"
        );
        assert_eq!(p.calls["other"][0].column, "__lag_call_1");
        let q = rewritten(&p, 0);
        assert!(q.contains("FROM \"__lag_derived_events\""), "{q}");
        assert!(q.contains("FROM \"__lag_derived_other\""), "{q}");
    }

    #[test]
    fn calls_that_are_not_row_level_on_one_source_stay() {
        let p = plan_of(&format!(
            "{TABLES}
            INSERT INTO out SELECT TUMBLE(INTERVAL '10 seconds') AS window, cluster_of(e.message)
            FROM events e JOIN other o ON e.ts = o.ts;
            INSERT INTO out SELECT TUMBLE(INTERVAL '10 seconds') AS window, *, cluster_of(message) AS c
            FROM events;
            INSERT INTO out SELECT TUMBLE(INTERVAL '10 seconds') AS window,
                cluster_of(upper(message)) AS a, cluster_of(nope) AS b,
                cluster_of(o.message) AS c, lower(message) AS d
            FROM events;
            INSERT INTO out SELECT w, cluster_of(message) AS c
            FROM (SELECT TUMBLE(INTERVAL '10 seconds') AS w, message FROM events) x"
        ));
        assert!(p.calls.is_empty(), "{:?}", p.calls);
        assert!(p.queries.iter().all(Option::is_none));
    }
}
