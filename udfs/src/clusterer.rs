//! Templates first, meaning second: the miner, the evidence, the embedder and the cluster
//! store fused into one object that the SQL functions and the offline command drive.
//!
//! A known template costs one masking scan, one hash lookup and one map lookup; the
//! embedder runs once per new template, never per event.
//!
//! With a [`SharedClusterIndex`] attached (distributed mode), new templates are assigned by
//! the shared index so every replica agrees: a template some replica already assigned is
//! taken from it without embedding, a new one is embedded and offered to it. When the index
//! fails the local store decides, as without one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::cluster::{ClusterConfig, ClusterStore, EmbedFailure, TextEmbedder};
use crate::evidence::{self, Evidence};
use crate::miner::{GroupKey, MinerConfig, TemplateMiner};
use crate::shared::{NewTemplate, SharedClusterIndex, SharedIndexError, SharedTemplate};
use crate::vector_cache::VectorCache;

/// Where one message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Template id (`schemas::text::template_id_of(&template)`).
    pub template_id: u64,
    /// The template.
    pub template: String,
    /// The miner's stable group handle (survives template generalisation).
    pub group: GroupKey,
    /// The failure cluster.
    pub cluster_id: String,
}

/// Counts of what the clusterer did (for tests and reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClustererStats {
    /// New templates embedded.
    pub embedded: u64,
    /// Templates restored from the shared index at attach time.
    pub restored: u64,
    /// New templates whose cluster came from a stored assignment (no embedding).
    pub from_shared: u64,
    /// New templates the shared index assigned.
    pub assigned_shared: u64,
    /// Shared-index calls that failed (the local store decided instead).
    pub shared_failures: u64,
    /// Templates assigned locally while the shared index failed, handed to it later.
    pub synced_back: u64,
    /// Templates assigned locally while the shared index failed that were not kept for it
    /// (more than [`MAX_UNSYNCED`] waiting).
    pub unsynced_dropped: u64,
}

/// Most templates kept for a shared index that is down.
pub const MAX_UNSYNCED: usize = 10_000;

/// Most kept templates handed to the shared index per call of
/// [`FailureClusterer::sync_shared`], so a backlog never stalls the caller for long (one
/// index round trip each).
pub const SYNC_BATCH: usize = 32;

/// A template the local store assigned while the shared index failed.
#[derive(Debug)]
struct Unsynced {
    key: u64,
    template_id: u64,
    template: String,
    vector: Vec<f32>,
    evidence: Evidence,
}

/// Miner + evidence + embedder + clusters.
pub struct FailureClusterer {
    miner: TemplateMiner,
    store: ClusterStore,
    embedder: Arc<dyn TextEmbedder>,
    evidence: HashMap<GroupKey, Evidence>,
    shared: Option<Box<dyn SharedClusterIndex>>,
    /// Templates restored from the shared index, by template id.
    known: HashMap<u64, SharedTemplate>,
    stats: ClustererStats,
    new_since_recluster: usize,
    /// Re-cluster after this many new templates (0 = never automatically).
    pub recluster_every: usize,
    /// Upper bound on templates a re-clustering looks at (average linkage is O(n²) memory).
    pub recluster_max_templates: usize,
    /// Vectors shared with other replicas, asked before the model runs.
    vector_cache: Option<Arc<dyn VectorCache>>,
    /// Templates assigned locally while the shared index failed, oldest first.
    unsynced: VecDeque<Unsynced>,
}

