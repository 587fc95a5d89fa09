//! The policy applier: the one place decisions become published snapshots.
//!
//! Every producer of decisions — the embedded SQL job, an Arroyo job's output read from the
//! `policies` topic, an operator forcing a policy — hands policies to the applier, which
//! validates each one (a bad one is refused and reported, the rest go on), merges them into
//! the live set (one policy per id; a newer decision replaces an older one), drops expired
//! ones, and produces a new [`PolicySnapshot`] only when the live set actually changed.
//! Versions grow strictly and are at least the wall-clock milliseconds, so a replica that
//! takes over after a failover publishes versions above its predecessor's.

use std::collections::BTreeMap;

use schemas::{Policy, PolicyError, PolicySnapshot};

/// What one call to the applier produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// The snapshot to publish, when the live set changed.
    pub snapshot: Option<PolicySnapshot>,
    /// Policies refused, with the reason.
    pub rejected: Vec<(String, PolicyError)>,
}

/// Validates, versions and de-duplicates policy decisions.
#[derive(Debug, Default)]
pub struct PolicyApplier {
    live: BTreeMap<String, Policy>,
    version: u64,
}

impl PolicyApplier {
    /// An applier with no policies, whose first snapshot will be above `last_version`
    /// (the version a predecessor published, when known).
    pub fn new(last_version: u64) -> Self {
        Self {
            live: BTreeMap::new(),
            version: last_version,
        }
    }

    /// The live policies, by id.
    pub fn live(&self) -> impl Iterator<Item = &Policy> {
        self.live.values()
    }

    /// The last version handed out.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Offers new or renewed decisions at `now_ms`.
    pub fn offer(&mut self, decisions: impl IntoIterator<Item = Policy>, now_ms: i64) -> Applied {
        let mut rejected = Vec::new();
        let mut changed = self.drop_expired(now_ms);
        for p in decisions {
            if let Err(e) = p.validate() {
                rejected.push((p.id.clone(), e));
                continue;
            }
            if !p.is_live(now_ms) {
                rejected.push((
                    p.id.clone(),
                    PolicyError::Invalid(format!("policy {:?} arrived expired", p.id)),
                ));
                continue;
            }
            if self.live.get(&p.id) != Some(&p) {
                self.live.insert(p.id.clone(), p);
                changed = true;
            }
        }
        Applied {
            snapshot: self.publish_if(changed, now_ms),
            rejected,
        }
    }

    /// Withdraws a policy; returns the new snapshot if it was live.
    pub fn withdraw(&mut self, policy_id: &str, now_ms: i64) -> Option<PolicySnapshot> {
        let removed = self.live.remove(policy_id).is_some();
        let expired = self.drop_expired(now_ms);
        self.publish_if(removed || expired, now_ms)
    }

    /// Drops expired policies; returns the new snapshot if any expired.
    pub fn expire(&mut self, now_ms: i64) -> Option<PolicySnapshot> {
        let expired = self.drop_expired(now_ms);
        self.publish_if(expired, now_ms)
    }

    fn drop_expired(&mut self, now_ms: i64) -> bool {
        let before = self.live.len();
        self.live.retain(|_, p| p.is_live(now_ms));
        self.live.len() != before
    }

    fn publish_if(&mut self, changed: bool, now_ms: i64) -> Option<PolicySnapshot> {
        if !changed {
            return None;
        }
        self.version = (self.version + 1).max(u64::try_from(now_ms).unwrap_or(0));
        let policies = self.live.values().cloned().collect();
        // Every policy was validated on the way in and ids are unique map keys, so this
        // cannot fail; if it ever did, publishing nothing keeps the last good snapshot.
        PolicySnapshot::new(self.version, now_ms, policies).ok()
    }
}

#[cfg(test)]
mod tests {
    use schemas::{Action, Conjunction, Ratio, Slice};

    use super::*;

    fn policy(id: &str, severity: f64, expires_at_ms: i64) -> Policy {
        Policy {
            id: id.into(),
            cluster_id: format!("cluster-{id}"),
            slice: Slice {
                any: vec![Conjunction {
                    route: "payments".into(),
                    all: vec![],
                }],
            },
            action: Action::Degrade,
            signature: [7].into(),
            severity: Ratio::new(severity).unwrap(),
            created_at_ms: 0,
            expires_at_ms,
            shadow: false,
        }
    }

    #[test]
    fn publishes_only_when_the_live_set_changes() {
        let mut a = PolicyApplier::new(0);
        let first = a
            .offer([policy("p1", 0.5, 300_000)], 1_000)
            .snapshot
            .unwrap();
        assert_eq!(first.policies().len(), 1);
        assert!(
            a.offer([policy("p1", 0.5, 300_000)], 2_000)
                .snapshot
                .is_none(),
            "duplicate decision"
        );
        let renewed = a
            .offer([policy("p1", 0.5, 310_000)], 3_000)
            .snapshot
            .unwrap();
        assert!(renewed.version() > first.version());
        assert_eq!(renewed.policies()[0].expires_at_ms, 310_000);
    }

    #[test]
    fn refuses_bad_policies_and_keeps_the_good_ones() {
        let mut a = PolicyApplier::new(0);
        let mut bad = policy("bad", 0.5, 300_000);
        bad.slice.any.clear();
        let out = a.offer(
            [bad, policy("good", 0.5, 300_000), policy("late", 0.5, 500)],
            1_000,
        );
        let ids: Vec<_> = out.rejected.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["bad", "late"]);
        let snap = out.snapshot.unwrap();
        assert_eq!(
            snap.policies()
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>(),
            ["good"]
        );
    }

    #[test]
    fn expiry_and_withdrawal_publish_smaller_snapshots() {
        let mut a = PolicyApplier::new(0);
        a.offer(
            [policy("short", 0.5, 10_000), policy("long", 0.5, 300_000)],
            1_000,
        );
        assert!(a.expire(5_000).is_none());
        let after = a.expire(10_000).unwrap();
        assert_eq!(after.policies().len(), 1);
        assert_eq!(a.withdraw("long", 11_000).unwrap().policies().len(), 0);
        assert!(a.withdraw("long", 12_000).is_none());
    }

    #[test]
    fn versions_stay_above_a_predecessor_and_the_clock() {
        let mut a = PolicyApplier::new(5_000_000);
        let v1 = a
            .offer([policy("p", 0.5, 9_000_000)], 1_000)
            .snapshot
            .unwrap()
            .version();
        assert_eq!(v1, 5_000_001);
        let mut b = PolicyApplier::new(0);
        let v2 = b
            .offer([policy("p", 0.5, 9_000_000)], 7_000_000)
            .snapshot
            .unwrap()
            .version();
        assert_eq!(v2, 7_000_000);
    }
}
