//! The etcd policy path against a real etcd: the pipeline's `EtcdPublisher` writes snapshots,
//! a real enforcer (`Gateway` with `policies.source: etcd`) watches them, and requests go
//! through it over real HTTP.
//!
//! Needs `LAG_ETCD_ENDPOINTS` (`bash deploy/services.sh up etcd`, then
//! `eval "$(bash deploy/services.sh env)"`); skipped with a printed reason when unset, failed
//! when unset under `CI=true`. Every test works under its own key prefix, so they run in
//! parallel on the shared etcd. The outage test starts and kills its own etcd process (from
//! the same `/usr/bin/etcd`), never the shared one other tests and engineers use.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::own::OwnEtcd;
use e2e::require_service;
use enforcer::config::Config;
use enforcer::server::Gateway;
use etcd_client::Client;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pipeline::etcd::{EtcdPublisher, EtcdSettings, PublishError};
use schemas::{Action, Conjunction, Policy, PolicySnapshot, Ratio, Slice};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn endpoints() -> Option<Vec<String>> {
    require_service("LAG_ETCD_ENDPOINTS")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
}

/// A prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("/lag-test/{test}-{}-{nanos}/", std::process::id())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A circuit break on the whole of `route`, open for ten minutes (rejects with 503).
fn break_route(id: &str, route: &str) -> Policy {
    let now = wall_ms();
    Policy {
        id: id.into(),
        cluster_id: format!("cluster-{id}"),
        slice: Slice {
            any: vec![Conjunction {
                route: route.into(),
                all: vec![],
            }],
        },
        action: Action::CircuitBreak {
            open_ms: 600_000,
            ramp_step: Ratio::new(0.2).expect("ratio"),
            probes: 5,
            failure_ratio: Ratio::new(0.5).expect("ratio"),
        },
        signature: [1u64].into_iter().collect(),
        severity: Ratio::new(0.9).expect("ratio"),
        created_at_ms: now,
        expires_at_ms: now + 300_000,
        shadow: false,
    }
}

fn snapshot(version: u64, policies: Vec<Policy>) -> PolicySnapshot {
    PolicySnapshot::new(version, wall_ms(), policies).expect("valid snapshot")
}

fn settings(endpoints: &[String], prefix: &str, instance: &str) -> EtcdSettings {
    let mut s = EtcdSettings::new(endpoints.to_vec(), instance);
    s.prefix = prefix.to_owned();
    s.lease_ttl_s = 5;
    s.dial_timeout = Duration::from_millis(500);
    s.request_timeout = Duration::from_secs(2);
    s
}

/// An enforcer with routes `a` (`/a`) and `b` (`/b`) to the demo upstream, policies from etcd.
async fn gateway(
    endpoints: &[String],
    prefix: &str,
    shutdown: &CancellationToken,
) -> (Gateway, prometheus::Registry) {
    let upstream = enforcer::demo::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Default::default(),
        shutdown.child_token(),
    )
    .await
    .expect("demo upstream");
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nworkers: 1\nevents: {{sink: discard}}\n\
         policies:\n  source: etcd\n  etcd:\n    endpoints: [{eps}]\n    prefix: {prefix:?}\n    \
         dial_timeout_ms: 500\n    request_timeout_ms: 2000\n\
         routes:\n  - name: a\n    match: {{path_prefix: /a}}\n    upstreams: [\"http://{upstream}\"]\n\
         \x20 - name: b\n    match: {{path_prefix: /b}}\n    upstreams: [\"http://{upstream}\"]\n",
        eps = eps.join(", "),
    );
    let config = Config::parse(&yaml).expect("config");
    let registry = prometheus::Registry::new();
    let gw = Gateway::start(config, &registry, shutdown.child_token())
        .await
        .expect("gateway");
    (gw, registry)
}

type Http = HttpClient<HttpConnector, Empty<Bytes>>;

