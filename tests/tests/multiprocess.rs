//! The distributed mode end to end, in separate processes: two `enforcer run` and two
//! `pipeline job` over a Kafka and an etcd of the test's own (so they can be stopped), with the
//! demo upstream behind both enforcers.
//!
//! 1. One payment channel fails through both enforcers: the replicas produce one cluster and
//!    one policy, which both enforcers enforce on that channel only.
//! 2. The leading pipeline is killed mid-incident: the other takes the etcd lead and keeps the
//!    policy in force.
//! 3. The killed replica restarts: its clusters come back from PostgreSQL.
//! 4. etcd stops: both enforcers keep serving with their last policies.
//! 5. Kafka stops: both enforcers keep serving and count the events they drop.
//!
//! The replicas share a cluster index in the shared PostgreSQL (a schema of the test's own)
//! and template vectors in the shared Redis. Needs the binaries (`cargo build -p enforcer -p
//! pipeline`; `make test` builds them first), Debian's `etcd` and the Kafka jars
//! `deploy/services.sh` installs. Skips when `LAG_KAFKA_BROKERS` / `LAG_ETCD_ENDPOINTS` /
//! `LAG_PG_URL` / `LAG_REDIS_URL` are unset (services not installed), fails under `CI=true`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::own::{OwnEtcd, OwnKafka, free_port};
use e2e::require_service;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

type Http = HttpClient<HttpConnector, Full<Bytes>>;

const TOKEN: &str = "multiprocess-token";
const PREFIX: &str = "/lag/policies/";

/// `target/debug/<name>`, next to this test's own directory, or `$LAG_<NAME>_BIN`.
fn binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("LAG_{}_BIN", name.to_uppercase())) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p enforcer -p pipeline` (make test does)",
        path.display()
    );
    path
}

/// A child process killed when dropped; its output goes to a log file.
struct Proc {
    name: String,
    child: std::sync::Mutex<Option<Child>>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Self {
        // The services' variables would override the endpoints given here (the binaries
        // read them from the environment): every child talks to the test's own services.
        for var in [
            "LAG_KAFKA_BROKERS",
            "LAG_ETCD_ENDPOINTS",
            "LAG_REDIS_URL",
            "LAG_PIPELINE_PG_URL",
        ] {
            cmd.env_remove(var);
        }
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = cmd
            .stdout(file)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.to_owned(),
            child: std::sync::Mutex::new(Some(child)),
            log,
        }
    }

    fn kill(&self) {
        let taken = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut c) = taken {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!("--- {} ---\n{}", self.name, lines[from..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(status, X-Gateway-Policy)` of `POST /pay {"channel": channel}` through `addr`.
async fn pay(client: &Http, addr: SocketAddr, channel: &str) -> (u16, Option<String>) {
    let req = http::Request::post(format!("http://{addr}/pay"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"channel":"{channel}"}}"#
        ))))
        .expect("request");
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let policy = resp
                .headers()
                .get("x-gateway-policy")
                .and_then(|v| v.to_str().ok())
                .filter(|v| *v != "-")
                .map(str::to_owned);
            let _ = resp.into_body().collect().await;
            (status, policy)
        }
        Ok(Err(e)) => panic!("POST /pay through {addr}: {e}"),
        Err(_) => panic!("POST /pay through {addr}: no answer in 5 s"),
    }
}

/// Whether most of 20 alipay payments through `addr` are answered by a policy: a circuit
/// break lets a few probes through while it ramps, so one request proves nothing.
async fn mostly_rejected(client: &Http, addr: SocketAddr) -> bool {
    let mut rejected = 0;
    for _ in 0..20 {
        if pay(client, addr, "alipay").await.1.is_some() {
            rejected += 1;
        }
    }
    rejected >= 10
}

