//! akidb's benchmarks in one tool. Every table is measured in one run with the contenders
//! interleaved round by round (A B C, A B C, …) and reported as the median of the per-round
//! ratios, because the machines this runs on are shared and noisy.
//!
//!     cargo build --release --bins --examples
//!     target/release/examples/bench all                # every table below, one after the other
//!     target/release/examples/bench corpus --rounds 3  # akidb vs Python (plain and optimizer-fused) + compute floor
//!     target/release/examples/bench latency            # one text: in process, over HTTP, Python in process
//!     target/release/examples/bench clients            # 16 one-text HTTP clients vs akidb in process; server RSS
//!     target/release/examples/bench mixed              # bulk indexing + interactive queries against one server
//!     target/release/examples/bench rerank             # pairs/s: cross-encoder in process, over HTTP, Python
//!     target/release/examples/bench precision          # bf16 vs fp32: corpus, floors, one text over HTTP, server RSS
//!
//! The Python peer is `scripts/bench_peer.py` in `target/bench-venv` (made by `bench setup`, or
//! by any subcommand that needs it): onnxruntime at the version akidb links, tokenizers, numpy,
//! and onnx/sympy/packaging for `onnxruntime.transformers.optimizer`. The server is the release
//! binary beside this example (`target/release/akidb`), started on a free port and stopped with
//! SIGTERM. Raw results are appended to `target/bench/results.jsonl`.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use akidb::settings::ModelArgs;
use akidb_engine::Model;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "akidb benchmarks: corpus, latency, clients, mixed, rerank, all (interleaved rounds, ratios)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Rounds of interleaved measurements; ratios are the median over rounds
    #[arg(long, global = true, default_value_t = 3)]
    rounds: usize,
    /// Texts for the corpus table, one per line
    #[arg(long, global = true, default_value = "benches/corpus.txt")]
    corpus: PathBuf,
    /// The one text of the latency and clients tables
    #[arg(long, global = true, default_value = "The quick brown fox jumps over the lazy dog.")]
    text: String,
    /// Concurrent one-text clients
    #[arg(long, global = true, default_value_t = 16)]
    clients: usize,
    /// Seconds per HTTP load phase
    #[arg(long, global = true, default_value_t = 8)]
    seconds: u64,
    /// The cross-encoder of the rerank table
    #[arg(long, global = true, default_value = "akidb-test/tiny-cross-encoder")]
    reranker: String,
    /// Model flags and AKIDB_* variables as for `akidb embed` (also passed to the server)
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Subcommand, Clone, Copy, PartialEq)]
enum Cmd {
    /// Make target/bench-venv for the Python peer
    Setup,
    /// Corpus throughput: akidb in process vs the Python path (plain and optimizer-fused) and the sgemm floor
    Corpus,
    /// One text: akidb in process, akidb over HTTP (one keep-alive connection), Python in process
    Latency,
    /// Concurrent one-text HTTP clients vs akidb's in-process throughput on the same text; server RSS
    Clients,
    /// One client posting 256-text requests back to back beside a one-text query every 0.2 s
    Mixed,
    /// Reranking pairs/s: the cross-encoder in process, over HTTP (`/rerank`), and the Python path
    Rerank,
    /// bf16 vs fp32 products (needs AVX512-BF16): corpus in process beside Python + optimizer and
    /// both compute floors (sgemm; oneDNN's bf16 matmul), one text over HTTP, server memory
    Precision,
    /// corpus, latency, clients, mixed and rerank
    All,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn median(v: impl AsRef<[f64]>) -> f64 {
    let mut v = v.as_ref().to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i.min(samples.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
}

/// Appends one result to target/bench/results.jsonl.
fn record(value: &Value) {
    let dir = root().join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("results.jsonl")) {
        let _ = writeln!(f, "{value}");
    }
}

// --- the Python peer -----------------------------------------------------------------------

fn venv_python() -> PathBuf {
    root().join("target/bench-venv/bin/python")
}

/// oneDNN for the bf16 floor (`bench_peer.py --mode bf16-floor`): its wheel is Linux x86_64 only.
const ONEDNN: &str = if cfg!(all(target_os = "linux", target_arch = "x86_64")) { "onednn-cpu-gomp" } else { "" };

fn setup() -> Result<PathBuf> {
    let python = venv_python();
    let version = akidb_engine::session::runtime::PINNED_VERSION;
    let check = format!(
        "import importlib.metadata as m, numpy, tokenizers, onnx, sympy, onnxruntime; assert m.version('onnxruntime') == '{version}'; assert '{ONEDNN}' == '' or m.version('{ONEDNN}')"
    );
    if python.exists() && Command::new(&python).args(["-c", &check]).stderr(Stdio::null()).status()?.success() {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("bench: creating target/bench-venv");
        let ok = Command::new("python3").args(["-m", "venv"]).arg(root().join("target/bench-venv")).status()?;
        anyhow::ensure!(ok.success(), "python3 -m venv failed (install python3-venv)");
    }
    eprintln!("bench: installing onnxruntime=={version} tokenizers numpy onnx sympy packaging {ONEDNN} from PyPI");
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("onnxruntime=={version}"))
        .args(["tokenizers", "numpy", "onnx", "sympy", "packaging"])
        .args((!ONEDNN.is_empty()).then_some(ONEDNN))
        .status()?;
    anyhow::ensure!(ok.success(), "pip install failed (is PyPI reachable?)");
    Ok(python)
}

