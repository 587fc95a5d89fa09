//! Grouping by the window without hashing it.
//!
//! The engine runs each query for one window at a time, with the window written in as a
//! constant struct `{start, end}` ([`super::rewrite`]), and every windowed aggregate groups by
//! it (`GROUP BY window, cluster_id`). DataFusion drops a constant `GROUP BY` key only when it
//! is written in the same `SELECT` and another key remains; a `window` column that a subquery
//! computed, or a window that is the only key, is hashed as a struct on every row, through the
//! row format — on the 1 s-slide decision query most of a window's aggregation time.
//!
//! [`ConstantGroupKeys`] finds the `GROUP BY` keys that are constant (an expression of
//! literals, or a column that the input computes from literals, through projections, aliases
//! and filters), groups by the other keys (or, if none remain, by one boolean literal, which
//! keeps "no rows in, no groups out"), and projects the constants back in under their names.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection, lit};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The optimizer rule; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct ConstantGroupKeys;

/// The name of the boolean key that stands in when every key was constant.
const STAND_IN: &str = "__lag_constant_key";

impl OptimizerRule for ConstantGroupKeys {
    fn name(&self) -> &str {
        "lag_constant_group_keys"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = plan else {
            return Ok(Transformed::no(plan));
        };
        let already_stand_in = matches!(
            agg.group_expr.as_slice(),
            [Expr::Alias(a)] if a.name == STAND_IN
        );
        if already_stand_in || agg.group_expr.iter().any(is_grouping_set) {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let constants: Vec<Option<Expr>> = agg
            .group_expr
            .iter()
            .map(|g| constant_of(g, &agg.input))
            .collect();
        if constants.iter().all(Option::is_none) {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let mut keys: Vec<Expr> = agg
            .group_expr
            .iter()
            .zip(&constants)
            .filter(|(_, c)| c.is_none())
            .map(|(g, _)| g.clone())
            .collect();
        let stand_in = keys.is_empty();
        if stand_in {
            keys.push(lit(true).alias(STAND_IN));
        }
        let grouped = Aggregate::try_new(agg.input.clone(), keys, agg.aggr_expr.clone())?;
        // Project the original output back: constants in place, the rest read by position.
        let inner = grouped.schema.clone();
        let outer = agg.schema.clone();
        let mut next = usize::from(stand_in);
        let mut exprs = Vec::with_capacity(outer.fields().len());
        for i in 0..outer.fields().len() {
            let (qualifier, field) = outer.qualified_field(i);
            let value = match constants.get(i) {
                Some(Some(constant)) => constant.clone(),
                _ => {
                    let (q, f) = inner.qualified_field(next);
                    next += 1;
                    Expr::Column(Column::from((q, f)))
                }
            };
            exprs.push(value.alias_qualified(qualifier.cloned(), field.name()));
        }
        let projection = Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(grouped)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

fn is_grouping_set(e: &Expr) -> bool {
    matches!(e, Expr::GroupingSet(_))
}

/// The constant a `GROUP BY` key always has over `input`'s rows, if it has one.
fn constant_of(key: &Expr, input: &LogicalPlan) -> Option<Expr> {
    match key {
        Expr::Column(c) => constant_column(c, input),
        Expr::Alias(a) => constant_of(&a.expr, input),
        e if is_constant(e) => Some(e.clone()),
        _ => None,
    }
}

/// The constant that `plan` computes for column `c`, looking through projections, subquery
/// aliases and filters.
fn constant_column(c: &Column, plan: &LogicalPlan) -> Option<Expr> {
    match plan {
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(c).ok()?;
            match p.expr.get(i)?.clone().unalias() {
                Expr::Column(inner) => constant_column(&inner, &p.input),
                e if is_constant(&e) => Some(e),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => {
            let i = a.schema.index_of_column(c).ok()?;
            let (q, f) = a.input.schema().qualified_field(i);
            constant_column(&Column::from((q, f)), &a.input)
        }
        LogicalPlan::Filter(f) => constant_column(c, &f.input),
        _ => None,
    }
}

/// An expression of literals only, the same on every row.
fn is_constant(e: &Expr) -> bool {
    let mut constant = true;
    let _ = e.apply(|node| {
        constant &= matches!(
            node,
            Expr::Literal(..)
                | Expr::ScalarFunction(_)
                | Expr::Cast(_)
                | Expr::TryCast(_)
                | Expr::Alias(_)
                | Expr::BinaryExpr(_)
                | Expr::Negative(_)
                | Expr::Not(_)
        );
        Ok(if constant {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        })
    });
    constant && !e.is_volatile()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().into_optimized_plan().unwrap();
        let mut batches = df.collect().await.unwrap();
        batches.retain(|b| b.num_rows() > 0);
        if batches.is_empty() {
            return (plan.display_indent().to_string(), String::new());
        }
        let mut lines: Vec<String> = pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        (plan.display_indent().to_string(), lines.join("\n"))
    }

    async fn context(with_rule: bool) -> SessionContext {
        let ctx = SessionContext::new();
        if with_rule {
            ctx.add_optimizer_rule(Arc::new(ConstantGroupKeys));
        }
        let b = RecordBatch::try_from_iter(vec![
            (
                "k",
                Arc::new(StringArray::from(vec!["a", "b", "a", "c"])) as _,
            ),
            ("v", Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as _),
        ])
        .unwrap();
        ctx.register_batch("t", b).unwrap();
        ctx
    }

    const WINDOW: &str = "named_struct('start', to_timestamp_millis(0), 'end', \
                          to_timestamp_millis(10000))";

    #[tokio::test]
    async fn a_window_column_from_a_subquery_is_not_a_hashed_key_and_results_stay() {
        let sql = format!(
            "SELECT window, k, count(*) AS n, sum(v) AS s \
             FROM (SELECT {WINDOW} AS window, k, v FROM t) x GROUP BY window, k"
        );
        let (plain_plan, plain) = run(&context(false).await, &sql).await;
        let (plan, rows) = run(&context(true).await, &sql).await;
        assert_eq!(rows, plain);
        assert!(rows.contains("| a | 2 | 4 |"), "{rows}");
        let aggregate = |p: &str| {
            p.lines()
                .find(|l| l.contains("Aggregate: groupBy"))
                .unwrap_or_default()
                .to_string()
        };
        assert!(aggregate(&plain_plan).contains("x.window"), "{plain_plan}");
        assert!(!aggregate(&plan).contains("window"), "{plan}");
    }

    #[tokio::test]
    async fn a_window_that_is_the_only_key_still_gives_no_row_for_no_input() {
        let sql = format!(
            "SELECT {WINDOW} AS window, array_agg(k) AS ks FROM t WHERE v > 2 GROUP BY window"
        );
        let (plan, rows) = run(&context(true).await, &sql).await;
        assert!(plan.contains(STAND_IN), "{plan}");
        assert_eq!(rows, run(&context(false).await, &sql).await.1);
        assert!(rows.contains("start"), "{rows}");

        let empty = format!(
            "SELECT {WINDOW} AS window, count(*) AS n FROM t WHERE v > 100 GROUP BY window"
        );
        let (_, rows) = run(&context(true).await, &empty).await;
        assert_eq!(rows, "", "a grouped aggregate over no rows has no groups");
    }
}