impl std::fmt::Debug for FailureClusterer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureClusterer")
            .field("templates", &self.miner.len())
            .field("clusters", &self.store.len())
            .field("embedder", &self.embedder.name())
            .field("shared", &self.shared.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Group handles as the store's keys.
fn key_u64(k: GroupKey) -> u64 {
    let (slot, generation) = k.parts();
    (u64::from(generation) << 32) | u64::from(slot)
}

impl FailureClusterer {
    /// A clusterer calibrated for the embedder.
    pub fn new(embedder: Arc<dyn TextEmbedder>) -> Self {
        let cfg = ClusterConfig::for_model(embedder.name());
        Self::with_config(MinerConfig::default(), cfg, embedder)
    }

    /// A clusterer with explicit settings.
    pub fn with_config(
        miner: MinerConfig,
        cluster: ClusterConfig,
        embedder: Arc<dyn TextEmbedder>,
    ) -> Self {
        let dims = embedder.dims();
        Self {
            miner: TemplateMiner::new(miner),
            store: ClusterStore::new(cluster, dims),
            embedder,
            evidence: HashMap::new(),
            shared: None,
            known: HashMap::new(),
            stats: ClustererStats::default(),
            new_since_recluster: 0,
            recluster_every: 0,
            recluster_max_templates: 3000,
            vector_cache: None,
            unsynced: VecDeque::new(),
        }
    }

    /// Shares vectors with other replicas: a new template's vector is looked up by
    /// `(embedder name, template id)` before the model runs, and stored after it did.
    pub fn set_vector_cache(&mut self, cache: Arc<dyn VectorCache>) {
        self.vector_cache = Some(cache);
    }

    /// The template's vector: from the shared cache when a replica made it with this model
    /// (and it has this model's length, finite values), else from the model, then shared.
    fn vector_for(&mut self, template_id: u64, text: &str) -> Result<Vec<f32>, EmbedFailure> {
        let model = self.embedder.name();
        if let Some(v) = self
            .vector_cache
            .as_ref()
            .and_then(|c| c.get(model, template_id))
            .filter(|v| v.len() == self.embedder.dims() && v.iter().all(|x| x.is_finite()))
        {
            return Ok(v);
        }
        let v = self
            .embedder
            .embed_texts(&[text])?
            .pop()
            .ok_or_else(|| EmbedFailure("no vector returned".into()))?;
        self.stats.embedded += 1;
        if let Some(c) = &self.vector_cache {
            c.put(model, template_id, &v);
        }
        Ok(v)
    }

    /// The miner.
    pub fn miner(&self) -> &TemplateMiner {
        &self.miner
    }

    /// The cluster store.
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// Mines the template only (no embedding, no cluster).
    pub fn template(&mut self, text: &str) -> (u64, String, GroupKey) {
        let m = self.miner.add(text);
        for (k, _) in &m.evicted {
            self.store.forget(key_u64(*k));
            self.evidence.remove(k);
        }
        (m.id, m.template, m.key)
    }

    /// Attaches a shared cluster index and restores every template it holds, so messages
    /// of those templates get their stored cluster without embedding. Returns how many were
    /// restored; on an error the index stays attached (later look-ups go through it).
    pub fn attach_shared_index(
        &mut self,
        index: Box<dyn SharedClusterIndex>,
    ) -> Result<usize, SharedIndexError> {
        let restored = index.restore();
        self.shared = Some(index);
        let templates = restored?;
        let n = templates.len();
        self.known
            .extend(templates.into_iter().map(|t| (t.template_id, t)));
        self.stats.restored += n as u64;
        Ok(n)
    }

    /// Whether a shared index decides new templates.
    pub fn has_shared_index(&self) -> bool {
        self.shared.is_some()
    }

    /// What the clusterer did so far.
    pub fn stats(&self) -> ClustererStats {
        self.stats
    }

    /// A template's stored assignment: restored at start, else asked of the shared index.
    fn stored(&mut self, template_id: u64) -> Option<SharedTemplate> {
        if let Some(t) = self.known.get(&template_id) {
            return Some(t.clone());
        }
        match self.shared.as_ref()?.lookup(template_id) {
            Ok(found) => found,
            Err(_) => {
                self.stats.shared_failures += 1;
                None
            }
        }
    }

    /// Mines, embeds when the template is new, and assigns a cluster.
    pub fn process(&mut self, text: &str) -> Result<Assignment, EmbedFailure> {
        let (template_id, template, group) = self.template(text);
        let key = key_u64(group);
        if let Some(cluster) = self.store.cluster_of(key) {
            let cluster_id = cluster.to_string();
            self.store.touch(key, 1.0);
            return Ok(Assignment {
                template_id,
                template,
                group,
                cluster_id,
            });
        }
        if let Some(t) = self.stored(template_id) {
            self.stats.from_shared += 1;
            self.evidence.insert(group, t.evidence.clone());
            let cluster_id =
                self.store
                    .assign_to(key, template_id, t.vector, t.evidence, 1.0, &t.cluster_id);
            return Ok(Assignment {
                template_id,
                template,
                group,
                cluster_id,
            });
        }
        let private =
            schemas::text::desensitize(schemas::text::truncate_at_char_boundary(text, 1024))
                .into_owned();
        let ev = evidence::extract(&private);
        let vector = self.vector_for(template_id, &private)?;
        self.evidence.insert(group, ev.clone());
        let decided = self.shared.as_ref().map(|index| {
            index.assign(
                &NewTemplate {
                    template_id,
                    template: &template,
                    vector: &vector,
                    evidence: &ev,
                },
                self.store.config(),
            )
        });
        let cluster_id = match decided {
            Some(Ok(id)) => {
                self.stats.assigned_shared += 1;
                let id = self.store.assign_to(key, template_id, vector, ev, 1.0, &id);
                // The index answers again: hand it what was decided while it did not.
                self.sync_shared(SYNC_BATCH);
                id
            }
            Some(Err(_)) => {
                // Fail safe: the local store decides; the index's implementation has logged
                // and counted the failure. The index gets the template once it answers.
                self.stats.shared_failures += 1;
                if self.unsynced.len() < MAX_UNSYNCED {
                    self.unsynced.push_back(Unsynced {
                        key,
                        template_id,
                        template: template.clone(),
                        vector: vector.clone(),
                        evidence: ev.clone(),
                    });
                } else {
                    self.stats.unsynced_dropped += 1;
                }
                self.store.assign(key, template_id, vector, ev, 1.0)
            }
            None => self.store.assign(key, template_id, vector, ev, 1.0),
        };
        self.new_since_recluster += 1;
        // Re-clustering renames clusters locally; with a shared index ids are the index's.
        if self.shared.is_none()
            && self.recluster_every > 0
            && self.new_since_recluster >= self.recluster_every
            && self.store.templates() <= self.recluster_max_templates
        {
            self.recluster();
        }
        let cluster_id = self
            .store
            .cluster_of(key)
            .map_or(cluster_id, str::to_string);
        Ok(Assignment {
            template_id,
            template,
            group,
            cluster_id,
        })
    }

    /// Hands the shared index up to `max` of the templates assigned locally while it failed,
    /// oldest first, stopping at the first failure. A template the index puts in another
    /// cluster (another replica got there first) moves there with its weight, so replicas and
    /// a restart agree again. Returns how many were handed over.
    pub fn sync_shared(&mut self, max: usize) -> usize {
        let Some(index) = self.shared.as_ref().filter(|_| !self.unsynced.is_empty()) else {
            return 0;
        };
        let config = self.store.config().clone();
        let mut handed = 0;
        while handed < max
            && let Some(u) = self.unsynced.front()
        {
            let decided = index.assign(
                &NewTemplate {
                    template_id: u.template_id,
                    template: &u.template,
                    vector: &u.vector,
                    evidence: &u.evidence,
                },
                &config,
            );
            match decided {
                Ok(cluster_id) => {
                    let key = u.key;
                    self.unsynced.pop_front();
                    self.store.move_to(key, &cluster_id);
                    handed += 1;
                }
                Err(_) => {
                    self.stats.shared_failures += 1;
                    break;
                }
            }
        }
        self.stats.synced_back += handed as u64;
        handed
    }

    /// Templates assigned locally while the shared index failed, not yet handed to it.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// Re-clusters all templates now (ids stay stable by overlap); returns moved templates.
    pub fn recluster(&mut self) -> usize {
        self.new_since_recluster = 0;
        self.store.recluster()
    }

    /// The current template and cluster of a group seen before.
    pub fn current(&self, group: GroupKey) -> Option<(u64, String, Option<String>)> {
        let (id, template, _) = self.miner.group(group)?;
        let cluster = self.store.cluster_of(key_u64(group)).map(str::to_string);
        Some((id, template.to_string(), cluster))
    }

    /// The evidence read for a group's first message.
    pub fn evidence(&self, group: GroupKey) -> Option<&Evidence> {
        self.evidence.get(&group)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::cluster::{NgramEmbedder, dot};
    use crate::shared::{Candidate, founded_cluster_id, pick_cluster};

    /// Counts texts embedded; 4-dim vectors from the text length.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl TextEmbedder for Counting {
        fn dims(&self) -> usize {
            4
        }
        fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts
                .iter()
                .map(|t| vec![t.len() as f32, 1.0, 0.0, 0.0])
                .collect())
        }
        fn name(&self) -> &str {
            "counting"
        }
    }

    #[derive(Default)]
    struct Shared(Mutex<HashMap<(String, u64), Vec<f32>>>);

    impl VectorCache for Shared {
        fn get(&self, model: &str, id: u64) -> Option<Vec<f32>> {
            self.0.lock().unwrap().get(&(model.to_owned(), id)).cloned()
        }
        fn put(&self, model: &str, id: u64, v: &[f32]) {
            self.0
                .lock()
                .unwrap()
                .insert((model.to_owned(), id), v.to_vec());
        }
    }

    #[test]
    fn a_second_replica_reuses_the_first_replica_s_vector_and_ignores_wrong_ones() {
        let shared = Arc::new(Shared::default());
        let (e1, e2) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        let mut r1 = FailureClusterer::new(e1.clone());
        let mut r2 = FailureClusterer::new(e2.clone());
        r1.set_vector_cache(shared.clone());
        r2.set_vector_cache(shared.clone());
        let a = r1
            .process("dial tcp 10.0.0.1:5432: connection refused")
            .unwrap();
        let b = r2
            .process("dial tcp 10.0.0.9:5432: connection refused")
            .unwrap();
        assert_eq!(a.template_id, b.template_id);
        assert_eq!(e1.0.load(Ordering::SeqCst), 1);
        assert_eq!(e2.0.load(Ordering::SeqCst), 0, "the model ran again");
        // A vector of another length (another model under the same name) is a miss.
        let t = r2.template("disk full on /dev/sda1").0;
        shared.put("counting", t, &[1.0, 2.0]);
        r2.process("disk full on /dev/sda2").unwrap();
        assert_eq!(e2.0.load(Ordering::SeqCst), 1);
    }

    /// An in-memory shared index with the semantics the PostgreSQL one has.
    #[derive(Debug, Default, Clone)]
    struct MemoryIndex {
        templates: Arc<Mutex<Vec<SharedTemplate>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl MemoryIndex {
        fn check(&self) -> Result<(), SharedIndexError> {
            match *self.fail.lock().unwrap_or_else(|e| e.into_inner()) {
                true => Err(SharedIndexError("down".into())),
                false => Ok(()),
            }
        }
    }

    impl SharedClusterIndex for MemoryIndex {
        fn lookup(&self, id: u64) -> Result<Option<SharedTemplate>, SharedIndexError> {
            self.check()?;
            let t = self.templates.lock().unwrap_or_else(|e| e.into_inner());
            Ok(t.iter().find(|t| t.template_id == id).cloned())
        }

        fn assign(
            &self,
            n: &NewTemplate<'_>,
            config: &ClusterConfig,
        ) -> Result<String, SharedIndexError> {
            self.check()?;
            let mut t = self.templates.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = t.iter().find(|t| t.template_id == n.template_id) {
                return Ok(found.cluster_id.clone());
            }
            // One template per cluster is enough for these tests: centroid = its vector.
            let candidates: Vec<Candidate> = t
                .iter()
                .map(|s| Candidate {
                    cluster_id: s.cluster_id.clone(),
                    cosine: dot(n.vector, &s.vector),
                    evidence: s.evidence.clone(),
                })
                .collect();
            let id = pick_cluster(n.evidence, None, &candidates, config)
                .unwrap_or_else(|| founded_cluster_id(n.template_id));
            t.push(SharedTemplate {
                template_id: n.template_id,
                template: n.template.to_owned(),
                cluster_id: id.clone(),
                vector: n.vector.to_vec(),
                evidence: n.evidence.clone(),
            });
            Ok(id)
        }

        fn restore(&self) -> Result<Vec<SharedTemplate>, SharedIndexError> {
            self.check()?;
            Ok(self
                .templates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone())
        }
    }

    /// Fails every call: proves a path does not embed.
    #[derive(Debug)]
    struct NoEmbedder;

    impl TextEmbedder for NoEmbedder {
        fn dims(&self) -> usize {
            384
        }
        fn embed_texts(&self, _: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
            Err(EmbedFailure("this test must not embed".into()))
        }
        fn name(&self) -> &str {
            "ngram"
        }
    }

    fn clusterer(index: &MemoryIndex) -> FailureClusterer {
        let mut c = FailureClusterer::new(Arc::new(NgramEmbedder::new(384)));
        c.attach_shared_index(Box::new(index.clone()))
            .unwrap_or_default();
        c
    }

    const MESSAGES: [&str; 4] = [
        "payment channel alipay returned 503 for order 1234",
        "redis: connection refused 10.0.0.1:6379",
        "payment channel alipay returned 503 for order 99",
        "Redis 连接被拒绝 10.0.0.2:6379",
    ];

    #[test]
    fn replicas_sharing_an_index_agree_in_any_order() {
        let index = MemoryIndex::default();
        let (mut a, mut b) = (clusterer(&index), clusterer(&index));
        let from_a: Vec<String> = MESSAGES
            .iter()
            .map(|m| a.process(m).map(|x| x.cluster_id).unwrap_or_default())
            .collect();
        let from_b: Vec<String> = MESSAGES
            .iter()
            .rev()
            .map(|m| b.process(m).map(|x| x.cluster_id).unwrap_or_default())
            .collect();
        let from_b: Vec<String> = from_b.into_iter().rev().collect();
        assert_eq!(from_a, from_b);
        assert_eq!(from_a[1], from_a[3], "redis refused joins across languages");
        assert_ne!(from_a[0], from_a[1]);
        assert!(b.stats().from_shared >= 1, "{:?}", b.stats());
    }

    #[test]
    fn a_restored_clusterer_assigns_known_templates_without_embedding() {
        let index = MemoryIndex::default();
        let mut first = clusterer(&index);
        let old = first.process(MESSAGES[1]).map(|a| a.cluster_id);
        let mut fresh = FailureClusterer::new(Arc::new(NoEmbedder));
        assert_eq!(
            fresh
                .attach_shared_index(Box::new(index.clone()))
                .unwrap_or_default(),
            1
        );
        assert_eq!(
            fresh.process(MESSAGES[1]).map(|a| a.cluster_id).ok(),
            old.ok()
        );
        assert_eq!(fresh.stats().embedded, 0);
        assert!(fresh.process("an unseen failure").is_err(), "would embed");
    }

    #[test]
    fn templates_assigned_while_the_index_was_down_are_handed_to_it_when_it_answers() {
        let index = MemoryIndex::default();
        let mut a = clusterer(&index);
        *index.fail.lock().unwrap_or_else(|e| e.into_inner()) = true;
        let local = a.process(MESSAGES[1]).unwrap().cluster_id;
        assert_eq!((a.unsynced(), a.sync_shared(8)), (1, 0), "still down: kept");

        // Meanwhile another replica, with the index up, founds the cluster of the same failure.
        *index.fail.lock().unwrap_or_else(|e| e.into_inner()) = false;
        let mut b = clusterer(&index);
        let shared = b.process(MESSAGES[3]).unwrap().cluster_id;
        assert_ne!(local, shared, "decided apart");

        assert_eq!(a.sync_shared(8), 1);
        assert_eq!((a.unsynced(), a.stats().synced_back), (0, 1));
        assert_eq!(
            a.process(MESSAGES[1]).unwrap().cluster_id,
            shared,
            "the replica now agrees with the index"
        );
        // A replica that restarts gets the template from the index, without embedding.
        let mut fresh = FailureClusterer::new(Arc::new(NoEmbedder));
        assert_eq!(
            fresh
                .attach_shared_index(Box::new(index.clone()))
                .unwrap_or_default(),
            2
        );
        assert_eq!(fresh.process(MESSAGES[1]).unwrap().cluster_id, shared);
    }

    #[test]
    fn a_backlog_is_handed_over_a_batch_at_a_time() {
        let index = MemoryIndex::default();
        let mut c = clusterer(&index);
        *index.fail.lock().unwrap_or_else(|e| e.into_inner()) = true;
        for m in [MESSAGES[0], MESSAGES[1], "disk full on /var/lib/postgresql"] {
            c.process(m).unwrap();
        }
        *index.fail.lock().unwrap_or_else(|e| e.into_inner()) = false;
        assert_eq!((c.sync_shared(2), c.unsynced()), (2, 1));
        assert_eq!((c.sync_shared(2), c.unsynced()), (1, 0));
        assert_eq!(index.restore().unwrap().len(), 3);
    }

    #[test]
    fn a_failing_index_falls_back_to_the_local_store() {
        let index = MemoryIndex::default();
        let mut c = clusterer(&index);
        *index.fail.lock().unwrap_or_else(|e| e.into_inner()) = true;
        let a = c.process(MESSAGES[1]).map(|a| a.cluster_id).ok();
        let b = c.process(MESSAGES[3]).map(|a| a.cluster_id).ok();
        assert!(a.is_some());
        assert_eq!(a, b);
        assert!(c.stats().shared_failures >= 2, "{:?}", c.stats());
    }
}
