//! Rows of the SQL's `cluster_decisions` sink, read back into typed decisions.
//!
//! The SQL owns the thresholds and the action parameters; this module only reads its columns
//! by name. Required: `cluster_id`, `errors`, `decision`. Optional, with defaults: `severity`
//! (0), `holding` (same as "decision is not none"), `slice` (JSON; none → no policy can be
//! made), `signature` (list of template ids), `slice_traffic`, `slice_error_rate`, `growth`,
//! `previous_errors`, `coverage`, `rate_limit_rps`, `break_open_ms` (5000), `break_ramp_step`
//! (0.2), `break_probes` (5), `break_failure_ratio` (0.5), `expires_in_ms` (300000),
//! `templates` (list of masked template texts, the first [`MAX_TEMPLATES`] kept). A row that
//! cannot be read is reported with the reason; the others go on.

use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use schemas::{Action, Ratio, Slice};

use crate::engine::SinkOutput;

/// Template texts kept per decision.
pub const MAX_TEMPLATES: usize = 10;

/// The sink the job reads decisions from.
pub const SINK: &str = "cluster_decisions";

/// What the SQL decided about one cluster in one window. Its JSON form travels on the
/// `policies` topic between engine replicas and the applier ([`crate::policies_topic`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// End of the window, Unix ms.
    pub window_end_ms: i64,
    /// The failure cluster.
    pub cluster_id: String,
    /// Weighted errors in the current 10 s.
    pub errors: u64,
    /// Weighted errors in the 10 s before.
    pub previous_errors: u64,
    /// errors / max(previous, 1).
    pub growth: f64,
    /// Template ids the enforcer reported for the cluster.
    pub signature: BTreeSet<u64>,
    /// Masked template texts of the cluster's errors (examples for operators).
    pub templates: Vec<String>,
    /// The learned slice, when there were errors to learn from.
    pub slice: Option<Slice>,
    /// Estimated requests inside the slice over the window.
    pub slice_traffic: f64,
    /// Errors per request inside the slice.
    pub slice_error_rate: f64,
    /// Share of the cluster's errors inside the slice.
    pub coverage: f64,
    /// Severity in `[0, 1]`.
    pub severity: f64,
    /// The action to take, `None` when the trigger does not hold.
    pub action: Option<Action>,
    /// Whether an existing policy should stay in force.
    pub holding: bool,
    /// How long a policy made from this decision lives unless renewed, ms.
    pub expires_in_ms: i64,
}

/// Why a row could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cluster_decisions row {row}: {reason}")]
pub struct DecisionError {
    /// Row index within the window's output.
    pub row: usize,
    /// What is wrong.
    pub reason: String,
}

/// Reads every decision of one window's output (other sinks give nothing).
pub fn read(output: &SinkOutput) -> Vec<Result<Decision, DecisionError>> {
    if output.sink != SINK {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut base = 0;
    for batch in &output.batches {
        match Columns::of(batch) {
            Ok(cols) => {
                for i in 0..batch.num_rows() {
                    out.push(cols.decision(i, output.window.end_ms).map_err(|reason| {
                        DecisionError {
                            row: base + i,
                            reason,
                        }
                    }));
                }
            }
            Err(reason) => out.push(Err(DecisionError { row: base, reason })),
        }
        base += batch.num_rows();
    }
    out
}

/// The columns of one batch, cast to the types read.
struct Columns {
    cluster_id: ArrayRef,
    errors: ArrayRef,
    decision: ArrayRef,
    severity: Option<ArrayRef>,
    holding: Option<ArrayRef>,
    slice: Option<ArrayRef>,
    signature: Option<ArrayRef>,
    templates: Option<ArrayRef>,
    previous_errors: Option<ArrayRef>,
    growth: Option<ArrayRef>,
    slice_traffic: Option<ArrayRef>,
    slice_error_rate: Option<ArrayRef>,
    coverage: Option<ArrayRef>,
    rate_limit_rps: Option<ArrayRef>,
    break_open_ms: Option<ArrayRef>,
    break_ramp_step: Option<ArrayRef>,
    break_probes: Option<ArrayRef>,
    break_failure_ratio: Option<ArrayRef>,
    expires_in_ms: Option<ArrayRef>,
}

fn column(batch: &RecordBatch, name: &str, to: &DataType) -> Result<Option<ArrayRef>, String> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => cast(c, to)
            .map(Some)
            .map_err(|e| format!("column {name} is not {to}: {e}")),
    }
}

