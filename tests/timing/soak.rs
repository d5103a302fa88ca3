//! A soak: the mixed workload of a real deployment against the real binary for a bounded time —
//! one-text queries, bulk requests, clients that hang up, bad requests — with the server's
//! resident memory, open file descriptors and threads sampled from /proc.
//!
//! The suite runs 40 s; `AKIDB_SOAK_SECONDS=600 cargo test --release --test soak -- --nocapture`
//! is the 10-minute benchmark whose figures docs/operations.md records.

use crate::common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{
    server::{spawn_binary, wait_healthy},
    MINILM,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc fd").count();
    Sample { at, rss_kib: field("VmRSS:"), fds, threads: field("Threads:") }
}

#[derive(Default)]
struct Tally {
    by_status: Mutex<std::collections::BTreeMap<u16, u64>>,
    not_json: AtomicU64,
    hung_up: AtomicU64,
}

impl Tally {
    async fn record(&self, response: reqwest::Result<reqwest::Response>) {
        let Ok(response) = response else {
            self.hung_up.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let status = response.status().as_u16();
        *self.by_status.lock().entry(status).or_default() += 1;
        match response.bytes().await {
            Ok(body) if serde_json::from_slice::<Value>(&body).is_ok() => {}
            _ => {
                self.not_json.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn texts(n: usize, seed: usize) -> Vec<String> {
    (0..n).map(|i| format!("soak text {seed} {i} {}", "about vector search ".repeat(1 + (i + seed) % 12))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_no_5xx_flat_memory_no_leaks() {
    let seconds: u64 = std::env::var("AKIDB_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let (mut child, base) = spawn_binary(&["--model", MINILM, "--max-queued-tokens", "60000"]);
    let pid = child.id();
    let client = reqwest::Client::new();
    wait_healthy(&base).await;
    let started = Instant::now();
    let baseline = sample(pid, Duration::ZERO);
    let running = Arc::new(AtomicBool::new(true));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();

    let spawn_loop = |pause: Duration, make: Arc<dyn Fn(usize) -> reqwest::RequestBuilder + Send + Sync>| {
        let (running, tally) = (running.clone(), tally.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while running.load(Ordering::Relaxed) {
                tally.record(make(i).send().await).await;
                i += 1;
                tokio::time::sleep(pause).await;
            }
        })
    };
    let (c, b) = (client.clone(), base.clone());
    workers.push(spawn_loop(
        Duration::from_millis(50),
        Arc::new(move |i| c.post(format!("{b}/embed")).json(&json!({"inputs": format!("query {i}")}))),
    ));
    let (c, b) = (client.clone(), base.clone());
    workers.push(spawn_loop(
        Duration::ZERO,
        Arc::new(move |i| c.post(format!("{b}/v1/embeddings")).json(&json!({"input": texts(64, i)}))),
    ));
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(150)).build().unwrap();
    let b = base.clone();
    workers.push(spawn_loop(
        Duration::from_millis(300),
        Arc::new(move |i| impatient.post(format!("{b}/api/v1/embed")).json(&json!({"inputs": texts(256, i)}))),
    ));
    let (c, b) = (client.clone(), base.clone());
    let bad = ["{\"inputs\":", "{\"inputs\": 5}", "{\"inputs\": []}", "[1,2,3]", "{\"input\": [[1,2]]}"];
    workers.push(spawn_loop(
        Duration::from_millis(100),
        Arc::new(move |i| {
            c.post(format!("{b}/embed")).header("content-type", "application/json").body(bad[i % bad.len()])
        }),
    ));

    let mut samples = vec![baseline];
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(sample(pid, started.elapsed()));
    }
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // Let hung-up work drain, connections close and idle blocking threads (10 s) end; look again.
    drop(client);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = sample(pid, started.elapsed());

    let statuses = tally.by_status.lock().clone();
    let total: u64 = statuses.values().sum();
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    // Memory: the last fifth of the run against the second fifth (after warm-up).
    let fifth = samples.len() / 5;
    let mean = |s: &[Sample]| s.iter().map(|x| x.rss_kib as f64).sum::<f64>() / s.len().max(1) as f64;
    let (early, late) = (mean(&samples[fifth..2 * fifth]), mean(&samples[4 * fifth..]));
    eprintln!(
        "soak {seconds} s: {total} answers {statuses:?}, {} hung up, {} not JSON; RSS KiB baseline {} early {early:.0} late {late:.0} max {max_rss}; fds {} -> {}; threads {} -> {}",
        tally.hung_up.load(Ordering::Relaxed),
        tally.not_json.load(Ordering::Relaxed),
        baseline.rss_kib,
        baseline.fds,
        after.fds,
        baseline.threads,
        after.threads
    );
    eprintln!("rss curve (s, KiB): {:?}", samples.iter().map(|s| (s.at.as_secs(), s.rss_kib)).collect::<Vec<_>>());
    eprintln!("fd curve (s, fds): {:?}", samples.iter().map(|s| (s.at.as_secs(), s.fds)).collect::<Vec<_>>());

    assert!(total > 100, "the load ran ({total} answers)");
    assert!(statuses.keys().all(|&s| s < 500), "no 5xx: {statuses:?}");
    assert_eq!(tally.not_json.load(Ordering::Relaxed), 0, "every answer is JSON");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0 && statuses.keys().any(|s| (400..500).contains(s)));
    assert!(late <= early * 1.10, "resident memory grew: {early:.0} KiB early, {late:.0} KiB late");
    assert!(after.fds <= baseline.fds + 2, "open files {} before, {} after the load", baseline.fds, after.fds);
    assert!(after.threads <= baseline.threads + 2, "threads {} before, {} after", baseline.threads, after.threads);

    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}
