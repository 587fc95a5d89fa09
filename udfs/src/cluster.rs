//! Failure clusters: templates that mean "the same thing is broken".
//!
//! A new template joins the nearest cluster when the combined similarity reaches the
//! threshold, else it starts one. Combined similarity = embedding cosine adjusted by the
//! evidence ([`crate::evidence`]): agreeing dependency *and* mode always join, a conflicting
//! dependency or mode never joins, a shared mode or dependency adds a bonus when the rest is
//! unknown. Centroids are count-weighted means. [`ClusterStore::recluster`] re-runs
//! average-linkage over all templates and keeps cluster ids stable by mapping new clusters
//! to old ones by overlap.
//!
//! Nearest-cluster search goes through [`VectorIndex`]. The store uses an [`AdaptiveIndex`]:
//! [`ExactIndex`] (a scan of all centroids, exact and fastest while clusters are few) until
//! the cluster count passes [`ClusterConfig::hnsw_above`], then an approximate
//! [`HnswIndex`](crate::hnsw::HnswIndex).

use std::collections::HashMap;

use crate::evidence::{Agreement, Evidence, FailureMode};
use crate::hnsw::{HnswIndex, HnswParams};

/// Turns texts into L2-normalised vectors. The built-in candle model and the HTTP backend
/// (`crate::embed`) implement it through an adapter; [`NgramEmbedder`] is the model-free one.
pub trait TextEmbedder: Send + Sync {
    /// Vector length.
    fn dims(&self) -> usize;
    /// One vector per text, L2-normalised; an error fails the whole batch.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure>;
    /// A name for reports and calibration look-up.
    fn name(&self) -> &str;
}

/// An embedding backend failed.
#[derive(Debug, thiserror::Error)]
#[error("embedding failed: {0}")]
pub struct EmbedFailure(pub String);

/// Hashed character n-grams (3-grams over ASCII words, 2-grams over CJK), sublinear TF,
/// L2-normalised. No model needed; a baseline and a fallback.
#[derive(Debug, Clone)]
pub struct NgramEmbedder {
    dims: usize,
}

impl NgramEmbedder {
    /// An embedder with `dims` buckets.
    pub fn new(dims: usize) -> Self {
        Self { dims: dims.max(8) }
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dims];
        let lower = text.to_lowercase();
        let chars: Vec<char> = lower
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        let mut buf = String::new();
        let mut add = |gram: &[char], v: &mut Vec<f32>| {
            buf.clear();
            buf.extend(gram);
            let h = xxhash_rust::xxh3::xxh3_64(buf.as_bytes());
            let idx = (h % self.dims as u64) as usize;
            let sign = if (h >> 63) == 1 { 1.0 } else { -1.0 };
            v[idx] += sign;
        };
        for w in chars.windows(3) {
            if w.iter().all(|c| *c != ' ') {
                add(w, &mut v);
            }
        }
        for w in chars.windows(2) {
            if w.iter().all(|c| crate::miner::is_cjk(*c)) {
                add(w, &mut v);
            }
        }
        for x in &mut v {
            *x = x.signum() * (1.0 + x.abs()).ln();
        }
        normalise(&mut v);
        v
    }
}

impl TextEmbedder for NgramEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
    fn name(&self) -> &str {
        "ngram"
    }
}

/// Deterministic pseudo-random unit vectors (splitmix64), the same every run: test and
/// benchmark data for the indexes without a random-number dependency.
pub fn unit_vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = (0..dims).map(|_| next()).collect();
            normalise(&mut v);
            v
        })
        .collect()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 && n.is_finite() {
        for x in v {
            *x /= n;
        }
    }
}

/// Dot product (cosine for unit vectors). Eight independent partial sums, so the compiler
/// can keep them in SIMD lanes (a single running sum is a serial chain of float adds).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Nearest-neighbour search over cluster centroids.
pub trait VectorIndex: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces the vector of `id`.
    fn upsert(&mut self, id: usize, vector: &[f32]);
    /// Removes `id`.
    fn remove(&mut self, id: usize);
    /// The `k` most similar ids by cosine, best first.
    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)>;
    /// Number of vectors.
    fn len(&self) -> usize;
    /// Empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exact search: scans every vector.
