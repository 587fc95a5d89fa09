//! The deployment files in `deploy/` checked against the code they deploy.
//!
//! - Every YAML and JSON file under `deploy/` parses (Helm templates are checked rendered).
//! - The Kubernetes manifests (`deploy/k8s/`) and the Helm chart's output (`helm lint --strict`
//!   and `helm template`, when a helm binary is found) have the essentials: apiVersion, kind,
//!   name; Deployments with resources, a non-root security context, liveness on `/health` and
//!   readiness on `/ready` on the admin port of the enforcer config they mount (parsed with
//!   `enforcer::config::Config`; `pipeline job` serves `/health` on its API port), etcd and
//!   Kafka endpoints from env, matching topic and etcd prefixes; the plan's replicas,
//!   requests and limits; an HPA on the enforcer Deployment with the plan's 3-20, 70 % CPU,
//!   80 % memory and 1000 requests per second.
//! - Every metric named in a PromQL expression (alert rules, the prometheus-adapter rule, the
//!   Grafana dashboard) is one the binaries register: the test builds the enforcer's and the
//!   pipeline's registries the way `enforcer run` and `pipeline job` do (the latter against
//!   real Kafka and etcd when `LAG_KAFKA_BROKERS` / `LAG_ETCD_ENDPOINTS` are set), sends a
//!   request through the proxy and reads `/metrics`; families with no series yet are
//!   confirmed by trying to register the same name again.
//! - The Grafana dashboard is a dashboard model: uid, title, schemaVersion, a Prometheus
//!   datasource variable every target uses, panels with ids, grid positions and queries.
//! - The Dockerfiles: two stages on the pinned toolchain, a non-root USER, a HEALTHCHECK on
//!   the admin port, the native build dependencies, and (pipeline) the model the binary loads.
//! - Where promtool and amtool are installed, `promtool check config`, `promtool test rules`
//!   (deploy/prometheus/alerts.test.yml) and `amtool check-config`.
//!
//! helm is looked up as `$LAG_HELM`, then `helm` on PATH, then `~/go/bin/helm`
//! (`bash deploy/helm/install-helm.sh` installs it); without it the Helm checks are skipped,
//! except under `CI=true`, where a missing helm fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use enforcer::config::{Config, PolicySourceKind, SinkKind};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_norway::Value;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- the plan's numbers

/// SEED.md, "Deployment": gateway replicas, requests and limits, HPA.
const ENFORCER_REPLICAS: u64 = 3;
const PIPELINE_REPLICAS: u64 = 2;
const ENFORCER_REQUESTS: CpuMemory = ("200m", "256Mi");
const ENFORCER_LIMITS: CpuMemory = ("500m", "512Mi");
const HPA_MIN: u64 = 3;
const HPA_MAX: u64 = 20;
const HPA_CPU: u64 = 70;
const HPA_MEMORY: u64 = 80;
const HPA_RPS: &str = "1000";
const NAMESPACE: &str = "gateway";

/// Series Prometheus makes itself; everything else must come from the binaries.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// 127.0.0.1, any free port.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose names end with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.expect("dir entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if path.is_dir() {
                todo.push(path);
            } else if name.is_some_and(|n| exts.iter().any(|x| n.ends_with(x))) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every document of a YAML text, empty ones dropped.
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_file(path: &Path) -> Value {
    let mut docs = yaml_docs(&read(path), &path.display().to_string());
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: a string expected, got {v:?}"))
}

/// A scalar as text (`cpu: 2` and `cpu: "2"` compare equal).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

// ---------------------------------------------------------------- every file parses

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let mut seen = 0;
    for path in files(&deploy(), &[".yaml", ".yml", ".json"]) {
        // Helm templates are Go templates, checked after `helm template` below.
        if path.components().any(|c| c.as_os_str() == "templates") {
            continue;
        }
        let text = read(&path);
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else {
            yaml_docs(&text, &path.display().to_string());
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} YAML/JSON files under deploy/");
}

// ---------------------------------------------------------------- Kubernetes objects

/// The objects of a set of manifests, by kind and name.
struct Objects(Vec<Value>);

impl Objects {
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0
            .iter()
            .filter(move |o| o["kind"].as_str() == Some(kind))
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    /// The Deployment whose container has this name.
    fn deployment_running(&self, container: &str) -> &Value {
        let found: Vec<_> = self
            .of_kind("Deployment")
            .filter(|d| {
                seq(&d["spec"]["template"]["spec"]["containers"])
                    .iter()
                    .any(|c| c["name"].as_str() == Some(container))
            })
            .collect();
        assert_eq!(found.len(), 1, "one Deployment running {container}");
        found[0]
    }
}

/// (cpu, memory) quantities as written in the manifests.
type CpuMemory = (&'static str, &'static str);

/// What one Deployment's container must look like.
struct Expect {
    container: &'static str,
    /// `enforcer run --config` (probes on the config's admin port, `/ready`) or
    /// `pipeline job` (no config file; `/health` and `/metrics` on the `--api-listen` port).
    runs_enforcer_config: bool,
    replicas: u64,
    /// Exact requests and limits, where the plan gives them.
    resources: Option<(CpuMemory, CpuMemory)>,
}

const ENFORCER: Expect = Expect {
    container: "enforcer",
    runs_enforcer_config: true,
    replicas: ENFORCER_REPLICAS,
    resources: Some((ENFORCER_REQUESTS, ENFORCER_LIMITS)),
};
const PIPELINE: Expect = Expect {
    container: "pipeline",
    runs_enforcer_config: false,
    replicas: PIPELINE_REPLICAS,
    resources: None,
};

/// Checks every object and the two Deployments; `namespaced` for the raw manifests, which
/// name their namespace (Helm's output leaves it to `--namespace`).
fn check_objects(objects: &Objects, namespaced: bool, source: &str) {
    for o in &objects.0 {
        let what = format!("{source}: {:?} {:?}", o["kind"], o["metadata"]["name"]);
        assert!(
            o["apiVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{what}: apiVersion"
        );
        let kind = s(&o["kind"], &what);
        assert!(
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{what}: name"
        );
        if namespaced && kind != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                Some(NAMESPACE),
                "{what}: namespace"
            );
        }
    }
    let enforcer = check_deployment(objects, &ENFORCER, source);
    let pipeline = check_deployment(objects, &PIPELINE, source);
    check_hpa(objects, &enforcer, source);
    check_services(objects, &enforcer, &pipeline, source);
    check_prefixes_agree(&enforcer, &pipeline, source);
    check_network_policies(objects, &[&enforcer, &pipeline], source);
}

