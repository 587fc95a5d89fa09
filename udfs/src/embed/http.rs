//! An OpenAI-compatible `/v1/embeddings` client: how production runs BAAI's
//! bge-small-zh-v1.5, e.g. behind text-embeddings-inference.
//!
//! Blocking on purpose: [`TextEmbedder`] is synchronous (SQL UDFs call it), and it runs once
//! per new template, not per event, so a blocking client with a hard timeout is the simplest
//! correct design; an async client would need a runtime inside a sync call.

use std::time::Duration;

use serde::Deserialize;

use crate::cluster::{EmbedFailure, TextEmbedder};

/// A client for one model on one OpenAI-compatible embeddings server.
#[derive(Debug)]
pub struct HttpEmbedder {
    url: String,
    model: String,
    dims: usize,
    agent: ureq::Agent,
}

#[derive(Debug, Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Debug, Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    index: usize,
}

impl HttpEmbedder {
    /// `base_url` like `http://127.0.0.1:8080` (`/v1/embeddings` is appended), `model` as the
    /// server names it, `dims` the vector length it must return, `timeout` for the whole call
    /// (connect, send, receive).
    pub fn new(base_url: &str, model: &str, dims: usize, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            url: format!("{}/v1/embeddings", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            dims,
            agent,
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> EmbedFailure {
        EmbedFailure(format!("POST {}: {message}", self.url))
    }
}

impl TextEmbedder for HttpEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::json!({ "model": self.model, "input": texts });
        let mut response = self
            .agent
            .post(&self.url)
            .send_json(&body)
            .map_err(|e| self.fail(e))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.fail(e))?;
        if !status.is_success() {
            let excerpt: String = text.chars().take(200).collect();
            return Err(self.fail(format!("status {status}: {excerpt}")));
        }
        let parsed: EmbeddingsResponse = serde_json::from_str(&text)
            .map_err(|e| self.fail(format!("malformed response: {e}")))?;
        if parsed.data.len() != texts.len() {
            return Err(self.fail(format!(
                "{} vectors for {} texts",
                parsed.data.len(),
                texts.len()
            )));
        }
        // The server may answer in any order; `index` says which input a vector belongs to.
        let mut out = vec![Vec::new(); texts.len()];
        for item in parsed.data {
            if item.embedding.len() != self.dims {
                return Err(self.fail(format!(
                    "vector of {} dims, expected {}",
                    item.embedding.len(),
                    self.dims
                )));
            }
            let slot = out
                .get_mut(item.index)
                .ok_or_else(|| self.fail(format!("index {} out of range", item.index)))?;
            if !slot.is_empty() {
                return Err(self.fail(format!("index {} twice", item.index)));
            }
            let norm = item.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            if !norm.is_finite() || norm == 0.0 {
                return Err(self.fail(format!("zero or non-finite vector at index {}", item.index)));
            }
            *slot = item.embedding.iter().map(|x| x / norm).collect();
        }
        Ok(out)
    }

    fn name(&self) -> &str {
        &self.model
    }
}
