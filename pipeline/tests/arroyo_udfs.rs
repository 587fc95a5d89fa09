//! The Arroyo wrappers (`arroyo-udfs/`, a workspace of their own) and the DataFusion
//! registrations (`pipeline::udf`) name the same functions with the same types: both sides are
//! checked against `arroyo-udfs/signatures.txt` (the other side by Arroyo's own parser, in
//! arroyo-udfs/harness/tests/signatures.rs).

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::TypeSignature;
use pipeline::arroyo::WRAPPERS;

const SIGNATURES: &str = include_str!("../../arroyo-udfs/signatures.txt");

#[test]
fn wrappers_cover_the_registered_functions_but_learn_slice() {
    let wrapped: Vec<&str> = WRAPPERS.iter().map(|w| w.name).collect();
    let expected: Vec<&str> = pipeline::udf::NAMES
        .iter()
        .chain(pipeline::udf::SLICE_NAMES)
        .copied()
        .filter(|n| *n != "learn_slice")
        .collect();
    assert_eq!(wrapped, expected);
}

#[test]
fn datafusion_registrations_have_the_signatures_arroyo_reads() {
    let mut lines = Vec::new();
    let registered = pipeline::udf::all()
        .into_iter()
        .chain(pipeline::udf::slice::all())
        .filter(|u| WRAPPERS.iter().any(|w| w.name == u.name()));
    for udf in registered {
        let TypeSignature::Exact(args) = &udf.signature().type_signature else {
            panic!("{} has no exact signature", udf.name());
        };
        let ret: DataType = udf.return_type(args).expect("return type");
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        lines.push(format!("{}({}) -> {ret:?}", udf.name(), args.join(", ")));
    }
    assert_eq!(lines.join("\n") + "\n", SIGNATURES);
}
