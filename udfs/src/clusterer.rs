//! Templates first, meaning second: the miner, the evidence, the embedder and the cluster
//! store fused into one object that the SQL functions and the offline command drive.
//!
//! A known template costs one masking scan, one hash lookup and one map lookup; the
//! embedder runs once per new template, never per event.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::{ClusterConfig, ClusterStore, EmbedFailure, TextEmbedder};
use crate::evidence::{self, Evidence};
use crate::miner::{GroupKey, MinerConfig, TemplateMiner};
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

/// Miner + evidence + embedder + clusters.
pub struct FailureClusterer {
    miner: TemplateMiner,
    store: ClusterStore,
    embedder: Arc<dyn TextEmbedder>,
    evidence: HashMap<GroupKey, Evidence>,
    new_since_recluster: usize,
    /// Re-cluster after this many new templates (0 = never automatically).
    pub recluster_every: usize,
    /// Upper bound on templates a re-clustering looks at (average linkage is O(n²) memory).
    pub recluster_max_templates: usize,
    /// Vectors shared with other replicas, asked before the model runs.
    vector_cache: Option<Arc<dyn VectorCache>>,
}

impl std::fmt::Debug for FailureClusterer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureClusterer")
            .field("templates", &self.miner.len())
            .field("clusters", &self.store.len())
            .field("embedder", &self.embedder.name())
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
            new_since_recluster: 0,
            recluster_every: 0,
            recluster_max_templates: 3000,
            vector_cache: None,
        }
    }

    /// Shares vectors with other replicas: a new template's vector is looked up by
    /// `(embedder name, template id)` before the model runs, and stored after it did.
    pub fn set_vector_cache(&mut self, cache: Arc<dyn VectorCache>) {
        self.vector_cache = Some(cache);
    }

    /// The template's vector: from the shared cache when a replica made it with this model
    /// (and it has this model's length, finite values), else from the model, then shared.
    fn vector_for(&self, template_id: u64, text: &str) -> Result<Vec<f32>, EmbedFailure> {
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
        let private =
            schemas::text::desensitize(schemas::text::truncate_at_char_boundary(text, 1024))
                .into_owned();
        let ev = evidence::extract(&private);
        let vector = self.vector_for(template_id, &private)?;
        self.evidence.insert(group, ev.clone());
        let cluster_id = self.store.assign(key, template_id, vector, ev, 1.0);
        self.new_since_recluster += 1;
        if self.recluster_every > 0
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
}
