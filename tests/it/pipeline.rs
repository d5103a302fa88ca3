//! The library pipeline against sentence-transformers' own vectors, through the real hf-hub cache
//! and a real ONNX Runtime session.

use crate::common;

use std::sync::OnceLock;

use akidb_engine::{Model, ModelOptions};
use common::{cosine, hf_env, max_abs_diff, norm, reference, MINILM, TINY};

fn load(model: &str) -> Model {
    hf_env();
    Model::load(&ModelOptions { model: model.to_string(), ..Default::default() })
        .unwrap_or_else(|e| panic!("loading {model}: {e}"))
}

fn minilm() -> &'static Model {
    static E: OnceLock<Model> = OnceLock::new();
    E.get_or_init(|| load(MINILM))
}

fn tiny() -> &'static Model {
    static E: OnceLock<Model> = OnceLock::new();
    E.get_or_init(|| load(TINY))
}

fn check_reference(embedder: &Model, model: &str) {
    let rows = reference(model);
    assert!(rows.len() >= 10, "reference for {model} has only {} rows", rows.len());
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let out = embedder.embed(&texts, true).expect("embed");
    assert_eq!(out.vectors.len(), rows.len());
    let mut worst = (1.0f64, String::new());
    for ((text, want), got) in rows.iter().zip(&out.vectors) {
        assert_eq!(got.len(), want.len(), "{model}: dimension");
        let c = cosine(got, want);
        if c < worst.0 {
            worst = (c, text.clone());
        }
        assert!((norm(got) - 1.0).abs() < 1e-4, "{model}: not unit length for {text:?}");
    }
    assert!(worst.0 >= 0.9999, "{model}: cosine {} < 0.9999 for {:?}", worst.0, worst.1);
}

#[test]
fn minilm_matches_sentence_transformers() {
    check_reference(minilm(), MINILM);
    let info = minilm().info();
    assert_eq!((info.dimension, info.max_seq_length, info.pooling), (384, 256, "mean"));
    assert_eq!(info.revision.as_deref(), Some("2e769ad2c3d58f341e499bab39d67dd9552519fc"));
}

#[test]
fn tiny_cls_model_matches_sentence_transformers() {
    check_reference(tiny(), TINY);
    let info = tiny().info();
    assert_eq!((info.dimension, info.max_seq_length, info.pooling), (32, 64, "cls"));
}

#[test]
fn batch_equals_one_by_one_in_order() {
    for (embedder, model) in [(minilm(), MINILM), (tiny(), TINY)] {
        let rows = reference(model);
        let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).take(20).collect();
        let batch = embedder.embed(&texts, true).expect("batch").vectors;
        for (i, text) in texts.iter().enumerate() {
            let single = embedder.embed(&[*text], true).expect("single").vectors.remove(0);
            let d = max_abs_diff(&batch[i], &single);
            assert!(d < 1e-5, "{model}: row {i} differs by {d} between batch and single");
        }
    }
}

#[test]
fn few_texts_tokenize_like_a_large_batch() {
    // A few texts take the calling thread, many the rayon pool: both must give the same tokens.
    let long = "a long text that will be cut at the limit ".repeat(60);
    for (embedder, model) in [(minilm(), MINILM), (tiny(), TINY)] {
        let mut texts: Vec<String> = reference(model).into_iter().map(|(t, _)| t).take(20).collect();
        texts.push(long.clone());
        let batch = embedder.tokenize(&texts).expect("batch");
        for (text, want) in texts.iter().zip(&batch) {
            let alone = embedder.tokenize(&[text.as_str()]).expect("alone").remove(0);
            assert_eq!((&alone.ids, &alone.type_ids, alone.truncated), (&want.ids, &want.type_ids, want.truncated));
        }
        assert!(batch.last().is_some_and(|t| t.truncated), "{model}: the long text is truncated");
    }
}

#[test]
fn long_text_is_truncated_at_the_models_max_seq_length_not_the_tokenizer_files() {
    let embedder = minilm();
    let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
    let prefix = |n: usize| words[..n].join(" ");
    let len = |text: &str| embedder.tokenize(&[text]).expect("tokenize")[0].len();
    let long = prefix(words.len());
    let tokens = embedder.tokenize(&[long.as_str()]).expect("tokenize");
    assert_eq!(tokens[0].len(), 256, "MiniLM's sentence_bert_config says 256; tokenizer.json says 128");
    assert!(tokens[0].truncated);
    assert_eq!(embedder.embed(&[long.as_str(), "hi"], true).unwrap().total_tokens, 256 + 3);

    // The vector of the long text is that of its first 256 tokens, not of its first 128.
    let n128 = (1..words.len()).find(|&n| len(&prefix(n)) >= 128).expect("a 128-token prefix");
    let n256 = (n128..words.len()).find(|&n| len(&prefix(n)) >= 256).expect("a 256-token prefix");
    let embed = |t: &str| embedder.embed(&[t], true).unwrap().vectors.remove(0);
    let (v_full, v_128, v_256) = (embed(&long), embed(&prefix(n128)), embed(&prefix(n256)));
    assert!(max_abs_diff(&v_full, &v_256) < 1e-5, "truncated at 256 tokens");
    assert!(cosine(&v_full, &v_128) < 0.999, "not truncated at 128 tokens");

    // The tiny model stops at its own 64.
    assert_eq!(tiny().tokenize(&[long.as_str()]).expect("tokenize")[0].len(), 64);
}

#[test]
fn normalize_off_gives_raw_pooled_vectors() {
    let raw = minilm().embed(&["The quick brown fox"], false).unwrap().vectors.remove(0);
    let unit = minilm().embed(&["The quick brown fox"], true).unwrap().vectors.remove(0);
    assert!((norm(&raw) - 1.0).abs() > 0.01, "mean-pooled MiniLM vectors are not unit length");
    assert!(cosine(&raw, &unit) > 0.99999);
}

