//! Exact inner-product search in FAISS (`--features faiss`): an `IndexIDMap` over
//! `IndexFlatIP`, searched through FAISS's BLAS kernels. The feature builds FAISS from the
//! `faiss` crate's bundled C++ source (`static`): it needs cmake, a C++ compiler and a BLAS
//! (`apt-get install libopenblas-dev`), and takes about six minutes on two cores.

use std::collections::HashSet;

use faiss::index::flat::FlatIndex;
use faiss::selector::IdSelector;
use faiss::{ConcurrentIndex, IdMap, Idx, Index, MetricType};

use crate::cluster::VectorIndex;

/// FAISS refused to create the index.
#[derive(Debug, thiserror::Error)]
#[error("faiss: {0}")]
pub struct FaissError(#[from] faiss::error::Error);

/// Centroids in a FAISS `IndexIDMap(IndexFlatIP)`; ids are the store's cluster slots.
pub struct FaissIndex {
    dims: usize,
    index: IdMap<FlatIndex>,
    ids: HashSet<usize>,
    failures: usize,
}

impl std::fmt::Debug for FaissIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaissIndex")
            .field("dims", &self.dims)
            .field("len", &self.ids.len())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl FaissIndex {
    /// An empty index for vectors of `dims` values.
    pub fn new(dims: usize) -> Result<Self, FaissError> {
        let d = u32::try_from(dims).unwrap_or(u32::MAX);
        let flat = FlatIndex::new(d, MetricType::InnerProduct)?;
        Ok(Self {
            dims,
            index: IdMap::new(flat)?,
            ids: HashSet::new(),
            failures: 0,
        })
    }

    /// FAISS calls that failed (the operation was skipped; searches then return nothing).
    pub fn failures(&self) -> usize {
        self.failures
    }

    fn remove_id(&mut self, id: usize) -> Result<(), faiss::error::Error> {
        let selector = IdSelector::batch(&[Idx::new(id as u64)])?;
        self.index.remove_ids(&selector)?;
        Ok(())
    }
}

impl VectorIndex for FaissIndex {
    fn upsert(&mut self, id: usize, vector: &[f32]) {
        let mut v = vector.to_vec();
        v.resize(self.dims, 0.0);
        let old_copy_stuck = !self.ids.insert(id) && self.remove_id(id).is_err();
        if old_copy_stuck || self.index.add_with_ids(&v, &[Idx::new(id as u64)]).is_err() {
            self.ids.remove(&id);
            self.failures += 1;
        }
    }

    fn remove(&mut self, id: usize) {
        if self.ids.remove(&id) && self.remove_id(id).is_err() {
            self.failures += 1;
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        if k == 0 || self.ids.is_empty() {
            return Vec::new();
        }
        let mut q = query.to_vec();
        q.resize(self.dims, 0.0);
        let Ok(found) = ConcurrentIndex::search(&self.index, &q, k.min(self.ids.len())) else {
            return Vec::new();
        };
        found
            .labels
            .iter()
            .zip(found.distances)
            .filter_map(|(label, score)| Some((usize::try_from(label.get()?).ok()?, score)))
            .collect()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use crate::cluster::{ExactIndex, NgramEmbedder};

    #[test]
    fn agrees_with_the_exact_scan_through_upserts_and_removals() {
        let e = NgramEmbedder::new(64);
        let vectors: Vec<Vec<f32>> = (0..300)
            .map(|i| e.embed_one(&format!("failure {i} in module m{}", i * 7919)))
            .collect();
        let mut faiss = FaissIndex::new(64).unwrap();
        let mut exact = ExactIndex::default();
        for (id, v) in vectors.iter().enumerate() {
            faiss.upsert(id, v);
            exact.upsert(id, v);
        }
        // Move some, drop some.
        for id in (0..300).step_by(3) {
            faiss.upsert(id, &vectors[299 - id]);
            exact.upsert(id, &vectors[299 - id]);
        }
        for id in (1..300).step_by(5) {
            faiss.remove(id);
            exact.remove(id);
        }
        assert_eq!(faiss.len(), exact.len());
        assert_eq!(faiss.failures(), 0);
        for q in vectors.iter().step_by(7) {
            let f = faiss.search(q, 4);
            let x = exact.search(q, 4);
            assert_eq!(f.len(), 4);
            for (a, b) in f.iter().zip(&x) {
                assert!((a.1 - b.1).abs() < 1e-5, "{f:?} vs {x:?}");
            }
        }
    }
}