/// Each NetworkPolicy selects one of the Deployments' pods and names ports they have; the
/// admin port is never open to everyone.
fn check_network_policies(objects: &Objects, deployments: &[&Checked], source: &str) {
    let mut seen = 0;
    for np in objects.of_kind("NetworkPolicy") {
        let what = format!("{source}: NetworkPolicy {:?}", np["metadata"]["name"]);
        let selector = np["spec"]["podSelector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        let d = deployments
            .iter()
            .find(|d| {
                selector.iter().all(|(k, v)| {
                    d.pod_labels
                        .get(k.as_str().unwrap_or_default())
                        .map(String::as_str)
                        == v.as_str()
                })
            })
            .unwrap_or_else(|| panic!("{what}: selects no Deployment's pods"));
        for rule in seq(&np["spec"]["ingress"]) {
            for port in seq(&rule["ports"]) {
                let name = scalar(&port["port"]).expect("port");
                assert!(
                    d.ports.contains_key(&name) || d.ports.values().any(|p| p.to_string() == name),
                    "{what}: port {name} is not a port of {}",
                    d.name
                );
                assert!(
                    !(name == "admin" && rule["from"].is_null()),
                    "{what}: the admin port (not authenticated) is open to everyone"
                );
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 2, "{source}: a NetworkPolicy for each Deployment");
}

/// What a checked Deployment tells the other checks.
struct Checked {
    name: String,
    pod_labels: BTreeMap<String, String>,
    /// Container port numbers by name.
    ports: BTreeMap<String, u64>,
    /// The enforcer config it runs with (`--config`, env applied); `pipeline job` has none.
    config: Option<Config>,
    env: BTreeMap<String, String>,
    args: Vec<String>,
}

fn check_deployment(objects: &Objects, expect: &Expect, source: &str) -> Checked {
    let d = objects.deployment_running(expect.container);
    let name = s(&d["metadata"]["name"], "Deployment name").to_owned();
    let what = format!("{source}: Deployment {name}");
    assert_eq!(d["apiVersion"].as_str(), Some("apps/v1"), "{what}");
    assert_eq!(
        d["spec"]["replicas"].as_u64(),
        Some(expect.replicas),
        "{what}: replicas"
    );
    let pod = &d["spec"]["template"]["spec"];
    let pod_labels: BTreeMap<String, String> = d["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: pod labels"))
        .iter()
        .map(|(k, v)| (s(k, &what).to_owned(), scalar(v).unwrap_or_default()))
        .collect();
    for (k, v) in d["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector")
    {
        assert_eq!(
            pod_labels.get(s(k, &what)).map(String::as_str),
            v.as_str(),
            "{what}: the selector must match the pod labels"
        );
    }
    let c = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(expect.container))
        .expect("container");
    let what = format!("{what}, container {}", expect.container);

    // Resources: both requests and limits, cpu and memory; the plan's exact values where given.
    let r = &c["resources"];
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                scalar(&r[kind][res]).is_some(),
                "{what}: resources.{kind}.{res}"
            );
        }
    }
    if let Some((req, lim)) = expect.resources {
        let got = |kind: &str| {
            (
                scalar(&r[kind]["cpu"]).expect("cpu"),
                scalar(&r[kind]["memory"]).expect("memory"),
            )
        };
        assert_eq!(
            got("requests"),
            (req.0.to_owned(), req.1.to_owned()),
            "{what}: requests"
        );
        assert_eq!(
            got("limits"),
            (lim.0.to_owned(), lim.1.to_owned()),
            "{what}: limits"
        );
    }

    // Non-root: runAsNonRoot and a non-zero uid (pod or container level), no escalation.
    let sc = |key: &str| {
        let v = &c["securityContext"][key];
        if v.is_null() {
            pod["securityContext"][key].clone()
        } else {
            v.clone()
        }
    };
    assert_eq!(
        sc("runAsNonRoot").as_bool(),
        Some(true),
        "{what}: runAsNonRoot"
    );
    assert!(
        sc("runAsUser").as_u64().is_some_and(|u| u > 0),
        "{what}: runAsUser > 0"
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );

    let ports: BTreeMap<String, u64> = seq(&c["ports"])
        .iter()
        .map(|p| {
            (
                s(&p["name"], &what).to_owned(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();
    let env = container_env(objects, c, &what);
    for var in ["LAG_ETCD_ENDPOINTS", "LAG_KAFKA_BROKERS"] {
        assert!(
            env.get(var).is_some_and(|v| !v.is_empty()),
            "{what}: env {var}"
        );
    }
    let args: Vec<String> = seq(&c["args"])
        .iter()
        .map(|a| scalar(a).expect("args are scalars"))
        .collect();

    let (config, probe_port, ready_path) = if expect.runs_enforcer_config {
        let config = mounted_config(objects, pod, c, &args, &env, &what);
        // The probes reach the admin listener from outside the pod: it must not be loopback.
        assert!(
            config.admin_listen.ip().is_unspecified(),
            "{what}: admin_listen on 0.0.0.0"
        );
        let port = u64::from(config.admin_listen.port());
        (Some(config), port, "/ready")
    } else {
        // `pipeline job` reads the endpoints from env itself (clap); they must still be what
        // the enforcer config accepts: validate them through the same code.
        let mut probe = Config::parse(
            "events: {sink: kafka, kafka: {brokers: \"k:1\"}}\npolicies: {source: etcd, etcd: {endpoints: [\"http://e:1\"]}}\nroutes: [{name: r, upstreams: [\"http://u:1\"]}]\n",
        )
        .expect("probe config");
        probe
            .apply_env(|k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{what}: endpoints from env: {e}"));
        assert_eq!(
            args.first().map(String::as_str),
            Some("job"),
            "{what}: runs `pipeline job`"
        );
        let api = flag(&args, "--api-listen").expect("--api-listen");
        let api: SocketAddr = api.parse().expect("--api-listen address");
        assert!(
            api.ip().is_unspecified(),
            "{what}: the API listens on 0.0.0.0"
        );
        (None, u64::from(api.port()), "/health")
    };

    // Liveness on /health and readiness on /ready (the pipeline has only /health), on the
    // port the process serves them on (named or numbered).
    for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", ready_path)] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe} path");
        let port = match &get["port"] {
            Value::String(n) => *ports
                .get(n)
                .unwrap_or_else(|| panic!("{what}: {probe} port {n} is not a container port")),
            v => v.as_u64().expect("probe port"),
        };
        assert_eq!(
            port, probe_port,
            "{what}: {probe} on the port serving {path}"
        );
    }
    Checked {
        name,
        pod_labels,
        ports,
        config,
        env,
        args,
    }
}

/// The value after `name` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .skip_while(|a| *a != name)
        .nth(1)
        .map(String::as_str)
}

/// The enforcer config behind `--config`, from a mounted ConfigMap, with the env overrides
/// applied exactly as the binaries do; it must take policies from etcd and send events to
/// Kafka, with both endpoints from env.
fn mounted_config(
    objects: &Objects,
    pod: &Value,
    c: &Value,
    args: &[String],
    env: &BTreeMap<String, String>,
    what: &str,
) -> Config {
    let path = flag(args, "--config").unwrap_or_else(|| panic!("{what}: --config in {args:?}"));
    let text = mounted_configmap_file(objects, pod, c, path, what);
    let mut config = Config::parse(&text).unwrap_or_else(|e| panic!("{what}: {path}: {e}"));
    let applied = config
        .apply_env(|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{what}: {path} with its env: {e}"));
    assert_eq!(
        applied,
        ["LAG_ETCD_ENDPOINTS", "LAG_KAFKA_BROKERS"],
        "{what}: overrides applied"
    );
    assert_eq!(
        config.policies.source,
        PolicySourceKind::Etcd,
        "{what}: policies from etcd"
    );
    assert_eq!(
        config.events.sink,
        SinkKind::Kafka,
        "{what}: events to Kafka"
    );
    config
}

/// The pipeline reads the topics the enforcers write and publishes where they watch.
fn check_prefixes_agree(enforcer: &Checked, pipeline: &Checked, source: &str) {
    let config = enforcer.config.as_ref().expect("the enforcer's config");
    let kafka = config.events.kafka.as_ref().expect("events.kafka");
    let etcd = config.policies.etcd.as_ref().expect("policies.etcd");
    let topic_prefix = flag(&pipeline.args, "--kafka-topic-prefix")
        .unwrap_or(schemas::names::DEFAULT_TOPIC_PREFIX);
    assert_eq!(
        topic_prefix, kafka.topic_prefix,
        "{source}: pipeline --kafka-topic-prefix"
    );
    let etcd_prefix =
        flag(&pipeline.args, "--etcd-prefix").unwrap_or(schemas::names::ETCD_POLICY_PREFIX);
    assert_eq!(etcd_prefix, etcd.prefix, "{source}: pipeline --etcd-prefix");
}

/// The container's env with `configMapKeyRef`s resolved against the manifests' ConfigMaps
/// (Secret references resolve to the empty string: they are the operator's).
fn container_env(objects: &Objects, c: &Value, what: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in seq(&c["env"]) {
        let name = s(&e["name"], what).to_owned();
        let value = if let Some(v) = scalar(&e["value"]) {
            v
        } else if !e["valueFrom"]["configMapKeyRef"].is_null() {
            let r = &e["valueFrom"]["configMapKeyRef"];
            let cm = objects.named("ConfigMap", s(&r["name"], what));
            let key = s(&r["key"], what);
            scalar(&cm["data"][key])
                .unwrap_or_else(|| panic!("{what}: env {name}: ConfigMap has no key {key}"))
        } else {
            assert!(
                !e["valueFrom"]["secretKeyRef"].is_null(),
                "{what}: env {name} has no value"
            );
            String::new()
        };
        env.insert(name, value);
    }
    env
}

/// The text of `path` inside the container, which must come from a ConfigMap volume.
fn mounted_configmap_file(
    objects: &Objects,
    pod: &Value,
    c: &Value,
    path: &str,
    what: &str,
) -> String {
    let (dir, file) = path.rsplit_once('/').expect("absolute path");
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(dir))
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir}"));
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{what}: no volume {:?}", mount["name"]));
    let cm_name = s(
        &volume["configMap"]["name"],
        &format!("{what}: the volume at {dir} is a ConfigMap"),
    );
    let cm = objects.named("ConfigMap", cm_name);
    s(
        &cm["data"][file],
        &format!("{what}: ConfigMap {cm_name} key {file}"),
    )
    .to_owned()
}

