//! End-to-end tests live in `tests/tests/`; the scenario bench lives in [`scenarios`].

pub mod scenarios;
