//! End-to-end tests live in `tests/tests/`; this library holds what they share, and the
//! scenario bench ([`scenarios`]).

pub mod own;
pub mod scenarios;

/// What an integration test should do about a real service it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRequirement {
    /// The service is configured: its address.
    Available(String),
    /// Not configured and not under CI: skip, printing this reason.
    Skip(String),
    /// Not configured under `CI=true`: fail with this message (CI must never skip).
    Fail(String),
}

/// Decides from the value of `var` and of `CI` (pure, so the rule itself is tested).
pub fn service_requirement(var: &str, value: Option<&str>, ci: Option<&str>) -> ServiceRequirement {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => ServiceRequirement::Available(v.to_owned()),
        _ => missing(
            &format!("{var} is unset"),
            "start the services with `bash deploy/services.sh up` and \
             `eval \"$(bash deploy/services.sh env)\"`",
            ci,
        ),
    }
}

/// What a test does without something it needs (`what`, and `how` to get it): skip
/// locally, fail under `CI=true`, where every test runs.
fn missing(what: &str, how: &str, ci: Option<&str>) -> ServiceRequirement {
    if ci == Some("true") {
        ServiceRequirement::Fail(format!("{what} under CI=true: {how}"))
    } else {
        ServiceRequirement::Skip(format!("skipping: {what} ({how})"))
    }
}

/// `found`, or — when a test lacks that tool — a printed skip, or under `CI=true` a panic
/// (the same rule as [`require_service`]).
pub fn require_tool<T>(found: Option<T>, what: &str, how: &str) -> Option<T> {
    if found.is_some() {
        return found;
    }
    match missing(what, how, std::env::var("CI").ok().as_deref()) {
        ServiceRequirement::Fail(why) => panic!("{why}"),
        ServiceRequirement::Skip(why) | ServiceRequirement::Available(why) => {
            eprintln!("{why}");
            None
        }
    }
}

/// The address of a real service from the environment variable `var`
/// (`LAG_ETCD_ENDPOINTS`, `LAG_KAFKA_BROKERS`, `LAG_PG_URL`, `LAG_REDIS_URL`, as printed by
/// `deploy/services.sh env`). When it is unset the test is skipped with a printed reason —
/// except under `CI=true`, where it panics: CI runs every integration test, none skips.
///
/// ```no_run
/// let Some(endpoints) = e2e::require_service("LAG_ETCD_ENDPOINTS") else { return };
/// ```
pub fn require_service(var: &str) -> Option<String> {
    let value = std::env::var(var).ok();
    let ci = std::env::var("CI").ok();
    match service_requirement(var, value.as_deref(), ci.as_deref()) {
        ServiceRequirement::Available(v) => Some(v),
        ServiceRequirement::Skip(why) => {
            eprintln!("{why}");
            None
        }
        ServiceRequirement::Fail(why) => panic!("{why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_skips_locally_and_fails_under_ci() {
        let var = "LAG_ETCD_ENDPOINTS";
        assert_eq!(
            service_requirement(var, Some("http://127.0.0.1:12379"), Some("true")),
            ServiceRequirement::Available("http://127.0.0.1:12379".into())
        );
        assert!(matches!(
            service_requirement(var, None, None),
            ServiceRequirement::Skip(m) if m.contains(var)
        ));
        assert!(matches!(
            service_requirement(var, Some("  "), Some("false")),
            ServiceRequirement::Skip(_)
        ));
        assert!(matches!(
            service_requirement(var, None, Some("true")),
            ServiceRequirement::Fail(m) if m.contains("CI=true")
        ));
        assert!(matches!(
            service_requirement(var, Some(""), Some("true")),
            ServiceRequirement::Fail(_)
        ));
    }
}