fn check_hpa(objects: &Objects, enforcer: &Checked, source: &str) {
    let hpas: Vec<_> = objects.of_kind("HorizontalPodAutoscaler").collect();
    assert_eq!(hpas.len(), 1, "{source}: one HPA");
    let h = hpas[0];
    let what = format!("{source}: HPA");
    assert_eq!(h["apiVersion"].as_str(), Some("autoscaling/v2"), "{what}");
    let target = &h["spec"]["scaleTargetRef"];
    assert_eq!(
        target["kind"].as_str(),
        Some("Deployment"),
        "{what}: target kind"
    );
    assert_eq!(
        target["name"].as_str(),
        Some(enforcer.name.as_str()),
        "{what}: targets the enforcer"
    );
    assert_eq!(
        h["spec"]["minReplicas"].as_u64(),
        Some(HPA_MIN),
        "{what}: min"
    );
    assert_eq!(
        h["spec"]["maxReplicas"].as_u64(),
        Some(HPA_MAX),
        "{what}: max"
    );
    let mut resources = BTreeMap::new();
    let mut pods = BTreeMap::new();
    for m in seq(&h["spec"]["metrics"]) {
        match m["type"].as_str() {
            Some("Resource") => {
                assert_eq!(
                    m["resource"]["target"]["type"].as_str(),
                    Some("Utilization"),
                    "{what}"
                );
                resources.insert(
                    s(&m["resource"]["name"], &what).to_owned(),
                    m["resource"]["target"]["averageUtilization"]
                        .as_u64()
                        .expect("averageUtilization"),
                );
            }
            Some("Pods") => {
                pods.insert(
                    s(&m["pods"]["metric"]["name"], &what).to_owned(),
                    scalar(&m["pods"]["target"]["averageValue"]).expect("averageValue"),
                );
            }
            other => panic!("{what}: unexpected metric type {other:?}"),
        }
    }
    assert_eq!(
        resources,
        BTreeMap::from([
            ("cpu".to_owned(), HPA_CPU),
            ("memory".to_owned(), HPA_MEMORY)
        ]),
        "{what}: resource targets"
    );
    // The per-pod request rate is the metric the prometheus-adapter rule serves.
    let adapter = yaml_file(&deploy().join("prometheus/adapter-rules.yaml"));
    let served: BTreeSet<&str> = seq(&adapter["rules"])
        .iter()
        .filter_map(|r| r["name"]["as"].as_str())
        .collect();
    assert_eq!(pods.len(), 1, "{what}: one requests-per-second metric");
    for (metric, value) in &pods {
        assert!(
            served.contains(metric.as_str()),
            "{what}: {metric} is not served by adapter-rules.yaml ({served:?})"
        );
        assert_eq!(value, HPA_RPS, "{what}: {metric} target");
    }
}

