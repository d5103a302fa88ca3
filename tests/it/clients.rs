//! What real clients send that akidb once answered with 404, 422 or a silently ignored field
//! (issue #26, part 4): TEI's bare-address routes, Cohere's shape on `/rerank`, fields that are now
//! applied or refused, Ollama's `/api/show` and `/api/version`, and log lines a person can debug
//! with. One server holding an embedder, a cross-encoder and a classifier, over real HTTP.

use crate::common;

use std::{sync::OnceLock, time::Duration};

use akidb_server::ServerConfig;
use common::{cosine, server::TestServer, TINY};
use serde_json::{json, Value};

const CROSS: &str = "akidb-test/tiny-cross-encoder";
const CLASSIFIER: &str = "akidb-test/tiny-bert-classifier";

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start_models(&[TINY, CROSS, CLASSIFIER], ServerConfig::default(), Duration::ZERO))
}

async fn post(path: &str, body: Value) -> (u16, Value) {
    common::post_json(server(), path, &body).await
}

async fn ok(path: &str, body: Value) -> Value {
    let (status, v) = post(path, body.clone()).await;
    assert_eq!(status, 200, "{path} {body}: {v}");
    v
}

fn message(v: &Value) -> String {
    v["error"].as_str().or_else(|| v["error"]["message"].as_str()).unwrap_or_default().to_string()
}

async fn refused(path: &str, body: Value, status: u16, says: &str) {
    let (got, v) = post(path, body.clone()).await;
    assert_eq!(got, status, "{path} {body}: {v}");
    assert!(message(&v).contains(says), "{path} {body}: expected '{says}' in {v}");
}

/// huggingface_hub's `InferenceClient`, Haystack's TEI embedders and LiteLLM's `huggingface/`
/// provider post to the bare address (and SageMaker to `/invocations`): answered as TEI does, by
/// the model's kind and, for an embedder, by the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_address_and_invocations_answer_as_tei_does() {
    let embed = ok("/embed", json!({"inputs": ["hello", "world"]})).await;
    for path in ["/", "/invocations"] {
        assert_eq!(ok(path, json!({"inputs": ["hello", "world"]})).await, embed, "{path}: feature extraction");
        let similar = json!({"inputs": {"source_sentence": "a cat", "sentences": ["a cat", "a dog"]}});
        assert_eq!(ok(path, similar.clone()).await, ok("/similarity", similar).await, "{path}: sentence similarity");
        let rerank = json!({"model": CROSS, "query": "what is rust", "texts": ["a language", "a metal oxide"]});
        assert_eq!(ok(path, rerank.clone()).await, ok("/rerank", rerank).await, "{path}: a cross-encoder reranks");
        let classify = json!({"model": CLASSIFIER, "inputs": "great product"});
        assert_eq!(ok(path, classify.clone()).await, ok("/predict", classify).await, "{path}: a classifier predicts");
    }
    refused("/", json!({"model": "no-such-model", "inputs": "x"}), 404, "is not served here").await;
    refused("/", json!({"inputs": 5}), 422, "inputs").await;
}

/// LiteLLM's `infinity/` and `hosted_vllm/` providers post Cohere's shape to `/rerank`: it is
/// answered as `/v1/rerank` answers it; `top_n` is honoured in both shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_takes_cohere_shape_and_top_n() {
    let documents = json!(["Rust is a language", "rust on a bike chain", "a systems programming language"]);
    let cohere = json!({"query": "programming language", "documents": documents, "top_n": 2, "return_documents": true});
    let got = ok("/rerank", cohere.clone()).await;
    let want = ok("/v1/rerank", cohere).await;
    assert_eq!(got["results"], want["results"], "{got}");
    assert_eq!(got["results"].as_array().unwrap().len(), 2);
    assert!(got["results"][0]["document"]["text"].is_string(), "{got}");

    let texts = json!({"query": "programming language", "texts": documents});
    let all = ok("/rerank", texts.clone()).await;
    let mut one = texts.clone();
    one["top_n"] = json!(1);
    let best = ok("/rerank", one).await;
    assert_eq!(best.as_array().unwrap().as_slice(), &all.as_array().unwrap()[..1], "TEI's shape, top_n 1");
    let index_of = |v: &Value| v["index"].as_u64().unwrap();
    assert_eq!(index_of(&all[0]), index_of(&got["results"][0]), "both shapes rank alike");
    let mut zero = texts;
    zero["top_n"] = json!(0);
    refused("/rerank", zero, 422, "top_n must be at least 1").await;
}