/// Runs scripts/bench_peer.py and returns its JSON line.
fn peer(args: &[&str]) -> Result<Value> {
    let out = Command::new(venv_python())
        .arg(root().join("scripts/bench_peer.py"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/bench_peer.py")?;
    anyhow::ensure!(out.status.success(), "bench_peer.py {args:?} failed");
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let value: Value = serde_json::from_str(&line).with_context(|| format!("bench_peer.py printed {line:?}"))?;
    record(&value);
    Ok(value)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

// --- the server ----------------------------------------------------------------------------

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &ModelArgs) -> Result<Self> {
        let bin = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("akidb"))
            .filter(|p| p.exists())
            .context("target/release/akidb is missing: cargo build --release --bins --examples")?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--port", "0"]).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
        for m in &model.model {
            cmd.args(["--model", m]);
        }
        if let Some(t) = model.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        if let Some(Value::String(p)) = model.precision.map(|p| json!(p)) {
            cmd.args(["--precision", &p]);
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                        sent = true;
                    }
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).context("the server did not log its address")?;
        Ok(Self { child, url: format!("http://{addr}") })
    }

    async fn ready(&self, http: &reqwest::Client) -> Result<()> {
        for _ in 0..1200 {
            if http.get(format!("{}/health", self.url)).send().await.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server never became healthy")
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// The server's `akidb_batch_size` histogram so far, all models: (texts, inference calls).
async fn batch_sizes(http: &reqwest::Client, url: &str) -> Result<(f64, f64)> {
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let total = |name: &str| akidb_server::metrics::total(&text, name).unwrap_or(0.0);
    Ok((total("akidb_batch_size_sum"), total("akidb_batch_size_count")))
}

async fn post(http: &reqwest::Client, url: &str, inputs: Value) -> Result<Duration> {
    let started = Instant::now();
    let response = http.post(format!("{url}/embed")).json(&json!({ "inputs": inputs })).send().await?;
    anyhow::ensure!(response.status().is_success(), "status {}", response.status());
    response.bytes().await?;
    Ok(started.elapsed())
}

// --- the tables ----------------------------------------------------------------------------

fn corpus(cli: &Cli, embedder: &Model) -> Result<()> {
    let text = std::fs::read_to_string(&cli.corpus).with_context(|| format!("reading {}", cli.corpus.display()))?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let corpus = cli.corpus.display().to_string();
    embedder.embed(&texts, true)?; // warm-up
    let (mut akidb, mut plain, mut optimized, mut floor) = (vec![], vec![], vec![], vec![]);
    let (mut vs_plain, mut vs_optimized, mut of_floor) = (vec![], vec![], vec![]);
    let mut tokens = 0;
    for round in 1..=cli.rounds {
        let started = Instant::now();
        let out = embedder.embed(&texts, true)?;
        let seconds = started.elapsed().as_secs_f64();
        tokens = out.total_tokens;
        let a = texts.len() as f64 / seconds;
        record(
            &json!({"impl": "akidb", "mode": "throughput", "texts": texts.len(), "tokens": tokens, "seconds": seconds, "texts_per_s": a}),
        );
        let p = num(&peer(&["--mode", "throughput", "--corpus", &corpus, "--repeat", "1"])?, "texts_per_s");
        let o =
            num(&peer(&["--mode", "throughput", "--corpus", &corpus, "--repeat", "1", "--optimize"])?, "texts_per_s");
        let f = num(&peer(&["--mode", "floor", "--repeat", "3"])?, "gflops");
        // ~22 MFLOP per token (docs/performance.md): the floor in tokens/s.
        let floor_tokens = f * 1e9 / 22e6;
        let share = a * tokens as f64 / texts.len() as f64 / floor_tokens;
        eprintln!(
            "bench corpus round {round}: akidb {a:.1}, python {p:.1}, python+optimizer {o:.1} texts/s; floor {f:.0} GFLOP/s ({floor_tokens:.0} tokens/s); akidb at {:.0}% of it",
            share * 100.0
        );
        akidb.push(a);
        plain.push(p);
        optimized.push(o);
        floor.push(floor_tokens);
        vs_plain.push(a / p);
        vs_optimized.push(a / o);
        of_floor.push(share);
    }
    let (a, t) = (median(akidb), tokens as f64 / texts.len() as f64);
    println!("\n### Corpus throughput ({} texts, {tokens} tokens, {} rounds)\n", texts.len(), cli.rounds);
    println!("| measure | akidb | peer | ratio (median of rounds) |\n|---|---|---|---|");
    println!(
        "| vs Python + optimizer (SkipLayerNorm, BiasGelu fused), batches of 32 | {a:.1} texts/s | {:.1} texts/s | **{:.2}×** |",
        median(optimized),
        median(&vs_optimized)
    );
    println!(
        "| vs Python, exported graph, batches of 32 | {a:.1} texts/s | {:.1} texts/s | {:.2}× |",
        median(plain),
        median(&vs_plain)
    );
    println!(
        "| vs the compute floor (sgemm at the model's shapes, the faster of numpy and ONNX Runtime's MatMul; ~22 MFLOP/token) | {:.0} tokens/s | {:.0} tokens/s | **{:.0}%** |",
        a * t,
        median(floor),
        100.0 * median(&of_floor)
    );
    record(
        &json!({"table": "corpus", "akidb_texts_per_s": a, "vs_python_optimized": median(&vs_optimized), "vs_python": median(&vs_plain), "of_floor": median(&of_floor)}),
    );
    Ok(())
}

/// p50 of `n` single-text embeddings in process, in ms.
fn in_process_p50(embedder: &Model, text: &str, n: usize) -> Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        embedder.embed(&[text], true)?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(percentile(&mut samples, 0.5))
}

async fn latency(cli: &Cli, embedder: &Model) -> Result<()> {
    let server = Server::start(&cli.model)?;
    let http = reqwest::Client::new();
    server.ready(&http).await?;
    let n = 200;
    for _ in 0..20 {
        post(&http, &server.url, json!(cli.text)).await?;
        embedder.embed(&[&cli.text], true)?;
    }
    let (mut inproc, mut over_http, mut plain, mut optimized, mut ratio) = (vec![], vec![], vec![], vec![], vec![]);
    let iterations = n.to_string();
    for round in 1..=cli.rounds {
        let a = in_process_p50(embedder, &cli.text, n)?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            samples.push(post(&http, &server.url, json!(cli.text)).await?.as_secs_f64() * 1e3);
        }
        let h = percentile(&mut samples, 0.5);
        let args = ["--mode", "latency", "--text", &cli.text, "--iterations", &iterations, "--warmup", "20"];
        let p = num(&peer(&args)?, "p50_ms");
        let o = num(&peer(&[&args[..], &["--optimize"]].concat())?, "p50_ms");
        eprintln!("bench latency round {round}: akidb {a:.2} ms in process, {h:.2} ms over HTTP; python {p:.2}, python+optimizer {o:.2} ms");
        record(&json!({"impl": "akidb", "mode": "latency", "in_process_p50_ms": a, "http_p50_ms": h}));
        inproc.push(a);
        over_http.push(h);
        plain.push(p);
        optimized.push(o);
        ratio.push(h / p.min(o));
    }
    println!("\n### One short text, p50 ({} rounds of {n})\n", cli.rounds);
    println!("| akidb in process | akidb over HTTP | Python in process | Python + optimizer in process | HTTP / best Python (median of rounds) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | **{:.2}** |",
        median(inproc),
        median(over_http),
        median(plain),
        median(optimized),
        median(&ratio)
    );
    record(&json!({"table": "latency", "http_vs_best_python": median(ratio)}));
    Ok(())
}

