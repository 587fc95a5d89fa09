//! The offline commands' bodies.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use udfs::cluster::{NgramEmbedder, TextEmbedder};
use udfs::clusterer::FailureClusterer;
use udfs::eval;
use udfs::miner::GroupKey;

use crate::{EmbedderChoice, Level};

/// Longest message looked at; longer lines are cut (and counted).
const MAX_LINE_BYTES: usize = 64 * 1024;

pub struct ClusterArgs {
    pub input: PathBuf,
    pub csv_column: Option<String>,
    pub level: Level,
    pub output: PathBuf,
    pub embedder: EmbedderChoice,
    pub quiet: bool,
}

pub(crate) fn embedder(choice: EmbedderChoice) -> anyhow::Result<Arc<dyn TextEmbedder>> {
    match choice {
        EmbedderChoice::Ngram => Ok(Arc::new(NgramEmbedder::new(384))),
        EmbedderChoice::E5 => e5_embedder(),
    }
}

fn e5_embedder() -> anyhow::Result<Arc<dyn TextEmbedder>> {
    let model = udfs::embed::default_embedder()
        .map_err(|e| anyhow::anyhow!("loading the built-in e5 model: {e}"))?;
    Ok(model)
}

/// Input problems worth telling the user about.
#[derive(Default)]
struct InputStats {
    lines: usize,
    invalid_utf8: usize,
    truncated: usize,
    binary: usize,
    empty: usize,
}

/// Reads messages: one per line, or one CSV column.
fn read_messages(
    args: &ClusterArgs,
    stats: &mut InputStats,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let file = File::open(&args.input)
        .with_context(|| format!("cannot open input {}", args.input.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    bar.set_length(len);
    let reader = BufReader::with_capacity(1 << 20, bar.wrap_read(file));
    let mut out = Vec::new();
    if let Some(column) = &args.csv_column {
        let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
        let headers = csv
            .byte_headers()
            .context("cannot read the CSV header row")?
            .clone();
        let Some(idx) = headers.iter().position(|h| h == column.as_bytes()) else {
            let names: Vec<String> = headers
                .iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect();
            bail!("CSV column {column:?} not found; the header has {names:?}");
        };
        for (n, record) in csv.byte_records().enumerate() {
            let record = record.with_context(|| format!("CSV record {} is malformed", n + 2))?;
            let field = record.get(idx).unwrap_or_default();
            out.push(clean_message(field, stats));
        }
        return Ok(out);
    }
    let mut reader = reader;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read at most a bit more than the cap per line, then skip the rest of a huge line.
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') && n > MAX_LINE_BYTES {
            // Skip the rest of the huge line without holding it.
            let mut sink = Vec::new();
            while (&mut reader).take(1 << 20).read_until(b'\n', &mut sink)? > 0 {
                if sink.last() == Some(&b'\n') {
                    break;
                }
                sink.clear();
            }
            buf.truncate(MAX_LINE_BYTES);
            stats.truncated += 1;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        out.push(clean_message(&buf, stats));
    }
    Ok(out)
}

fn clean_message(bytes: &[u8], stats: &mut InputStats) -> String {
    stats.lines += 1;
    let bytes = if bytes.len() > MAX_LINE_BYTES {
        stats.truncated += 1;
        &bytes[..MAX_LINE_BYTES]
    } else {
        bytes
    };
    let controls = bytes
        .iter()
        .filter(|&&b| b < 0x09 || (0x0e..0x20).contains(&b))
        .count();
    if controls * 10 > bytes.len().max(1) {
        stats.binary += 1;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            stats.invalid_utf8 += 1;
            String::from_utf8_lossy(bytes).into_owned()
        }
    };
    // Control characters other than tab become spaces: they carry nothing and break output.
    let text: String = text
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect();
    if text.trim().is_empty() {
        stats.empty += 1;
    }
    text
}

#[derive(serde::Serialize)]
struct OutputLine<'a> {
    line: usize,
    template_id: Option<i64>,
    template: Option<&'a str>,
    cluster_id: Option<&'a str>,
}

