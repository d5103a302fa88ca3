//! Corpus throughput: texts/s over a file of one text per line, length-sorted batches, tokenization
//! included; for trying levers (flags). `examples/bench.rs` (`bench corpus`) compares it with the Python path.
//!
//!     cargo run --release --example throughput -- --corpus benches/corpus.txt --batch 32

use std::{path::PathBuf, time::Instant};

use akidb::settings::ModelArgs;
use akidb_engine::Model;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "benches/corpus.txt")]
    corpus: PathBuf,
    /// Texts per inference call, at most (the token budget may cut batches shorter); the peer
    /// script's name for --max-batch-size.
    #[arg(long)]
    batch: Option<usize>,
    /// Timed passes over the corpus after one warm-up pass; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The same model flags and AKIDB_* variables as `akidb embed` (--onnx-file, --threads,
    /// --max-batch-tokens, --fuse-attention false, …).
    #[command(flatten)]
    model: ModelArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.corpus)?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!texts.is_empty(), "{} has no texts", args.corpus.display());
    let mut options = args.model.options();
    if let Some(batch) = args.batch {
        options.max_batch_size = batch;
    }
    let embedder = Model::load(&options)?;
    let tokens = embedder.embed(&texts, true)?.total_tokens;
    let mut best = f64::INFINITY;
    for _ in 0..args.repeat.max(1) {
        let t = Instant::now();
        std::hint::black_box(embedder.embed(&texts, true)?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "akidb", "mode": "throughput", "texts": texts.len(), "tokens": tokens,
            "seconds": best, "texts_per_s": texts.len() as f64 / best, "tokens_per_s": tokens as f64 / best,
        })
    );
    Ok(())
}
