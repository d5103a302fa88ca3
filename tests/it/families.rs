//! The model families people pick today, in the shapes their public ONNX exports have (tiny
//! random-weight fixtures in ../shared/hf, references from sentence-transformers in torch):
//! Qwen3-Embedding (both exports: onnx-community's with position ids and an empty past, and the
//! plain one), EmbeddingGemma (the whole pipeline in the graph), XLM-RoBERTa, ModernBERT and a
//! BERT whose `Dense` module akidb runs itself. Every row of every reference, with and without
//! each prompt, through the real binary and over real HTTP; then the models akidb must refuse,
//! each with a load error that names what it lacks.

use crate::common;

use std::{path::Path, sync::OnceLock, time::Duration};

use akidb_server::ServerConfig;
use common::{akidb, copy_tiny_to, cosine, server::TestServer};
use serde_json::{json, Value};

const QWEN3: &str = "akidb-test/tiny-qwen3-embedding";
const GEMMA: &str = "akidb-test/tiny-embeddinggemma";
const XLMR: &str = "akidb-test/tiny-xlm-roberta";
const MODERNBERT: &str = "akidb-test/tiny-modernbert";
const DENSE: &str = "akidb-test/tiny-bert-dense";

/// Every (model, prompt) with a reference file; `None`: no prompt.
const CASES: [(&str, Option<&str>); 12] = [
    (QWEN3, None),
    (QWEN3, Some("query")),
    (GEMMA, None),
    (GEMMA, Some("query")),
    (GEMMA, Some("document")),
    (XLMR, None),
    (XLMR, Some("query")),
    (XLMR, Some("passage")),
    (MODERNBERT, None),
    (MODERNBERT, Some("query")),
    (MODERNBERT, Some("document")),
    (DENSE, None),
];

fn reference(model: &str, prompt: Option<&str>) -> Vec<(String, Vec<f32>)> {
    match prompt {
        None => common::reference(model),
        Some(p) => common::reference(&format!("{model}.{p}")),
    }
}

/// Every row at cosine ≥ 0.9999 and of the reference's width.
fn assert_matches(what: &str, got: &[Vec<f32>], want: &[(String, Vec<f32>)]) {
    assert_eq!(got.len(), want.len(), "{what}: one vector per text");
    for (i, (g, (text, w))) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i} has {} values, the model's vectors {}", g.len(), w.len());
        let c = cosine(g, w);
        assert!(c >= 0.9999, "{what}: row {i} ({text:?}) cosine {c:.6}");
    }
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of vectors: {v}"))
        .iter()
        .map(|row| row.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number") as f32).collect())
        .collect()
}

