//! The exported `__run` (the `#[udf]` batch loop Arroyo calls) gives, row for row, what
//! `udfs::sql::template` gives, NULLs included.

use arroyo_udf_harness::{call_text, LoadedUdf};
use arroyo_udf_plugin::arrow::array::{Array, StringArray};

const ROWS: &[Option<&str>] = &[
    Some("dial tcp 10.0.0.1:5432: connect: connection refused"),
    None,
    Some(""),
    Some("   "),
    Some("call 13812345678 or mail a@b.io about order 42"),
    Some("Redis 连接被拒绝 10.0.0.2:6379"),
    Some("dial tcp 10.9.9.9:5432: connect: connection refused"),
];

#[test]
fn batch_matches_the_plain_function_row_for_row() {
    let huge = "x".repeat(1 << 20);
    let mut rows = ROWS.to_vec();
    rows.push(Some(&huge));
    let out = call_text(arroyo_udf_template::__run, &rows).expect("the UDF ran");
    let a = out
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("the declared return type");
    assert_eq!(a.len(), rows.len());
    for (i, row) in rows.iter().enumerate() {
        let got = (!a.is_null(i)).then(|| a.value(i).to_owned());
        assert_eq!(got, udfs::sql::template(*row), "row {i}: {row:?}");
    }
    assert!(a.is_null(1), "NULL in, NULL out");
}

#[test]
fn the_rust_function_is_the_plain_function() {
    for row in ROWS {
        assert_eq!(
            arroyo_udf_template::template(*row),
            udfs::sql::template(*row)
        );
    }
}

/// The built cdylib, loaded as Arroyo's worker loads it, gives the same rows. (Its copy of the
/// template miner and cluster index is its own, as on an Arroyo worker.)
#[test]
fn the_built_cdylib_gives_the_same_rows() {
    let udf = LoadedUdf::from_target_dir("arroyo_udf_template").expect("the cdylib loads");
    let out = udf.call_text(ROWS).expect("the UDF ran");
    let a = out
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("the declared return type");
    assert_eq!(a.len(), ROWS.len());
    for (i, row) in ROWS.iter().enumerate() {
        let got = (!a.is_null(i)).then(|| a.value(i).to_owned());
        assert_eq!(got, udfs::sql::template(*row), "row {i}: {row:?}");
    }
}
