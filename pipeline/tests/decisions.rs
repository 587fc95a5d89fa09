//! `sql/incident.sql`'s `cluster_decisions`: the learned slice, the in-slice error rate, the
//! severity and the decision, read back the way the live job reads them.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should abort the test loudly

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pipeline::decision::{self, Decision};
use pipeline::engine::{Engine, JobSpec, SinkOutput};
use schemas::event::{
    EVENT_SCHEMA_VERSION, ErrorEvent, ErrorKind, GatewayRecord, RouteCounts, TrafficSample,
};
use schemas::{Action, Dimensions};

const T0: i64 = 1_700_000_000_000; // a multiple of 10 s

const FAILURE: &str = "alipay gateway 10.2.3.4:8443 refused the connection (order 98765)";
const NOISE: &str = "wechat: user 4411 not found";
/// The same alipay outage, worded by another layer (a different cluster of its own).
const FAILURE_CN: &str = "支付渠道超时: 订单 77120 请求 3000ms 未响应";

fn dims(channel: &str) -> Dimensions {
    [("body:channel".to_string(), channel.to_string())].into()
}

fn error(ts: i64, channel: &str, message: &str) -> GatewayRecord {
    GatewayRecord::Error(ErrorEvent {
        schema_version: EVENT_SCHEMA_VERSION,
        event_id: format!("{ts:x}-{channel}"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        timestamp_ms: ts,
        route: "payments".into(),
        method: "POST".into(),
        path: "/pay".into(),
        upstream: "127.0.0.1:18081".into(),
        status: 500,
        error_kind: ErrorKind::Status,
        message: message.into(),
        stack: vec![],
        latency_ms: 2.0,
        template_id: schemas::text::template_id(message),
        dimensions: dims(channel),
        sample_rate: 1.0,
        policy_id: None,
    })
}

fn sample(ts: i64, channel: &str, is_error: bool) -> GatewayRecord {
    GatewayRecord::Sample(TrafficSample {
        schema_version: EVENT_SCHEMA_VERSION,
        timestamp_ms: ts,
        route: "payments".into(),
        method: "POST".into(),
        upstream: "127.0.0.1:18081".into(),
        status: if is_error { 500 } else { 200 },
        is_error,
        rejected: false,
        dimensions: dims(channel),
        sample_rate: 0.1,
    })
}

/// 30 s of payments: 90 requests/s, 30 per channel, a 10 % sample of them (3 per channel per
/// second), and exact per-second counts. From 10 s on every alipay request fails (30 errors/s,
/// their messages taken in turn from `failure`); throughout, one wechat request per second
/// fails with an unrelated message.
fn seconds(failure: &[&str]) -> Vec<Vec<GatewayRecord>> {
    (0..30i64)
        .map(|s| {
            let base = T0 + s * 1000;
            let mut recs = Vec::new();
            for (i, ch) in ["alipay", "wechat", "card"].iter().enumerate() {
                for k in 0..3 {
                    let failing = *ch == "alipay" && s >= 10;
                    recs.push(sample(base + 100 * k + 10 * i as i64, ch, failing));
                }
            }
            if s >= 10 {
                for k in 0..30 {
                    let message = failure[k as usize % failure.len()];
                    recs.push(error(base + 33 * k, "alipay", message));
                }
            }
            recs.push(error(base + 500, "wechat", NOISE));
            recs.push(GatewayRecord::Counts(RouteCounts {
                schema_version: EVENT_SCHEMA_VERSION,
                second_ms: base,
                route: "payments".into(),
                requests: 90,
                errors: if s >= 10 { 31 } else { 1 },
                rejected: 0,
            }));
            recs
        })
        .collect()
}

/// Runs the SQL over the 30 s; decisions by (window end in seconds from T0, cluster).
async fn decisions(sql: &str) -> BTreeMap<(i64, String), Decision> {
    decisions_of(sql, &[FAILURE]).await
}

async fn decisions_of(sql: &str, failure: &[&str]) -> BTreeMap<(i64, String), Decision> {
    let spec = JobSpec::from_sql(&[("sql/incident.sql".into(), sql.into())]).unwrap();
    let out: Arc<Mutex<Vec<SinkOutput>>> = Arc::default();
    let o = Arc::clone(&out);
    let mut engine = Engine::new(spec, Box::new(move |x| o.lock().unwrap().push(x)));
    pipeline::udf::register(&mut engine);
    engine.validate().await.unwrap();
    for recs in seconds(failure) {
        engine.push_records(&recs).await.unwrap();
    }
    engine.flush().await.unwrap();
    assert_eq!(engine.stats().late_rows, 0);
    let mut by_window = BTreeMap::new();
    for o in out.lock().unwrap().iter() {
        for d in decision::read(o) {
            let d = d.unwrap();
            let key = ((d.window_end_ms - T0) / 1000, d.cluster_id.clone());
            assert!(
                by_window.insert(key, d).is_none(),
                "one row per window and cluster"
            );
        }
    }
    by_window
}

fn shipped_sql() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/incident.sql")).unwrap()
}

