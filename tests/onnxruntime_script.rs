//! Checks scripts/build-onnxruntime.sh through its `--dry-run` output: the exact clone, build and
//! merge commands for each mode and target, without running any of them; the same for
//! scripts/package-release.sh; and `bash -n` plus shellcheck (when installed) on every script.
//! Nothing here depends on which tools are installed (in a dry run the scripts only note a missing
//! git, cmake or libtool), and nothing is written outside fresh temporary directories.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

const SCRIPT: &str = "scripts/build-onnxruntime.sh";

/// The project root, canonical, so that it matches what the script computes with `cd ..; pwd`.
fn root() -> PathBuf {
    fs::canonicalize(env!("CARGO_MANIFEST_DIR")).expect("CARGO_MANIFEST_DIR exists")
}

/// The ONNX Runtime version pinned in Cargo.toml, as build.rs read it.
fn pinned_version() -> String {
    env!("AKIDB_ORT_VERSION").to_string()
}

/// A new, empty directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("akidb-ort-script-{tag}-{}-{nanos}-{n}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temporary directory");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` inside, as the UTF-8 string passed to the script and expected back.
    fn join(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("temporary path is UTF-8").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the script with `args` from the project root, in an environment that cannot change its
/// defaults (no AKIDB_ORT_* overrides, no PYTHON).
fn run_script(args: &[&str]) -> Output {
    let root = root();
    Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .current_dir(&root)
        .env("PWD", &root)
        .env_remove("AKIDB_ORT_SOURCE")
        .env_remove("AKIDB_ORT_SOURCE_CACHE")
        .env_remove("AKIDB_ORT_TARGET")
        .env_remove("PYTHON")
        .output()
        .expect("run bash (is bash installed?)")
}

/// Runs a dry run that must succeed and returns its `+ ` command lines.
fn dry_run(args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.push("--dry-run");
    let output = run_script(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "bash {SCRIPT} {} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        all.join(" "),
        output.status
    );
    let commands: Vec<String> = stdout.lines().filter(|l| l.starts_with("+ ")).map(str::to_string).collect();
    assert!(!commands.is_empty(), "no commands printed by bash {SCRIPT} {}\nstderr:\n{stderr}", all.join(" "));
    commands
}

fn assert_has_line(commands: &[String], expected: &str) {
    assert!(
        commands.iter().any(|c| c == expected),
        "expected the command line\n  {expected}\namong\n  {}",
        commands.join("\n  ")
    );
}

/// The one command line starting with `prefix`.
fn line_starting<'a>(commands: &'a [String], prefix: &str) -> &'a str {
    let found: Vec<&String> = commands.iter().filter(|c| c.starts_with(prefix)).collect();
    assert_eq!(found.len(), 1, "expected one command starting with {prefix:?} among\n  {}", commands.join("\n  "));
    found[0]
}

fn assert_no_line_contains(commands: &[String], needle: &str) {
    if let Some(c) = commands.iter().find(|c| c.contains(needle)) {
        panic!("no command should contain {needle:?}, but found\n  {c}");
    }
}

