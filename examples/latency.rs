//! Single-text latency, end to end in process (tokenize → ONNX Runtime → pool → normalize),
//! after warm-up: p50/p95/p99. `examples/bench.rs` (`bench latency`) measures it beside the Python path and the server.
//!
//!     cargo run --release --example latency -- --text "hello" --iterations 500

use std::time::Instant;

use akidb::settings::ModelArgs;
use akidb_engine::Model;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "The quick brown fox jumps over the lazy dog.")]
    text: String,
    #[arg(long, default_value_t = 500)]
    iterations: usize,
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// The same model flags and AKIDB_* variables as `akidb embed`.
    #[command(flatten)]
    model: ModelArgs,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let embedder = Model::load(&args.model.options())?;
    let texts = [args.text.as_str()];
    for _ in 0..args.warmup {
        embedder.embed(&texts, true)?;
    }
    let mut ms = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations.max(1) {
        let t = Instant::now();
        let out = embedder.embed(&texts, true)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(out);
    }
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "akidb", "mode": "latency",
            "p50_ms": percentile(&ms, 0.50), "p95_ms": percentile(&ms, 0.95), "p99_ms": percentile(&ms, 0.99),
            "mean_ms": mean, "iterations": ms.len(),
        })
    );
    Ok(())
}
