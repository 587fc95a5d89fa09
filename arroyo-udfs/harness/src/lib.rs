//! Calls an Arroyo UDF the way Arroyo's worker does: the argument columns go through Arrow's C
//! data interface into the `__run` symbol the `#[udf]` macro exports, and the result comes back
//! the same way. Tests of the wrapper crates use it, so what they check is the generated batch
//! loop, not just the Rust function under it.

use arroyo_udf_plugin::arrow::array::{make_array, Array, ArrayData, ArrayRef, StringArray};
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

/// A wrapper's cdylib, loaded, with its exported `__run`.
pub struct LoadedUdf {
    run: RunFn,
    // Keeps the library mapped while `run` may be called.
    _library: libloading::Library,
}

impl std::fmt::Debug for LoadedUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedUdf").finish_non_exhaustive()
    }
}

impl LoadedUdf {
    /// Loads `lib<crate_name>.so` from the target directory the calling test binary runs from
    /// (`target/<profile>/deps/<test>` → `target/<profile>/`). `cargo build` (what
    /// `make arroyo-udfs` runs first) writes it there.
    pub fn from_target_dir(crate_name: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .ok_or("the test binary has no target directory")?;
        let path = dir.join(libloading::library_filename(crate_name));
        // SAFETY: the library is one of this workspace's wrapper crates, built by cargo from
        // our sources; loading it runs no initialisers beyond Rust's own.
        #[allow(unsafe_code)]
        let library = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("{}: {e} (build it first: make arroyo-udfs)", path.display()))?;
        // SAFETY: `__run` is what `#[udf]` exports, with exactly this signature
        // (arroyo-udf-macros 0.2.0: `pub extern "C-unwind" fn __run(FfiArrays) -> RunResult`);
        // the fn pointer is only used while `library` is alive (both live in `Self`).
        #[allow(unsafe_code)]
        let run = unsafe { library.get::<RunFn>(b"__run\0") }
            .map(|symbol| *symbol)
            .map_err(|e| format!("{}: no __run: {e}", path.display()))?;
        Ok(Self {
            run,
            _library: library,
        })
    }

    /// Runs the loaded `__run` over one text column (see [`call_text`]).
    pub fn call_text(&self, rows: &[Option<&str>]) -> Result<ArrayRef, CallError> {
        call_text(self.run, rows)
    }

    /// Runs the loaded `__run` over argument columns (see [`call`]).
    pub fn call(&self, columns: Vec<ArrayData>) -> Result<ArrayRef, CallError> {
        call(self.run, columns)
    }
}

/// Runs `run` over one text column (`None` is NULL) and returns the result column.
pub fn call_text(run: RunFn, rows: &[Option<&str>]) -> Result<ArrayRef, CallError> {
    call(run, vec![StringArray::from(rows.to_vec()).into_data()])
}

/// Runs `run` over argument columns of equal length and returns the result column.
pub fn call(run: RunFn, columns: Vec<ArrayData>) -> Result<ArrayRef, CallError> {
    let args = FfiArrays::from_vec(columns);
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
