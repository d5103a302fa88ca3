//! Rewrites the transformer's ONNX graph before ONNX Runtime loads it.
//!
//! Exports made through PyTorch's scaled-dot-product attention spell each attention block as
//! ~20 generic ops: reshapes and transposes of Q, K and V, two scaling Muls, a mask `Where`, an
//! `Add`, `Softmax`, a NaN guard (`IsNaN` + `Where` over the whole [batch, heads, seq, seq]
//! tensor) and two MatMuls. ONNX Runtime's own fusions do not recognise that pattern, and the
//! element-wise passes over the score tensor cost as much as the matrix products. Each block is
//! replaced by one attention node fed with a key-padding mask, which computes the same thing in
//! one kernel ([`AttentionOp`]); with akidb's kernels (`kernel`), the residual LayerNorms and the
//! bias + GELU of the feed-forward are replaced too. The NaN guard only matters for rows whose keys are all
//! masked, which cannot happen here: `[CLS]` is always a real token.
//!
//! The model is read into the ONNX types generated from `onnx.proto` (the `onnx-protobuf`
//! crate); only the node list is edited, so weights are moved, never copied, and every field the
//! rewrite does not know survives the round trip. When a block does not match the pattern exactly
//! it is left alone. `fusion` checks the result numerically before anything uses it.
//!
//! The passes, in the order [`fuse_attention`] runs them: `attention` (the blocks), `rowwise`
//! (LayerNorm and GELU, akidb's kernels only), `unpad` (the encoder on real tokens), `prune`
//! (what the fused-away nodes left unread); `index` is the lookup they all match through, `io`
//! the file format. `bf16` ([`to_bf16`]) is a further pass over a verified fused graph, for
//! `--precision bf16`.

mod attention;
mod bf16;
mod index;
mod io;
mod prune;
mod rowwise;
mod unpad;

pub use bf16::to_bf16;
pub use io::{decode_model, read_model, write_model};
pub use onnx_protobuf::ModelProto;
use onnx_protobuf::{attribute_proto::AttributeType, AttributeProto, NodeProto, OperatorSetIdProto};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("could not read ONNX model {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the ONNX model is not a valid protobuf ({0})")]
    Malformed(String),
    #[error("could not write ONNX model {path}: {message}")]
    Write { path: String, message: String },
}

/// Which node a matched attention block becomes (`--attention`, `AKIDB_ATTENTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionOp {
    /// `com.microsoft.MultiHeadAttention` over the three projections.
    MultiHead,
    /// `com.microsoft.Attention` over the Q, K and V weights packed into one GEMM.
    Packed,
    /// The packed GEMM as a `MatMul`, then akidb's own attention kernel (`kernel`), which skips
    /// padded keys and keeps each head's scores in cache. Blocks whose head size it has no kernel
    /// for become `Packed`.
    Akidb,
}

impl AttentionOp {
    /// The kernel when the options name none: akidb's own where it was measured fastest (see
    /// `akidb_kernels::measured_faster`), else ONNX Runtime's `Attention` over packed Q/K/V.
    pub fn measured_default() -> Self {
        if akidb_kernels::measured_faster() {
            AttentionOp::Akidb
        } else {
            AttentionOp::Packed
        }
    }
}

/// The rewritten model, and how many attention blocks were fused.
pub struct Rewritten {
    pub model: ModelProto,
    pub fused: usize,
}

/// The rewrite's own names: the key-padding mask every fused attention node reads.
const MASK: &str = "akidb/key_padding_mask";

// --- building nodes, for every pass -----------------------------------------------------------

