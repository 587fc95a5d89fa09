//! The proxy path against real HTTP servers on 127.0.0.1: every failure path, policy
//! enforcement on a slice and its recovery, events out, and the admin endpoints.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should abort the test loudly

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use enforcer::config::Config;
use enforcer::server::Gateway;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use schemas::GatewayRecord;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A test upstream: `/slow` sleeps 2 s, `/big` streams 1 MiB, `/fail` answers 500 with a JSON
/// message, `/code` answers 200 with `{"code": 7}`, `/echo` returns the request headers as
/// JSON, `/pay` fails when the body's channel is `alipay` and `FAIL` is set. Counts requests.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    fail_alipay: Arc<std::sync::atomic::AtomicBool>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let fail_alipay = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (h, f) = (Arc::clone(&hits), Arc::clone(&fail_alipay));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (h, f) = (Arc::clone(&h), Arc::clone(&f));
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (h, f) = (Arc::clone(&h), Arc::clone(&f));
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(answer(req, f).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        fail_alipay,
    }
}

async fn answer(
    req: Request<Incoming>,
    fail_alipay: Arc<std::sync::atomic::AtomicBool>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, text) = match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            (200, "slow".to_owned())
        }
        "/big" => (200, "x".repeat(1 << 20)),
        "/fail" => (
            500,
            r#"{"message":"dial tcp 10.1.2.3:5432: connect: connection refused"}"#.to_owned(),
        ),
        "/code" => (
            200,
            r#"{"code": 7, "message": "quota exceeded for tenant 42"}"#.to_owned(),
        ),
        "/echo" => (200, serde_json::Value::Object(headers).to_string()),
        "/pay" => {
            let alipay = String::from_utf8_lossy(&body).contains("alipay");
            if alipay && fail_alipay.load(Ordering::SeqCst) {
                (
                    500,
                    r#"{"message":"channel alipay: upstream timeout after 3000ms"}"#.to_owned(),
                )
            } else {
                (200, r#"{"code":0}"#.to_owned())
            }
        }
        _ => (200, format!("len={}", body.len())),
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

struct Running {
    gw: Option<Gateway>,
    events: tokio::sync::mpsc::Receiver<GatewayRecord>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    token: CancellationToken,
}

impl Running {
    fn gw(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        self.send_to(self.gw().proxy_addr, method, path, headers, body)
            .await
    }

    async fn send_to(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .client
            .request(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    async fn metrics(&self) -> String {
        self.send_to(self.gw().admin_addr, Method::GET, "/metrics", &[], "")
            .await
            .2
    }

    /// Next error event, waiting at most 5 s.
    async fn next_error(&mut self) -> schemas::ErrorEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(GatewayRecord::Error(e))) => return e,
                Ok(Some(_)) => continue,
                other => panic!("no error event: {other:?}"),
            }
        }
    }

    async fn stop(mut self) {
        self.token.cancel();
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}

async fn start(yaml: &str) -> Running {
    let config = Config::parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let token = CancellationToken::new();
    let mut gw = Gateway::start(config, &prometheus::Registry::new(), token.clone())
        .await
        .unwrap();
    let events = gw.take_events().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    Running {
        gw: Some(gw),
        events,
        client,
        token,
    }
}

fn config(upstreams: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nshutdown_grace_ms: 2000\nevents: {{ traffic_sampling_rate: 1.0 }}\nroutes:\n  - name: api\n    upstreams: [{upstreams}]\n    timeout_ms: 300\n{extra}"
    )
}

fn gateway_headers_present(h: &HeaderMap) {
    assert!(h.contains_key("x-gateway-policy"), "{h:?}");
    assert!(h.contains_key("x-gateway-cluster"), "{h:?}");
    assert!(h.contains_key("x-request-id"), "{h:?}");
}

#[tokio::test]
async fn refused_upstream_is_502_and_an_event() {
    // Bind then drop a listener: nothing listens on that port now.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut rt = start(&config(&format!("\"http://{dead}\""), "")).await;
    let (status, headers, body) = rt.send(Method::GET, "/x", &[], "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    gateway_headers_present(&headers);
    assert!(body.contains("unreachable"), "{body}");
    let e = rt.next_error().await;
    assert_eq!(
        (e.status, e.error_kind),
        (502, schemas::ErrorKind::Transport)
    );
    assert_eq!(e.route, "api");
    rt.stop().await;
}

#[tokio::test]
async fn timeout_is_504() {
    let up = upstream().await;
    let mut rt = start(&config(&format!("\"http://{}\"", up.addr), "")).await;
    let started = std::time::Instant::now();
    let (status, headers, _) = rt.send(Method::GET, "/slow", &[], "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_millis(1_900),
        "timed out late: {:?}",
        started.elapsed()
    );
    gateway_headers_present(&headers);
    assert_eq!(
        rt.next_error().await.error_kind,
        schemas::ErrorKind::Timeout
    );
    rt.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_bodies() {
    let up = upstream().await;
    let extra = "    max_inspected_body_bytes: 1024\n    dimensions: { body: [channel] }\n";
    let rt = start(&config(&format!("\"http://{}\"", up.addr), extra)).await;
    let big = format!("{{\"channel\":\"{}\"}}", "a".repeat(4096));
    let (status, _, _) = rt.send(Method::POST, "/x", &[], &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Not JSON: forwarded untouched, just without body dimensions.
    let (status, _, body) = rt.send(Method::POST, "/x", &[], "{\"channel\": oops").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "len=16"));
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        1,
        "the oversized body never reached the upstream"
    );
    rt.stop().await;
}

