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
            let errors = requests(&lists(&arrays[0], i)?, &mut skipped);
            let traffic = requests(&lists(&arrays[1], i)?, &mut skipped);
            let counts = route_counts(&lists(&arrays[2], i)?, &mut skipped);
            let learned = self.learner.learn(&errors, &traffic, &counts);
            let in_slice_samples = learned.as_ref().map_or(0, |l| {
                traffic
                    .iter()
                    .filter(|t| udfs::slice::matches(&l.slice, t))
                    .count() as u64
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

/// The text values of row `i` of a list column (empty for NULL).
fn lists(array: &ArrayRef, i: usize) -> DfResult<Vec<Option<String>>> {
    fn of<O: OffsetSizeTrait>(l: &GenericListArray<O>, i: usize) -> DfResult<Vec<Option<String>>> {
        if l.is_null(i) {
            return Ok(Vec::new());
        }
        let values = cast(&l.value(i), &DataType::Utf8)?;
        Ok(values
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect())
    }
    match array.data_type() {
        DataType::List(_) => of(array.as_list::<i32>(), i),
        DataType::LargeList(_) => of(array.as_list::<i64>(), i),
        DataType::Null => Ok(Vec::new()),
        other => exec_err!("learn_slice expects lists of text, got {other}"),
    }
}

fn requests(rows: &[Option<String>], skipped: &mut u64) -> Vec<WeightedRequest> {
    rows.iter()
        .flatten()
        .filter_map(
            |text| match serde_json::from_str::<udfs::sql::RequestRow>(text) {
                Ok(r) => Some(WeightedRequest::new(
                    &r.route,
                    &r.method,
                    &r.upstream,
                    &r.dimensions,
                    r.sample_rate,
                )),
                Err(_) => {
                    *skipped += 1;
                    None
                }
            },
        )
        .collect()
}

/// `route=requests` entries, summed per route.
fn route_counts(rows: &[Option<String>], skipped: &mut u64) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for text in rows.iter().flatten() {
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
