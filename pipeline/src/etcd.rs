//! Distributed mode's policy sink: snapshots to etcd, written by one elected pipeline.
//!
//! The contract the enforcers' etcd source reads (`enforcer/src/etcd_source.rs`):
//!
//! * `<prefix>snapshot` (default `/lag/policies/snapshot`) holds the current
//!   [`PolicySnapshot`] JSON. It is one key, replaced in one transaction, and attached to
//!   this publisher's lease: when the pipeline dies and stops renewing, etcd deletes the key,
//!   and enforcers keep their last good snapshot until its policies expire on their own.
//! * `<prefix>leader` is the election: the replica whose lease-bound key it is publishes.
//!   Taking it is one transaction (`create_revision == 0`, i.e. the key does not exist);
//!   when the leader dies its lease ends, etcd deletes the key and the next replica to try
//!   takes it.
//!
//! Every write is fenced and version-guarded in one transaction:
//! `create_revision(leader) == ours` (a replica that lost the lead — a long pause, an expired
//! lease — cannot write) and `mod_revision(snapshot) == the revision we last saw` (nobody
//! wrote in between). When the guard fails, the transaction's else-branch reads both keys
//! back in the same round trip: a stored snapshot with a version at or above ours is never
//! overwritten ([`PublishError::Stale`]); otherwise the write is retried on the new revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use schemas::PolicySnapshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::io::{IoError, PolicyPublisher};

