//! `pipeline submit --arroyo` against a mock of Arroyo's REST API on 127.0.0.1: the posted body
//! must validate against `PipelinePost` from Arroyo's published OpenAPI spec (vendored in
//! `fixtures/`), its query must load and plan on our engine with the Kafka tables and the
//! policies sink, and its UDFs must be the wrapper crates' sources. Error answers and an
//! unreachable URL must end the command non-zero with a message that says what happened.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use pipeline::arroyo::{self, SubmitOptions, Unsupported, WRAPPERS};
use pipeline::engine::{Engine, JobSpec, TableKind};
use serde_json::{Value, json};

const SPEC: &str = include_str!("fixtures/arroyo-api-spec-pipelines.json");
const SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql");

/// A validator for one schema object of the vendored spec. `strict` also refuses properties
/// the spec does not name in `PipelinePost` and `Udf` (Arroyo's serde would silently drop a
/// misspelled one, so the mock should not accept it either).
fn validator(object: &str, strict: bool) -> jsonschema::Validator {
    let mut spec: Value = serde_json::from_str(SPEC).expect("fixture is JSON");
    if strict {
        for name in ["PipelinePost", "Udf"] {
            spec["components"]["schemas"][name]["additionalProperties"] = json!(false);
        }
    }
    let root = json!({
        "$ref": format!("#/components/schemas/{object}"),
        "components": spec["components"],
    });
    jsonschema::validator_for(&root).expect("the vendored schema compiles")
}

#[derive(Clone)]
struct Mock {
    bodies: Arc<Mutex<Vec<Value>>>,
    status: StatusCode,
}

/// `POST /api/v1/pipelines` as Arroyo answers it: 400 with `ErrorResp` for a body that does not
/// match `PipelinePost`, otherwise `status` (a `Pipeline` when 200, an `ErrorResp` otherwise).
async fn create_pipeline(State(mock): State<Mock>, body: String) -> (StatusCode, Json<Value>) {
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "body is not JSON"})),
        );
    };
    mock.bodies.lock().expect("not poisoned").push(v.clone());
    if let Err(e) = validator("PipelinePost", true).validate(&v) {
        let error = format!("PipelinePost: {e} at {}", e.instance_path());
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": error })));
    }
    if mock.status != StatusCode::OK {
        return (
            mock.status,
            Json(json!({"error": "compiler service unavailable"})),
        );
    }
    let pipeline = json!({
        "id": "pl_mock1",
        "name": v["name"],
        "query": v["query"],
        "udfs": v["udfs"],
        "checkpoint_interval_micros": v["checkpoint_interval_micros"],
        "stop": "none",
        "created_at": 1_700_000_000_000u64,
        // `action` is left out rather than null: the spec marks it OpenAPI-`nullable`, which
        // JSON Schema does not read, so a null would not validate against the vendored copy.
        "action_text": "Starting",
        "action_in_progress": false,
        "graph": {"nodes": [], "edges": []},
        "preview": false
    });
    // The mock answers in the published shape, too.
    assert!(
        validator("Pipeline", false).is_valid(&pipeline),
        "{pipeline}"
    );
    (StatusCode::OK, Json(pipeline))
}

/// Starts the mock on 127.0.0.1:0; returns its base URL and the bodies it received.
async fn mock(status: StatusCode) -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/api/v1/pipelines", post(create_pipeline))
        .with_state(Mock {
            bodies: Arc::clone(&bodies),
            status,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), bodies)
}