pub fn cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:10} [{bar:40}] {bytes}/{total_bytes} {pos}/{len} ({eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("reading");
    let mut stats = InputStats::default();
    let messages = read_messages(args, &mut stats, &bar)?;
    if messages.is_empty() {
        eprintln!(
            "note: {} is empty; writing an empty output",
            args.input.display()
        );
    }
    let embedder = embedder(args.embedder)?;
    let mut clusterer = FailureClusterer::new(embedder);
    bar.set_message("mining");
    bar.set_position(0);
    bar.set_length(messages.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:10} [{bar:40}] {pos}/{len} lines ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut groups: Vec<Option<GroupKey>> = Vec::with_capacity(messages.len());
    let mut embed_errors = 0usize;
    for (i, m) in messages.iter().enumerate() {
        let group = if m.trim().is_empty() {
            None
        } else if args.level == Level::Cluster {
            match clusterer.process(m) {
                Ok(a) => Some(a.group),
                Err(e) => {
                    embed_errors += 1;
                    if embed_errors <= 3 {
                        bar.suspend(|| eprintln!("warning: line {}: {e}", i + 1));
                    }
                    Some(clusterer.template(m).2)
                }
            }
        } else {
            Some(clusterer.template(m).2)
        };
        groups.push(group);
        if i % 1024 == 0 {
            bar.set_position(i as u64);
        }
    }
    if args.level == Level::Cluster {
        bar.set_message("clustering");
        if clusterer.store().templates() <= clusterer.recluster_max_templates {
            clusterer.recluster();
        } else {
            bar.suspend(|| {
                eprintln!(
                    "note: {} templates exceed the re-clustering bound ({}); keeping the online clusters",
                    clusterer.store().templates(),
                    clusterer.recluster_max_templates
                )
            });
        }
    }
    bar.set_message("writing");
    let out = File::create(&args.output)
        .with_context(|| format!("cannot create output {}", args.output.display()))?;
    let mut out = BufWriter::new(out);
    let mut templates = std::collections::HashSet::new();
    let mut clusters = std::collections::HashSet::new();
    for (i, g) in groups.iter().enumerate() {
        let current = g.and_then(|g| clusterer.current(g));
        let (id, template, cluster) = match &current {
            Some((id, t, c)) => (Some(*id as i64), Some(t.as_str()), c.as_deref()),
            None => (None, None, None),
        };
        if let Some(id) = id {
            templates.insert(id);
        }
        if let Some(c) = cluster {
            clusters.insert(c.to_string());
        }
        serde_json::to_writer(
            &mut out,
            &OutputLine {
                line: i + 1,
                template_id: id,
                template,
                cluster_id: cluster,
            },
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "lines: {}  templates: {}  clusters: {}  time: {:.2}s ({:.0} lines/s)  output: {}",
        messages.len(),
        templates.len(),
        if args.level == Level::Cluster {
            clusters.len().to_string()
        } else {
            "-".into()
        },
        secs,
        messages.len() as f64 / secs.max(1e-9),
        args.output.display()
    );
    let warn = |n: usize, what: &str| {
        if n > 0 {
            eprintln!("warning: {n} line(s) {what}");
        }
    };
    warn(
        stats.invalid_utf8,
        "were not valid UTF-8 (invalid bytes replaced with U+FFFD)",
    );
    warn(
        stats.truncated,
        &format!("were longer than {MAX_LINE_BYTES} bytes (cut)"),
    );
    warn(
        stats.binary,
        "looked like binary data (control characters replaced)",
    );
    warn(stats.empty, "were empty (template_id null)");
    warn(embed_errors, "could not be embedded (template only)");
    Ok(())
}

fn default_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../udfs/testdata/corpus.jsonl")
}

pub fn eval(
    corpus: Option<PathBuf>,
    choice: EmbedderChoice,
    sweep: bool,
    verbose: bool,
) -> anyhow::Result<()> {
    let path = corpus.unwrap_or_else(default_corpus);
    let embedder = embedder(choice)?;
    let report = eval::report(&path, embedder, sweep, verbose)?;
    print!("{report}");
    Ok(())
}

pub fn explain() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.context("stdin is not valid UTF-8")?;
        let private = schemas::text::desensitize(&line);
        let e = udfs::evidence::extract(&private);
        println!("{:32} {}", e.key(), schemas::text::cheap_template(&line));
    }
    Ok(())
}