#[test]
fn from_source_macos_arm64_builds_coreml_and_merges_with_libtool() {
    let v = pinned_version();
    let tmp = TempDir::new("mac");
    let cache = tmp.join("src");
    let src = format!("{cache}/onnxruntime-{v}");
    let build = format!("{src}/build/aarch64-apple-darwin");
    // No --out: the default output directory is what build.rs reads. --force so that a stamp left
    // by a real build on this machine cannot short-circuit the dry run (which writes nothing).
    let commands = dry_run(&[
        "--from-source",
        "--target",
        "aarch64-apple-darwin",
        "--jobs",
        "4",
        "--source-cache",
        cache.as_str(),
        "--force",
    ]);

    assert_has_line(
        &commands,
        &format!(
            "+ git clone --depth 1 --branch v{v} --recurse-submodules --shallow-submodules \
             https://github.com/microsoft/onnxruntime.git {src}"
        ),
    );
    assert_has_line(
        &commands,
        &format!(
            "+ {src}/build.sh --config Release --build_dir {build} --update --build --parallel 4 \
             --skip_tests --compile_no_warning_as_error --skip_submodule_sync --no_telemetry \
             --use_coreml --osx_arch arm64 --apple_deploy_target 13.4 \
             --cmake_extra_defines onnxruntime_BUILD_UNIT_TESTS=OFF CMAKE_POLICY_VERSION_MINIMUM=3.5"
        ),
    );

    let out = root().join("third_party/onnxruntime/aarch64-apple-darwin");
    let out = out.to_str().expect("UTF-8 path");
    let libtool = line_starting(&commands, "+ libtool ");
    let merge = format!("+ libtool -static -no_warning_for_no_symbols -o {out}/lib/libonnxruntime.a ");
    assert!(libtool.starts_with(&merge), "libtool line:\n  {libtool}\nshould start with\n  {merge}");
    for part in [
        format!("{build}/Release/libonnxruntime_*.a"),
        format!("{build}/Release/_deps/*-build/**/*.a"),
        format!("{build}/Release/libcoreml_proto.a"),
    ] {
        assert!(libtool.contains(&part), "libtool line should merge {part}:\n  {libtool}");
    }
    assert_has_line(&commands, &format!("+ rm -rf {out}/lib"));
    assert_no_line_contains(&commands, "ar -M");
    assert_no_line_contains(&commands, "--allow_running_as_root");
}

#[test]
fn from_source_linux_has_no_coreml_and_merges_with_ar() {
    let v = pinned_version();
    let tmp = TempDir::new("linux");
    let cache = tmp.join("src");
    let out = tmp.join("out");
    let src = format!("{cache}/onnxruntime-{v}");
    let build = format!("{src}/build/x86_64-unknown-linux-gnu");
    let commands = dry_run(&[
        "--from-source",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--jobs",
        "2",
        "--source-cache",
        cache.as_str(),
        "--out",
        out.as_str(),
    ]);

    assert_has_line(
        &commands,
        &format!(
            "+ git clone --depth 1 --branch v{v} --recurse-submodules --shallow-submodules \
             https://github.com/microsoft/onnxruntime.git {src}"
        ),
    );
    assert_has_line(
        &commands,
        &format!(
            "+ {src}/build.sh --config Release --build_dir {build} --update --build --parallel 2 \
             --skip_tests --compile_no_warning_as_error --skip_submodule_sync --no_telemetry \
             --allow_running_as_root \
             --cmake_extra_defines onnxruntime_BUILD_UNIT_TESTS=OFF CMAKE_POLICY_VERSION_MINIMUM=3.5"
        ),
    );
    // rustc rejects the `framework` link kind off Apple targets: no CoreML EP on Linux.
    assert_no_line_contains(&commands, "--use_coreml");
    assert_no_line_contains(&commands, "--osx_arch");
    assert_no_line_contains(&commands, "--apple_deploy_target");
    assert_no_line_contains(&commands, "libtool");
    assert_no_line_contains(&commands, "coreml_proto");

    let ar = line_starting(&commands, "+ ar -M");
    assert!(ar.contains(&format!("create {out}/lib/libonnxruntime.a;")), "ar line:\n  {ar}");
    assert!(ar.contains(&format!("{build}/Release/libonnxruntime_*.a")), "ar line:\n  {ar}");
    assert!(ar.contains(&format!("{build}/Release/_deps/*-build/**/*.a")), "ar line:\n  {ar}");
    assert_has_line(&commands, &format!("+ ranlib {out}/lib/libonnxruntime.a"));
}

