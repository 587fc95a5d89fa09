//! The built-in demo upstream: a small payments service with fault injection by slice.
//!
//! * `POST /pay` with `{"channel": "...", "amount": n}` answers `{"code":0,...}`, unless a
//!   fault is set for that channel: then it fails the way real dependencies fail, with
//!   messages whose variable parts change on every request (hosts, ports, ids, Chinese text).
//! * `GET /orders/{id}` answers an order.
//! * `PUT /faults/{channel}` with `{"mode": "error" | "slow" | "ok", "latency_ms": n}` sets a
//!   fault; `GET /faults` lists them. Any other path answers 200.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{ProxyBody, full};

/// A fault on one channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// `error` (500 with a dependency message), `slow` (answer after `latency_ms`), or `ok`.
    pub mode: String,
    /// Delay for `slow`, ms.
    #[serde(default)]
    pub latency_ms: u64,
}

type Faults = Arc<Mutex<HashMap<String, Fault>>>;

/// Starts the demo upstream on `addr`; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    initial: HashMap<String, Fault>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let faults: Faults = Arc::new(Mutex::new(initial));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            };
            let faults = Arc::clone(&faults);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let faults = Arc::clone(&faults);
                    async move { Ok::<_, Infallible>(handle(req, faults).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn reply(status: StatusCode, body: Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A failure message as a real client library would phrase it, with fresh variable parts.
fn failure_message(channel: &str) -> String {
    let n = fastrand::u32(2..250);
    let port = 5432;
    match fastrand::u8(0..4) {
        0 => format!("dial tcp 10.0.3.{n}:{port}: connect: connection refused (channel {channel})"),
        1 => format!(
            "pq: could not connect to server: Connection refused. Is the server running on host \"10.0.3.{n}\" and accepting TCP/IP connections on port {port}?"
        ),
        2 => format!(
            "数据库连接被拒绝: 10.0.3.{n}:{port} (渠道 {channel}, 请求 {})",
            fastrand::u64(..)
        ),
        _ => format!(
            "org.postgresql.util.PSQLException: Connection to 10.0.3.{n}:{port} refused. Check that the hostname and port are correct"
        ),
    }
}

async fn handle(req: Request<Incoming>, faults: Faults) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let bytes = match http_body_util::Limited::new(body, 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"code": 413, "message": "body too large"}),
            );
        }
    };
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::POST, "/pay") => {
            let channel = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("channel").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            let fault = faults.lock().ok().and_then(|f| f.get(&channel).cloned());
            match fault {
                Some(f) if f.mode == "error" => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"code": 50010, "message": failure_message(&channel)}),
                ),
                Some(f) if f.mode == "slow" => {
                    tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
                    reply(
                        StatusCode::OK,
                        json!({"code": 0, "status": "paid", "channel": channel}),
                    )
                }
                _ => reply(
                    StatusCode::OK,
                    json!({"code": 0, "status": "paid", "channel": channel}),
                ),
            }
        }
        (&Method::GET, "/faults") => {
            let all = faults.lock().map(|f| f.clone()).unwrap_or_default();
            reply(StatusCode::OK, json!(all))
        }
        (&Method::PUT, p) if p.starts_with("/faults/") => {
            let channel = p.trim_start_matches("/faults/").to_owned();
            match serde_json::from_slice::<Fault>(&bytes) {
                Ok(f) if ["error", "slow", "ok"].contains(&f.mode.as_str()) => {
                    if let Ok(mut all) = faults.lock() {
                        all.insert(channel, f);
                    }
                    reply(StatusCode::OK, json!({"ok": true}))
                }
                _ => reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "expected {\"mode\": \"error\"|\"slow\"|\"ok\", \"latency_ms\": n}"}),
                ),
            }
        }
        (&Method::GET, p) if p.starts_with("/orders/") => reply(
            StatusCode::OK,
            json!({"code": 0, "order": p.trim_start_matches("/orders/")}),
        ),
        _ => reply(StatusCode::OK, json!({"code": 0, "path": path})),
    }
}
