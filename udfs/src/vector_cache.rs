//! A vector cache shared beyond this process, keyed by `(model name, template id)`: a
//! template another replica already embedded is not embedded again here. The clusterer asks
//! it before running the model and offers it every vector it makes
//! ([`FailureClusterer::set_vector_cache`](crate::clusterer::FailureClusterer::set_vector_cache)).
//!
//! Implementations never fail the caller: an unreachable or wrong answer is a miss (`None`),
//! a failed store is dropped. The pipeline's Redis implementation is
//! `pipeline::redis_cache::RedisVectorCache`.

/// Vectors by `(model, template id)`, shared by the pipeline's replicas.
pub trait VectorCache: Send + Sync {
    /// The vector `model` gave the template, if any replica stored one. Any failure is `None`.
    fn get(&self, model: &str, template_id: u64) -> Option<Vec<f32>>;
    /// Offers a fresh vector; failures are the implementation's to count, never the caller's.
    fn put(&self, model: &str, template_id: u64, vector: &[f32]);
}
