//! Turning a windowed query into plain DataFusion SQL for one closed window.
//!
//! The window's rows are already the only rows in the source tables, so every `TUMBLE(...)` /
//! `HOP(...)` call becomes a constant: a struct `{start, end}` of millisecond timestamps, the
//! shape Arroyo gives the `window` column. Grouping by that constant keeps the query's groups,
//! and `window.start` / `window.end` of a windowed subquery read its fields.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Query, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::spec::window_call;
use super::window::Window;

/// The struct literal that stands in for a window function.
pub(crate) fn window_struct_sql(window: Window) -> String {
    format!(
        "named_struct('start', to_timestamp_millis({}), 'end', to_timestamp_millis({}))",
        window.start_ms, window.end_ms
    )
}

/// `query` with its window calls replaced by `window`'s bounds, as SQL text.
pub(crate) fn for_window(query: &Query, window: Window) -> String {
    let replacement = Parser::new(&GenericDialect {})
        .try_with_sql(&window_struct_sql(window))
        .and_then(|mut p| p.parse_expr());
    let Ok(replacement) = replacement else {
        // The literal above always parses; if it did not, planning reports the original call.
        return query.to_string();
    };
    let mut query = query.clone();
    let _ = visit_expressions_mut(&mut query, |expr| {
        if let Expr::Function(f) = expr
            && window_call(f).is_some()
        {
            *expr = replacement.clone();
        }
        ControlFlow::<()>::Continue(())
    });
    query.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Statement;

    #[test]
    fn window_calls_become_constants_everywhere() {
        let sql = "SELECT TUMBLE(INTERVAL '10 seconds') AS window, route, count(*) \
                   FROM t GROUP BY TUMBLE(INTERVAL '10 seconds'), route";
        let stmt = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        let Statement::Query(q) = stmt else { panic!() };
        let out = for_window(
            &q,
            Window {
                start_ms: 10_000,
                end_ms: 20_000,
            },
        );
        assert!(!out.to_lowercase().contains("tumble"), "{out}");
        assert_eq!(
            out.matches("to_timestamp_millis(10000)").count(),
            2,
            "{out}"
        );
        assert_eq!(
            out.matches("to_timestamp_millis(20000)").count(),
            2,
            "{out}"
        );
    }
}
