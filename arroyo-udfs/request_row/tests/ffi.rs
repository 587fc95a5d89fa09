//! The exported `__run` (the `#[udf]` batch loop Arroyo calls) gives, row for row, what
//! `udfs::sql::request_row` gives, NULLs included, linked in and as the built cdylib.

use arroyo_udf_harness::{call, LoadedUdf};
use arroyo_udf_plugin::arrow::array::{Array, ArrayData, Float64Array, StringArray};

type Row<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<f64>,
);

const ROWS: &[Row] = &[
    (
        Some("orders"),
        Some("POST"),
        Some("pay"),
        Some(r#"{"body:channel":"alipay"}"#),
        Some(0.05),
    ),
    (Some("orders"), None, None, None, Some(1.0)),
    (None, Some("GET"), Some("u"), Some("{}"), Some(1.0)),
    (
        Some("orders"),
        Some("GET"),
        Some("u"),
        Some("not json"),
        None,
    ),
    (
        Some("路由"),
        Some("GET"),
        Some("u"),
        Some("[1, 2]"),
        Some(0.5),
    ),
];

fn columns() -> Vec<ArrayData> {
    let text = |f: fn(&Row<'static>) -> Option<&'static str>| {
        StringArray::from(ROWS.iter().map(f).collect::<Vec<_>>()).into_data()
    };
    vec![
        text(|r| r.0),
        text(|r| r.1),
        text(|r| r.2),
        text(|r| r.3),
        Float64Array::from(ROWS.iter().map(|r| r.4).collect::<Vec<_>>()).into_data(),
    ]
}

fn check(out: &dyn Array) {
    let a = out
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("the declared return type");
    assert_eq!(a.len(), ROWS.len());
    for (i, r) in ROWS.iter().enumerate() {
        let got = (!a.is_null(i)).then(|| a.value(i).to_owned());
        assert_eq!(
            got,
            udfs::sql::request_row(r.0, r.1, r.2, r.3, r.4),
            "row {i}: {r:?}"
        );
    }
    assert!(a.is_null(2) && a.is_null(3), "NULL route or rate, NULL row");
}

#[test]
fn batch_matches_the_plain_function_row_for_row() {
    let out = call(arroyo_udf_request_row::__run, columns()).expect("the UDF ran");
    check(&out);
}

#[test]
fn the_built_cdylib_gives_the_same_rows() {
    let udf = LoadedUdf::from_target_dir("arroyo_udf_request_row").expect("the cdylib loads");
    check(&udf.call(columns()).expect("the UDF ran"));
}
