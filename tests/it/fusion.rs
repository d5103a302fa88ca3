//! The fused-attention verdict with a real ONNX Runtime session on the tiny test model: a correct
//! fused graph is verified and cached, a broken one is refused (and the refusal remembered), and
//! a changed original file is verified afresh with its stale entries removed. Every attention
//! kernel (akidb's own, with its LayerNorm and GELU kernels; ONNX Runtime's two) gives the
//! exported graph's hidden states on both test models, and leaves nothing behind that no node
//! reads: a new user's first run prints the answer and no warning.

use crate::common;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use akidb_engine::{
    load::Probe,
    session::{
        fusion::{self, CacheEntry, Rewrite},
        graph::{fuse_attention, read_model, write_model, AttentionOp},
        runtime::SessionOptions,
    },
    tokenize::Tokenizer,
};

const HEADS: usize = 2;

fn snapshot() -> PathBuf {
    common::hf_home().join("hub/models--akidb-test--tiny-bert-cls/snapshots/35540ced21388cb29b96936151cc815ab481bce4")
}

fn minilm() -> PathBuf {
    common::hf_home()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/2e769ad2c3d58f341e499bab39d67dd9552519fc")
}

/// The probe batch the loader checks a rewritten graph on, from the tiny model's tokenizer.
fn probe() -> Probe {
    Probe::new(&Tokenizer::from_file(&snapshot().join("tokenizer.json"), 64).expect("tokenizer loads")).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".hash")) // the remembered content hash of a local file
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_verified_fused_graph_is_cached_and_reused() {
    let cache = tempfile::tempdir().unwrap();
    let model = snapshot().join("onnx/model.onnx");
    let options = SessionOptions::default();
    let loaded = fusion::load(&model, HEADS, &options, probe().inputs(), Some(cache.path())).unwrap();
    assert_eq!(loaded.rewrite, Rewrite::Fused(2));
    let entries = names(cache.path());
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].ends_with("-2.onnx"), "{entries:?}");
    // The kept graph records the original it was made from.
    let kept = read_model(&cache.path().join(&entries[0])).unwrap();
    let source = kept.metadata_props.iter().find(|p| p.key == "akidb.source_hash").expect("source hash recorded");
    assert_eq!(source.value, CacheEntry::new(cache.path(), &model, HEADS, options.attention()).unwrap().source());

    let modified = std::fs::metadata(cache.path().join(&entries[0])).unwrap().modified().unwrap();
    let again = fusion::load(&model, HEADS, &options, probe().inputs(), Some(cache.path())).unwrap();
    assert_eq!(again.rewrite, Rewrite::Fused(2));
    // The cached graph is reused as it is; ONNX Runtime's optimized form of it is saved beside it.
    let now = names(cache.path());
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(now[0], entries[0]);
    assert!(now[1].starts_with(entries[0].trim_end_matches(".onnx")) && now[1].contains(".opt-"), "{now:?}");
    assert_eq!(std::fs::metadata(cache.path().join(&entries[0])).unwrap().modified().unwrap(), modified);
    let third = fusion::load(&model, HEADS, &options, probe().inputs(), Some(cache.path())).unwrap();
    assert_eq!(third.rewrite, Rewrite::Fused(2));
    assert_eq!(names(cache.path()), now, "the optimized graph is reused");
}

