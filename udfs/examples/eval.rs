//! The evaluation tables without the pipeline binary (which needs the whole streaming
//! engine to build): `cargo run --release -p udfs --example eval -- [ngram|e5] [--sweep] [--verbose]`.

use std::sync::Arc;

use udfs::cluster::{NgramEmbedder, TextEmbedder};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let embedder: Arc<dyn TextEmbedder> = if args.iter().any(|a| a == "e5") {
        match udfs::embed::default_embedder() {
            Ok(e) => e,
            Err(err) => {
                eprintln!("error: cannot load the e5 model: {err}");
                std::process::exit(1);
            }
        }
    } else {
        Arc::new(NgramEmbedder::new(384))
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/corpus.jsonl");
    let started = std::time::Instant::now();
    match udfs::eval::report(
        &path,
        embedder,
        args.iter().any(|a| a == "--sweep"),
        args.iter().any(|a| a == "--verbose"),
    ) {
        Ok(r) => print!("{r}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    eprintln!("eval time: {:.1}s", started.elapsed().as_secs_f64());
}