#[tokio::test]
async fn a_failing_channel_gets_a_breaker_on_that_channel_only() {
    let all = decisions(&shipped_sql()).await;
    let failure = udfs::sql::cluster_of(Some(FAILURE)).unwrap();
    let noise = udfs::sql::cluster_of(Some(NOISE)).unwrap();
    assert_ne!(failure, noise);
    let at = |s: i64, c: &str| all.get(&(s, c.to_string()));

    // 11 s: 30 errors, too few to judge — but already "holding" for a policy in force.
    let d = at(11, &failure).unwrap();
    assert_eq!((d.errors, d.action.clone(), d.holding), (30, None, true));

    // 12 s: 60 errors in the 2 s since the failure began; the slice is alipay, whose traffic
    // over 10 s is a third of 900 requests; judged over the 2 s it has existed, every alipay
    // request fails: severity 1 (still growing), a circuit breaker.
    let d = at(12, &failure).unwrap();
    assert_eq!(d.errors, 60);
    assert_eq!(d.previous_errors, 0);
    let slice = serde_json::to_value(d.slice.as_ref().unwrap()).unwrap();
    assert_eq!(
        slice,
        serde_json::json!({"any": [{"route": "payments",
            "all": [{"key": "body:channel", "value": "alipay"}]}]})
    );
    assert!(
        (d.slice_traffic - 300.0).abs() < 1e-6,
        "{}",
        d.slice_traffic
    );
    assert!(d.slice_error_rate > 0.95, "{}", d.slice_error_rate);
    assert!(d.severity > 0.95, "{}", d.severity);
    assert!(matches!(
        d.action,
        Some(Action::CircuitBreak {
            open_ms: 1000,
            probes: 3,
            ..
        })
    ));
    assert_eq!(
        d.signature,
        [schemas::text::template_id(FAILURE)].into(),
        "the enforcer's template id"
    );

    // 25 s: 300 errors against 150 in 5-15 s: growth 2, severity 1.
    let d = at(25, &failure).unwrap();
    assert_eq!((d.errors, d.previous_errors), (300, 150));
    assert!((d.severity - 1.0).abs() < 1e-9, "{}", d.severity);
    // 30 s: steady for 20 s, 300 errors against 300 before: growth 1, severity 0.9.
    let d = at(30, &failure).unwrap();
    assert_eq!((d.errors, d.previous_errors), (300, 300));
    assert!((d.severity - 0.9).abs() < 1e-9, "{}", d.severity);
    assert!(matches!(d.action, Some(Action::CircuitBreak { .. })));

    // The unrelated wechat error never triggers: 10 errors per 10 s.
    for s in 1..=40 {
        if let Some(d) = at(s, &noise) {
            assert_eq!(d.action, None, "noise triggered at {s}: {d:?}");
            assert!(d.errors <= 10);
        }
    }
    // Before the failure nothing triggers at all.
    assert!(
        all.iter()
            .filter(|((s, _), _)| *s <= 10)
            .all(|(_, d)| d.action.is_none())
    );
}

#[tokio::test]
async fn clusters_that_learned_the_same_slice_are_judged_as_one_failure() {
    let all = decisions_of(&shipped_sql(), &[FAILURE, FAILURE_CN]).await;
    let a = udfs::sql::cluster_of(Some(FAILURE)).unwrap();
    let b = udfs::sql::cluster_of(Some(FAILURE_CN)).unwrap();
    assert_ne!(
        a, b,
        "the two wordings must land in two clusters for this test"
    );
    // 12 s: 30 errors in each cluster, 60 on alipay: one decision for the slice, judged on
    // all 60 (each cluster alone is under the 50-error trigger), carrying both templates.
    let rows: Vec<&Decision> = all
        .iter()
        .filter(|((s, _), _)| *s == 12)
        .map(|(_, d)| d)
        .filter(|d| d.cluster_id == a || d.cluster_id == b)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let d = rows[0];
    assert_eq!(
        d.cluster_id,
        a.clone().min(b.clone()),
        "ties name the group by the smaller id"
    );
    assert_eq!(d.errors, 60);
    assert!(d.slice_error_rate > 0.95, "{}", d.slice_error_rate);
    assert!(
        matches!(d.action, Some(Action::CircuitBreak { .. })),
        "{d:?}"
    );
    assert_eq!(
        d.signature,
        [
            schemas::text::template_id(FAILURE),
            schemas::text::template_id(FAILURE_CN)
        ]
        .into()
    );
    assert_eq!(d.templates.len(), 2, "{:?}", d.templates);
}

#[tokio::test]
async fn editing_the_trigger_in_the_sql_changes_the_decisions() {
    let sql = shipped_sql();
    assert!(sql.contains("WHEN errors < 50 OR slice_error_rate < 0.2 THEN 'none'"));
    let edited = sql.replace(
        "WHEN errors < 50 OR slice_error_rate < 0.2 THEN 'none'",
        "WHEN errors < 500 OR slice_error_rate < 0.2 THEN 'none'",
    );
    let all = decisions(&edited).await;
    assert!(!all.is_empty());
    assert!(
        all.values().all(|d| d.action.is_none()),
        "300 errors per 10 s never reach 500"
    );
    // And a rate limit instead of a breaker when the severity cut is raised.
    let edited = sql.replace("WHEN severity >= 0.8 THEN", "WHEN severity >= 0.95 THEN");
    let all = decisions(&edited).await;
    let failure = udfs::sql::cluster_of(Some(FAILURE)).unwrap();
    let d = &all[&(30, failure)];
    assert!(
        matches!(d.action, Some(Action::RateLimit { requests_per_second, .. })
            if (requests_per_second - 300.0 / 10.0 * (1.0 - 0.8 * 0.9)).abs() < 1e-6),
        "{:?}",
        d.action
    );
}
