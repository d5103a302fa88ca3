//! Prompts (sentence-transformers' `prompts`, `default_prompt_name`, `include_prompt`; TEI's
//! `prompt_name`) and TEI's `truncation_direction`, over real HTTP and through the real binary, on
//! local copies of the tiny test model that carry the prompt configuration.

use crate::common;

use std::{path::Path, sync::OnceLock};

use akidb_server::ServerConfig;
use common::{akidb, copy_tiny_to, cosine, max_abs_diff, one_token_words, server::TestServer};
use serde_json::{json, Value};

/// A copy of the tiny model with `config_sentence_transformers.json` = `st` and, when given, its
/// pooling config replaced.
fn model_dir(st: Value, pooling: Option<Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_to(dir.path());
    std::fs::write(dir.path().join("config_sentence_transformers.json"), st.to_string()).unwrap();
    if let Some(p) = pooling {
        std::fs::write(dir.path().join("1_Pooling/config.json"), p.to_string()).unwrap();
    }
    dir
}

fn prompts() -> Value {
    json!({"query": "query: ", "passage": "passage: ", "none": ""})
}

/// CLS pooling (the tiny model's own), two prompts, no default.
fn prompted() -> &'static (tempfile::TempDir, TestServer) {
    static S: OnceLock<(tempfile::TempDir, TestServer)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = model_dir(json!({"prompts": prompts(), "default_prompt_name": null}), None);
        let server = TestServer::start(dir.path().to_str().unwrap(), ServerConfig::default());
        (dir, server)
    })
}

/// Mean pooling without the prompt's tokens (`include_prompt: false`), as INSTRUCTOR-style models pool.
fn pooled_without_prompt() -> &'static (tempfile::TempDir, TestServer) {
    static S: OnceLock<(tempfile::TempDir, TestServer)> = OnceLock::new();
    S.get_or_init(|| {
        let pooling =
            json!({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true, "include_prompt": false});
        let dir = model_dir(json!({"prompts": prompts()}), Some(pooling));
        let server = TestServer::start(dir.path().to_str().unwrap(), ServerConfig::default());
        (dir, server)
    })
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    server.wait_healthy().await;
    let r = reqwest::Client::new().post(server.url(path)).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| r.as_array().expect("row").iter().map(|x| x.as_f64().expect("number") as f32).collect())
        .collect()
}

async fn embed(server: &TestServer, body: Value) -> Vec<Vec<f32>> {
    let (s, v) = post(server, "/embed", body.clone()).await;
    assert_eq!(s, 200, "{body}: {v}");
    rows(&v)
}

fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| max_abs_diff(x, y) <= 1e-5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_prompt_is_put_before_each_text() {
    let (_, server) = prompted();
    let texts = ["what is a river", "green house"];
    let with = embed(server, json!({"inputs": texts, "prompt_name": "query"})).await;
    let by_hand = embed(server, json!({"inputs": texts.map(|t| format!("query: {t}"))})).await;
    assert!(same(&with, &by_hand), "prompt_name query = 'query: ' + text");
    let plain = embed(server, json!({"inputs": texts})).await;
    let passage = embed(server, json!({"inputs": texts, "prompt_name": "passage"})).await;
    assert!(!same(&with, &plain) && !same(&with, &passage), "no default prompt; prompts differ");
    let empty = embed(server, json!({"inputs": texts, "prompt_name": "none"})).await;
    assert!(same(&empty, &plain), "an empty prompt changes nothing");

    // The native route and /embed_all and /similarity take it too.
    let (s, v) = post(server, "/api/v1/embed", json!({"inputs": texts, "prompt_name": "query"})).await;
    assert_eq!(s, 200, "{v}");
    assert!(same(&rows(&v["embeddings"]), &with));
    let (s, all) = post(server, "/embed_all", json!({"inputs": "x", "prompt_name": "query"})).await;
    let (_, by_hand) = post(server, "/embed_all", json!({"inputs": "query: x"})).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(all, by_hand);
    let (s, sim) = post(
        server,
        "/similarity",
        json!({"inputs": {"source_sentence": "a", "sentences": ["b"]}, "prompt_name": "query"}),
    )
    .await;
    assert_eq!(s, 200, "{sim}");
    let q = embed(server, json!({"inputs": ["query: a", "query: b"]})).await;
    assert!((sim[0].as_f64().unwrap() - cosine(&q[0], &q[1])).abs() < 1e-5, "{sim}");

    // /tokenize shows what the model reads.
    let (s, tokens) = post(server, "/tokenize", json!({"inputs": "x", "prompt_name": "query"})).await;
    assert_eq!(s, 200, "{tokens}");
    let words: Vec<&str> = tokens[0].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(words[1..4], ["query", ":", "x"], "{tokens}");

    // /info lists them.
    server.wait_healthy().await;
    let info: Value = reqwest::get(server.url("/info")).await.unwrap().json().await.unwrap();
    assert_eq!(info["prompts"], prompts(), "{info}");
    assert!(info["default_prompt_name"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_prompt_is_a_422_naming_the_known_ones() {
    let (_, server) = prompted();
    for path in ["/embed", "/api/v1/embed", "/embed_all", "/tokenize"] {
        let (s, v) = post(server, path, json!({"inputs": "x", "prompt_name": "qurey"})).await;
        assert_eq!(s, 422, "{path}: {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(message.contains("'qurey'") && message.contains("passage, query"), "{path}: {v}");
    }
    let (s, v) = post(server, "/embed", json!({"inputs": "x", "prompt_name": 7})).await;
    assert_eq!(s, 422, "a number is no prompt name: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_pools_without_its_prompt_leaves_the_prompt_tokens_out() {
    let (_, server) = pooled_without_prompt();
    let text = "the water is green";
    // sentence-transformers counts the prompt as its tokens with special tokens, less the last.
    let (_, t) = post(server, "/tokenize", json!({"inputs": "query: "})).await;
    let skip = t[0].as_array().unwrap().len() - 1;
    assert_eq!(skip, 3, "[CLS] query : — {t}");

    let (s, tokens) = post(server, "/embed_all", json!({"inputs": text, "prompt_name": "query"})).await;
    assert_eq!(s, 200, "{tokens}");
    let tokens = rows(&tokens[0]);
    let mean = |rows: &[Vec<f32>]| -> Vec<f32> {
        (0..32).map(|d| rows.iter().map(|r| r[d]).sum::<f32>() / rows.len() as f32).collect()
    };
    let got = embed(server, json!({"inputs": text, "prompt_name": "query", "normalize": false})).await;
    assert!(max_abs_diff(&got[0], &mean(&tokens[skip..])) <= 1e-5, "the mean of the tokens after the prompt");
    assert!(max_abs_diff(&got[0], &mean(&tokens)) > 1e-3, "not the mean of every token");

    // Without a prompt every token counts, in a batch mixing both.
    let (_, plain) = post(server, "/embed_all", json!({"inputs": text})).await;
    let both = embed(server, json!({"inputs": [text], "normalize": false})).await;
    assert!(max_abs_diff(&both[0], &mean(&rows(&plain[0]))) <= 1e-5);
}

/// A text of `n` one-token words, and the same words as a list.
fn words(n: usize) -> (String, Vec<&'static str>) {
    let w = one_token_words(n);
    (w.join(" "), w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_direction_left_keeps_the_last_tokens() {
    let (_, server) = prompted();
    let (long, list) = words(100);
    let (_, t) = post(server, "/tokenize", json!({"inputs": long, "add_special_tokens": false})).await;
    assert_eq!(t[0].as_array().unwrap().len(), 100, "one token per word");
    // The tiny model reads 64 tokens: [CLS], 62 words, [SEP].
    let head = list[..62].join(" ");
    let tail = list[100 - 62..].join(" ");
    let right = embed(server, json!({"inputs": long})).await;
    assert!(same(&right, &embed(server, json!({"inputs": head})).await), "the default keeps the first words");
    for direction in ["Left", "left"] {
        let left = embed(server, json!({"inputs": long, "truncation_direction": direction})).await;
        assert!(same(&left, &embed(server, json!({"inputs": tail})).await), "{direction} keeps the last words");
        assert!(!same(&left, &right));
    }
    let (s, v) = post(server, "/embed", json!({"inputs": long, "truncation_direction": "Right"})).await;
    assert!(s == 200 && same(&rows(&v), &right), "{v}");
    let (s, v) = post(server, "/embed", json!({"inputs": long, "truncation_direction": "Middle"})).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("truncation_direction"), "{v}");
    let (s, v) =
        post(server, "/embed", json!({"inputs": long, "truncate": false, "truncation_direction": "Left"})).await;
    assert_eq!(s, 422, "no truncation: refused whichever end: {v}");
    // With a prompt, the prompt's tokens are the first kept or cut like any other.
    let left_prompted =
        embed(server, json!({"inputs": long, "truncation_direction": "Left", "prompt_name": "query"})).await;
    assert!(same(&left_prompted, &embed(server, json!({"inputs": tail})).await));
}

// ---- the binary ----

fn cli_vectors(model: &Path, args: &[&str]) -> Vec<Vec<f32>> {
    let out = akidb().args(["embed", "--model"]).arg(model).args(args).output().expect("run akidb");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    rows(&v["embeddings"])
}

#[test]
fn the_cli_applies_the_default_prompt_and_named_ones() {
    let plain = model_dir(json!({"prompts": prompts()}), None);
    let with_default = model_dir(json!({"prompts": prompts(), "default_prompt_name": "query"}), None);
    let by_hand = cli_vectors(plain.path(), &["query: green river"]);
    assert!(same(&cli_vectors(with_default.path(), &["green river"]), &by_hand), "the default prompt applies");
    assert!(same(&cli_vectors(plain.path(), &["--prompt-name", "query", "green river"]), &by_hand));
    let passage = cli_vectors(with_default.path(), &["--prompt-name", "passage", "green river"]);
    assert!(same(&passage, &cli_vectors(plain.path(), &["passage: green river"])), "a named prompt wins");

    // A corpus run takes it too.
    let input = plain.path().join("in.txt");
    std::fs::write(&input, "green river\n").unwrap();
    let out = akidb()
        .args(["embed", "-q", "--prompt-name", "query", "--model"])
        .arg(plain.path())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let got: Vec<f32> = row["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert!(max_abs_diff(&got, &by_hand[0]) <= 1e-5);

    let out = akidb().args(["embed", "--prompt-name", "qurey", "--model"]).arg(plain.path()).arg("x").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no prompt named 'qurey'") && stderr.contains("passage, query"));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_cli_cuts_either_end_and_refuses_a_default_prompt_it_does_not_have() {
    let plain = model_dir(json!({"prompts": prompts()}), None);
    let (long, list) = words(100);
    let left = cli_vectors(plain.path(), &["--truncation-direction", "left", &long]);
    assert!(same(&left, &cli_vectors(plain.path(), &[&list[100 - 62..].join(" ")])));
    assert!(!same(&left, &cli_vectors(plain.path(), &[&long])));

    let broken = model_dir(json!({"prompts": prompts(), "default_prompt_name": "search"}), None);
    let out = akidb().args(["embed", "--model"]).arg(broken.path()).arg("x").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("default_prompt_name 'search'"), "{stderr}");
}
