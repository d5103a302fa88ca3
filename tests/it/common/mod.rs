//! Shared test helpers: the real Hugging Face cache in ../shared/hf and the reference vectors.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;

pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const TINY: &str = "akidb-test/tiny-bert-cls";

pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared")
}

/// Points hf-hub at ../shared/hf, offline, unless the caller already chose a cache.
pub fn hf_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("HF_HOME").is_none() {
            std::env::set_var("HF_HOME", shared_dir().join("hf"));
        }
        if std::env::var_os("HF_HUB_OFFLINE").is_none() {
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
    });
}

pub fn hf_home() -> PathBuf {
    hf_env();
    PathBuf::from(std::env::var_os("HF_HOME").expect("set by hf_env"))
}

/// `(text, embedding)` rows of ../shared/reference/<name>.dev.jsonl.
pub fn reference(model: &str) -> Vec<(String, Vec<f32>)> {
    let name = model.rsplit('/').next().expect("model id");
    let path = shared_dir().join("reference").join(format!("{name}.dev.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("reference row is JSON");
            let text = v["text"].as_str().expect("text").to_string();
            let emb = v["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            (text, emb)
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dimension mismatch");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// CI runs with `CI=true`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Why a `tool_*` test is ignored by a plain `cargo test`: it needs a program from outside Rust,
/// which scripts/test.sh installs before running these tests with `--ignored tool_`. A plain run
/// reports them as ignored (skipped, and counted as such); a run that asks for them fails when the
/// tool is missing, never passes without it.
pub const NEEDS_TOOL: &str = "needs a tool from outside Rust: scripts/test.sh installs it and runs the tool_ tests";

/// The Python scripts/test.sh sets up (`AKIDB_TEST_PYTHON`), with `modules` importable; a test
/// that asks for it fails without it.
pub fn tool_python(modules: &str) -> PathBuf {
    let python = std::env::var_os("AKIDB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("AKIDB_TEST_PYTHON is not set: run the tool_ tests through scripts/test.sh"));
    let import = Command::new(&python).args(["-c", &format!("import {modules}")]).output();
    assert!(
        import.as_ref().is_ok_and(|o| o.status.success()),
        "{} cannot import {modules}: run scripts/test.sh ({import:?})",
        python.display()
    );
    python
}

/// The real binary against the shared cache, offline, with no model or log level from the caller's
/// environment and no stdin unless a test gives one.
pub fn akidb() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_akidb"));
    cmd.env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("AKIDB_EMBEDDING_MODEL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// The tiny model's files copied into `dir`: a local-directory model a test may change.
pub fn copy_tiny_to(dir: &Path) {
    copy_model_to(
        "akidb-test/tiny-bert-cls",
        &[
            "config.json",
            "tokenizer.json",
            "sentence_bert_config.json",
            "modules.json",
            "1_Pooling/config.json",
            "onnx/model.onnx",
        ],
        dir,
    );
}

/// `files` of a cached model's snapshot copied into `dir`, directories made as needed.
pub fn copy_model_to(repo: &str, files: &[&str], dir: &Path) {
    let snapshots = hf_home().join(format!("hub/models--{}/snapshots", repo.replace('/', "--")));
    let src = std::fs::read_dir(&snapshots).unwrap().next().unwrap().unwrap().path();
    for rel in files {
        let to = dir.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), to).unwrap();
    }
}

/// A served route's status and JSON answer.
pub async fn post_json(s: &server::TestServer, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    s.wait_healthy().await;
    let r = reqwest::Client::new().post(s.url(path)).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
}

/// `n` words the test models' (uncased BERT) vocabulary holds whole: one token each, so a cut at
/// any token is a cut between words.
pub fn one_token_words(n: usize) -> Vec<&'static str> {
    const WORDS: [&str; 10] =
        ["apple", "river", "stone", "green", "house", "music", "table", "water", "light", "dream"];
    (0..n).map(|i| WORDS[(i * 7 + i / 10) % WORDS.len()]).collect()
}
