//! What Arroyo's own parser (`arroyo_udf_common::parse`, used by its API and compiler) reads
//! from each wrapper source: one `#[udf]` function, its SQL name and Arrow types, and one
//! dependency header. The names and types must equal `arroyo-udfs/signatures.txt`, which the
//! main workspace checks against the DataFusion registrations (pipeline/tests/arroyo_udfs.rs),
//! so a wrapper and its registration cannot drift apart unnoticed.

use arroyo_udf_common::parse::ParsedUdf;
use regex::Regex;

const WRAPPERS: [&str; 6] = [
    "mask_pii",
    "template_id",
    "template",
    "cluster_of",
    "embedding",
    "request_row",
];

fn source(name: &str) -> String {
    let path = format!("{}/../{name}/src/lib.rs", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `name(Arg, ...) -> Ret` as Arroyo parses the one `#[udf]` function of `src`.
fn signature(src: &str) -> String {
    let file = syn::parse_file(src).expect("the wrapper parses as Rust");
    let udfs: Vec<&syn::ItemFn> = file
        .items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Fn(f) => Some(f),
            _ => None,
        })
        .filter(|f| {
            f.attrs
                .iter()
                .any(|a| a.path().segments.last().is_some_and(|s| s.ident == "udf"))
        })
        .collect();
    assert_eq!(
        udfs.len(),
        1,
        "Arroyo takes exactly one #[udf] per definition"
    );
    let parsed = ParsedUdf::try_parse(udfs[0]).expect("Arroyo accepts the signature");
    assert!(!parsed.udf_type.is_async());
    assert_eq!(parsed.vec_arguments, 0, "a scalar UDF, not an aggregate");
    let args: Vec<String> = parsed
        .args
        .iter()
        .map(|a| format!("{:?}", a.data_type))
        .collect();
    format!(
        "{}({}) -> {:?}",
        parsed.name,
        args.join(", "),
        parsed.ret_type.data_type
    )
}

#[test]
fn arroyo_reads_the_signatures_the_pipeline_registers() {
    let expected = include_str!("../../signatures.txt");
    let got: Vec<String> = WRAPPERS.iter().map(|n| signature(&source(n))).collect();
    assert_eq!(got.join("\n") + "\n", expected);
}

#[test]
fn every_wrapper_has_one_dependency_header_arroyo_finds() {
    // The pattern arroyo-udf-host's `parse_dependencies` uses.
    let re = Regex::new(r"/\*\n(\[dependencies]\n[\s\S]*?)\*/").expect("regex");
    for name in WRAPPERS {
        let src = source(name);
        assert_eq!(re.find_iter(&src).count(), 1, "{name}");
        let deps = &re.captures(&src).expect("header")[1];
        assert!(
            deps.contains("arroyo-udf-plugin = \"0.2.0\""),
            "{name}: {deps}"
        );
        assert!(
            deps.contains(r#"udfs = { git = "{{ LAG_UDFS_GIT }}", rev = "{{ LAG_UDFS_REV }}" }"#),
            "{name}: {deps}"
        );
    }
}
