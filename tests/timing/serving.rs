//! `akidb serve` under real traffic, with the real MiniLM model over real HTTP on 127.0.0.1:
//! interactive queries beside an indexing job, clients that hang up, a storm of bulk requests,
//! and a shutdown deadline. Bounds are ratios to the same run's idle latency and bulk throughput,
//! never absolute times. The tests take turns (one lock) so they do not load each other.

use crate::common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use akidb_server::ServerConfig;
use common::{
    server::{spawn_binary, wait_healthy, TestServer},
    MINILM,
};
use serde_json::{json, Value};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bulk texts of 5 to 60 words: an indexing job's mix of lengths.
fn bulk_texts(n: usize, seed: usize) -> Vec<String> {
    let words = ["index", "vector", "search", "document", "retrieval", "embedding", "corpus", "query", "ranking"];
    (0..n)
        .map(|i| {
            let len = 5 + (i * 7919 + seed * 104_729) % 56;
            (0..len).map(|w| words[(i + w + seed) % words.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

async fn probe(client: &reqwest::Client, server: &TestServer, i: usize) -> Duration {
    let started = Instant::now();
    let r = client
        .post(server.url("/embed"))
        .json(&json!({ "inputs": format!("what is a vector database? ({i})") }))
        .send()
        .await
        .expect("probe sent");
    assert_eq!(r.status(), 200, "probe {i}");
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v[0].as_array().map(Vec::len), Some(384));
    started.elapsed()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

async fn idle_p50(client: &reqwest::Client, server: &TestServer) -> Duration {
    for i in 0..5 {
        probe(client, server, i).await;
    }
    let mut samples = Vec::new();
    for i in 0..30 {
        samples.push(probe(client, server, i).await);
    }
    percentile(&mut samples, 0.5)
}

/// Posts `requests` bulk requests of `size` texts back to back; returns texts per second.
async fn bulk_client(client: reqwest::Client, url: String, requests: usize, size: usize) -> f64 {
    let started = Instant::now();
    for r in 0..requests {
        let response = client.post(&url).json(&json!({ "inputs": bulk_texts(size, r) })).send().await.expect("bulk");
        assert_eq!(response.status(), 200);
        let v: Value = response.json().await.expect("JSON");
        assert_eq!(v.as_array().map(Vec::len), Some(size));
    }
    (requests * size) as f64 / started.elapsed().as_secs_f64()
}

/// `name` summed over its series (each model has its own).
fn metric(text: &str, name: &str) -> f64 {
    akidb_server::metrics::total(text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Mean duration of the inference calls made since `before` (a `/metrics` snapshot).
async fn mean_batch_since(server: &TestServer, before: &str) -> Duration {
    let now = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let (sum, count) = ("akidb_inference_duration_seconds_sum", "akidb_inference_duration_seconds_count");
    let calls = metric(&now, count) - metric(before, count);
    assert!(calls > 0.0, "no inference call since the snapshot");
    Duration::from_secs_f64((metric(&now, sum) - metric(before, sum)) / calls)
}

/// A probe may wait for the batch in progress and then for its own, never for a whole bulk request:
/// its p99 is within 3x the idle p50 plus 4 of the run's own mean batches (FIFO scheduling, a probe
/// behind all of a 256-text request, is ~15 batches), and within 40x the idle p50.
/// Bulk phases alone and with probes alternate, so drifting background load hits both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_does_not_wait_behind_an_indexing_job() {
    let _turn = TURN.lock().await;
    let server = TestServer::start(MINILM, ServerConfig::default());
    server.wait_healthy().await;
    let client = reqwest::Client::new();
    let idle = idle_p50(&client, &server).await;

    let (mut alone_secs, mut mixed_secs, mut latencies, mut batch) = (0.0, 0.0, Vec::new(), Duration::ZERO);
    let (rounds, requests, size) = (2, 3, 256);
    for round in 0..rounds {
        let rate = bulk_client(client.clone(), server.url("/embed"), requests, size).await;
        alone_secs += (requests * size) as f64 / rate;

        let before = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
        let bulk = tokio::spawn(bulk_client(client.clone(), server.url("/embed"), requests, size));
        let mut i = round * 1000;
        while !bulk.is_finished() {
            latencies.push(probe(&client, &server, i).await);
            i += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        mixed_secs += (requests * size) as f64 / bulk.await.unwrap();
        batch = batch.max(mean_batch_since(&server, &before).await);
    }
    let (alone, mixed) =
        ((rounds * requests * size) as f64 / alone_secs, (rounds * requests * size) as f64 / mixed_secs);
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    let bound = idle * 3 + batch * 4;
    eprintln!(
        "idle p50 {idle:?}; with bulk: {} probes, p50 {p50:?}, p99 {p99:?} (bound {bound:?}, mean batch {batch:?}); \
         bulk {alone:.0} texts/s alone, {mixed:.0} with probes ({:.2}x)",
        latencies.len(),
        mixed / alone
    );
    assert!(latencies.len() >= 5, "the bulk phase ran long enough to probe it");
    assert!(p99 <= bound, "probe p99 {p99:?} is over 3x idle p50 {idle:?} + 4 mean batches {batch:?}");
    assert!(p99 <= idle * 40, "probe p99 {p99:?} is over 40x the idle p50 {idle:?}");
    assert!(mixed >= 0.85 * alone, "bulk throughput {mixed:.0} texts/s with probes, {alone:.0} alone");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_leave_no_work_behind() {
    let _turn = TURN.lock().await;
    let server = TestServer::start(MINILM, ServerConfig::default());
    server.wait_healthy().await;
    let quick = reqwest::Client::new();
    probe(&quick, &server, 0).await;

    // Eight indexing requests whose clients give up after 0.2 s: about 25 s of work if computed.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let mut gone = Vec::new();
    for r in 0..8 {
        let (client, url) = (impatient.clone(), server.url("/api/v1/embed"));
        gone.push(tokio::spawn(
            async move { client.post(url).json(&json!({ "inputs": bulk_texts(512, r) })).send().await },
        ));
    }
    for g in gone {
        assert!(g.await.unwrap().is_err(), "the client hung up before an answer");
    }
    let started = Instant::now();
    probe(&quick, &server, 1).await;
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(1), "a short request after 8 abandoned ones took {waited:?}");

    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    // Requests cut off while tokenizing never reach the queue; the rest are dropped there.
    let computed = metric(&metrics, "akidb_batch_size_sum");
    let dropped = metric(&metrics, "akidb_dropped_texts_total");
    eprintln!(
        "after 8 abandoned requests: probe {waited:?}, {computed} texts computed, {dropped} dropped from the queue"
    );
    assert!(computed < 1024.0, "{computed} of the 4096 abandoned texts were computed anyway");
    assert_eq!(metric(&metrics, "akidb_texts_total"), 2.0, "only the probes were answered");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bulk_requests_gets_429s_while_queries_still_get_through() {
    let _turn = TURN.lock().await;
    // A bound of about two of these requests, so the storm overflows it at once.
    let server = TestServer::start(MINILM, ServerConfig { max_queued_tokens: 40_000, ..Default::default() });
    server.wait_healthy().await;
    let client = reqwest::Client::new();
    let idle = idle_p50(&client, &server).await;
    let before = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();

    let storm_start = Instant::now();
    let mut storm = Vec::new();
    for r in 0..24 {
        let (client, url) = (client.clone(), server.url("/v1/embeddings"));
        storm.push(tokio::spawn(async move {
            let response = client.post(url).json(&json!({ "input": bulk_texts(512, r) })).send().await.expect("sent");
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let body: Value = response.json().await.expect("every answer is JSON");
            (status, retry, body)
        }));
    }
    let mut latencies = Vec::new();
    let mut i = 0;
    while !storm.iter().all(tokio::task::JoinHandle::is_finished) {
        let t0 = Instant::now();
        let l = probe(&client, &server, i).await;
        eprintln!("probe at {:?}: {:?}", t0.duration_since(storm_start), l);
        latencies.push(l);
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ok, mut limited) = (0, 0);
    for s in storm {
        let (status, retry, body) = s.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(body["data"].as_array().map(Vec::len), Some(512));
            }
            429 => {
                limited += 1;
                assert!(retry.as_deref().and_then(|r| r.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{retry:?}");
                assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
            }
            other => panic!("storm answer {other}: {body}"),
        }
    }
    let p99 = percentile(&mut latencies, 0.99);
    let batch = mean_batch_since(&server, &before).await;
    eprintln!(
        "storm: {ok} answered, {limited} got 429; idle p50 {idle:?}, probe p99 {p99:?} over {} probes, mean batch {batch:?}",
        latencies.len()
    );
    assert!(ok >= 1 && limited >= 1, "{ok} answered, {limited} limited");
    let bound = idle * 3 + batch * 4;
    assert!(p99 <= bound, "probe p99 {p99:?} during the storm is over 3x idle p50 {idle:?} + 4 mean batches {batch:?}");
    assert!(p99 <= idle * 40, "probe p99 {p99:?} during the storm is over 40x the idle p50 {idle:?}");
    let health = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200, "healthy after the storm");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_shutdown_timeout_even_with_a_huge_request_in_flight() {
    let _turn = TURN.lock().await;
    let (mut child, base) = spawn_binary(&["--model", MINILM, "--shutdown-timeout", "1"]);
    let client = reqwest::Client::new();
    wait_healthy(&base).await;
    // 512 texts of ~250 tokens: far more than a second of work.
    let texts: Vec<String> =
        (0..512).map(|i| format!("text {i} {}", "words to keep the model busy ".repeat(40))).collect();
    let request = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/api/v1/embed"));
        async move { client.post(url).json(&json!({ "inputs": texts })).send().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill").success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "exited {took:?} after SIGTERM with a 1 s shutdown timeout");
    assert!(request.await.unwrap().is_err(), "the abandoned request got no answer");
}