#[test]
fn a_broken_fused_graph_is_rejected_and_the_verdict_remembered() {
    let cache = tempfile::tempdir().unwrap();
    let model = snapshot().join("onnx/model.onnx");
    let options = SessionOptions::default();
    let mut rewritten = fuse_attention(read_model(&model).unwrap(), HEADS, "attention_mask", AttentionOp::Packed)
        .unwrap()
        .expect("fuses");
    // The key-padding mask dropped: a graph that loads and runs, but lets real tokens attend to
    // padding, which only the padded texts of a mixed-length batch show.
    for node in rewritten.model.graph.as_mut().unwrap().node.iter_mut() {
        match node.op_type.as_str() {
            "MultiHeadAttention" => node.input[4] = String::new(),
            "Attention" => node.input[3] = String::new(),
            _ => {}
        }
    }
    let entry = CacheEntry::new(cache.path(), &model, HEADS, options.attention()).unwrap();
    let loaded = fusion::adopt(&model, rewritten, &options, probe().inputs(), &entry, true).unwrap();
    let Rewrite::AsExported(why) = &loaded.rewrite else { panic!("the original graph is used") };
    assert!(why.contains("failed its verification") && why.contains("cosine"), "{why}");
    let note = std::fs::read_to_string(entry.rejected_path()).expect("the refusal is cached");
    assert!(note.contains("cosine"), "{note}");
    assert_eq!(names(cache.path()).len(), 1, "no fused graph kept, no temporary left: {:?}", names(cache.path()));

    // The next load believes the cached verdict.
    let next = fusion::load(&model, HEADS, &options, probe().inputs(), Some(cache.path())).unwrap();
    let Rewrite::AsExported(why) = &next.rewrite else { panic!("the cached verdict is believed") };
    assert!(why.contains("remembered in") && why.contains("cosine"), "the reason survives the cache: {why}");

    // The same check accepts the correct graph.
    let good = fuse_attention(read_model(&model).unwrap(), HEADS, "attention_mask", AttentionOp::Packed)
        .unwrap()
        .expect("fuses");
    let other = tempfile::tempdir().unwrap();
    let entry = CacheEntry::new(other.path(), &model, HEADS, options.attention()).unwrap();
    assert_eq!(fusion::adopt(&model, good, &options, probe().inputs(), &entry, true).unwrap().rewrite.fused(), 2);
    assert!(entry.cached().is_some() && !entry.rejected_path().exists());
}

#[test]
fn a_changed_original_is_verified_again_and_its_stale_entry_removed() {
    let cache = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let model = local.path().join("model.onnx");
    std::fs::copy(snapshot().join("onnx/model.onnx"), &model).unwrap();
    let options = SessionOptions::default();
    assert_eq!(fusion::load(&model, HEADS, &options, probe().inputs(), Some(cache.path())).unwrap().rewrite.fused(), 2);
    let first = names(cache.path());
    assert_eq!(first.len(), 1, "{first:?}");
    let memo =
        std::fs::read_dir(cache.path()).unwrap().flatten().find(|e| e.path().extension().is_some_and(|x| x == "hash"));
    let memo = std::fs::read_to_string(memo.expect("a local file's hash is remembered").path()).unwrap();
    let first_source =
        CacheEntry::new(cache.path(), &model, HEADS, options.attention()).unwrap().cached().expect("cached").0;

    // Same path, different content.
    let mut changed = read_model(&model).unwrap();
    changed.doc_string = "a re-export".into();
    write_model(&changed, &model).unwrap();
    let entry = CacheEntry::new(cache.path(), &model, HEADS, options.attention()).unwrap();
    assert!(entry.cached().is_none(), "the old verdict does not apply to the new content");
    assert!(!memo.ends_with(entry.source()), "the remembered hash is not reused for new content");
    assert_eq!(fusion::load(&model, HEADS, &options, probe().inputs(), Some(cache.path())).unwrap().rewrite.fused(), 2);
    let second = names(cache.path());
    assert_eq!(second.len(), 1, "the stale entry is gone: {second:?}");
    assert_ne!(second, first);
    assert!(!first_source.exists());
}

