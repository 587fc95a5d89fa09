//! Slice learning from SQL: `request_row(...)` packs one request's attributes into a JSON
//! text, `learn_slice(error_rows, traffic_rows, route_counts)` runs [`SliceLearner`] over the
//! lists `array_agg` collected and returns a struct
//! `{slice, coverage, errors, traffic, error_rate, samples}`.
//!
//! ```sql
//! learn_slice(
//!     array_agg(request_row(route, method, upstream, dimensions, sample_rate)),  -- the cluster's errors
//!     traffic.rows,   -- array_agg(request_row(...)) over traffic_samples in the same window
//!     counts.rows     -- array_agg(concat(route, '=', requests)) per route in the same window
//! )
//! ```
//!
//! `slice` is the learned [`schemas::Slice`] as JSON (NULL when there were no errors);
//! `traffic` is the estimated requests inside it over the window, `error_rate` the errors
//! per request inside it. How the estimate behaves at low volume is documented on
//! [`udfs::slice`]. A row that does not decode is skipped (and counted in `skipped`), never an
//! error that would fail the window.
//!
//! A window's lists repeat the same few rows many times (a slice is exactly that: many
//! requests sharing attributes), so each distinct row text is decoded once and its copies are
//! merged into one request carrying their summed weight; the learner only ever sums weights,
//! so what it learns is unchanged, and `samples` still counts rows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, GenericListArray, OffsetSizeTrait, StringBuilder,
    StructArray, UInt64Builder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use udfs::slice::{SliceLearner, WeightedRequest};

/// `request_row(route, method, upstream, dimensions_json, sample_rate) -> text`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RequestRow {
    signature: Signature,
}

