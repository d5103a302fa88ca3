//! Links ONNX Runtime, for every crate above the engine: the link-lib and search-path directives
//! reach each binary that depends on akidb-engine; the `$ORIGIN` rpath (a link argument, which
//! cargo applies to this package's own targets only) is given again by the `akidb` binary's build
//! script, so the shipped binary finds the library beside itself (`cargo:dynamic`, read there as
//! `DEP_AKIDB_ONNXRUNTIME_DYNAMIC`).
//!
//! ort-sys is built with `disable-linking` (ort's `alternative-backend`), so this
//! script owns every link directive: nothing can race ahead of the provisioning step below.
//!
//! Where the library comes from, first match wins:
//! 1. `ORT_LIB_LOCATION` (or `ORT_LIB_PATH`): a directory holding `libonnxruntime.a` (static) or
//!    `libonnxruntime.{so,dylib}` (dynamic), as with ort's system strategy.
//! 2. `third_party/onnxruntime/<target>/lib`, provided by `scripts/build-onnxruntime.sh`, which this
//!    script runs when that directory has not been provided yet.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    for var in ["ORT_LIB_LOCATION", "ORT_LIB_PATH", "AKIDB_ORT_SOURCE", "AKIDB_ORT_SOURCE_CACHE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    // The workspace root (crates/akidb-engine/../..): the pin, the script and third_party/ live there.
    let workspace = manifest_dir.join("..").join("..");
    let target = env::var("TARGET").expect("cargo sets TARGET");
    println!("cargo:rerun-if-changed={}", workspace.join("scripts").join("build-onnxruntime.sh").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.toml").display());
    let version = pinned_version(&workspace.join("Cargo.toml"));
    println!("cargo:rustc-env=AKIDB_ORT_VERSION={version}");

    if env::var_os("DOCS_RS").is_some() {
        return;
    }

    let lib_dir = match env::var_os("ORT_LIB_LOCATION").or_else(|| env::var_os("ORT_LIB_PATH")) {
        Some(dir) => PathBuf::from(dir),
        None => provide(&workspace, &target),
    };
    println!("cargo:rerun-if-changed={}", lib_dir.display());

    let apple = target.contains("apple");
    if lib_dir.join("libonnxruntime.a").is_file() {
        link_static(&lib_dir, apple);
    } else if lib_dir.join(if apple { "libonnxruntime.dylib" } else { "libonnxruntime.so" }).exists() {
        link_dynamic(&lib_dir, apple);
    } else {
        fail(&format!(
            "no libonnxruntime.a, libonnxruntime.so or libonnxruntime.dylib in {}\n\
             (a CMake build directory must first be merged into one archive: scripts/build-onnxruntime.sh --from-source)",
            lib_dir.display()
        ));
    }
}

/// Reads `[package.metadata.onnxruntime] version` so the pin lives in one place.
fn pinned_version(cargo_toml: &Path) -> String {
    let text =
        fs::read_to_string(cargo_toml).unwrap_or_else(|e| fail(&format!("reading {}: {e}", cargo_toml.display())));
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[package.metadata.onnxruntime]";
        } else if in_section {
            if let Some(value) = line.strip_prefix("version").map(str::trim).and_then(|l| l.strip_prefix('=')) {
                return value.trim().trim_matches('"').to_string();
            }
        }
    }
    fail("Cargo.toml has no [package.metadata.onnxruntime] version")
}

/// Runs the provisioning script unless its stamp says the library is already there.
fn provide(workspace: &Path, target: &str) -> PathBuf {
    let out = workspace.join("third_party").join("onnxruntime").join(target);
    let stamp = out.join("akidb-onnxruntime.stamp");
    println!("cargo:rerun-if-changed={}", stamp.display());
    let script = workspace.join("scripts").join("build-onnxruntime.sh");
    // The script is idempotent and cheap when the stamp matches, so always ask it: a version bump
    // in Cargo.toml then re-provisions by itself.
    let status = Command::new("bash")
        .arg(&script)
        .arg("--target")
        .arg(target)
        .stdout(std::process::Stdio::inherit())
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run {}: {e}", script.display())));
    if !status.success() {
        fail(&format!(
            "{} failed ({status}); see its messages above, or set ORT_LIB_LOCATION to an ONNX Runtime library directory",
            script.display()
        ));
    }
    out.join("lib")
}

fn link_static(lib_dir: &Path, apple: bool) {
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=static=onnxruntime");
    if apple {
        println!("cargo:rustc-link-lib=c++");
        println!("cargo:rustc-link-lib=framework=Foundation");
        // The CoreML EP is compiled into the archive on macOS; the framework ships with the OS.
        println!("cargo:rustc-link-lib=framework=CoreML");
    } else {
        println!("cargo:rustc-link-lib=stdc++");
    }
    println!("cargo:rustc-cfg=akidb_ort_static");
    println!("cargo:rustc-check-cfg=cfg(akidb_ort_static)");
}

fn link_dynamic(lib_dir: &Path, apple: bool) {
    println!("cargo:rustc-check-cfg=cfg(akidb_ort_static)");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=onnxruntime");
    println!("cargo:dynamic=1");
    // Found beside the binary (and one level up, for tests and examples in target/*/deps), so a
    // release tarball works with no LD_LIBRARY_PATH.
    if apple {
        println!("cargo:rustc-link-arg=-Wl,-rpath,@executable_path");
        println!("cargo:rustc-link-arg=-Wl,-rpath,@executable_path/..");
    } else {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/..");
    }
    if let Some(profile_dir) = profile_dir() {
        copy_libraries(lib_dir, &profile_dir);
    }
}

/// `target/<profile>` (or `target/<triple>/<profile>`), from OUT_DIR = `<that>/build/akidb-*/out`.
fn profile_dir() -> Option<PathBuf> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR")?);
    out_dir.ancestors().nth(3).map(Path::to_path_buf)
}

/// Copies the library files (and recreates their symlinks) into the profile directory.
fn copy_libraries(lib_dir: &Path, profile_dir: &Path) {
    let Ok(entries) = fs::read_dir(lib_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if !name_str.starts_with("libonnxruntime") || !(name_str.contains(".so") || name_str.ends_with(".dylib")) {
            continue;
        }
        let src = entry.path();
        let dst = profile_dir.join(&name);
        let result = match fs::read_link(&src) {
            Ok(link) => {
                let _ = fs::remove_file(&dst);
                symlink(&link, &dst)
            }
            Err(_) => copy_if_changed(&src, &dst),
        };
        if let Err(e) = result {
            println!("cargo:warning=could not place {} in {}: {e}", name_str, profile_dir.display());
        }
    }
}

fn copy_if_changed(src: &Path, dst: &Path) -> std::io::Result<()> {
    let same = match (fs::metadata(src), fs::symlink_metadata(dst)) {
        (Ok(a), Ok(b)) => b.is_file() && a.len() == b.len() && a.modified().ok() <= b.modified().ok(),
        _ => false,
    };
    if same {
        return Ok(());
    }
    let _ = fs::remove_file(dst);
    fs::copy(src, dst).map(|_| ())
}

#[cfg(unix)]
fn symlink(link: &Path, dst: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(link, dst)
}

#[cfg(not(unix))]
fn symlink(link: &Path, dst: &Path) -> std::io::Result<()> {
    let _ = (link, dst);
    Ok(())
}

fn fail(message: &str) -> ! {
    eprintln!("error: akidb build: {message}");
    std::process::exit(1);
}
