//! The request path, in named phases:
//!
//! 1. **route** — host / path / method → a configured route (404 when none);
//! 2. **identify** — keep or mint `X-Request-Id`, continue or start the W3C trace;
//! 3. **authenticate** — API key or JWT (401);
//! 4. **dimensions** — headers, query, path parameters, claims, and JSON body fields (the body
//!    is buffered only when a body dimension needs it, up to the route's cap: 413 above);
//! 5. **protect** — the classic rate limit and breakers, then the policies (429 / 503 / the
//!    route's fallback, always with `X-Gateway-Policy`, `X-Gateway-Cluster`, `Retry-After`);
//! 6. **forward** — to the next healthy upstream, streaming, under the route's timeout
//!    (refused → 502, timeout → 504);
//! 7. **judge** — status codes and, for 2xx, the JSON predicate; error bodies are peeked (up
//!    to the cap) for the message, and the response still streams through whole;
//! 8. **report** — breakers learn the outcome, counters and metrics move, error events and
//!    traffic samples are queued without waiting.
//!
//! Nothing here panics on bad input; every failure becomes a response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use schemas::{Dimensions, EVENT_SCHEMA_VERSION, ErrorEvent, ErrorKind, TrafficSample};
use serde_json::Value;

use crate::auth::{AuthError, Authenticator, claim_value};
use crate::body::{BoxError, ProxyBody, boxed, full, peek};
use crate::breaker::{Admission, Breaker, BreakerSettings, Outcome};
use crate::capture::capture;
use crate::clock::Clock;
use crate::config::{Config, DimensionsConfig, FallbackConfig, RouteConfig};
use crate::events::{EventEmitter, RouteCounters};
use crate::limiter::TokenBucket;
use crate::metrics::Metrics;
use crate::policy::{PolicyRuntime, PolicyStore, RejectKind, RequestView, Verdict};
use crate::predicate::Predicate;
use crate::route::{RouteMatcher, Upstream, UpstreamPool, parse_upstream};
use crate::telemetry::{RequestSpan, Telemetry};

/// `X-Gateway-Policy`: which policy (or classic limit) answered.
pub static X_GATEWAY_POLICY: HeaderName = HeaderName::from_static("x-gateway-policy");
/// `X-Gateway-Cluster`: the failure cluster behind it.
pub static X_GATEWAY_CLUSTER: HeaderName = HeaderName::from_static("x-gateway-cluster");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Substituted for dimension values beyond a route's cardinality cap.
pub const OTHER_VALUE: &str = schemas::OVERFLOW_VALUE;

/// Everything a route needs at request time, built once from config.
#[derive(Debug)]
pub struct RouteRuntime {
    name: String,
    matcher: RouteMatcher,
    pool: UpstreamPool,
    timeout: Duration,
    backoff_ms: u64,
    body_cap: usize,
    error_statuses: Vec<bool>,
    predicate: Option<Predicate>,
    dimensions: DimensionsConfig,
    seen_values: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    fallback: Option<FallbackConfig>,
    limiter: Option<Mutex<TokenBucket>>,
    breaker: Option<Mutex<Breaker>>,
    auth: Authenticator,
    /// Exact counters flushed each second.
    pub counters: RouteCounters,
}

