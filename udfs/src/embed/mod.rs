//! Text embeddings behind [`TextEmbedder`] (defined in [`crate::cluster`], which consumes it):
//!
//! * [`CandleEmbedder`] loads a model folder — `model.json` (the manifest: pooling `mean` or
//!   `cls`, normalisation, query prefix, max length), `config.candle.json`, `tokenizer.json`,
//!   `model.gguf` — and runs candle-transformers' BERT on the CPU. E5-style (Unigram, mean
//!   pooling, `query: ` prefix) and BGE/MiniLM-style (WordPiece) models load through the same
//!   code. The default model ships in `udfs/models/multilingual-e5-small-int8`.
//! * [`HttpEmbedder`] calls an OpenAI-compatible `/v1/embeddings` server — how production
//!   runs BAAI's bge-small-zh-v1.5, e.g. behind text-embeddings-inference.
//! * [`CachedEmbedder`] wraps either with an LRU cache keyed by template id, so the model runs
//!   once per new template, never per event.
//!
//! All vectors are L2-normalised, so cosine similarity is a dot product.

mod cache;
mod candle;
mod http;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use self::cache::{CacheStats, CachedEmbedder};
pub use self::candle::{BATCH, CandleEmbedder, LoadError, Manifest, Pooling};
pub use self::http::HttpEmbedder;
pub use crate::cluster::{EmbedFailure, TextEmbedder};

/// Environment variable naming the default model's folder.
pub const MODEL_DIR_ENV: &str = "LAG_MODEL_DIR";

/// Where the default model lives: `$LAG_MODEL_DIR` if set, else this crate's own copy,
/// `<udfs>/models/multilingual-e5-small-int8`. The fallback path is fixed at build time
/// (`CARGO_MANIFEST_DIR`), which suits development and tests; deployed binaries set
/// `LAG_MODEL_DIR`.
pub fn default_model_dir() -> PathBuf {
    std::env::var_os(MODEL_DIR_ENV).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("models/multilingual-e5-small-int8"),
        PathBuf::from,
    )
}

/// The default model, loaded on first use and then shared by the whole process (the SQL
/// functions hold one model, not one per call). A load failure is kept too: every caller
/// gets the same error, and the load is not retried.
pub fn default_embedder() -> Result<Arc<CandleEmbedder>, &'static LoadError> {
    static MODEL: OnceLock<Result<Arc<CandleEmbedder>, LoadError>> = OnceLock::new();
    MODEL
        .get_or_init(|| CandleEmbedder::load(&default_model_dir()).map(Arc::new))
        .as_ref()
        .map(Arc::clone)
}
