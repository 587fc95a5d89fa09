//! The exported `__run` (the `#[udf]` batch loop Arroyo calls) gives, row for row, what
//! `udfs::sql::embedding` gives, NULLs included, linked in and as the built cdylib.

arroyo_udf_harness::text_udf_tests!(arroyo_udf_embedding::embedding, BinaryArray, |a, i| a
    .value(i)
    .to_owned());