/// Runs the real binary (off the runtime, so the mock keeps serving).
async fn submit(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("submit")
            .args(["--sql", SQL, "--timeout-secs", "10"])
            .args(args)
            .output()
            .expect("the pipeline binary runs")
    })
    .await
    .expect("joined")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posted_pipeline_matches_arroyos_schema_and_loads_on_our_engine() {
    let (url, bodies) = mock(StatusCode::OK).await;
    let out = submit(vec![
        "--arroyo".into(),
        url,
        "--unsupported".into(),
        "keep".into(),
        "--kafka-brokers".into(),
        "kafka-0:9092,kafka-1:9092".into(),
        "--udfs-git".into(),
        "https://git.example/lag.git".into(),
        "--udfs-rev".into(),
        "0123abc".into(),
    ])
    .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "pl_mock1");
    let bodies = bodies.lock().expect("not poisoned").clone();
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    assert!(validator("PipelinePost", true).is_valid(body));

    // The UDFs are the wrapper crates' sources, placeholders filled, one #[udf] each.
    let udfs = body["udfs"].as_array().expect("udfs");
    assert_eq!(udfs.len(), WRAPPERS.len());
    for (u, w) in udfs.iter().zip(WRAPPERS) {
        let def = u["definition"].as_str().expect("definition");
        let expected = w
            .source
            .replace(arroyo::UDFS_GIT_PLACEHOLDER, "https://git.example/lag.git")
            .replace(arroyo::UDFS_REV_PLACEHOLDER, "0123abc");
        assert_eq!(def, expected, "{}", w.name);
        assert!(def.starts_with("/*\n[dependencies]\n"), "{}", w.name);
        assert_eq!(u["language"], "rust");
    }

    // The query loads on our engine: Kafka sources with event time, the policies sink.
    let query = body["query"].as_str().expect("query").to_owned();
    let spec = JobSpec::from_sql(&[("posted query".into(), query)]).expect("the query loads");
    for (table, topic) in [
        ("error_events", "gateway.error_events"),
        ("traffic_samples", "gateway.traffic_samples"),
        ("route_counts", "gateway.route_counts"),
    ] {
        let t = spec.table(table).expect(table);
        assert_eq!(t.kind, TableKind::Source, "{table}");
        assert_eq!(
            t.options.get("connector").map(String::as_str),
            Some("kafka")
        );
        assert_eq!(t.options.get("topic").map(String::as_str), Some(topic));
        assert_eq!(
            t.options.get("bootstrap_servers").map(String::as_str),
            Some("kafka-0:9092,kafka-1:9092")
        );
        assert_eq!(t.event_time.as_ref().map(|e| e.column.as_str()), Some("ts"));
    }
    let decisions = spec.table("cluster_decisions").expect("decisions sink");
    assert_eq!(decisions.kind, TableKind::Sink);
    assert_eq!(
        decisions.options.get("topic").map(String::as_str),
        Some(schemas::names::POLICIES_TOPIC)
    );
    assert_eq!(spec.queries.len(), 4);
    // ... and every statement plans on DataFusion with our UDFs, as the embedded job's does.
    let mut engine = Engine::new(spec, Box::new(|_| {}));
    pipeline::udf::register(&mut engine);
    engine.validate().await.expect("the posted query plans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_fails_the_command_with_arroyos_message() {
    let (url, bodies) = mock(StatusCode::INTERNAL_SERVER_ERROR).await;
    let out = submit(vec![
        "--arroyo".into(),
        url,
        "--unsupported".into(),
        "skip".into(),
    ])
    .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("answered 500"), "{stderr}");
    assert!(stderr.contains("compiler service unavailable"), "{stderr}");
    assert!(
        stderr.contains("left out"),
        "the skipped query is named: {stderr}"
    );
    assert!(text(&out.stdout).trim().is_empty());
    assert_eq!(bodies.lock().expect("not poisoned").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_functions_fail_before_anything_is_posted() {
    let (url, bodies) = mock(StatusCode::OK).await;
    let out = submit(vec!["--arroyo".into(), url]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("learn_slice"), "{stderr}");
    assert!(stderr.contains("--unsupported skip"), "{stderr}");
    assert!(bodies.lock().expect("not poisoned").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_url_fails_the_command() {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let out = submit(vec![
        "--arroyo".into(),
        format!("http://127.0.0.1:{port}"),
        "--unsupported".into(),
        "skip".into(),
    ])
    .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("could not reach the Arroyo API"),
        "{stderr}"
    );
}

/// deploy/arroyo/ holds what `pipeline submit --dry-run` produces; this keeps it current.
#[test]
fn the_deployed_job_definitions_are_what_dry_run_produces() {
    let spec = JobSpec::from_files(&[SQL]).expect("sql/incident.sql loads");
    for (file, unsupported) in [
        ("pipeline.json", Unsupported::Skip),
        ("pipeline.full.json", Unsupported::Keep),
    ] {
        let path = format!("{}/../deploy/arroyo/{file}", env!("CARGO_MANIFEST_DIR"));
        let shipped: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("deploy file"))
                .expect("JSON");
        let opts = SubmitOptions {
            unsupported,
            ..SubmitOptions::default()
        };
        let (post, _) = arroyo::pipeline_post(&spec, &opts).expect("builds");
        assert_eq!(
            shipped,
            serde_json::to_value(&post).expect("serializes"),
            "{file} is stale: regenerate it with `make arroyo-job`"
        );
        assert!(validator("PipelinePost", true).is_valid(&shipped), "{file}");
    }
}