fn check_services(objects: &Objects, enforcer: &Checked, pipeline: &Checked, source: &str) {
    let selects = |svc: &Value, d: &Checked| {
        svc["spec"]["selector"].as_mapping().is_some_and(|m| {
            m.iter().all(|(k, v)| {
                d.pod_labels
                    .get(k.as_str().unwrap_or_default())
                    .map(String::as_str)
                    == v.as_str()
            })
        })
    };
    let lb = objects
        .of_kind("Service")
        .find(|s| selects(s, enforcer))
        .unwrap_or_else(|| panic!("{source}: no Service selects the enforcer pods"));
    assert_eq!(
        lb["spec"]["type"].as_str(),
        Some("LoadBalancer"),
        "{source}: the plan's LoadBalancer"
    );
    let ports = seq(&lb["spec"]["ports"]);
    assert_eq!(
        ports.len(),
        1,
        "{source}: only the proxy port is exposed (admin is not authenticated)"
    );
    assert_eq!(
        ports[0]["port"].as_u64(),
        Some(80),
        "{source}: the plan's port 80"
    );
    let target = scalar(&ports[0]["targetPort"]).expect("targetPort");
    let target = enforcer
        .ports
        .get(&target)
        .copied()
        .or_else(|| target.parse().ok());
    assert_eq!(
        target,
        enforcer.config.as_ref().map(|c| u64::from(c.listen.port())),
        "{source}: Service → the proxy listener"
    );

    // The pipeline: the model where the image puts it, the API port exposed.
    let a = &pipeline.args;
    let api = flag(a, "--api-listen").expect("--api-listen");
    let api: SocketAddr = api.parse().expect("--api-listen address");
    assert!(
        api.ip().is_unspecified(),
        "{source}: the API listens on 0.0.0.0"
    );
    assert_eq!(
        pipeline.ports.get("api"),
        Some(&u64::from(api.port())),
        "{source}: api container port"
    );
    let model = pipeline.env.get("LAG_MODEL_DIR").expect("LAG_MODEL_DIR");
    assert_eq!(
        Some(model.as_str()),
        dockerfile_env("pipeline", "LAG_MODEL_DIR").as_deref(),
        "{source}: LAG_MODEL_DIR as in the image"
    );
    let sql = flag(a, "--sql").expect("--sql");
    let in_repo = sql
        .strip_prefix("/opt/lag/")
        .expect("--sql under /opt/lag (the image's copy of sql/)");
    assert!(
        repo().join(in_repo).is_file(),
        "{source}: --sql {sql}: no {in_repo} in the repository"
    );
}

#[test]
fn kubernetes_manifests_have_the_essentials_and_the_plans_values() {
    let mut docs = Vec::new();
    for path in files(&deploy().join("k8s"), &[".yaml"]) {
        docs.extend(yaml_docs(&read(&path), &path.display().to_string()));
    }
    let objects = Objects(docs);
    assert_eq!(objects.of_kind("Namespace").count(), 1, "the namespace");
    check_objects(&objects, true, "deploy/k8s");
}

// ---------------------------------------------------------------- Helm

/// A tool named by `$var`, else on PATH, else in `~/go/bin` (where `go install` puts it).
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    let in_go = std::env::var_os("HOME").map(|h| Path::new(&h).join("go/bin").join(name));
    on_path.chain(in_go).find(|p| p.is_file())
}

