//! Nearest-cluster lookup at 10,000 clusters of 384 dimensions: the exact scan against the
//! HNSW graph, top 16 candidates per query (what `ClusterStore` asks for). Before timing,
//! prints the graph's build time and its recall@1 and recall@16 against the exact scan
//! (a result counts when it is as similar as the exact one, so ties do not count as misses).
//!
//! Two data sets: n-gram embeddings of distinct failure messages (structured, like real
//! centroids), and random unit vectors (nearly equidistant: the worst case for HNSW).
//!
//! Run: `CARGO_TARGET_DIR=/var/cache/lag-target/embed cargo bench -p udfs --bench nearest_cluster`
//! (`--features faiss` adds FAISS's flat inner-product index; `NEAREST_CLUSTER_SIZES=2000,50000`
//! other cluster counts).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use udfs::cluster::{ExactIndex, NgramEmbedder, VectorIndex, unit_vectors};
use udfs::hnsw::{HnswIndex, HnswParams};

const DIMS: usize = 384;
const QUERIES: usize = 500;
const K: usize = 16;

/// N-gram embeddings of distinct failure messages: structured like real centroids (many
/// near neighbours sharing words), unlike random vectors.
fn message_vectors(n: usize, offset: usize) -> Vec<Vec<f32>> {
    let e = NgramEmbedder::new(DIMS);
    let deps = [
        "postgres",
        "redis",
        "kafka",
        "payment-api",
        "etcd",
        "s3",
        "dns",
        "auth",
    ];
    let modes = [
        "connection refused",
        "timed out",
        "quota exceeded",
        "permission denied",
        "not found",
        "reset by peer",
    ];
    (offset..offset + n)
        .map(|i| {
            let text = format!(
                "{} {} in module {} while calling {} step {}",
                word(i),
                modes[i % modes.len()],
                word(i / 7 + 3),
                deps[(i / 3) % deps.len()],
                word(i / 11 + 5),
            );
            e.embed_one(&text)
        })
        .collect()
}

/// A digit-free word unique per `i` (digits would not change n-grams much).
fn word(mut i: usize) -> String {
    let mut w = String::new();
    for _ in 0..4 {
        w.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
    }
    w
}

fn compare(c: &mut Criterion, name: &str, data: &[Vec<f32>], queries: &[Vec<f32>]) {
    let mut exact = ExactIndex::default();
    for (id, v) in data.iter().enumerate() {
        exact.upsert(id, v);
    }
    let started = Instant::now();
    let hnsw = HnswIndex::build(
        HnswParams::default(),
        data.iter().enumerate().map(|(i, v)| (i, v.as_slice())),
    );
    let build = started.elapsed();

    // A hit is a result as similar as the exact one: distinct messages can embed to equal
    // vectors, and then which of the tied ids comes first is arbitrary.
    let (mut top1, mut topk) = (0usize, 0usize);
    for q in queries {
        let e = exact.search(q, K);
        let h = hnsw.search(q, K);
        let best = e.first().map_or(f32::INFINITY, |x| x.1);
        top1 += usize::from(h.first().is_some_and(|x| x.1 >= best - 1e-6));
        let kth = e.last().map_or(f32::INFINITY, |x| x.1);
        topk += h.iter().filter(|x| x.1 >= kth - 1e-6).count().min(e.len());
    }
    eprintln!(
        "{name}: {} clusters x {DIMS} dims, {:?}: HNSW build {:.2}s, recall@1 {:.3}, recall@{K} {:.3} over {} queries",
        data.len(),
        HnswParams::default(),
        build.as_secs_f64(),
        top1 as f64 / queries.len() as f64,
        topk as f64 / (queries.len() * K) as f64,
        queries.len(),
    );

    #[cfg(feature = "faiss")]
    let faiss = {
        let mut f = udfs::faiss_index::FaissIndex::new(DIMS).expect("faiss index");
        for (id, v) in data.iter().enumerate() {
            f.upsert(id, v);
        }
        f
    };

    let mut g = c.benchmark_group(format!("nearest_cluster_{}_{name}", data.len()));
    let mut i = 0;
    g.bench_function("exact scan, top 16", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(exact.search(black_box(&queries[i]), K))
        })
    });
    g.bench_function("hnsw, top 16", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(hnsw.search(black_box(&queries[i]), K))
        })
    });
    #[cfg(feature = "faiss")]
    g.bench_function("faiss flat IP, top 16", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(faiss.search(black_box(&queries[i]), K))
        })
    });
    g.finish();
}

fn nearest_cluster(c: &mut Criterion) {
    // `cargo test --all-targets` runs this unoptimised, once, without `--bench`: keep that
    // quick; the measured size is for `cargo bench`.
    // Other sizes: NEAREST_CLUSTER_SIZES=2000,50000 (the random set only runs at 10,000).
    let sizes: Vec<usize> = if std::env::args().any(|a| a == "--bench") {
        std::env::var("NEAREST_CLUSTER_SIZES")
            .ok()
            .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10_000])
    } else {
        vec![500]
    };
    for &clusters in &sizes {
        compare(
            c,
            "messages",
            &message_vectors(clusters, 0),
            &message_vectors(QUERIES, clusters),
        );
    }
    if sizes.contains(&10_000) || sizes.contains(&500) {
        let clusters = if sizes.contains(&500) { 500 } else { 10_000 };
        compare(
            c,
            "random",
            &unit_vectors(clusters, DIMS, 11),
            &unit_vectors(QUERIES, DIMS, 12),
        );
    }
}

criterion_group!(benches, nearest_cluster);
criterion_main!(benches);