/// Fields clients send are applied or refused with a 422, never ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_are_applied_or_refused_never_ignored() {
    // Ollama's `dimensions`: the first d values, normalized again.
    let full = ok("/api/embed", json!({"input": "matryoshka"})).await["embeddings"][0].clone();
    let cut = ok("/api/embed", json!({"input": "matryoshka", "dimensions": 16})).await["embeddings"][0].clone();
    let (full, cut): (Vec<f32>, Vec<f32>) =
        (serde_json::from_value(full).unwrap(), serde_json::from_value(cut).unwrap());
    assert_eq!(cut.len(), 16);
    assert!((cut.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5, "unit length after the cut");
    assert!(cosine(&cut, &full[..16]) > 0.99999);
    refused("/api/embed", json!({"input": "x", "dimensions": 999}), 400, "between 1 and the model's 32").await;

    // Hugging Face's text-classification parameters.
    let all = ok("/predict", json!({"inputs": "fine", "model": CLASSIFIER})).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let top = ok("/predict", json!({"inputs": "fine", "model": CLASSIFIER, "parameters": {"top_k": 1}})).await;
    assert_eq!(top.as_array().unwrap().as_slice(), &all.as_array().unwrap()[..1]);
    let none = json!({"inputs": "fine", "model": CLASSIFIER, "parameters": {"function_to_apply": "none"}});
    let raw = json!({"inputs": "fine", "model": CLASSIFIER, "raw_scores": true});
    assert_eq!(ok("/predict", none).await, ok("/predict", raw).await, "none: the logits");
    let sigmoid = json!({"inputs": "fine", "model": CLASSIFIER, "parameters": {"function_to_apply": "sigmoid"}});
    let s = ok("/predict", sigmoid).await;
    let sum: f64 = s.as_array().unwrap().iter().map(|p| p["score"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() > 1e-3, "sigmoid scores do not sum to 1 as softmax's do: {s}");
    refused("/predict", json!({"inputs": "x", "parameters": {"top_k": 0}}), 422, "top_k must be at least 1").await;
    refused("/predict", json!({"inputs": "x", "parameters": {"temperature": 2}}), 422, "temperature").await;
    refused("/predict", json!({"inputs": "x", "parameters": {"function_to_apply": "relu"}}), 422, "relu").await;

    // Cohere's `rank_fields`: the named fields of object documents, in order, as `field: value`.
    let objects = json!({"query": "q", "rank_fields": ["title", "text"],
        "documents": [{"title": "Rust", "text": "a language", "id": 1}, {"title": "Iron", "text": "oxide", "id": 2}]});
    let plain = json!({"query": "q", "documents": ["title: Rust\ntext: a language", "title: Iron\ntext: oxide"]});
    let (a, b) = (ok("/v1/rerank", objects).await, ok("/v1/rerank", plain).await);
    assert_eq!(a["results"], b["results"]);
    let missing = json!({"query": "q", "rank_fields": ["title"], "documents": [{"text": "no title"}]});
    refused("/v1/rerank", missing, 422, "documents[0] has no field `title`").await;
}

/// What Ollama front-ends call before they embed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_show_and_version() {
    let s = server();
    s.wait_healthy().await;
    let version: Value = reqwest::get(s.url("/api/version")).await.unwrap().json().await.unwrap();
    assert!(version["version"].as_str().is_some_and(|v| v.split('.').count() == 3), "{version}");
    for body in [json!({"model": TINY}), json!({"name": "tiny-bert-cls:latest"})] {
        let show = ok("/api/show", body).await;
        assert_eq!(show["details"]["family"], "embedder", "{show}");
        assert_eq!(show["model_info"]["bert.embedding_length"], 32, "{show}");
        assert_eq!(show["model_info"]["bert.context_length"], 64, "{show}");
        assert_eq!(show["capabilities"], json!(["embedding"]));
    }
    let cross = ok("/api/show", json!({"model": CROSS})).await;
    assert_eq!(
        (cross["details"]["family"].as_str(), cross["capabilities"].clone()),
        (Some("cross-encoder"), json!([]))
    );
    refused("/api/show", json!({"model": "nomic-embed-text"}), 404, "is not served here").await;
    refused("/api/show", json!({}), 422, "model").await;
}

