//! Corpus throughput: texts/s over a file of one text per line, length-sorted batches, tokenization
//! included. `scripts/bench-peer.sh` runs it beside the Python path on the same corpus.
//!
//!     cargo run --release --example throughput -- --corpus benches/corpus.txt --batch 32

use std::{path::PathBuf, time::Instant};

use akidb::{runtime::SessionOptions, Embedder, EmbedderOptions, DEFAULT_MODEL};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "benches/corpus.txt")]
    corpus: PathBuf,
    /// Texts per inference call (at most; the token budget may cut batches shorter).
    #[arg(long, default_value_t = EmbedderOptions::default().max_batch_size)]
    batch: usize,
    /// Timed passes over the corpus after one warm-up pass; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[arg(long)]
    onnx_file: Option<String>,
    #[arg(long)]
    threads: Option<usize>,
    /// Load the graph as exported, without fusing attention (to measure the rewrite).
    #[arg(long)]
    no_fuse: bool,
    /// Padded tokens per inference call (texts × longest).
    #[arg(long, default_value_t = EmbedderOptions::default().max_batch_tokens)]
    max_batch_tokens: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.corpus)?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!texts.is_empty(), "{} has no texts", args.corpus.display());
    let embedder = Embedder::load(&EmbedderOptions {
        model: args.model,
        onnx_file: args.onnx_file,
        session: SessionOptions { threads: args.threads, fuse_attention: !args.no_fuse, ..Default::default() },
        max_batch_size: args.batch,
        max_batch_tokens: args.max_batch_tokens,
        ..Default::default()
    })?;
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
