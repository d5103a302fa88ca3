//! Reranking throughput in pairs/s: akidb in process, akidb over HTTP (`POST /rerank`, one
//! request per query), and the Python path (`scripts/bench_rerank_peer.py`: onnxruntime +
//! tokenizers) on the same pairs, in interleaved rounds; prints each round and the median ratios.
//!
//!     cargo run --release --example bench -- setup                  # the peer's venv, target/bench-venv
//!     cargo run --release --example rerank -- --python target/bench-venv/bin/python

use std::{path::PathBuf, process::Command, time::Instant};

use akidb::{
    server::{Server, ServerConfig},
    settings::ModelArgs,
    tokenize::Input,
    Embedder,
};
use anyhow::{ensure, Context};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Passages come from this file, one per line; queries are the first words of its first lines.
    #[arg(long, default_value = "benches/corpus.txt")]
    corpus: PathBuf,
    #[arg(long, default_value_t = 8)]
    queries: usize,
    /// Passages per query (one HTTP request each).
    #[arg(long, default_value_t = 64)]
    passages: usize,
    /// Timed passes per measurement; the best is kept.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Interleaved rounds of (akidb, Python, HTTP).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A Python with onnxruntime, tokenizers and numpy: runs the peer in each round.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Pairs per inference call in the peer (length-sorted, as sentence-transformers does).
    #[arg(long, default_value_t = 32)]
    peer_batch: usize,
    /// The model flags of `akidb rerank` [default model here: akidb-test/tiny-cross-encoder].
    #[command(flatten)]
    model: ModelArgs,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn in_process(embedder: &Embedder, pairs: &[Input], repeat: usize) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let tokens = embedder.tokenize_inputs(pairs)?;
        let scores: Vec<f32> =
            embedder.embed_tokens(&tokens, false)?.iter().map(|l| sigmoid(l.first().copied().unwrap_or(0.0))).collect();
        std::hint::black_box(scores);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(pairs.len() as f64 / best)
}

async fn over_http(base: &str, groups: &[(String, Vec<String>)], repeat: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let pairs: usize = groups.iter().map(|(_, p)| p.len()).sum();
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        for (query, passages) in groups {
            let r =
                client.post(format!("{base}/rerank")).json(&json!({"query": query, "texts": passages})).send().await?;
            ensure!(r.status().is_success(), "/rerank answered {}", r.status());
            std::hint::black_box(r.bytes().await?);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(pairs as f64 / best)
}

fn peer(python: &PathBuf, model: &str, pairs_file: &PathBuf, args: &Args) -> anyhow::Result<f64> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_rerank_peer.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--model", model, "--pairs"])
        .arg(pairs_file)
        .args(["--batch", &args.peer_batch.to_string(), "--repeat", &args.repeat.to_string()])
        .output()
        .context("running the Python peer")?;
    ensure!(out.status.success(), "the Python peer failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).context("the peer's JSON")?;
    v["pairs_per_s"].as_f64().context("pairs_per_s")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.model.model.is_empty() {
        args.model.model = vec!["akidb-test/tiny-cross-encoder".into()];
    }
    let options = args.model.options();
    let text = std::fs::read_to_string(&args.corpus)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() >= args.passages, "{} has fewer than {} lines", args.corpus.display(), args.passages);
    let groups: Vec<(String, Vec<String>)> = (0..args.queries)
        .map(|q| {
            let query = lines[q % lines.len()].split_whitespace().take(8).collect::<Vec<_>>().join(" ");
            let passages = (0..args.passages).map(|p| lines[(q * 7 + p) % lines.len()].to_string()).collect();
            (query, passages)
        })
        .collect();
    let pairs: Vec<Input> =
        groups.iter().flat_map(|(q, ps)| ps.iter().map(move |p| Input::Pair(q.clone(), p.clone()))).collect();
    let dir = tempfile::tempdir()?;
    let pairs_file = dir.path().join("pairs.json");
    let as_json: Vec<[&str; 2]> =
        groups.iter().flat_map(|(q, ps)| ps.iter().map(move |p| [q.as_str(), p.as_str()])).collect();
    std::fs::write(&pairs_file, serde_json::to_vec(&as_json)?)?;

    let embedder = Embedder::load(&options)?;
    ensure!(embedder.info().kind == akidb::config::Kind::CrossEncoder, "{} is not a cross-encoder", options.model);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let server = runtime.block_on(Server::bind(ServerConfig { port: 0, ..Default::default() }))?;
    let base = format!("http://{}", server.local_addr()?);
    let served = options.clone();
    runtime.spawn(server.run(move || Embedder::load(&served).map(|e| vec![e]), std::future::pending()));
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::bail!("the server did not become healthy")
    })?;

    let (mut to_python, mut http_share) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds.max(1) {
        let akidb = in_process(&embedder, &pairs, args.repeat)?;
        let python = args.python.as_ref().map(|py| peer(py, &options.model, &pairs_file, &args)).transpose()?;
        let http = runtime.block_on(over_http(&base, &groups, args.repeat))?;
        if let Some(p) = python {
            to_python.push(akidb / p);
        }
        http_share.push(http / akidb);
        println!(
            "{}",
            json!({"round": round, "pairs": pairs.len(), "akidb_pairs_per_s": akidb, "python_pairs_per_s": python,
                   "http_pairs_per_s": http})
        );
    }
    println!(
        "{}",
        json!({
            "model": options.model,
            "median_akidb_over_python": (!to_python.is_empty()).then(|| median(to_python)),
            "median_http_over_in_process": median(http_share),
        })
    );
    Ok(())
}