/// Each kernel's graph through the same verification the loader uses: the fused session must give
/// the exported graph's hidden states (cosine ≥ 0.99999 per token) on a mixed-length batch, so
/// padding is exercised. akidb's kernel runs at head size 32 (MiniLM) and 16 (tiny), through ONNX
/// Runtime's own thread pool.
#[test]
fn every_attention_kernel_matches_the_exported_graph() {
    for (dir, heads, layers, max_len) in [(snapshot(), HEADS, 2, 64), (minilm(), 12, 6, 256)] {
        let model = dir.join("onnx/model.onnx");
        let probe = Probe::new(&Tokenizer::from_file(&dir.join("tokenizer.json"), max_len).unwrap()).unwrap();
        let options = SessionOptions { threads: Some(2), ..Default::default() };
        for op in [AttentionOp::Akidb, AttentionOp::Packed, AttentionOp::MultiHead] {
            let rewritten = fuse_attention(read_model(&model).unwrap(), heads, "attention_mask", op).unwrap().unwrap();
            let graph = rewritten.model.graph.as_ref().unwrap();
            let count = |domain: &str, op_type: &str| {
                graph.node.iter().filter(|n| n.domain == domain && n.op_type == op_type).count()
            };
            if op == AttentionOp::Akidb {
                // The residual LayerNorms (two per layer; not the embeddings') and the activations.
                assert_eq!(count(akidb_kernels::DOMAIN, akidb_kernels::SKIP_LAYER_NORM), 2 * layers);
                assert_eq!(count(akidb_kernels::DOMAIN, akidb_kernels::BIAS_GELU), layers);
                assert_eq!(count("", "Sub"), 1, "the embeddings' LayerNorm is left as it is");
                assert_eq!(count("", "Erf"), 0);
                // The encoder between runs on real tokens only.
                assert_eq!(count(akidb_kernels::DOMAIN, akidb_kernels::UNPAD), 1);
                assert_eq!(count(akidb_kernels::DOMAIN, akidb_kernels::REPAD), 1);
                let unpadded =
                    |n: &&onnx_protobuf::NodeProto| n.attribute.iter().any(|a| a.name == "unpadded" && a.i == 1);
                assert_eq!(graph.node.iter().filter(|n| n.op_type == "Attention").filter(unpadded).count(), layers);
            }
            let expected = match op {
                AttentionOp::Akidb => count(akidb_kernels::DOMAIN, "Attention"),
                AttentionOp::Packed => count("com.microsoft", "Attention"),
                AttentionOp::MultiHead => count("com.microsoft", "MultiHeadAttention"),
            };
            assert_eq!(expected, layers, "{op:?} on {}", model.display());
            let scratch = tempfile::tempdir().unwrap();
            let entry = CacheEntry::new(scratch.path(), &model, heads, op).unwrap();
            let loaded = fusion::adopt(&model, rewritten, &options, probe.inputs(), &entry, true).unwrap();
            assert_eq!(loaded.rewrite.fused(), layers, "{op:?} on {}: {:?}", model.display(), names(scratch.path()));
        }
        // A wrong kernel input is caught by the same check: akidb's fed a mask of ones, so real
        // tokens attend to the padding.
        let mut wrong =
            fuse_attention(read_model(&model).unwrap(), heads, "attention_mask", AttentionOp::Akidb).unwrap().unwrap();
        let graph = wrong.model.graph.as_mut().unwrap();
        let is_attention =
            |n: &&mut onnx_protobuf::NodeProto| n.domain == akidb_kernels::DOMAIN && n.op_type == "Attention";
        let mask = graph.node.iter_mut().find(is_attention).unwrap().input[2].clone();
        let node = |op: &str, input: &str, output: &str| {
            let mut n = onnx_protobuf::NodeProto::new();
            n.op_type = op.to_string();
            n.input = vec![input.to_string()];
            n.output = vec![output.to_string()];
            n
        };
        let mut ones = node("ConstantOfShape", "test/mask_shape", "test/ones");
        let mut value = onnx_protobuf::TensorProto::new();
        value.data_type = onnx_protobuf::tensor_proto::DataType::INT32 as i32;
        value.dims = vec![1];
        value.int32_data = vec![1];
        let mut attr = onnx_protobuf::AttributeProto::new();
        attr.name = "value".to_string();
        attr.type_ = onnx_protobuf::attribute_proto::AttributeType::TENSOR.into();
        attr.t = Some(value).into();
        ones.attribute.push(attr);
        let at = graph.node.iter().position(|n| n.output.contains(&mask)).unwrap() + 1;
        graph.node.insert(at, ones);
        graph.node.insert(at, node("Shape", &mask, "test/mask_shape"));
        for n in graph.node.iter_mut().filter(is_attention) {
            n.input[2] = "test/ones".to_string();
        }
        let scratch = tempfile::tempdir().unwrap();
        let entry = CacheEntry::new(scratch.path(), &model, heads, AttentionOp::Akidb).unwrap();
        assert_eq!(fusion::adopt(&model, wrong, &options, probe.inputs(), &entry, true).unwrap().rewrite.fused(), 0);
    }
}

