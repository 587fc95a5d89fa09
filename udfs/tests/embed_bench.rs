//! Throughput and memory of the candle embedder (ignored by default; numbers in
//! `udfs/BENCHMARKS.md`). Run one model per process, in release, so the peak RSS is that
//! model's alone:
//!
//! ```text
//! cargo test -p udfs --release --test embed_bench -- --ignored --nocapture e5
//! cargo test -p udfs --release --test embed_bench -- --ignored --nocapture minilm
//! ```
//!
//! The texts are the model's 60 golden strings (English and Chinese error/log lines), each
//! used twice: batch 1 embeds them one call per text; batch 32 passes 32 texts per call (the
//! embedder sorts a call's texts by length, so that is one padded forward pass per call).

#![allow(clippy::unwrap_used)] // test harness

use std::path::Path;
use std::time::Instant;

use udfs::embed::{CandleEmbedder, TextEmbedder};

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn bench(model: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model);
    let started = Instant::now();
    let embedder = CandleEmbedder::load(&dir).unwrap();
    let load = started.elapsed();
    let rss_loaded = status_kb("VmRSS:");

    let texts: Vec<String> = std::fs::read_to_string(dir.join("golden.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let texts: Vec<&str> = texts.iter().chain(&texts).map(String::as_str).collect();
    let tokens: usize = texts
        .iter()
        .map(|t| embedder.token_ids(t).unwrap().len())
        .sum();
    embedder.embed_texts(&texts[..8]).unwrap(); // warm-up

    let started = Instant::now();
    for t in &texts {
        embedder.embed_texts(&[t]).unwrap();
    }
    let batch1 = texts.len() as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for chunk in texts.chunks(32) {
        embedder.embed_texts(chunk).unwrap();
    }
    let batch32 = texts.len() as f64 / started.elapsed().as_secs_f64();

    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!(
        "| {model} | {threads} | {:.1} | {batch1:.1} | {batch32:.1} | {:.2} s | {} MB | {} MB |",
        tokens as f64 / texts.len() as f64,
        load.as_secs_f64(),
        rss_loaded / 1024,
        status_kb("VmHWM:") / 1024,
    );
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn e5_throughput_and_memory() {
    bench("multilingual-e5-small-int8");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn minilm_throughput_and_memory() {
    bench("all-minilm-l6-v2-int8");
}
