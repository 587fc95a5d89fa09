//! Request-path costs: slice matching with 0 / 10 / 500 policies, the cheap template id,
//! desensitization, and queueing an error event.
//!
//! `cargo bench -p enforcer --bench hot_path`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use enforcer::config::EventsConfig;
use enforcer::events::EventEmitter;
use enforcer::metrics::Metrics;
use enforcer::policy::{CompiledPolicies, RequestView};
use schemas::{
    Action, Conjunction, DimensionMatch, Dimensions, ErrorEvent, ErrorKind, Policy, PolicySnapshot,
    Ratio, Slice,
};

const MESSAGES: [&str; 4] = [
    "dial tcp 10.0.3.17:5432: connect: connection refused",
    "pq: could not connect to server: Connection refused. Is the server running on host \"10.0.3.17\" and accepting TCP/IP connections on port 5432?",
    "数据库连接被拒绝: 10.0.3.17:5432 (渠道 alipay, 请求 8812734)",
    "user 13812345678 alice@example.com token sk-abcdefghijklmnopqrstuvwxyz012345 failed card 4111 1111 1111 1111",
];

fn policies(n: usize) -> CompiledPolicies {
    let policies = (0..n)
        .map(|i| Policy {
            id: format!("p{i}"),
            cluster_id: format!("c{i}"),
            slice: Slice {
                any: vec![Conjunction {
                    route: "payments".into(),
                    all: vec![DimensionMatch {
                        key: "body:channel".parse().expect("key"),
                        value: format!("channel-{i}"),
                    }],
                }],
            },
            action: Action::Degrade,
            signature: [i as u64].into(),
            severity: Ratio::new(0.5).expect("ratio"),
            created_at_ms: 0,
            expires_at_ms: i64::MAX,
            shadow: false,
        })
        .collect();
    let snapshot = PolicySnapshot::new(1, 0, policies).expect("valid snapshot");
    CompiledPolicies::compile(&snapshot, &CompiledPolicies::default(), 0, false)
}

fn slice_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("slice_matching");
    let dims: Dimensions = [
        ("body:channel".to_owned(), "healthy".to_owned()),
        ("header:x-tenant".to_owned(), "acme".to_owned()),
    ]
    .into();
    let req = RequestView {
        route: "payments",
        method: "POST",
        upstream: "127.0.0.1:9000",
        dimensions: &dims,
    };
    for n in [0, 10, 500] {
        let compiled = policies(n);
        group.bench_with_input(BenchmarkId::new("no_match", n), &compiled, |b, compiled| {
            b.iter(|| black_box(compiled.judge(black_box(&req), 1, 1)));
        });
    }
    group.finish();
}

fn text(c: &mut Criterion) {
    let mut group = c.benchmark_group("text");
    group.bench_function("template_id", |b| {
        b.iter(|| {
            for m in MESSAGES {
                black_box(schemas::text::template_id(black_box(m)));
            }
        });
    });
    group.bench_function("desensitize", |b| {
        b.iter(|| {
            for m in MESSAGES {
                black_box(schemas::text::desensitize(black_box(m)));
            }
        });
    });
    group.finish();
}

fn event_enqueue(c: &mut Criterion) {
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let config = EventsConfig {
        queue_capacity: 1 << 16,
        ..EventsConfig::default()
    };
    let (emitter, mut rx) = EventEmitter::new(&config, metrics);
    let event = ErrorEvent {
        schema_version: schemas::EVENT_SCHEMA_VERSION,
        event_id: "0af7651916cd43dd8448eb211c80319c".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        timestamp_ms: 0,
        route: "payments".into(),
        method: "POST".into(),
        path: "/pay".into(),
        upstream: "127.0.0.1:9000".into(),
        status: 500,
        error_kind: ErrorKind::Status,
        message: MESSAGES[0].into(),
        stack: vec![],
        latency_ms: 3.0,
        template_id: 1,
        dimensions: [("body:channel".to_owned(), "alipay".to_owned())].into(),
        sample_rate: 1.0,
        policy_id: None,
    };
    c.bench_function("event_enqueue", |b| {
        b.iter(|| {
            black_box(emitter.sample_error(1, 0));
            emitter.error(black_box(event.clone()));
            // Keep the queue from filling: the sink drains in another task in production.
            while rx.try_recv().is_ok() {}
        });
    });
}

criterion_group!(benches, slice_matching, text, event_enqueue);
criterion_main!(benches);