/// `akidb embed` over every reference text; a small batch budget, so rows of different lengths
/// share batches (the padding side matters) and the longest texts get batches of their own.
fn cli_embed(model: &str, extra: &[&str], texts: &[String]) -> Vec<Vec<f32>> {
    let out = akidb()
        .args(["embed", "--model", model, "--max-batch-tokens", "40", "--max-batch-size", "4"])
        .args(extra)
        .args(texts)
        .output()
        .expect("run akidb embed");
    assert!(out.status.success(), "{model} {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    vectors(&v["embeddings"])
}

#[test]
fn every_family_matches_its_references_through_the_cli_with_and_without_prompts() {
    for (model, prompt) in CASES {
        let want = reference(model, prompt);
        let texts: Vec<String> = want.iter().map(|(t, _)| t.clone()).collect();
        let mut args = Vec::new();
        if let Some(p) = prompt {
            args.extend(["--prompt-name", p]);
        }
        assert_matches(&format!("{model} {prompt:?}"), &cli_embed(model, &args, &texts), &want);
    }
    // Qwen3's plain export (ids and mask only) gives the same vectors.
    for prompt in [None, Some("query")] {
        let want = reference(QWEN3, prompt);
        let texts: Vec<String> = want.iter().map(|(t, _)| t.clone()).collect();
        let mut args = vec!["--onnx-file", "onnx/model_plain.onnx"];
        if let Some(p) = prompt {
            args.extend(["--prompt-name", p]);
        }
        assert_matches(&format!("plain {prompt:?}"), &cli_embed(QWEN3, &args, &texts), &want);
    }
}

/// One server holding the five families; models are picked by name.
fn families() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start_models(&[QWEN3, GEMMA, XLMR, MODERNBERT, DENSE], ServerConfig::default(), Duration::ZERO)
    })
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_matches_its_references_over_http_with_and_without_prompts() {
    let server = families();
    server.wait_healthy().await;
    let base = server.url("");
    for (model, prompt) in CASES {
        let want = reference(model, prompt);
        let texts: Vec<&str> = want.iter().map(|(t, _)| t.as_str()).collect();
        // TEI's route, with TEI's prompt_name.
        let mut body = json!({"model": model, "inputs": texts});
        if let Some(p) = prompt {
            body["prompt_name"] = json!(p);
        }
        let (s, v) = post(&base, "/embed", body).await;
        assert_eq!(s, 200, "{model} {prompt:?}: {v}");
        assert_matches(&format!("/embed {model} {prompt:?}"), &vectors(&v), &want);
        // OpenAI's route, a text at a time and all at once.
        let (s, v) = post(&base, "/v1/embeddings", json!({"model": model, "input": texts[1]})).await;
        assert_eq!(s, 200, "{v}");
        if prompt.is_none() {
            assert_matches(
                &format!("/v1/embeddings {model}"),
                &vectors(&json!([v["data"][0]["embedding"]])),
                &want[1..2],
            );
        }
    }
    // /info says what the loader found.
    let info: Value = reqwest::get(server.url("/info")).await.unwrap().json().await.unwrap();
    let models = info["models"].as_array().expect("models");
    let entry = |id: &str| models.iter().find(|m| m["model_id"] == id).unwrap_or_else(|| panic!("{id} in {info}"));
    let qwen = &entry(QWEN3)["pipeline"];
    assert_eq!(qwen["padding_side"], "left", "{qwen}");
    assert_eq!(qwen["family"], "qwen3");
    let fed: Vec<&str> = qwen["inputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert!(fed.contains(&"position_ids") && fed.contains(&"past_key_values.1.value"), "{qwen}");
    assert_eq!(entry(GEMMA)["pipeline"]["output"], "sentence_embedding");
    assert_eq!(entry(DENSE)["pipeline"]["dense"][0]["out_features"], 24);
    assert_eq!(entry(DENSE)["dimension"], 24);
    // Why a family runs unfused is in /info, not only in the log.
    let why = qwen["fusion"].as_str().unwrap();
    assert!(why.contains("ONNX Runtime's kernels") && why.contains("rotary position embeddings"), "{qwen}");
    let fused = &entry(XLMR)["pipeline"];
    assert_eq!(fused["fusion"], "2 attention blocks fused and verified on a probe batch", "{fused}");
}

/// The plain Qwen3 export served by the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_qwen3_export_serves_the_same_vectors() {
    let (mut child, base) = common::server::spawn_binary(&["--model", QWEN3, "--onnx-file", "onnx/model_plain.onnx"]);
    common::server::wait_healthy(&base).await;
    let want = reference(QWEN3, Some("query"));
    let texts: Vec<&str> = want.iter().map(|(t, _)| t.as_str()).collect();
    let (s, v) = post(&base, "/embed", json!({"inputs": texts, "prompt_name": "query"})).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(s, 200, "{v}");
    assert_matches("plain export over HTTP", &vectors(&v), &want);
}