fn helm() -> Option<PathBuf> {
    tool("LAG_HELM", "helm")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn helm_chart_lints_and_renders_what_the_manifests_have() {
    let Some(helm) = e2e::require_tool(
        helm(),
        "no helm binary ($LAG_HELM, PATH, ~/go/bin)",
        ".ci/run installs it with `bash deploy/helm/install-helm.sh`",
    ) else {
        return;
    };
    let chart = deploy().join("helm/llm-aware-gateway");
    let lint = run(Command::new(&helm).arg("lint").arg("--strict").arg(&chart));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let rendered = run(Command::new(&helm)
        .args(["template", "lag", "--namespace", NAMESPACE])
        .arg(&chart));
    let objects = Objects(yaml_docs(&rendered, "helm template"));
    check_objects(&objects, false, "helm template");

    // Without prometheus-adapter the HPA keeps CPU and memory only.
    let rendered = run(Command::new(&helm)
        .args([
            "template",
            "lag",
            "--set",
            "enforcer.hpa.requestsPerSecond.enabled=false",
        ])
        .arg(&chart));
    let objects = Objects(yaml_docs(&rendered, "helm template"));
    let hpa = objects
        .of_kind("HorizontalPodAutoscaler")
        .next()
        .expect("HPA");
    assert_eq!(seq(&hpa["spec"]["metrics"]).len(), 2);
}

// ---------------------------------------------------------------- metric names

/// The names in a PromQL expression that are metric names: identifiers that are not
/// functions, aggregations, keywords, label names (inside `{}` or `by (...)`) or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |from: usize, close: char| {
        chars[from + 1..]
            .iter()
            .position(|c| *c == close)
            .map_or(chars.len(), |p| from + 1 + p + 1)
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_to(i, c); // string literal
        } else if c == '{' {
            i = skip_to(i, '}'); // label matchers
        } else if c == '[' {
            i = skip_to(i, ']'); // range or subquery duration
        } else if c == '$' {
            // Grafana variable: $name or ${name}
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // a number or a duration (5m, 1e3)
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            if GROUPING.contains(&word.as_str()) && call {
                i = skip_to(j, ')'); // label list
            } else if !call
                && !KEYWORDS.contains(&word.as_str())
                && !GROUPING.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression shipped in deploy/, with where it is.
fn shipped_promql() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let alerts = yaml_file(&deploy().join("prometheus/alerts.yml"));
    for g in seq(&alerts["groups"]) {
        for r in seq(&g["rules"]) {
            let name = scalar(&r["alert"])
                .or_else(|| scalar(&r["record"]))
                .expect("rule name");
            out.push((
                format!("alerts.yml {name}"),
                s(&r["expr"], &name).to_owned(),
            ));
        }
    }
    let adapter = yaml_file(&deploy().join("prometheus/adapter-rules.yaml"));
    for r in seq(&adapter["rules"]) {
        out.push((
            "adapter-rules.yaml seriesQuery".to_owned(),
            s(&r["seriesQuery"], "seriesQuery").to_owned(),
        ));
    }
    for path in files(&deploy().join("grafana"), &[".json"]) {
        let dash: serde_json::Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
        out.extend(dashboard_promql(
            &dash,
            &path.file_name().expect("file name").to_string_lossy(),
        ));
    }
    out
}

