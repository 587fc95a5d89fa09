//! The SQL-callable shapes: plain functions whose types both engines accept (Arroyo's
//! `#[udf]` allows scalars, strings, bytes and their `Option`s). A bad row gives `None`,
//! never a panic. The DataFusion and Arroyo adapters wrap these.
//!
//! `template_id`, `template` and `cluster_of` share one process-wide [`FailureClusterer`]
//! (the miner and the cluster index live as long as the process); the embedder is the one
//! passed to [`install_embedder`] before first use, else the model-free n-gram embedder. In
//! distributed mode [`install_shared_index`] attaches the replicas' shared cluster index.
//! With [`install_vector_cache`] (pipeline replicas sharing Redis), a new template's vector is
//! looked up there before that embedder runs.

use std::sync::{Arc, Mutex, OnceLock};

use schemas::Dimensions;
use serde::{Deserialize, Serialize};

use crate::cluster::{NgramEmbedder, TextEmbedder};
use crate::clusterer::{ClustererStats, FailureClusterer, SYNC_BATCH};
use crate::shared::{SharedClusterIndex, SharedIndexError};
use crate::vector_cache::VectorCache;

/// Longest input the functions look at; longer text is cut (at a char boundary).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

static EMBEDDER: OnceLock<Arc<dyn TextEmbedder>> = OnceLock::new();
static CLUSTERER: OnceLock<Mutex<FailureClusterer>> = OnceLock::new();
static VECTOR_CACHE: OnceLock<Arc<dyn VectorCache>> = OnceLock::new();

/// Sets the process-wide embedder; `false` when one was already in use.
pub fn install_embedder(embedder: Arc<dyn TextEmbedder>) -> bool {
    EMBEDDER.set(embedder).is_ok()
}

/// Shares the process-wide clusterer's vectors with other replicas (set before first use);
/// `false` when one was already set.
pub fn install_vector_cache(cache: Arc<dyn VectorCache>) -> bool {
    VECTOR_CACHE.set(cache).is_ok()
}

fn embedder() -> &'static Arc<dyn TextEmbedder> {
    EMBEDDER.get_or_init(|| Arc::new(NgramEmbedder::new(384)))
}

fn with_clusterer<T>(f: impl FnOnce(&mut FailureClusterer) -> T) -> T {
    let cell = CLUSTERER.get_or_init(|| {
        let mut c = FailureClusterer::new(Arc::clone(embedder()));
        if let Some(cache) = VECTOR_CACHE.get() {
            c.set_vector_cache(Arc::clone(cache));
        }
        Mutex::new(c)
    });
    // A panic elsewhere while holding the lock leaves consistent-enough state for lookups.
    let mut guard = cell
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// Attaches a shared cluster index to the process-wide clusterer (install the embedder
/// first) and restores the templates it holds; returns how many. On an error the index
/// stays attached and later look-ups go through it.
pub fn install_shared_index(index: Box<dyn SharedClusterIndex>) -> Result<usize, SharedIndexError> {
    with_clusterer(|c| c.attach_shared_index(index))
}

/// Hands the shared cluster index up to [`SYNC_BATCH`] of the templates the process-wide
/// clusterer assigned locally while the index failed ([`FailureClusterer::sync_shared`]);
/// returns how many.
pub fn sync_shared_index() -> usize {
    with_clusterer(|c| c.sync_shared(SYNC_BATCH))
}

/// What the process-wide clusterer did so far.
pub fn clusterer_stats() -> ClustererStats {
    with_clusterer(|c| c.stats())
}

/// The desensitized text's vector (the one `cluster_of` would compute for a new template).
pub fn embed(text: &str) -> Option<Vec<f32>> {
    let text = clean(text)?;
    let private = schemas::text::desensitize(text);
    embedder().embed_texts(&[private.as_ref()]).ok()?.pop()
}

fn clean(text: &str) -> Option<&str> {
    let t = schemas::text::truncate_at_char_boundary(text, MAX_INPUT_BYTES);
    (!t.trim().is_empty()).then_some(t)
}

/// `mask_pii(text) -> text`: the shared desensitizer.
pub fn mask_pii(text: Option<&str>) -> Option<String> {
    Some(schemas::text::desensitize(text?).into_owned())
}

/// `template_id(text) -> bigint`: the mined template's id (bit-cast to signed).
pub fn template_id(text: Option<&str>) -> Option<i64> {
    let text = clean(text?)?;
    with_clusterer(|c| Some(c.template(text).0 as i64))
}

/// `template(text) -> text`: the mined template.
pub fn template(text: Option<&str>) -> Option<String> {
    let text = clean(text?)?;
    with_clusterer(|c| Some(c.template(text).1))
}

/// `cluster_of(text) -> text`: embed (new templates only) and assign, fused.
pub fn cluster_of(text: Option<&str>) -> Option<String> {
    let text = clean(text?)?;
    with_clusterer(|c| c.process(text).ok().map(|a| a.cluster_id))
}

/// `embedding(text) -> bytea`: the desensitized text's vector as packed little-endian f32.
pub fn embedding(text: Option<&str>) -> Option<Vec<u8>> {
    Some(pack_f32(&embed(text?)?))
}

/// One request as [`request_row`] encodes it for the slice learner (which decodes it back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    /// The configured route name.
    pub route: String,
    /// HTTP method (empty when unknown).
    pub method: String,
    /// Upstream host (empty when unknown).
    pub upstream: String,
    /// The request's dimension values.
    #[serde(default)]
    pub dimensions: Dimensions,
    /// Probability with which the request was sampled.
    pub sample_rate: f64,
}

