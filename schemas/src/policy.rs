//! Policies: which slice of traffic to protect, how, and for which failure cluster.
//!
//! The wire types (`Raw*`) are plain serde structs; the public types can only be built
//! through validation ([`PolicySnapshot::from_json`] or `TryFrom`), so an enforcer that holds
//! a [`PolicySnapshot`] holds a valid one.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::dimension::DimensionKey;

/// A number in `[0, 1]`, never NaN.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "json-schema", schemars(extend("minimum" = 0.0, "maximum" = 1.0)))]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

impl Ratio {
    /// Zero.
    pub const ZERO: Ratio = Ratio(0.0);
    /// One.
    pub const ONE: Ratio = Ratio(1.0);

    /// Builds a ratio, refusing NaN and values outside `[0, 1]`.
    pub fn new(v: f64) -> Result<Self, PolicyError> {
        if (0.0..=1.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(PolicyError::Invalid(format!("ratio {v} is outside [0, 1]")))
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Ratio {
    type Error = PolicyError;
    fn try_from(v: f64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

/// One `key = value` test on a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DimensionMatch {
    /// Which dimension.
    pub key: DimensionKey,
    /// The exact value it must have.
    pub value: String,
}

/// All matches must hold, on one route. No matches means the whole route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Conjunction {
    /// The route this conjunction applies to.
    pub route: String,
    /// Tests that must all hold (sorted, no duplicate keys).
    #[serde(default)]
    pub all: Vec<DimensionMatch>,
}

/// A union of conjunctions: a request is in the slice if any conjunction holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// The conjunctions (at least one).
    pub any: Vec<Conjunction>,
}

/// What to do to requests in a policy's slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Admit at most `requests_per_second` (fleet-wide) with bursts up to `burst`; the rest get 429.
    RateLimit {
        /// Sustained admitted rate, > 0.
        requests_per_second: f64,
        /// Bucket size, >= 1.
        burst: u32,
    },
    /// Reject the slice with 503 while open; probe and ramp back locally.
    CircuitBreak {
        /// How long the breaker stays open before probing, milliseconds (> 0).
        open_ms: u64,
        /// Share of the slice added back per successful half-open step (0.2 = 20 % steps).
        ramp_step: Ratio,
        /// Probe outcomes judged per half-open step (>= 1).
        probes: u32,
        /// Failure share among probes that re-opens the breaker.
        failure_ratio: Ratio,
    },
    /// Answer the slice with the route's fallback response.
    Degrade,
}

/// One policy: a slice, an action, and the failure cluster that justified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Unique id within a snapshot.
    pub id: String,
    /// The failure cluster this policy protects against.
    pub cluster_id: String,
    /// Which requests it applies to.
    pub slice: Slice,
    /// What it does to them.
    pub action: Action,
    /// Template ids that belong to the cluster: responses with these ids are attributed to it.
    pub signature: BTreeSet<u64>,
    /// How bad the incident is, in `[0, 1]`.
    pub severity: Ratio,
    /// Unix milliseconds when the policy was issued.
    pub created_at_ms: i64,
    /// Unix milliseconds after which the policy no longer applies unless renewed.
    pub expires_at_ms: i64,
    /// Count "would have rejected" without rejecting.
    #[serde(default)]
    pub shadow: bool,
}

/// A versioned set of policies: what the enforcer swaps in atomically.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
pub struct PolicySnapshot {
    version: u64,
    issued_at_ms: i64,
    policies: Vec<Policy>,
}

/// The wire form of a snapshot, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicySnapshot {
    /// Monotonic version chosen by the applier.
    pub version: u64,
    /// Unix milliseconds.
    pub issued_at_ms: i64,
    /// The policies.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// Why a policy or snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not JSON or not the snapshot shape.
    #[error("malformed snapshot: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Well-formed but inconsistent.
    #[error("{0}")]
    Invalid(String),
}

const MAX_ID_LEN: usize = 128;

impl Policy {
    /// Checks everything serde cannot: non-empty ids and slices, sane action parameters,
    /// expiry after creation, no duplicate keys within a conjunction.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |what: String| {
            Err(PolicyError::Invalid(format!(
                "policy {:?}: {what}",
                self.id
            )))
        };
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return bad(format!("id must be 1 to {MAX_ID_LEN} bytes"));
        }
        if self.cluster_id.is_empty() {
            return bad("cluster_id is empty".into());
        }
        if self.slice.any.is_empty() {
            return bad("slice has no conjunctions".into());
        }
        for (i, c) in self.slice.any.iter().enumerate() {
            if c.route.is_empty() {
                return bad(format!("slice.any[{i}].route is empty"));
            }
            let mut keys = HashSet::new();
            for m in &c.all {
                if m.key == DimensionKey::Route {
                    return bad(format!(
                        "slice.any[{i}] matches on `route`; use the route field"
                    ));
                }
                if !keys.insert(&m.key) {
                    return bad(format!("slice.any[{i}] tests {} twice", m.key));
                }
            }
        }
        match &self.action {
            Action::RateLimit {
                requests_per_second,
                burst,
            } => {
                if !(requests_per_second.is_finite() && *requests_per_second > 0.0) {
                    return bad(format!(
                        "rate_limit.requests_per_second {requests_per_second} must be > 0"
                    ));
                }
                if *burst == 0 {
                    return bad("rate_limit.burst must be >= 1".into());
                }
            }
            Action::CircuitBreak {
                open_ms,
                ramp_step,
                probes,
                ..
            } => {
                if *open_ms == 0 {
                    return bad("circuit_break.open_ms must be > 0".into());
                }
                if ramp_step.get() <= 0.0 {
                    return bad("circuit_break.ramp_step must be > 0".into());
                }
                if *probes == 0 {
                    return bad("circuit_break.probes must be >= 1".into());
                }
            }
            Action::Degrade => {}
        }
        if self.expires_at_ms <= self.created_at_ms {
            return bad("expires_at_ms must be after created_at_ms".into());
        }
        Ok(())
    }

    /// Whether the policy still applies at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }
}

