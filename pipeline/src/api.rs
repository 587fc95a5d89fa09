//! The operator API: clusters and policies, and the controls over them. Documented in
//! `pipeline/openapi.yaml`; every route needs `Authorization: Bearer <token>`.
//!
//! Reads come straight from the decider; changes are [`Command`]s the job applies and
//! publishes, so the answer carries the snapshot version now in force (or the publisher's
//! error, 503).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use prometheus::Registry;
use schemas::Policy;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::decider::{ClusterView, Mode};
use crate::job::{Command, CommandRequest, SharedDecider, lock};
use crate::postgres::PgStore;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The job's decider (read only here).
    pub decider: SharedDecider,
    /// Where commands go.
    pub commands: mpsc::Sender<CommandRequest>,
    /// The bearer token every request must carry.
    pub token: String,
    /// The process's metrics, served on `/metrics`; the shadow report reads the enforcer's
    /// counters from it when an enforcer runs in the process (the embedded default).
    pub registry: Option<Registry>,
    /// PostgreSQL in distributed mode (`--pg-url`), for similar-cluster search.
    pub postgres: Option<std::sync::Arc<PgStore>>,
}

/// The routes, behind the token check.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/clusters/similar", get(similar))
        .route("/api/v1/clusters/{id}", get(cluster))
        .route("/api/v1/clusters/{id}/benign", put(benign))
        .route("/api/v1/policies", get(policies).post(force))
        .route("/api/v1/policies/{id}/mode", put(mode))
        .route("/api/v1/shadow", put(shadow))
        .route("/api/v1/shadow/report", get(shadow_report))
        // Only matched routes ask for the token: an unknown path is a plain 404.
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // Probes and scrapes carry no token (added after the layer, so outside it).
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Liveness: the process answers.
async fn health() -> &'static str {
    "ok"
}

/// The job's metrics (and, in the embedded default, the enforcer's) in the text format.
async fn metrics(State(s): State<ApiState>) -> Response {
    let Some(registry) = &s.registry else {
        return (StatusCode::NOT_FOUND, "no metrics registry").into_response();
    };
    match prometheus::TextEncoder::new().encode_to_string(&registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "operator API stopped");
    }
}

/// An error answer: `{"error": "..."}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn authenticate(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn clusters(State(s): State<ApiState>) -> Json<Vec<ClusterView>> {
    Json(lock(&s.decider).cluster_views())
}

async fn cluster(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    lock(&s.decider)
        .cluster_views()
        .into_iter()
        .find(|c| c.cluster_id == id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no cluster {id}")))
}

/// `GET /api/v1/clusters/similar?message=...&k=5`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimilarQuery {
    message: String,
    #[serde(default = "default_k")]
    k: usize,
}

fn default_k() -> usize {
    5
}

/// Most clusters one similar-cluster answer lists.
const MAX_SIMILAR: usize = 100;

async fn similar(
    State(s): State<ApiState>,
    q: Result<Query<SimilarQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(store) = s.postgres.clone() else {
        return Err(ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "no PostgreSQL in this pipeline: start it with --pg-url (LAG_PG_URL)".into(),
        ));
    };
    let Query(q) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    if q.message.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "message is empty".into()));
    }
    if !(1..=MAX_SIMILAR).contains(&q.k) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("k must be between 1 and {MAX_SIMILAR}"),
        ));
    }
    // The model runs on a blocking thread, not on the server's workers.
    let message = q.message;
    let vector = tokio::task::spawn_blocking(move || udfs::sql::embed(&message))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the message could not be embedded".into(),
            )
        })?;
    let clusters = store
        .similar(&vector, q.k)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({ "clusters": clusters })))
}

/// The policies in force and the operator's overrides.
#[derive(Debug, Serialize)]
struct PoliciesView {
    version: u64,
    global_shadow: bool,
    policies: Vec<Policy>,
    modes: BTreeMap<String, Mode>,
}

async fn policies(State(s): State<ApiState>) -> Json<PoliciesView> {
    let d = lock(&s.decider);
    Json(PoliciesView {
        version: d.version(),
        global_shadow: d.global_shadow(),
        policies: d.policies(),
        modes: d.modes().clone(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenignBody {
    benign: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowBody {
    enabled: bool,
}

/// Sends a command to the job and waits for the version it published.
async fn run(s: &ApiState, command: Command) -> Result<Json<serde_json::Value>, ApiError> {
    let (tx, rx) = oneshot::channel();
    let unavailable = |m: &str| ApiError(StatusCode::SERVICE_UNAVAILABLE, m.to_owned());
    s.commands
        .send_timeout((command, tx), Duration::from_secs(5))
        .await
        .map_err(|_| unavailable("the job is not taking commands"))?;
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(version))) => Ok(Json(json!({ "version": version }))),
        Ok(Ok(Err(e))) => Err(unavailable(&format!("publishing failed: {e}"))),
        _ => Err(unavailable("the job did not answer")),
    }
}

fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

async fn benign(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    b: Result<Json<BenignBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b = body(b)?;
    run(
        &s,
        Command::Benign {
            cluster_id: id,
            benign: b.benign,
        },
    )
    .await
}

async fn mode(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    b: Result<Json<ModeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b = body(b)?;
    run(
        &s,
        Command::Mode {
            policy_id: id,
            mode: b.mode,
        },
    )
    .await
}

async fn shadow(
    State(s): State<ApiState>,
    b: Result<Json<ShadowBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b = body(b)?;
    run(&s, Command::GlobalShadow(b.enabled)).await
}

async fn force(
    State(s): State<ApiState>,
    b: Result<Json<Policy>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let p = body(b)?;
    p.validate()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if p.expires_at_ms <= crate::job::wall_ms() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expires_at_ms is in the past".into(),
        ));
    }
    let r = run(&s, Command::Force(Box::new(p))).await?;
    Ok((StatusCode::CREATED, r))
}

/// What shadow policies would have done, per cluster.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ShadowLine {
    /// Requests a shadow policy would have rejected.
    pub would_reject: u64,
    /// Of those, answered successfully by the upstream.
    pub succeeded: u64,
    /// Of those, failed upstream.
    pub failed: u64,
}

async fn shadow_report(
    State(s): State<ApiState>,
) -> Result<Json<BTreeMap<String, ShadowLine>>, ApiError> {
    // The report reads the enforcer's counters; a job without an enforcer has none.
    let enforcer_here = s
        .registry
        .as_ref()
        .is_some_and(|r| r.gather().iter().any(|f| f.name().starts_with("enforcer_")));
    let Some(registry) = s.registry.as_ref().filter(|_| enforcer_here) else {
        return Err(ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "no enforcer in this process: read enforcer_shadow_* from each enforcer's /metrics"
                .into(),
        ));
    };
    Ok(Json(shadow_lines(registry)))
}

/// Sums the enforcer's shadow counters per cluster.
pub fn shadow_lines(registry: &Registry) -> BTreeMap<String, ShadowLine> {
    let mut out: BTreeMap<String, ShadowLine> = BTreeMap::new();
    for family in registry.gather() {
        let name = family.name();
        if name != "enforcer_shadow_rejections_total" && name != "enforcer_shadow_outcomes_total" {
            continue;
        }
        for m in family.get_metric() {
            let label = |k: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == k)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let value = m.get_counter().value() as u64;
            let line = out.entry(label("cluster_id")).or_default();
            match (name, label("outcome").as_str()) {
                ("enforcer_shadow_rejections_total", _) => line.would_reject += value,
                (_, "succeeded") => line.succeeded += value,
                _ => line.failed += value,
            }
        }
    }
    out
}
