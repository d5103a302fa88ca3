//! The Linux release tarball: built by scripts/package-release.sh, unpacked into an empty
//! directory, and run with no environment but the model cache: no LD_LIBRARY_PATH, no cargo.

mod common;

use std::process::Command;

use common::{cosine, hf_home, reference, MINILM};

#[test]
#[cfg(target_os = "linux")]
fn linux_tarball_runs_akidb_embed_from_an_empty_directory() {
    let dist = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/package-release.sh"))
        .arg("--dist")
        .arg(dist.path())
        .current_dir(root)
        .output()
        .expect("run package-release.sh");
    assert!(out.status.success(), "package-release.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let version = env!("CARGO_PKG_VERSION");
    let tarballs: Vec<_> = std::fs::read_dir(dist.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .collect();
    assert_eq!(tarballs.len(), 1, "one tarball: {tarballs:?}");
    let name = tarballs[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with(&format!("akidb-{version}-")) && name.contains("linux"), "{name}");
    let sums = std::fs::read_to_string(dist.path().join("SHA256SUMS")).expect("SHA256SUMS");
    assert!(sums.contains(&name));
    let check = Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(dist.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    let empty = tempfile::tempdir().unwrap();
    let untar = Command::new("tar").arg("-xzf").arg(&tarballs[0]).arg("-C").arg(empty.path()).status().unwrap();
    assert!(untar.success());
    let top = empty.path().join(name.trim_end_matches(".tar.gz"));
    for file in ["akidb", "libonnxruntime.so.1", "README.md", "LICENSE", "config.example.toml"] {
        assert!(top.join(file).exists(), "{file} missing from the tarball");
    }

    let rows = reference(MINILM);
    let out = Command::new(top.join("akidb"))
        .env_clear()
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(empty.path())
        .args(["embed", &rows[0].0])
        .output()
        .expect("run the unpacked akidb");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<f32> = v["embeddings"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert!(cosine(&got, &rows[0].1) >= 0.9999);
}
