//! The HTTP embedder against a real OpenAI-compatible server on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use udfs::cluster::TextEmbedder;
use udfs::embed::HttpEmbedder;

type Responder = fn(&serde_json::Value) -> (u16, String);

/// Serves one request per connection with `respond(request_json) -> (status, body)`.
fn serve(respond: Responder) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let (status, text) = respond(&req);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    format!("http://{addr}")
}

/// A vector per input derived from its length, returned in reverse order (indices matter).
fn good(req: &serde_json::Value) -> (u16, String) {
    let inputs = req["input"].as_array().cloned().unwrap_or_default();
    let mut data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"index": i, "embedding": [t.as_str().unwrap_or("").len() as f32, 1.0, 0.0]}))
        .collect();
    data.reverse();
    (
        200,
        serde_json::json!({"object": "list", "data": data, "model": req["model"]}).to_string(),
    )
}

#[test]
fn embeds_in_input_order_and_normalises() {
    let e = HttpEmbedder::new(&serve(good), "bge-small-zh-v1.5", 3, Duration::from_secs(5));
    let v = e.embed_texts(&["abc", "a"]).unwrap();
    let n = 10.0_f32.sqrt();
    assert!((v[0][0] - 3.0 / n).abs() < 1e-6, "{v:?}");
    assert!((v[1][0] - 1.0 / 2.0_f32.sqrt()).abs() < 1e-6, "{v:?}");
    assert_eq!(e.name(), "bge-small-zh-v1.5");
}

#[test]
fn sends_the_model_name_and_all_inputs() {
    // Echoes what it received as a 2-dim vector: [inputs, 1 if the model name matched].
    let url = serve(|req| {
        let n = req["input"].as_array().map_or(0, Vec::len);
        let ok = f32::from(u8::from(req["model"] == "bge-small-zh-v1.5"));
        let data: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"index": i, "embedding": [n as f32, ok]}))
            .collect();
        (200, serde_json::json!({"data": data}).to_string())
    });
    let e = HttpEmbedder::new(&url, "bge-small-zh-v1.5", 2, Duration::from_secs(5));
    let v = e.embed_texts(&["数据库连接被拒绝", "b", "c"]).unwrap();
    let want = [3.0 / 10.0_f32.sqrt(), 1.0 / 10.0_f32.sqrt()];
    assert!(
        v.iter()
            .all(|v| (v[0] - want[0]).abs() < 1e-6 && (v[1] - want[1]).abs() < 1e-6),
        "{v:?}"
    );
    assert!(e.embed_texts(&[]).unwrap().is_empty());
}

#[test]
fn refuses_bad_answers_with_clear_errors() {
    let cases: [(Responder, &str); 8] = [
        (|_| (503, "{\"error\":\"overloaded\"}".into()), "status 503"),
        (|_| (200, "not json".into()), "malformed response"),
        (|_| (200, "{\"vectors\":[]}".into()), "malformed response"),
        (|_| (200, "{\"data\":[]}".into()), "0 vectors for 2 texts"),
        (
            |_| {
                (200, "{\"data\":[{\"index\":0,\"embedding\":[1,0]},{\"index\":1,\"embedding\":[1,0]}]}".into())
            },
            "2 dims, expected 3",
        ),
        (
            |_| {
                (200, "{\"data\":[{\"index\":0,\"embedding\":[1,0,0]},{\"index\":5,\"embedding\":[1,0,0]}]}".into())
            },
            "index 5 out of range",
        ),
        (
            |_| {
                (200, "{\"data\":[{\"index\":1,\"embedding\":[1,0,0]},{\"index\":1,\"embedding\":[1,0,0]}]}".into())
            },
            "index 1 twice",
        ),
        (
            |_| {
                (200, "{\"data\":[{\"index\":0,\"embedding\":[0,0,0]},{\"index\":1,\"embedding\":[1,0,0]}]}".into())
            },
            "zero or non-finite vector at index 0",
        ),
    ];
    for (respond, want) in cases {
        let e = HttpEmbedder::new(&serve(respond), "m", 3, Duration::from_secs(5));
        let err = e.embed_texts(&["x", "y"]).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should mention {want}");
        assert!(
            err.contains("/v1/embeddings"),
            "{err} should name the endpoint"
        );
    }
}

#[test]
fn a_closed_port_is_an_error() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = HttpEmbedder::new(&format!("http://{dead}"), "m", 3, Duration::from_secs(2));
    assert!(e.embed_texts(&["x"]).is_err());
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Accept and hold the connection open without ever answering.
        let held: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let e = HttpEmbedder::new(
        &format!("http://{addr}"),
        "m",
        3,
        Duration::from_millis(300),
    );
    let started = std::time::Instant::now();
    let err = e.embed_texts(&["x"]).unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("timeout"), "{err}");
}