fn required(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef, String> {
    column(batch, name, to)?.ok_or_else(|| format!("the SELECT has no column {name}"))
}

impl Columns {
    fn of(b: &RecordBatch) -> Result<Self, String> {
        let (f, i, s, t) = (
            &DataType::Float64,
            &DataType::Int64,
            &DataType::Utf8,
            &DataType::Boolean,
        );
        Ok(Self {
            cluster_id: required(b, "cluster_id", s)?,
            errors: required(b, "errors", i)?,
            decision: required(b, "decision", s)?,
            severity: column(b, "severity", f)?,
            holding: column(b, "holding", t)?,
            slice: column(b, "slice", s)?,
            signature: b.column_by_name("signature").cloned(),
            templates: b.column_by_name("templates").cloned(),
            previous_errors: column(b, "previous_errors", i)?,
            growth: column(b, "growth", f)?,
            slice_traffic: column(b, "slice_traffic", f)?,
            slice_error_rate: column(b, "slice_error_rate", f)?,
            coverage: column(b, "coverage", f)?,
            rate_limit_rps: column(b, "rate_limit_rps", f)?,
            break_open_ms: column(b, "break_open_ms", i)?,
            break_ramp_step: column(b, "break_ramp_step", f)?,
            break_probes: column(b, "break_probes", i)?,
            break_failure_ratio: column(b, "break_failure_ratio", f)?,
            expires_in_ms: column(b, "expires_in_ms", i)?,
        })
    }

    fn decision(&self, row: usize, window_end_ms: i64) -> Result<Decision, String> {
        let cluster_id = text(&self.cluster_id, row).ok_or("cluster_id is NULL")?;
        let errors = int(&self.errors, row).unwrap_or(0).max(0) as u64;
        let severity = opt_f64(&self.severity, row).unwrap_or(0.0);
        if !severity.is_finite() {
            return Err(format!("severity {severity} is not a number"));
        }
        let severity = severity.clamp(0.0, 1.0);
        let slice = match self.slice.as_ref().and_then(|c| text(c, row)) {
            Some(json) => Some(
                serde_json::from_str::<Slice>(&json).map_err(|e| format!("slice {json}: {e}"))?,
            ),
            None => None,
        };
        let kind = text(&self.decision, row).unwrap_or_default();
        let action = match kind.trim().to_ascii_lowercase().as_str() {
            "" | "none" => None,
            "degrade" => Some(Action::Degrade),
            "rate_limit" => {
                let rps = opt_f64(&self.rate_limit_rps, row)
                    .ok_or("decision rate_limit needs a rate_limit_rps column")?;
                if !(rps.is_finite() && rps > 0.0) {
                    return Err(format!("rate_limit_rps {rps} must be > 0"));
                }
                Some(Action::RateLimit {
                    requests_per_second: rps,
                    // One second's worth, at least one request.
                    burst: rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
                })
            }
            "circuit_break" => Some(Action::CircuitBreak {
                open_ms: opt_int(&self.break_open_ms, row).unwrap_or(5_000).max(1) as u64,
                ramp_step: ratio(opt_f64(&self.break_ramp_step, row).unwrap_or(0.2))?,
                probes: opt_int(&self.break_probes, row)
                    .unwrap_or(5)
                    .clamp(1, i64::from(u32::MAX)) as u32,
                failure_ratio: ratio(opt_f64(&self.break_failure_ratio, row).unwrap_or(0.5))?,
            }),
            other => {
                return Err(format!(
                    "decision {other:?}: use none, degrade, rate_limit or circuit_break"
                ));
            }
        };
        let holding = match &self.holding {
            Some(c) if !c.is_null(row) => c.as_boolean().value(row),
            _ => action.is_some(),
        };
        Ok(Decision {
            window_end_ms,
            cluster_id,
            errors,
            previous_errors: opt_int(&self.previous_errors, row).unwrap_or(0).max(0) as u64,
            growth: opt_f64(&self.growth, row).unwrap_or(0.0),
            signature: self
                .signature
                .as_ref()
                .map(|c| template_ids(c, row))
                .unwrap_or_default(),
            templates: self
                .templates
                .as_ref()
                .map(|c| texts(c, row))
                .unwrap_or_default(),
            slice,
            slice_traffic: opt_f64(&self.slice_traffic, row).unwrap_or(0.0),
            slice_error_rate: opt_f64(&self.slice_error_rate, row).unwrap_or(0.0),
            coverage: opt_f64(&self.coverage, row).unwrap_or(0.0),
            severity,
            action,
            holding,
            expires_in_ms: opt_int(&self.expires_in_ms, row)
                .unwrap_or(300_000)
                .max(1_000),
        })
    }
}

fn ratio(v: f64) -> Result<Ratio, String> {
    Ratio::new(v).map_err(|e| e.to_string())
}

fn text(c: &ArrayRef, row: usize) -> Option<String> {
    (!c.is_null(row)).then(|| c.as_string::<i32>().value(row).to_owned())
}

fn int(c: &ArrayRef, row: usize) -> Option<i64> {
    (!c.is_null(row)).then(|| c.as_primitive::<Int64Type>().value(row))
}

fn opt_int(c: &Option<ArrayRef>, row: usize) -> Option<i64> {
    c.as_ref().and_then(|c| int(c, row))
}

fn opt_f64(c: &Option<ArrayRef>, row: usize) -> Option<f64> {
    c.as_ref()
        .and_then(|c| (!c.is_null(row)).then(|| c.as_primitive::<Float64Type>().value(row)))
}

/// A list of template ids (any integer list), or nothing.
fn template_ids(c: &ArrayRef, row: usize) -> BTreeSet<u64> {
    let values = match c.data_type() {
        DataType::List(_) if !c.is_null(row) => c.as_list::<i32>().value(row),
        DataType::LargeList(_) if !c.is_null(row) => c.as_list::<i64>().value(row),
        _ => return BTreeSet::new(),
    };
    let Ok(values) = cast(&values, &DataType::UInt64) else {
        return BTreeSet::new();
    };
    values
        .as_primitive::<UInt64Type>()
        .iter()
        .flatten()
        .collect()
}

/// A list of texts, at most [`MAX_TEMPLATES`], or nothing.
fn texts(c: &ArrayRef, row: usize) -> Vec<String> {
    let values = match c.data_type() {
        DataType::List(_) if !c.is_null(row) => c.as_list::<i32>().value(row),
        DataType::LargeList(_) if !c.is_null(row) => c.as_list::<i64>().value(row),
        _ => return Vec::new(),
    };
    let Ok(values) = cast(&values, &DataType::Utf8) else {
        return Vec::new();
    };
    let mut out: Vec<String> = values
        .as_string::<i32>()
        .iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    out.sort();
    out.truncate(MAX_TEMPLATES);
    out
}
