//! Vectors by template id, so the model runs once per new template, never per event.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use crate::cluster::{EmbedFailure, TextEmbedder};

/// Wraps any [`TextEmbedder`] with an LRU cache keyed by template id. Misses of one call are
/// embedded in one `embed_texts` call (the embedder batches them); the lock is not held while
/// the model runs, so hits from other threads are not blocked behind a slow batch.
pub struct CachedEmbedder {
    inner: Arc<dyn TextEmbedder>,
    cache: Mutex<LruCache<u64, Arc<[f32]>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Counters of a [`CachedEmbedder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Ids answered from the cache.
    pub hits: u64,
    /// Ids that went to the embedder.
    pub misses: u64,
    /// Vectors held now.
    pub len: usize,
}

impl std::fmt::Debug for CachedEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedEmbedder")
            .field("inner", &self.inner.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl CachedEmbedder {
    /// Caches up to `capacity` vectors of `inner`, evicting the least recently used.
    pub fn new(inner: Arc<dyn TextEmbedder>, capacity: NonZeroUsize) -> Self {
        Self {
            inner,
            cache: Mutex::new(LruCache::new(capacity)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The wrapped embedder (its `name()` and `dims()` describe the cached vectors).
    pub fn inner(&self) -> &Arc<dyn TextEmbedder> {
        &self.inner
    }

    /// One vector per `(template_id, template_text)`, in order. Ids already cached are not
    /// embedded again; an id repeated within the call is embedded once.
    pub fn embed_templates(&self, items: &[(u64, &str)]) -> Result<Vec<Arc<[f32]>>, EmbedFailure> {
        let mut out: Vec<Option<Arc<[f32]>>> = vec![None; items.len()];
        let mut miss_ids: Vec<u64> = Vec::new();
        let mut miss_texts: Vec<&str> = Vec::new();
        {
            let mut cache = self.lock();
            let mut seen = HashMap::new();
            for (slot, &(id, text)) in out.iter_mut().zip(items) {
                if let Some(v) = cache.get(&id) {
                    *slot = Some(Arc::clone(v));
                } else if seen.insert(id, ()).is_none() {
                    miss_ids.push(id);
                    miss_texts.push(text);
                }
            }
        }
        let hits = out.iter().filter(|v| v.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        if miss_ids.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        self.misses
            .fetch_add(miss_ids.len() as u64, Ordering::Relaxed);

        let vectors = self.inner.embed_texts(&miss_texts)?;
        if vectors.len() != miss_ids.len() {
            return Err(EmbedFailure(format!(
                "{}: {} vectors for {} texts",
                self.inner.name(),
                vectors.len(),
                miss_ids.len()
            )));
        }
        // Insert in input order (the LRU order follows it), and fill the answer from the fresh
        // vectors, not from the cache: a small cache may already have evicted some again.
        let fresh: HashMap<u64, Arc<[f32]>> = {
            let mut cache = self.lock();
            miss_ids
                .into_iter()
                .zip(vectors)
                .map(|(id, v)| {
                    let v: Arc<[f32]> = Arc::from(v);
                    cache.put(id, Arc::clone(&v));
                    (id, v)
                })
                .collect()
        };
        out.iter_mut()
            .zip(items)
            .map(|(slot, (id, _))| {
                slot.take()
                    .or_else(|| fresh.get(id).cloned())
                    .ok_or_else(|| EmbedFailure(format!("no vector for template {id}")))
            })
            .collect()
    }

    /// Hit and miss counters and the number of cached vectors.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            len: self.lock().len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<[f32]>>> {
        // The cache holds only finished vectors, so a poisoned lock is still consistent.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts calls and texts; the vector encodes the text's length so answers can be checked.
    #[derive(Default)]
    struct CountingEmbedder {
        calls: AtomicUsize,
        texts: AtomicUsize,
    }

    impl TextEmbedder for CountingEmbedder {
        fn dims(&self) -> usize {
            2
        }
        fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
        fn name(&self) -> &str {
            "counting"
        }
    }

    fn setup(capacity: usize) -> (Arc<CountingEmbedder>, CachedEmbedder) {
        let inner = Arc::new(CountingEmbedder::default());
        let cached = CachedEmbedder::new(inner.clone(), NonZeroUsize::new(capacity).unwrap());
        (inner, cached)
    }

    #[test]
    fn second_call_with_the_same_ids_does_not_run_the_model() {
        let (inner, cached) = setup(16);
        let items = [(1, "a"), (2, "bb"), (3, "ccc")];
        let first = cached.embed_templates(&items).unwrap();
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            1,
            "misses go in one batch"
        );
        assert_eq!(inner.texts.load(Ordering::SeqCst), 3);
        let second = cached.embed_templates(&[(3, "ccc"), (1, "a")]).unwrap();
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            1,
            "all hits: no model call"
        );
        assert_eq!(&*second[0], &*first[2]);
        assert_eq!(&*second[1], &[1.0, 1.0]);
        assert_eq!(
            cached.stats(),
            CacheStats {
                hits: 2,
                misses: 3,
                len: 3
            }
        );
    }

    #[test]
    fn only_misses_are_embedded_and_repeats_once() {
        let (inner, cached) = setup(16);
        cached.embed_templates(&[(1, "a")]).unwrap();
        let v = cached
            .embed_templates(&[(1, "a"), (7, "seven"), (7, "seven"), (8, "eight!")])
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            inner.texts.load(Ordering::SeqCst),
            3,
            "a once, then 7 and 8 once each"
        );
        let lens: Vec<f32> = v.iter().map(|v| v[0]).collect();
        assert_eq!(lens, vec![1.0, 5.0, 5.0, 6.0]);
    }

    #[test]
    fn the_least_recently_used_template_is_evicted_and_answers_stay_complete() {
        let (inner, cached) = setup(2);
        // Three new ids into a cache of two: all three still get their vectors.
        let v = cached
            .embed_templates(&[(1, "a"), (2, "bb"), (3, "ccc")])
            .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(cached.stats().len, 2);
        cached.embed_templates(&[(2, "bb"), (3, "ccc")]).unwrap();
        cached.embed_templates(&[(1, "a")]).unwrap();
        assert_eq!(
            inner.texts.load(Ordering::SeqCst),
            4,
            "1 was evicted, so embedded again"
        );
    }
}