impl Default for RequestRow {
    fn default() -> Self {
        Self {
            signature: Signature::exact(
                vec![
                    DataType::Utf8,
                    DataType::Utf8,
                    DataType::Utf8,
                    DataType::Utf8,
                    DataType::Float64,
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for RequestRow {
    fn name(&self) -> &str {
        "request_row"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text: Vec<ArrayRef> = arrays[..4]
            .iter()
            .map(|a| cast(a, &DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let [route, method, upstream, dims] = [0, 1, 2, 3].map(|i| text[i].as_string::<i32>());
        let rate = cast(&arrays[4], &DataType::Float64)?;
        let rate = rate.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        let mut out = StringBuilder::new();
        for i in 0..args.number_rows {
            // The plain function the Arroyo wrapper calls too.
            out.append_option(udfs::sql::request_row(
                text_at(route, i),
                text_at(method, i),
                text_at(upstream, i),
                text_at(dims, i),
                (!rate.is_null(i)).then(|| rate.value(i)),
            ));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Row `i` of a text column, `None` for NULL.
fn text_at(a: &datafusion::arrow::array::StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

/// `learn_slice(error_rows, traffic_rows, route_counts) -> struct`.
#[derive(Debug)]
pub struct LearnSlice {
    signature: Signature,
    learner: SliceLearner,
}

// DataFusion compares UDFs to de-duplicate expressions: two are equal when they learn alike.
impl PartialEq for LearnSlice {
    fn eq(&self, other: &Self) -> bool {
        self.learner == other.learner
    }
}
impl Eq for LearnSlice {}
impl std::hash::Hash for LearnSlice {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let l = &self.learner;
        (
            l.coverage.to_bits(),
            l.max_atoms,
            l.max_distinct_values,
            l.min_gain.to_bits(),
        )
            .hash(state);
    }
}

impl LearnSlice {
    /// A `learn_slice` running `learner`.
    pub fn new(learner: SliceLearner) -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
            learner,
        }
    }

    fn fields() -> Fields {
        Fields::from(vec![
            Field::new("slice", DataType::Utf8, true),
            Field::new("coverage", DataType::Float64, false),
            Field::new("errors", DataType::Float64, false),
            Field::new("traffic", DataType::Float64, false),
            Field::new("error_rate", DataType::Float64, false),
            Field::new("samples", DataType::UInt64, false),
            Field::new("skipped", DataType::UInt64, false),
        ])
    }
}

impl ScalarUDFImpl for LearnSlice {
    fn name(&self) -> &str {
        "learn_slice"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        for (i, t) in args.iter().enumerate() {
            if !matches!(
                t,
                DataType::List(_) | DataType::LargeList(_) | DataType::Null
            ) {
                return exec_err!(
                    "learn_slice argument {} must be a list of text (array_agg(...)), got {t}",
                    i + 1
                );
            }
        }
        Ok(DataType::Struct(Self::fields()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let n = args.number_rows;
        let (mut slice, mut coverage, mut errors_out, mut traffic_out, mut rate) = (
            StringBuilder::new(),
            Float64Builder::new(),
            Float64Builder::new(),
            Float64Builder::new(),
            Float64Builder::new(),
        );
        let (mut samples_out, mut skipped_out) = (UInt64Builder::new(), UInt64Builder::new());
        for i in 0..n {
            let mut skipped = 0u64;
            let (errors, _) = requests(list(&arrays[0], i)?.as_ref(), &mut skipped);
            let (traffic, traffic_rows) = requests(list(&arrays[1], i)?.as_ref(), &mut skipped);
            let counts = route_counts(list(&arrays[2], i)?.as_ref(), &mut skipped);
            let learned = self.learner.learn(&errors, &traffic, &counts);
            let in_slice_samples = learned.as_ref().map_or(0, |l| {
                traffic
                    .iter()
                    .zip(&traffic_rows)
                    .filter(|(t, _)| udfs::slice::matches(&l.slice, t))
                    .map(|(_, rows)| rows)
                    .sum()
            });
            match learned {
                Some(l) => {
                    match serde_json::to_string(&l.slice) {
                        Ok(s) => slice.append_value(s),
                        Err(_) => slice.append_null(),
                    }
                    coverage.append_value(l.coverage);
                    errors_out.append_value(l.errors);
                    traffic_out.append_value(l.traffic);
                    rate.append_value(l.error_rate());
                }
                None => {
                    slice.append_null();
                    for b in [&mut coverage, &mut errors_out, &mut traffic_out, &mut rate] {
                        b.append_value(0.0);
                    }
                }
            }
            samples_out.append_value(in_slice_samples);
            skipped_out.append_value(skipped);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(slice.finish()),
            Arc::new(coverage.finish()),
            Arc::new(errors_out.finish()),
            Arc::new(traffic_out.finish()),
            Arc::new(rate.finish()),
            Arc::new(samples_out.finish()),
            Arc::new(skipped_out.finish()),
        ];
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            Self::fields(),
            columns,
            None,
        )?)))
    }
}

/// The values of row `i` of a list column as text (`None` for NULL).
fn list(array: &ArrayRef, i: usize) -> DfResult<Option<ArrayRef>> {
    fn of<O: OffsetSizeTrait>(l: &GenericListArray<O>, i: usize) -> DfResult<Option<ArrayRef>> {
        if l.is_null(i) {
            return Ok(None);
        }
        Ok(Some(cast(&l.value(i), &DataType::Utf8)?))
    }
    match array.data_type() {
        DataType::List(_) => of(array.as_list::<i32>(), i),
        DataType::LargeList(_) => of(array.as_list::<i64>(), i),
        DataType::Null => Ok(None),
        other => exec_err!("learn_slice expects lists of text, got {other}"),
    }
}

/// The non-NULL texts of a list.
fn texts(values: Option<&ArrayRef>) -> impl Iterator<Item = &str> {
    values
        .into_iter()
        .flat_map(|v| v.as_string::<i32>().iter().flatten())
}

/// The requests of a list of `request_row` texts, each distinct text decoded once: one request
/// per distinct row, weighing as much as all its copies, and how many rows each stands for.
fn requests(values: Option<&ArrayRef>, skipped: &mut u64) -> (Vec<WeightedRequest>, Vec<u64>) {
    let mut index: HashMap<&str, Option<usize>> = HashMap::new();
    let (mut out, mut rows) = (Vec::new(), Vec::new());
    for text in texts(values) {
        let slot = *index.entry(text).or_insert_with(|| {
            let r = serde_json::from_str::<udfs::sql::RequestRow>(text).ok()?;
            out.push(WeightedRequest::new(
                &r.route,
                &r.method,
                &r.upstream,
                &r.dimensions,
                r.sample_rate,
            ));
            rows.push(0);
            Some(out.len() - 1)
        });
        match slot {
            Some(i) => rows[i] += 1,
            None => *skipped += 1,
        }
    }
    for (r, n) in out.iter_mut().zip(&rows) {
        r.weight *= *n as f64;
    }
    (out, rows)
}

/// `route=requests` entries, summed per route.
fn route_counts(values: Option<&ArrayRef>, skipped: &mut u64) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for text in texts(values) {
        match text
            .rsplit_once('=')
            .and_then(|(r, n)| Some((r, n.trim().parse::<f64>().ok()?)))
        {
            Some((route, n)) if n.is_finite() && n >= 0.0 => {
                *out.entry(route.to_owned()).or_insert(0.0) += n;
            }
            _ => *skipped += 1,
        }
    }
    out
}

/// Both functions, built.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(RequestRow::default()),
        ScalarUDF::new_from_impl(LearnSlice::new(SliceLearner::default())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, ListBuilder, StringBuilder};
    use datafusion::common::config::ConfigOptions;
    use schemas::Dimensions;

    fn row(route: &str, channel: &str, rate: f64) -> String {
        let dims: Dimensions = [("body:channel".to_string(), channel.to_string())].into();
        udfs::sql::request_row(
            Some(route),
            Some("POST"),
            Some("pay"),
            serde_json::to_string(&dims).ok().as_deref(),
            Some(rate),
        )
        .unwrap()
    }

    fn list_of(rows: &[String]) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for r in rows {
            b.values().append_value(r);
        }
        b.append(true);
        Arc::new(b.finish())
    }

    fn decoded(rows: &[String]) -> Vec<WeightedRequest> {
        rows.iter()
            .filter_map(|t| serde_json::from_str::<udfs::sql::RequestRow>(t).ok())
            .map(|r| {
                WeightedRequest::new(
                    &r.route,
                    &r.method,
                    &r.upstream,
                    &r.dimensions,
                    r.sample_rate,
                )
            })
            .collect()
    }

    #[test]
    fn repeated_rows_are_decoded_once_and_learn_what_every_copy_would() {
        // 40 alipay errors (some sampled at 0.5), 4 wechat; traffic mostly wechat.
        let mut errors: Vec<String> = (0..30).map(|_| row("pay", "alipay", 1.0)).collect();
        errors.extend((0..10).map(|_| row("pay", "alipay", 0.5)));
        errors.extend((0..4).map(|_| row("pay", "wechat", 1.0)));
        errors.extend(["not json".to_string(), "not json".to_string()]);
        let mut traffic: Vec<String> = (0..60).map(|_| row("pay", "wechat", 1.0)).collect();
        traffic.extend((0..25).map(|_| row("pay", "alipay", 1.0)));
        let counts = vec!["pay=1000".to_string()];

        let learner = SliceLearner::default();
        let want = learner
            .learn(
                &decoded(&errors),
                &decoded(&traffic),
                &[("pay".to_string(), 1000.0)].into(),
            )
            .unwrap();

        let udf = LearnSlice::new(learner);
        let args = [list_of(&errors), list_of(&traffic), list_of(&counts)];
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(Field::new("x", a.data_type().clone(), true)))
            .collect();
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args: args.iter().cloned().map(ColumnarValue::Array).collect(),
                arg_fields,
                number_rows: 1,
                return_field: Arc::new(Field::new(
                    "out",
                    DataType::Struct(LearnSlice::fields()),
                    true,
                )),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        let ColumnarValue::Array(out) = out else {
            panic!("an array")
        };
        let out = out.as_struct();
        let f64_at = |name: &str| {
            out.column_by_name(name)
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0)
        };
        let u64_at = |name: &str| {
            out.column_by_name(name)
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                .value(0)
        };
        let slice = out
            .column_by_name("slice")
            .unwrap()
            .as_string::<i32>()
            .value(0);
        assert_eq!(slice, serde_json::to_string(&want.slice).unwrap());
        assert!(slice.contains("alipay"), "{slice}");
        assert!((f64_at("errors") - want.errors).abs() < 1e-9);
        assert!((f64_at("errors") - 50.0).abs() < 1e-9, "30 + 10 x 2");
        assert!((f64_at("traffic") - want.traffic).abs() < 1e-9);
        assert!((f64_at("coverage") - want.coverage).abs() < 1e-9);
        assert_eq!(
            u64_at("samples"),
            25,
            "traffic rows in the slice, not distinct rows"
        );
        assert_eq!(u64_at("skipped"), 2, "each undecodable copy");
    }
}
