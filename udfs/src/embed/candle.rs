//! The built-in model: a BERT-family encoder from a GGUF file, run with candle on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::cluster::{EmbedFailure, TextEmbedder};

/// Texts per forward pass. Texts are sorted by token count first, so a batch pads little.
pub const BATCH: usize = 32;

/// Why a model folder could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is missing, unreadable or not what it should be.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The manifest asks for something this loader does not do.
    #[error("{path}: {message}")]
    Unsupported {
        /// The manifest.
        path: PathBuf,
        /// What is unsupported.
        message: String,
    },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// How token vectors become one text vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the positions where the attention mask is 1, specials included (E5, MiniLM).
    Mean,
    /// The first token's vector (BGE).
    Cls,
}

/// The parts of a model folder's `model.json` the loader uses (the file has more, for people).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Model name: the embedder's [`TextEmbedder::name`], used in cache keys and calibration.
    pub name: String,
    /// Vector length; must equal the model's hidden size.
    pub dim: usize,
    /// Longest input in tokens, specials included; longer texts are truncated.
    pub max_seq_len: usize,
    /// `mean` or `cls`.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised (the [`TextEmbedder`] contract needs `true`).
    pub normalize: bool,
    /// Put before every text (E5 wants `query: ` for symmetric matching; empty for others).
    #[serde(default)]
    pub query_prefix: String,
}

impl Manifest {
    /// Reads `model.json` from a model folder.
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("model.json");
        let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
        let manifest: Self = serde_json::from_slice(&bytes).map_err(|e| file_err(&path, e))?;
        if !manifest.normalize {
            return Err(LoadError::Unsupported {
                path,
                message: "normalize is false; cosine by dot product needs unit vectors".into(),
            });
        }
        Ok(manifest)
    }
}

/// A BERT-family model run with candle on the CPU. Load once and share (`Arc`): it is
/// `Send + Sync`, and [`crate::embed::default_embedder`] keeps one per process.
pub struct CandleEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    manifest: Manifest,
    pad_id: u32,
    device: Device,
}

impl std::fmt::Debug for CandleEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEmbedder")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl CandleEmbedder {
    /// Loads a model folder: `model.json` (the manifest), `config.candle.json`,
    /// `tokenizer.json` and `model.gguf`. Every GGUF tensor is dequantized to f32, because
    /// candle-transformers' BERT uses plain `Linear`/`Embedding`: memory is the f32 size.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let device = Device::Cpu;
        let manifest = Manifest::read(dir)?;

        let config_path = dir.join("config.candle.json");
        let config_json = std::fs::read(&config_path).map_err(|e| file_err(&config_path, e))?;
        let config: Config =
            serde_json::from_slice(&config_json).map_err(|e| file_err(&config_path, e))?;
        if config.hidden_size != manifest.dim {
            return Err(LoadError::Unsupported {
                path: dir.join("model.json"),
                message: format!(
                    "dim {} but the model's hidden size is {}",
                    manifest.dim, config.hidden_size
                ),
            });
        }
        let pad_id = u32::try_from(config.pad_token_id).map_err(|e| file_err(&config_path, e))?;

        // The tokenizer applies its own normalizers, pre-tokenizer and special-token template;
        // padding is done per batch below, so only truncation is set here.
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| file_err(&tokenizer_path, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: manifest.max_seq_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| file_err(&tokenizer_path, e))?;

        let gguf_path = dir.join("model.gguf");
        let mut file = std::fs::File::open(&gguf_path).map_err(|e| file_err(&gguf_path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| file_err(&gguf_path, e))?;
        let mut weights = HashMap::new();
        for name in content.tensor_infos.keys() {
            let quantized = content
                .tensor(&mut file, name, &device)
                .map_err(|e| file_err(&gguf_path, e))?;
            let f32_weights = quantized
                .dequantize(&device)
                .map_err(|e| file_err(&gguf_path, e))?;
            weights.insert(name.clone(), f32_weights);
        }
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| file_err(&gguf_path, e))?;

        Ok(Self {
            model,
            tokenizer,
            manifest,
            pad_id,
            device,
        })
    }

    /// The manifest the model was loaded with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Token ids the model sees for `text`: prefix and special tokens included, truncated.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedFailure> {
        Ok(self.encode(text)?.get_ids().to_vec())
    }

    fn encode(&self, text: &str) -> Result<Encoding, EmbedFailure> {
        let input = format!("{}{text}", self.manifest.query_prefix);
        self.tokenizer
            .encode(input, true)
            .map_err(|e| EmbedFailure(format!("tokenizer: {e}")))
    }

    /// One padded forward pass over `batch`: `[b, n]` ids and mask → `[b, dim]` vectors.
    fn forward(&self, batch: &[&Encoding]) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = batch.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * n);
        let mut mask = Vec::with_capacity(batch.len() * n);
        for enc in batch {
            ids.extend_from_slice(enc.get_ids());
            ids.resize(ids.len() + n - enc.len(), self.pad_id);
            mask.extend_from_slice(enc.get_attention_mask());
            mask.resize(mask.len() + n - enc.len(), 0);
        }
        let ids = Tensor::from_vec(ids, (batch.len(), n), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), n), &self.device)?;
        // Token type 0 everywhere: single texts, and the GGUF keeps the type table separate.
        let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let pooled = match self.manifest.pooling {
            Pooling::Mean => mean_pool(&hidden, &mask)?,
            Pooling::Cls => cls_pool(&hidden)?,
        };
        l2_normalize(&pooled)?.to_vec2::<f32>()
    }
}