#[derive(Debug, Default)]
pub struct ExactIndex {
    ids: Vec<usize>,
    vectors: Vec<Vec<f32>>,
    pos: HashMap<usize, usize>,
}

impl VectorIndex for ExactIndex {
    fn upsert(&mut self, id: usize, vector: &[f32]) {
        match self.pos.get(&id) {
            Some(&p) => self.vectors[p] = vector.to_vec(),
            None => {
                self.pos.insert(id, self.ids.len());
                self.ids.push(id);
                self.vectors.push(vector.to_vec());
            }
        }
    }

    fn remove(&mut self, id: usize) {
        let Some(p) = self.pos.remove(&id) else {
            return;
        };
        self.ids.swap_remove(p);
        self.vectors.swap_remove(p);
        if p < self.ids.len() {
            self.pos.insert(self.ids[p], p);
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = self
            .ids
            .iter()
            .zip(&self.vectors)
            .map(|(&id, v)| (id, dot(query, v)))
            .collect();
        let best_first = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1);
        // Partition out the k best, then sort only those: O(n + k log k), not O(n log n).
        if k < scored.len() {
            if k == 0 {
                return Vec::new();
            }
            scored.select_nth_unstable_by(k - 1, best_first);
            scored.truncate(k);
        }
        scored.sort_by(best_first);
        scored
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

impl ExactIndex {
    /// The vectors, by id (any order).
    pub fn vectors(&self) -> impl Iterator<Item = (usize, &[f32])> {
        self.ids
            .iter()
            .zip(&self.vectors)
            .map(|(&id, v)| (id, v.as_slice()))
    }
}

/// Exact search while the index is small, HNSW once it holds more than `hnsw_above`
/// vectors; back to exact when it shrinks below half that (the gap stops a count hovering
/// at the bound from rebuilding the graph over and over).
#[derive(Debug)]
pub struct AdaptiveIndex {
    hnsw_above: usize,
    params: HnswParams,
    inner: AdaptiveInner,
}

#[derive(Debug)]
enum AdaptiveInner {
    Exact(ExactIndex),
    Hnsw(HnswIndex),
}

impl AdaptiveIndex {
    /// Switches to HNSW (built with `params`) above `hnsw_above` vectors.
    pub fn new(hnsw_above: usize, params: HnswParams) -> Self {
        Self {
            hnsw_above,
            params,
            inner: AdaptiveInner::Exact(ExactIndex::default()),
        }
    }

    /// Whether searches currently go through the HNSW graph.
    pub fn is_hnsw(&self) -> bool {
        matches!(self.inner, AdaptiveInner::Hnsw(_))
    }

    fn rebalance(&mut self) {
        let next = match &self.inner {
            AdaptiveInner::Exact(e) if e.len() > self.hnsw_above => {
                AdaptiveInner::Hnsw(HnswIndex::build(self.params, e.vectors()))
            }
            AdaptiveInner::Hnsw(h) if h.len() < self.hnsw_above / 2 => {
                let mut e = ExactIndex::default();
                for (id, v) in h.vectors() {
                    e.upsert(id, v);
                }
                AdaptiveInner::Exact(e)
            }
            _ => return,
        };
        self.inner = next;
    }

    fn index(&self) -> &dyn VectorIndex {
        match &self.inner {
            AdaptiveInner::Exact(e) => e,
            AdaptiveInner::Hnsw(h) => h,
        }
    }

    fn index_mut(&mut self) -> &mut dyn VectorIndex {
        match &mut self.inner {
            AdaptiveInner::Exact(e) => e,
            AdaptiveInner::Hnsw(h) => h,
        }
    }
}

impl VectorIndex for AdaptiveIndex {
    fn upsert(&mut self, id: usize, vector: &[f32]) {
        self.index_mut().upsert(id, vector);
        self.rebalance();
    }

    fn remove(&mut self, id: usize) {
        self.index_mut().remove(id);
        self.rebalance();
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        self.index().search(query, k)
    }

    fn len(&self) -> usize {
        self.index().len()
    }
}

/// How templates are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Similarity {
    /// Embedding cosine only.
    EmbeddingOnly,
    /// Evidence only: join when dependency and mode agree, never otherwise.
    EvidenceOnly,
    /// Cosine adjusted by evidence (the default).
    Combined,
}

/// Clustering settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Join when the (combined) similarity reaches this.
    pub threshold: f32,
    /// Added when both failure modes are known and equal (the rest unknown).
    pub mode_bonus: f32,
    /// Added when both dependencies are known and equal (the rest unknown).
    pub dependency_bonus: f32,
    /// Comparison rule.
    pub similarity: Similarity,
    /// Candidates taken from the index per query.
    pub candidates: usize,
    /// Nearest-cluster search switches from the exact scan to HNSW above this many clusters.
    pub hnsw_above: usize,
}