#[test]
fn empty_and_whitespace_texts_embed_without_error() {
    let out = tiny().embed(&["", " ", "\t\n"], true).expect("embed");
    assert_eq!(out.vectors.len(), 3);
    assert!(out.vectors.iter().all(|v| v.len() == 32 && v.iter().all(|x| x.is_finite())));
}

#[test]
fn truncation_check_names_the_offending_input() {
    let long: String = "token ".repeat(500);
    let tokens = tiny().tokenize(&["short", long.as_str()]).unwrap();
    let err = tiny().check_lengths(&tokens).unwrap_err().to_string();
    assert!(err.contains("input 1") && err.contains("64"), "{err}");
    assert!(tiny().check_lengths(&tokens[..1]).is_ok());
}

#[test]
fn quantized_onnx_file_is_selectable() {
    hf_env();
    let e = Model::load(&ModelOptions {
        model: MINILM.to_string(),
        onnx_file: Some("onnx/model_quint8_avx2.onnx".to_string()),
        ..Default::default()
    })
    .expect("int8 model loads");
    assert_eq!(e.info().onnx_file, "onnx/model_quint8_avx2.onnx");
    let rows = reference(MINILM);
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let out = e.embed(&texts, true).unwrap();
    let worst = rows.iter().zip(&out.vectors).map(|((_, w), g)| cosine(g, w)).fold(1.0, f64::min);
    // int8 is an approximation: close, not exact.
    assert!(worst > 0.9, "int8 worst cosine {worst}");
}

#[test]
fn fused_attention_gives_the_same_vectors_as_the_exported_graph() {
    hf_env();
    for (model, layers) in [(MINILM, 6), (TINY, 2)] {
        let fused = if model == MINILM { minilm() } else { tiny() };
        assert_eq!(fused.info().fused_attention, layers, "{model}: every attention block is fused");
        let mut options = ModelOptions { model: model.to_string(), ..Default::default() };
        options.session.fuse_attention = false;
        let plain = Model::load(&options).expect("load unfused");
        assert_eq!(plain.info().fused_attention, 0);
        let rows = reference(model);
        let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
        let a = fused.embed(&texts, true).unwrap().vectors;
        let b = plain.embed(&texts, true).unwrap().vectors;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(max_abs_diff(x, y) < 1e-5, "{model} row {i}: {}", max_abs_diff(x, y));
        }
    }
}

#[test]
fn graph_rewrite_leaves_models_it_does_not_recognise_alone() {
    use akidb_engine::session::graph::{decode_model, fuse_attention, read_model, AttentionOp};
    // Not a protobuf at all: an error, which the loader treats as "use the file as it is".
    assert!(decode_model(b"\xff\xff\xff").is_err());
    // A valid model without the named mask input is not touched.
    let path = common::hf_home().join(
        "hub/models--akidb-test--tiny-bert-cls/snapshots/35540ced21388cb29b96936151cc815ab481bce4/onnx/model.onnx",
    );
    assert!(fuse_attention(read_model(&path).unwrap(), 2, "no_such_input", AttentionOp::Packed).unwrap().is_none());
    let original = read_model(&path).unwrap();
    let nodes = original.graph.node.len();
    let r = fuse_attention(original, 2, "attention_mask", AttentionOp::Packed).unwrap().expect("tiny model fuses");
    assert_eq!(r.fused, 2);
    let graph = r.model.graph.as_ref().unwrap();
    let fused = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(fused("Attention") + fused("MultiHeadAttention"), 2);
    assert_eq!(fused("Attention"), 2, "Q, K and V are packed");
    assert!(graph.node.len() < nodes, "the unfused attention nodes are gone");
    // akidb's kernel: the packed projection as a MatMul, then the kernel, declared in the opsets.
    let r = fuse_attention(read_model(&path).unwrap(), 2, "attention_mask", AttentionOp::Akidb).unwrap().unwrap();
    let graph = r.model.graph.as_ref().unwrap();
    let own: Vec<_> =
        graph.node.iter().filter(|n| n.domain == akidb_kernels::DOMAIN && n.op_type == "Attention").collect();
    assert_eq!(own.len(), 2);
    for n in &own {
        assert_eq!(n.input.len(), 3, "qkv, bias, mask");
        let producer = graph.node.iter().find(|p| p.output.contains(&n.input[0])).expect("qkv is computed");
        assert_eq!(producer.op_type, "MatMul");
        assert!(graph.initializer.iter().any(|t| t.name == n.input[1] && t.dims == [96]), "the packed bias");
    }
    assert!(r.model.opset_import.iter().any(|o| o.domain == akidb_kernels::DOMAIN));
    // A residual sum the graph also outputs keeps its LayerNorm unfused (4 → 3), and the encoder
    // then has two exits, so it stays padded.
    let mut model = read_model(&path).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let sum = graph.node.iter().filter(|n| n.op_type == "Sub").nth(1).expect("layer 0's LayerNorm").input[0].clone();
    let mut output = onnx_protobuf::ValueInfoProto::new();
    output.name = sum;
    graph.output.push(output);
    let r = fuse_attention(model, 2, "attention_mask", AttentionOp::Akidb).unwrap().unwrap();
    let count =
        |op: &str| r.model.graph.node.iter().filter(|n| n.domain == akidb_kernels::DOMAIN && n.op_type == op).count();
    assert_eq!(count(akidb_kernels::SKIP_LAYER_NORM), 3);
    assert_eq!(count(akidb_kernels::UNPAD), 0);
}
