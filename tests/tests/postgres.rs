//! The PostgreSQL + pgvector adapter against a real server: migrations, the shared cluster
//! index two replicas use, restore after a restart, event retention, similar-cluster
//! search (also over the operator API), and the fallback when the server is unreachable.
//!
//! Needs `LAG_PG_URL` (`bash deploy/services.sh up postgres`, then
//! `eval "$(bash deploy/services.sh env)"`); skipped with a printed reason when unset, failed
//! when unset under `CI=true`. Every test works in its own schema (`lag_test_<name>_...`),
//! dropped at the end, so tests run in parallel on the shared database.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should abort the test loudly

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use e2e::require_service;
use pipeline::postgres::events;
use pipeline::postgres::index::PgClusterIndex;
use pipeline::postgres::{NEAREST_SQL, PgMetrics, PgSettings, PgStore, from_db_id};
use schemas::ErrorEvent;
use tokio_postgres::NoTls;
use udfs::cluster::{EmbedFailure, NgramEmbedder, TextEmbedder};
use udfs::clusterer::FailureClusterer;

/// Two families of failures, each phrased several ways, and two loners.
const MESSAGES: &[&str] = &[
    "redis: connection refused 10.0.0.1:6379",
    "payment channel alipay declined order 1234: insufficient funds",
    "Redis 连接被拒绝 10.0.0.2:6379",
    "disk full: no space left on device /var/lib/data",
    "dial tcp 10.0.0.9:6379: connect: connection refused (redis)",
    "payment declined by channel alipay for order 77",
    "TLS handshake failed: certificate expired for api.example.com",
    "redis: connection refused 10.0.0.3:6379",
];

fn pg_url() -> Option<String> {
    require_service("LAG_PG_URL")
}

/// A schema no other test (or earlier run) uses.
fn unique_schema(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("lag_test_{test}_{}_{nanos}", std::process::id())
}

fn settings(url: &str, schema: &str) -> PgSettings {
    let mut s = PgSettings::new(url);
    s.schema = Some(schema.to_owned());
    s.request_timeout = Duration::from_secs(10);
    s
}

fn store(url: &str, schema: &str) -> PgStore {
    let metrics = PgMetrics::register(&prometheus::Registry::new()).unwrap();
    PgStore::new(settings(url, schema), metrics).unwrap()
}

/// A clusterer deciding new templates through PostgreSQL, as one pipeline replica does.
fn replica(url: &str, schema: &str, embedder: Arc<dyn TextEmbedder>) -> (FailureClusterer, usize) {
    let index = PgClusterIndex::start(store(url, schema)).unwrap();
    let mut c = FailureClusterer::new(embedder);
    let restored = c.attach_shared_index(Box::new(index)).unwrap();
    (c, restored)
}

fn ngram() -> Arc<dyn TextEmbedder> {
    Arc::new(NgramEmbedder::new(384))
}

/// Our own connection, with the test's schema first on the search path.
async fn client(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path TO {schema}, public"))
        .await
        .unwrap();
    client
}

async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

/// Drops the schema even when the test fails (on its own thread: tests may be async).
struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, schema) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || runtime().block_on(drop_schema(&url, &schema))).join();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_once_with_hnsw_indexes() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("migrate");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    // Two replicas starting together: one applies, the other waits on the lock and finds
    // nothing left to do.
    let (a, b) = (store(&url, &schema), store(&url, &schema));
    let (ra, rb) = tokio::join!(a.ready(), b.ready());
    let mut applied = ra.unwrap();
    applied.extend(rb.unwrap());
    println!("applied: {applied:?}");
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(applied[0].contains("initial_schema"), "{applied:?}");
    assert!(store(&url, &schema).ready().await.unwrap().is_empty());

    let c = client(&url, &schema).await;
    let tables: BTreeSet<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "clusters",
        "templates",
        "vectors",
        "error_events",
        "cluster_members",
        "policies",
        "metrics",
        "refinery_schema_history",
    ] {
        assert!(tables.contains(t), "{t} missing from {tables:?}");
    }
    let indexes: HashMap<String, String> = c
        .query(
            "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, column) in [
        ("clusters_centroid_hnsw", "centroid_vector"),
        ("vectors_hnsw", "vector_data"),
    ] {
        let def = indexes
            .get(name)
            .unwrap_or_else(|| panic!("{name}: {indexes:?}"));
        println!("{def}");
        assert!(def.contains("USING hnsw"), "{def}");
        assert!(
            def.contains(&format!("{column} vector_cosine_ops")),
            "{def}"
        );
    }
    let dims: String = c
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'clusters'::regclass AND attname = 'centroid_vector'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dims, "vector(384)");
    drop_schema(&url, &schema).await;
}

