//! Published policies into PostgreSQL's `policies` table, off the job's path.
//!
//! [`PgPolicyPublisher`] wraps the job's publisher: once a snapshot is published (to the
//! in-process enforcer or to etcd — where only the leading replica's publish succeeds), it
//! is offered (`try_send`) to [`run_writer`], which upserts its policies (`is_active`
//! true) and marks every other active policy inactive: the table records what was in force
//! and when it ended. A full queue skips the snapshot (the next one carries the whole set
//! again); a failed write is logged and counted. Publishing never waits on the database.

use std::sync::Arc;

use schemas::PolicySnapshot;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PgError, PgStore, query};
use crate::io::{IoError, PolicyPublisher};

/// Upserts one policy as active. `policy_config` is the policy as JSON.
pub const UPSERT_POLICY_SQL: &str = "INSERT INTO policies \
     (policy_id, cluster_id, policy_type, severity, policy_config, create_time, expire_time, is_active) \
     VALUES ($1, $2, $3, $4, ($5::text)::jsonb, to_timestamp($6::float8 / 1000), \
         to_timestamp($7::float8 / 1000), TRUE) \
     ON CONFLICT (policy_id) DO UPDATE SET cluster_id = EXCLUDED.cluster_id, \
         policy_type = EXCLUDED.policy_type, severity = EXCLUDED.severity, \
         policy_config = EXCLUDED.policy_config, expire_time = EXCLUDED.expire_time, \
         is_active = TRUE";

/// Marks active policies not in the snapshot (`$1`, their ids) inactive.
pub const DEACTIVATE_SQL: &str =
    "UPDATE policies SET is_active = FALSE WHERE is_active AND NOT (policy_id = ANY($1))";

/// The action's name (`rate_limit`, `circuit_break`, `degrade`).
pub fn policy_type(action: &schemas::Action) -> &'static str {
    match action {
        schemas::Action::RateLimit { .. } => "rate_limit",
        schemas::Action::CircuitBreak { .. } => "circuit_break",
        schemas::Action::Degrade => "degrade",
    }
}

/// A publisher that also records what it published in PostgreSQL.
#[derive(Debug)]
pub struct PgPolicyPublisher<P> {
    inner: P,
    snapshots: mpsc::Sender<PolicySnapshot>,
    store: Arc<PgStore>,
}

impl<P: PolicyPublisher> PgPolicyPublisher<P> {
    /// Wraps `inner`; published snapshots go to `snapshots` (read by [`run_writer`]).
    pub fn new(inner: P, snapshots: mpsc::Sender<PolicySnapshot>, store: Arc<PgStore>) -> Self {
        Self {
            inner,
            snapshots,
            store,
        }
    }
}

impl<P: PolicyPublisher> PolicyPublisher for PgPolicyPublisher<P> {
    async fn publish(&mut self, snapshot: &PolicySnapshot) -> Result<(), IoError> {
        self.inner.publish(snapshot).await?;
        if self.snapshots.try_send(snapshot.clone()).is_err() {
            self.store
                .metrics()
                .requests
                .with_label_values(&["write_policies", "skipped"])
                .inc();
        }
        Ok(())
    }

    fn is_standby(&self) -> bool {
        self.inner.is_standby()
    }
}

/// Writes published snapshots (the newest waiting one) until `shutdown`.
pub async fn run_writer(
    store: Arc<PgStore>,
    mut snapshots: mpsc::Receiver<PolicySnapshot>,
    shutdown: CancellationToken,
) {
    let mut waiting = Vec::new();
    loop {
        waiting.clear();
        tokio::select! {
            () = shutdown.cancelled() => return,
            n = snapshots.recv_many(&mut waiting, 64) => if n == 0 { return },
        }
        // Each snapshot is the whole set: only the newest matters.
        if let Some(s) = waiting.last() {
            let _ = write(&store, s).await;
        }
    }
}

/// Records `snapshot`: its policies active, every other one inactive.
pub async fn write(store: &PgStore, snapshot: &PolicySnapshot) -> Result<(), PgError> {
    let rows: Vec<(&schemas::Policy, String)> = snapshot
        .policies()
        .iter()
        .map(|p| (p, serde_json::to_string(p).unwrap_or_default()))
        .collect();
    let ids: Vec<&str> = snapshot.policies().iter().map(|p| p.id.as_str()).collect();
    store
        .call(
            "write_policies",
            store.settings().request_timeout,
            async |c| {
                let q = query("write_policies");
                let tx = c.transaction().await.map_err(&q)?;
                for (p, json) in &rows {
                    let severity = p.severity.get() as f32;
                    let (created, expires) = (p.created_at_ms as f64, p.expires_at_ms as f64);
                    tx.execute(
                        UPSERT_POLICY_SQL,
                        &[
                            &p.id,
                            &p.cluster_id,
                            &policy_type(&p.action),
                            &severity,
                            json,
                            &created,
                            &expires,
                        ],
                    )
                    .await
                    .map_err(&q)?;
                }
                tx.execute(DEACTIVATE_SQL, &[&ids]).await.map_err(&q)?;
                tx.commit().await.map_err(&q)
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_types_are_the_wire_names() {
        use schemas::{Action, Ratio};
        let ratio = |v| Ratio::new(v).unwrap_or_else(|_| unreachable!());
        for (action, name) in [
            (Action::Degrade, "degrade"),
            (
                Action::RateLimit {
                    requests_per_second: 5.0,
                    burst: 1,
                },
                "rate_limit",
            ),
            (
                Action::CircuitBreak {
                    open_ms: 1,
                    ramp_step: ratio(0.2),
                    probes: 1,
                    failure_ratio: ratio(0.5),
                },
                "circuit_break",
            ),
        ] {
            let json = serde_json::to_value(&action).unwrap_or_default();
            assert_eq!(json["type"], name);
            assert_eq!(policy_type(&action), name);
        }
    }
}