#[test]
fn prebuilt_linux_downloads_the_manylinux_wheel() {
    let v = pinned_version();
    let tmp = TempDir::new("pre-linux");
    let out = tmp.join("out");
    let commands = dry_run(&["--prebuilt", "--target", "x86_64-unknown-linux-gnu", "--out", out.as_str()]);

    let pip = line_starting(&commands, "+ python3 -m pip download ");
    assert!(pip.contains(" --platform manylinux_2_28_x86_64 "), "pip line:\n  {pip}");
    assert!(pip.contains(" --only-binary=:all: "), "pip line:\n  {pip}");
    assert!(pip.ends_with(&format!(" onnxruntime=={v}")), "pip line should end with onnxruntime=={v}:\n  {pip}");
    let lib = format!("libonnxruntime.so.{v}");
    assert!(
        commands.iter().any(|c| c.starts_with("+ cp ") && c.ends_with(&format!("/onnxruntime/capi/{lib} {out}/lib/"))),
        "expected a cp of capi/{lib} into {out}/lib/ among\n  {}",
        commands.join("\n  ")
    );
    assert_has_line(&commands, &format!("+ ln -sf {lib} {out}/lib/libonnxruntime.so.1"));
    assert_has_line(&commands, &format!("+ ln -sf {lib} {out}/lib/libonnxruntime.so"));
    assert_no_line_contains(&commands, "git clone");
    assert_no_line_contains(&commands, "build.sh");
}

#[test]
fn prebuilt_macos_downloads_the_arm64_wheel() {
    let v = pinned_version();
    let tmp = TempDir::new("pre-mac");
    let out = tmp.join("out");
    let commands = dry_run(&["--prebuilt", "--target", "aarch64-apple-darwin", "--out", out.as_str()]);

    let pip = line_starting(&commands, "+ python3 -m pip download ");
    assert!(pip.contains(" --platform macosx_14_0_arm64 "), "pip line:\n  {pip}");
    assert!(pip.ends_with(&format!(" onnxruntime=={v}")), "pip line should end with onnxruntime=={v}:\n  {pip}");
    let lib = format!("libonnxruntime.{v}.dylib");
    assert!(
        commands.iter().any(|c| c.starts_with("+ cp ") && c.ends_with(&format!("/onnxruntime/capi/{lib} {out}/lib/"))),
        "expected a cp of capi/{lib} into {out}/lib/ among\n  {}",
        commands.join("\n  ")
    );
    // The wheel's dylib has the install name @rpath/libonnxruntime.1.dylib.
    assert_has_line(&commands, &format!("+ ln -sf {lib} {out}/lib/libonnxruntime.1.dylib"));
    assert_has_line(&commands, &format!("+ ln -sf {lib} {out}/lib/libonnxruntime.dylib"));
}

