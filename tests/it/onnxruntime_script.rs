//! Checks scripts/build-onnxruntime.sh: its collect / check / merge / link-check steps for real
//! (`--merge-from` on a synthetic build tree of tiny archives made with cc and ar, inspected with
//! nm); the clone and the hour-long build, which need the network, through the exact commands of
//! `--dry-run`; the same for scripts/package-release.sh; and `bash -n` plus shellcheck on every
//! script. Nothing is written outside fresh temporary directories.

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
    akidb_engine::session::runtime::PINNED_VERSION.to_string()
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
             --skip_tests --compile_no_warning_as_error --skip_submodule_sync \
             --build_shared_lib --cmake_generator Unix Makefiles --no_telemetry \
             --use_coreml --osx_arch arm64 --apple_deploy_target 14.0 \
             --cmake_extra_defines onnxruntime_BUILD_UNIT_TESTS=OFF CMAKE_POLICY_VERSION_MINIMUM=3.5"
        ),
    );

    let out = root().join("third_party/onnxruntime/aarch64-apple-darwin");
    let out = out.to_str().expect("UTF-8 path");
    let libtool = line_starting(&commands, "+ libtool ");
    let merge = format!("+ libtool -static -no_warning_for_no_symbols -o {out}/lib/libonnxruntime.a ");
    assert!(libtool.starts_with(&merge), "libtool line:\n  {libtool}\nshould start with\n  {merge}");
    // What it merges is the link line of the shared library (tested for real with --merge-from).
    let part = format!("<the archives named in {build}/Release/CMakeFiles/onnxruntime.dir/link.txt>");
    assert!(libtool.contains(&part), "libtool line should merge {part}:\n  {libtool}");
    // The link check needs the target's own machine: an arm64 Mac, not this one.
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
             --skip_tests --compile_no_warning_as_error --skip_submodule_sync \
             --build_shared_lib --cmake_generator Unix Makefiles --no_telemetry \
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
    assert!(ar.contains(&format!("{build}/Release/CMakeFiles/onnxruntime.dir/link.txt")), "ar line:\n  {ar}");
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
#[ignore = "needs shellcheck (tool_ tests: scripts/test.sh)"]
fn tool_scripts_are_shellcheck_clean() {
    let found = Command::new("shellcheck").arg("--version").output();
    assert!(found.is_ok(), "shellcheck is not installed: run the tool_ tests through scripts/test.sh");
    for script in shell_scripts() {
        // -x: follow `. scripts/lib/...` (the source= directives are relative to the project root).
        let output =
            Command::new("shellcheck").arg("-x").arg(&script).current_dir(root()).output().expect("run shellcheck");
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

// ---------------------------------------------------------------------------------------------
// --merge-from on a synthetic ONNX Runtime build tree: the real collect / check / merge / link-check
// code paths, with tiny C archives standing in for ONNX Runtime's (cc, ar and nm from binutils).

/// One archive of the synthetic tree: its path under the build directory, the symbol it defines
/// and the symbols its one object references.
#[cfg(target_os = "linux")]
struct FakeArchive {
    path: &'static str,
    defines: &'static str,
}

/// The libraries ONNX Runtime's shared library links, each defining one function; the fake
/// `libonnxruntime_session.a` calls all of them, as the real one needs model_package, re2, ...
#[cfg(target_os = "linux")]
const LINKED: &[FakeArchive] = &[
    FakeArchive { path: "libonnxruntime_framework.a", defines: "ort_framework" },
    FakeArchive { path: "libonnxruntime_graph.a", defines: "ort_graph" },
    FakeArchive { path: "libonnxruntime_common.a", defines: "ort_common" },
    FakeArchive { path: "libonnxruntime_mlas.a", defines: "ort_mlas" },
    FakeArchive { path: "libonnxruntime_providers.a", defines: "ort_providers" },
    FakeArchive { path: "model_package/libmodel_package.a", defines: "ModelPackage_Open" },
    FakeArchive { path: "_deps/re2-build/libre2.a", defines: "re2_full_match" },
    FakeArchive { path: "_deps/abseil_cpp-build/absl/hash/libabsl_hash.a", defines: "absl_hash_combine" },
    FakeArchive { path: "_deps/onnx-build/libonnx.a", defines: "onnx_check_model" },
    FakeArchive { path: "_deps/onnx-build/libonnx_proto.a", defines: "onnx_proto_parse" },
    FakeArchive { path: "_deps/protobuf-build/libprotobuf-lite.a", defines: "protobuf_lite_parse" },
];

/// On disk but not for the merge: full protobuf (named on the link line next to lite: the filter
/// drops it), protoc and googletest (built, but not on the link line).
#[cfg(target_os = "linux")]
const NOT_MERGED: &[FakeArchive] = &[
    FakeArchive { path: "_deps/protobuf-build/libprotobuf.a", defines: "protobuf_full_only" },
    FakeArchive { path: "_deps/protobuf-build/libprotoc.a", defines: "protoc_main" },
    FakeArchive { path: "_deps/googletest-build/lib/libgtest.a", defines: "gtest_run_all" },
];

#[cfg(target_os = "linux")]
fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Compiles `source` into `built/path` as a one-object archive.
#[cfg(target_os = "linux")]
fn fake_archive(built: &Path, path: &str, source: &str) {
    let archive = built.join(path);
    let dir = archive.parent().expect("archive has a parent");
    fs::create_dir_all(dir).expect("create archive directory");
    let stem = archive.file_stem().and_then(|s| s.to_str()).expect("UTF-8 name");
    let c = dir.join(format!("{stem}.c"));
    let o = dir.join(format!("{stem}.o"));
    fs::write(&c, source).expect("write C source");
    sh(Command::new("cc").args(["-c", "-fPIC", "-o"]).arg(&o).arg(&c));
    sh(Command::new("ar").arg("rcs").arg(&archive).arg(&o));
    fs::remove_file(&c).ok();
    fs::remove_file(&o).ok();
}

/// Builds the synthetic tree in `built` with a link.txt naming `on_link_line` (paths relative to
/// `built`), as CMake writes it for the shared library. The fake OrtGetApiBase serves API version
/// `1.<minor>` of the pinned release and its CreateEnv calls every linked library's function.
#[cfg(target_os = "linux")]
fn synthetic_tree(built: &Path, on_link_line: &[&str]) {
    let version = pinned_version();
    let minor: u32 = version.split('.').nth(1).and_then(|m| m.parse().ok()).expect("pinned version is 1.N.x");
    for a in LINKED.iter().chain(NOT_MERGED) {
        fake_archive(built, a.path, &format!("int {}(void) {{ return 1; }}\n", a.defines));
    }
    let externs: String = LINKED.iter().map(|a| format!("int {}(void);\n", a.defines)).collect();
    let calls: Vec<String> = LINKED.iter().map(|a| format!("{}()", a.defines)).collect();
    let session = format!(
        r#"#include <stddef.h>
#include <stdint.h>
{externs}
typedef void (*ort_fn)(void);
typedef struct {{ const ort_fn *(*GetApi)(uint32_t); const char *(*GetVersionString)(void); }} OrtApiBase;
static int env_object;
static void *create_env(int level, const char *id, void **out) {{
  (void)level; (void)id;
  if ({calls} != {n}) return (void *)1;
  *out = &env_object;
  return NULL;
}}
static ort_fn api[4];
static const ort_fn *get_api(uint32_t v) {{ api[3] = (ort_fn)create_env; return v == {minor} ? api : NULL; }}
static const char *version_string(void) {{ return "{version}"; }}
static const OrtApiBase base = {{ get_api, version_string }};
const OrtApiBase *OrtGetApiBase(void) {{ return &base; }}
"#,
        calls = calls.join(" + "),
        n = LINKED.len(),
    );
    fake_archive(built, "libonnxruntime_session.a", &session);
    let link_dir = built.join("CMakeFiles/onnxruntime.dir");
    fs::create_dir_all(&link_dir).expect("create CMakeFiles/onnxruntime.dir");
    fs::write(
        link_dir.join("link.txt"),
        format!(
            "/usr/bin/c++ -fPIC -O3 -DNDEBUG -Xlinker --version-script=onnxruntime.lds -Xlinker --no-undefined \
             -shared -Wl,-soname,libonnxruntime.so.1 -o libonnxruntime.so.{version} \
             CMakeFiles/onnxruntime.dir/generated_source.c.o  -Wl,-rpath,::::::: {} -ldl -pthread\n",
            on_link_line.join(" ")
        ),
    )
    .expect("write link.txt");
}

/// Everything CMake would put on the link line: the session first, then the rest, full protobuf too.
#[cfg(target_os = "linux")]
fn full_link_line() -> Vec<&'static str> {
    let mut line = vec!["libonnxruntime_session.a"];
    line.extend(LINKED.iter().map(|a| a.path));
    line.push("_deps/protobuf-build/libprotobuf.a");
    line
}

/// The global symbols `archive` defines, per `nm`.
#[cfg(target_os = "linux")]
fn defined_symbols(archive: &Path) -> Vec<String> {
    let out = Command::new("nm").args(["-g", "--defined-only"]).arg(archive).output().expect("run nm");
    assert!(out.status.success(), "nm {} failed: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
        .collect()
}

#[cfg(target_os = "linux")]
fn merge_from(built: &Path, out: &Path) -> Output {
    run_script(&[
        "--merge-from",
        built.to_str().expect("UTF-8"),
        "--target",
        &host(),
        "--out",
        out.to_str().expect("UTF-8"),
    ])
}

/// This machine's target triple, as rustc reports it (what the script's link check runs on).
#[cfg(target_os = "linux")]
fn host() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

#[test]
#[cfg(target_os = "linux")]
fn merge_from_takes_the_link_line_archives_and_passes_the_link_check() {
    let tmp = TempDir::new("merge");
    let built = tmp.path().join("build/Release");
    let out = tmp.path().join("out");
    synthetic_tree(&built, &full_link_line());

    let output = merge_from(&built, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "--merge-from failed:\n{stderr}");
    assert!(stderr.contains("link check passed"), "the link check must run:\n{stderr}");
    assert!(stderr.contains(&format!("ONNX Runtime {}", pinned_version())), "the program must run:\n{stderr}");

    let merged = out.join("lib/libonnxruntime.a");
    let symbols = defined_symbols(&merged);
    for want in LINKED.iter().map(|a| a.defines).chain(["OrtGetApiBase"]) {
        assert!(symbols.iter().any(|s| s == want), "{want} missing from the merged archive: {symbols:?}");
    }
    for unwanted in NOT_MERGED.iter().map(|a| a.defines) {
        assert!(!symbols.iter().any(|s| s == unwanted), "{unwanted} must not be merged: {symbols:?}");
    }
    let stamp = fs::read_to_string(out.join("akidb-onnxruntime.stamp")).expect("stamp written");
    assert!(stamp.starts_with(&format!("version={} mode=from-source target={}", pinned_version(), host())), "{stamp}");
}

#[test]
#[cfg(target_os = "linux")]
fn link_check_names_the_undefined_symbols_and_where_they_are() {
    let tmp = TempDir::new("merge-missing");
    let built = tmp.path().join("build/Release");
    let out = tmp.path().join("out");
    // The defect this guards against: model_package/ built but not merged.
    let line: Vec<&str> = full_link_line().into_iter().filter(|p| !p.starts_with("model_package/")).collect();
    synthetic_tree(&built, &line);
    // A stamp left by an earlier good run must not vouch for this failed one.
    fs::create_dir_all(&out).unwrap();
    let stamp = format!("version={} mode=from-source target={}\n", pinned_version(), host());
    fs::write(out.join("akidb-onnxruntime.stamp"), stamp).unwrap();

    let output = merge_from(&built, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a merged archive missing model_package must fail:\n{stderr}");
    assert!(stderr.contains("does not link"), "{stderr}");
    assert!(stderr.contains("undefined symbols (1):\n  ModelPackage_Open"), "{stderr}");
    assert!(stderr.contains("ModelPackage_Open is defined in model_package/libmodel_package.a"), "{stderr}");
    assert!(!out.join("akidb-onnxruntime.stamp").exists(), "no stamp after a failed link check");
}

#[test]
#[cfg(target_os = "linux")]
fn merge_from_refuses_a_tree_without_a_required_archive_or_a_link_line() {
    let tmp = TempDir::new("merge-bad");
    let built = tmp.path().join("build/Release");
    let out = tmp.path().join("out");
    let line: Vec<&str> = full_link_line().into_iter().filter(|p| !p.ends_with("libre2.a")).collect();
    synthetic_tree(&built, &line);
    let output = merge_from(&built, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("libre2.a is missing from the link line"), "{stderr}");

    fs::remove_file(built.join("CMakeFiles/onnxruntime.dir/link.txt")).expect("remove link.txt");
    let output = merge_from(&built, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no CMakeFiles/onnxruntime.dir/link.txt") && stderr.contains("--build_shared_lib"),
        "{stderr}"
    );

    let output = merge_from(&tmp.path().join("nope"), &out);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such directory"));
    assert!(!out.join("lib/libonnxruntime.a").exists(), "nothing merged from a bad tree");
}

#[test]
#[cfg(target_os = "linux")]
fn merge_from_fails_on_a_link_line_archive_that_is_not_on_disk() {
    let tmp = TempDir::new("merge-absent");
    let built = tmp.path().join("build/Release");
    let out = tmp.path().join("out");
    // An archive the link line names but the tree lacks (an interrupted build), after every
    // required one: once, the merge went on with the archives before it and exited 0.
    let mut line = full_link_line();
    line.push("_deps/kleidiai-build/libkleidiai.a");
    synthetic_tree(&built, &line);
    // What an earlier good run left must not vouch for this one.
    fs::create_dir_all(out.join("lib")).unwrap();
    fs::write(out.join("lib/libonnxruntime.a"), "an earlier merge").unwrap();
    let stamp = format!("version={} mode=from-source target={}\n", pinned_version(), host());
    fs::write(out.join("akidb-onnxruntime.stamp"), stamp).unwrap();

    let output = merge_from(&built, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a missing archive must fail the merge:\n{stderr}");
    assert!(stderr.contains("names _deps/kleidiai-build/libkleidiai.a, which is not in"), "{stderr}");
    assert!(!stderr.contains("merged "), "nothing is merged:\n{stderr}");
    assert!(!out.join("lib/libonnxruntime.a").exists(), "no archive after a failed merge");
    assert!(!out.join("akidb-onnxruntime.stamp").exists(), "no stamp after a failed merge");
}

/// arm64 builds of 1.31 link KleidiAI into MLAS: for the Mac target the merge requires it (the
/// check runs before anything Mac-only, so it is exercised here).
#[test]
#[cfg(target_os = "linux")]
fn merge_for_the_mac_requires_coreml_and_kleidiai_archives() {
    let tmp = TempDir::new("merge-mac");
    let built = tmp.path().join("build/Release");
    let out = tmp.path().join("out");
    let mac = |built: &Path| {
        run_script(&[
            "--merge-from",
            built.to_str().expect("UTF-8"),
            "--target",
            "aarch64-apple-darwin",
            "--out",
            out.to_str().expect("UTF-8"),
        ])
    };
    synthetic_tree(&built, &full_link_line());
    let stderr = String::from_utf8_lossy(&mac(&built).stderr).to_string();
    assert!(stderr.contains("libonnxruntime_providers_coreml.a is missing from the link line"), "{stderr}");

    let coreml = ["libonnxruntime_providers_coreml.a", "_deps/coremltools-build/libcoreml_proto.a"];
    for (i, a) in coreml.iter().enumerate() {
        fake_archive(&built, a, &format!("int coreml_part_{i}(void) {{ return 1; }}\n"));
    }
    let mut line = full_link_line();
    line.extend(coreml);
    synthetic_tree(&built, &line);
    let output = mac(&built);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("libkleidiai.a is missing from the link line"), "{stderr}");
}