impl RouteRuntime {
    fn new(config: &RouteConfig, now_ms: u64) -> Result<Self, String> {
        let upstream_breaker = config
            .limits
            .upstream_circuit_breaker
            .as_ref()
            .map(BreakerSettings::from);
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let mut up = parse_upstream(u)?;
                up.breaker = upstream_breaker
                    .clone()
                    .map(|s| Mutex::new(Breaker::new(s)));
                Ok(up)
            })
            .collect::<Result<Vec<Upstream>, String>>()?;
        let mut error_statuses = vec![false; 600];
        for s in &config.errors.statuses {
            if let Some(slot) = error_statuses.get_mut(usize::from(*s)) {
                *slot = true;
            }
        }
        let predicate = config
            .errors
            .json_predicate
            .as_deref()
            .map(Predicate::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            name: config.name.clone(),
            matcher: RouteMatcher::new(config),
            pool: UpstreamPool::new(upstreams),
            timeout: Duration::from_millis(config.timeout_ms),
            backoff_ms: config.unhealthy_backoff_ms,
            body_cap: config.max_inspected_body_bytes,
            error_statuses,
            predicate,
            dimensions: config.dimensions.clone(),
            seen_values: Mutex::new(HashMap::new()),
            fallback: config.fallback.clone(),
            limiter: config.limits.rate_limit.as_ref().map(|r| {
                let burst = r
                    .burst
                    .unwrap_or_else(|| r.requests_per_second.ceil().max(1.0) as u32);
                Mutex::new(TokenBucket::new(r.requests_per_second, burst, now_ms))
            }),
            breaker: config
                .limits
                .circuit_breaker
                .as_ref()
                .map(|b| Mutex::new(Breaker::new(BreakerSettings::from(b)))),
            auth: Authenticator::load(&config.auth)?,
            counters: RouteCounters::default(),
        })
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_error_status(&self, status: StatusCode) -> bool {
        self.error_statuses
            .get(usize::from(status.as_u16()))
            .copied()
            .unwrap_or(false)
    }

    /// Caps a dimension's distinct values: beyond `max_values`, new values read `<other>`.
    fn bounded(&self, key: &str, value: String) -> String {
        let mut seen = lock(&self.seen_values);
        let set = seen.entry(key.to_owned()).or_default();
        if set.contains(&value) {
            return value;
        }
        if set.len() < self.dimensions.max_values {
            set.insert(value.clone());
            value
        } else {
            OTHER_VALUE.to_owned()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The proxy: shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    routes: Arc<[RouteRuntime]>,
    policies: Arc<PolicyStore>,
    events: Arc<EventEmitter>,
    metrics: Metrics,
    client: Client<HttpConnector, ProxyBody>,
    clock: Clock,
    telemetry: Option<Arc<Telemetry>>,
}

/// A keep-alive client for upstream requests; its pooled connections run on the runtime
/// that first uses them.
fn upstream_client() -> Client<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// How the upstream exchange ended, before the response is built.
struct Exchange {
    status: StatusCode,
    error_kind: Option<ErrorKind>,
    message: Option<String>,
    stack: Vec<String>,
}

/// What a request is, once routed and identified.
struct Context<'a> {
    route: &'a RouteRuntime,
    method: http::Method,
    path: String,
    request_id: HeaderValue,
    trace_id: String,
    span_id: String,
    trace_flags: String,
    /// The caller's span id, when a valid `traceparent` came in.
    parent_span_id: Option<String>,
    dimensions: Dimensions,
    started: Instant,
    wall_ms: i64,
}