#[tokio::test]
async fn errors_inside_200_and_status_errors_become_desensitized_events() {
    let up = upstream().await;
    let extra = "    errors: { json_predicate: \"$.code != 0\" }\n    dimensions: { headers: [X-Tenant] }\n";
    let mut rt = start(&config(&format!("\"http://{}\"", up.addr), extra)).await;
    let (status, _, body) = rt
        .send(Method::GET, "/code", &[("x-tenant", "acme")], "")
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the client still gets the upstream's answer"
    );
    assert!(body.contains("quota exceeded"));
    let e = rt.next_error().await;
    assert_eq!(e.error_kind, schemas::ErrorKind::BodyPredicate);
    assert_eq!(e.message, "quota exceeded for tenant 42");
    assert_eq!(
        e.dimensions.get("header:x-tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        e.template_id,
        schemas::text::template_id("quota exceeded for tenant 42")
    );

    let (status, _, _) = rt.send(Method::GET, "/fail", &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = rt.next_error().await;
    assert_eq!((e.status, e.error_kind), (500, schemas::ErrorKind::Status));
    assert!(e.message.contains("connection refused"), "{}", e.message);
    assert_eq!(e.trace_id.len(), 32);
    rt.stop().await;
}

#[tokio::test]
async fn streams_large_bodies_and_propagates_ids() {
    let up = upstream().await;
    let rt = start(&config(&format!("\"http://{}\"", up.addr), "")).await;
    let (status, _, body) = rt.send(Method::GET, "/big", &[], "").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 1 << 20));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, headers, body) = rt
        .send(
            Method::GET,
            "/echo",
            &[("x-request-id", "req-1"), ("traceparent", tp)],
            "",
        )
        .await;
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-request-id"], "req-1");
    let forwarded = seen["traceparent"].as_str().unwrap();
    assert!(
        forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && !forwarded.contains("00f067aa0ba902b7"),
        "{forwarded}"
    );
    assert_eq!(headers["x-request-id"], "req-1");
    let (_, headers, _) = rt.send(Method::GET, "/echo", &[], "").await;
    assert_eq!(headers["x-request-id"].len(), 32, "generated when absent");
    rt.stop().await;
}

