//! The mixed workload of a search deployment against a running `akidb serve`: one indexing client
//! posting bulk requests back to back, and one interactive client sending a one-text query every
//! `--probe-interval-ms`. Measures the queries alone first (idle p50), the bulk client alone, then
//! both together, and prints probe p50/p99 and bulk texts/s with their ratios.
//!
//!     cargo run --release --example mixed_load -- --url http://127.0.0.1:8080
//!
//! `scripts/bench-http.sh` runs it after its wrk runs.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Base URL of the server
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Texts per bulk request
    #[arg(long, default_value_t = 256)]
    bulk_size: usize,
    /// Bulk requests per phase
    #[arg(long, default_value_t = 12)]
    bulk_requests: usize,
    #[arg(long, default_value_t = 200)]
    probe_interval_ms: u64,
    /// Queries for the idle p50
    #[arg(long, default_value_t = 100)]
    idle_probes: usize,
    /// Bearer token, when the server wants one
    #[arg(long, env = "AKIDB_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print one JSON line instead of text
    #[arg(long)]
    json: bool,
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

struct Client {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Client {
    async fn embed(&self, inputs: Value) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut request = self.http.post(format!("{}/embed", self.url)).json(&json!({ "inputs": inputs }));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status().is_success(), "status {}", response.status());
        response.bytes().await?;
        Ok(started.elapsed())
    }

    async fn bulk(&self, requests: usize, size: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        for r in 0..requests {
            self.embed(json!(bulk_texts(size, r))).await?;
        }
        Ok((requests * size) as f64 / started.elapsed().as_secs_f64())
    }

    async fn probe(&self, i: usize) -> anyhow::Result<Duration> {
        self.embed(json!(format!("what is a vector database? ({i})"))).await
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = std::sync::Arc::new(Client {
        http: reqwest::Client::new(),
        url: args.url.trim_end_matches('/').to_string(),
        key: args.api_key.clone(),
    });
    for i in 0..10 {
        client.probe(i).await?;
    }
    let mut idle = Vec::new();
    for i in 0..args.idle_probes {
        idle.push(client.probe(i).await?);
    }
    let idle_p50 = percentile(&mut idle, 0.5);
    let alone = client.bulk(args.bulk_requests, args.bulk_size).await?;

    let bulk = tokio::spawn({
        let client = client.clone();
        let (n, size) = (args.bulk_requests, args.bulk_size);
        async move { client.bulk(n, size).await }
    });
    let mut probes = Vec::new();
    while !bulk.is_finished() {
        probes.push(client.probe(probes.len()).await?);
        tokio::time::sleep(Duration::from_millis(args.probe_interval_ms)).await;
    }
    let mixed = bulk.await??;
    let (p50, p99) = (percentile(&mut probes, 0.5), percentile(&mut probes, 0.99));
    if args.json {
        println!(
            "{}",
            json!({
                "idle_p50_ms": idle_p50, "probe_p50_ms": p50, "probe_p99_ms": p99, "probes": probes.len(),
                "bulk_alone_texts_per_s": alone, "bulk_mixed_texts_per_s": mixed,
                "bulk_size": args.bulk_size, "probe_interval_ms": args.probe_interval_ms,
            })
        );
    } else {
        println!("one-text query, idle:          p50 {idle_p50:.2} ms");
        println!(
            "one-text query beside bulk:    p50 {p50:.2} ms, p99 {p99:.2} ms ({} queries; p99 = {:.1}x idle p50)",
            probes.len(),
            p99 / idle_p50
        );
        println!(
            "bulk ({}-text requests):      {alone:.1} texts/s alone, {mixed:.1} with queries ({:.0}%)",
            args.bulk_size,
            100.0 * mixed / alone
        );
    }
    Ok(())
}