/// The log says which route a client missed and why a request was refused, with durations a
/// person can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_missed_routes_and_refusals_with_readable_durations() {
    let (mut child, base, log) = common::server::spawn_binary_logged(&["--model", TINY]);
    common::server::wait_healthy(&base).await;
    let client = reqwest::Client::new();
    assert_eq!(client.post(format!("{base}/v1/completions")).json(&json!({})).send().await.unwrap().status(), 404);
    let bad = client.post(format!("{base}/embed")).json(&json!({"inputs": []})).send().await.unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(client.post(format!("{base}/embed")).json(&json!({"inputs": "a"})).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // the log lines reach the reader thread
    let _ = child.kill();
    let _ = child.wait();
    let lines = log.lock().unwrap().clone();
    let text = lines.join("\n");
    let missed = lines.iter().find(|l| l.contains("request matched no route")).unwrap_or_else(|| panic!("{text}"));
    assert!(missed.contains("/v1/completions") && missed.contains("POST"), "{missed}");
    let refusal = lines.iter().find(|l| l.contains("request refused")).unwrap_or_else(|| panic!("{text}"));
    assert!(refusal.contains("inputs must not be empty") && refusal.contains("status=422"), "{refusal}");
    for line in lines.iter().filter(|l| l.contains(" ms=")) {
        let ms = line.split(" ms=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
        let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "durations are rounded to the microsecond: {line}");
    }
    assert!(lines.iter().any(|l| l.contains(" ms=")), "{text}");
}

/// `serve --help`, README and the code agree on what a request past `--request-timeout` gets: 504
/// (the code's answer is tested in akidb-server's `scheduling_tests`).
#[test]
fn the_request_timeout_status_is_the_same_in_help_readme_and_code() {
    let out = common::akidb().args(["serve", "--help"]).output().expect("akidb serve --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let line = help.lines().skip_while(|l| !l.contains("--request-timeout")).take(3).collect::<Vec<_>>().join(" ");
    assert!(line.contains("answered 504") && !line.contains("503"), "{line}");
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(readme.contains("`--request-timeout` (default 60 s, 0 = none) answers 504"));
}

/// Clients that keep their default model names reach any served model through `--model-alias`;
/// answers carry the served name. An alias of a model not served stops `akidb serve` at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_reach_every_served_model() {
    let aliases = ["text-embedding-3-small=tiny-bert-cls", "rerank-english-v3.0=akidb-test/tiny-cross-encoder"];
    let config = ServerConfig { aliases: aliases.iter().map(|a| a.parse().unwrap()).collect(), ..Default::default() };
    let s = TestServer::start_models(&[TINY, CROSS], config, Duration::ZERO);
    s.wait_healthy().await;
    let post = |path: &str, body: Value| {
        let request = reqwest::Client::new().post(s.url(path)).json(&body);
        async move {
            let r = request.send().await.expect("request");
            (r.status().as_u16(), r.json::<Value>().await.expect("JSON"))
        }
    };
    let (_, embed) = post("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "a"})).await;
    assert_eq!(embed["model"], TINY, "{embed}");
    let (_, rerank) =
        post("/v1/rerank", json!({"model": "rerank-english-v3.0", "query": "q", "documents": ["a", "b"]})).await;
    assert_eq!(rerank["model"], CROSS, "{rerank}");
    let (status, _) = post("/v1/rerank", json!({"model": "rerank-v9", "query": "q", "documents": ["a"]})).await;
    assert_eq!(status, 404);

    let out = common::akidb()
        .args(["serve", "--port", "0", "--model", TINY, "--model-alias", "nomic-embed-text=bge-small"])
        .output()
        .expect("akidb serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no served model is bge-small"), "{err}");
}