/// Texts per second of akidb in process on `text`, `batch` copies per call, for `seconds`.
fn in_process_rate(embedder: &Model, text: &str, batch: usize, seconds: f64) -> Result<f64> {
    let texts = vec![text; batch];
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed().as_secs_f64() < seconds {
        embedder.embed(&texts, true)?;
        done += batch;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// `clients` concurrent clients posting one text each, back to back, for `seconds`: (req/s, p50, p99).
async fn load(http: &reqwest::Client, url: &str, text: &str, clients: usize, seconds: u64) -> Result<(f64, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, text) = (http.clone(), url.to_string(), text.to_string());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    samples.push(post(&http, &url, json!(text)).await?.as_secs_f64() * 1e3);
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, percentile(&mut all, 0.5), percentile(&mut all, 0.99)))
}

async fn clients(cli: &Cli, embedder: &Model) -> Result<()> {
    let server = Server::start(&cli.model)?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(cli.clients).build()?;
    server.ready(&http).await?;
    load(&http, &server.url, &cli.text, cli.clients, 1).await?; // warm-up
    let (mut served, mut own, mut ratio, mut p50s, mut p99s) = (vec![], vec![], vec![], vec![], vec![]);
    let mut per_call = vec![];
    for round in 1..=cli.rounds {
        let before = batch_sizes(&http, &server.url).await?;
        let (rate, p50, p99) = load(&http, &server.url, &cli.text, cli.clients, cli.seconds).await?;
        let after = batch_sizes(&http, &server.url).await?;
        let texts_per_call = (after.0 - before.0) / (after.1 - before.1).max(1.0);
        per_call.push(texts_per_call);
        let inproc = in_process_rate(embedder, &cli.text, cli.clients, cli.seconds as f64)?;
        eprintln!("bench clients round {round}: {rate:.0} req/s over HTTP (p50 {p50:.1} ms, p99 {p99:.1} ms, {texts_per_call:.1} texts per inference call); {inproc:.0} texts/s in process");
        record(
            &json!({"impl": "akidb", "mode": "clients", "clients": cli.clients, "req_per_s": rate, "p50_ms": p50, "p99_ms": p99, "in_process_texts_per_s": inproc}),
        );
        served.push(rate);
        own.push(inproc);
        ratio.push(rate / inproc);
        p50s.push(p50);
        p99s.push(p99);
    }
    let (rss, peak) = server.rss();
    println!("\n### {} one-text HTTP clients ({} rounds of {} s)\n", cli.clients, cli.rounds, cli.seconds);
    println!("| over HTTP | p50 / p99 | texts per inference call (server) | akidb in process, batches of {} | HTTP / in process (median of rounds) | server RSS after the load (peak) |", cli.clients);
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.0} req/s | {:.1} / {:.1} ms | {:.1} | {:.0} texts/s | **{:.0}%** | {rss:.0} MiB ({peak:.0} MiB) |",
        median(served),
        median(p50s),
        median(p99s),
        median(&per_call),
        median(own),
        100.0 * median(&ratio)
    );
    record(&json!({"table": "clients", "http_vs_in_process": median(ratio), "rss_mib": rss, "peak_mib": peak}));
    Ok(())
}

