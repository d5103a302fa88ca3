//! `akidb embed` end to end: the real binary, the real cache, real errors.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{akidb, copy_tiny_to, cosine, hf_home, reference, MINILM, TINY};

fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn akidb");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "akidb failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn vectors(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| e.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number") as f32).collect())
        .collect()
}

/// A failure is one clear line on stderr, a non-zero exit, and never a panic.
fn assert_clean_error(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    stderr
}

#[test]
fn embed_arguments_prints_native_api_json_matching_reference() {
    let rows = reference(MINILM);
    let picks = [&rows[0], &rows[rows.len() / 2], &rows[rows.len() - 1]];
    let mut cmd = akidb();
    cmd.arg("embed");
    for (text, _) in picks {
        cmd.arg(text);
    }
    let v = json(&cmd.output().expect("run"));
    assert_eq!(v["model"], MINILM);
    let got = vectors(&v["embeddings"]);
    assert_eq!(got.len(), 3);
    for ((_, want), got) in picks.iter().zip(&got) {
        assert!(cosine(got, want) >= 0.9999);
    }
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 3);
    assert!(v["usage"]["duration_ms"].is_u64());
}

#[test]
fn embed_reads_stdin_lines_and_prints_jsonl() {
    let rows: Vec<_> =
        reference(TINY).into_iter().filter(|(t, _)| !t.contains('\n') && !t.trim().is_empty()).take(5).collect();
    let input: String = rows.iter().map(|(t, _)| format!("{t}\r\n")).collect();
    let mut cmd = akidb();
    cmd.args(["embed", "--model", TINY, "--format", "jsonl"]);
    let out = run_with_stdin(cmd, input.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("jsonl")).collect();
    assert_eq!(lines.len(), rows.len());
    for (i, (line, (_, want))) in lines.iter().zip(&rows).enumerate() {
        assert_eq!(line["index"], i);
        let got: Vec<f32> = line["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert!(cosine(&got, want) >= 0.9999, "row {i}");
    }
}

#[test]
fn model_from_environment_and_no_normalize() {
    let out = akidb().env("AKIDB_EMBEDDING_MODEL", TINY).args(["embed", "--no-normalize", "hello"]).output().unwrap();
    let v = json(&out);
    assert_eq!(v["model"], TINY);
    let got = vectors(&v["embeddings"]);
    assert_eq!(got[0].len(), 32);
}

#[test]
fn local_directory_model_works() {
    let snapshot = hf_home().join("hub/models--akidb-test--tiny-bert-cls/snapshots");
    let dir = std::fs::read_dir(&snapshot).unwrap().next().unwrap().unwrap().path();
    let v = json(&akidb().args(["embed", "--model"]).arg(&dir).arg("hello").output().unwrap());
    assert_eq!(vectors(&v["embeddings"])[0].len(), 32);
}

#[test]
fn verbose_names_the_execution_provider() {
    let out = akidb().args(["embed", "--verbose", "--model", TINY, "x"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CPUExecutionProvider"), "{stderr}");
    // The device decision and why (no CoreML in the linked library on Linux builds).
    if cfg!(target_os = "linux") {
        assert!(stderr.contains("device: CPUExecutionProvider (CoreML is not available"), "{stderr}");
    }
    let out = akidb().args(["embed", "--verbose", "--device", "cpu", "--model", TINY, "x"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("device: CPUExecutionProvider (--device cpu)"), "{stderr}");
}

#[test]
fn unknown_model_offline_is_one_clear_line() {
    let out = akidb().args(["embed", "--model", "nobody/no-such-model", "x"]).output().unwrap();
    assert_clean_error(&out, "nobody/no-such-model@main is not in the Hugging Face cache");
}

#[test]
fn offline_with_an_empty_cache_is_one_clear_line() {
    let empty = tempfile::tempdir().unwrap();
    let out = akidb().env("HF_HOME", empty.path()).args(["embed", "x"]).output().unwrap();
    assert_clean_error(&out, "not in the Hugging Face cache");
}

#[test]
fn invalid_model_id_is_one_clear_line() {
    let out = akidb().args(["embed", "--model", "not a/valid/id", "x"]).output().unwrap();
    assert_clean_error(&out, "neither a local directory nor a Hugging Face repo id");
}

#[test]
fn missing_files_in_a_local_model_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_to(dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = akidb().args(["embed", "--model"]).arg(dir.path()).arg("x").output().unwrap();
    assert_clean_error(&out, "tokenizer.json");
}

#[test]
fn corrupt_onnx_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_to(dir.path());
    std::fs::write(dir.path().join("onnx/model.onnx"), b"this is not a protobuf").unwrap();
    let out = akidb().args(["embed", "--model"]).arg(dir.path()).arg("x").output().unwrap();
    assert_clean_error(&out, "could not load ONNX model");
}

#[test]
fn invalid_utf8_on_stdin_is_one_clear_line() {
    let mut cmd = akidb();
    cmd.args(["embed", "--model", TINY]);
    let out = run_with_stdin(cmd, b"fine line\nbad \xff\xfe bytes\n");
    assert_clean_error(&out, "not valid UTF-8 (line 2");
}

#[test]
fn coreml_where_unavailable_is_one_clear_line() {
    if cfg!(target_os = "macos") {
        return; // a CoreML-enabled build may have it
    }
    let out = akidb().args(["embed", "--device", "coreml", "--model", TINY, "x"]).output().unwrap();
    assert_clean_error(&out, "CoreML execution provider is not available");
}

#[test]
fn help_documents_flags_and_their_environment_variables() {
    let out = akidb().args(["embed", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--model",
        "AKIDB_EMBEDDING_MODEL",
        "--revision",
        "--onnx-file",
        "--format",
        "--no-normalize",
        "--device",
        "AKIDB_DEVICE",
    ] {
        assert!(help.contains(needle), "{needle} missing from --help");
    }
}

#[test]
fn fused_graph_is_cached_reused_and_replaced_when_corrupt() {
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        let out = akidb()
            .env("AKIDB_CACHE_DIR", cache.path())
            .env("RUST_LOG", "warn")
            .args(["embed", "--model", TINY, "cache me"])
            .output()
            .unwrap();
        (json(&out), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let cached = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.path().join("graphs"))
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect())
            .unwrap_or_default()
    };
    let (first, _) = run();
    let files = cached();
    assert_eq!(files.len(), 1, "the first run caches the fused graph: {files:?}");
    assert!(files[0].to_string_lossy().ends_with("-2.onnx"), "two attention blocks fused: {files:?}");
    let (second, _) = run();
    assert_eq!(first["embeddings"], second["embeddings"], "the cached graph gives the same vectors");
    std::fs::write(&files[0], b"corrupt").unwrap();
    let (third, stderr) = run();
    assert!(stderr.contains("did not load"), "a corrupt cache is reported: {stderr}");
    assert_eq!(first["embeddings"], third["embeddings"]);
    // Made and verified again in its place.
    assert_eq!(cached(), files, "the corrupt file is replaced, nothing else kept");
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 1000, "the corrupt file is replaced by a real graph");
}

#[test]
fn unreachable_hub_is_one_clear_line() {
    // Online mode against an endpoint that refuses connections: the real hf-hub client fails fast.
    let empty = tempfile::tempdir().unwrap();
    let out = akidb()
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", empty.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["embed", "--model", "owner/some-model", "x"])
        .output()
        .unwrap();
    assert_clean_error(&out, "could not reach the Hugging Face Hub for owner/some-model@main");
}
