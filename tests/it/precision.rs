//! `--precision bf16` (issue #27) with real ONNX Runtime sessions and akidb's `MatMulBf16` kernel:
//! the bf16 vectors against sentence-transformers' fp32 references on both test models, a
//! cross-encoder's and a classifier's logits against transformers', the quality gate refusing a
//! deliberately damaged bf16 graph, and a refusal remembered. On a CPU without AVX512-BF16 the
//! same tests check that `bf16` is a clear error and `auto` runs fp32.

use crate::common;

use akidb_engine::{
    load::Probe,
    model_config::Kind,
    session::{
        fusion::{self, CacheEntry, Rewrite},
        graph::{read_model, to_bf16, write_model},
        precision::{self, Precision},
        runtime::{Session, SessionOptions},
    },
    tokenize::{Input, Tokenizer},
    EncodeOptions, Model, ModelOptions,
};
use common::{cosine, reference, MINILM, TINY};
use serde_json::Value;

const CROSS: &str = "akidb-test/tiny-cross-encoder";
const CLASSIFIER: &str = "akidb-test/tiny-bert-classifier";

fn hardware() -> bool {
    akidb_kernels::bf16::hardware_bf16()
}

/// In process, through akidb's own cache (verdicts are keyed by content, kernels and versions).
fn load(model: &str, precision: Precision) -> Result<Model, akidb_engine::EngineError> {
    common::hf_env();
    Model::load(&ModelOptions {
        model: model.to_string(),
        session: SessionOptions { precision, ..Default::default() },
        ..Default::default()
    })
}

/// Both test models, bf16 against the fp32 references: every row at cosine ≥ 0.999, the mean at
/// ≥ 0.9999; `inspect` and `/info`'s pipeline say bf16 runs and why.
#[test]
fn bf16_vectors_match_the_fp32_references_on_both_test_models() {
    for model in [MINILM, TINY] {
        let want = reference(model);
        let texts: Vec<String> = want.iter().map(|(t, _)| t.clone()).collect();
        let out =
            common::akidb().args(["embed", "--precision", "bf16", "--model", model]).args(&texts).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !hardware() {
            assert!(!out.status.success() && stderr.contains("AVX512-BF16"), "{stderr}");
            continue;
        }
        assert!(out.status.success(), "{model}: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cosines: Vec<f64> = v["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&want)
            .map(|(g, (_, w))| {
                let g: Vec<f32> = serde_json::from_value(g.clone()).unwrap();
                cosine(&g, w)
            })
            .collect();
        let (min, mean) =
            (cosines.iter().copied().fold(1.0, f64::min), cosines.iter().sum::<f64>() / cosines.len() as f64);
        assert!(min >= 0.999 && mean >= 0.9999, "{model}: min {min:.6}, mean {mean:.7}");
        let inspect =
            common::akidb().args(["inspect", "--json", "--precision", "bf16", "--model", model]).output().unwrap();
        let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let said = info["model"]["pipeline"]["precision"].as_str().unwrap_or_default().to_string();
        assert!(said.starts_with("bf16 ("), "{model}: {said}");
    }
    // auto: bf16 exactly where the CPU has it.
    let inspect = common::akidb().args(["inspect", "--json", "--precision", "auto", "--model", TINY]).output().unwrap();
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let said = info["model"]["pipeline"]["precision"].as_str().unwrap_or_default();
    assert_eq!(said.starts_with("bf16"), hardware(), "{said}");
    let fp32 = common::akidb().args(["inspect", "--json", "--model", TINY]).output().unwrap();
    let info: Value = serde_json::from_slice(&fp32.stdout).unwrap();
    let said = info["model"]["pipeline"]["precision"].as_str().unwrap_or_default();
    assert!(said.starts_with("fp32 ("), "the default is fp32: {said}");
}

