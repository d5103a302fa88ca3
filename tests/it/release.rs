//! The release: the Linux tarball built by scripts/package-release.sh, unpacked into an empty
//! directory and run with no environment but the model cache (no LD_LIBRARY_PATH, no cargo); and
//! the release workflow, validated against GitHub's workflow schema.

#[cfg(target_os = "linux")]
use crate::common;

use std::process::Command;

#[cfg(target_os = "linux")]
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
    // macos-14 is retired (actions/runner-images#13518); macos-15 with its newest Xcode selected.
    assert!(text.contains("runs-on: macos-15\n") && !text.contains("macos-14\n"), "the macOS job must run on macos-15");
    assert!(text.contains("sudo xcode-select -s \"$xcode\""), "the macOS job must select its Xcode");
    // One minimum macOS: the workflow's deployment target for akidb is the script's for ONNX Runtime.
    let script =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-onnxruntime.sh"))
            .expect("read the script");
    let min = script.lines().find_map(|l| l.strip_prefix("MACOS_MIN=")).expect("MACOS_MIN in the script");
    assert!(text.contains(&format!("MACOSX_DEPLOYMENT_TARGET: \"{min}\"")), "the workflow must build for macOS {min}");
    assert_eq!(min, "14.0", "ONNX Runtime 1.31's own macOS release declares 14.0");
    // The test step is the script the test command also runs (with only what the workflow fetches).
    assert_eq!(text.matches("\n          scripts/release-test.sh\n").count(), 2, "both jobs' test steps");
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

/// The workflow's CoreML check reads ONNX Runtime's own partitioning report (the line its CoreML
/// provider logs from GetCapability, as akidb's log shows it with RUST_LOG=info,ort=info): it
/// passes only when CoreML took nodes, in every session reported.
#[test]
fn the_coreml_check_reads_onnx_runtimes_partitioning_and_fails_on_zero_nodes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let workflow = std::fs::read_to_string(root.join(".github/workflows/release.yml")).unwrap();
    assert!(
        workflow.contains("RUST_LOG=info,ort=info \"$bin\" embed --device coreml"),
        "ONNX Runtime's info log shown"
    );
    assert!(workflow.contains("scripts/check-coreml-partition.sh coreml.log"));
    assert!(!workflow.contains("grep -q CoreMLExecutionProvider"), "akidb's own label proves nothing");

    let report = |supported: u32| {
        format!(
            "2026-12-05T08:00:00Z  INFO ort: CoreMLExecutionProvider::GetCapability, number of partitions supported by \
             CoreML: 5 number of nodes in the graph: 74 number of nodes supported by CoreML: {supported}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let check = |log: &str| {
        let path = dir.path().join("coreml.log");
        std::fs::write(&path, format!("INFO akidb: registering the CoreML execution provider\n{log}")).unwrap();
        let out = Command::new(root.join("scripts/check-coreml-partition.sh")).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = check(&report(69));
    assert!(ok && text.contains("CoreML takes 69 of 74 nodes in 5 partition(s)"), "{text}");
    let (ok, text) = check(&report(0));
    assert!(!ok && text.contains("none of the graph's 74 nodes"), "{text}");
    let (ok, text) = check(&(report(69) + &report(0)));
    assert!(!ok, "a second session with nothing on CoreML fails too: {text}");
    let (ok, text) = check("");
    assert!(!ok && text.contains("no CoreMLExecutionProvider::GetCapability report"), "{text}");
}

/// The Mac binary, built here: every target type-checks for aarch64-apple-darwin (static branch
/// against a stand-in archive, dynamic branch against the official wheel's dylib), and a real
/// arm64 Mach-O akidb is linked with cargo-zigbuild and inspected with LLVM's tools
/// (scripts/mac-binary.sh). The inspection is shown to fail on a binary that is not the Mac's.
#[test]
#[ignore = "needs cargo-zigbuild, ziglang and llvm (tool_ tests: scripts/test.sh)"]
fn tool_mac_arm64_binary_type_checks_links_and_passes_inspection() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/mac-binary.sh");
    let run = |args: &[&str]| {
        let out = Command::new(&script).args(args).output().expect("run scripts/mac-binary.sh");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = run(&["check"]);
    assert!(ok && text.contains("both branches type-check for aarch64-apple-darwin"), "{text}");

    let (ok, text) = run(&["link"]);
    assert!(ok, "{text}");
    for needle in [
        "arm64 Mach-O",
        "LC_BUILD_VERSION minos 14.0",
        "@rpath/libonnxruntime.1.dylib",
        "rpaths: @executable_path",
        "/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation",
        "every symbol taken from libonnxruntime is exported by libonnxruntime.1.dylib: _OrtGetApiBase",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let mac = root.join("target/mac/target/aarch64-apple-darwin/mac-check/akidb");
    let dylib = root.join("target/mac/onnxruntime/lib/libonnxruntime.1.dylib");
    let s = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_string();

    // This machine's binary is not the Mac's; a dylib that exports nothing akidb needs is caught.
    let (ok, text) = run(&["inspect", env!("CARGO_BIN_EXE_akidb"), &s(&dylib)]);
    assert!(!ok && text.contains("is not an arm64 Mach-O executable"), "{text}");
    let (ok, text) = run(&["inspect", &s(&mac), &s(&mac)]);
    assert!(!ok && text.contains("does not export: _OrtGetApiBase"), "{text}");
}
