//! `--profile FILE`: ONNX Runtime's profile of the serving session is written on exit, by
//! `akidb embed` and by `akidb serve` (after SIGTERM), as Chrome-trace JSON with node events.

use crate::common;

use std::{path::Path, process::Command, time::Duration};

use common::{
    hf_home,
    server::{spawn_binary, wait_healthy},
    TINY,
};
use serde_json::{json, Value};

/// The profile is a JSON array of trace events; returns the node ops that ran (`cat: "Node"`).
fn node_ops(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no profile at {}: {e}", path.display()));
    let events: Value = serde_json::from_str(&text).expect("the profile is JSON");
    let events = events.as_array().expect("a JSON array of events");
    assert!(events.iter().any(|e| e["name"] == "session_initialization"), "the session's start is in it");
    events
        .iter()
        .filter(|e| e["cat"] == "Node")
        .filter_map(|e| e["args"]["op_name"].as_str().map(str::to_string))
        .collect()
}

/// No stray per-session files are left beside the profile.
fn only_file(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn embed_writes_the_profile_of_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let profile = dir.path().join("embed.json");
    let out = Command::new(env!("CARGO_BIN_EXE_akidb"))
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env("AKIDB_CACHE_DIR", cache.path())
        .args(["embed", "--model", TINY, "--profile"])
        .arg(&profile)
        .args(["profile me", "and me too"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ops = node_ops(&profile);
    assert!(ops.iter().any(|o| o == "MatMul" || o == "FusedMatMul"), "matrix products ran: {ops:?}");
    assert!(ops.iter().any(|o| o == "MultiHeadAttention" || o == "Attention"), "the fused graph served: {ops:?}");
    assert_eq!(only_file(dir.path()), ["embed.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_the_profile_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("serve.json");
    let (mut child, base) = spawn_binary(&["--model", TINY, "--profile", &profile.display().to_string()]);
    wait_healthy(&base).await;
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/embed"))
        .json(&json!({"inputs": ["served while profiling"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let ops = node_ops(&profile);
    assert!(!ops.is_empty(), "the served request's nodes are in the profile");
    assert_eq!(only_file(dir.path()), ["serve.json"]);
}