/// `request_row(route, method, upstream, dimensions_json, sample_rate) -> text`: one request's
/// attributes as a JSON text, for `array_agg` lists the slice learner reads. NULL when `route`
/// or `sample_rate` is NULL; a NULL method or upstream reads as empty; dimensions that are not
/// a flat JSON string map contribute none rather than losing the row.
pub fn request_row(
    route: Option<&str>,
    method: Option<&str>,
    upstream: Option<&str>,
    dimensions: Option<&str>,
    sample_rate: Option<f64>,
) -> Option<String> {
    let row = RequestRow {
        route: route?.to_owned(),
        method: method.unwrap_or_default().to_owned(),
        upstream: upstream.unwrap_or_default().to_owned(),
        dimensions: dimensions
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default(),
        sample_rate: sample_rate?,
    };
    serde_json::to_string(&row).ok()
}

/// Packs a vector as little-endian f32 bytes.
pub fn pack_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Unpacks little-endian f32 bytes; `None` when the length is not a multiple of 4.
pub fn unpack_f32(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_answer_and_bad_rows_give_none() {
        assert_eq!(template_id(None), None);
        assert_eq!(template(Some("   ")), None);
        assert_eq!(cluster_of(Some("")), None);
        let t = template(Some("dial tcp 10.0.0.1:5432: connect: connection refused"));
        assert_eq!(
            t.as_deref(),
            Some("dial tcp <IP>:5432: connect: connection refused")
        );
        let id = template_id(Some("dial tcp 10.0.0.2:5432: connect: connection refused"));
        assert_eq!(
            id,
            Some(
                schemas::text::template_id("dial tcp 10.9.9.9:5432: connect: connection refused")
                    as i64
            )
        );
        let a = cluster_of(Some("redis: connection refused 10.0.0.1:6379"));
        let b = cluster_of(Some("Redis 连接被拒绝 10.0.0.2:6379"));
        assert!(a.is_some());
        assert_eq!(a, b);
        let e = embedding(Some("timeout")).unwrap_or_default();
        assert_eq!(unpack_f32(&e).map(|v| v.len()), Some(384));
        assert_eq!(
            mask_pii(Some("call 13812345678")).as_deref(),
            Some("call <PHONE>")
        );
        let huge = "x".repeat(1 << 20);
        assert!(template(Some(&huge)).is_some());
    }

    #[test]
    fn request_rows_round_trip_and_tolerate_bad_dimensions() {
        let text = request_row(
            Some("orders"),
            None,
            Some("pay"),
            Some(r#"{"body:channel":"alipay"}"#),
            Some(0.5),
        )
        .unwrap_or_default();
        let row: RequestRow = serde_json::from_str(&text).expect("decodes");
        assert_eq!(row.route, "orders");
        assert_eq!(row.method, "");
        assert_eq!(
            row.dimensions.get("body:channel").map(String::as_str),
            Some("alipay")
        );
        assert_eq!(row.sample_rate, 0.5);
        let bad = request_row(Some("r"), Some("GET"), Some("u"), Some("[1,2]"), Some(1.0));
        assert!(bad.is_some_and(|t| t.contains(r#""dimensions":{}"#)));
        assert_eq!(request_row(None, None, None, None, Some(1.0)), None);
        assert_eq!(request_row(Some("r"), None, None, None, None), None);
    }
}