fn http() -> Http {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

/// Status and `X-Gateway-Policy` of `GET http://addr{path}`.
async fn get(client: &Http, addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let uri: http::Uri = format!("http://{addr}{path}").parse().expect("uri");
    let resp = client.get(uri).await.expect("request");
    let status = resp.status().as_u16();
    let policy = resp
        .headers()
        .get("x-gateway-policy")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = resp.into_body().collect().await;
    (status, policy)
}

/// Polls `GET path` until it answers `want` (status, policy header), or panics after [`WAIT`].
async fn wait_for(client: &Http, addr: SocketAddr, path: &str, want: (u16, Option<&str>)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = get(client, addr, path).await;
        if got.0 == want.0 && got.1.as_deref() == want.1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still {got:?} after {WAIT:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_client(endpoints: &[String]) -> Client {
    Client::connect(endpoints, None).await.expect("etcd client")
}

async fn stored_version(client: &mut Client, key: &str) -> Option<u64> {
    let got = client.get(key, None).await.expect("get");
    got.kvs().first().map(|kv| {
        PolicySnapshot::from_json(kv.value())
            .expect("stored snapshot")
            .version()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_snapshot_is_enforced_and_a_newer_one_replaces_it() {
    let Some(eps) = endpoints() else { return };
    let prefix = unique_prefix("publish");
    let shutdown = CancellationToken::new();
    let (gw, _registry) = gateway(&eps, &prefix, &shutdown).await;
    let client = http();
    // Ready only after the first read of etcd (the key is absent: no policies yet).
    wait_until("the first read", || gw.policies.is_synced()).await;
    assert_eq!(get(&client, gw.proxy_addr, "/a").await, (200, None));

    let mut publisher = EtcdPublisher::connect(settings(&eps, &prefix, "p1"))
        .await
        .expect("publisher");
    publisher
        .publish_snapshot(&snapshot(10, vec![break_route("break-a", "a")]))
        .await
        .expect("publish v10");
    wait_for(&client, gw.proxy_addr, "/a", (503, Some("break-a"))).await;
    assert_eq!(get(&client, gw.proxy_addr, "/b").await, (200, None));
    assert_eq!(gw.policies.load().version(), 10);
    // An idle watch outlives the request timeout (2 s here): the timeout bounds opening the
    // watch, not the stream, so a quiet etcd does not cause reconnect churn.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(gw.metrics.policy_source_errors.get(), 0);
    assert_eq!(gw.metrics.policy_source_connected.get(), 1);

    publisher
        .publish_snapshot(&snapshot(11, vec![break_route("break-b", "b")]))
        .await
        .expect("publish v11");
    wait_for(&client, gw.proxy_addr, "/b", (503, Some("break-b"))).await;
    assert_eq!(get(&client, gw.proxy_addr, "/a").await, (200, None));
    assert_eq!(gw.policies.load().version(), 11);
    assert_eq!(gw.metrics.snapshots_refused.get(), 0);
    assert_eq!(gw.metrics.policy_source_connected.get(), 1);

    // The key is bound to the publisher's lease: resigning revokes it and etcd deletes the
    // key; the enforcer keeps the last good snapshot (its policies expire on their own).
    let mut raw = raw_client(&eps).await;
    let key = format!("{prefix}snapshot");
    assert_eq!(stored_version(&mut raw, &key).await, Some(11));
    publisher.resign().await.expect("resign");
    assert_eq!(stored_version(&mut raw, &key).await, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&client, gw.proxy_addr, "/b").await,
        (503, Some("break-b".into()))
    );
    assert_eq!(gw.policies.load().version(), 11);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_snapshot_in_etcd_is_refused_and_the_last_good_one_keeps_serving() {
    let Some(eps) = endpoints() else { return };
    let prefix = unique_prefix("invalid");
    let shutdown = CancellationToken::new();
    let (gw, _registry) = gateway(&eps, &prefix, &shutdown).await;
    let client = http();
    let mut publisher = EtcdPublisher::connect(settings(&eps, &prefix, "p1"))
        .await
        .expect("publisher");
    publisher
        .publish_snapshot(&snapshot(20, vec![break_route("break-a", "a")]))
        .await
        .expect("publish v20");
    wait_for(&client, gw.proxy_addr, "/a", (503, Some("break-a"))).await;

    // Written behind the publisher's back: not JSON, then JSON that fails validation (a
    // policy without a slice), then a valid but older snapshot.
    let key = format!("{prefix}snapshot");
    let mut raw = raw_client(&eps).await;
    raw.put(key.as_str(), "{not json", None).await.expect("put");
    wait_until("the first refusal", || {
        gw.metrics.snapshots_refused.get() >= 1
    })
    .await;
    let mut no_slice =
        serde_json::to_value(snapshot(30, vec![break_route("x", "b")])).expect("json");
    no_slice["policies"][0]["slice"]["any"] = serde_json::json!([]);
    raw.put(key.as_str(), no_slice.to_string(), None)
        .await
        .expect("put");
    wait_until("the second refusal", || {
        gw.metrics.snapshots_refused.get() >= 2
    })
    .await;
    raw.put(
        key.as_str(),
        snapshot(5, vec![break_route("old", "b")]).to_json(),
        None,
    )
    .await
    .expect("put");
    wait_until("the third refusal", || {
        gw.metrics.snapshots_refused.get() >= 3
    })
    .await;
    assert_eq!(gw.policies.load().version(), 20);
    assert_eq!(
        get(&client, gw.proxy_addr, "/a").await,
        (503, Some("break-a".into()))
    );
    assert_eq!(get(&client, gw.proxy_addr, "/b").await, (200, None));

    // The publisher replaces what is there with its next snapshot (the stored v5 is older).
    publisher
        .publish_snapshot(&snapshot(21, vec![break_route("break-b", "b")]))
        .await
        .expect("publish v21 over the junk");
    wait_for(&client, gw.proxy_addr, "/b", (503, Some("break-b"))).await;
    assert_eq!(gw.metrics.snapshots_refused.get(), 3);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_never_overwrites_a_newer_snapshot() {
    let Some(eps) = endpoints() else { return };
    let prefix = unique_prefix("stale");
    let key = format!("{prefix}snapshot");
    let mut publisher = EtcdPublisher::connect(settings(&eps, &prefix, "p1"))
        .await
        .expect("publisher");
    publisher
        .publish_snapshot(&snapshot(100, vec![break_route("a1", "a")]))
        .await
        .expect("publish v100");
    // Someone else (a former leader, an operator) writes v500 in between.
    let mut raw = raw_client(&eps).await;
    raw.put(
        key.as_str(),
        snapshot(500, vec![break_route("a5", "a")]).to_json(),
        None,
    )
    .await
    .expect("put v500");
    let err = publisher
        .publish_snapshot(&snapshot(200, vec![break_route("a2", "a")]))
        .await
        .expect_err("v200 must not overwrite v500");
    assert!(
        matches!(
            err,
            PublishError::Stale {
                stored: 500,
                offered: 200
            }
        ),
        "{err}"
    );
    assert_eq!(stored_version(&mut raw, &key).await, Some(500));
    // The same version again is refused too (only the identical bytes count as published).
    let err = publisher
        .publish_snapshot(&snapshot(500, vec![break_route("other", "b")]))
        .await
        .expect_err("a different v500");
    assert!(matches!(err, PublishError::Stale { .. }), "{err}");
    // A newer one goes through the guard on the revision it just read.
    publisher
        .publish_snapshot(&snapshot(600, vec![break_route("a6", "a")]))
        .await
        .expect("publish v600");
    assert_eq!(stored_version(&mut raw, &key).await, Some(600));
    publisher.resign().await.expect("resign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_publishes_and_a_deposed_leader_is_fenced() {
    let Some(eps) = endpoints() else { return };
    let prefix = unique_prefix("leader");
    let key = format!("{prefix}snapshot");
    let mut raw = raw_client(&eps).await;
    let mut first = EtcdPublisher::connect(settings(&eps, &prefix, "first"))
        .await
        .expect("first");
    let mut second = EtcdPublisher::connect(settings(&eps, &prefix, "second"))
        .await
        .expect("second");
    assert!(first.try_lead().await.expect("campaign"));
    assert!(!second.try_lead().await.expect("campaign"));
    let got = raw.get(format!("{prefix}leader"), None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"first");

    first
        .publish_snapshot(&snapshot(1_000, vec![break_route("a", "a")]))
        .await
        .expect("the leader publishes");
    let err = second
        .publish_snapshot(&snapshot(2_000, vec![break_route("b", "b")]))
        .await
        .expect_err("a follower must not publish");
    assert!(matches!(err, PublishError::NotLeader), "{err}");
    assert_eq!(stored_version(&mut raw, &key).await, Some(1_000));

    // The leader key disappears (as when the leader's lease lapses during a long pause) and
    // the second replica takes over. The first still believes it leads; the transaction's
    // fence on the leader key's create_revision refuses its write.
    raw.delete(format!("{prefix}leader"), None)
        .await
        .expect("delete");
    assert!(second.try_lead().await.expect("campaign"));
    assert!(first.is_leader(), "the deposed leader has not noticed yet");
    let err = first
        .publish_snapshot(&snapshot(3_000, vec![break_route("stale-leader", "a")]))
        .await
        .expect_err("fenced");
    assert!(matches!(err, PublishError::NotLeader), "{err}");
    assert!(!first.is_leader());
    second
        .publish_snapshot(&snapshot(2_000, vec![break_route("b", "b")]))
        .await
        .expect("the new leader publishes");
    assert_eq!(stored_version(&mut raw, &key).await, Some(2_000));

    // When the leader resigns (or dies: its lease ends), a follower takes over on its next
    // publish.
    second.resign().await.expect("resign");
    first
        .publish_snapshot(&snapshot(4_000, vec![break_route("a", "a")]))
        .await
        .expect("takes over");
    assert!(first.is_leader());
    first.resign().await.expect("resign");
}

async fn publish_when_up(publisher: &mut EtcdPublisher, s: &PolicySnapshot) {
    let deadline = Instant::now() + WAIT;
    loop {
        match publisher.publish_snapshot(s).await {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing v{}: {e}",
                    s.version()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enforcer_rides_out_an_etcd_outage_and_resyncs() {
    // The shared etcd is only the signal that etcd is installed and expected here.
    let Some(_) = endpoints() else { return };
    let dir = std::env::temp_dir().join(format!("lag-etcd-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut etcd = OwnEtcd::new(&dir);
    let eps = vec![etcd.client_url.clone()];
    let prefix = unique_prefix("outage");
    let shutdown = CancellationToken::new();

    // etcd unreachable at start: not ready, nothing enforced, requests still served.
    let (gw, _registry) = gateway(&eps, &prefix, &shutdown).await;
    let client = http();
    let admin = gw.admin_addr;
    wait_until("a failed connection attempt", || {
        gw.metrics.policy_source_errors.get() >= 1
    })
    .await;
    assert_eq!(get(&client, admin, "/ready").await.0, 503);
    assert!(!gw.policies.is_synced());
    assert_eq!(get(&client, gw.proxy_addr, "/a").await, (200, None));

    etcd.start();
    let mut publisher = {
        let deadline = Instant::now() + WAIT;
        loop {
            match EtcdPublisher::connect(settings(&eps, &prefix, "p1")).await {
                Ok(p) => break p,
                Err(e) => {
                    assert!(Instant::now() < deadline, "etcd did not come up: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    publish_when_up(
        &mut publisher,
        &snapshot(1, vec![break_route("break-a", "a")]),
    )
    .await;
    wait_for(&client, gw.proxy_addr, "/a", (503, Some("break-a"))).await;
    assert_eq!(get(&client, admin, "/ready").await.0, 200);

    // etcd dies: the enforcer notices, stays ready and keeps enforcing the last snapshot.
    etcd.stop();
    let errors_before = gw.metrics.policy_source_errors.get();
    wait_until("the enforcer to notice", || {
        gw.metrics.policy_source_connected.get() == 0
            && gw.metrics.policy_source_errors.get() > errors_before
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(&client, gw.proxy_addr, "/a").await,
            (503, Some("break-a".into()))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&client, admin, "/ready").await.0, 200);
    assert_eq!(gw.policies.load().version(), 1);

    // etcd is back (same data): the enforcer reconnects, re-reads and follows new snapshots.
    etcd.start();
    publish_when_up(
        &mut publisher,
        &snapshot(2, vec![break_route("break-b", "b")]),
    )
    .await;
    wait_for(&client, gw.proxy_addr, "/b", (503, Some("break-b"))).await;
    assert_eq!(get(&client, gw.proxy_addr, "/a").await, (200, None));
    wait_until("the watch to be back", || {
        gw.metrics.policy_source_connected.get() == 1
    })
    .await;
    shutdown.cancel();
    drop(publisher);
    etcd.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publish → enforced latency over 200 publishes (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test -p e2e --test etcd -- --ignored --nocapture"]
async fn propagation_benchmark() {
    let Some(eps) = endpoints() else { return };
    let prefix = unique_prefix("bench");
    let shutdown = CancellationToken::new();
    let (gw, _registry) = gateway(&eps, &prefix, &shutdown).await;
    let client = http();
    wait_until("the first read", || gw.policies.is_synced()).await;
    let mut publisher = EtcdPublisher::connect(settings(&eps, &prefix, "bench"))
        .await
        .expect("publisher");
    let mut publish_ms = Vec::new();
    let mut enforced_ms = Vec::new();
    for i in 0..200u64 {
        let version = 1_000 + i;
        let (route, path) = if i % 2 == 0 { ("a", "/a") } else { ("b", "/b") };
        let id = format!("bench-{i}");
        let s = snapshot(version, vec![break_route(&id, route)]);
        let start = Instant::now();
        publisher.publish_snapshot(&s).await.expect("publish");
        publish_ms.push(start.elapsed().as_secs_f64() * 1e3);
        // Enforced: a real request through the proxy is rejected by this version's policy.
        loop {
            if get(&client, gw.proxy_addr, path).await == (503, Some(id.clone())) {
                break;
            }
            assert!(start.elapsed() < WAIT, "v{version} not enforced");
        }
        enforced_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        (at(0.5), at(0.95), v[v.len() - 1])
    };
    let (p50, p95, max) = stats(&mut publish_ms);
    println!("etcd publish (guarded txn): p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.2} ms");
    let (p50, p95, max) = stats(&mut enforced_ms);
    println!(
        "publish -> enforced (first rejected request through the proxy), {} publishes: \
         p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.2} ms",
        enforced_ms.len()
    );
    publisher.resign().await.expect("resign");
    shutdown.cancel();
}

/// `pipeline run` / `demo` with `policies.source: etcd`: the job publishes through etcd (this
/// replica takes the lead) and its in-process enforcer follows the key like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_publishes_operator_policies_through_etcd() {
    let Some(eps) = endpoints() else { return };
    let prefix = unique_prefix("embedded");
    let shutdown = CancellationToken::new();
    let upstream = enforcer::demo::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Default::default(),
        shutdown.child_token(),
    )
    .await
    .expect("demo upstream");
    let eps_yaml: Vec<String> = eps.iter().map(|e| format!("{e:?}")).collect();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nworkers: 1\n\
         policies:\n  source: etcd\n  etcd:\n    endpoints: [{}]\n    prefix: {prefix:?}\n\
         routes:\n  - name: a\n    match: {{path_prefix: /a}}\n    upstreams: [\"http://{upstream}\"]\n",
        eps_yaml.join(", "),
    );
    let config = Config::parse(&yaml).expect("config");
    let sql = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql");
    let registry = prometheus::Registry::new();
    let e = pipeline::embedded::start(
        config,
        pipeline::job::JobConfig::new(vec![sql.into()]),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        "etcd-test-token".into(),
        &registry,
        shutdown.clone(),
    )
    .await
    .expect("pipeline with the etcd publisher");
    let client = http();
    wait_until("the first read", || e.gateway.policies.is_synced()).await;
    assert_eq!(get(&client, e.gateway.proxy_addr, "/a").await, (200, None));

    let policy = serde_json::to_string(&break_route("forced-a", "a")).expect("json");
    let post: HttpClient<HttpConnector, http_body_util::Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/api/v1/policies", e.api_addr))
        .header("authorization", "Bearer etcd-test-token")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(policy)))
        .expect("request");
    let resp = post.request(req).await.expect("POST /api/v1/policies");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let version = serde_json::from_slice::<serde_json::Value>(&body).expect("json")["version"]
        .as_u64()
        .expect("version");

    let mut raw = raw_client(&eps).await;
    assert_eq!(
        stored_version(&mut raw, &format!("{prefix}snapshot")).await,
        Some(version)
    );
    wait_for(&client, e.gateway.proxy_addr, "/a", (503, Some("forced-a"))).await;
    assert_eq!(e.gateway.policies.load().version(), version);
    shutdown.cancel();
}