/// How many times a write is retried when someone else changed the key in between.
const MAX_CONTENDED_RETRIES: usize = 5;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Client URLs, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/` (default `/lag/policies/`).
    pub prefix: String,
    /// Lease time to live, seconds: how long a dead pipeline's snapshot key and leadership
    /// outlive it. Renewed every third of it.
    pub lease_ttl_s: i64,
    /// Connection timeout.
    pub dial_timeout: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// This replica's name, stored as the leader key's value (for operators).
    pub instance: String,
}

impl EtcdSettings {
    /// Defaults (`/lag/policies/`, 10 s lease, 2 s dial, 5 s requests) for `endpoints`.
    pub fn new(endpoints: Vec<String>, instance: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: schemas::names::ETCD_POLICY_PREFIX.to_owned(),
            lease_ttl_s: 10,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            instance: instance.into(),
        }
    }

    /// `<prefix>snapshot`.
    pub fn snapshot_key(&self) -> String {
        format!("{}{}", self.prefix, schemas::names::ETCD_SNAPSHOT_KEY)
    }

    /// `<prefix>leader`.
    pub fn leader_key(&self) -> String {
        format!("{}{}", self.prefix, schemas::names::ETCD_LEADER_KEY)
    }
}

/// Why a snapshot was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Another replica leads; only the leader publishes.
    #[error("not the leader: another pipeline replica publishes policies")]
    NotLeader,
    /// etcd holds a snapshot at least as new; it is never overwritten.
    #[error("etcd holds snapshot version {stored}; refusing to overwrite it with {offered}")]
    Stale {
        /// Version stored in etcd.
        stored: u64,
        /// Version offered.
        offered: u64,
    },
    /// The key kept changing under us.
    #[error("the snapshot key changed {0} times during the write; giving up for now")]
    Contended(usize),
    /// etcd failed or is unreachable.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// A lease renewed in the background until it lapses or the guard is dropped.
#[derive(Debug)]
struct Lease {
    id: i64,
    alive: Arc<AtomicBool>,
    _renewal: DropGuard,
}

impl Lease {
    async fn grant(client: &mut Client, ttl_s: i64) -> Result<Self, etcd_client::Error> {
        let id = client.lease_grant(ttl_s, None).await?.id();
        let alive = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        tokio::spawn(renew(
            client.clone(),
            id,
            ttl_s,
            Arc::clone(&alive),
            stop.clone(),
        ));
        Ok(Self {
            id,
            alive,
            _renewal: stop.drop_guard(),
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

/// Renews lease `id` every third of its TTL; marks it dead once etcd says it expired or no
/// renewal succeeded for a whole TTL.
async fn renew(
    mut client: Client,
    id: i64,
    ttl_s: i64,
    alive: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let period = Duration::from_millis((ttl_s.max(1) as u64) * 1000 / 3);
    let ttl = Duration::from_secs(ttl_s.max(1) as u64);
    let mut last_ok = tokio::time::Instant::now();
    let mut keeper = None;
    loop {
        if last_ok.elapsed() >= ttl {
            alive.store(false, Ordering::Relaxed);
            tracing::warn!(
                lease = id,
                "etcd lease not renewed for its whole TTL; it has lapsed"
            );
            return;
        }
        if keeper.is_none() {
            keeper = client.lease_keep_alive(id).await.ok();
        }
        if let Some((k, stream)) = keeper.as_mut() {
            let renewed = async {
                k.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(period, renewed).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ok = tokio::time::Instant::now(),
                Ok(Ok(Some(_))) => {
                    alive.store(false, Ordering::Relaxed);
                    tracing::warn!(lease = id, "etcd lease expired");
                    return;
                }
                other => {
                    tracing::warn!(lease = id, outcome = ?other.map(|r| r.map(|_| ())), "etcd lease renewal failed; retrying");
                    keeper = None;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Publishes snapshots to etcd when this replica leads (see the module docs).
pub struct EtcdPublisher {
    client: Client,
    settings: EtcdSettings,
    snapshot_key: String,
    leader_key: String,
    lease: Option<Lease>,
    /// `create_revision` of our leader key while we lead.
    leadership: Option<i64>,
    /// `mod_revision` of the snapshot key as we last saw it (0: absent).
    expected_revision: Option<i64>,
}

impl EtcdPublisher {
    /// Connects and takes a lease; does not campaign yet (see [`Self::try_lead`]).
    pub async fn connect(settings: EtcdSettings) -> Result<Self, PublishError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(settings.dial_timeout)
            .with_timeout(settings.request_timeout);
        let mut client = Client::connect(&settings.endpoints, Some(options)).await?;
        let lease = Lease::grant(&mut client, settings.lease_ttl_s).await?;
        Ok(Self {
            client,
            snapshot_key: settings.snapshot_key(),
            leader_key: settings.leader_key(),
            settings,
            lease: Some(lease),
            leadership: None,
            expected_revision: None,
        })
    }

    /// Whether this replica holds the leader key (as of its last write or campaign).
    pub fn is_leader(&self) -> bool {
        self.leadership.is_some() && self.lease.as_ref().is_some_and(Lease::is_alive)
    }

    /// The lease the snapshot and leader keys are bound to, while it lives.
    pub fn lease_id(&self) -> Option<i64> {
        self.lease.as_ref().filter(|l| l.is_alive()).map(|l| l.id)
    }

    /// Takes the lead if nobody holds it (one transaction; does not wait). `true` when this
    /// replica leads afterwards.
    pub async fn try_lead(&mut self) -> Result<bool, PublishError> {
        let lease = self.live_lease().await?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.leader_key.as_str(),
                self.settings.instance.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.leader_key.as_str(), None)]);
        let resp = self.client.txn(txn).await?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            self.leadership = Some(rev);
            tracing::info!(key = %self.leader_key, instance = %self.settings.instance, lease, create_revision = rev, "pipeline leads: it publishes policies");
            return Ok(true);
        }
        // Someone holds it; it may be us from before (same lease), e.g. after a restart of
        // this object with the same lease — not possible here, so it is another replica.
        let holder = first_get(&resp.op_responses()).and_then(|g| g.kvs().first().cloned());
        match holder {
            Some(kv) if kv.lease() == lease => {
                self.leadership = Some(kv.create_revision());
                Ok(true)
            }
            _ => {
                self.leadership = None;
                Ok(false)
            }
        }
    }

    /// Waits until this replica leads (tries again whenever the leader key is deleted, and at
    /// least every lease TTL), or `shutdown` is cancelled (`Ok(false)`).
    pub async fn lead(&mut self, shutdown: &CancellationToken) -> Result<bool, PublishError> {
        loop {
            if self.try_lead().await? {
                return Ok(true);
            }
            let mut watch = self.client.watch(self.leader_key.as_str(), None).await?;
            // The key may have been deleted between the try and the watch: try again now.
            if self.try_lead().await? {
                return Ok(true);
            }
            let ttl = Duration::from_secs(self.settings.lease_ttl_s.max(1) as u64);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                _ = watch.message() => {}
                () = tokio::time::sleep(ttl) => {}
            }
        }
    }

    /// Gives up the lead and revokes the lease (its snapshot key goes with it).
    pub async fn resign(mut self) -> Result<(), PublishError> {
        if let Some(lease) = self.lease.take() {
            self.client.lease_revoke(lease.id).await?;
        }
        Ok(())
    }

    /// Publishes `snapshot` if this replica leads (taking the lead when nobody holds it) and
    /// etcd holds nothing newer. Returns the key's new `mod_revision`.
    pub async fn publish_snapshot(
        &mut self,
        snapshot: &PolicySnapshot,
    ) -> Result<i64, PublishError> {
        if !self.is_leader() && !self.try_lead().await? {
            return Err(PublishError::NotLeader);
        }
        let (Some(leader_rev), Some(lease)) = (self.leadership, self.lease_id()) else {
            return Err(PublishError::NotLeader);
        };
        let body = snapshot.to_json();
        let offered = snapshot.version();
        for _ in 0..MAX_CONTENDED_RETRIES {
            let expected = self.expected_revision.unwrap_or(0);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(
                        self.leader_key.as_str(),
                        CompareOp::Equal,
                        leader_rev,
                    ),
                    Compare::mod_revision(self.snapshot_key.as_str(), CompareOp::Equal, expected),
                ])
                .and_then([TxnOp::put(
                    self.snapshot_key.as_str(),
                    body.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([
                    TxnOp::get(self.leader_key.as_str(), None),
                    TxnOp::get(self.snapshot_key.as_str(), None),
                ]);
            let resp = self.client.txn(txn).await?;
            if resp.succeeded() {
                let rev = resp.header().map_or(0, |h| h.revision());
                self.expected_revision = Some(rev);
                return Ok(rev);
            }
            let ops = resp.op_responses();
            let gets: Vec<&GetResponse> = ops
                .iter()
                .filter_map(|o| match o {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                })
                .collect();
            let leader = gets.first().and_then(|g| g.kvs().first());
            if leader.is_none_or(|kv| kv.create_revision() != leader_rev) {
                // Fenced: our leader key is gone (lease lapsed) or belongs to someone else.
                self.leadership = None;
                return Err(PublishError::NotLeader);
            }
            let stored = gets.get(1).and_then(|g| g.kvs().first());
            match stored {
                None => self.expected_revision = Some(0),
                Some(kv) => {
                    if let Ok(current) = PolicySnapshot::from_json(kv.value()) {
                        if current.version() == offered && kv.value() == body.as_slice() {
                            self.expected_revision = Some(kv.mod_revision());
                            return Ok(kv.mod_revision());
                        }
                        if current.version() >= offered {
                            return Err(PublishError::Stale {
                                stored: current.version(),
                                offered,
                            });
                        }
                    } else {
                        // Not a valid snapshot (enforcers refuse it too): replace it.
                        tracing::warn!(key = %self.snapshot_key, mod_revision = kv.mod_revision(), "etcd holds an invalid snapshot; replacing it");
                    }
                    self.expected_revision = Some(kv.mod_revision());
                }
            }
        }
        Err(PublishError::Contended(MAX_CONTENDED_RETRIES))
    }

    /// A live lease, granting a new one (and dropping any leadership) if ours lapsed.
    async fn live_lease(&mut self) -> Result<i64, PublishError> {
        if let Some(id) = self.lease_id() {
            return Ok(id);
        }
        self.leadership = None;
        let lease = Lease::grant(&mut self.client, self.settings.lease_ttl_s).await?;
        let id = lease.id;
        self.lease = Some(lease);
        Ok(id)
    }
}

impl std::fmt::Debug for EtcdPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // etcd_client::Client has no Debug.
        f.debug_struct("EtcdPublisher")
            .field("settings", &self.settings)
            .field("lease", &self.lease)
            .field("leadership", &self.leadership)
            .field("expected_revision", &self.expected_revision)
            .finish_non_exhaustive()
    }
}

fn first_get(ops: &[TxnOpResponse]) -> Option<&GetResponse> {
    ops.iter().find_map(|o| match o {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    })
}

impl PolicyPublisher for EtcdPublisher {
    async fn publish(&mut self, snapshot: &PolicySnapshot) -> Result<(), IoError> {
        self.publish_snapshot(snapshot)
            .await
            .map(|_| ())
            .map_err(|e| IoError(e.to_string()))
    }

    /// Connected (our lease lives) while another replica holds the leader key. A dead lease
    /// (etcd unreachable) is a failure, logged and counted as one.
    fn is_standby(&self) -> bool {
        self.leadership.is_none() && self.lease.as_ref().is_some_and(Lease::is_alive)
    }
}
