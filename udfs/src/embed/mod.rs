//! Text embeddings: the `Embedder` trait, the built-in candle model and an HTTP backend.
