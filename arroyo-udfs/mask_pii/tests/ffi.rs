//! The exported `__run` (the `#[udf]` batch loop Arroyo calls) gives, row for row, what
//! `udfs::sql::mask_pii` gives, NULLs included, linked in and as the built cdylib.

arroyo_udf_harness::text_udf_tests!(arroyo_udf_mask_pii::mask_pii, StringArray, |a, i| a
    .value(i)
    .to_owned());
