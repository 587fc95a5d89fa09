//! The open-loop load generator: every stream sends at its fixed rate by the clock, one task
//! per request, never waiting for answers, so a slow gateway does not slow the offered load.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::plan::{FaultPlan, RequestSpec, Route, Scenario, request};
use super::score::Record;

/// How long a client waits for a whole answer before counting it as none.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends the scenario's traffic to `target` for its whole duration and returns one record per
/// request, in no particular order.
pub async fn run(scenario: &Scenario, target: SocketAddr) -> Vec<Record> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let plan = Arc::new(scenario.plan());
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let started = tokio::time::Instant::now();
    let duration = Duration::from_millis(scenario.duration_ms);
    let mut streams = Vec::new();
    for (index, stream) in scenario.streams.iter().cloned().enumerate() {
        let (client, plan, records) = (client.clone(), Arc::clone(&plan), Arc::clone(&records));
        streams.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(stream.rps));
            // Streams start staggered within one period so they do not all fire together.
            let offset = period.mul_f64(index as f64 / 8.0);
            let mut requests = Vec::new();
            for i in 0u64.. {
                let at = offset + period.mul_f64(i as f64);
                if at >= duration {
                    break;
                }
                tokio::time::sleep_until(started + at).await;
                let spec = request(index, &stream, i, at.as_millis() as u64);
                let (client, plan, records) =
                    (client.clone(), Arc::clone(&plan), Arc::clone(&records));
                requests.push(tokio::spawn(async move {
                    let record = send(&client, target, &plan, spec).await;
                    records
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(record);
                }));
            }
            for r in requests {
                let _ = r.await;
            }
        }));
    }
    for s in streams {
        let _ = s.await;
    }
    let mut out = std::mem::take(
        &mut *records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    out.sort_by(|a, b| a.t.total_cmp(&b.t));
    out
}

fn build(target: SocketAddr, spec: &RequestSpec) -> Option<hyper::Request<Full<Bytes>>> {
    let builder = hyper::Request::builder()
        .header("x-bench-seq", spec.seq)
        .header("x-bench-t-ms", spec.t_ms);
    match spec.route {
        Route::Pay => builder
            .method("POST")
            .uri(format!("http://{target}/pay"))
            .header("content-type", "application/json")
            .header("x-tenant", spec.tenant.as_str())
            .body(Full::new(Bytes::from(
                serde_json::json!({
                    "channel": spec.channel,
                    "amount": spec.amount_cents,
                    "order_id": spec.order_id,
                })
                .to_string(),
            )))
            .ok(),
        Route::Orders => builder
            .method("GET")
            .uri(format!(
                "http://{target}/orders/{}?region={}",
                spec.order_id, spec.region
            ))
            .body(Full::new(Bytes::new()))
            .ok(),
    }
}

async fn send(
    client: &HttpClient,
    target: SocketAddr,
    plan: &FaultPlan,
    spec: RequestSpec,
) -> Record {
    let sent = Instant::now();
    let mut record = Record {
        t: spec.t_ms as f64 / 1e3,
        status: 0,
        latency_ms: 0.0,
        rejected: false,
        succeeded: false,
        would_succeed: plan.would_succeed(&spec),
        slices: plan.incident_mask(&spec),
    };
    let answer = async {
        let resp = client.request(build(target, &spec)?).await.ok()?;
        let status = resp.status().as_u16();
        // The enforcer marks every answer it makes itself with `X-Gateway-Policy`; its 502 /
        // 504 for a refused or timed-out upstream carry the placeholder `-`: those are
        // upstream failures, not rejections.
        let rejected = resp
            .headers()
            .get("x-gateway-policy")
            .is_some_and(|v| v.as_bytes() != b"-");
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("code").and_then(serde_json::Value::as_i64));
        Some((status, rejected, code))
    };
    if let Ok(Some((status, rejected, code))) = tokio::time::timeout(CLIENT_TIMEOUT, answer).await {
        record.status = status;
        record.rejected = rejected;
        record.succeeded = !rejected && (200..300).contains(&status) && code == Some(0);
    }
    record.latency_ms = sent.elapsed().as_secs_f64() * 1e3;
    record
}
