//! Approximate nearest-cluster search: an HNSW graph (`hnsw_rs`) over cluster centroids.
//!
//! Centroids move: every template that joins or leaves a cluster shifts its centroid, and
//! HNSW graphs cannot move or delete points. So the graph holds a *version* of each
//! centroid: an upsert re-inserts only when the centroid has drifted (cosine to the indexed
//! version below [`HnswParams::reinsert_below`]); the older point becomes stale and is
//! filtered out of searches. Candidates from the graph are re-scored against the *current*
//! centroids, so the cosines returned are exact; only the candidate set is approximate. When
//! stale points outnumber live ones the graph is rebuilt from the current centroids.

use std::collections::HashMap;

use hnsw_rs::hnsw::{Hnsw, Neighbour};
use hnsw_rs::prelude::Distance;

use crate::cluster::{VectorIndex, dot};

/// Graph and search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    /// Links per point and layer (HNSW's `M`).
    pub max_connections: usize,
    /// Candidate list length while inserting.
    pub ef_construction: usize,
    /// Candidate list length while searching (at least the number of results asked for).
    pub ef_search: usize,
    /// Re-insert a centroid once its cosine to the indexed version falls below this.
    pub reinsert_below: f32,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            max_connections: 24,
            ef_construction: 200,
            ef_search: 96,
            reinsert_below: 0.995,
        }
    }
}

/// Cosine distance for unit vectors, with the same dot product as the exact index.
#[derive(Debug, Clone, Copy, Default)]
struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Layers in the graph; 16 is hnsw_rs's maximum and plenty for millions of points.
const MAX_LAYERS: usize = 16;

/// Below this many stale points the graph is never rebuilt.
const MIN_STALE_FOR_REBUILD: usize = 256;

#[derive(Debug, Clone)]
struct Entry {
    /// The graph point holding this id's indexed version.
    point: usize,
    /// The version in the graph.
    indexed: Vec<f32>,
    /// The current centroid (what searches score against).
    current: Vec<f32>,
}

/// HNSW search over centroids; see the module documentation for how updates work.
pub struct HnswIndex {
    params: HnswParams,
    graph: Hnsw<'static, f32, UnitCosine>,
    entries: HashMap<usize, Entry>,
    /// Owner id of each graph point; `None` once the point is stale.
    points: Vec<Option<usize>>,
    stale: usize,
    rebuilds: usize,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("params", &self.params)
            .field("live", &self.entries.len())
            .field("stale", &self.stale)
            .field("rebuilds", &self.rebuilds)
            .finish_non_exhaustive()
    }
}

impl Default for HnswIndex {
    fn default() -> Self {
        Self::new(HnswParams::default())
    }
}

impl HnswIndex {
    /// An empty index.
    pub fn new(params: HnswParams) -> Self {
        Self::with_capacity(params, 1024)
    }

    fn with_capacity(params: HnswParams, capacity: usize) -> Self {
        Self {
            params,
            // hnsw_rs exits the process above 256 links: clamp rather than trust the caller.
            graph: Hnsw::new(
                params.max_connections.clamp(2, 256),
                capacity.max(1024),
                MAX_LAYERS,
                params.ef_construction.max(1),
                UnitCosine,
            ),
            entries: HashMap::new(),
            points: Vec::new(),
            stale: 0,
            rebuilds: 0,
        }
    }

    /// An index holding `vectors`.
    pub fn build<'a>(
        params: HnswParams,
        vectors: impl IntoIterator<Item = (usize, &'a [f32])>,
    ) -> Self {
        let vectors: Vec<(usize, &[f32])> = vectors.into_iter().collect();
        let mut index = Self::with_capacity(params, vectors.len());
        for (id, v) in vectors {
            index.upsert(id, v);
        }
        index
    }

    /// The current vectors, by id (any order).
    pub fn vectors(&self) -> impl Iterator<Item = (usize, &[f32])> {
        self.entries
            .iter()
            .map(|(&id, e)| (id, e.current.as_slice()))
    }

    /// Graph points no longer any id's indexed version.
    pub fn stale_points(&self) -> usize {
        self.stale
    }

    /// How often the graph was rebuilt to shed stale points.
    pub fn rebuilds(&self) -> usize {
        self.rebuilds
    }

    fn insert_point(&mut self, id: usize, vector: &[f32]) -> usize {
        let point = self.points.len();
        self.points.push(Some(id));
        self.graph.insert_slice((vector, point));
        point
    }

    fn retire(&mut self, point: usize) {
        if let Some(owner) = self.points.get_mut(point)
            && owner.take().is_some()
        {
            self.stale += 1;
        }
    }

