//! The operator API against its OpenAPI document, served by a real job.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should abort the test loudly

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pipeline::api::{self, ApiState};
use pipeline::io::{ChannelSource, IoError, PolicyPublisher};
use pipeline::job::{Job, JobConfig};
use schemas::PolicySnapshot;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "api-test-token";

/// Records what the job publishes.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<PolicySnapshot>>>);

impl PolicyPublisher for Recorder {
    async fn publish(&mut self, snapshot: &PolicySnapshot) -> Result<(), IoError> {
        self.0.lock().unwrap().push(snapshot.clone());
        Ok(())
    }
}

fn openapi() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// (method, path) of every operation the document declares, `{id}` filled in.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.replace("{id}", "x")));
        }
    }
    out
}

async fn start() -> (SocketAddr, Recorder, CancellationToken) {
    let sql = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql");
    let registry = prometheus::Registry::new();
    let job = Job::load(JobConfig::new(vec![sql.into()]), &registry)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(
        listener,
        ApiState {
            decider: job.decider(),
            commands: job.commands(),
            token: TOKEN.into(),
            registry: Some(registry),
            postgres: None,
        },
        shutdown.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let recorder = Recorder::default();
    let s = shutdown.clone();
    let r = recorder.clone();
    tokio::spawn(async move {
        let _keep_open = tx;
        job.run(ChannelSource(rx), r, s).await;
    });
    (addr, recorder, shutdown)
}

async fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[test]
fn the_document_references_schemas_that_exist() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    let defs: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/json/policy-snapshot.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let text = serde_json::to_string(&doc).unwrap();
    let mut refs = BTreeSet::new();
    for part in text.split("\"$ref\":\"").skip(1) {
        refs.insert(part.split('"').next().unwrap().to_owned());
    }
    assert!(!refs.is_empty());
    for r in refs {
        let (file, pointer) = r.split_once('#').unwrap();
        let target = if file.is_empty() { &doc } else { &defs };
        assert!(target.pointer(pointer).is_some(), "{r} does not resolve");
    }
}

#[tokio::test]
async fn every_documented_operation_exists_and_needs_the_token() {
    let (addr, _, shutdown) = start().await;
    let ops = operations(&openapi());
    assert_eq!(ops.len(), 11, "{ops:?}");
    let open = ["/health", "/metrics"];
    for (method, path) in &ops {
        let (status, body) = call(addr, method, path, "wrong", "{}").await;
        if open.contains(&path.as_str()) {
            // Probes and scrapes need no token.
            assert_eq!(status, 200, "{method} {path}");
            continue;
        }
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body["error"].is_string());
    }
    let (status, _) = call(addr, "GET", "/api/v1/nothing", TOKEN, "").await;
    assert_eq!(status, 404);
    shutdown.cancel();
}

#[tokio::test]
async fn similar_clusters_need_postgres() {
    let (addr, _, shutdown) = start().await;
    let (status, body) = call(
        addr,
        "GET",
        "/api/v1/clusters/similar?message=redis%20refused&k=3",
        TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--pg-url"),
        "{body}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn operator_controls_are_applied_and_published() {
    let (addr, published, shutdown) = start().await;
    let (status, body) = call(addr, "GET", "/api/v1/clusters", TOKEN, "").await;
    assert_eq!((status, body), (200, json!([])));
    let (status, _) = call(addr, "GET", "/api/v1/clusters/c1", TOKEN, "").await;
    assert_eq!(status, 404);

    // Bad bodies are refused with the reason.
    let (status, body) = call(addr, "PUT", "/api/v1/shadow", TOKEN, r#"{"on":true}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("enabled"),
        "{body}"
    );

    let (status, body) = call(addr, "PUT", "/api/v1/shadow", TOKEN, r#"{"enabled":true}"#).await;
    assert_eq!(status, 200, "{body}");

    // Force a degrade on one slice: published, and in shadow because shadow is global now.
    let now = pipeline::job::wall_ms();
    let policy = json!({
        "id": "forced-alipay",
        "cluster_id": "operator",
        "slice": {"any": [{"route": "payments", "all": [{"key": "body:channel", "value": "alipay"}]}]},
        "action": {"type": "degrade"},
        "signature": [],
        "severity": 1.0,
        "created_at_ms": now,
        "expires_at_ms": now + 60_000
    });
    let (status, body) = call(addr, "POST", "/api/v1/policies", TOKEN, &policy.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let version = body["version"].as_u64().unwrap();
    let last = published.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.version(), version);
    assert_eq!(last.policies()[0].id, "forced-alipay");
    assert!(last.policies()[0].shadow);

    // Enforce it regardless of global shadow, then disable it.
    let (status, _) = call(
        addr,
        "PUT",
        "/api/v1/policies/forced-alipay/mode",
        TOKEN,
        r#"{"mode":"enforce"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = call(addr, "GET", "/api/v1/policies", TOKEN, "").await;
    assert_eq!(body["policies"][0]["shadow"], false, "{body}");
    assert_eq!(body["modes"]["forced-alipay"], "enforce");
    let (status, _) = call(
        addr,
        "PUT",
        "/api/v1/policies/forced-alipay/mode",
        TOKEN,
        r#"{"mode":"disable"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let last = published.0.lock().unwrap().last().cloned().unwrap();
    assert!(last.policies().is_empty());

    // An expired or invalid policy is refused before it reaches the job.
    let mut stale = policy.clone();
    stale["expires_at_ms"] = json!(now - 1);
    let (status, _) = call(addr, "POST", "/api/v1/policies", TOKEN, &stale.to_string()).await;
    assert_eq!(status, 400);
    let mut bad = policy;
    bad["severity"] = json!(3.0);
    let (status, _) = call(addr, "POST", "/api/v1/policies", TOKEN, &bad.to_string()).await;
    assert_eq!(status, 400);

    let (status, _) = call(
        addr,
        "PUT",
        "/api/v1/clusters/c9/benign",
        TOKEN,
        r#"{"benign":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    // No enforcer in this process: the shadow report says where to look.
    let (status, body) = call(addr, "GET", "/api/v1/shadow/report", TOKEN, "").await;
    assert_eq!(status, 501, "{body}");
    shutdown.cancel();
}
