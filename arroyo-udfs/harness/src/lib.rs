//! Calls an Arroyo UDF the way Arroyo's worker does: the argument columns go through Arrow's C
//! data interface into the `__run` symbol the `#[udf]` macro exports, and the result comes back
//! the same way. Tests of the wrapper crates use it, so what they check is the generated batch
//! loop, not just the Rust function under it.

use arroyo_udf_plugin::arrow::array::{make_array, Array, ArrayRef, StringArray};
use arroyo_udf_plugin::arrow::ffi::from_ffi;
use arroyo_udf_plugin::{FfiArraySchema, FfiArrays, RunResult};

/// The signature of the exported `__run`.
pub type RunFn = extern "C-unwind" fn(FfiArrays) -> RunResult;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The UDF panicked (`RunResult::Err`).
    Panicked,
    /// The result did not come back through the C data interface.
    Ffi(String),
}

/// Runs `run` over one text column (`None` is NULL) and returns the result column.
pub fn call_text(run: RunFn, rows: &[Option<&str>]) -> Result<ArrayRef, CallError> {
    let input = StringArray::from(rows.to_vec());
    let args = FfiArrays::from_vec(vec![input.into_data()]);
    match run(args) {
        RunResult::Ok(FfiArraySchema(array, schema)) => {
            // SAFETY: `array` and `schema` were just produced by `to_ffi` inside the UDF
            // (`FfiArraySchema::from_data`) and are consumed exactly once here, as Arroyo's
            // host does with the same types.
            #[allow(unsafe_code)]
            let data = unsafe { from_ffi(array, &schema) };
            data.map(make_array)
                .map_err(|e| CallError::Ffi(e.to_string()))
        }
        RunResult::Err => Err(CallError::Panicked),
    }
}