impl Proxy {
    /// Builds the proxy from validated config.
    pub fn new(
        config: &Config,
        policies: Arc<PolicyStore>,
        events: Arc<EventEmitter>,
        metrics: Metrics,
        clock: Clock,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Self, String> {
        let now = clock.monotonic_ms();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RouteRuntime::new(r, now).map_err(|e| format!("routes[{i}] ({}): {e}", r.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            routes: routes.into(),
            policies,
            events,
            metrics,
            client: upstream_client(),
            clock,
            telemetry,
        })
    }

    /// A proxy for one more worker thread: the same routes (limiters, breakers, counters),
    /// policies and event queue, with its own upstream connection pool, so the connections
    /// a worker uses live on its own runtime.
    pub fn worker(&self) -> Self {
        Self {
            routes: Arc::clone(&self.routes),
            policies: Arc::clone(&self.policies),
            events: Arc::clone(&self.events),
            metrics: self.metrics.clone(),
            client: upstream_client(),
            clock: self.clock,
            telemetry: self.telemetry.clone(),
        }
    }

    /// The routes (for the counters flush).
    pub fn routes(&self) -> &[RouteRuntime] {
        &self.routes
    }

    /// Handles one request; never fails.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(http::uri::Authority::as_str));
        let path = req.uri().path().to_owned();
        let found = self.routes.iter().find_map(|r| {
            r.matcher
                .matches(req.method(), host, &path)
                .map(|params| (r, params))
        });
        let Some((route, path_params)) = found else {
            return reason(
                StatusCode::NOT_FOUND,
                "no route matches this request",
                None,
                None,
                None,
            );
        };

        // identify
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_str(&random_id128()).unwrap_or(HeaderValue::from_static("0"))
            });
        let (trace_id, parent_span_id, trace_flags) = match req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some(t) => (t.trace_id, Some(t.parent_id), t.flags),
            None => (random_id128(), None, "01".to_owned()),
        };
        let mut ctx = Context {
            route,
            method: req.method().clone(),
            path,
            request_id,
            trace_id,
            span_id: random_id64(),
            trace_flags,
            parent_span_id,
            dimensions: Dimensions::new(),
            started,
            wall_ms: self.clock.wall_ms(),
        };

        // authenticate
        let claims = match route.auth.check(req.headers()) {
            Ok(c) => c,
            Err(e) => {
                let msg = match e {
                    AuthError::Missing => "authentication required".to_owned(),
                    AuthError::Invalid(m) => m,
                };
                let resp = reason(StatusCode::UNAUTHORIZED, &msg, None, None, None);
                return self.finish_local(&ctx, resp, false);
            }
        };

        // dimensions
        let (parts, body) = req.into_parts();
        self.collect_dimensions(&mut ctx, &parts, &path_params, &claims);
        let body: ProxyBody = if route.dimensions.body.is_empty() {
            boxed(body)
        } else {
            match self.body_dimensions(&mut ctx, &parts.headers, body).await {
                Ok(b) => b,
                Err(resp) => return self.finish_local(&ctx, resp, false),
            }
        };

        let now_ms = self.clock.monotonic_ms();
        let Some(upstream) = route.pool.pick(now_ms) else {
            return self.finish_local(
                &ctx,
                reason(
                    StatusCode::BAD_GATEWAY,
                    "route has no upstream",
                    None,
                    None,
                    None,
                ),
                true,
            );
        };
        let upstream_name = upstream.authority.as_str();

        // protect: classic limits first (they guard the route as a whole), then policies.
        if let Some(limiter) = &route.limiter
            && let Err(wait) = lock(limiter).try_take(now_ms)
        {
            self.metrics
                .rate_limit_hits
                .with_label_values(&["", "classic_rate_limit"])
                .inc();
            let resp = reason(
                StatusCode::TOO_MANY_REQUESTS,
                "route rate limit",
                Some("classic-rate-limit"),
                None,
                Some(wait),
            );
            return self.finish_local(&ctx, resp, true);
        }
        for (breaker, label) in [
            (route.breaker.as_ref(), "classic-route-breaker"),
            (upstream.breaker.as_ref(), "classic-upstream-breaker"),
        ] {
            if let Some(b) = breaker
                && let Admission::Reject { retry_after_ms } = lock(b).admit(now_ms)
            {
                self.metrics
                    .rate_limit_hits
                    .with_label_values(&["", label])
                    .inc();
                let resp = reason(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "circuit open",
                    Some(label),
                    None,
                    Some(retry_after_ms),
                );
                return self.finish_local(&ctx, resp, true);
            }
        }
        let view = RequestView {
            route: &route.name,
            method: ctx.method.as_str(),
            upstream: upstream_name,
            dimensions: &ctx.dimensions,
        };
        let policies = self.policies.load();
        let mut shadowed = None;
        let matched = match policies.judge(&view, now_ms, ctx.wall_ms) {
            Verdict::Reject {
                policy,
                kind,
                retry_after_ms,
            } => {
                let resp = self.policy_rejection(route, &policy, kind, retry_after_ms);
                return self.finish_local(&ctx, resp, true);
            }
            Verdict::Pass {
                matched,
                would_reject,
            } => {
                if let Some(p) = would_reject {
                    self.metrics
                        .shadow_rejections
                        .with_label_values(&[&p.policy.cluster_id])
                        .inc();
                    shadowed = Some(p);
                }
                matched
            }
        };

        // forward
        let (resp, exchange) = self.forward(&ctx, parts, body, upstream, now_ms).await;

        // report
        let latency_ms = ctx.started.elapsed().as_millis() as u64;
        let done_ms = self.clock.monotonic_ms();
        let is_error = exchange.error_kind.is_some();
        let template = exchange.message.as_deref().map(schemas::text::template_id);
        let outcome = Outcome {
            failure: is_error,
            latency_ms,
        };
        for breaker in [route.breaker.as_ref(), upstream.breaker.as_ref()]
            .into_iter()
            .flatten()
        {
            lock(breaker).record(done_ms, outcome);
        }
        for p in &matched {
            p.record(
                done_ms,
                if is_error {
                    Some(template.unwrap_or(0))
                } else {
                    None
                },
                latency_ms,
            );
        }
        if let Some(p) = shadowed {
            let outcome = if is_error { "failed" } else { "succeeded" };
            self.metrics
                .shadow_outcomes
                .with_label_values(&[&p.policy.cluster_id, outcome])
                .inc();
        }
        let cluster = matched.first().map_or("", |p| p.policy.cluster_id.as_str());
        self.observe(&ctx, exchange.status, cluster, is_error, false);
        if let Some(kind) = exchange.error_kind {
            self.emit_error(
                &ctx,
                upstream_name,
                &exchange,
                kind,
                template.unwrap_or(0),
                latency_ms,
                matched.first(),
            );
        }
        self.emit_sample(&ctx, upstream_name, exchange.status, is_error, false);
        with_ids(resp, &ctx)
    }

    fn collect_dimensions(
        &self,
        ctx: &mut Context<'_>,
        parts: &http::request::Parts,
        path_params: &[(String, String)],
        claims: &serde_json::Map<String, Value>,
    ) {
        let route = ctx.route;
        let d = &route.dimensions;
        for h in &d.headers {
            if let Some(v) = parts.headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
                let key = format!("header:{}", h.to_ascii_lowercase());
                let v = route.bounded(&key, v.to_owned());
                ctx.dimensions.insert(key, v);
            }
        }
        if !d.query.is_empty()
            && let Some(q) = parts.uri.query()
        {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if d.query.iter().any(|want| want == k) {
                    let key = format!("query:{k}");
                    let v = route.bounded(&key, percent_decode(v));
                    ctx.dimensions.insert(key, v);
                }
            }
        }
        for (name, value) in path_params {
            if d.path.contains(name) {
                let key = format!("path:{name}");
                let v = route.bounded(&key, value.clone());
                ctx.dimensions.insert(key, v);
            }
        }
        for c in &d.claims {
            if let Some(v) = claims.get(c).and_then(claim_value) {
                let key = format!("claim:{c}");
                let v = route.bounded(&key, v);
                ctx.dimensions.insert(key, v);
            }
        }
    }

    /// Buffers the request body (up to the cap) to read top-level JSON fields. A body that is
    /// not JSON is forwarded untouched, without body dimensions: judging it is the upstream's job.
    async fn body_dimensions(
        &self,
        ctx: &mut Context<'_>,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<ProxyBody, Response<ProxyBody>> {
        let route = ctx.route;
        let too_large = || {
            reason(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body exceeds the inspection cap",
                None,
                None,
                None,
            )
        };
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > route.body_cap as u64
        {
            return Err(too_large());
        }
        let limited = http_body_util::Limited::new(body, route.body_cap);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(_) => {
                return Err(reason(
                    StatusCode::BAD_REQUEST,
                    "could not read the request body",
                    None,
                    None,
                    None,
                ));
            }
        };
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) {
            for f in &route.dimensions.body {
                if let Some(v) = fields.get(f).and_then(claim_value) {
                    let key = format!("body:{f}");
                    let v = route.bounded(&key, v);
                    ctx.dimensions.insert(key, v);
                }
            }
        }
        Ok(full(bytes))
    }

    async fn forward(
        &self,
        ctx: &Context<'_>,
        parts: http::request::Parts,
        body: ProxyBody,
        upstream: &Upstream,
        now_ms: u64,
    ) -> (Response<ProxyBody>, Exchange) {
        let route = ctx.route;
        let path_and_query = match (&upstream.base_path, parts.uri.path_and_query()) {
            (base, Some(pq)) if base.is_empty() => pq.clone(),
            (base, pq) => {
                let pq = pq.map_or("/", http::uri::PathAndQuery::as_str);
                format!("{base}{pq}")
                    .parse()
                    .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/"))
            }
        };
        let uri = http::Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(upstream.authority.clone())
            .path_and_query(path_and_query)
            .build();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        let tp = format!("00-{}-{}-{}", ctx.trace_id, ctx.span_id, ctx.trace_flags);
        if let Ok(v) = HeaderValue::from_str(&tp) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        let (Ok(uri), Ok(mut request)) = (
            uri,
            Request::builder()
                .method(parts.method)
                .version(http::Version::HTTP_11)
                .body(body),
        ) else {
            let resp = reason(
                StatusCode::BAD_REQUEST,
                "request cannot be forwarded",
                None,
                None,
                None,
            );
            return (
                resp,
                Exchange {
                    status: StatusCode::BAD_REQUEST,
                    error_kind: None,
                    message: None,
                    stack: vec![],
                },
            );
        };
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        let deadline = tokio::time::Instant::now() + route.timeout;
        let result = tokio::time::timeout_at(deadline, self.client.request(request)).await;
        let response = match result {
            Err(_) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&route.name, "timeout"])
                    .inc();
                let msg = format!(
                    "upstream {} timed out after {} ms",
                    upstream.authority,
                    route.timeout.as_millis()
                );
                return self.transport_failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::Timeout,
                    msg,
                );
            }
            Ok(Err(e)) => {
                upstream.mark_unhealthy(now_ms + route.backoff_ms);
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&route.name, "transport"])
                    .inc();
                let msg = format!(
                    "upstream {} unreachable: {}",
                    upstream.authority,
                    error_chain(&e)
                );
                return self.transport_failure(StatusCode::BAD_GATEWAY, ErrorKind::Transport, msg);
            }
            Ok(Ok(r)) => r,
        };

        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let status = head.status;
        let status_error = route.is_error_status(status);
        let needs_predicate = !status_error && status.is_success() && route.predicate.is_some();
        if !status_error && !needs_predicate {
            let exchange = Exchange {
                status,
                error_kind: None,
                message: None,
                stack: vec![],
            };
            return (Response::from_parts(head, boxed(body)), exchange);
        }
        // Peek at the body (up to the cap, within the deadline) for the predicate and message.
        let peeked = tokio::time::timeout_at(deadline, peek(body, route.body_cap)).await;
        let (peeked, body) = match peeked {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&route.name, "body"])
                    .inc();
                let msg = format!(
                    "upstream {} failed mid-body: {}",
                    upstream.authority,
                    error_chain(e.as_ref())
                );
                return self.transport_failure(StatusCode::BAD_GATEWAY, ErrorKind::Transport, msg);
            }
            Err(_) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&route.name, "timeout"])
                    .inc();
                let msg = format!("upstream {} timed out sending the body", upstream.authority);
                return self.transport_failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::Timeout,
                    msg,
                );
            }
        };
        let error_kind = if status_error {
            Some(ErrorKind::Status)
        } else if peeked.complete
            && route
                .predicate
                .as_ref()
                .is_some_and(|p| p.eval_bytes(&peeked.prefix))
        {
            // A body larger than the cap is not judged: a partial JSON document never matches.
            Some(ErrorKind::BodyPredicate)
        } else {
            None
        };
        let (message, stack) = match error_kind {
            Some(_) => {
                let c = capture(&peeked.prefix, status.canonical_reason().unwrap_or("error"));
                (Some(c.message), c.stack)
            }
            None => (None, vec![]),
        };
        (
            Response::from_parts(head, body),
            Exchange {
                status,
                error_kind,
                message,
                stack,
            },
        )
    }

    fn transport_failure(
        &self,
        status: StatusCode,
        kind: ErrorKind,
        message: String,
    ) -> (Response<ProxyBody>, Exchange) {
        let resp = reason(status, &message, None, None, None);
        (
            resp,
            Exchange {
                status,
                error_kind: Some(kind),
                message: Some(message),
                stack: vec![],
            },
        )
    }

    fn policy_rejection(
        &self,
        route: &RouteRuntime,
        policy: &PolicyRuntime,
        kind: RejectKind,
        retry_after_ms: u64,
    ) -> Response<ProxyBody> {
        let cluster = policy.policy.cluster_id.as_str();
        self.metrics
            .rate_limit_hits
            .with_label_values(&[cluster, kind.policy_type()])
            .inc();
        let id = Some(policy.policy.id.as_str());
        match kind {
            RejectKind::RateLimited => reason(
                StatusCode::TOO_MANY_REQUESTS,
                "slice rate limited",
                id,
                Some(cluster),
                Some(retry_after_ms),
            ),
            RejectKind::CircuitOpen => reason(
                StatusCode::SERVICE_UNAVAILABLE,
                "slice circuit open",
                id,
                Some(cluster),
                Some(retry_after_ms),
            ),
            RejectKind::Degraded => match &route.fallback {
                Some(f) => fallback(f, id, cluster, retry_after_ms),
                None => reason(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "slice degraded",
                    id,
                    Some(cluster),
                    Some(retry_after_ms),
                ),
            },
        }
    }

    /// Accounts for a response the enforcer produced itself.
    fn finish_local(
        &self,
        ctx: &Context<'_>,
        resp: Response<ProxyBody>,
        rejected: bool,
    ) -> Response<ProxyBody> {
        let cluster = resp
            .headers()
            .get(&X_GATEWAY_CLUSTER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.observe(ctx, resp.status(), &cluster, false, rejected);
        self.emit_sample(ctx, "", resp.status(), false, rejected);
        with_ids(resp, ctx)
    }

    fn observe(
        &self,
        ctx: &Context<'_>,
        status: StatusCode,
        cluster: &str,
        is_error: bool,
        rejected: bool,
    ) {
        let route = ctx.route.name.as_str();
        let method = ctx.method.as_str();
        self.metrics
            .requests
            .with_label_values(&[method, route, status.as_str(), cluster])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[method, route, cluster])
            .observe(ctx.started.elapsed().as_secs_f64());
        ctx.route.counters.count(is_error, rejected);
        tracing::debug!(
            request_id = ctx.request_id.to_str().unwrap_or(""),
            trace_id = %ctx.trace_id,
            route,
            method,
            status = status.as_u16(),
            cluster,
            is_error,
            rejected,
            latency_us = ctx.started.elapsed().as_micros() as u64,
            "request"
        );
        if let Some(telemetry) = &self.telemetry {
            let end = std::time::SystemTime::now();
            telemetry.record(&RequestSpan {
                trace_id: &ctx.trace_id,
                span_id: &ctx.span_id,
                parent_span_id: ctx.parent_span_id.as_deref(),
                parent_sampled: ctx
                    .parent_span_id
                    .as_ref()
                    .map(|_| trace_flags_sampled(&ctx.trace_flags)),
                route,
                method,
                path: &ctx.path,
                status: status.as_u16(),
                cluster,
                is_error,
                rejected,
                start: end.checked_sub(ctx.started.elapsed()).unwrap_or(end),
                end,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_error(
        &self,
        ctx: &Context<'_>,
        upstream: &str,
        exchange: &Exchange,
        kind: ErrorKind,
        template_id: u64,
        latency_ms: u64,
        policy: Option<&Arc<PolicyRuntime>>,
    ) {
        let Some(sample_rate) = self.events.sample_error(template_id, ctx.wall_ms) else {
            return;
        };
        self.events.error(ErrorEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id: random_id128(),
            trace_id: ctx.trace_id.clone(),
            span_id: ctx.span_id.clone(),
            timestamp_ms: ctx.wall_ms,
            route: ctx.route.name.clone(),
            method: ctx.method.to_string(),
            path: schemas::text::desensitize(&ctx.path).into_owned(),
            upstream: upstream.to_owned(),
            status: exchange.status.as_u16(),
            error_kind: kind,
            message: exchange.message.clone().unwrap_or_default(),
            stack: exchange.stack.clone(),
            latency_ms: latency_ms as f64,
            template_id,
            dimensions: ctx.dimensions.clone(),
            sample_rate,
            policy_id: policy.map(|p| p.policy.id.clone()),
        });
    }

    fn emit_sample(
        &self,
        ctx: &Context<'_>,
        upstream: &str,
        status: StatusCode,
        is_error: bool,
        rejected: bool,
    ) {
        if !self.events.sample_traffic() {
            return;
        }
        self.events.traffic(TrafficSample {
            schema_version: EVENT_SCHEMA_VERSION,
            timestamp_ms: ctx.wall_ms,
            route: ctx.route.name.clone(),
            method: ctx.method.to_string(),
            upstream: upstream.to_owned(),
            status: status.as_u16(),
            is_error,
            rejected,
            dimensions: ctx.dimensions.clone(),
            sample_rate: self.events.traffic_sampling_rate(),
        });
    }
}

fn with_ids(mut resp: Response<ProxyBody>, ctx: &Context<'_>) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    resp
}

/// A JSON response the enforcer produced itself, with the gateway headers.
fn reason(
    status: StatusCode,
    message: &str,
    policy: Option<&str>,
    cluster: Option<&str>,
    retry_after_ms: Option<u64>,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": message,
        "policy": policy,
        "cluster": cluster,
        "retry_after_ms": retry_after_ms,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    gateway_headers(h, policy, cluster, retry_after_ms);
    resp
}

fn gateway_headers(
    h: &mut HeaderMap,
    policy: Option<&str>,
    cluster: Option<&str>,
    retry_after_ms: Option<u64>,
) {
    let text = |s: Option<&str>| {
        HeaderValue::from_str(s.unwrap_or("-")).unwrap_or(HeaderValue::from_static("-"))
    };
    h.insert(X_GATEWAY_POLICY.clone(), text(policy));
    h.insert(X_GATEWAY_CLUSTER.clone(), text(cluster));
    if let Some(ms) = retry_after_ms {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(ms.div_ceil(1000).max(1)),
        );
    }
}

fn fallback(
    f: &FallbackConfig,
    policy: Option<&str>,
    cluster: &str,
    retry_after_ms: u64,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(f.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    for (k, v) in &f.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    gateway_headers(h, policy, Some(cluster), Some(retry_after_ms));
    resp
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// A valid incoming `traceparent`.
#[derive(Debug, PartialEq)]
struct TraceParent {
    trace_id: String,
    parent_id: String,
    flags: String,
}

/// Whether W3C trace flags (2 hex digits) have the `sampled` bit.
fn trace_flags_sampled(flags: &str) -> bool {
    u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
fn parse_traceparent(v: &str) -> Option<TraceParent> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    ok.then(|| TraceParent {
        trace_id: trace.to_owned(),
        parent_id: parent.to_owned(),
        flags: flags.to_owned(),
    })
}

/// A random 128-bit id as 32 lower-case hex digits (W3C trace ids, request and event ids).
pub fn random_id128() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// A random 64-bit id as 16 lower-case hex digits (W3C span ids).
pub fn random_id64() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Response bodies of the enforcer's own answers, for tests.
pub async fn body_text(body: ProxyBody) -> Result<String, BoxError> {
    Ok(String::from_utf8_lossy(&body.collect().await?.to_bytes()).into_owned())
}

/// For tests that need a body type: an empty one.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_validated() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                parent_id: "00f067aa0ba902b7".into(),
                flags: "01".into(),
            })
        );
        assert!(trace_flags_sampled("01") && trace_flags_sampled("03"));
        assert!(!trace_flags_sampled("00") && !trace_flags_sampled("zz"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(percent_decode("%E6%94%AF"), "支");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
