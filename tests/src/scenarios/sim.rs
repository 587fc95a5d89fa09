//! The upstream simulator: a payments and orders service on `127.0.0.1:0` that fails the way
//! the scenario's [`FaultPlan`] says, behind a fixed pool of workers.
//!
//! Capacity model: every request needs one of `workers` permits (a tokio [`Semaphore`], FIFO)
//! for its whole service time, as a thread of a fixed thread pool would. A request that waits
//! longer than `queue_timeout` for a worker is answered 503 "busy". The work runs in its own
//! task, so a client (the enforcer) giving up does not free the worker — a thread blocked on a
//! slow dependency is not interrupted either. Slow failures therefore pile up and delay, then
//! time out, healthy requests too: the collapse protection must prevent.
//!
//! The fault decision uses the request's `x-bench-seq` and `x-bench-t-ms` headers (its
//! sequence number and scheduled send time), so the load generator knows the ground truth.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::plan::{FaultKind, FaultPlan, RequestSpec, Route, message, mix};

/// The worker pool.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Workers (requests served at once).
    pub workers: usize,
    /// Longest wait for a worker before answering 503.
    pub queue_timeout: Duration,
    /// Service time of a healthy request, ms (plus up to as much again of jitter).
    pub base_service_ms: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            workers: 40,
            queue_timeout: Duration::from_millis(2500),
            base_service_ms: 4,
        }
    }
}

/// What the simulator counted.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Requests received.
    pub received: AtomicU64,
    /// Answered 503 because no worker came free in time.
    pub busy: AtomicU64,
}

struct Shared {
    plan: FaultPlan,
    pool: Arc<Semaphore>,
    capacity: Capacity,
    stats: Arc<SimStats>,
}

/// Starts the simulator; returns its address and counters.
pub async fn start(
    plan: FaultPlan,
    capacity: Capacity,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, Arc<SimStats>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(SimStats::default());
    let shared = Arc::new(Shared {
        plan,
        pool: Arc::new(Semaphore::new(capacity.workers)),
        capacity,
        stats: Arc::clone(&stats),
    });
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(handle(req, shared).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, stats))
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn header_u64(req: &http::request::Parts, name: &str) -> u64 {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The request as the plan sees it; `None` for anything but the two routes.
fn spec(parts: &http::request::Parts, body: &[u8]) -> Option<RequestSpec> {
    let seq = header_u64(parts, "x-bench-seq");
    let t_ms = header_u64(parts, "x-bench-t-ms");
    let path = parts.uri.path();
    if parts.method == Method::POST && path == "/pay" {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        Some(RequestSpec {
            seq,
            t_ms,
            route: Route::Pay,
            channel: v["channel"].as_str().unwrap_or_default().to_owned(),
            tenant: parts
                .headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            region: String::new(),
            order_id: v["order_id"].as_u64().unwrap_or(0),
            amount_cents: v["amount"].as_u64().unwrap_or(0),
        })
    } else if parts.method == Method::GET
        && let Some(id) = path.strip_prefix("/orders/")
    {
        let region = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("region="))
            .unwrap_or("")
            .to_owned();
        Some(RequestSpec {
            seq,
            t_ms,
            route: Route::Orders,
            channel: String::new(),
            tenant: String::new(),
            region,
            order_id: id.parse().unwrap_or(0),
            amount_cents: 0,
        })
    } else {
        None
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    shared.stats.received.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let Ok(body) = http_body_util::Limited::new(body, 1 << 16).collect().await else {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"code": 413, "message": "body too large"}),
        );
    };
    let Some(spec) = spec(&parts, &body.to_bytes()) else {
        return reply(
            StatusCode::NOT_FOUND,
            &json!({"code": 404, "message": "no such route"}),
        );
    };
    // The work runs detached: the worker stays busy for its service time even when the
    // caller has gone.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve(spec, shared, tx));
    rx.await.unwrap_or_else(|_| {
        reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"code": 500, "message": "worker lost"}),
        )
    })
}

async fn serve(
    spec: RequestSpec,
    shared: Arc<Shared>,
    tx: tokio::sync::oneshot::Sender<Response<Full<Bytes>>>,
) {
    let cap = shared.capacity;
    let waited = std::time::Instant::now();
    let permit =
        match tokio::time::timeout(cap.queue_timeout, Arc::clone(&shared.pool).acquire_owned())
            .await
        {
            Ok(Ok(p)) => p,
            _ => {
                shared.stats.busy.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"code": 503, "message": format!(
                        "server busy: all {} workers in use, waited {} ms (request {})",
                        cap.workers,
                        waited.elapsed().as_millis(),
                        spec.seq
                    )}),
                ));
                return;
            }
        };
    let outcome = shared.plan.outcome(&spec);
    let jitter = mix(spec.seq, 0x1171) % (cap.base_service_ms + 1);
    let hold = match outcome.failure {
        Some(FaultKind::SlowError { hold_ms, .. }) => hold_ms,
        _ => cap.base_service_ms + jitter + outcome.extra_ms,
    };
    tokio::time::sleep(Duration::from_millis(hold)).await;
    drop(permit);
    let resp = match outcome.failure {
        None | Some(FaultKind::Slow { .. }) => match spec.route {
            Route::Pay => reply(
                StatusCode::OK,
                &json!({"code": 0, "status": "paid", "channel": spec.channel,
                        "order_id": spec.order_id}),
            ),
            Route::Orders => reply(
                StatusCode::OK,
                &json!({"code": 0, "order_id": spec.order_id, "region": spec.region,
                        "state": "shipped"}),
            ),
        },
        Some(FaultKind::Error { status, family })
        | Some(FaultKind::SlowError { status, family, .. }) => reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &json!({"code": status, "message": message(family, &spec, 0xe77)}),
        ),
        Some(FaultKind::ErrorIn200 { code, family }) => reply(
            StatusCode::OK,
            &json!({"code": code, "message": message(family, &spec, 0xe77)}),
        ),
    };
    let _ = tx.send(resp);
}
