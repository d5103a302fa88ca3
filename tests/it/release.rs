//! The release: the Linux tarball built by scripts/package-release.sh, unpacked into an empty
//! directory and run with no environment but the model cache (no LD_LIBRARY_PATH, no cargo); and
//! the release workflow, validated against GitHub's workflow schema.

use crate::common;

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

    // The Dockerfile copies this directory into gcr.io/distroless/cc-debian12: everything the
    // binary and ONNX Runtime load must be beside them or in that image (glibc, libgcc, libstdc++).
    let distroless_cc = [
        "linux-vdso",
        "ld-linux",
        "libc.so",
        "libm.so",
        "libdl.so",
        "librt.so",
        "libpthread.so",
        "libgcc_s.so",
        "libstdc++.so",
    ];
    for file in ["akidb", "libonnxruntime.so.1"] {
        // Without cargo's LD_LIBRARY_PATH (target/release), as the image runs it.
        let ldd = Command::new("ldd").env_remove("LD_LIBRARY_PATH").arg(top.join(file)).output().expect("ldd");
        let text = String::from_utf8_lossy(&ldd.stdout).to_string();
        for lib in text.lines().filter_map(|l| l.split_whitespace().next()) {
            let beside = lib == "libonnxruntime.so.1" && text.contains(&format!("{}", top.join(lib).display()));
            assert!(beside || distroless_cc.iter().any(|d| lib.contains(d)), "{file} needs {lib}:\n{text}");
        }
    }
    // The probe client the image's HEALTHCHECK runs, from the unpacked layout: no server, exit 1.
    let health = Command::new(top.join("akidb"))
        .env_clear()
        .args(["health", "--url", "http://127.0.0.1:9/health", "--timeout", "1"])
        .output()
        .expect("run akidb health");
    assert!(!health.status.success() && String::from_utf8_lossy(&health.stderr).contains("127.0.0.1:9"));
}

/// `check-jsonschema` from scripts/test.sh's venv (or PATH); `None` means skip, except in CI.
fn check_jsonschema() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/check-jsonschema");
    let found = if venv.is_file() {
        Some(venv)
    } else {
        Command::new("check-jsonschema").arg("--version").output().ok().map(|_| "check-jsonschema".into())
    };
    found.expect("check-jsonschema is not installed: run the tool_ tests through scripts/test.sh")
}

fn validate_workflow(tool: &std::path::Path, file: &std::path::Path) -> std::process::Output {
    Command::new(tool)
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(file)
        .output()
        .expect("run check-jsonschema")
}

/// The release workflow against GitHub's workflow schema (the copy check-jsonschema ships), and
/// a broken copy of it against the same schema, so the check is known to be able to fail.
#[test]
fn release_workflow_is_a_valid_github_workflow_on_a_supported_macos_runner() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/release.yml");
    let text = std::fs::read_to_string(&path).expect("read the release workflow");
    // macos-14 is retired (actions/runner-images#13518); macos-15 with Xcode 16 selected explicitly.
    assert!(text.contains("runs-on: macos-15\n") && !text.contains("macos-14\n"), "the macOS job must run on macos-15");
    assert!(text.contains("sudo xcode-select -s /Applications/Xcode_16"), "the macOS job must select Xcode 16");
}

/// The same workflow through check-jsonschema.
#[test]
#[ignore = "needs check-jsonschema (tool_ tests: scripts/test.sh)"]
fn tool_release_workflow_validates_against_githubs_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/release.yml");
    let text = std::fs::read_to_string(&path).expect("read the release workflow");
    let tool = check_jsonschema();
    let out = validate_workflow(&tool, &path);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("release.yml");
    std::fs::write(&broken, text.replace("runs-on: macos-15", "runs-on: [macos-15, {}]").replace("steps:", "stepz:"))
        .unwrap();
    let out = validate_workflow(&tool, &broken);
    assert!(!out.status.success(), "a broken workflow must not validate:\n{}", String::from_utf8_lossy(&out.stdout));
}
