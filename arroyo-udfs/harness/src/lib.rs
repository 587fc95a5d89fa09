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

/// Arrow 51 as the wrappers see it, for [`text_udf_tests!`].
pub use arroyo_udf_plugin::arrow;

/// The rows every one-text-argument wrapper is checked on: NULL, empty, blank, masked
/// fields, Chinese text, and two messages of one template.
pub const TEXT_ROWS: &[Option<&str>] = &[
    Some("dial tcp 10.0.0.1:5432: connect: connection refused"),
    None,
    Some(""),
    Some("   "),
    Some("call 13812345678 or mail a@b.io about order 42"),
    Some("Redis 连接被拒绝 10.0.0.2:6379"),
    Some("dial tcp 10.9.9.9:5432: connect: connection refused"),
];

/// The tests of a one-text-argument wrapper `$krate::$name` over `udfs::sql::$name`: the
/// exported `__run` (linked in, over [`TEXT_ROWS`] plus 1 MiB of text) and the built cdylib
/// (loaded as Arroyo's worker loads it) give, row for row, what the plain function gives,
/// NULLs included; and the crate's Rust function is the plain function. `$array` is the
/// declared return column type; `|a, i| expr` reads row `i` of it as the plain function's
/// `Option<T>` payload.
#[macro_export]
macro_rules! text_udf_tests {
    ($krate:ident :: $name:ident, $array:ident, |$a:ident, $i:ident| $value:expr) => {
        /// Checks one result column against the plain function over `rows`.
        fn check(out: &$crate::arrow::array::ArrayRef, rows: &[Option<&str>]) {
            use $crate::arrow::array::Array as _;
            let a = out
                .as_any()
                .downcast_ref::<$crate::arrow::array::$array>()
                .expect("the declared return type");
            assert_eq!(a.len(), rows.len());
            for (i, row) in rows.iter().enumerate() {
                let got = (!a.is_null(i)).then(|| {
                    let ($a, $i) = (a, i);
                    $value
                });
                assert_eq!(got, udfs::sql::$name(*row), "row {i}: {row:?}");
            }
        }

        #[test]
        fn batch_matches_the_plain_function_row_for_row() {
            use $crate::arrow::array::Array as _;
            let huge = "x".repeat(1 << 20);
            let mut rows = $crate::TEXT_ROWS.to_vec();
            rows.push(Some(&huge));
            let out = $crate::call_text($krate::__run, &rows).expect("the UDF ran");
            check(&out, &rows);
            assert!(out.is_null(1), "NULL in, NULL out");
        }

        #[test]
        fn the_rust_function_is_the_plain_function() {
            for row in $crate::TEXT_ROWS {
                assert_eq!($krate::$name(*row), udfs::sql::$name(*row));
            }
        }

        /// The built cdylib, loaded as Arroyo's worker loads it, gives the same rows. (Its
        /// copy of the template miner and cluster index is its own, as on an Arroyo worker.)
        #[test]
        fn the_built_cdylib_gives_the_same_rows() {
            let udf =
                $crate::LoadedUdf::from_target_dir(stringify!($krate)).expect("the cdylib loads");
            let out = udf.call_text($crate::TEXT_ROWS).expect("the UDF ran");
            check(&out, $crate::TEXT_ROWS);
        }
    };
}
