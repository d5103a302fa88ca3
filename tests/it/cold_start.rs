//! The cold start's cache: ONNX Runtime's optimized form of the verified fused graph is saved
//! beside it on the first start that finds the fused graph cached, checked against it, and
//! loaded with optimizations off afterwards; a broken or outdated one is made again.

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{cosine, hf_home, TINY};

fn run(cache: &Path) -> (Vec<f32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_akidb"))
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env("AKIDB_CACHE_DIR", cache)
        .env("RUST_LOG", "warn,akidb=debug")
        .args(["embed", "--model", TINY, "a cold start, then warm ones"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let vector = v["embeddings"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    (vector, stderr)
}

/// The optimized graphs' directories: `(dir, its model.onnx, its weights)`.
fn optimized(cache: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("graphs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.to_string_lossy().contains(".opt-"))
        .collect();
    dirs.sort();
    dirs
}

fn fused_graph(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache.join("graphs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "onnx"))
        .expect("a cached fused graph")
}

#[test]
fn the_optimized_graph_is_saved_checked_reused_and_remade() {
    let cache = tempfile::tempdir().unwrap();
    let (first, _) = run(cache.path());
    assert!(optimized(cache.path()).is_empty(), "the first start makes and verifies the fused graph only");

    let (second, log) = run(cache.path());
    assert!(log.contains("saved and checked the optimized graph"), "{log}");
    let dirs = optimized(cache.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    for file in ["model.onnx", "model.weights"] {
        assert!(dirs[0].join(file).is_file(), "{file} in {}", dirs[0].display());
    }
    assert!(cosine(&first, &second) >= 0.99999, "{}", cosine(&first, &second));

    // Later starts load it as it is.
    let (third, log) = run(cache.path());
    assert!(!log.contains("saved and checked") && !log.contains("did not load"), "{log}");
    assert!(cosine(&first, &third) >= 0.99999);
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("graphs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no work in progress left: {leftovers:?}");

    // A broken one is reported and made again.
    std::fs::write(dirs[0].join("model.onnx"), b"broken").unwrap();
    let (fourth, log) = run(cache.path());
    assert!(log.contains("did not load") && log.contains("saved and checked"), "{log}");
    assert!(cosine(&first, &fourth) >= 0.99999);
    assert_eq!(optimized(cache.path()), dirs);

    // A fused graph that changed (here: rewritten in place) invalidates it: a new one replaces it.
    let fused = fused_graph(cache.path());
    let bytes = std::fs::read(&fused).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&fused, bytes).unwrap();
    let (fifth, log) = run(cache.path());
    assert!(log.contains("saved and checked"), "{log}");
    let now = optimized(cache.path());
    assert_eq!(now.len(), 1, "the outdated one is removed: {now:?}");
    assert_ne!(now, dirs);
    assert!(cosine(&first, &fifth) >= 0.99999);
}