    fn maybe_rebuild(&mut self) {
        if self.stale < MIN_STALE_FOR_REBUILD || self.stale <= self.entries.len() {
            return;
        }
        let entries = std::mem::take(&mut self.entries);
        let mut fresh = Self::with_capacity(self.params, entries.len());
        // Insert in id order so that a rebuild is deterministic.
        let mut ids: Vec<usize> = entries.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(e) = entries.get(&id) {
                fresh.upsert(id, &e.current);
            }
        }
        fresh.rebuilds = self.rebuilds + 1;
        *self = fresh;
    }
}

impl VectorIndex for HnswIndex {
    fn upsert(&mut self, id: usize, vector: &[f32]) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.current.clear();
            e.current.extend_from_slice(vector);
            if dot(&e.indexed, vector) >= self.params.reinsert_below {
                return;
            }
            let old = e.point;
            self.retire(old);
            let point = self.insert_point(id, vector);
            if let Some(e) = self.entries.get_mut(&id) {
                e.point = point;
                e.indexed.clear();
                e.indexed.extend_from_slice(vector);
            }
            self.maybe_rebuild();
            return;
        }
        let point = self.insert_point(id, vector);
        self.entries.insert(
            id,
            Entry {
                point,
                indexed: vector.to_vec(),
                current: vector.to_vec(),
            },
        );
    }

    fn remove(&mut self, id: usize) {
        if let Some(e) = self.entries.remove(&id) {
            self.retire(e.point);
            self.maybe_rebuild();
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        if k == 0 || self.entries.is_empty() {
            return Vec::new();
        }
        let live = |point: &usize| self.points.get(*point).is_some_and(Option::is_some);
        let found: Vec<Neighbour> =
            self.graph
                .search_filter(query, k, self.params.ef_search.max(k), Some(&live));
        let mut scored: Vec<(usize, f32)> = found
            .iter()
            .filter_map(|n| {
                let id = self.points.get(n.d_id).copied().flatten()?;
                let e = self.entries.get(&id)?;
                Some((id, dot(query, &e.current)))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.dedup_by_key(|(id, _)| *id);
        scored.truncate(k);
        scored
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use crate::cluster::{ExactIndex, unit_vectors};

    #[test]
    fn finds_the_same_nearest_as_the_exact_scan() {
        let dims = 64;
        let data = unit_vectors(3000, dims, 1);
        let queries = unit_vectors(300, dims, 2);
        let mut exact = ExactIndex::default();
        for (id, v) in data.iter().enumerate() {
            exact.upsert(id, v);
        }
        let hnsw = HnswIndex::build(
            HnswParams::default(),
            data.iter().enumerate().map(|(i, v)| (i, v.as_slice())),
        );
        assert_eq!(hnsw.len(), 3000);
        let hits = queries
            .iter()
            .filter(|q| exact.search(q, 1)[0].0 == hnsw.search(q, 1)[0].0)
            .count();
        let recall = hits as f64 / queries.len() as f64;
        assert!(recall >= 0.95, "recall@1 {recall}");
    }

    #[test]
    fn returned_cosines_are_the_current_vectors() {
        let mut idx = HnswIndex::default();
        idx.upsert(1, &[1.0, 0.0]);
        idx.upsert(2, &[0.0, 1.0]);
        // A small drift is not re-inserted, but the score uses the new vector.
        let drifted = [0.999_f32, 0.044_710];
        idx.upsert(1, &drifted);
        assert_eq!(idx.stale_points(), 0);
        let got = idx.search(&[1.0, 0.0], 2);
        assert_eq!(got[0].0, 1);
        assert!((got[0].1 - 0.999).abs() < 1e-6, "{got:?}");
        // A large move re-inserts; the old point is stale and never returned.
        idx.upsert(1, &[0.0, -1.0]);
        assert_eq!(idx.stale_points(), 1);
        let got = idx.search(&[0.0, -1.0], 2);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2]);
        idx.remove(1);
        assert_eq!(idx.search(&[0.0, -1.0], 2), vec![(2, -1.0)]);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn churn_rebuilds_and_keeps_every_live_id_findable() {
        let dims = 16;
        let a = unit_vectors(400, dims, 3);
        let b = unit_vectors(400, dims, 4);
        let mut idx = HnswIndex::default();
        for (id, v) in a.iter().enumerate() {
            idx.upsert(id, v);
        }
        // Move every vector far away, then drop half: 400 + 200 stale points > 200 live.
        for (id, v) in b.iter().enumerate() {
            idx.upsert(id, v);
        }
        for id in (0..400).step_by(2) {
            idx.remove(id);
        }
        assert!(idx.rebuilds() >= 1, "{idx:?}");
        assert!(idx.stale_points() <= idx.len().max(MIN_STALE_FOR_REBUILD));
        assert_eq!(idx.len(), 200);
        for id in (1..400).step_by(2) {
            let got = idx.search(&b[id], 1);
            assert_eq!(got[0].0, id, "live id {id} is its own nearest");
        }
        assert!(idx.search(&b[0], 5).iter().all(|(id, _)| id % 2 == 1));
    }
}
