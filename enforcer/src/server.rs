//! Wiring: listeners, the admin endpoints, background tasks, and one shutdown tree.
//!
//! [`Gateway::start`] binds both listeners (so `/ready` can say they are up), builds the
//! proxy, and starts the proxy workers — one thread per core by default, each with its own
//! single-threaded runtime, `SO_REUSEPORT` listener socket and upstream pool, as nginx runs a
//! process per core, so a request is never handed between threads. On the caller's runtime
//! it spawns the admin accept loop, the once-a-second ticker (route counts, breaker gauges),
//! and the file or etcd policy source when configured. Everything stops on the shared cancellation
//! token; the workers then drain in-flight requests for at most `shutdown_grace_ms`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{Encoder, Registry, TextEncoder};
use schemas::GatewayRecord;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::body::{ProxyBody, full};
use crate::clock::Clock;
use crate::cluster_bucket::{ClusterLimits, Refiller};
use crate::config::{Config, PolicySourceKind, SinkKind};
use crate::etcd_source::EtcdSource;
use crate::events::EventEmitter;
use crate::kafka_sink::KafkaSink;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::policy_source::{FileSource, PolicySource, apply_counted};
use crate::proxy::Proxy;
use crate::redis_bucket::RedisBucketStore;
use crate::sink::{self, DiscardSink};
use crate::telemetry::Telemetry;

/// Largest snapshot accepted on the admin endpoint.
const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;

/// A running enforcer.
#[derive(Debug)]
pub struct Gateway {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// The policy store (the embedded policy source writes here).
    pub policies: Arc<PolicyStore>,
    /// The receiving end of the event queue, for an in-process consumer (embedded sink).
    pub events: Option<mpsc::Receiver<GatewayRecord>>,
    /// The metrics.
    pub metrics: Metrics,
    /// The clock breakers and buckets run on: pass its `monotonic_ms()` to
    /// [`PolicyStore::apply`].
    pub clock: Clock,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    telemetry: Option<Arc<Telemetry>>,
    _workers: DropGuard,
}