fn dashboard_promql(dash: &serde_json::Value, file: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dash["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten()); // collapsed rows
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default();
            out.push((
                format!("{file} panel {title:?}"),
                t["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        // label_values(metric, label): only the metric is PromQL.
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let metric = args.rsplit_once(',').map_or(args, |(m, _)| m);
            out.push((
                format!("{file} variable {:?}", v["name"]),
                metric.to_owned(),
            ));
        }
    }
    out
}

/// The names the binaries export, with their types, and a way to ask about empty families.
struct Exported {
    /// Series names in the scrape: counters and gauges as is, histograms as
    /// `_bucket` / `_sum` / `_count`.
    series: BTreeSet<String>,
    /// Histogram families: their bare name is no series.
    histograms: BTreeSet<String>,
    registries: Vec<prometheus::Registry>,
}

impl Exported {
    fn knows(&self, name: &str) -> bool {
        if self.series.contains(name) || PROMETHEUS_SERIES.contains(&name) {
            return true;
        }
        if self.histograms.contains(name) {
            return false;
        }
        // A family with no series yet (a vec nobody has used) is not in the scrape; it is
        // registered if registering the same name again is refused.
        self.registries.iter().any(|r| {
            let probe = prometheus::IntGauge::new(name, "probe").expect("a valid metric name");
            match r.register(Box::new(probe.clone())) {
                Ok(()) => {
                    r.unregister(Box::new(probe)).expect("unregister the probe");
                    false
                }
                Err(prometheus::Error::AlreadyReg) => true,
                Err(e) => panic!("probing {name}: {e}"),
            }
        })
    }

    fn unknown(&self, exprs: &[(String, String)]) -> Vec<String> {
        let mut bad = Vec::new();
        for (at, expr) in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{at}: no metric in {expr:?}");
            bad.extend(
                names
                    .into_iter()
                    .filter(|n| !self.knows(n))
                    .map(|n| format!("{at}: {n}")),
            );
        }
        bad
    }
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn get(client: &Http, url: String) -> (u16, String) {
    let resp = client
        .get(url.parse().expect("url"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Series names from a text exposition, and the histogram families among them.
fn scraped_series(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut out = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "histogram" => {
                    out.extend(["_bucket", "_sum", "_count"].map(|x| format!("{name}{x}")));
                    histograms.insert(name.to_owned());
                }
                "summary" => out.extend(["", "_sum", "_count"].map(|x| format!("{name}{x}"))),
                _ => {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    (out, histograms)
}

/// The shipped config as the tests can run it: loopback listeners on free ports, routes to
/// `upstream`, policies in-process. Policy source and event sink do not change which metrics
/// are registered (Metrics::register registers all of them); the pipeline's etcd publisher
/// registers none.
fn runnable(mut config: Config, upstream: SocketAddr) -> Config {
    config.listen = any_port();
    config.admin_listen = any_port();
    config.workers = Some(1);
    for r in &mut config.routes {
        r.upstreams = vec![format!("http://{upstream}")];
    }
    config.policies.source = PolicySourceKind::Embedded;
    config.policies.etcd = None;
    // No broker here: the producer and the consumer are created, never reach one.
    if let Some(k) = config.events.kafka.as_mut() {
        k.brokers = "127.0.0.1:9".to_owned();
        // Undeliverable records would hold shutdown for the default 10 s.
        k.linger_ms = 1;
        k.message_timeout_ms = 200;
    }
    config
}

fn kafka_admin(
    brokers: &str,
) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("kafka admin client")
}

/// The decision topic `pipeline job` needs (deploy/services.sh creates the real `policies`).
async fn create_topic(brokers: &str, topic: &str) {
    let new = rdkafka::admin::NewTopic::new(topic, 1, rdkafka::admin::TopicReplication::Fixed(1));
    let results = kafka_admin(brokers)
        .create_topics(&[new], &rdkafka::admin::AdminOptions::new())
        .await
        .expect("create topic");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

async fn delete_topic(brokers: &str, topic: &str) {
    let _ = kafka_admin(brokers)
        .delete_topics(&[topic], &rdkafka::admin::AdminOptions::new())
        .await;
}

/// Builds both binaries' registries the way `enforcer run` and `pipeline job` do (the
/// enforcer with the config the Kubernetes manifests mount), and reads their /metrics.
async fn exported() -> Exported {
    let shutdown = CancellationToken::new();
    let upstream = enforcer::demo::start(any_port(), Default::default(), shutdown.child_token())
        .await
        .expect("demo upstream");
    let cm = yaml_docs(
        &read(&deploy().join("k8s/11-config.yaml")),
        "11-config.yaml",
    )
    .remove(0);
    let config =
        Config::parse(s(&cm["data"]["enforcer.yaml"], "enforcer.yaml")).expect("k8s config");
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut series = BTreeSet::new();
    let mut histograms = BTreeSet::new();

    // enforcer run: Gateway::start with a fresh registry (enforcer/src/main.rs).
    let enforcer_registry = prometheus::Registry::new();
    let mut gw = enforcer::server::Gateway::start(
        runnable(config.clone(), upstream),
        &enforcer_registry,
        shutdown.child_token(),
    )
    .await
    .expect("enforcer starts");
    gw.discard_unconsumed_events();
    let (status, _) = get(&client, format!("http://{}/", gw.proxy_addr)).await;
    assert!(status < 500, "a request through the enforcer: {status}");
    let (status, text) = get(&client, format!("http://{}/metrics", gw.admin_addr)).await;
    assert_eq!(status, 200);
    let (found, hist) = scraped_series(&text);
    series.extend(found);
    histograms.extend(hist);

    // pipeline job (pipeline/src/live.rs → distributed::start). With Kafka and etcd at hand
    // (LAG_KAFKA_BROKERS / LAG_ETCD_ENDPOINTS: CI, `deploy/services.sh`), the real start —
    // on topics, a group and an etcd prefix of its own — read over HTTP from its /metrics.
    // Without them, the registrations distributed::start makes before it connects (Job::load,
    // KafkaSource::new); it registers nothing after them.
    let pipeline_registry = prometheus::Registry::new();
    let job = pipeline::job::JobConfig::new(vec![repo().join("sql/incident.sql")]);
    let services = (
        std::env::var("LAG_KAFKA_BROKERS")
            .ok()
            .filter(|v| !v.is_empty()),
        std::env::var("LAG_ETCD_ENDPOINTS")
            .ok()
            .filter(|v| !v.is_empty()),
    );
    let mut replica = None;
    if let (Some(brokers), Some(etcd)) = services {
        let id = format!("deploy-files-{}", std::process::id());
        let policies_topic = format!("{id}.policies");
        create_topic(&brokers, &policies_topic).await;
        let mut kafka = pipeline::kafka::KafkaSourceConfig::new(brokers.clone(), id.clone());
        kafka.topic_prefix = format!("{id}.");
        let endpoints = etcd.split(',').map(str::to_owned).collect();
        let mut etcd = pipeline::etcd::EtcdSettings::new(endpoints, id.clone());
        etcd.prefix = format!("/{id}/");
        let config = pipeline::distributed::ReplicaConfig {
            // PostgreSQL is optional (--pg-url); the manifests leave it off by default.
            postgres: None,
            kafka,
            policies: pipeline::policies_topic::PoliciesTopicConfig {
                brokers: brokers.clone(),
                topic: policies_topic.clone(),
                replica: id,
            },
            etcd,
        };
        let r = pipeline::distributed::start(
            job,
            config,
            any_port(),
            "token".to_owned(),
            &pipeline_registry,
            shutdown.child_token(),
        )
        .await
        .expect("pipeline job starts");
        let (status, text) = get(&client, format!("http://{}/metrics", r.api_addr)).await;
        assert_eq!(status, 200);
        let (found, hist) = scraped_series(&text);
        series.extend(found);
        histograms.extend(hist);
        replica = Some((r, policies_topic));
    } else {
        eprintln!(
            "LAG_KAFKA_BROKERS / LAG_ETCD_ENDPOINTS unset: the pipeline's registrations without connecting"
        );
        pipeline::job::Job::load(job, &pipeline_registry)
            .await
            .expect("the job loads");
        let kafka = pipeline::kafka::KafkaSourceConfig::new("127.0.0.1:9", "deploy-files-test");
        pipeline::kafka::KafkaSource::new(&kafka, &pipeline_registry).expect("kafka source");
    }

    shutdown.cancel();
    gw.wait().await;
    if let Some((r, topic)) = replica {
        r.job.await.expect("the job task");
        delete_topic(
            &std::env::var("LAG_KAFKA_BROKERS").unwrap_or_default(),
            &topic,
        )
        .await;
    }
    assert!(
        series.contains("gateway_request_duration_seconds_bucket"),
        "the histogram was scraped: {series:?}"
    );
    Exported {
        series,
        histograms,
        registries: vec![enforcer_registry, pipeline_registry],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_rules_and_dashboards_is_registered_by_the_binaries() {
    let exported = exported().await;
    let exprs = shipped_promql();
    assert!(
        exprs.len() >= 20,
        "only {} PromQL expressions found",
        exprs.len()
    );
    let unknown = exported.unknown(&exprs);
    assert!(
        unknown.is_empty(),
        "metrics no binary registers:\n{}",
        unknown.join("\n")
    );

    // The check can fail: a misspelt name in the real dashboard, and names that are not
    // series of a histogram, are caught.
    let dash = read(&deploy().join("grafana/lag-dashboard.json"));
    let typo: serde_json::Value = serde_json::from_str(&dash.replacen(
        "rate(gateway_requests_total",
        "rate(gateway_request_total",
        1,
    ))
    .unwrap();
    let bad = exported.unknown(&dashboard_promql(&typo, "typo.json"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].ends_with(": gateway_request_total"), "{bad:?}");
    let wrong = [
        (
            "bare histogram".to_owned(),
            "rate(gateway_request_duration_seconds[1m])".to_owned(),
        ),
        (
            "no such suffix".to_owned(),
            "rate(rate_limit_hits_total_bucket[1m])".to_owned(),
        ),
        (
            "a name nothing registers".to_owned(),
            "cluster_sizes > 1000".to_owned(),
        ),
    ];
    assert_eq!(exported.unknown(&wrong).len(), 3);
}

#[test]
fn grafana_dashboard_is_a_dashboard_model_on_a_datasource_variable() {
    for path in files(&deploy().join("grafana"), &[".json"]) {
        let what = path.display().to_string();
        let d: serde_json::Value = serde_json::from_str(&read(&path)).expect("JSON");
        for key in ["uid", "title"] {
            assert!(
                d[key].as_str().is_some_and(|v| !v.is_empty()),
                "{what}: {key}"
            );
        }
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
            "{what}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
            .unwrap_or_else(|| panic!("{what}: no Prometheus datasource variable"));
        let ds_ref = format!("${{{}}}", ds["name"].as_str().expect("variable name"));
        let mut ids = BTreeSet::new();
        let mut targets = 0;
        for p in d["panels"].as_array().expect("panels") {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{what}: duplicate id at {title:?}"
            );
            let g = &p["gridPos"];
            for k in ["x", "y", "w", "h"] {
                assert!(g[k].as_u64().is_some(), "{what}: {title:?} gridPos.{k}");
            }
            assert!(
                g["x"].as_u64().unwrap_or(0) + g["w"].as_u64().unwrap_or(0) <= 24,
                "{what}: {title:?} wider than the grid"
            );
            if p["type"] == "row" {
                continue;
            }
            let ts = p["targets"].as_array().filter(|t| !t.is_empty());
            let ts = ts.unwrap_or_else(|| panic!("{what}: {title:?} has no targets"));
            for t in ts {
                assert!(t["refId"].as_str().is_some(), "{what}: {title:?} refId");
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                    "{what}: {title:?} expr"
                );
                assert_eq!(
                    t["datasource"]["uid"].as_str(),
                    Some(ds_ref.as_str()),
                    "{what}: {title:?} uses the datasource variable"
                );
                targets += 1;
            }
        }
        assert!(targets >= 10, "{what}: {targets} targets");
    }
}

#[test]
fn rules_name_real_scrape_jobs() {
    let prom = yaml_file(&deploy().join("prometheus/prometheus.yml"));
    let jobs: BTreeSet<&str> = seq(&prom["scrape_configs"])
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert!(
        jobs.contains("lag-enforcer") && jobs.contains("lag-pipeline"),
        "{jobs:?}"
    );
    for f in seq(&prom["rule_files"]) {
        assert!(
            deploy()
                .join("prometheus")
                .join(s(f, "rule_files"))
                .is_file(),
            "rule file {f:?}"
        );
    }
    // Each scrape job keeps the pods of one Deployment, on the port that serves its /metrics
    // (the enforcer's admin port, the pipeline's API port).
    let mut docs = Vec::new();
    for path in files(&deploy().join("k8s"), &[".yaml"]) {
        docs.extend(yaml_docs(&read(&path), &path.display().to_string()));
    }
    let objects = Objects(docs);
    let metrics_port = BTreeMap::from([("lag-enforcer", "admin"), ("lag-pipeline", "api")]);
    for j in seq(&prom["scrape_configs"]) {
        let job = s(&j["job_name"], "job_name");
        let keep: Vec<&str> = seq(&j["relabel_configs"])
            .iter()
            .filter(|r| r["action"].as_str() == Some("keep"))
            .filter_map(|r| r["regex"].as_str())
            .collect();
        let d = objects
            .of_kind("Deployment")
            .find(|d| {
                keep.contains(&s(
                    &d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
                    job,
                ))
            })
            .unwrap_or_else(|| panic!("{job}: keeps no Deployment's pods ({keep:?})"));
        let port = metrics_port[job];
        assert!(keep.contains(&port), "{job}: keeps port {port} ({keep:?})");
        let ports = &d["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert!(
            seq(ports).iter().any(|p| p["name"].as_str() == Some(port)),
            "{job}: the Deployment has no port {port}"
        );
    }
    let mut used = BTreeSet::new();
    for (at, expr) in shipped_promql() {
        let mut rest = expr.as_str();
        while let Some(p) = rest.find("job=") {
            rest = &rest[p + 4..];
            let value = rest
                .trim_start_matches(['~', '"'])
                .split('"')
                .next()
                .unwrap_or_default();
            used.extend(value.split('|').map(|v| (at.clone(), v.to_owned())));
        }
    }
    assert!(!used.is_empty());
    for (at, job) in used {
        assert!(
            jobs.contains(job.as_str()),
            "{at}: job {job:?} is not a scrape job"
        );
    }
    // The plan's alerts, by name.
    let alerts = read(&deploy().join("prometheus/alerts.yml"));
    for name in ["HighErrorRate", "ClusterSizeAnomaly", "PolicyEngineDown"] {
        assert!(alerts.contains(&format!("alert: {name}")), "{name}");
    }
}

#[test]
fn promql_names_are_extracted() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, path) (rate(x_bucket{path=~"$route"}[$__rate_interval]))) > 0.5"#
        ),
        ["x_bucket"]
    );
    assert_eq!(
        names(r#"sum(rate(a_total{status=~"5.."}[1m])) by (path) / ignoring(x) b offset 5m"#),
        ["a_total", "b"]
    );
    assert_eq!(
        names(r#"absent(up{job="lag-pipeline"}) and on(pod) c == bool 1e3"#),
        ["c", "up"]
    );
}

// ---------------------------------------------------------------- Dockerfiles

/// A Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile(name: &str) -> Vec<(String, String)> {
    let text = read(&deploy().join(format!("docker/{name}.Dockerfile")));
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, args) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((op.to_uppercase(), args.trim().to_owned()));
        cur.clear();
    }
    out
}