#[tokio::test]
async fn a_dead_event_sink_never_slows_requests() {
    let up = upstream().await;
    let yaml = config(&format!("\"http://{}\"", up.addr), "").replace(
        "traffic_sampling_rate: 1.0",
        "traffic_sampling_rate: 1.0, queue_capacity: 4",
    );
    let mut rt = start(&yaml).await;
    rt.events.close(); // the sink is gone
    for _ in 0..50 {
        let (status, _, _) = rt.send(Method::GET, "/fail", &[], "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let metrics = rt.metrics().await;
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("enforcer_events_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped >= 50.0, "drops must be counted:\n{metrics}");
    rt.stop().await;
}

fn breaker_snapshot(version: u64, signature: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    serde_json::json!({
        "version": version,
        "issued_at_ms": now,
        "policies": [{
            "id": "pay-alipay",
            "cluster_id": "db-refused",
            "slice": {"any": [{"route": "api", "all": [{"key": "body:channel", "value": "alipay"}]}]},
            "action": {"type": "circuit_break", "open_ms": 400, "ramp_step": 0.2, "probes": 2, "failure_ratio": 0.5},
            "signature": [signature],
            "severity": 0.9,
            "created_at_ms": now,
            "expires_at_ms": now + 300_000,
        }]
    })
    .to_string()
}

#[tokio::test]
async fn a_policy_breaks_only_its_slice_and_recovers_locally() {
    let up = upstream().await;
    let rt = start(&config(
        &format!("\"http://{}\"", up.addr),
        "    dimensions: { body: [channel] }\n",
    ))
    .await;
    let admin = rt.gw().admin_addr;
    let signature = schemas::text::template_id("channel alipay: upstream timeout after 3000ms");
    let (status, _, body) = rt
        .send_to(
            admin,
            Method::PUT,
            "/policies",
            &[],
            &breaker_snapshot(1, signature),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, headers, body) = rt
        .send(Method::POST, "/pay", &[], r#"{"channel":"alipay"}"#)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["x-gateway-policy"], "pay-alipay");
    assert_eq!(headers["x-gateway-cluster"], "db-refused");
    assert!(headers.contains_key("retry-after"));
    let (status, _, _) = rt
        .send(Method::POST, "/pay", &[], r#"{"channel":"card"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "healthy slice untouched");

    // An invalid snapshot is refused and the policy keeps serving.
    let (status, _, body) = rt
        .send_to(
            admin,
            Method::PUT,
            "/policies",
            &[],
            r#"{"version": 2, "policies": "nope"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = rt
        .send(Method::POST, "/pay", &[], r#"{"channel":"alipay"}"#)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // The slice is healthy again: after open_ms the ramp lets it back in, all the way.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut passed_in_last_round = 0;
    for _round in 0..10 {
        passed_in_last_round = 0;
        for _ in 0..10 {
            let (status, _, _) = rt
                .send(Method::POST, "/pay", &[], r#"{"channel":"alipay"}"#)
                .await;
            if status == StatusCode::OK {
                passed_in_last_round += 1;
            }
        }
    }
    assert_eq!(passed_in_last_round, 10, "the slice must be fully back in");
    let metrics = rt.metrics().await;
    assert!(
        metrics.contains(
            "rate_limit_hits_total{cluster_id=\"db-refused\",policy_type=\"circuit_break\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("enforcer_policy_snapshots_refused_total 1"),
        "{metrics}"
    );
    rt.stop().await;
}

#[tokio::test]
async fn failing_probes_reopen_the_policy_breaker() {
    let up = upstream().await;
    up.fail_alipay.store(true, Ordering::SeqCst);
    let rt = start(&config(
        &format!("\"http://{}\"", up.addr),
        "    dimensions: { body: [channel] }\n",
    ))
    .await;
    let signature = schemas::text::template_id("channel alipay: upstream timeout after 3000ms");
    rt.send_to(
        rt.gw().admin_addr,
        Method::PUT,
        "/policies",
        &[],
        &breaker_snapshot(1, signature),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            rt.send(Method::POST, "/pay", &[], r#"{"channel":"alipay"}"#)
                .await
                .0
                .as_u16(),
        );
    }
    let reached = statuses.iter().filter(|s| **s == 500).count();
    assert!(
        (1..=5).contains(&reached),
        "only a few probes reach the failing slice: {statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), 503, "{statuses:?}");
    rt.stop().await;
}

#[tokio::test]
async fn classic_route_breaker_and_limiter() {
    let up = upstream().await;
    let extra = "    limits:\n      circuit_breaker: { min_calls: 5, failure_ratio: 0.5, open_ms: 60000 }\n";
    let rt = start(&config(&format!("\"http://{}\"", up.addr), extra)).await;
    for _ in 0..5 {
        rt.send(Method::GET, "/fail", &[], "").await;
    }
    let (status, headers, _) = rt.send(Method::GET, "/ok", &[], "").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the whole route is broken, healthy requests included"
    );
    assert_eq!(headers["x-gateway-policy"], "classic-route-breaker");
    rt.stop().await;

    let extra = "    limits:\n      rate_limit: { requests_per_second: 1, burst: 3 }\n";
    let rt = start(&config(&format!("\"http://{}\"", up.addr), extra)).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(rt.send(Method::GET, "/ok", &[], "").await.0.as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    rt.stop().await;
}

/// Four workers, each with its own listener socket and runtime: 40 requests on 40 fresh
/// connections spread over them, and still meet one route limiter (one bucket of 10).
#[tokio::test]
async fn workers_share_the_route_state() {
    let up = upstream().await;
    let extra = "    limits:\n      rate_limit: { requests_per_second: 0.5, burst: 10 }\n";
    let yaml = format!(
        "workers: 4\n{}",
        config(&format!("\"http://{}\"", up.addr), extra)
    );
    let rt = start(&yaml).await;
    let addr = rt.gw().proxy_addr;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        set.spawn(async move {
            // A client of its own: a new connection, so the kernel picks a worker for it.
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let req = Request::get(format!("http://{addr}/ok"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.request(req).await.unwrap().status()
        });
    }
    let mut ok = 0;
    let mut limited = 0;
    while let Some(status) = set.join_next().await {
        match status.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // The burst, plus at most one token refilled while the requests ran.
    assert!((10..=11).contains(&ok), "{ok} admitted, {limited} limited");
    assert_eq!(ok + limited, 40);
    rt.stop().await;
}

#[tokio::test]
async fn admin_endpoints_and_unknown_routes() {
    let up = upstream().await;
    let rt = start(&config(
        &format!("\"http://{}\"", up.addr),
        "    match: { path_prefix: /api }\n",
    ))
    .await;
    let admin = rt.gw().admin_addr;
    assert_eq!(
        rt.send_to(admin, Method::GET, "/health", &[], "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        rt.send_to(admin, Method::GET, "/ready", &[], "").await.0,
        StatusCode::OK
    );
    let (status, _, _) = rt.send(Method::GET, "/elsewhere", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    rt.send(Method::GET, "/api/x", &[], "").await;
    let metrics = rt.metrics().await;
    for name in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "enforcer_event_queue_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("path=\"api\""),
        "the route name is the path label"
    );
    rt.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let up = upstream().await;
    let yaml = config(&format!("\"http://{}\"", up.addr), "")
        .replace("timeout_ms: 300", "timeout_ms: 5000")
        .replace("shutdown_grace_ms: 2000", "shutdown_grace_ms: 5000");
    let rt = start(&yaml).await;
    let addr = rt.gw().proxy_addr;
    let client = rt.client.clone();
    let in_flight = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/slow"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.request(req).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.stop().await;
    assert_eq!(in_flight.await.unwrap().unwrap(), StatusCode::OK);
}

type Exports = Arc<std::sync::Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP/HTTP collector: decodes and keeps every `POST /v1/traces` body.
async fn collector() -> (SocketAddr, Exports) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Exports = Arc::default();
    let keep = Arc::clone(&got);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let keep = Arc::clone(&keep);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let keep = Arc::clone(&keep);
                    async move {
                        let ok = req.uri().path() == "/v1/traces"
                            && req.headers()["content-type"] == "application/x-protobuf";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(export) if ok => {
                                keep.lock().unwrap().push(export);
                                StatusCode::OK
                            }
                            _ => StatusCode::BAD_REQUEST,
                        };
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn request_spans_reach_an_otlp_collector_with_the_forwarded_ids() {
    let up = upstream().await;
    let (collector_addr, exports) = collector().await;
    let yaml = format!(
        "telemetry: {{ otlp_endpoint: \"http://{collector_addr}/v1/traces\", export_interval_ms: 100 }}\nservice_name: edge-gw\n{}",
        config(&format!("\"http://{}\"", up.addr), "")
    );
    let rt = start(&yaml).await;
    let forwarded = |body: &str| -> (String, String) {
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        let tp = seen["traceparent"].as_str().unwrap().to_owned();
        let parts: Vec<&str> = tp.split('-').collect();
        (parts[1].to_owned(), parts[2].to_owned())
    };
    // A sampled caller: the span continues its trace, with the caller's span as parent.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, _, body) = rt
        .send(Method::GET, "/echo", &[("traceparent", caller)], "")
        .await;
    let (_, sampled_span) = forwarded(&body);
    // An unsampled caller: nothing exported.
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    rt.send(Method::GET, "/echo", &[("traceparent", unsampled)], "")
        .await;
    // A new trace (sample_ratio 1.0), and an upstream error.
    let (_, _, body) = rt.send(Method::GET, "/echo", &[], "").await;
    let (new_trace, new_span) = forwarded(&body);
    let (status, _, _) = rt.send(Method::GET, "/fail", &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    rt.stop().await; // flushes the exporter

    let exports = exports.lock().unwrap();
    let resource = exports[0].resource_spans[0].resource.as_ref().unwrap();
    assert!(
        resource
            .attributes
            .iter()
            .any(|kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("edge-gw")),
        "{resource:?}"
    );
    let spans: Vec<_> = exports
        .iter()
        .flat_map(|e| &e.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let by_span = |id: &str| spans.iter().find(|s| hex(&s.span_id) == id).unwrap();
    let s = by_span(&sampled_span);
    assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&s.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(s.name, "GET api");
    assert_eq!(s.kind, 2, "SPAN_KIND_SERVER");
    let s = by_span(&new_span);
    assert_eq!(hex(&s.trace_id), new_trace);
    assert!(s.parent_span_id.is_empty(), "a new trace has no parent");
    let failed = spans
        .iter()
        .find(|s| {
            s.attributes.iter().any(|kv| {
                kv.key == "http.response.status_code" && format!("{:?}", kv.value).contains("500")
            })
        })
        .unwrap();
    assert_eq!(failed.status.as_ref().unwrap().code, 2, "STATUS_CODE_ERROR");
    assert!(
        failed.end_time_unix_nano >= failed.start_time_unix_nano,
        "{failed:?}"
    );
}

#[test]
fn a_bad_config_file_exits_non_zero_with_the_field_path() {
    let dir = std::env::temp_dir().join(format!("enforcer-badcfg-{}.yaml", std::process::id()));
    std::fs::write(&dir, "routes:\n  - name: api\n    upstreams: []\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .arg("check-config")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes[0].upstreams"), "{stderr}");
}