/// Default for [`ClusterConfig::hnsw_above`], from `cargo bench --bench nearest_cluster`
/// (384 dimensions, top 16, this project's 2-core VM): at 2,000 clusters the exact scan takes
/// 0.10 ms and HNSW 0.22 ms; at 10,000 0.56 ms and 0.46 ms; at 50,000 4.4 ms and 1.7 ms. The
/// graph pays off from about 10,000 clusters (see `udfs/BENCHMARKS.md`).
pub const DEFAULT_HNSW_ABOVE: usize = 10_000;

impl ClusterConfig {
    /// Settings calibrated for an embedder (see `udfs/calibration/`).
    pub fn for_model(model: &str) -> Self {
        let c = crate::calibration::for_model(model);
        Self {
            threshold: c.threshold,
            mode_bonus: c.mode_bonus,
            dependency_bonus: c.dependency_bonus,
            similarity: Similarity::Combined,
            candidates: 16,
            hnsw_above: DEFAULT_HNSW_ABOVE,
        }
    }
}

/// Score of a template against a cluster (or another template); `None` = never join.
pub fn combined_score(cos: f32, a: &Evidence, b: &Evidence, cfg: &ClusterConfig) -> Option<f32> {
    match cfg.similarity {
        Similarity::EmbeddingOnly => Some(cos),
        Similarity::EvidenceOnly => match a.agreement(b) {
            Agreement::Same => Some(2.0),
            _ => None,
        },
        Similarity::Combined => match a.agreement(b) {
            Agreement::Conflict => None,
            Agreement::Same => Some(2.0 + cos),
            Agreement::Unknown {
                shared_mode,
                shared_dependency,
            } => Some(
                cos + if shared_mode { cfg.mode_bonus } else { 0.0 }
                    + if shared_dependency {
                        cfg.dependency_bonus
                    } else {
                        0.0
                    },
            ),
        },
    }
}

#[derive(Debug, Clone)]
struct TemplateEntry {
    /// Content-derived name used when this template founds a cluster.
    name: u64,
    vector: Vec<f32>,
    evidence: Evidence,
    weight: f64,
    cluster: usize,
}

#[derive(Debug, Clone)]
struct Cluster {
    id: String,
    sum: Vec<f32>,
    centroid: Vec<f32>,
    weight: f64,
    dependencies: HashMap<String, f64>,
    modes: HashMap<FailureMode, f64>,
    evidence: Evidence,
    members: usize,
}

impl Cluster {
    fn new(id: String, dims: usize) -> Self {
        Self {
            id,
            sum: vec![0.0; dims],
            centroid: vec![0.0; dims],
            weight: 0.0,
            dependencies: HashMap::new(),
            modes: HashMap::new(),
            evidence: Evidence::default(),
            members: 0,
        }
    }