/// Texts of 5 to 60 words: an indexing job's mix of lengths, the same in every run.
fn bulk_texts(n: usize, seed: usize) -> Vec<String> {
    let words = ["index", "vector", "search", "document", "retrieval", "embedding", "corpus", "query", "ranking"];
    (0..n)
        .map(|i| {
            let len = 5 + (i * 7919 + seed * 104_729) % 56;
            (0..len).map(|w| words[(i + w + seed) % words.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

async fn bulk(http: &reqwest::Client, url: &str, requests: usize) -> Result<f64> {
    let started = Instant::now();
    for r in 0..requests {
        post(http, url, json!(bulk_texts(256, r))).await?;
    }
    Ok((requests * 256) as f64 / started.elapsed().as_secs_f64())
}

async fn mixed(cli: &Cli) -> Result<()> {
    let server = Server::start(&cli.model)?;
    let http = reqwest::Client::new();
    server.ready(&http).await?;
    let url = Arc::new(server.url.clone());
    let probe = |i: usize| json!(format!("what is a vector database? ({i})"));
    let mut idle = Vec::new();
    for i in 0..100 {
        idle.push(post(&http, &url, probe(i)).await?.as_secs_f64() * 1e3);
    }
    let idle_p50 = percentile(&mut idle, 0.5);
    let requests = 6;
    let (mut p50s, mut p99s, mut shares) = (vec![], vec![], vec![]);
    for round in 1..=cli.rounds {
        let alone = bulk(&http, &url, requests).await?;
        let task = tokio::spawn({
            let (http, url) = (http.clone(), url.clone());
            async move { bulk(&http, &url, requests).await }
        });
        let mut probes = Vec::new();
        while !task.is_finished() {
            probes.push(post(&http, &url, probe(probes.len())).await?.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let beside = task.await??;
        let (p50, p99) = (percentile(&mut probes, 0.5), percentile(&mut probes, 0.99));
        eprintln!("bench mixed round {round}: query p50 {p50:.1} ms, p99 {p99:.1} ms beside bulk; bulk {beside:.1} texts/s vs {alone:.1} alone");
        record(
            &json!({"impl": "akidb", "mode": "mixed", "idle_p50_ms": idle_p50, "probe_p50_ms": p50, "probe_p99_ms": p99, "bulk_alone": alone, "bulk_mixed": beside}),
        );
        p50s.push(p50);
        p99s.push(p99);
        shares.push(beside / alone);
    }
    println!(
        "\n### Mixed: one-text queries every 0.2 s beside a client posting 256-text requests ({} rounds)\n",
        cli.rounds
    );
    println!(
        "| query p50 idle | query p50 / p99 beside bulk | bulk throughput beside the queries vs alone |\n|---|---|---|"
    );
    println!("| {idle_p50:.1} ms | {:.1} / {:.1} ms | {:.0}% |", median(p50s), median(p99s), 100.0 * median(shares));
    Ok(())
}

// --- reranking -------------------------------------------------------------------------------

/// Queries (the first words of the corpus' first lines) each with 64 passages (corpus lines).
fn rerank_groups(cli: &Cli) -> Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(&cli.corpus)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(lines.len() >= 64, "{} has fewer than 64 texts", cli.corpus.display());
    Ok((0..8)
        .map(|q| {
            let query = lines[q].split_whitespace().take(8).collect::<Vec<_>>().join(" ");
            (query, (0..64).map(|p| lines[(q * 7 + p) % lines.len()].to_string()).collect())
        })
        .collect())
}

/// Pairs/s of the cross-encoder: tokenize the pairs, run them in akidb's length-sorted,
/// token-budgeted batches, sigmoid; the best of three passes.
fn rerank_in_process(embedder: &Model, pairs: &[akidb_engine::tokenize::Input]) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        let tokens = embedder.tokenize_inputs(pairs, &akidb_engine::EncodeOptions::default())?;
        let logits = embedder.embed_tokens(&tokens, false)?;
        std::hint::black_box(logits.iter().map(|l| 1.0 / (1.0 + (-l[0]).exp())).sum::<f32>());
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(pairs.len() as f64 / best)
}

/// Pairs/s over HTTP: one `/rerank` request per query, one after the other; the best of three.
async fn rerank_http(http: &reqwest::Client, url: &str, groups: &[(String, Vec<String>)]) -> Result<f64> {
    let pairs: usize = groups.iter().map(|(_, p)| p.len()).sum();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        for (query, texts) in groups {
            let r = http.post(format!("{url}/rerank")).json(&json!({ "query": query, "texts": texts })).send().await?;
            anyhow::ensure!(r.status().is_success(), "/rerank answered {}", r.status());
            r.bytes().await?;
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(pairs as f64 / best)
}

fn rerank(cli: &Cli) -> Result<()> {
    let groups = rerank_groups(cli)?;
    let pairs: Vec<akidb_engine::tokenize::Input> = groups
        .iter()
        .flat_map(|(q, ps)| ps.iter().map(move |p| akidb_engine::tokenize::Input::Pair(q.clone(), p.clone())))
        .collect();
    let dir = tempfile::tempdir()?;
    let pairs_file = dir.path().join("pairs.json");
    let as_json: Vec<[&str; 2]> =
        groups.iter().flat_map(|(q, ps)| ps.iter().map(move |p| [q.as_str(), p.as_str()])).collect();
    std::fs::write(&pairs_file, serde_json::to_vec(&as_json)?)?;
    let reference = root().join("../shared/reference/tiny-cross-encoder.dev.jsonl");

    let model = ModelArgs { model: vec![cli.reranker.clone()], ..cli.model.clone() };
    let embedder = Model::load(&model.options()).with_context(|| format!("loading {}", cli.reranker))?;
    anyhow::ensure!(
        embedder.info().kind == akidb_engine::model_config::Kind::CrossEncoder,
        "{} is no cross-encoder",
        cli.reranker
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let http = reqwest::Client::new();
    let server = Server::start(&model)?;
    rt.block_on(server.ready(&http))?;
    let (mut to_python, mut http_share) = (Vec::new(), Vec::new());
    for round in 0..cli.rounds.max(1) {
        let akidb = rerank_in_process(&embedder, &pairs)?;
        let mut args = vec!["--model", cli.reranker.as_str(), "--pairs"];
        let pairs_arg = pairs_file.display().to_string();
        args.push(&pairs_arg);
        let check = reference.display().to_string();
        if round == 0 && cli.reranker == "akidb-test/tiny-cross-encoder" && reference.exists() {
            args.extend(["--check", check.as_str()]);
        }
        let out = Command::new(venv_python())
            .arg(root().join("scripts/bench_rerank_peer.py"))
            .args(&args)
            .stderr(Stdio::inherit())
            .output()
            .context("running scripts/bench_rerank_peer.py")?;
        anyhow::ensure!(out.status.success(), "bench_rerank_peer.py failed");
        let python: Value = serde_json::from_slice(&out.stdout).context("the peer's JSON")?;
        let python = num(&python, "pairs_per_s");
        let over_http = rt.block_on(rerank_http(&http, &server.url, &groups))?;
        to_python.push(akidb / python);
        http_share.push(over_http / akidb);
        let row = json!({"table": "rerank", "round": round, "pairs": pairs.len(), "akidb_pairs_per_s": akidb,
                         "http_pairs_per_s": over_http, "python_pairs_per_s": python});
        record(&row);
        eprintln!("{row}");
    }
    println!("\n### Reranking ({}, {} pairs, {} rounds)\n", cli.reranker, pairs.len(), cli.rounds.max(1));
    println!("| akidb in process / Python (onnxruntime + tokenizers) | akidb over HTTP / in process |");
    println!("|---|---|");
    println!("| {:.2}× | {:.0}% |", median(to_python), 100.0 * median(http_share));
    Ok(())
}

/// bf16 against fp32, interleaved: the corpus in process (beside Python + optimizer, the strongest
/// Python path, and the floors: sgemm for fp32, oneDNN's bf16 matmul for bf16), then one text over
/// HTTP against two servers, one request to each in turn, and each server's memory after it has
/// also embedded the corpus.
async fn precision(cli: &Cli) -> Result<()> {
    use akidb_engine::session::runtime::Precision;
    let with = |precision| ModelArgs { precision: Some(precision), ..cli.model.clone() };
    let (fp32_args, bf16_args) = (with(Precision::Fp32), with(Precision::Bf16));
    let load = |args: &ModelArgs| Model::load(&args.options()).context("loading the model");
    let (fp32, bf16) = (load(&fp32_args)?, load(&bf16_args)?);
    let precision_of = |m: &Model| m.info().pipeline.precision.clone();
    eprintln!("bench precision: {} | {}", precision_of(&fp32), precision_of(&bf16));
    anyhow::ensure!(
        precision_of(&bf16).starts_with("bf16"),
        "the bf16 model runs {}: this table needs a CPU with AVX512-BF16 and the gate passed",
        precision_of(&bf16)
    );
    let text = std::fs::read_to_string(&cli.corpus).with_context(|| format!("reading {}", cli.corpus.display()))?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let corpus = cli.corpus.display().to_string();
    let rate = |m: &Model| -> Result<(f64, usize)> {
        let started = Instant::now();
        let out = m.embed(&texts, true)?;
        Ok((texts.len() as f64 / started.elapsed().as_secs_f64(), out.total_tokens))
    };
    rate(&fp32)?;
    rate(&bf16)?; // warm-up
    let mut rows: Vec<[f64; 5]> = Vec::new(); // fp32, bf16, python+optimizer texts/s; fp32, bf16 floors in GFLOP/s
    let mut tokens = 0;
    for round in 1..=cli.rounds {
        let (f, t) = rate(&fp32)?;
        let (b, _) = rate(&bf16)?;
        tokens = t;
        let o =
            num(&peer(&["--mode", "throughput", "--corpus", &corpus, "--repeat", "1", "--optimize"])?, "texts_per_s");
        let floor32 = num(&peer(&["--mode", "floor", "--repeat", "3"])?, "gflops");
        let floor16 = num(&peer(&["--mode", "bf16-floor", "--repeat", "3"])?, "gflops");
        eprintln!(
            "bench precision round {round}: fp32 {f:.1}, bf16 {b:.1}, python+optimizer {o:.1} texts/s; floors: sgemm {floor32:.0}, bf16 {floor16:.0} GFLOP/s"
        );
        record(
            &json!({"impl": "akidb", "mode": "precision", "fp32_texts_per_s": f, "bf16_texts_per_s": b, "python_optimized_texts_per_s": o, "sgemm_gflops": floor32, "bf16_gflops": floor16}),
        );
        rows.push([f, b, o, floor32, floor16]);
    }
    let per_token = tokens as f64 / texts.len() as f64;
    // ~22 MFLOP of products per token (docs/performance.md): a floor's GFLOP/s in texts/s.
    let texts_at = |gflops: f64| gflops * 1e9 / 22e6 / per_token;
    let med = |f: &dyn Fn(&[f64; 5]) -> f64| median(rows.iter().map(f).collect::<Vec<_>>());
    let (f, b, o) = (med(&|r| r[0]), med(&|r| r[1]), med(&|r| r[2]));
    let (bf16_vs_fp32, bf16_vs_python, fp32_vs_python) =
        (med(&|r| r[1] / r[0]), med(&|r| r[1] / r[2]), med(&|r| r[0] / r[2]));
    let (of_sgemm, of_bf16) = (med(&|r| r[0] / texts_at(r[3])), med(&|r| r[1] / texts_at(r[4])));
    println!("\n### bf16 vs fp32 products ({} texts, {tokens} tokens, {} rounds)\n", texts.len(), cli.rounds);
    println!("| measure | fp32 | bf16 | ratio (median of rounds) |\n|---|---|---|---|");
    println!("| akidb in process, texts/s | {f:.1} | {b:.1} | **{bf16_vs_fp32:.2}×** bf16 / fp32 |");
    println!("| vs Python + optimizer ({o:.1} texts/s) | {fp32_vs_python:.2}× | {bf16_vs_python:.2}× | |");
    println!(
        "| share of its floor (sgemm {:.0}, bf16 matmul {:.0} GFLOP/s; ~22 MFLOP/token) | {:.0}% | {:.0}% | |",
        med(&|r| r[3]),
        med(&|r| r[4]),
        100.0 * of_sgemm,
        100.0 * of_bf16
    );

    let servers = [Server::start(&fp32_args)?, Server::start(&bf16_args)?];
    let http = reqwest::Client::new();
    for s in &servers {
        s.ready(&http).await?;
        for _ in 0..20 {
            post(&http, &s.url, json!(cli.text)).await?;
        }
    }
    let n = 200;
    let (mut p50s, mut p95s, mut ratio) = ([vec![], vec![]], [vec![], vec![]], vec![]);
    for round in 1..=cli.rounds {
        let mut samples = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for _ in 0..n {
            for (s, out) in servers.iter().zip(samples.iter_mut()) {
                out.push(post(&http, &s.url, json!(cli.text)).await?.as_secs_f64() * 1e3);
            }
        }
        let [mut a, mut b] = samples;
        let (pa, pb) = (percentile(&mut a, 0.5), percentile(&mut b, 0.5));
        eprintln!("bench precision latency round {round}: one text over HTTP, p50 fp32 {pa:.2} ms, bf16 {pb:.2} ms");
        p50s[0].push(pa);
        p50s[1].push(pb);
        p95s[0].push(percentile(&mut a, 0.95));
        p95s[1].push(percentile(&mut b, 0.95));
        ratio.push(pb / pa);
    }
    for s in &servers {
        for chunk in texts.chunks(64) {
            post(&http, &s.url, json!(chunk)).await?;
        }
    }
    let [(rss32, hwm32), (rss16, hwm16)] = [servers[0].rss(), servers[1].rss()];
    println!(
        "| one text over HTTP, p50 (p95) | {:.2} ms ({:.2}) | {:.2} ms ({:.2}) | **{:.2}×** bf16 / fp32 |",
        median(&p50s[0]),
        median(&p95s[0]),
        median(&p50s[1]),
        median(&p95s[1]),
        median(&ratio)
    );
    println!(
        "| server RSS after the corpus (peak) | {rss32:.0} MiB ({hwm32:.0}) | {rss16:.0} MiB ({hwm16:.0}) | {:.2}× |",
        rss16 / rss32
    );
    record(
        &json!({"table": "precision", "bf16_vs_fp32": bf16_vs_fp32, "bf16_vs_python_optimized": bf16_vs_python, "of_sgemm_floor": of_sgemm, "of_bf16_floor": of_bf16, "http_p50_bf16_vs_fp32": median(&ratio), "rss_mib": [rss32, rss16], "hwm_mib": [hwm32, hwm16]}),
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if std::env::var_os("HF_HOME").is_none() {
        std::env::set_var("HF_HOME", root().join("../shared/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    if cli.command == Cmd::Setup {
        setup()?;
        return Ok(());
    }
    let needs_peer = matches!(cli.command, Cmd::Corpus | Cmd::Latency | Cmd::Rerank | Cmd::Precision | Cmd::All);
    if needs_peer {
        setup()?;
    }
    if cli.command == Cmd::Rerank {
        return rerank(&cli);
    }
    if cli.command == Cmd::Precision {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        return rt.block_on(precision(&cli));
    }
    let options = cli.model.options();
    let embedder = Model::load(&options).with_context(|| format!("loading {}", options.model))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run = |cmd: Cmd| -> Result<()> {
        match cmd {
            Cmd::Corpus => corpus(&cli, &embedder),
            Cmd::Latency => rt.block_on(latency(&cli, &embedder)),
            Cmd::Clients => rt.block_on(clients(&cli, &embedder)),
            Cmd::Mixed => rt.block_on(mixed(&cli)),
            Cmd::Rerank => rerank(&cli),
            Cmd::Setup | Cmd::Precision | Cmd::All => Ok(()),
        }
    };
    match cli.command {
        Cmd::All => {
            for cmd in [Cmd::Corpus, Cmd::Latency, Cmd::Clients, Cmd::Mixed, Cmd::Rerank] {
                run(cmd)?;
            }
        }
        cmd => run(cmd)?,
    }
    Ok(())
}
