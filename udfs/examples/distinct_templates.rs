//! Memory with 100,000 distinct templates streaming in: the miner's bound evicts cold
//! groups and the cluster store forgets them. Prints peak RSS (VmHWM) at the end.
//!
//! Run: `CARGO_TARGET_DIR=/var/cache/lag-target/text cargo run --release -p udfs --example distinct_templates [N] [MAX_TEMPLATES]`

use std::sync::Arc;
use std::time::Instant;

use udfs::cluster::{ClusterConfig, NgramEmbedder};
use udfs::clusterer::FailureClusterer;
use udfs::miner::MinerConfig;

fn vm(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.trim_start_matches(field).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// A word with no digits, unique per `i` (digits would be masked to one template).
fn word(mut i: usize) -> String {
    let mut w = String::new();
    for _ in 0..5 {
        w.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
    }
    w
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let max: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let embedder = Arc::new(NgramEmbedder::new(384));
    let miner = MinerConfig {
        max_templates: max,
        ..MinerConfig::default()
    };
    let mut c = FailureClusterer::with_config(miner, ClusterConfig::for_model("ngram"), embedder);
    let started = Instant::now();
    for i in 0..n {
        let (a, b, d) = (word(i), word(i / 7 + 1), word(i / 3 + 2));
        let text = format!("{a} failure in {b} while calling {d}: connection refused");
        let _ = c.process(&text);
        if i % 20_000 == 0 {
            eprintln!(
                "{i:>7} templates live {:>6} clusters {:>6} RSS {}",
                c.miner().len(),
                c.store().len(),
                vm("VmRSS:")
            );
        }
    }
    println!(
        "{n} distinct messages, max_templates {max}: live templates {}, clusters {}, {:.1}s, peak RSS {}",
        c.miner().len(),
        c.store().len(),
        started.elapsed().as_secs_f64(),
        vm("VmHWM:")
    );
}