#[test]
fn two_replicas_racing_assign_the_same_clusters() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("race");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    // Both replicas meet every message at the same moment, in orders that interleave
    // differently: each new template is raced.
    let start = Arc::new(Barrier::new(2));
    let run = |reverse: bool| {
        let (url, schema, start) = (url.clone(), schema.clone(), Arc::clone(&start));
        std::thread::spawn(move || {
            let (mut c, _) = replica(&url, &schema, ngram());
            let mut order: Vec<usize> = (0..MESSAGES.len()).collect();
            if reverse {
                order.reverse();
            }
            start.wait();
            let mut out = vec![String::new(); MESSAGES.len()];
            for i in order {
                out[i] = c.process(MESSAGES[i]).unwrap().cluster_id;
            }
            (out, c.stats())
        })
    };
    let (a, b) = (run(false), run(true));
    let (a, stats_a) = a.join().unwrap();
    let (b, stats_b) = b.join().unwrap();
    println!("replica a: {a:?} {stats_a:?}\nreplica b: {b:?} {stats_b:?}");
    assert_eq!(a, b, "both replicas assign every message the same cluster");
    assert_eq!(stats_a.shared_failures + stats_b.shared_failures, 0);
    // The families stay together, and apart from each other.
    assert_eq!(a[0], a[2], "redis refused, English and Chinese");
    assert_eq!(a[0], a[7]);
    assert_eq!(a[1], a[5], "alipay declined");
    assert_ne!(a[0], a[1]);
    assert_ne!(a[3], a[6]);

    let rt = runtime();
    rt.block_on(async {
        let c = client(&url, &schema).await;
        let stored: HashMap<u64, String> = c
            .query("SELECT template_id, cluster_id FROM templates", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (from_db_id(r.get(0)), r.get(1)))
            .collect();
        let distinct: BTreeSet<&String> = a.iter().collect();
        let clusters: i64 = c
            .query_one("SELECT count(*) FROM clusters", &[])
            .await
            .unwrap()
            .get(0);
        println!("templates {} clusters {clusters}", stored.len());
        assert_eq!(
            clusters as usize,
            distinct.len(),
            "no orphan clusters from the race"
        );
        for (i, m) in MESSAGES.iter().enumerate() {
            let id = schemas::text::template_id(m);
            if let Some(cluster) = stored.get(&id) {
                assert_eq!(cluster, &a[i], "{m}");
            }
        }
        // Centroids are unit length and count each template once.
        let rows = c
            .query(
                "SELECT c.template_count, (SELECT count(*) FROM templates t \
                 WHERE t.cluster_id = c.cluster_id)::int, \
                 (c.centroid_vector <#> c.centroid_vector)::float8 FROM clusters c",
                &[],
            )
            .await
            .unwrap();
        for r in rows {
            let (count, members, neg_norm2): (i32, i32, f64) = (r.get(0), r.get(1), r.get(2));
            assert_eq!(count, members);
            assert!((neg_norm2 + 1.0).abs() < 1e-4, "{neg_norm2}");
        }
        drop_schema(&url, &schema).await;
    });
}

/// Fails every call: proves a path does not embed.
struct NoEmbedder;

impl TextEmbedder for NoEmbedder {
    fn dims(&self) -> usize {
        384
    }
    fn embed_texts(&self, _: &[&str]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        Err(EmbedFailure(
            "a restored replica must not embed known templates".into(),
        ))
    }
    fn name(&self) -> &str {
        "ngram"
    }
}

