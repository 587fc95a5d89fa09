//! Golden tests for the candle embedder: for every entry of each shipped model's
//! `golden.jsonl`, the token ids equal the reference exactly and the embedding agrees with the
//! torch fp32 reference at cosine >= 0.99; batched (padded, length-sorted) runs equal single
//! runs for every entry.

#![allow(clippy::unwrap_used)] // test harness

use std::path::{Path, PathBuf};

use serde::Deserialize;
use udfs::embed::{CandleEmbedder, TextEmbedder};

#[derive(Deserialize)]
struct Golden {
    text: String,
    model_input: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn model_dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model)
}

fn golden(model: &str) -> Vec<Golden> {
    std::fs::read_to_string(model_dir(model).join("golden.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn check(model: &str) {
    let embedder = CandleEmbedder::load(&model_dir(model)).unwrap();
    let golden = golden(model);
    assert_eq!(golden.len(), 60, "{model}: golden entries");
    assert_eq!(embedder.dims(), 384);
    assert_eq!(embedder.name(), model);

    let texts: Vec<&str> = golden.iter().map(|g| g.text.as_str()).collect();
    let batched = embedder.embed_texts(&texts).unwrap();
    assert_eq!(batched.len(), texts.len());
    let mut worst = 1.0_f64;
    let mut worst_batch_diff = 0.0_f32;
    for (g, v) in golden.iter().zip(&batched) {
        let prefix = &embedder.manifest().query_prefix;
        assert_eq!(
            format!("{prefix}{}", g.text),
            g.model_input,
            "{model}: prefix"
        );
        assert_eq!(
            embedder.token_ids(&g.text).unwrap(),
            g.ids,
            "{model}: token ids of {:?}",
            g.text
        );
        let c = cosine(v, &g.embedding);
        assert!(c >= 0.99, "{model}: cosine {c} for {:?}", g.text);
        worst = worst.min(c);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{model}: norm {norm}");

        // Batches are padded to their longest text; the mask must make that invisible.
        let single = embedder.embed_texts(&[g.text.as_str()]).unwrap();
        let diff = single[0]
            .iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0_f32, f32::max);
        assert!(
            diff < 1e-4,
            "{model}: batch vs single differ by {diff} for {:?}",
            g.text
        );
        worst_batch_diff = worst_batch_diff.max(diff);
    }
    eprintln!(
        "{model}: {} texts, ids equal, min cosine {worst:.6}, max |batch - single| {worst_batch_diff:.2e}",
        golden.len()
    );
}

#[test]
fn multilingual_e5_matches_its_golden_embeddings() {
    check("multilingual-e5-small-int8");
}

#[test]
fn minilm_wordpiece_matches_its_golden_embeddings() {
    check("all-minilm-l6-v2-int8");
}

#[test]
fn long_texts_are_truncated_to_the_manifest_length() {
    let embedder = CandleEmbedder::load(&model_dir("all-minilm-l6-v2-int8")).unwrap();
    let long = "connection refused by upstream ".repeat(200);
    let ids = embedder.token_ids(&long).unwrap();
    assert_eq!(ids.len(), embedder.manifest().max_seq_len);
    let v = embedder.embed_texts(&[long.as_str(), "", "ok"]).unwrap();
    assert!(
        v.iter()
            .all(|v| v.len() == 384 && v.iter().all(|x| x.is_finite()))
    );
}

#[test]
fn the_default_embedder_is_the_shipped_e5_loaded_once() {
    let a = udfs::embed::default_embedder().unwrap();
    let b = udfs::embed::default_embedder().unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(a.name(), "multilingual-e5-small-int8");
    let v = a
        .embed_texts(&["数据库连接被拒绝", "database connection refused"])
        .unwrap();
    let related = cosine(&v[0], &v[1]);
    assert!(related > 0.8, "zh/en paraphrases at cosine {related}");
}

#[test]
fn a_missing_model_folder_is_a_clear_error() {
    let err = CandleEmbedder::load(Path::new("/nonexistent/model"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model/model.json"), "{err}");
}
