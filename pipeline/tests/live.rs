//! The plan's end-to-end test in the embedded default, over real HTTP: the demo upstream, the
//! enforcer in front of it, the SQL job over the enforcer's events, the operator API.
//!
//! Normal traffic on three payment channels; then every alipay payment fails → a policy on
//! the alipay slice only, the other channels untouched; the fault ends → alipay is let back in.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should abort the test loudly

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pipeline::embedded::{self, Embedded};
use pipeline::job::JobConfig;
use tokio_util::sync::CancellationToken;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const TOKEN: &str = "test-token-0123456789";

fn sql_path() -> std::path::PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql").into()
}

fn config(upstream: SocketAddr) -> enforcer::config::Config {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
service_name: live-test
events: {{ traffic_sampling_rate: 0.2 }}
routes:
  - name: payments
    match: {{ path_prefix: /pay, methods: [POST] }}
    upstreams: ["http://{upstream}"]
    timeout_ms: 2000
    errors: {{ json_predicate: "$.code != 0" }}
    dimensions: {{ body: [channel], headers: [x-tenant], max_values: 64 }}
    fallback: {{ status: 200, headers: {{ content-type: application/json }}, body: '{{"code":0,"status":"queued"}}' }}
"#
    );
    enforcer::config::Config::parse(&yaml).unwrap()
}

async fn start(sql: std::path::PathBuf) -> (Embedded, SocketAddr, CancellationToken) {
    start_with(JobConfig::new(vec![sql])).await
}

async fn start_with(job: JobConfig) -> (Embedded, SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let upstream = enforcer::demo::start(
        "127.0.0.1:0".parse().unwrap(),
        Default::default(),
        shutdown.child_token(),
    )
    .await
    .unwrap();
    let e = embedded::start(
        config(upstream),
        job,
        "127.0.0.1:0".parse().unwrap(),
        TOKEN.into(),
        &prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (e, upstream, shutdown)
}

/// What one request got.
#[derive(Debug, Clone)]
struct Answer {
    at: Duration,
    channel: &'static str,
    status: u16,
    /// `X-Gateway-Policy`, when the enforcer answered itself.
    policy: Option<String>,
    /// The upstream's `code`, when it answered.
    code: Option<i64>,
}

/// Open-loop load: each channel at `rps` until `stop`.
fn load(
    client: HttpClient,
    proxy: SocketAddr,
    rps: u64,
    started: Instant,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Answer>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    ["alipay", "wechat", "card"]
        .into_iter()
        .map(|channel| {
            let (client, stop, log) = (client.clone(), Arc::clone(&stop), Arc::clone(&log));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, log) = (client.clone(), Arc::clone(&log));
                    tokio::spawn(async move {
                        let req = hyper::Request::post(format!("http://{proxy}/pay"))
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(format!(
                                r#"{{"channel":"{channel}","amount":12}}"#
                            ))))
                            .unwrap();
                        let Ok(resp) = client.request(req).await else {
                            return;
                        };
                        let status = resp.status().as_u16();
                        let policy = resp
                            .headers()
                            .get("x-gateway-policy")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        let code = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("code").and_then(serde_json::Value::as_i64));
                        log.lock().unwrap().push(Answer {
                            at: started.elapsed(),
                            channel,
                            status,
                            policy,
                            code,
                        });
                    });
                }
            })
        })
        .collect()
}