fn node(
    op: &str,
    domain: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.to_string();
    n.domain = domain.to_string();
    n.name = name.to_string();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

fn float_attr(name: &str, value: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::FLOAT.into();
    a.f = value;
    a
}

/// Changes whenever the rewrite does, so graphs cached by an older one are made again.
pub const REWRITE_VERSION: u32 = 5;

/// Why [`fuse_attention`] finds no block to fuse in `model`, from what the graph holds: the
/// families akidb's pattern does not cover (rotary positions, causal or sliding-window masks,
/// grouped-query attention) show themselves in their operators.
pub fn why_unmatched(model: &ModelProto, mask_input: &str) -> String {
    let Some(graph) = model.graph.as_ref() else { return "the file holds no graph".into() };
    if !graph.input.iter().any(|i| i.name == mask_input) {
        return format!("the graph has no {mask_input} input to build the fused mask from");
    }
    let count = |ops: &[&str]| graph.node.iter().filter(|n| ops.contains(&n.op_type.as_str())).count();
    let softmax = count(&["Softmax"]);
    let already: Vec<&str> = ["Attention", "MultiHeadAttention", "GroupQueryAttention"]
        .into_iter()
        .filter(|op| graph.node.iter().any(|n| n.op_type == *op))
        .collect();
    if softmax == 0 {
        return if already.is_empty() {
            "the graph has no Softmax attention to rewrite".into()
        } else {
            format!("its attention is already ONNX Runtime's {}", already.join(", "))
        };
    }
    let mut traits = Vec::new();
    if count(&["Sin", "Cos", "RotaryEmbedding"]) > 0 {
        traits.push("rotary position embeddings");
    }
    if count(&["Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Trilu"]) > 0 {
        traits.push("a mask built from token positions (causal or sliding-window attention)");
    }
    if already.contains(&"GroupQueryAttention") {
        traits.push("grouped-query attention");
    }
    let has = if traits.is_empty() { String::new() } else { format!("; the graph has {}", traits.join(" and ")) };
    format!(
        "none of its {softmax} Softmax attention blocks has the pattern akidb fuses (BERT-style: scaled \
         QKᵀ plus the padding mask, Softmax, times V){has}"
    )
}

/// Fuses every attention block it recognises; `None` when there is none (the model is then used
/// as it is). `mask_input` names the graph's attention-mask input. Unless `op` is `MultiHead`, a
/// block whose Q, K and V are projections of one input by constant weights has them packed into
/// one [hidden, 3 × hidden] GEMM (measured faster, docs/performance.md), feeding the node `op`
/// names; other blocks become `MultiHeadAttention` nodes. Takes the model by value: its weights
/// move into the result.
pub fn fuse_attention(
    mut model: ModelProto,
    num_heads: usize,
    mask_input: &str,
    op: AttentionOp,
) -> Result<Option<Rewritten>, GraphError> {
    let Some(graph) = model.graph.as_mut() else { return Ok(None) };
    if !graph.input.iter().any(|i| i.name == mask_input) || num_heads == 0 {
        return Ok(None);
    }
    let Some(attention::Fused { blocks, mut own_kernel }) = attention::fuse_blocks(graph, num_heads, mask_input, op)
    else {
        return Ok(None);
    };
    // akidb's other kernels, then real tokens only, once the packed weights are initializers.
    if op == AttentionOp::Akidb {
        own_kernel |= rowwise::fuse_norms_and_gelus(graph) > 0;
        if own_kernel && unpad::unpad_encoder(graph) {
            tracing::debug!("the encoder runs on real tokens only");
        }
    }
    // What only the replaced nodes read (their weights, constants, shape notes) goes too: ONNX
    // Runtime would otherwise warn about each unused initializer as it loads the graph.
    let dropped = prune::drop_unread(graph);
    if dropped > 0 {
        tracing::debug!("{dropped} initializers, constants and value infos nothing reads are dropped");
    }
    for domain in ["com.microsoft", akidb_kernels::DOMAIN].into_iter().take(if own_kernel { 2 } else { 1 }) {
        if !model.opset_import.iter().any(|o| o.domain == domain) {
            let mut opset = OperatorSetIdProto::new();
            opset.domain = domain.to_string();
            opset.version = 1;
            model.opset_import.push(opset);
        }
    }
    Ok(Some(Rewritten { model, fused: blocks }))
}