/// Mean of the token vectors where the mask is 1: `[b, n, h]`, `[b, n]` → `[b, h]`.
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    hidden
        .broadcast_mul(&mask)?
        .sum(1)?
        .broadcast_div(&mask.sum(1)?)
}

/// The first token's vector: `[b, n, h]` → `[b, h]`.
fn cls_pool(hidden: &Tensor) -> candle_core::Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

/// Rows scaled to unit length: `[b, h]` → `[b, h]`.
fn l2_normalize(v: &Tensor) -> candle_core::Result<Tensor> {
    v.broadcast_div(&v.sqr()?.sum_keepdim(1)?.sqrt()?)
}

impl TextEmbedder for CandleEmbedder {
    fn dims(&self) -> usize {
        self.manifest.dim
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        let encodings = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        // Batch texts of similar length together, then put the vectors back in input order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let vectors = self
                .forward(&batch)
                .map_err(|e| EmbedFailure(format!("{}: {e}", self.manifest.name)))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn name(&self) -> &str {
        &self.manifest.name
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn mean_pool_ignores_padded_positions() {
        // Two texts of 2 tokens, hidden 2; the second text's second token is padding.
        let hidden = t(&[1., 2., 3., 4., 5., 6., 100., 100.], &[2, 2, 2]);
        let mask = Tensor::from_vec(vec![1u32, 1, 1, 0], (2, 2), &Device::Cpu).unwrap();
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![2., 3.], vec![5., 6.]]);
    }

    #[test]
    fn cls_pool_takes_the_first_token() {
        let hidden = t(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
        let pooled = cls_pool(&hidden).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![1., 2.], vec![5., 6.]]);
    }

    #[test]
    fn l2_normalize_gives_unit_rows() {
        let v = l2_normalize(&t(&[3., 4., 0., 2.], &[2, 2]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(v, vec![vec![0.6, 0.8], vec![0., 1.]]);
    }

    #[test]
    fn manifest_pooling_must_be_mean_or_cls() {
        let ok: Manifest = serde_json::from_str(
            r#"{"name":"m","dim":4,"max_seq_len":8,"pooling":"cls","normalize":true}"#,
        )
        .unwrap();
        assert_eq!(ok.pooling, Pooling::Cls);
        assert_eq!(ok.query_prefix, "");
        let bad = serde_json::from_str::<Manifest>(
            r#"{"name":"m","dim":4,"max_seq_len":8,"pooling":"max","normalize":true}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("max"));
    }
}