#[test]
fn a_restarted_replica_restores_clusters_without_embedding() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("restore");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    let (mut first, restored) = replica(&url, &schema, ngram());
    assert_eq!(restored, 0);
    let before: Vec<String> = MESSAGES
        .iter()
        .map(|m| first.process(m).unwrap().cluster_id)
        .collect();
    let templates = first.stats().embedded as usize;
    drop(first);

    let (mut restarted, restored) = replica(&url, &schema, Arc::new(NoEmbedder));
    println!("restored {restored} templates");
    assert_eq!(restored, templates);
    // Other wording of the same templates (new numbers, addresses): no embedding needed.
    let again = [
        (0, "redis: connection refused 10.9.9.9:6379"),
        (
            1,
            "payment channel alipay declined order 98765: insufficient funds",
        ),
        (3, "disk full: no space left on device /srv/other"),
    ];
    for (i, m) in again {
        assert_eq!(restarted.process(m).unwrap().cluster_id, before[i], "{m}");
    }
    assert_eq!(restarted.stats().embedded, 0);
    assert!(
        restarted.stats().from_shared >= 3,
        "{:?}",
        restarted.stats()
    );
    runtime().block_on(drop_schema(&url, &schema));
}

fn event(id: &str, template_of: &str, age: Duration) -> ErrorEvent {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ErrorEvent {
        schema_version: schemas::event::EVENT_SCHEMA_VERSION,
        event_id: id.into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        timestamp_ms: now - age.as_millis() as i64,
        route: "payments".into(),
        method: "POST".into(),
        path: "/pay".into(),
        upstream: "127.0.0.1:18081".into(),
        status: 503,
        error_kind: schemas::event::ErrorKind::Status,
        message: template_of.into(),
        stack: vec!["at pay (pay.rs:1)".into()],
        latency_ms: 3.0,
        template_id: schemas::text::template_id(template_of),
        dimensions: Default::default(),
        sample_rate: 1.0,
        policy_id: None,
    }
}

