//! `akidb serve` over real HTTP on 127.0.0.1: every route, both models, the bad-input table,
//! limits, batching, API key, readiness, graceful shutdown, and the official OpenAI client.

use crate::common;

use std::{process::Command, sync::OnceLock, time::Duration};

use akidb_server::ServerConfig;
use base64::Engine as _;
use common::{
    cosine, hf_home, max_abs_diff, reference,
    server::{spawn_binary, wait_healthy, TestServer},
    MINILM, TINY,
};
use serde_json::{json, Value};

/// One shared MiniLM server and one tiny-model server for the read-only tests.
fn shared(model: &'static str) -> &'static TestServer {
    static MINI: OnceLock<TestServer> = OnceLock::new();
    static TINY_S: OnceLock<TestServer> = OnceLock::new();
    let cell = if model == MINILM { &MINI } else { &TINY_S };
    cell.get_or_init(|| TestServer::start(model, ServerConfig::default()))
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn cli_embed(model: &str, texts: &[&str]) -> Vec<Vec<f32>> {
    let out = Command::new(env!("CARGO_BIN_EXE_akidb"))
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", model])
        .args(texts)
        .output()
        .expect("run akidb embed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["embeddings"].as_array().unwrap().iter().map(floats).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_matches_reference_and_cli() {
    for model in [MINILM, TINY] {
        let server = shared(model);
        server.wait_healthy().await;
        let rows = reference(model);
        let picks: Vec<&(String, Vec<f32>)> = vec![&rows[0], &rows[7], &rows[rows.len() - 1]];
        let texts: Vec<&str> = picks.iter().map(|(t, _)| t.as_str()).collect();
        let want: Vec<&Vec<f32>> = picks.iter().map(|(_, e)| e).collect();
        let cli = cli_embed(model, &texts);

        let check = |route: &str, got: Vec<Vec<f32>>| {
            assert_eq!(got.len(), want.len(), "{route}");
            for (i, g) in got.iter().enumerate() {
                assert!(cosine(g, want[i]) >= 0.9999, "{model} {route} row {i} vs reference");
                assert!(max_abs_diff(g, &cli[i]) < 1e-5, "{model} {route} row {i} vs CLI");
            }
        };

        let (s, v) =
            post(&server.url("/api/v1/embed"), json!({"model": model, "inputs": texts, "normalize": true})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["model"], model);
        assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0 && v["usage"]["duration_ms"].is_u64());
        check("/api/v1/embed", v["embeddings"].as_array().unwrap().iter().map(floats).collect());

        let (s, v) = post(&server.url("/v1/embeddings"), json!({"model": model, "input": texts})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["object"], "list");
        assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);
        for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(i as u64)));
        }
        check("/v1/embeddings float", v["data"].as_array().unwrap().iter().map(|d| floats(&d["embedding"])).collect());

        let (s, v) =
            post(&server.url("/v1/embeddings"), json!({"model": model, "input": texts, "encoding_format": "base64"}))
                .await;
        assert_eq!(s, 200, "{v}");
        let decoded = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(d["embedding"].as_str().unwrap()).unwrap();
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            })
            .collect();
        check("/v1/embeddings base64", decoded);

        let (s, v) = post(&server.url("/embed"), json!({"inputs": texts})).await;
        assert_eq!(s, 200, "{v}");
        check("/embed", v.as_array().unwrap().iter().map(floats).collect());

        let (s, v) = post(&server.url("/api/embed"), json!({"model": model, "input": texts})).await;
        assert_eq!(s, 200, "{v}");
        check("/api/embed", v["embeddings"].as_array().unwrap().iter().map(floats).collect());

        // A single string is accepted where the API allows one.
        let (s, v) = post(&server.url("/embed"), json!({"inputs": texts[0]})).await;
        assert_eq!(s, 200);
        let single = v.as_array().expect("an array of vectors");
        assert_eq!(single.len(), 1, "one text in, one vector out: {v}");
        let got = floats(&single[0]);
        assert!(cosine(&got, want[0]) >= 0.9999, "{model} /embed single vs reference");
        assert!(max_abs_diff(&got, &cli[0]) < 1e-5, "{model} /embed single vs CLI");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_health_and_metrics_describe_the_server() {
    let server = shared(TINY);
    server.wait_healthy().await;
    let info: Value = reqwest::get(server.url("/info")).await.unwrap().json().await.unwrap();
    assert_eq!(info["model_id"], TINY);
    assert_eq!(info["dimension"], 32);
    assert_eq!(info["max_input_length"], 64);
    assert_eq!(info["pooling"], "cls");
    assert_eq!(info["execution_provider"], "CPUExecutionProvider");
    // The linked library here has no CoreML: `auto` decides for the CPU without measuring.
    assert_eq!(info["device"]["provider"], "CPUExecutionProvider");
    assert_eq!(info["device"]["decision"]["reason"], "CoreML is not available in the linked ONNX Runtime");
    assert!(info["device"].get("fell_back").is_none(), "{info}");
    assert_eq!(info["onnx_runtime_version"], akidb_engine::session::runtime::PINNED_VERSION);
    assert_eq!(info["model_revision"], "35540ced21388cb29b96936151cc815ab481bce4");
    assert!(info["limits"]["payload_limit"].as_u64().unwrap() > 0);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let (s, _) = post(&server.url("/embed"), json!({"inputs": ["metrics please"]})).await;
    assert_eq!(s, 200);
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    for needle in [
        "akidb_http_requests_total{route=\"/embed\",status=\"200\"}",
        "akidb_http_request_duration_seconds_bucket",
        "akidb_batch_size_bucket",
        "akidb_batch_requests_bucket",
        "akidb_queue_depth",
        "akidb_tokens_total",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_json_and_the_server_keeps_serving() {
    let server = shared(TINY);
    server.wait_healthy().await;
    let client = reqwest::Client::new();
    let long = "word ".repeat(300);
    let many: Vec<&str> = vec!["x"; 513];
    let big = "a".repeat(2_100_000);
    // (route, content type, body, status, text the error must contain)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("/api/v1/embed", "application/json", "{\"inputs\": [\"a\"".into(), 400, "malformed JSON"),
        ("/embed", "application/json", "not json at all".into(), 400, "malformed JSON"),
        ("/api/v1/embed", "text/plain", json!({"inputs": ["a"]}).to_string(), 415, "application/json"),
        ("/v1/embeddings", "application/x-www-form-urlencoded", "input=a".into(), 415, "application/json"),
        ("/api/v1/embed", "application/json", json!({"inputs": []}).to_string(), 422, "must not be empty"),
        ("/v1/embeddings", "application/json", json!({"input": []}).to_string(), 422, "must not be empty"),
        ("/api/v1/embed", "application/json", json!({"inputs": [1, 2]}).to_string(), 422, "inputs[0]"),
        (
            "/embed",
            "application/json",
            json!({"inputs": [[101, 7592, 102]]}).to_string(),
            422,
            "token-id inputs are not supported, send text (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))",
        ),
        (
            "/v1/embeddings",
            "application/json",
            json!({"input": [[101, 4_000_000_000u32]]}).to_string(),
            422,
            "input[0]",
        ),
        (
            "/embed",
            "application/json",
            json!({"inputs": ["ok", {"a": 1}]}).to_string(),
            422,
            "inputs[1] must be a string",
        ),
        ("/api/embed", "application/json", json!({"input": null}).to_string(), 422, "missing field `input`"),
        ("/api/v1/embed", "application/json", json!({"normalize": true}).to_string(), 422, "missing field `inputs`"),
        (
            "/api/v1/embed",
            "application/json",
            json!({"inputs": ["a"], "normalize": "yes"}).to_string(),
            422,
            "invalid request",
        ),
        ("/api/v1/embed", "application/json", json!({"inputs": many}).to_string(), 413, "limit is 512"),
        ("/embed", "application/json", json!({"inputs": [big]}).to_string(), 413, "limit"),
        ("/api/v1/embed", "application/json", json!({"model": "other/model", "inputs": ["a"]}).to_string(), 404, TINY),
        ("/v1/embeddings", "application/json", json!({"model": "gpt-4", "input": "a"}).to_string(), 404, TINY),
        ("/v1/embeddings", "application/json", json!({"input": "a", "dimensions": 33}).to_string(), 400, "dimensions"),
        (
            "/v1/embeddings",
            "application/json",
            json!({"input": "a", "encoding_format": "int8"}).to_string(),
            400,
            "encoding_format",
        ),
        (
            "/embed",
            "application/json",
            json!({"inputs": [long], "truncate": false}).to_string(),
            422,
            "maximum of 64 tokens",
        ),
        ("/nope", "application/json", "{}".into(), 404, "no route"),
    ];
    for (route, content_type, body, status, needle) in cases {
        let r =
            client.post(server.url(route)).header("content-type", content_type).body(body).send().await.expect("send");
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_else(|e| panic!("{route} -> {got}: body is not JSON: {e}"));
        assert_eq!(got, status, "{route} {content_type}: {v}");
        let message = if route.starts_with("/v1/") {
            assert!(v["error"]["type"].is_string() && v["error"].get("param").is_some(), "OpenAI shape: {v}");
            v["error"]["message"].as_str().unwrap().to_string()
        } else {
            assert!(v["error_type"].is_string(), "{v}");
            v["error"].as_str().unwrap().to_string()
        };
        assert!(message.contains(needle), "{route}: {needle:?} not in {message:?}");
    }
    let r = client.get(server.url("/embed")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    // Truncation is the default, and the server still serves.
    let (s, v) = post(&server.url("/embed"), json!({"inputs": ["word ".repeat(300), "fine"]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    // dimensions: truncated, then unit length again.
    let (s, v) = post(&server.url("/v1/embeddings"), json!({"input": "a", "dimensions": 8})).await;
    assert_eq!(s, 200);
    let e = floats(&v["data"][0]["embedding"]);
    assert_eq!(e.len(), 8);
    assert!((common::norm(&e) - 1.0).abs() < 1e-5);
    // TEI's and the native route's `dimensions`: the first dimensions of the raw vector, normalized
    // only when asked.
    let (_, raw) = post(&server.url("/embed"), json!({"inputs": "a", "normalize": false})).await;
    let raw = floats(&raw[0]);
    for normalize in [true, false] {
        let (s, v) = post(&server.url("/embed"), json!({"inputs": "a", "dimensions": 8, "normalize": normalize})).await;
        assert_eq!(s, 200, "{v}");
        let (_, native) =
            post(&server.url("/api/v1/embed"), json!({"inputs": "a", "dimensions": 8, "normalize": normalize})).await;
        let (tei, native) = (floats(&v[0]), floats(&native["embeddings"][0]));
        assert_eq!(tei, native);
        let scale = if normalize { common::norm(&raw[..8]) as f32 } else { 1.0 };
        assert!(tei.iter().zip(&raw[..8]).all(|(a, b)| (a - b / scale).abs() < 1e-5), "{tei:?}");
    }
    for route in ["/embed", "/api/v1/embed"] {
        let (s, v) = post(&server.url(route), json!({"inputs": "a", "dimensions": 0})).await;
        assert_eq!(s, 422, "{v}");
        assert!(v["error"].as_str().unwrap().contains("between 1 and the model's 32"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_text_clients_are_batched_together() {
    let server = TestServer::start(MINILM, ServerConfig::default());
    server.wait_healthy().await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..16 {
        let client = client.clone();
        let url = server.url("/embed");
        tasks.push(tokio::spawn(async move {
            for i in 0..8 {
                let r = client
                    .post(&url)
                    .json(&json!({"inputs": format!("client {c} request {i} about batching")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                assert_eq!(v[0].as_array().unwrap().len(), 384);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in metrics"))
    };
    let rounds = value("akidb_batch_requests_count");
    let single = value("akidb_batch_requests_bucket{le=\"1.0\",");
    let served = value("akidb_batch_requests_sum");
    assert!(served >= 128.0, "all 128 requests went through the queue ({served})");
    assert!(rounds > single, "no round merged more than one request: {rounds} rounds, {single} single");
    assert!(rounds < served, "batching formed: {served} requests in {rounds} rounds");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_concurrent_requests_get_429_with_retry_after() {
    let server = TestServer::start(TINY, ServerConfig { max_concurrent_requests: 1, ..Default::default() });
    server.wait_healthy().await;
    let client = reqwest::Client::new();
    let texts: Vec<String> = (0..256).map(|i| format!("text number {i} {}", "padding words ".repeat(10))).collect();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, url, texts) = (client.clone(), server.url("/api/v1/embed"), texts.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&json!({"inputs": texts})).send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            (status, retry, body)
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(body["error_type"], "overloaded");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1 && limited >= 1, "{ok} ok, {limited} limited");
    let (s, _) = post(&server.url("/api/v1/embed"), json!({"inputs": ["still serving"]})).await;
    assert_eq!(s, 200);
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health() {
    let server = TestServer::start(TINY, ServerConfig { api_key: Some("s3cret".into()), ..Default::default() });
    server.wait_healthy().await;
    let client = reqwest::Client::new();
    assert_eq!(client.get(server.url("/health")).send().await.unwrap().status(), 200);
    for path in ["/info", "/metrics"] {
        assert_eq!(client.get(server.url(path)).send().await.unwrap().status(), 401, "{path}");
    }
    let r = client.post(server.url("/v1/embeddings")).json(&json!({"input": "a"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "authentication_error");
    let r = client.post(server.url("/embed")).bearer_auth("wrong").json(&json!({"inputs": "a"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.post(server.url("/embed")).bearer_auth("s3cret").json(&json!({"inputs": "a"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_model_name_is_accepted_and_returned() {
    let server =
        TestServer::start(TINY, ServerConfig { served_model_name: Some("my-embedder".into()), ..Default::default() });
    server.wait_healthy().await;
    for model in ["my-embedder", TINY, "tiny-bert-cls"] {
        let (s, v) = post(&server.url("/v1/embeddings"), json!({"model": model, "input": "a"})).await;
        assert_eq!(s, 200, "{model}: {v}");
        assert_eq!(v["model"], "my-embedder");
    }
    let (s, v) = post(&server.url("/api/v1/embed"), json!({"model": "other", "inputs": ["a"]})).await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("'my-embedder'"), "{v}");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_loaded() {
    let server = TestServer::start_with_delay(TINY, ServerConfig::default(), Duration::from_millis(1500));
    let client = reqwest::Client::new();
    let r = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = client.post(server.url("/api/v1/embed")).json(&json!({"inputs": ["a"]})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error_type"], "unhealthy");
    server.wait_healthy().await;
    let (s, _) = post(&server.url("/api/v1/embed"), json!({"inputs": ["a"]})).await;
    assert_eq!(s, 200);
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_stops_the_server_with_its_error() {
    let server = TestServer::start("nobody/missing-model", ServerConfig::default());
    let err = tokio::task::spawn_blocking(move || server.join()).await.unwrap().unwrap_err();
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_cleanly() {
    let (mut child, base) = spawn_binary(&["--model", MINILM]);
    let client = reqwest::Client::new();
    wait_healthy(&base).await;
    let texts: Vec<String> =
        (0..256).map(|i| format!("a long enough text {i} {}", "to keep the model busy ".repeat(12))).collect();
    let request = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/api/v1/embed"));
        async move { client.post(url).json(&json!({"inputs": texts})).send().await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let response = request.await.unwrap().expect("the in-flight request got its response");
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 256);
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    // And it no longer accepts connections.
    assert!(client.get(format!("{base}/health")).send().await.is_err());
}

/// The official `openai` Python client, unchanged, against the real binary. Runs when
/// AKIDB_TEST_PYTHON names a Python with `openai` installed (scripts/test.sh sets it up).
#[test]
#[ignore = "needs Python with openai (tool_ tests: scripts/test.sh)"]
fn tool_official_openai_python_client_works() {
    let python = common::tool_python("openai");
    let (mut child, base) = spawn_binary(&["--model", MINILM, "--api-key", "sk-test"]);
    let rows = reference(MINILM);
    let script = r#"
import json, sys, time, urllib.request
from openai import OpenAI
base, texts = sys.argv[1], json.loads(sys.argv[2])
for _ in range(600):
    try:
        if urllib.request.urlopen(base + "/health").status == 200: break
    except Exception: time.sleep(0.05)
client = OpenAI(base_url=base + "/v1", api_key="sk-test")
default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)          # base64 on the wire
floats = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
short = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[:2], dimensions=64)
listed = [m.id for m in client.models.list()]
one = client.models.retrieve("all-MiniLM-L6-v2")
try:
    client.embeddings.create(model="text-embedding-3-small", input="x")
    wrong = None
except Exception as e:
    wrong = type(e).__name__
print(json.dumps({
    "default": [d.embedding for d in default.data],
    "float": floats.data[0].embedding,
    "short": [len(d.embedding) for d in short.data],
    "usage": default.usage.total_tokens,
    "wrong_model": wrong,
    "listed": listed,
    "retrieved": [one.id, one.object, one.owned_by],
}))
"#;
    let texts: Vec<&str> = rows.iter().take(4).map(|(t, _)| t.as_str()).collect();
    let out = Command::new(python)
        .args(["-c", script, &base, &serde_json::to_string(&texts).unwrap()])
        .output()
        .expect("run python");
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    for (i, e) in v["default"].as_array().unwrap().iter().enumerate() {
        assert!(cosine(&floats(e), &rows[i].1) >= 0.9999, "row {i}");
    }
    assert!(cosine(&floats(&v["float"]), &rows[0].1) >= 0.9999);
    assert_eq!(v["short"], json!([64, 64]));
    assert!(v["usage"].as_u64().unwrap() > 0);
    assert_eq!(v["wrong_model"], "NotFoundError");
    assert_eq!(v["listed"], json!([MINILM]));
    assert_eq!(v["retrieved"], json!([MINILM, "model", "sentence-transformers"]));
}
