//! The exported `__run` (the `#[udf]` batch loop Arroyo calls) gives, row for row, what
//! `udfs::sql::cluster_of` gives, NULLs included, linked in and as the built cdylib.

arroyo_udf_harness::text_udf_tests!(arroyo_udf_cluster_of::cluster_of, StringArray, |a, i| a
    .value(i)
    .to_owned());