#[test]
fn events_link_to_clusters_and_retention_deletes_only_old_ones() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("retention");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    let (mut c, _) = replica(&url, &schema, ngram());
    let redis = c.process(MESSAGES[0]).unwrap().cluster_id;
    let rt = runtime();
    rt.block_on(async {
        let s = store(&url, &schema);
        let hour = Duration::from_secs(3600);
        let batch = [
            event("old-1", MESSAGES[0], 3 * hour),
            event("old-2", "never seen before 1", 2 * hour),
            event("new-1", MESSAGES[0], Duration::ZERO),
            event("new-2", "never seen before 2", Duration::from_secs(60)),
        ];
        events::write(&s, &batch).await.unwrap();
        // A redelivery is written once.
        events::write(&s, &batch[2..3]).await.unwrap();
        let db = client(&url, &schema).await;
        let count = |sql: &'static str| {
            let db = &db;
            async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        assert_eq!(count("SELECT count(*) FROM error_events").await, 4);
        let linked: Vec<(String, Option<String>)> = db
            .query(
                "SELECT event_id, cluster_id FROM error_events ORDER BY event_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        println!("{linked:?}");
        assert_eq!(linked[0], ("new-1".into(), Some(redis.clone())));
        assert_eq!(linked[1], ("new-2".into(), None));
        assert_eq!(linked[2], ("old-1".into(), Some(redis.clone())));
        assert_eq!(count("SELECT count(*) FROM cluster_members").await, 2);
        let errors: i64 = db
            .query_one(
                "SELECT error_count FROM clusters WHERE cluster_id = $1",
                &[&redis],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(errors, 2);

        let deleted = s.delete_events_older_than(hour).await.unwrap();
        assert_eq!(deleted, 2);
        let left: BTreeSet<String> = db
            .query("SELECT event_id FROM error_events", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(left, BTreeSet::from(["new-1".into(), "new-2".into()]));
        assert_eq!(count("SELECT count(*) FROM cluster_members").await, 1);
        assert_eq!(s.metrics().events_deleted.get(), 2);
        assert_eq!(s.delete_events_older_than(hour).await.unwrap(), 0);
        drop_schema(&url, &schema).await;
    });
}

#[test]
fn similar_clusters_rank_the_right_one_first_through_the_hnsw_index() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("similar");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    let (mut c, _) = replica(&url, &schema, ngram());
    let ids: Vec<String> = MESSAGES
        .iter()
        .map(|m| c.process(m).unwrap().cluster_id)
        .collect();
    let e = NgramEmbedder::new(384);
    let rt = runtime();
    rt.block_on(async {
        let s = store(&url, &schema);
        for (query, expected) in [
            ("redis: connection refused 192.168.1.1:6379", &ids[0]),
            ("disk full: no space left on device /tmp", &ids[3]),
            ("payment channel alipay declined order 5", &ids[1]),
        ] {
            let found = s.similar(&e.embed_one(query), 3).await.unwrap();
            println!("{query}: {found:?}");
            assert_eq!(&found[0].cluster_id, expected, "{query}");
            assert!(found.windows(2).all(|w| w[0].distance <= w[1].distance));
            assert!(found[0].distance < 0.7, "{found:?}");
            assert!(found[0].template_count >= 1);
        }

        // The nearest-cluster query goes through the HNSW index (sequential scans off, as
        // the planner would choose with many clusters; a handful of rows favour a scan).
        let db = client(&url, &schema).await;
        db.batch_execute("SET enable_seqscan = off").await.unwrap();
        let literal = format!(
            "'[{}]'::vector",
            e.embed_one("redis refused")
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let explain = format!(
            "EXPLAIN {}",
            NEAREST_SQL.replace("$1", &literal).replace("$2", "5")
        );
        let plan: Vec<String> = db
            .query(&explain, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        println!("{}", plan.join("\n"));
        assert!(
            plan.iter()
                .any(|l| l.contains("Index Scan using clusters_centroid_hnsw")),
            "{plan:?}"
        );
        drop_schema(&url, &schema).await;
    });
}

#[test]
fn an_unreachable_server_leaves_clustering_local_and_fails_fast() {
    // A port nothing listens on; the shared server is not touched.
    let mut s = PgSettings::new("postgres://lag:lag@127.0.0.1:1/lag");
    s.connect_timeout = Duration::from_millis(500);
    s.request_timeout = Duration::from_secs(2);
    s.retry_after = Duration::from_secs(60);
    let registry = prometheus::Registry::new();
    let metrics = PgMetrics::register(&registry).unwrap();
    let index = PgClusterIndex::start(PgStore::new(s, metrics.clone()).unwrap()).unwrap();
    let mut c = FailureClusterer::new(ngram());
    assert!(c.attach_shared_index(Box::new(index)).is_err());
    let t = Instant::now();
    let a = c.process(MESSAGES[0]).unwrap().cluster_id;
    let b = c.process(MESSAGES[2]).unwrap().cluster_id;
    let d = c.process(MESSAGES[3]).unwrap().cluster_id;
    let took = t.elapsed();
    println!("{a} {b} {d} in {took:?}; {:?}", c.stats());
    assert_eq!(a, b, "the local store still clusters");
    assert_ne!(a, d);
    assert!(c.stats().shared_failures >= 3, "{:?}", c.stats());
    assert!(
        took < Duration::from_secs(1),
        "calls fail fast after a failure: {took:?}"
    );
    assert!(
        metrics
            .requests
            .with_label_values(&["restore", "error"])
            .get()
            >= 1
    );
}

#[tokio::test]
async fn a_dropped_connection_is_replaced_on_a_later_call() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("reconnect");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    let name = format!("{schema}_app");
    let sep = if url.contains('?') { '&' } else { '?' };
    let s = store(&format!("{url}{sep}application_name={name}"), &schema);
    s.ready().await.unwrap();
    let v = NgramEmbedder::new(384).embed_one("redis refused");
    assert!(s.similar(&v, 1).await.unwrap().is_empty());

    // The server ends our session, as a restart or an operator would.
    let db = client(&url, &schema).await;
    let killed: Vec<bool> = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(killed, vec![true]);
    // At most the call that finds the connection dead fails; the next one reconnects (and
    // sets the schema again).
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let r = s.similar(&v, 1).await;
        if let Err(e) = &r {
            println!("{e}");
        }
        outcomes.push(r.is_ok());
        if r.is_ok() {
            break;
        }
    }
    println!("calls after the kill: {outcomes:?}");
    assert_eq!(outcomes.last(), Some(&true), "{outcomes:?}");
    assert!(outcomes.len() <= 2, "{outcomes:?}");
    let sessions: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 1);
    drop_schema(&url, &schema).await;
}