    fn add(&mut self, t: &TemplateEntry, sign: f64) {
        let w = (t.weight * sign) as f32;
        for (s, x) in self.sum.iter_mut().zip(&t.vector) {
            *s += w * x;
        }
        self.weight += t.weight * sign;
        if let Some(d) = &t.evidence.dependency {
            *self.dependencies.entry(d.clone()).or_default() += t.weight * sign;
        }
        if let Some(m) = t.evidence.mode {
            *self.modes.entry(m).or_default() += t.weight * sign;
        }
        if sign > 0.0 {
            self.members += 1;
        } else {
            self.members = self.members.saturating_sub(1);
        }
        self.centroid = self.sum.clone();
        normalise(&mut self.centroid);
        self.evidence = Evidence {
            dependency: majority(&self.dependencies),
            mode: majority(&self.modes),
        };
    }
}

fn majority<K: Clone + Ord>(counts: &HashMap<K, f64>) -> Option<K> {
    counts
        .iter()
        .filter(|(_, w)| **w > 1e-9)
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.clone())
}

/// Templates grouped into failure clusters.
#[derive(Debug)]
pub struct ClusterStore {
    config: ClusterConfig,
    dims: usize,
    templates: HashMap<u64, TemplateEntry>,
    clusters: HashMap<usize, Cluster>,
    next_slot: usize,
    index: Box<dyn VectorIndex>,
    by_evidence: HashMap<(String, FailureMode), usize>,
}

impl ClusterStore {
    /// An empty store searching an [`AdaptiveIndex`] (exact, then HNSW above
    /// [`ClusterConfig::hnsw_above`] clusters).
    pub fn new(config: ClusterConfig, dims: usize) -> Self {
        let index = AdaptiveIndex::new(config.hnsw_above, HnswParams::default());
        Self::with_index(config, dims, Box::new(index))
    }

    /// An empty store with the given index.
    pub fn with_index(config: ClusterConfig, dims: usize, index: Box<dyn VectorIndex>) -> Self {
        Self {
            config,
            dims,
            templates: HashMap::new(),
            clusters: HashMap::new(),
            next_slot: 0,
            index,
            by_evidence: HashMap::new(),
        }
    }