/// The fused-away blocks' weights and constants go with them: no initializer, `Constant` node
/// (ONNX Runtime turns those into initializers as it loads) or `value_info` entry of any kernel's
/// graph, on either test model, is left that no node reads and is no graph output. ONNX Runtime
/// would drop each itself, with a warning.
#[test]
fn every_rewrite_leaves_nothing_unread() {
    let mut left = vec![];
    for (name, dir, heads) in [("tiny-bert-cls", snapshot(), HEADS), ("all-MiniLM-L6-v2", minilm(), 12)] {
        let model = dir.join("onnx/model.onnx");
        for op in [AttentionOp::Akidb, AttentionOp::Packed, AttentionOp::MultiHead] {
            let rewritten = fuse_attention(read_model(&model).unwrap(), heads, "attention_mask", op).unwrap().unwrap();
            let graph = rewritten.model.graph.as_ref().unwrap();
            let read: HashSet<&str> = graph
                .node
                .iter()
                .flat_map(|n| n.input.iter().map(String::as_str))
                .chain(graph.output.iter().map(|o| o.name.as_str()))
                .collect();
            let constants = graph.node.iter().filter(|n| n.op_type == "Constant").flat_map(|n| &n.output);
            let kinds = [
                ("initializers", graph.initializer.iter().map(|t| &t.name).collect::<Vec<_>>()),
                ("Constant nodes", constants.collect()),
                ("value_info entries", graph.value_info.iter().map(|v| &v.name).collect()),
            ];
            for (kind, names) in kinds {
                let unread: Vec<&String> = names.into_iter().filter(|n| !read.contains(n.as_str())).collect();
                if !unread.is_empty() {
                    left.push(format!("{op:?} on {name}: {} unread {kind}: {unread:?}", unread.len()));
                }
            }
        }
    }
    assert!(left.is_empty(), "{}", left.join("\n"));
}

/// A new user's first `akidb embed` — an empty akidb cache, so the graph is rewritten and verified
/// on the spot — prints the answer on stdout and not one warning on stderr (no log level set).
#[test]
fn the_first_run_is_quiet() {
    let cache = tempfile::tempdir().unwrap();
    let out = common::akidb()
        .env("AKIDB_CACHE_DIR", cache.path())
        .env_remove("AKIDB_ATTENTION")
        .env_remove("AKIDB_FUSE_ATTENTION")
        .env_remove("AKIDB_DEVICE")
        .env_remove("AKIDB_CONFIG")
        .args(["embed", "Hello, world"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "akidb failed: {stderr}");
    let removing = stderr.lines().filter(|l| l.contains("Removing initializer")).count();
    assert_eq!(removing, 0, "ONNX Runtime drops {removing} initializers the rewrite left:\n{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warnings.is_empty(), "{} warnings on a first run:\n{stderr}", warnings.len());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON answer");
    assert_eq!(answer["model"], common::MINILM);
    let embeddings = answer["embeddings"].as_array().expect("embeddings");
    assert_eq!(embeddings.len(), 1);
    assert_eq!(embeddings[0].as_array().map(Vec::len), Some(384));
    // It was a first run: the rewritten graph was made, verified and kept now.
    let kept: Vec<String> = names(&cache.path().join("graphs")).into_iter().filter(|n| n.ends_with(".onnx")).collect();
    assert!(kept.len() == 1 && kept[0].ends_with("-6.onnx"), "the six blocks fused and kept: {kept:?}");
}