fn dockerfile_env(name: &str, var: &str) -> Option<String> {
    dockerfile(name)
        .into_iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find_map(|kv| kv.strip_prefix(&format!("{var}=")).map(str::to_owned))
}

#[test]
fn dockerfiles_build_in_two_stages_and_run_as_non_root() {
    let toolchain = read(&repo().join("rust-toolchain.toml"));
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .expect("channel")
        .trim_matches('"');
    let ignored = read(&repo().join(".dockerignore"));
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for name in ["enforcer", "pipeline"] {
        let ins = dockerfile(name);
        let from: Vec<&str> = ins
            .iter()
            .filter(|(op, _)| op == "FROM")
            .map(|(_, a)| a.as_str())
            .collect();
        assert_eq!(from.len(), 2, "{name}: a builder and a runtime stage");
        assert_eq!(
            from[0],
            format!("rust:{channel}-slim-bookworm AS builder"),
            "{name}: the pinned toolchain"
        );
        assert!(
            from[1].starts_with("debian:bookworm-slim"),
            "{name}: the same Debian, slim"
        );
        let runtime_start = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
        let (builder, runtime) = ins.split_at(runtime_start);

        // What the native build needs (deploy/services.sh installs the same).
        let apt = builder
            .iter()
            .find(|(op, a)| op == "RUN" && a.contains("apt-get install"))
            .expect("apt-get");
        for pkg in [
            "cmake",
            "g++",
            "make",
            "pkg-config",
            "zlib1g-dev",
            "protobuf-compiler",
            "libprotobuf-dev",
        ] {
            assert!(
                apt.1.split_whitespace().any(|w| w == pkg),
                "{name}: the builder installs {pkg}"
            );
        }
        assert!(
            builder.iter().any(|(op, a)| op == "RUN"
                && a.contains(&format!(
                    "cargo build --release --locked -p {name} --bin {name}"
                ))),
            "{name}: builds its binary from the lock file"
        );

        // The runtime: the binary from the builder, a non-root user, a health check.
        let user = runtime
            .iter()
            .rev()
            .find(|(op, _)| op == "USER")
            .map(|(_, a)| a.as_str())
            .expect("USER");
        let uid = user.split(':').next().unwrap();
        assert!(!matches!(uid, "root" | "0"), "{name}: USER {user} is root");
        let bin = format!("/usr/local/bin/{name}");
        assert!(
            runtime.iter().any(|(op, a)| op == "COPY"
                && a.starts_with("--from=builder")
                && a.ends_with(&bin)),
            "{name}: {bin} from the builder"
        );
        assert!(
            runtime
                .iter()
                .any(|(op, a)| op == "ENTRYPOINT" && a.contains(&bin)),
            "{name}: ENTRYPOINT {bin}"
        );
        let check = runtime
            .iter()
            .find(|(op, _)| op == "HEALTHCHECK")
            .map(|(_, a)| a.as_str())
            .expect("HEALTHCHECK");
        let baked = Config::parse(&read(&deploy().join("docker/enforcer.container.yaml")))
            .expect("enforcer.container.yaml");
        assert!(baked.admin_listen.ip().is_unspecified());
        assert!(
            check.contains("GET /health")
                && check.contains(&format!("/dev/tcp/127.0.0.1/{}", baked.admin_listen.port())),
            "{name}: HEALTHCHECK asks the admin port for /health: {check}"
        );

        // Every file copied from the context exists and is not excluded by .dockerignore.
        for (_, a) in ins
            .iter()
            .filter(|(op, a)| op == "COPY" && !a.starts_with("--from"))
        {
            let src = a.split_whitespace().next().unwrap();
            if src == "." {
                continue;
            }
            assert!(
                repo().join(src).exists(),
                "{name}: COPY {src}: not in the repository"
            );
            assert!(
                !ignored
                    .iter()
                    .any(|i| src == *i || src.starts_with(&format!("{i}/"))),
                "{name}: COPY {src} is excluded by .dockerignore"
            );
        }
    }

    // The pipeline image: the model at LAG_MODEL_DIR, and it loads.
    let model_dir = dockerfile_env("pipeline", "LAG_MODEL_DIR").expect("ENV LAG_MODEL_DIR");
    let copy = dockerfile("pipeline")
        .into_iter()
        .find(|(op, a)| op == "COPY" && a.ends_with(&format!(" {model_dir}")))
        .unwrap_or_else(|| panic!("no COPY to {model_dir}"));
    let src = copy.1.split_whitespace().next().unwrap().to_owned();
    if std::env::var_os(udfs::embed::MODEL_DIR_ENV).is_none() {
        assert_eq!(
            repo().join(&src).canonicalize().unwrap(),
            udfs::embed::default_model_dir().canonicalize().unwrap(),
            "the image ships the default model"
        );
    }
    udfs::embed::CandleEmbedder::load(&repo().join(&src))
        .unwrap_or_else(|e| panic!("{src} does not load: {e}"));
    assert!(
        dockerfile("pipeline")
            .iter()
            .any(|(op, a)| op == "COPY" && a == "sql /opt/lag/sql"),
        "the image has sql/"
    );
}