    /// Number of clusters.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// No clusters.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Number of templates.
    pub fn templates(&self) -> usize {
        self.templates.len()
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The cluster id of a known template.
    pub fn cluster_of(&self, template: u64) -> Option<&str> {
        let t = self.templates.get(&template)?;
        self.clusters.get(&t.cluster).map(|c| c.id.as_str())
    }

    /// The evidence of a cluster (majority dependency and mode).
    pub fn cluster_evidence(&self, template: u64) -> Option<&Evidence> {
        let t = self.templates.get(&template)?;
        self.clusters.get(&t.cluster).map(|c| &c.evidence)
    }

    /// Adds more occurrences to a known template (moves its cluster's centroid weight).
    pub fn touch(&mut self, template: u64, weight: f64) {
        let Some(t) = self.templates.get_mut(&template) else {
            return;
        };
        t.weight += weight;
        let delta = TemplateEntry {
            weight,
            ..t.clone()
        };
        if let Some(c) = self.clusters.get_mut(&t.cluster) {
            c.add(&delta, 1.0);
            c.members -= 1;
            self.index.upsert(t.cluster, &c.centroid);
        }
    }

    /// Assigns a new template (or returns the cluster of a known one). `template` is the
    /// caller's stable key; `name` (e.g. the template id) names a cluster it founds.
    pub fn assign(
        &mut self,
        template: u64,
        name: u64,
        vector: Vec<f32>,
        evidence: Evidence,
        weight: f64,
    ) -> String {
        if let Some(id) = self.cluster_of(template) {
            return id.to_string();
        }
        let mut vector = vector;
        vector.resize(self.dims, 0.0);
        let slot = self.nearest(&vector, &evidence).unwrap_or_else(|| {
            let slot = self.next_slot;
            self.next_slot += 1;
            self.clusters
                .insert(slot, Cluster::new(format!("c{name:016x}"), self.dims));
            slot
        });
        let entry = TemplateEntry {
            name,
            vector,
            evidence,
            weight: weight.max(1e-6),
            cluster: slot,
        };
        self.attach(template, entry, slot);
        self.clusters
            .get(&slot)
            .map(|c| c.id.clone())
            .unwrap_or_default()
    }

    /// Adds a new template to the cluster named `cluster_id` (creating it when this store
    /// has not seen it): the cluster was decided elsewhere (a shared index), so no search.
    /// A known template keeps its cluster.
    pub fn assign_to(
        &mut self,
        template: u64,
        name: u64,
        vector: Vec<f32>,
        evidence: Evidence,
        weight: f64,
        cluster_id: &str,
    ) -> String {
        if let Some(id) = self.cluster_of(template) {
            return id.to_string();
        }
        let mut vector = vector;
        vector.resize(self.dims, 0.0);
        let existing = self
            .clusters
            .iter()
            .find(|(_, c)| c.id == cluster_id)
            .map(|(slot, _)| *slot);
        let slot = existing.unwrap_or_else(|| {
            let slot = self.next_slot;
            self.next_slot += 1;
            self.clusters
                .insert(slot, Cluster::new(cluster_id.to_owned(), self.dims));
            slot
        });
        let entry = TemplateEntry {
            name,
            vector,
            evidence,
            weight: weight.max(1e-6),
            cluster: slot,
        };
        self.attach(template, entry, slot);
        cluster_id.to_owned()
    }

    /// Moves a known template, with its weight, to the cluster named `cluster_id` (created
    /// when this store has not seen it): a shared index decided differently from this store.
    /// Returns whether it moved.
    pub fn move_to(&mut self, template: u64, cluster_id: &str) -> bool {
        let Some(t) = self.templates.get(&template) else {
            return false;
        };
        if self
            .clusters
            .get(&t.cluster)
            .is_some_and(|c| c.id == cluster_id)
        {
            return false;
        }
        let (name, vector, evidence, weight) =
            (t.name, t.vector.clone(), t.evidence.clone(), t.weight);
        self.forget(template);
        self.assign_to(template, name, vector, evidence, weight, cluster_id);
        true
    }

    /// Forgets a template (evicted by the miner); empty clusters disappear.
    pub fn forget(&mut self, template: u64) {
        let Some(t) = self.templates.remove(&template) else {
            return;
        };
        let empty = match self.clusters.get_mut(&t.cluster) {
            Some(c) => {
                c.add(&t, -1.0);
                c.members == 0
            }
            None => false,
        };
        if empty {
            self.drop_cluster(t.cluster);
        } else if let Some(c) = self.clusters.get(&t.cluster) {
            self.index.upsert(t.cluster, &c.centroid);
            self.refresh_evidence_key(t.cluster);
        }
    }

    /// Renames a template id (the miner generalised a template).
    pub fn rename(&mut self, from: u64, to: u64) {
        if from == to {
            return;
        }
        if let Some(t) = self.templates.remove(&from) {
            if self.templates.contains_key(&to) {
                // Both exist: fold `from` into `to`'s weight.
                self.touch(to, t.weight);
                self.templates.insert(from, t);
                self.forget(from);
            } else {
                self.templates.insert(to, t);
            }
        }
    }

    fn attach(&mut self, template: u64, entry: TemplateEntry, slot: usize) {
        if let Some(c) = self.clusters.get_mut(&slot) {
            c.add(&entry, 1.0);
            self.index.upsert(slot, &c.centroid);
        }
        self.templates.insert(template, entry);
        self.refresh_evidence_key(slot);
    }

    fn refresh_evidence_key(&mut self, slot: usize) {
        if let Some(c) = self.clusters.get(&slot)
            && let (Some(d), Some(m)) = (&c.evidence.dependency, c.evidence.mode)
        {
            self.by_evidence.entry((d.clone(), m)).or_insert(slot);
        }
    }

    fn drop_cluster(&mut self, slot: usize) {
        self.clusters.remove(&slot);
        self.index.remove(slot);
        self.by_evidence.retain(|_, s| *s != slot);
    }

    fn nearest(&self, vector: &[f32], evidence: &Evidence) -> Option<usize> {
        if self.config.similarity != Similarity::EmbeddingOnly
            && let (Some(d), Some(m)) = (&evidence.dependency, evidence.mode)
            && let Some(&slot) = self.by_evidence.get(&(d.clone(), m))
            && self.clusters.contains_key(&slot)
        {
            return Some(slot);
        }
        if self.config.similarity == Similarity::EvidenceOnly {
            return None;
        }
        let mut best: Option<(f32, usize)> = None;
        for (slot, cos) in self.index.search(vector, self.config.candidates) {
            let Some(c) = self.clusters.get(&slot) else {
                continue;
            };
            let Some(score) = combined_score(cos, evidence, &c.evidence, &self.config) else {
                continue;
            };
            if score >= self.config.threshold && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, slot));
            }
        }
        best.map(|(_, s)| s)
    }

    /// Re-clusters all templates with average linkage on the combined score (conflicting
    /// evidence is a cannot-link), then keeps ids stable: each new cluster takes the id of
    /// the old cluster it overlaps most (by template weight), greedily, best overlap first.
    /// Returns how many templates changed cluster.
    pub fn recluster(&mut self) -> usize {
        let keys: Vec<u64> = {
            let mut k: Vec<u64> = self.templates.keys().copied().collect();
            k.sort_unstable();
            k
        };
        let n = keys.len();
        if n == 0 {
            return 0;
        }
        let entries: Vec<&TemplateEntry> =
            keys.iter().filter_map(|k| self.templates.get(k)).collect();
        let groups = average_linkage(&entries, &self.config);
        // overlap[new][old slot] = weight
        let mut overlaps: Vec<(f64, usize, usize)> = Vec::new();
        for (g, members) in groups.iter().enumerate() {
            let mut per_old: HashMap<usize, f64> = HashMap::new();
            for &m in members {
                *per_old.entry(entries[m].cluster).or_default() += entries[m].weight;
            }
            overlaps.extend(per_old.into_iter().map(|(old, w)| (w, g, old)));
        }
        overlaps.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut new_to_old: HashMap<usize, usize> = HashMap::new();
        let mut used_old: std::collections::HashSet<usize> = std::collections::HashSet::new();
        for (_, g, old) in overlaps {
            if !new_to_old.contains_key(&g) && !used_old.contains(&old) {
                new_to_old.insert(g, old);
                used_old.insert(old);
            }
        }
        let old_ids: HashMap<usize, String> = self
            .clusters
            .iter()
            .map(|(s, c)| (*s, c.id.clone()))
            .collect();
        let mut changed = 0;
        let mut assignment: Vec<(u64, String)> = Vec::with_capacity(n);
        for (g, members) in groups.iter().enumerate() {
            let id = match new_to_old.get(&g).and_then(|o| old_ids.get(o)) {
                Some(id) => id.clone(),
                None => {
                    let first = members
                        .iter()
                        .map(|&m| entries[m].name)
                        .min()
                        .unwrap_or_default();
                    format!("c{first:016x}")
                }
            };
            for &m in members {
                if old_ids.get(&entries[m].cluster) != Some(&id) {
                    changed += 1;
                }
                assignment.push((keys[m], id.clone()));
            }
        }
        // Rebuild clusters and index.
        let mut templates = std::mem::take(&mut self.templates);
        for slot in self.clusters.keys().copied().collect::<Vec<_>>() {
            self.index.remove(slot);
        }
        self.clusters.clear();
        self.by_evidence.clear();
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        for (key, id) in assignment {
            let slot = *slot_of.entry(id.clone()).or_insert_with(|| {
                let s = self.next_slot;
                self.next_slot += 1;
                s
            });
            let dims = self.dims;
            self.clusters
                .entry(slot)
                .or_insert_with(|| Cluster::new(id, dims));
            if let Some(mut t) = templates.remove(&key) {
                t.cluster = slot;
                if let Some(c) = self.clusters.get_mut(&slot) {
                    c.add(&t, 1.0);
                }
                self.templates.insert(key, t);
            }
        }
        for (slot, c) in &self.clusters {
            self.index.upsert(*slot, &c.centroid);
        }
        for slot in self.clusters.keys().copied().collect::<Vec<_>>() {
            self.refresh_evidence_key(slot);
        }
        changed
    }
}