/// OpenAI's `input` as tiktoken ids (what LangChain's `OpenAIEmbeddings` sends by default) is
/// decoded to the text and embedded: the same vectors as the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_token_ids_are_decoded_with_tiktoken() {
    let texts = ["the quick brown fox", "naïve café — 🙂"];
    let by_text = ok("/v1/embeddings", json!({"model": TINY, "input": texts})).await;
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| bpe.encode_with_special_tokens(t)).collect();
    let by_ids = ok("/v1/embeddings", json!({"model": TINY, "input": ids})).await;
    assert_eq!(by_ids["data"], by_text["data"], "ids decode to the exact texts");
    let one = ok("/v1/embeddings", json!({"model": TINY, "input": ids[0]})).await;
    assert_eq!(one["data"][0]["embedding"], by_text["data"][0]["embedding"], "[int] is one text");
}

/// LangChain's `OpenAIEmbeddings` with its default settings (tiktoken ids, chunked by its context
/// length) against a real server: its vectors are the texts' own. tiktoken's `cl100k_base` file
/// comes from the tiktoken-rs crate's copy (byte for byte; tiktoken checks its hash), since
/// tiktoken would download it and there is no network here.
#[test]
#[ignore = "needs langchain-openai (tool_ tests: scripts/test.sh)"]
fn tool_langchain_openai_embeddings_with_default_settings() {
    let python = common::tool_python("langchain_openai, tiktoken");
    let dir = tempfile::tempdir().unwrap();
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let ranks: Vec<Vec<u8>> = (0..100_256u32).map(|r| bpe.decode_bytes(&[r]).expect("a rank of cl100k_base")).collect();
    let ranks_file = dir.path().join("cl100k_ranks.json");
    std::fs::write(&ranks_file, serde_json::to_vec(&ranks).unwrap()).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s = server();
    runtime.block_on(s.wait_healthy());
    let texts = ["the quick brown fox jumps over the lazy dog", "vector search with akidb", "naïve café — 🙂"];
    let script = r#"
import base64, hashlib, json, os, sys
ranks, cache, base, model, texts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
data = "".join(f"{base64.b64encode(bytes(b)).decode()} {i}\n" for i, b in enumerate(json.load(open(ranks)))).encode()
assert hashlib.sha256(data).hexdigest() == "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
os.makedirs(cache, exist_ok=True)
open(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()), "wb").write(data)
os.environ["TIKTOKEN_CACHE_DIR"] = cache
from langchain_openai import OpenAIEmbeddings
emb = OpenAIEmbeddings(model=model, base_url=base + "/v1", api_key="unused")
assert emb.check_embedding_ctx_length, "the default settings send token ids"
print(json.dumps({"docs": emb.embed_documents(texts), "query": emb.embed_query(texts[0])}))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&ranks_file)
        .arg(dir.path().join("tiktoken-cache"))
        .arg(s.url(""))
        .arg(TINY)
        .arg(serde_json::to_string(&texts).unwrap())
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let want = runtime.block_on(ok("/v1/embeddings", json!({"model": TINY, "input": texts})));
    for (i, doc) in got["docs"].as_array().unwrap().iter().enumerate() {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            serde_json::from_value(doc.clone()).unwrap(),
            serde_json::from_value(want["data"][i]["embedding"].clone()).unwrap(),
        );
        assert!(cosine(&a, &b) > 0.9999, "text {i}: {}", cosine(&a, &b));
    }
    let q: Vec<f32> = serde_json::from_value(got["query"].clone()).unwrap();
    let w: Vec<f32> = serde_json::from_value(want["data"][0]["embedding"].clone()).unwrap();
    assert!(cosine(&q, &w) > 0.9999);
}