async fn set_fault(client: &HttpClient, upstream: SocketAddr, mode: &str) {
    let req = hyper::Request::put(format!("http://{upstream}/faults/alipay"))
        .body(Full::new(Bytes::from(format!(r#"{{"mode":"{mode}"}}"#))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
}

async fn api(
    client: &HttpClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
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
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// The first time after `from` that `channel` was answered by the enforcer with a policy.
fn first_mitigated(log: &[Answer], channel: &str, from: Duration) -> Option<Duration> {
    log.iter()
        .filter(|a| a.channel == channel && a.at >= from && a.policy.is_some())
        .map(|a| a.at)
        .min()
}

/// The start of the first 2 s run after `from` where every `channel` answer came from the
/// healthy upstream (code 0, no policy).
fn recovered(log: &[Answer], channel: &str, from: Duration) -> Option<Duration> {
    let mut answers: Vec<&Answer> = log
        .iter()
        .filter(|a| a.channel == channel && a.at >= from)
        .collect();
    answers.sort_by_key(|a| a.at);
    let mut run_start: Option<Duration> = None;
    for a in answers {
        let healthy = a.policy.is_none() && a.code == Some(0) && a.status == 200;
        match (healthy, run_start) {
            (true, None) => run_start = Some(a.at),
            (true, Some(s)) if a.at - s >= Duration::from_secs(2) => return Some(s),
            (false, _) => run_start = None,
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_slice_is_protected_alone_and_let_back_in_when_it_heals() {
    let (e, upstream, shutdown) = start(sql_path()).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let proxy = e.gateway.proxy_addr;
    let log: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks = load(
        client.clone(),
        proxy,
        40,
        started,
        Arc::clone(&stop),
        Arc::clone(&log),
    );

    // Healthy traffic: no policy.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, policies) = api(&client, e.api_addr, "GET", "/api/v1/policies", TOKEN, "").await;
    assert_eq!(status, 200);
    assert_eq!(policies["policies"], serde_json::json!([]), "{policies}");

    // Every alipay payment fails.
    let fault_start = started.elapsed();
    set_fault(&client, upstream, "error").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, p) = api(&client, e.api_addr, "GET", "/api/v1/policies", TOKEN, "").await;
        if p["policies"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no policy 20 s into the fault: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Every policy is on the alipay slice of payments, nothing wider.
    let (_, p) = api(&client, e.api_addr, "GET", "/api/v1/policies", TOKEN, "").await;
    for policy in p["policies"].as_array().unwrap() {
        assert_eq!(
            policy["slice"],
            serde_json::json!({"any": [{"route": "payments",
                "all": [{"key": "body:channel", "value": "alipay"}]}]}),
            "{policy}"
        );
    }
    let (_, clusters) = api(&client, e.api_addr, "GET", "/api/v1/clusters", TOKEN, "").await;
    let active: Vec<&serde_json::Value> = clusters
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["phase"] == "ACTIVE" || c["phase"] == "RECOVERING")
        .collect();
    assert!(!active.is_empty(), "{clusters}");
    assert!(
        active[0]["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["phase"] == "POLICY_APPLIED"),
        "{clusters}"
    );
    // The API refuses a wrong token.
    let (status, _) = api(&client, e.api_addr, "GET", "/api/v1/clusters", "nope", "").await;
    assert_eq!(status, 401);

    // The fault ends.
    let fault_end = started.elapsed();
    set_fault(&client, upstream, "ok").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let back = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snapshot = log.lock().unwrap().clone();
        if let Some(t) = recovered(&snapshot, "alipay", fault_end) {
            break t;
        }
        if Instant::now() >= deadline {
            let mut seen: BTreeMap<(u64, u16, Option<String>, Option<i64>), usize> =
                BTreeMap::new();
            for a in snapshot
                .iter()
                .filter(|a| a.channel == "alipay" && a.at >= fault_end)
            {
                *seen
                    .entry((a.at.as_secs(), a.status, a.policy.clone(), a.code))
                    .or_default() += 1;
            }
            let (_, p) = api(&client, e.api_addr, "GET", "/api/v1/policies", TOKEN, "").await;
            let (_, c) = api(&client, e.api_addr, "GET", "/api/v1/clusters", TOKEN, "").await;
            panic!(
                "alipay not let back in 40 s after the fault ended at {fault_end:?}:\n\
                 (second, status, policy, code) -> count: {seen:?}\npolicies {p}\nclusters {c}"
            );
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = log.lock().unwrap().clone();

    let mitigated = first_mitigated(&log, "alipay", fault_start).expect("alipay never mitigated");
    // Collateral: the healthy channels were never rejected and always reached the upstream.
    let mut healthy: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for a in log.iter().filter(|a| a.channel != "alipay") {
        let e = healthy.entry(a.channel).or_default();
        e.0 += 1;
        if a.policy.is_some() || a.code != Some(0) {
            e.1 += 1;
        }
    }
    for (channel, (total, bad)) in &healthy {
        assert!(*total > 500, "{channel}: only {total} requests");
        assert_eq!(*bad, 0, "{channel}: {bad} of {total} healthy requests hurt");
    }
    eprintln!(
        "mitigated {:.1} s after the fault began; let back in {:.1} s after it ended",
        (mitigated - fault_start).as_secs_f64(),
        (back.saturating_sub(fault_end)).as_secs_f64()
    );
    assert!(
        mitigated - fault_start <= Duration::from_secs(10),
        "{mitigated:?}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_trigger_in_the_sql_leaves_the_same_fault_alone() {
    let dir = tempfile::tempdir().unwrap();
    let edited = std::fs::read_to_string(sql_path()).unwrap().replace(
        "WHEN errors < 50 OR slice_error_rate < 0.2 THEN 'none'",
        "WHEN errors < 100000 OR slice_error_rate < 0.2 THEN 'none'",
    );
    let path = dir.path().join("incident.sql");
    std::fs::write(&path, edited).unwrap();
    let (e, upstream, shutdown) = start(path).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let log: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(
        client.clone(),
        e.gateway.proxy_addr,
        40,
        Instant::now(),
        Arc::clone(&stop),
        Arc::clone(&log),
    );
    set_fault(&client, upstream, "error").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (_, p) = api(&client, e.api_addr, "GET", "/api/v1/policies", TOKEN, "").await;
    assert_eq!(p["policies"], serde_json::json!([]), "{p}");
    let (_, clusters) = api(&client, e.api_addr, "GET", "/api/v1/clusters", TOKEN, "").await;
    assert!(
        clusters.as_array().is_some_and(|c| !c.is_empty()),
        "the failure was still clustered: {clusters}"
    );
    let failed = log
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.channel == "alipay" && a.code.is_some_and(|c| c != 0))
        .count();
    assert!(failed > 300, "alipay kept failing unprotected: {failed}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_global_shadow_mode_nothing_is_rejected_and_the_report_counts_what_would_have_been() {
    let mut job = JobConfig::new(vec![sql_path()]);
    job.global_shadow = true;
    let (e, upstream, shutdown) = start_with(job).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let log: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(
        client.clone(),
        e.gateway.proxy_addr,
        40,
        Instant::now(),
        Arc::clone(&stop),
        Arc::clone(&log),
    );
    set_fault(&client, upstream, "error").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, p) = api(&client, e.api_addr, "GET", "/api/v1/policies", TOKEN, "").await;
        if let Some(first) = p["policies"].as_array().and_then(|a| a.first()) {
            assert_eq!(first["shadow"], true, "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "no shadow policy: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        log.lock().unwrap().iter().all(|a| a.policy.is_none()),
        "shadow mode rejected a request"
    );
    let (status, report) = api(
        &client,
        e.api_addr,
        "GET",
        "/api/v1/shadow/report",
        TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let lines = report.as_object().unwrap();
    let would: u64 = lines
        .values()
        .map(|l| l["would_reject"].as_u64().unwrap())
        .sum();
    let failed: u64 = lines.values().map(|l| l["failed"].as_u64().unwrap()).sum();
    let succeeded: u64 = lines
        .values()
        .map(|l| l["succeeded"].as_u64().unwrap())
        .sum();
    assert!(would > 20, "{report}");
    assert_eq!(would, failed + succeeded, "{report}");
    assert_eq!(
        succeeded, 0,
        "alipay kept failing: none would have succeeded: {report}"
    );
    shutdown.cancel();
}