/// Average-linkage agglomerative clustering with cannot-links; returns member indices per
/// group. O(n²) memory, O(n³) worst-case time: callers bound `n`.
fn average_linkage(entries: &[&TemplateEntry], cfg: &ClusterConfig) -> Vec<Vec<usize>> {
    const CANNOT: f32 = f32::NEG_INFINITY;
    let n = entries.len();
    // sum of pair scores between groups, and pair counts (by weight-free pairs)
    let mut score = vec![0f32; n * n];
    for i in 0..n {
        for j in (i + 1)..n {
            let cos = dot(&entries[i].vector, &entries[j].vector);
            let s = combined_score(cos, &entries[i].evidence, &entries[j].evidence, cfg)
                .unwrap_or(CANNOT);
            score[i * n + j] = s;
            score[j * n + i] = s;
        }
    }
    let mut size = vec![1usize; n];
    let mut alive = vec![true; n];
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    // Best partner per group, refreshed only when it may have changed: about O(n²) overall
    // in practice instead of O(n³) for the naive all-pairs scan per merge.
    let avg = |score: &[f32], size: &[usize], i: usize, j: usize| {
        score[i * n + j] / (size[i] * size[j]) as f32
    };
    let best_of = |score: &[f32], size: &[usize], alive: &[bool], i: usize| {
        let mut best: Option<(f32, usize)> = None;
        for (j, &live) in alive.iter().enumerate() {
            if j != i && live {
                let a = avg(score, size, i, j);
                if a >= cfg.threshold && best.is_none_or(|(b, _)| a > b) {
                    best = Some((a, j));
                }
            }
        }
        best
    };
    let mut best: Vec<Option<(f32, usize)>> =
        (0..n).map(|i| best_of(&score, &size, &alive, i)).collect();
    loop {
        let pick = (0..n)
            .filter(|&i| alive[i])
            .filter_map(|i| best[i].map(|(s, j)| (s, i, j)))
            .max_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)));
        let Some((_, a, b)) = pick else { break };
        // merge b into a: sums add (NEG_INFINITY stays, i.e. cannot-links persist)
        for k in 0..n {
            if k != a && k != b && alive[k] {
                let s = score[a * n + k] + score[b * n + k];
                score[a * n + k] = s;
                score[k * n + a] = s;
            }
        }
        size[a] += size[b];
        alive[b] = false;
        best[b] = None;
        let moved = std::mem::take(&mut members[b]);
        members[a].extend(moved);
        best[a] = best_of(&score, &size, &alive, a);
        for k in 0..n {
            if !alive[k] || k == a {
                continue;
            }
            match best[k] {
                Some((_, j)) if j == a || j == b => best[k] = best_of(&score, &size, &alive, k),
                _ => {
                    let s = avg(&score, &size, k, a);
                    if s >= cfg.threshold && best[k].is_none_or(|(bs, _)| s > bs) {
                        best[k] = Some((s, a));
                    }
                }
            }
        }
    }
    members
        .into_iter()
        .zip(alive)
        .filter(|(_, a)| *a)
        .map(|(m, _)| m)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::extract;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            threshold: 0.5,
            mode_bonus: 0.1,
            dependency_bonus: 0.1,
            similarity: Similarity::Combined,
            candidates: 8,
            hnsw_above: DEFAULT_HNSW_ABOVE,
        }
    }

    #[test]
    fn evidence_joins_and_separates() {
        let e = NgramEmbedder::new(256);
        let mut s = ClusterStore::new(cfg(), 256);
        let texts = [
            "dial tcp 10.0.0.1:5432: connect: connection refused",
            "PostgreSQL 数据库拒绝连接",
            "dial tcp 10.0.0.1:6379: connect: connection refused",
        ];
        let ids: Vec<String> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| s.assign(i as u64, i as u64, e.embed_one(t), extract(t), 1.0))
            .collect();
        assert_eq!(ids[0], ids[1], "same dependency and mode join");
        assert_ne!(ids[0], ids[2], "postgres and redis never merge");
        assert_eq!(s.recluster(), 0);
        assert_eq!(s.cluster_of(0), Some(ids[0].as_str()));
        s.forget(2);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn assign_to_joins_or_creates_the_named_cluster() {
        let e = NgramEmbedder::new(64);
        let mut s = ClusterStore::new(cfg(), 64);
        let a = s.assign(
            1,
            1,
            e.embed_one("disk full on /var"),
            Evidence::default(),
            1.0,
        );
        let t = "something unrelated entirely";
        assert_eq!(
            s.assign_to(2, 2, e.embed_one(t), Evidence::default(), 1.0, &a),
            a
        );
        assert_eq!(s.len(), 1, "joined the existing cluster");
        assert_eq!(
            s.assign_to(3, 3, e.embed_one(t), Evidence::default(), 1.0, "cremote"),
            "cremote"
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.cluster_of(3), Some("cremote"));
        // A known template keeps its cluster.
        assert_eq!(
            s.assign_to(3, 3, e.embed_one(t), Evidence::default(), 1.0, "other"),
            "cremote"
        );
    }

    #[test]
    fn exact_index_finds_nearest() {
        let mut idx = ExactIndex::default();
        idx.upsert(1, &[1.0, 0.0]);
        idx.upsert(2, &[0.0, 1.0]);
        idx.upsert(3, &[0.7, 0.7]);
        idx.remove(3);
        assert_eq!(idx.search(&[0.9, 0.1], 1)[0].0, 1);
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn adaptive_index_switches_to_hnsw_and_back() {
        let e = NgramEmbedder::new(64);
        let vectors: Vec<Vec<f32>> = (0..120)
            .map(|i| e.embed_one(&format!("failure {i} in module m{}", i * 7919)))
            .collect();
        let mut idx = AdaptiveIndex::new(100, HnswParams::default());
        for (id, v) in vectors.iter().enumerate().take(100) {
            idx.upsert(id, v);
        }
        assert!(!idx.is_hnsw(), "at the bound: still exact");
        for (id, v) in vectors.iter().enumerate().skip(100) {
            idx.upsert(id, v);
        }
        assert!(idx.is_hnsw(), "above the bound: HNSW");
        assert_eq!(idx.len(), 120);
        assert_eq!(idx.search(&vectors[7], 1)[0].0, 7);
        for id in 0..60 {
            idx.remove(id);
        }
        assert!(
            idx.is_hnsw(),
            "between half the bound and the bound: no flapping"
        );
        for id in 60..111 {
            idx.remove(id);
        }
        assert!(!idx.is_hnsw(), "below half the bound: exact again");
        assert_eq!(idx.len(), 9);
        assert_eq!(idx.search(&vectors[115], 1)[0].0, 115);
    }

    #[test]
    fn average_linkage_respects_cannot_links() {
        let a = TemplateEntry {
            name: 0,
            vector: vec![1.0, 0.0],
            evidence: Evidence {
                dependency: Some("redis".into()),
                mode: None,
            },
            weight: 1.0,
            cluster: 0,
        };
        let b = TemplateEntry {
            evidence: Evidence {
                dependency: Some("mysql".into()),
                mode: None,
            },
            ..a.clone()
        };
        let c = TemplateEntry {
            evidence: Evidence::default(),
            ..a.clone()
        };
        let groups = average_linkage(&[&a, &b, &c], &cfg());
        assert_eq!(groups.len(), 2);
    }
}