impl Gateway {
    /// Binds, builds and starts everything; returns once both listeners accept.
    pub async fn start(
        config: Config,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let clock = Clock::default();
        let metrics = Metrics::register(registry).context("registering metrics")?;
        // Rate-limit policies share cluster-wide buckets in Redis when configured; the
        // refiller task below leases their tokens, requests never wait on Redis.
        let cluster_limits = config
            .cluster_limits
            .clone()
            .map(|c| ClusterLimits::new(c, &metrics));
        let policies = Arc::new(
            PolicyStore::new(
                config.policies.shadow,
                config.policies.source == PolicySourceKind::Embedded,
            )
            .with_cluster_limits(cluster_limits.clone()),
        );
        let (emitter, events_rx) = EventEmitter::new(&config.events, metrics.clone());
        let emitter = Arc::new(emitter);
        let telemetry = Telemetry::start(&config.telemetry, &config.service_name)
            .map_err(|e| anyhow::anyhow!(e))?
            .map(Arc::new);
        let proxy = Arc::new(
            Proxy::new(
                &config,
                Arc::clone(&policies),
                Arc::clone(&emitter),
                metrics.clone(),
                clock,
                telemetry.clone(),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        );
        let workers = config.worker_count();
        let proxy_sockets = reuseport_listeners(config.listen, workers)
            .with_context(|| format!("binding the proxy listener {}", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding the admin listener {}", config.admin_listen))?;
        let proxy_addr = proxy_sockets[0].local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut tasks = JoinSet::new();
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        // Workers stop with the shutdown token, or when the gateway is dropped unawaited.
        let workers_token = shutdown.child_token();
        for (i, socket) in proxy_sockets.into_iter().enumerate() {
            let done = spawn_worker(i, socket, proxy.worker(), workers_token.clone(), grace)
                .context("starting a proxy worker thread")?;
            tasks.spawn(async move {
                match done.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(worker = i, error = %e, "proxy worker failed"),
                    Err(_) => tracing::error!(worker = i, "proxy worker thread ended abruptly"),
                }
            });
        }
        {
            let admin = Arc::new(Admin {
                policies: Arc::clone(&policies),
                registry: registry.clone(),
                metrics: metrics.clone(),
                clock,
            });
            tasks.spawn(serve(
                "admin",
                admin_listener,
                shutdown.child_token(),
                grace,
                move |req| {
                    let admin = Arc::clone(&admin);
                    async move { admin.handle(req).await }
                },
            ));
        }
        tasks.spawn(ticker(
            Arc::clone(&proxy),
            Arc::clone(&emitter),
            Arc::clone(&policies),
            metrics.clone(),
            clock,
            shutdown.child_token(),
        ));
        if config.policies.source == PolicySourceKind::File
            && let Some(path) = config.policies.file.clone()
        {
            let source = FileSource {
                path,
                poll: Duration::from_secs(1),
            };
            tasks.spawn(source.run(
                Arc::clone(&policies),
                metrics.clone(),
                clock,
                shutdown.child_token(),
            ));
        }
        if config.policies.source == PolicySourceKind::Etcd
            && let Some(etcd) = config.policies.etcd.clone()
        {
            // Not ready until the first successful read of the snapshot key; after that the
            // last good snapshot serves through any etcd outage.
            tasks.spawn(EtcdSource { config: etcd }.run(
                Arc::clone(&policies),
                metrics.clone(),
                clock,
                shutdown.child_token(),
            ));
        }
        if let Some(limits) = cluster_limits {
            let store = RedisBucketStore::new(limits.config())
                .map_err(|e| anyhow::anyhow!("cluster_limits.redis_url: {e}"))?;
            tracing::info!(store = ?store, enforcers = limits.config().enforcers, "rate-limit policies use cluster-wide buckets");
            tasks.spawn(Refiller::new(limits, store).run(clock, shutdown.child_token()));
        }
        let events = match config.events.sink {
            SinkKind::Embedded => Some(events_rx),
            SinkKind::Discard => {
                tasks.spawn(sink::run(
                    events_rx,
                    DiscardSink,
                    metrics.clone(),
                    shutdown.child_token(),
                ));
                None
            }
            SinkKind::Kafka => {
                let kafka = config
                    .events
                    .kafka
                    .as_ref()
                    .context("events.sink: kafka without events.kafka")?;
                let sink = KafkaSink::new(kafka, &metrics).context("the kafka event sink")?;
                tracing::info!(brokers = %kafka.brokers, topics = ?sink.topics(), "events go to kafka");
                tasks.spawn(sink::run(
                    events_rx,
                    sink,
                    metrics.clone(),
                    shutdown.child_token(),
                ));
                None
            }
        };
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, routes = config.routes.len(), workers, "enforcer listening");
        Ok(Self {
            proxy_addr,
            admin_addr,
            policies,
            events,
            metrics,
            clock,
            tasks,
            shutdown,
            telemetry,
            _workers: workers_token.drop_guard(),
        })
    }

    /// Hands the event receiver to a consumer; without one, events are drained and dropped.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<GatewayRecord>> {
        self.events.take()
    }

    /// Drains events nobody consumes, so the queue does not sit full (they are counted as
    /// enqueued; nothing reads them).
    pub fn discard_unconsumed_events(&mut self) {
        if let Some(rx) = self.events.take() {
            self.tasks.spawn(sink::run(
                rx,
                DiscardSink,
                self.metrics.clone(),
                self.shutdown.child_token(),
            ));
        }
    }

    /// Stops accepting, drains in-flight requests, and waits for every task.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the shutdown token is cancelled and every task ended, then sends the
    /// spans still queued for export.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
        if let Some(t) = self.telemetry.take() {
            // The processor's shutdown joins its export thread: keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
    }
}