/// A cross-encoder and a classifier: each runs bf16 only when its logits passed the gate (within
/// 1e-2, relative above 1, of fp32's, ranked the same); then they are that close to transformers'
/// fp32 logits and the reranking order per query is unchanged. A model whose logits drift further
/// in bf16 runs fp32, and says that the gate refused it and why.
#[test]
fn heads_run_bf16_only_within_the_gate() {
    if !hardware() {
        return assert!(load(TINY, Precision::Bf16).is_err());
    }
    let read = |name: &str| -> Vec<Value> {
        let path = common::shared_dir().join(format!("reference/{name}.dev.jsonl"));
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let close = |got: f32, want: f64| (f64::from(got) - want).abs() <= 1e-2 * want.abs().max(1.0);
    let check = |model: &Model, within: bool| {
        let precision = &model.info().pipeline.precision;
        if precision.starts_with("bf16") {
            assert!(within, "{}: bf16 although its logits are not within the gate's tolerance", model.info().id);
        } else {
            assert!(precision.contains("quality gate"), "{}: {precision}", model.info().id);
        }
    };

    let model = load(CROSS, Precision::Bf16).unwrap();
    assert_eq!(model.info().kind, Kind::CrossEncoder);
    let rows = read("tiny-cross-encoder");
    let pairs: Vec<Input> = rows
        .iter()
        .map(|r| Input::Pair(r["query"].as_str().unwrap().into(), r["text"].as_str().unwrap().into()))
        .collect();
    let tokens = model.tokenize_inputs(&pairs, &EncodeOptions::default()).unwrap();
    let logits = model.embed_tokens(&tokens, false).unwrap();
    let order = |scores: Vec<(String, f64)>| {
        let mut by_query: std::collections::BTreeMap<String, Vec<(usize, f64)>> = Default::default();
        for (i, (q, s)) in scores.into_iter().enumerate() {
            by_query.entry(q).or_default().push((i, s));
        }
        by_query
            .into_values()
            .map(|mut v| {
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                v.into_iter().map(|(i, _)| i).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let query = |r: &Value| r["query"].as_str().unwrap().to_string();
    let want = order(rows.iter().map(|r| (query(r), r["logit"].as_f64().unwrap())).collect());
    let got = order(rows.iter().zip(&logits).map(|(r, l)| (query(r), f64::from(l[0]))).collect());
    assert_eq!(got, want, "the reranking order is fp32's");
    let within = rows.iter().zip(&logits).all(|(row, got)| close(got[0], row["logit"].as_f64().unwrap()));
    check(&model, within);

    let model = load(CLASSIFIER, Precision::Bf16).unwrap();
    let rows = read("tiny-bert-classifier");
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let logits = model.embed(&texts, false).unwrap().vectors;
    let within = rows.iter().zip(&logits).all(|(row, got)| {
        got.iter().zip(row["logits"].as_array().unwrap()).all(|(g, w)| close(*g, w.as_f64().unwrap()))
    });
    check(&model, within);
    for (row, got) in rows.iter().zip(&logits) {
        let best = got.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
        let want = row["logits"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .map(|(i, _)| i)
            .unwrap();
        assert_eq!(best, want, "{row}: the same label");
    }
}

/// tiny-bert-cls (2 layers) from the hf-hub cache: its graph and a probe batch from its tokenizer.
fn tiny_bert() -> (std::path::PathBuf, Probe) {
    let snapshot = common::hf_home().join("hub/models--akidb-test--tiny-bert-cls/snapshots");
    let snapshot = std::fs::read_dir(&snapshot).unwrap().next().unwrap().unwrap().path();
    let probe = Probe::new(&Tokenizer::from_file(&snapshot.join("tokenizer.json"), 64).unwrap()).unwrap();
    (snapshot.join("onnx/model.onnx"), probe)
}

/// A kept verdict: the first load gates bf16 and saves the bf16 graph with ONNX Runtime's
/// optimization of it; the next start loads that alone, never an fp32 session (so its fp32
/// weights are never in memory), with the same outputs. fp32 never preloads as bf16.
#[test]
fn a_kept_verdict_loads_bf16_alone_on_the_next_start() {
    if !hardware() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let (onnx, probe) = tiny_bert();
    let options = SessionOptions { precision: Precision::Bf16, ..Default::default() };
    // Twice: the second load saves ONNX Runtime's optimization of the fused fp32 graph.
    fusion::load(&onnx, 2, &options, probe.inputs(), Some(cache.path())).unwrap();
    let fp32 = fusion::load(&onnx, 2, &options, probe.inputs(), Some(cache.path())).unwrap();
    assert!(precision::preload(&onnx, 2, &options, Some(cache.path())).is_none(), "no verdict yet");
    let (gated, chosen) =
        precision::apply(fp32, Precision::Bf16, &onnx, Some(2), &options, probe.inputs(), Some(cache.path())).unwrap();
    assert!(chosen.bf16, "{chosen:?}");
    let names: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".bf16.onnx")), "{names:?}");
    assert!(names.iter().any(|n| n.contains(".bf16.opt-")), "the optimized bf16 graph is saved: {names:?}");
    assert!(names.iter().any(|n| n.contains("-2.opt-")), "the fp32 one's stays: {names:?}");

    let fp32_options = SessionOptions::default();
    assert!(precision::preload(&onnx, 2, &fp32_options, Some(cache.path())).is_none(), "fp32 asked");
    let (again, chosen) =
        precision::preload(&onnx, 2, &options, Some(cache.path())).expect("the kept verdict loads on its own");
    assert!(chosen.bf16 && chosen.why.contains("verdict cached"), "{chosen:?}");
    assert_eq!(again.rewrite, Rewrite::Fused(2));
    let run = |s: &Session| s.run(probe.inputs(), |h: ndarray::ArrayViewD<'_, f32>| h.to_owned()).unwrap();
    let (a, b) = (run(&gated.session), run(&again.session));
    assert_eq!(a.shape(), b.shape());
    let largest = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(largest <= 1e-4, "the saved optimization runs as the gated graph: {largest}");
}

/// The gate with real sessions: the bf16 graph made from a verified fused graph passes it; the
/// same graph with its bf16 weights damaged (every weight 8 times too large) is refused, naming the token;
/// and a refusal kept in the cache sends later loads to fp32 with the reason.
#[test]
fn the_gate_refuses_a_damaged_bf16_graph_and_remembers_a_refusal() {
    if !hardware() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let (onnx, probe) = tiny_bert();
    let options = SessionOptions::default();
    let fp32 = fusion::load(&onnx, 2, &options, probe.inputs(), Some(cache.path())).unwrap();
    assert_eq!(fp32.rewrite, Rewrite::Fused(2));
    let entry = CacheEntry::new(cache.path(), &onnx, 2, options.attention()).unwrap();
    let (fused, _) = entry.cached().expect("the verified fused graph is cached");

    let candidate = |damage: bool| {
        let mut model = read_model(&fused).unwrap();
        assert_eq!(to_bf16(&mut model), 8, "Q/K/V, attention output and two FFN products per layer");
        if damage {
            for t in &mut model.graph.as_mut().unwrap().initializer {
                if t.name.ends_with("/bf16") {
                    // Every weight 8 times too large (its exponent raised by 3).
                    for pair in t.raw_data.chunks_exact_mut(2) {
                        let bits = u16::from_le_bytes([pair[0], pair[1]]);
                        let raised = if bits & 0x7f80 < 0x7c00 { bits + (3 << 7) } else { bits };
                        pair.copy_from_slice(&raised.to_le_bytes());
                    }
                }
            }
        }
        let path = cache.path().join(format!("candidate-{damage}.onnx"));
        write_model(&model, &path).unwrap();
        Session::load(&path, None, &options).unwrap()
    };
    let worst = precision::gate(&fp32.session, &candidate(false), probe.inputs()).expect("bf16 passes");
    assert!(worst >= precision::MIN_COSINE, "{worst}");
    let why = precision::gate(&fp32.session, &candidate(true), probe.inputs()).expect_err("damaged bf16 is refused");
    assert!(why.contains("cosine") && why.contains("< 0.9995"), "{why}");

    // A remembered refusal: fp32, saying why.
    std::fs::write(fused.with_extension("bf16-rejected"), format!("{why}\n")).unwrap();
    let (loaded, chosen) =
        precision::apply(fp32, Precision::Bf16, &onnx, Some(2), &options, probe.inputs(), Some(cache.path())).unwrap();
    assert!(!chosen.bf16 && chosen.why.contains("remembered in"), "{chosen:?}");
    assert_eq!(loaded.rewrite, Rewrite::Fused(2));
}