// ---------------------------------------------------------------- Prometheus's own tools

/// promtool and amtool are not installed by CI (promtool takes about 6 minutes to build on
/// 2 cores); where they are (`go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0`,
/// `github.com/prometheus/alertmanager/cmd/amtool@v0.35.0`), they check the files and run the
/// alert rules' unit tests (deploy/prometheus/alerts.test.yml).
#[test]
fn prometheus_tools_accept_the_config_and_the_rules_fire_as_tested() {
    let dir = deploy().join("prometheus");
    match tool("LAG_PROMTOOL", "promtool") {
        Some(promtool) => {
            run(Command::new(&promtool)
                .args(["check", "config"])
                .arg(dir.join("prometheus.yml")));
            run(Command::new(&promtool)
                .args(["test", "rules"])
                .arg(dir.join("alerts.test.yml")));
        }
        None => eprintln!("SKIPPED: no promtool ($LAG_PROMTOOL, PATH, ~/go/bin)"),
    }
    match tool("LAG_AMTOOL", "amtool") {
        Some(amtool) => {
            run(Command::new(&amtool)
                .arg("check-config")
                .arg(dir.join("alertmanager.yml")));
        }
        None => eprintln!("SKIPPED: no amtool ($LAG_AMTOOL, PATH, ~/go/bin)"),
    }
}