fn policy(id: &str, cluster: &str, now: i64) -> schemas::Policy {
    schemas::Policy {
        id: id.into(),
        cluster_id: cluster.into(),
        slice: schemas::Slice {
            any: vec![schemas::Conjunction {
                route: "payments".into(),
                all: vec![],
            }],
        },
        action: schemas::Action::Degrade,
        signature: [1u64].into_iter().collect(),
        severity: schemas::Ratio::new(0.5).unwrap(),
        created_at_ms: now,
        expires_at_ms: now + 300_000,
        shadow: false,
    }
}

#[tokio::test]
async fn published_policies_are_recorded_and_withdrawn_ones_deactivated() {
    let Some(url) = pg_url() else { return };
    let schema = unique_schema("policies");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    let s = store(&url, &schema);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let first = schemas::PolicySnapshot::new(
        1,
        now,
        vec![policy("p-a", "c1", now), policy("p-b", "c2", now)],
    )
    .unwrap();
    pipeline::postgres::policies::write(&s, &first)
        .await
        .unwrap();
    let second = schemas::PolicySnapshot::new(2, now, vec![policy("p-b", "c2", now)]).unwrap();
    pipeline::postgres::policies::write(&s, &second)
        .await
        .unwrap();
    let db = client(&url, &schema).await;
    let rows: Vec<(String, String, bool, String)> = db
        .query(
            "SELECT policy_id, policy_type, is_active, policy_config->>'cluster_id' \
             FROM policies ORDER BY policy_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    println!("{rows:?}");
    assert_eq!(
        rows,
        vec![
            ("p-a".into(), "degrade".into(), false, "c1".into()),
            ("p-b".into(), "degrade".into(), true, "c2".into()),
        ]
    );
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn the_operator_api_answers_similar_clusters_from_postgres() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    use pipeline::api::{self, ApiState};
    use pipeline::job::{Job, JobConfig};

    let Some(url) = pg_url() else { return };
    let schema = unique_schema("api");
    let _cleanup = Cleanup(url.clone(), schema.clone());
    // One replica's clusters (the n-gram embedder: the API embeds with the process-wide
    // default, the same one).
    let ids = {
        let (url, schema) = (url.clone(), schema.clone());
        tokio::task::spawn_blocking(move || {
            let (mut c, _) = replica(&url, &schema, ngram());
            MESSAGES
                .iter()
                .map(|m| c.process(m).unwrap().cluster_id)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    let sql = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql");
    let job = Job::load(
        JobConfig::new(vec![sql.into()]),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(api::serve(
        listener,
        ApiState {
            decider: job.decider(),
            commands: job.commands(),
            token: "t".into(),
            registry: None,
            postgres: Some(Arc::new(store(&url, &schema))),
        },
        shutdown.clone(),
    ));
    let http: HttpClient<_, Empty<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let req = hyper::Request::get(format!("http://{addr}{path}"))
                .header("authorization", "Bearer t")
                .body(Empty::new())
                .unwrap();
            let resp = http.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (status, body) = get(
        "/api/v1/clusters/similar?message=disk%20full%3A%20no%20space%20left%20on%20device%20%2Fopt&k=2"
            .into(),
    )
    .await;
    println!("{body}");
    assert_eq!(status, 200, "{body}");
    let clusters = body["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    assert_eq!(clusters[0]["cluster_id"], ids[3].as_str());
    assert_eq!(clusters[0]["failure_mode"], "no_space");
    assert!(clusters[0]["distance"].as_f64().unwrap() < clusters[1]["distance"].as_f64().unwrap());
    let (status, body) = get("/api/v1/clusters/similar?message=x&k=1000".into()).await;
    assert_eq!(status, 400, "{body}");
    shutdown.cancel();
    drop_schema(&url, &schema).await;
}
