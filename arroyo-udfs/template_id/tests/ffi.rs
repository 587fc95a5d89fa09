//! The exported `__run` (the `#[udf]` batch loop Arroyo calls) gives, row for row, what
//! `udfs::sql::template_id` gives, NULLs included, linked in and as the built cdylib.

arroyo_udf_harness::text_udf_tests!(arroyo_udf_template_id::template_id, Int64Array, |a, i| a
    .value(i));