/// `n` listening sockets on `addr` sharing its port through `SO_REUSEPORT`, so the kernel
/// spreads connections across the worker threads (port 0: the first picks, the rest follow).
///
/// `SO_REUSEPORT` would also let a second enforcer started on the same port by mistake share
/// its traffic silently; a plain bind first makes that an "address in use" error.
fn reuseport_listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener = std::net::TcpListener::from(socket);
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Runs one proxy worker on its own thread and single-threaded runtime: its listener's
/// connections, their requests and its upstream pool never leave the thread. The receiver
/// reports how the worker ended.
fn spawn_worker(
    index: usize,
    socket: std::net::TcpListener,
    proxy: Proxy,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<tokio::sync::oneshot::Receiver<std::io::Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("proxy-worker-{index}"))
        .spawn(move || {
            let run = || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(socket)?;
                    let proxy = Arc::new(proxy);
                    serve("proxy", listener, shutdown, grace, move |req| {
                        let proxy = Arc::clone(&proxy);
                        async move { proxy.handle(req).await }
                    })
                    .await;
                    Ok(())
                })
            };
            let _ = done_tx.send(run());
        })?;
    Ok(done_rx)
}

async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = name, "drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(listener = name, grace_ms = grace.as_millis() as u64, "in-flight requests cut off after the grace period"),
    }
}

async fn ticker(
    proxy: Arc<Proxy>,
    events: Arc<EventEmitter>,
    policies: Arc<PolicyStore>,
    metrics: Metrics,
    clock: Clock,
    shutdown: CancellationToken,
) {
    // Tick just after each wall-clock second ends, so the counts of second S leave at about
    // S + 1.02 s: well inside the pipeline's 1 s watermark lateness.
    let past_second = u64::try_from(clock.wall_ms().rem_euclid(1000)).unwrap_or(0);
    let first = tokio::time::Instant::now() + Duration::from_millis(1000 - past_second + 20);
    let mut interval = tokio::time::interval_at(first, Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let second_ms = (clock.wall_ms() / 1000 - 1) * 1000;
        events.flush_counts(
            second_ms,
            proxy.routes().iter().map(|r| (r.name(), &r.counters)),
        );
        let now = clock.monotonic_ms();
        let current = policies.load();
        metrics
            .snapshot_version
            .set(i64::try_from(current.version()).unwrap_or(i64::MAX));
        metrics.policies_live.set(current.policies().len() as i64);
        for p in current.policies() {
            if let Some(state) = p.breaker_state(now) {
                metrics
                    .breaker_state
                    .with_label_values(&[&p.policy.cluster_id])
                    .set(state as i64);
            }
        }
    }
}

/// `/health`, `/ready`, `/metrics`, and `/policies` (GET the snapshot in force, PUT a new one).
struct Admin {
    policies: Arc<PolicyStore>,
    registry: Registry,
    metrics: Metrics,
    clock: Clock,
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (&Method::GET, "/ready") => {
                if self.policies.is_synced() {
                    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "policy source not synced"}),
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                let mut buf = Vec::new();
                if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
                    return json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"error": e.to_string()}),
                    );
                }
                let mut resp = Response::new(full(buf));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            (&Method::GET, "/policies") => {
                let current = self.policies.load();
                let policies: Vec<_> = current.policies().iter().map(|p| &p.policy).collect();
                json(
                    StatusCode::OK,
                    serde_json::json!({"version": current.version(), "policies": policies}),
                )
            }
            (&Method::PUT, "/policies") => {
                let body = http_body_util::Limited::new(req.into_body(), MAX_SNAPSHOT_BYTES);
                let bytes = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({"error": format!("cannot read body: {e}")}),
                        );
                    }
                };
                match apply_counted(&self.policies, &self.metrics, self.clock, &bytes) {
                    Ok(version) => json(StatusCode::OK, serde_json::json!({"version": version})),
                    Err(e) => {
                        let version = self.policies.load().version();
                        json(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({"error": e.to_string(), "version_in_force": version}),
                        )
                    }
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found"}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_a_port_but_a_second_gateway_cannot_take_it() {
        let group = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert!(group.iter().all(|l| l.local_addr().unwrap() == addr));
        let err = reuseport_listeners(addr, 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }
}
