//! The `udfs` functions as DataFusion scalar UDFs, so the job's SQL can call them:
//! `mask_pii(text) -> text`, `template_id(text) -> bigint`, `template(text) -> text`,
//! `cluster_of(text) -> text`, `embedding(text) -> bytea`; and the slice learner
//! ([`slice`]): `request_row(...) -> text`, `learn_slice(lists) -> struct`.
//!
//! Each is a thin adapter over the plain function in `udfs::sql` (the same function the
//! Arroyo wrappers call), applied row by row; a NULL or unusable row gives NULL, never an
//! error that would fail the window. The template and cluster functions keep state (the
//! miner and the cluster index), so they are volatile: DataFusion must not fold or reorder
//! them away.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, Int64Array, StringArray, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

use crate::engine::Engine;

pub mod slice;

/// Names of the text functions over `udfs::sql` (the ones with Arroyo wrappers).
pub const NAMES: &[&str] = &[
    "mask_pii",
    "template_id",
    "template",
    "cluster_of",
    "embedding",
];

/// Names of the slice-learning functions ([`slice`]).
pub const SLICE_NAMES: &[&str] = &["request_row", "learn_slice"];

/// Registers every UDF on the engine.
pub fn register(engine: &mut Engine) {
    for udf in all().into_iter().chain(slice::all()) {
        engine.register_udf(udf);
    }
}

/// The UDFs, built.
pub fn all() -> Vec<ScalarUDF> {
    use udfs::sql;
    vec![
        text_udf::<_, StringArray>(
            "mask_pii",
            DataType::Utf8,
            Volatility::Immutable,
            sql::mask_pii,
        ),
        text_udf::<_, Int64Array>(
            "template_id",
            DataType::Int64,
            Volatility::Volatile,
            sql::template_id,
        ),
        text_udf::<_, StringArray>(
            "template",
            DataType::Utf8,
            Volatility::Volatile,
            sql::template,
        ),
        text_udf::<_, StringArray>(
            "cluster_of",
            DataType::Utf8,
            Volatility::Volatile,
            sql::cluster_of,
        ),
        text_udf::<_, BinaryArray>(
            "embedding",
            DataType::Binary,
            Volatility::Immutable,
            sql::embedding,
        ),
    ]
}

/// A one-argument text function applied row by row: the argument is cast to `Utf8` (so
/// `Utf8View` and `LargeUtf8` columns work too), `f` maps each row, `A` collects the column.
fn text_udf<T, A>(
    name: &str,
    returns: DataType,
    volatility: Volatility,
    f: fn(Option<&str>) -> Option<T>,
) -> ScalarUDF
where
    T: 'static,
    A: Array + FromIterator<Option<T>> + 'static,
{
    let null_type = returns.clone();
    let fun = Arc::new(move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let text = cast(&arrays[0], &DataType::Utf8)?;
        let Some(text) = text.as_any().downcast_ref::<StringArray>() else {
            // `cast` to Utf8 always yields a StringArray; were it not, every row is NULL.
            return Ok(ColumnarValue::Array(new_null_array(
                &null_type,
                arrays[0].len(),
            )));
        };
        let out: ArrayRef = Arc::new(text.iter().map(f).collect::<A>());
        if scalar {
            Ok(ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::try_from_array(&out, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    });
    create_udf(name, vec![DataType::Utf8], returns, volatility, fun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_built_once() {
        let names: Vec<String> = all().iter().map(|u| u.name().to_owned()).collect();
        assert_eq!(names, NAMES);
        let names: Vec<String> = slice::all().iter().map(|u| u.name().to_owned()).collect();
        assert_eq!(names, SLICE_NAMES);
    }
}