impl TryFrom<RawPolicySnapshot> for PolicySnapshot {
    type Error = PolicyError;

    fn try_from(raw: RawPolicySnapshot) -> Result<Self, Self::Error> {
        let mut ids = HashSet::new();
        for p in &raw.policies {
            p.validate()?;
            if !ids.insert(p.id.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "duplicate policy id {:?}",
                    p.id
                )));
            }
        }
        Ok(Self {
            version: raw.version,
            issued_at_ms: raw.issued_at_ms,
            policies: raw.policies,
        })
    }
}

impl PolicySnapshot {
    /// The empty snapshot an enforcer starts with (version 0).
    pub fn empty() -> Self {
        Self {
            version: 0,
            issued_at_ms: 0,
            policies: Vec::new(),
        }
    }

    /// Builds and validates a snapshot.
    pub fn new(
        version: u64,
        issued_at_ms: i64,
        policies: Vec<Policy>,
    ) -> Result<Self, PolicyError> {
        RawPolicySnapshot {
            version,
            issued_at_ms,
            policies,
        }
        .try_into()
    }

    /// Decodes and validates a JSON snapshot.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        let raw: RawPolicySnapshot = serde_json::from_slice(bytes)?;
        raw.try_into()
    }

    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The snapshot's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When it was issued, Unix milliseconds.
    pub fn issued_at_ms(&self) -> i64 {
        self.issued_at_ms
    }

    /// Its policies.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }
}

impl<'de> Deserialize<'de> for PolicySnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawPolicySnapshot::deserialize(d)?;
        raw.try_into().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(id: &str) -> Policy {
        Policy {
            id: id.into(),
            cluster_id: "c1".into(),
            slice: Slice {
                any: vec![Conjunction {
                    route: "payments".into(),
                    all: vec![DimensionMatch {
                        key: "body:channel".parse().unwrap(),
                        value: "alipay".into(),
                    }],
                }],
            },
            action: Action::CircuitBreak {
                open_ms: 30_000,
                ramp_step: Ratio::new(0.2).unwrap(),
                probes: 5,
                failure_ratio: Ratio::new(0.5).unwrap(),
            },
            signature: [1, 2, 3].into(),
            severity: Ratio::new(0.9).unwrap(),
            created_at_ms: 1_000,
            expires_at_ms: 301_000,
            shadow: false,
        }
    }

    #[test]
    fn valid_snapshot_round_trips() {
        let snap = PolicySnapshot::new(7, 5, vec![policy("a"), policy("b")]).unwrap();
        let back = PolicySnapshot::from_json(&snap.to_json()).unwrap();
        assert_eq!(back, snap);
        assert_eq!(back.version(), 7);
    }

    #[test]
    fn floats_survive_a_round_trip_exactly() {
        // Found by fuzzing: without exact float parsing, decode → encode → decode drifted.
        let mut p = policy("a");
        p.action = Action::RateLimit {
            requests_per_second: 2.0,
            burst: 1,
        };
        let snap = PolicySnapshot::new(1, 0, vec![p]).unwrap();
        let text = String::from_utf8(snap.to_json()).unwrap().replace(
            "\"requests_per_second\":2.0",
            "\"requests_per_second\":1.56666666666666666",
        );
        assert!(text.contains("1.56666666666666666"), "{text}");
        let once = PolicySnapshot::from_json(text.as_bytes()).unwrap();
        let twice = PolicySnapshot::from_json(&once.to_json()).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn refuses_invalid_snapshots() {
        let mut no_slice = policy("a");
        no_slice.slice.any.clear();
        let mut zero_rate = policy("a");
        zero_rate.action = Action::RateLimit {
            requests_per_second: 0.0,
            burst: 1,
        };
        let mut expired_before_birth = policy("a");
        expired_before_birth.expires_at_ms = 0;
        let mut dup_key = policy("a");
        let m = dup_key.slice.any[0].all[0].clone();
        dup_key.slice.any[0].all.push(m);
        for bad in [
            vec![no_slice],
            vec![zero_rate],
            vec![expired_before_birth],
            vec![dup_key],
            vec![policy("x"), policy("x")],
        ] {
            assert!(PolicySnapshot::new(1, 0, bad).is_err());
        }
    }

    #[test]
    fn refuses_out_of_range_severity_on_the_wire() {
        let snap = PolicySnapshot::new(1, 0, vec![policy("a")]).unwrap();
        let text = String::from_utf8(snap.to_json())
            .unwrap()
            .replace("\"severity\":0.9", "\"severity\":1.5");
        assert!(PolicySnapshot::from_json(text.as_bytes()).is_err());
        assert!(PolicySnapshot::from_json(b"{\"version\":1}").is_err());
    }
}
