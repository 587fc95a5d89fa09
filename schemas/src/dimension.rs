//! Request dimensions: the attributes of a request a slice can be built from.
//!
//! A dimension key is written as a short string so it can travel in JSON maps and SQL:
//! `route`, `method`, `upstream`, `header:<name>`, `query:<name>`, `body:<field>`,
//! `path:<param>`, `claim:<name>`. Header names are lower-cased.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The dimension values observed on one request, keyed by [`DimensionKey`]'s string form.
pub type Dimensions = BTreeMap<String, String>;

/// The value the enforcer reports once a dimension has more distinct values on a route than
/// its cap: a key that ever shows it is unbounded and never enters a slice.
pub const OVERFLOW_VALUE: &str = "<other>";

/// Names one request dimension.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "json-schema",
    schemars(extend("pattern" = r"^(route|method|upstream|(header|query|body|path|claim):\S{1,128})$"))
)]
#[serde(try_from = "String", into = "String")]
pub enum DimensionKey {
    /// The configured route name.
    Route,
    /// The HTTP method.
    Method,
    /// The upstream host the request went to.
    Upstream,
    /// A request header (lower-cased name).
    Header(String),
    /// A query-string parameter.
    Query(String),
    /// A top-level field of a JSON request body.
    Body(String),
    /// A named path parameter from the route pattern.
    Path(String),
    /// A JWT claim.
    Claim(String),
}

/// Why a dimension key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid dimension key {key:?}: {reason}")]
pub struct DimensionKeyError {
    /// The offending input.
    pub key: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for DimensionKey {
    type Err = DimensionKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DimensionKeyError {
            key: s.to_owned(),
            reason,
        };
        match s {
            "route" => return Ok(Self::Route),
            "method" => return Ok(Self::Method),
            "upstream" => return Ok(Self::Upstream),
            _ => {}
        }
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            err("expected route, method, upstream or <header|query|body|path|claim>:<name>")
        })?;
        if name.is_empty() || name.len() > 128 {
            return Err(err("the name after ':' must be 1 to 128 characters"));
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err(
                "the name must not contain whitespace or control characters",
            ));
        }
        let name = name.to_owned();
        Ok(match kind {
            "header" => Self::Header(name.to_ascii_lowercase()),
            "query" => Self::Query(name),
            "body" => Self::Body(name),
            "path" => Self::Path(name),
            "claim" => Self::Claim(name),
            _ => return Err(err("unknown kind; use header, query, body, path or claim")),
        })
    }
}

impl TryFrom<String> for DimensionKey {
    type Error = DimensionKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DimensionKey> for String {
    fn from(k: DimensionKey) -> Self {
        k.to_string()
    }
}

impl fmt::Display for DimensionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Route => f.write_str("route"),
            Self::Method => f.write_str("method"),
            Self::Upstream => f.write_str("upstream"),
            Self::Header(n) => write!(f, "header:{n}"),
            Self::Query(n) => write!(f, "query:{n}"),
            Self::Body(n) => write!(f, "body:{n}"),
            Self::Path(n) => write!(f, "path:{n}"),
            Self::Claim(n) => write!(f, "claim:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for s in [
            "route",
            "method",
            "upstream",
            "header:x-tenant",
            "query:channel",
            "body:pay_channel",
            "path:id",
            "claim:tenant",
        ] {
            let k: DimensionKey = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
    }

    #[test]
    fn lowercases_header_names() {
        let k: DimensionKey = "header:X-Tenant".parse().unwrap();
        assert_eq!(k, DimensionKey::Header("x-tenant".into()));
    }

    #[test]
    fn refuses_bad_keys() {
        for s in ["", "tenant", "header:", "cookie:a", "query:a b"] {
            assert!(s.parse::<DimensionKey>().is_err(), "{s} should be refused");
        }
    }
}