/// `akidb inspect` reports what the loader found, in text and JSON.
#[test]
fn inspect_reports_inputs_outputs_pooling_dense_padding_prompts_and_fusion() {
    let out = akidb().args(["inspect", "--model", QWEN3]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "embedder",
        "qwen3 (Qwen3Model)",
        "position_ids: positions over real tokens",
        "past_key_values.0.key: empty past [rows, 2, 0, 16]",
        "lasttoken pooling",
        "padding        left",
        "max length     64",
        "query: \"Instruct: Given a web search query",
        "as exported, on ONNX Runtime's kernels: none of its 2 Softmax attention blocks has the pattern akidb fuses",
        "rotary position embeddings and a mask built from token positions (causal or sliding-window attention)",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let out = akidb().args(["inspect", "--json", "--model", DENSE]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["model"]["pipeline"];
    assert_eq!(p["modules"], json!(["Transformer", "Pooling", "Dense", "Normalize"]), "{v}");
    assert_eq!(p["dense"][0]["activation"], "tanh");
    assert_eq!(p["output"], "last_hidden_state");
    assert!(p["fused_attention"].as_u64().unwrap() > 0, "a BERT's attention is fused: {p}");
    let out = akidb().args(["inspect", "--model", GEMMA]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sentence_embedding (pooling and Dense inside the graph)"), "{text}");
}

fn load_error(dir: &Path, extra: &[&str]) -> String {
    let out = akidb().args(["embed", "--model", dir.to_str().unwrap()]).args(extra).arg("text").output().unwrap();
    assert!(!out.status.success(), "loaded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

fn cli_vector(dir: &Path, extra: &[&str]) -> Vec<f32> {
    let out =
        akidb().args(["embed", "--model", dir.to_str().unwrap()]).args(extra).arg("hello world").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    vectors(&v["embeddings"]).remove(0)
}

/// A graph input akidb cannot fill is a load error naming it — unless it is declared.
#[test]
fn an_input_akidb_cannot_fill_is_named_at_load_and_can_be_declared() {
    use akidb_engine::session::graph::{read_model, write_model};
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_to(dir.path());
    let onnx = dir.path().join("onnx/model.onnx");
    let plain = cli_vector(dir.path(), &[]);
    let mut model = read_model(&onnx).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let mut task = graph.input.iter().find(|i| i.name == "input_ids").unwrap().clone();
    task.name = "task_id".into();
    graph.input.push(task);
    write_model(&model, &onnx).unwrap();
    let err = load_error(dir.path(), &[]);
    assert!(err.contains("needs input 'task_id'") && err.contains("--model-input"), "{err}");
    // Declared, it is fed (here an input the graph does not read: the vectors are unchanged).
    let declared = cli_vector(dir.path(), &["--model-input", "task_id=3"]);
    assert!(cosine(&declared, &plain) > 0.999999);
    let err = load_error(dir.path(), &["--model-input", "task_id=three"]);
    assert!(err.contains("must be an integer"), "{err}");
}

/// An embedder whose only output is 2-D and not `sentence_embedding`: nothing says how it was
/// pooled, so it is refused rather than guessed at.
#[test]
fn a_2d_output_without_pooling_information_is_refused() {
    use akidb_engine::session::graph::{read_model, write_model};
    use onnx_protobuf::{attribute_proto::AttributeType, AttributeProto, NodeProto};
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_to(dir.path());
    let onnx = dir.path().join("onnx/model.onnx");
    let mut model = read_model(&onnx).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let mut mean = NodeProto::new();
    mean.op_type = "ReduceMean".into();
    mean.input = vec!["last_hidden_state".into()];
    mean.output = vec!["pooler_output".into()];
    for (name, ints, i) in [("axes", vec![1i64], 0), ("keepdims", vec![], 0)] {
        let mut a = AttributeProto::new();
        a.name = name.into();
        if ints.is_empty() {
            a.type_ = AttributeType::INT.into();
            a.i = i;
        } else {
            a.type_ = AttributeType::INTS.into();
            a.ints = ints;
        }
        mean.attribute.push(a);
    }
    graph.node.push(mean);
    let mut out = graph.output[0].clone();
    out.name = "pooler_output".into();
    if let Some(shape) = out.type_.as_mut().map(|t| t.mut_tensor_type()).and_then(|t| t.shape.as_mut()) {
        shape.dim.remove(1);
    }
    graph.output = vec![out];
    write_model(&model, &onnx).unwrap();
    let err = load_error(dir.path(), &[]);
    assert!(err.contains("no output akidb can use") && err.contains("pooler_output (2-D)"), "{err}");
}

/// A sentence-transformers module akidb does not run refuses the model, naming the module.
#[test]
fn an_unknown_sentence_transformers_module_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_to(dir.path());
    let modules = json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"},
    ]);
    std::fs::write(dir.path().join("modules.json"), modules.to_string()).unwrap();
    let err = load_error(dir.path(), &[]);
    assert!(err.contains("module 2 is sentence_transformers.models.LayerNorm"), "{err}");
    assert!(err.contains("Transformer, Pooling, Dense, Normalize"), "{err}");
}

/// A Dense module whose weights are missing is a load error naming the file, not a skipped layer.
#[test]
fn a_dense_module_without_its_weights_is_refused() {
    let snapshot = common::hf_home().join("hub/models--akidb-test--tiny-bert-dense/snapshots");
    let src = std::fs::read_dir(&snapshot).unwrap().next().unwrap().unwrap().path();
    let dir = tempfile::tempdir().unwrap();
    for rel in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "sentence_bert_config.json",
        "modules.json",
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "onnx/model.onnx",
    ] {
        let to = dir.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), to).unwrap();
    }
    let err = load_error(dir.path(), &[]);
    assert!(err.contains("2_Dense/model.safetensors is missing"), "{err}");
}
