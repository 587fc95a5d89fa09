//! `pipeline cluster` over real files: normal input, CSV, and bad input (empty, binary,
//! invalid UTF-8, a 1 MB line) gets clear messages and an output line per input line.

use std::io::Write;
use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .output()
        .expect("the pipeline binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn output_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("output exists")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect()
}

#[test]
fn clusters_lines_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        "dial tcp 10.0.0.1:5432: connect: connection refused\n\
         dial tcp 10.0.0.2:5432: connect: connection refused\n\
         \n\
         PostgreSQL 数据库连接被拒绝 10.0.0.3:5432\n\
         redis: dial tcp 10.0.0.4:6379: connect: connection refused\n",
    )
    .expect("write input");
    let (ok, stderr) = run(&[
        "cluster",
        "--input",
        input.to_str().unwrap_or_default(),
        "--output",
        output.to_str().unwrap_or_default(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("lines: 5"), "{stderr}");
    let lines = output_lines(&output);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["template_id"], lines[1]["template_id"]);
    assert_eq!(
        lines[0]["template"],
        "dial tcp <IP>:5432: connect: connection refused"
    );
    assert!(
        lines[2]["template_id"].is_null(),
        "empty line has no template"
    );
    assert_eq!(
        lines[0]["cluster_id"], lines[3]["cluster_id"],
        "same cause, Chinese"
    );
    assert_ne!(
        lines[0]["cluster_id"], lines[4]["cluster_id"],
        "postgres vs redis"
    );
}

#[test]
fn reads_a_csv_column_and_names_a_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        "ts,message\n1,\"timeout after 30s, retrying\"\n2,connection refused\n",
    )
    .expect("write");
    let path = input.to_str().unwrap_or_default();
    let out = output.to_str().unwrap_or_default();
    let (ok, stderr) = run(&[
        "cluster",
        "--input",
        path,
        "--csv-column",
        "message",
        "--level",
        "template",
        "--output",
        out,
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let lines = output_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["template"], "timeout after <DUR>, retrying");
    assert!(lines[0]["cluster_id"].is_null());
    let (ok, stderr) = run(&[
        "cluster",
        "--input",
        path,
        "--csv-column",
        "msg",
        "--output",
        out,
        "--quiet",
    ]);
    assert!(!ok);
    assert!(stderr.contains("CSV column \"msg\" not found"), "{stderr}");
}

#[test]
fn bad_input_gets_messages_not_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out.jsonl");
    let out = output.to_str().unwrap_or_default();

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").expect("write");
    let (ok, stderr) = run(&[
        "cluster",
        "--input",
        empty.to_str().unwrap_or_default(),
        "--output",
        out,
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");
    assert_eq!(output_lines(&output).len(), 0);

    let bad = dir.path().join("bad.bin");
    let mut f = std::fs::File::create(&bad).expect("create");
    f.write_all(b"\x00\x01\x02\xff\xfe binary \x00\x00\x00\n")
        .expect("write");
    f.write_all(b"caf\xe9 invalid utf-8 timeout\n")
        .expect("write");
    f.write_all(&vec![b'a'; 1 << 20]).expect("write");
    f.write_all(b"\nlast line: connection refused")
        .expect("write");
    drop(f);
    let (ok, stderr) = run(&[
        "cluster",
        "--input",
        bad.to_str().unwrap_or_default(),
        "--output",
        out,
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(stderr.contains("longer than"), "{stderr}");
    assert!(stderr.contains("binary"), "{stderr}");
    let lines = output_lines(&output);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["line"], 4);

    let (ok, stderr) = run(&["cluster", "--input", "/nonexistent/file", "--output", out]);
    assert!(!ok);
    assert!(stderr.contains("cannot open input"), "{stderr}");
}

#[test]
fn the_built_in_e5_model_clusters_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        "dial tcp 10.0.0.1:5432: connect: connection refused\n\
         dial tcp 10.0.0.7:5432: connect: connection refused\n\
         x509: certificate has expired or is not yet valid\n",
    )
    .expect("write input");
    let (ok, stderr) = run(&[
        "cluster",
        "--embedder",
        "e5",
        "--input",
        input.to_str().unwrap_or_default(),
        "--output",
        output.to_str().unwrap_or_default(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let lines = output_lines(&output);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["cluster_id"], lines[1]["cluster_id"]);
    assert_ne!(lines[0]["cluster_id"], lines[2]["cluster_id"]);
}