async fn get_text(client: &Http, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = http::Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            (
                status,
                body.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
            )
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Sum of a counter's samples in a Prometheus text page whose line starts with `name`.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` every 200 ms for up to `within`; panics with `what` and the process logs.
async fn eventually<F, Fut>(what: &str, within: Duration, procs: &[&Proc], mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let logs: Vec<String> = procs.iter().map(|p| p.tail()).collect();
            panic!("{what}: not within {within:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn etcd_value(url: &str, key: &str) -> Option<String> {
    let mut c = etcd_client::Client::connect([url], None).await.ok()?;
    let resp = c.get(key, None).await.ok()?;
    resp.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

fn enforcer_yaml(port: u16, admin: u16, upstream: SocketAddr, brokers: &str, etcd: &str) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nworkers: 1\nservice_name: shop\n\
         policies:\n  source: etcd\n  etcd:\n    endpoints: [\"{etcd}\"]\n    prefix: {PREFIX}\n\
         routes:\n  - name: payments\n    match: {{ path_prefix: /pay, methods: [POST] }}\n    \
         upstreams: [\"http://{upstream}\"]\n    timeout_ms: 2000\n    \
         errors: {{ json_predicate: \"$.code != 0\" }}\n    \
         dimensions: {{ body: [channel], max_values: 64 }}\n\
         events:\n  sink: kafka\n  sampling_rate: 1.0\n  traffic_sampling_rate: 1.0\n  \
         kafka: {{ brokers: \"{brokers}\", linger_ms: 5, message_timeout_ms: 3000, acks: all }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_enforcers_and_two_pipelines_ride_out_failover_and_outages() {
    // The shared services only say that Kafka and etcd are installed and expected here.
    let (Some(_), Some(_), Some(pg_url), Some(redis_url)) = (
        require_service("LAG_KAFKA_BROKERS"),
        require_service("LAG_ETCD_ENDPOINTS"),
        require_service("LAG_PG_URL"),
        require_service("LAG_REDIS_URL"),
    ) else {
        return;
    };
    let pg_schema = format!("lag_multiprocess_{}", std::process::id());
    let enforcer_bin = binary("enforcer");
    let pipeline_bin = binary("pipeline");
    let dir = std::env::temp_dir().join(format!("lag-multiprocess-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    let mut etcd = OwnEtcd::new(&dir);
    etcd.start();
    let mut kafka = OwnKafka::new(&dir);
    kafka.start().expect("a Kafka of our own");
    let etcd_url = etcd.client_url.clone();
    let brokers = kafka.brokers.clone();

    let shutdown = CancellationToken::new();
    let upstream = enforcer::demo::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Default::default(),
        shutdown.child_token(),
    )
    .await
    .expect("demo upstream");

    // Two enforcers.
    let mut enforcers = Vec::new();
    let mut proxies = Vec::new();
    let mut admins = Vec::new();
    for i in 1..=2 {
        let (port, admin) = (free_port(), free_port());
        let yaml = dir.join(format!("enforcer{i}.yaml"));
        std::fs::write(
            &yaml,
            enforcer_yaml(port, admin, upstream, &brokers, &etcd_url),
        )
        .expect("config");
        enforcers.push(Proc::spawn(
            &format!("enforcer{i}"),
            &dir,
            Command::new(&enforcer_bin)
                .arg("run")
                .arg("--config")
                .arg(&yaml),
        ));
        proxies.push(SocketAddr::from(([127, 0, 0, 1], port)));
        admins.push(format!("http://127.0.0.1:{admin}"));
    }
    // Two pipeline replicas in one consumer group, sharing one cluster index in PostgreSQL
    // and template vectors in Redis.
    let api_ports = [free_port(), free_port()];
    let replica = |i: usize, log: &str| {
        let sql = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql");
        Proc::spawn(
            log,
            &dir,
            Command::new(&pipeline_bin)
                .arg("job")
                .args(["--kafka-brokers", &brokers])
                .args(["--etcd-endpoints", &etcd_url])
                .args(["--etcd-lease-ttl-s", "3"])
                .args(["--instance", &format!("p{i}")])
                .args(["--api-listen", &format!("127.0.0.1:{}", api_ports[i - 1])])
                .args(["--api-token", TOKEN])
                .args(["--sql", sql])
                .args(["--pg-url", &pg_url, "--pg-schema", &pg_schema])
                .args(["--redis-url", &redis_url])
                .env("RUST_LOG", "info"),
        )
    };
    let mut pipelines = vec![replica(1, "p1"), replica(2, "p2")];
    let apis: Vec<String> = api_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let client: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let all: Vec<&Proc> = enforcers.iter().chain(&pipelines).collect();
    for admin in &admins {
        eventually("enforcer ready", Duration::from_secs(30), &all, || {
            let c = client.clone();
            let url = format!("{admin}/ready");
            async move { get_text(&c, &url, None).await.0 == 200 }
        })
        .await;
    }
    for api in &apis {
        eventually("pipeline API up", Duration::from_secs(60), &all, || {
            let c = client.clone();
            let url = format!("{api}/health");
            async move { get_text(&c, &url, None).await.0 == 200 }
        })
        .await;
    }
    for p in &proxies {
        assert_eq!(pay(&client, *p, "alipay").await, (200, None));
    }

    // Load through both enforcers on three channels, until the test ends.
    let load = {
        let client = client.clone();
        let proxies = proxies.clone();
        let stop = shutdown.child_token();
        tokio::spawn(async move {
            let channels = ["alipay", "wechat", "card"];
            let mut i = 0usize;
            while !stop.is_cancelled() {
                let p = proxies[i % 2];
                let c = channels[(i / 2) % 3];
                let req = http::Request::post(format!("http://{p}/pay"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(r#"{{"channel":"{c}"}}"#))));
                if let Ok(req) = req {
                    let _ = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. The alipay channel fails behind both enforcers.
    let fault = http::Request::put(format!("http://{upstream}/faults/alipay"))
        .body(Full::new(Bytes::from(r#"{"mode":"error"}"#)))
        .expect("request");
    assert_eq!(
        client.request(fault).await.expect("PUT fault").status(),
        200
    );
    let fault_at = Instant::now();
    let mitigated = eventually(
        "both enforcers enforce a policy on alipay",
        Duration::from_secs(90),
        &all,
        || {
            let c = client.clone();
            let proxies = proxies.clone();
            async move {
                for p in &proxies {
                    if pay(&c, *p, "alipay").await.1.is_none() {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    println!(
        "mitigated by both enforcers {:.1} s after the fault",
        mitigated.as_secs_f64()
    );
    for p in &proxies {
        assert_eq!(
            pay(&client, *p, "wechat").await,
            (200, None),
            "another channel passes"
        );
    }
    let snapshot = etcd_value(&etcd_url, &format!("{PREFIX}snapshot"))
        .await
        .expect("a snapshot in etcd");
    let snap: serde_json::Value = serde_json::from_str(&snapshot).expect("snapshot json");
    let policies = snap["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "one policy: {snapshot}");
    let cluster = policies[0]["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_owned();
    assert!(
        policies[0]["slice"].to_string().contains("alipay"),
        "the slice is the failing channel: {}",
        policies[0]["slice"]
    );
    // Both replicas' deciders hold the same one policy (the standby follows the topic, a
    // moment behind the leader).
    for api in &apis {
        let held = eventually(
            "both replicas hold the one policy",
            Duration::from_secs(15),
            &all,
            || {
                let c = client.clone();
                let url = format!("{api}/api/v1/policies");
                let want = cluster.clone();
                async move {
                    let (status, body) = get_text(&c, &url, Some(TOKEN)).await;
                    let v: serde_json::Value =
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    let ids: Vec<&str> = v["policies"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|p| p["cluster_id"].as_str()).collect())
                        .unwrap_or_default();
                    status == 200 && ids == [want.as_str()]
                }
            },
        )
        .await;
        println!(
            "{api} holds the policy ({:.1} s after the check began)",
            held.as_secs_f64()
        );
    }

    // 2. Kill the leader mid-incident: the other replica takes over.
    let leader = etcd_value(&etcd_url, &format!("{PREFIX}leader"))
        .await
        .expect("a leader");
    let (dead, survivor) = if leader == "p1" { (0, 1) } else { (1, 0) };
    let version_before = snap["version"].as_u64().expect("version");
    pipelines[dead].kill();
    let killed_at = Instant::now();
    let survivor_name = format!("p{}", survivor + 1);
    let takeover = eventually(
        "the surviving replica leads and publishes",
        Duration::from_secs(30),
        &all,
        || {
            let url = etcd_url.clone();
            let name = survivor_name.clone();
            async move {
                let leads = etcd_value(&url, &format!("{PREFIX}leader")).await == Some(name);
                let newer = etcd_value(&url, &format!("{PREFIX}snapshot"))
                    .await
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .and_then(|v| v["version"].as_u64())
                    .is_some_and(|v| v > version_before);
                leads && newer
            }
        },
    )
    .await;
    println!(
        "leader {leader} killed; {survivor_name} published {:.1} s later",
        takeover.as_secs_f64()
    );
    // Mid-incident: the policy stays in force through the failover and after it, past the
    // group's 10 s session timeout (the survivor then owns every partition).
    let live: Vec<&Proc> = enforcers.iter().chain([&pipelines[survivor]]).collect();
    let mut samples = 0;
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        for admin in &admins {
            let page = get_text(&client, &format!("{admin}/policies"), None)
                .await
                .1;
            assert!(
                page.contains(&cluster),
                "the policy lapsed on {admin} during the failover: {page}"
            );
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in &proxies {
        assert!(
            mostly_rejected(&client, *p).await,
            "still enforced once the survivor owns every partition\n{}",
            live.iter().map(|p| p.tail()).collect::<Vec<_>>().join("\n")
        );
    }
    println!(
        "fault began {:.1} s ago; leader died {:.1} s ago; the policy was in force on both \
         enforcers in all {samples} samples since",
        fault_at.elapsed().as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );

    // 3. The killed replica restarts: its clusters come back from PostgreSQL (restored at
    //    start, before it reads a record), and it names the failure's cluster as the
    //    survivor does.
    let similar = |api: String| {
        let c = client.clone();
        async move {
            let q = "dial%20tcp%2010.0.3.77:5432:%20connect:%20connection%20refused%20(channel%20alipay)";
            let (status, body) = get_text(
                &c,
                &format!("{api}/api/v1/clusters/similar?message={q}&k=1"),
                Some(TOKEN),
            )
            .await;
            assert_eq!(status, 200, "{api}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            v["clusters"][0]["cluster_id"].as_str().map(str::to_owned)
        }
    };
    let before = similar(apis[survivor].clone())
        .await
        .expect("a similar cluster");
    pipelines[dead] = replica(dead + 1, &format!("p{}-restarted", dead + 1));
    let restarted = &pipelines[dead];
    eventually(
        "the restarted replica restores its clusters",
        Duration::from_secs(60),
        &[restarted],
        || {
            let log = restarted.log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.contains("shared cluster index attached")
                            && serde_json::from_str::<serde_json::Value>(l)
                                .ok()
                                .and_then(|v| v["fields"]["restored"].as_u64())
                                .is_some_and(|n| n > 0)
                    })
            }
        },
    )
    .await;
    eventually(
        "the restarted replica's API answers",
        Duration::from_secs(30),
        &[restarted],
        || {
            let c = client.clone();
            let url = format!("{}/health", apis[dead]);
            async move { get_text(&c, &url, None).await.0 == 200 }
        },
    )
    .await;
    let after = similar(apis[dead].clone())
        .await
        .expect("a similar cluster");
    assert_eq!(
        after, before,
        "the restarted replica names the same cluster"
    );
    println!(
        "p{} restarted: clusters restored from PostgreSQL; {after} again",
        dead + 1
    );

    // 4. etcd stops: the enforcers keep their last policies and keep serving.
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (p, admin) in proxies.iter().zip(&admins) {
        assert!(
            mostly_rejected(&client, *p).await,
            "policy kept without etcd"
        );
        assert_eq!(pay(&client, *p, "wechat").await, (200, None));
        assert_eq!(
            get_text(&client, &format!("{admin}/ready"), None).await.0,
            200
        );
    }

    // 5. Kafka stops: requests are still served; the events they make are dropped and counted.
    let dropped_before: Vec<f64> = {
        let mut v = Vec::new();
        for admin in &admins {
            let page = get_text(&client, &format!("{admin}/metrics"), None).await.1;
            v.push(metric_sum(&page, "enforcer_events_dropped_total"));
        }
        v
    };
    kafka.stop();
    let kafka_down = Instant::now();
    for _ in 0..50 {
        for p in &proxies {
            assert_eq!(pay(&client, *p, "wechat").await, (200, None));
        }
    }
    println!(
        "100 requests served with Kafka down in {:.2} s",
        kafka_down.elapsed().as_secs_f64()
    );
    let enforcer_procs: Vec<&Proc> = enforcers.iter().collect();
    for (i, admin) in admins.iter().enumerate() {
        let before = dropped_before[i];
        eventually(
            "the enforcer counts the events Kafka did not take",
            Duration::from_secs(20),
            &enforcer_procs,
            || {
                let c = client.clone();
                let url = format!("{admin}/metrics");
                async move {
                    metric_sum(
                        &get_text(&c, &url, None).await.1,
                        "enforcer_events_dropped_total",
                    ) > before
                }
            },
        )
        .await;
    }
    shutdown.cancel();
    let _ = load.await;
    drop(pipelines);
    if let Ok((pg, conn)) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = pg
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {pg_schema} CASCADE"))
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