#[test]
fn unknown_flag_fails_with_a_clear_message() {
    let output = run_script(&["--no-such-flag", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an unknown flag must fail; stderr:\n{stderr}");
    assert!(stderr.contains("unknown argument: --no-such-flag"), "stderr should name the flag:\n{stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).lines().any(|l| l.starts_with("+ ")),
        "nothing may run after a usage error"
    );
}

#[test]
fn bad_values_fail_with_a_clear_message() {
    for (args, message) in [
        (&["--jobs", "many", "--dry-run"][..], "--jobs takes a positive whole number"),
        (
            &["--target", "riscv64gc-unknown-linux-gnu", "--dry-run"][..],
            "unsupported target riscv64gc-unknown-linux-gnu",
        ),
        (
            &["--prebuilt", "--target", "x86_64-apple-darwin", "--dry-run", "--out", "/nonexistent/akidb"][..],
            "use --from-source",
        ),
        (&["--target"][..], "--target needs a value"),
    ] {
        let output = run_script(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail; stderr:\n{stderr}");
        assert!(stderr.contains(message), "{args:?}: stderr should contain {message:?}:\n{stderr}");
    }
}

#[test]
fn help_exits_zero() {
    let output = run_script(&["--help"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--from-source"));
}

#[test]
fn dry_run_creates_no_files() {
    let tmp = TempDir::new("nofiles");
    let cache = tmp.join("src");
    let out = tmp.join("out");
    for args in [
        &["--from-source", "--target", "aarch64-apple-darwin"][..],
        &["--from-source", "--target", "x86_64-unknown-linux-gnu"][..],
        &["--prebuilt", "--target", "x86_64-unknown-linux-gnu"][..],
        &["--prebuilt", "--target", "aarch64-apple-darwin"][..],
    ] {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--jobs", "3", "--source-cache", cache.as_str(), "--out", out.as_str()]);
        dry_run(&all);
        let left: Vec<PathBuf> =
            fs::read_dir(tmp.path()).expect("read temporary directory").flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "--dry-run {args:?} created {left:?}");
    }
}

/// The scripts in scripts/: files with a shell shebang.
fn shell_scripts() -> Vec<PathBuf> {
    let mut scripts: Vec<PathBuf> = ["scripts", "scripts/lib"]
        .iter()
        .flat_map(|dir| fs::read_dir(root().join(dir)).expect("read scripts/").flatten())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "sh")
                || fs::read_to_string(p)
                    .map(|t| t.lines().next().is_some_and(|l| l.starts_with("#!") && l.contains("sh")))
                    .unwrap_or(false)
        })
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts found in scripts/");
    scripts
}

#[test]
fn scripts_parse_with_bash_n() {
    for script in shell_scripts() {
        let output = Command::new("bash").arg("-n").arg(&script).output().expect("run bash -n");
        assert!(
            output.status.success(),
            "bash -n {} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn scripts_are_shellcheck_clean() {
    if Command::new("shellcheck").arg("--version").output().is_err() {
        // scripts/test.sh installs it; under CI a missing tool must not pass as a clean result.
        assert!(!common::under_ci(), "shellcheck is not installed (CI=true): run the tests through scripts/test.sh");
        println!("shellcheck is not installed: skipped the shellcheck test (scripts/test.sh installs it)");
        return;
    }
    for script in shell_scripts() {
        let output = Command::new("shellcheck").arg(&script).current_dir(root()).output().expect("run shellcheck");
        assert!(
            output.status.success(),
            "shellcheck {} found problems:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Runs scripts/package-release.sh --dry-run and returns its `+ ` command lines.
fn package_dry_run(args: &[&str]) -> Vec<String> {
    let root = root();
    let output = Command::new("bash")
        .arg("scripts/package-release.sh")
        .args(args)
        .arg("--dry-run")
        .current_dir(&root)
        .env("PWD", &root)
        .env_remove("ORT_LIB_LOCATION")
        .env_remove("ORT_LIB_PATH")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "package-release.sh {args:?} --dry-run failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().filter(|l| l.starts_with("+ ")).map(str::to_string).collect()
}

#[test]
fn package_release_dry_run_names_the_archive_and_writes_nothing() {
    let v = env!("CARGO_PKG_VERSION");
    let root = root();
    let root = root.to_str().expect("UTF-8 path");
    for target in ["x86_64-unknown-linux-gnu", "aarch64-apple-darwin"] {
        let tmp = TempDir::new("package");
        let dist = tmp.join("dist");
        let commands = package_dry_run(&["--target", target, "--dist", dist.as_str()]);
        let stem = format!("akidb-{v}-{target}");

        assert_has_line(
            &commands,
            &format!("+ cargo build --release --locked --manifest-path {root}/Cargo.toml --target {target}"),
        );
        let tar = line_starting(&commands, "+ tar ");
        assert!(tar.starts_with(&format!("+ tar -C {dist}/.stage-{stem} ")), "tar line:\n  {tar}");
        assert!(tar.ends_with(&format!(" -czf {dist}/{stem}.tar.gz {stem}")), "tar line:\n  {tar}");
        for file in ["akidb", "README.md", "LICENSE", "config.example.toml"] {
            assert!(
                commands.iter().any(|c| c.starts_with("+ cp ") && c.ends_with(&format!("/{stem}/{file}"))),
                "{target}: expected {file} copied into {stem}/ among\n  {}",
                commands.join("\n  ")
            );
        }
        let sums = line_starting(&commands, &format!("+ (cd {dist} && "));
        assert!(sums.ends_with("akidb-*.tar.gz > SHA256SUMS)"), "checksum line:\n  {sums}");
        if target.contains("apple") {
            line_starting(&commands, "+ otool -L ");
            assert_no_line_contains(&commands, "libonnxruntime.so");
        }

        let build_only = package_dry_run(&["--target", target, "--dist", dist.as_str(), "--skip-build"]);
        assert_no_line_contains(&build_only, "cargo build");
        let left: Vec<PathBuf> =
            fs::read_dir(tmp.path()).expect("read temporary directory").flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "package-release.sh --dry-run created {left:?}");
    }
}
