//! Known templates through mask → template → cluster lookup (the per-event path), plus the
//! shared masking functions alone.
//!
//! Run: `CARGO_TARGET_DIR=/var/cache/lag-target/text cargo bench -p udfs --bench templates`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use udfs::cluster::NgramEmbedder;
use udfs::clusterer::FailureClusterer;

fn corpus() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/corpus.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

fn known_templates(c: &mut Criterion) {
    let lines = corpus();
    assert!(!lines.is_empty(), "corpus not found");
    let mut clusterer = FailureClusterer::new(Arc::new(NgramEmbedder::new(384)));
    for l in &lines {
        let _ = clusterer.process(l);
    }
    clusterer.recluster();
    let mut g = c.benchmark_group("known_templates");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("mask+template+cluster (corpus pass)", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(clusterer.process(black_box(l)));
            }
        })
    });
    g.bench_function("desensitize (corpus pass)", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(schemas::text::desensitize(black_box(l)));
            }
        })
    });
    g.bench_function("cheap template id (corpus pass)", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(schemas::text::template_id(black_box(l)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, known_templates);
criterion_main!(benches);
