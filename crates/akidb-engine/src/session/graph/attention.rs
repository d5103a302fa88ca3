//! Attention blocks: matching the ~20 generic ops of an exported SDPA attention block (Q/K/V
//! reshapes and transposes, scaling, additive mask, `Softmax`, NaN guard, two MatMuls) and
//! replacing each with one fused node fed a key-padding mask. The passes over the score tensor
//! are where the exported graph spends its time, and this is the one rewrite every `AttentionOp`
//! gets.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{tensor_proto::DataType, GraphProto, TensorProto};

use super::{
    float_attr,
    index::{attr, tensor_floats, Graph},
    int_attr, node, AttentionOp, MASK,
};

/// Is `bias` a key-padding mask: derived from the graph input `mask_input`, with no causal
/// part? A causal mask compares positions with positions (`kv_idx <= q_idx` as a `LessOrEqual`
/// of two `Range`-derived tensors) or takes a triangle (`Trilu`, `CumSum`); a padding mask
/// only compares with constants (bounds checks). A causal bias is [seq, seq], which the fused
/// kernel's key-padding mask cannot express. Shapes are not followed into: they carry no
/// values.
fn is_padding_mask(g: &Graph<'_>, bias: &str, mask_input: &str) -> bool {
    const TRIANGLE: [&str; 2] = ["Trilu", "CumSum"];
    const COMPARE: [&str; 4] = ["Less", "LessOrEqual", "Greater", "GreaterOrEqual"];
    let mut stack = vec![bias];
    let mut seen = HashSet::new();
    let mut reaches_mask = false;
    while let Some(name) = stack.pop() {
        if name == mask_input {
            reaches_mask = true;
            continue;
        }
        if !seen.insert(name) {
            continue;
        }
        if seen.len() > 512 {
            return false; // not a small mask computation
        }
        let Some(node) = g.node(name) else { continue };
        let op = node.op_type.as_str();
        if TRIANGLE.contains(&op) {
            return false;
        }
        if COMPARE.contains(&op) && node.input.iter().all(|i| !g.is_constant(i, 0)) {
            return false;
        }
        if op != "Shape" {
            stack.extend(node.input.iter().map(String::as_str).filter(|i| !i.is_empty()));
        }
    }
    reaches_mask
}

/// One matched attention block.
struct Block {
    q: String,
    k: String,
    v: String,
    scale: f32,
    output: String,
    /// Where in the node list the fused node goes: the block's last node.
    at: usize,
    /// Q, K and V projected from one input by constant weights: packed into one GEMM.
    packed: Option<Packed>,
}

/// The Q, K and V projections of one block as one: `input · [Wq Wk Wv] + [bq bk bv]`.
struct Packed {
    input: String,
    weights: TensorProto,
    bias: TensorProto,
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = DataType::FLOAT as i32;
    t.dims = dims.to_vec();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

/// One projection `input · W + b`, W [rows, cols] row-major.
struct Projection {
    input: String,
    weights: Vec<f32>,
    bias: Vec<f32>,
    rows: usize,
    cols: usize,
}

/// `name = Add(MatMul(input, W), b)` (either Add order) with constant W [in, out] and b [out].
fn projection(g: &Graph<'_>, name: &str) -> Option<Projection> {
    let add = g.node(name).filter(|n| n.op_type == "Add" && n.domain.is_empty() && n.input.len() == 2)?;
    let (mm, bias) = match (g.node(&add.input[0]), g.node(&add.input[1])) {
        (Some(n), _) if n.op_type == "MatMul" => (n, &add.input[1]),
        (_, Some(n)) if n.op_type == "MatMul" => (n, &add.input[0]),
        _ => return None,
    };
    let weights = g.tensor(mm.input.get(1)?)?;
    let bias = g.tensor(bias)?;
    let (&[rows, cols], &[out]) = (weights.dims.as_slice(), bias.dims.as_slice()) else { return None };
    if out != cols || rows <= 0 || cols <= 0 {
        return None;
    }
    let (weights, bias) = (tensor_floats(weights)?, tensor_floats(bias)?);
    let (rows, cols) = (usize::try_from(rows).ok()?, usize::try_from(cols).ok()?);
    let input = mm.input.first().cloned().filter(|i| !i.is_empty())?;
    (weights.len() == rows * cols && bias.len() == cols).then_some(Projection { input, weights, bias, rows, cols })
}

/// Packs the three projections when they read the same input with same-shaped weights.
fn pack(g: &Graph<'_>, q: &str, k: &str, v: &str, number: usize) -> Option<Packed> {
    let sides = [projection(g, q)?, projection(g, k)?, projection(g, v)?];
    let [first, ..] = &sides;
    if sides.iter().any(|p| p.input != first.input || (p.rows, p.cols) != (first.rows, first.cols)) {
        return None;
    }
    let (rows, cols) = (first.rows, first.cols);
    let mut weights = Vec::with_capacity(rows * cols * 3);
    for r in 0..rows {
        for p in &sides {
            weights.extend_from_slice(&p.weights[r * cols..(r + 1) * cols]);
        }
    }
    let bias: Vec<f32> = sides.iter().flat_map(|p| p.bias.iter().copied()).collect();
    let wide = i64::try_from(3 * cols).ok()?;
    Some(Packed {
        input: first.input.clone(),
        weights: float_tensor(
            &format!("akidb/attention_{number}/qkv_weight"),
            &[i64::try_from(rows).ok()?, wide],
            &weights,
        ),
        bias: float_tensor(&format!("akidb/attention_{number}/qkv_bias"), &[wide], &bias),
    })
}

/// `input → Reshape → Transpose(perm)`: returns the Reshape's input.
fn unshape(g: &Graph<'_>, transposed: &str, perm: &[i64]) -> Option<String> {
    let t = g.node(transposed).filter(|n| n.op_type == "Transpose")?;
    if attr(t, "perm")?.ints != perm {
        return None;
    }
    let r = g.node(t.input.first()?).filter(|n| n.op_type == "Reshape")?;
    r.input.first().cloned()
}

fn match_block(g: &Graph<'_>, softmax: usize, mask_input: &str) -> Option<Block> {
    let sm = &g.nodes[softmax];
    let add = g.node(sm.input.first()?).filter(|n| n.op_type == "Add" && n.input.len() == 2)?;
    let (qk_name, bias) = match g.node(&add.input[0]) {
        Some(n) if n.op_type == "MatMul" => (&add.input[0], &add.input[1]),
        _ => (&add.input[1], &add.input[0]),
    };
    if !is_padding_mask(g, bias, mask_input) {
        return None;
    }
    let qk = g.node(qk_name).filter(|n| n.op_type == "MatMul")?;
    let mut scale = 1.0f32;
    let mut side = |name: &str| -> Option<String> {
        match g.node(name) {
            Some(n) if n.op_type == "Mul" => {
                scale *= g.scalar(n.input.get(1)?)?;
                n.input.first().cloned()
            }
            _ => Some(name.to_string()),
        }
    };
    let qt = side(qk.input.first()?)?;
    let kt = side(qk.input.get(1)?)?;
    let q = unshape(g, &qt, &[0, 2, 1, 3])?;
    let k = unshape(g, &kt, &[0, 2, 3, 1])?;

    // Softmax, then optionally the NaN guard Where(IsNaN(p), 0, p).
    let mut probs = sm.output.first()?.clone();
    if let Some(w) =
        g.consumers_of(&probs).find(|&i| g.nodes[i].op_type == "Where" && g.nodes[i].input.get(2) == Some(&probs))
    {
        let guard = &g.nodes[w];
        if g.node(guard.input.first()?)?.op_type != "IsNaN" {
            return None;
        }
        probs = guard.output.first()?.clone();
    }
    let pv = g
        .consumers_of(&probs)
        .map(|i| &g.nodes[i])
        .find(|n| n.op_type == "MatMul" && n.input.first() == Some(&probs))?;
    let v = unshape(g, pv.input.get(1)?, &[0, 2, 1, 3])?;

    // [batch, heads, seq, head_dim] back to [batch, seq, hidden] through Reshape/Transpose only.
    let mut output = pv.output.first()?.clone();
    let mut at = g.index(&output)?;
    let mut steps = 0;
    while let Some(i) =
        g.consumers_of(&output).find(|&i| matches!(g.nodes[i].op_type.as_str(), "Reshape" | "Transpose"))
    {
        output = g.nodes[i].output.first()?.clone();
        at = i;
        steps += 1;
        if steps > 3 {
            return None;
        }
    }
    if steps == 0 || !scale.is_finite() || scale <= 0.0 {
        return None;
    }
    Some(Block { q, k, v, scale, output, at, packed: None })
}

/// What [`fuse_blocks`] did.
pub(super) struct Fused {
    /// How many attention blocks became one node each.
    pub(super) blocks: usize,
    /// Whether any of them became akidb's own kernel (so akidb's opset is needed).
    pub(super) own_kernel: bool,
}

/// Replaces every attention block it recognises with one fused node (see [`super::fuse_attention`]
/// for which), drops the nodes only those blocks needed, and adds the packed weights as
/// initializers; `None`, with the graph as it was, when no block matches.
pub(super) fn fuse_blocks(
    graph: &mut GraphProto,
    num_heads: usize,
    mask_input: &str,
    op: AttentionOp,
) -> Option<Fused> {
    let pack_qkv = op != AttentionOp::MultiHead;
    let nodes = std::mem::take(&mut graph.node);
    let (blocks, live) = {
        let g = Graph::new(&nodes, &graph.initializer);
        let mut blocks: HashMap<usize, Block> = (0..nodes.len())
            .filter(|&i| nodes[i].op_type == "Softmax" && nodes[i].domain.is_empty())
            .filter_map(|i| match_block(&g, i, mask_input))
            .map(|b| (b.at, b))
            .collect();
        if pack_qkv {
            let mut at: Vec<usize> = blocks.keys().copied().collect();
            at.sort_unstable();
            for (number, i) in at.into_iter().enumerate() {
                if let Some(b) = blocks.get_mut(&i) {
                    b.packed = pack(&g, &b.q, &b.k, &b.v, number);
                }
            }
        }

        // Dead-node elimination: keep what the graph outputs still need.
        let mut live = vec![false; nodes.len()];
        let mut stack: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        while let Some(name) = stack.pop() {
            if let Some(i) = g.index(name) {
                if !live[i] {
                    live[i] = true;
                    match blocks.get(&i) {
                        Some(Block { packed: Some(p), .. }) => stack.push(p.input.as_str()),
                        Some(b) => stack.extend([b.q.as_str(), b.k.as_str(), b.v.as_str()]),
                        None => stack.extend(nodes[i].input.iter().map(String::as_str)),
                    }
                }
            }
        }
        (blocks, live)
    };
    if blocks.is_empty() {
        graph.node = nodes;
        return None;
    }
    let mut blocks = blocks;

    // The original order, each block's fused node in place of its last node.
    let mut out = Vec::with_capacity(nodes.len());
    out.push(node("Cast", "", "akidb/mask_cast", &[mask_input], &[MASK], vec![int_attr("to", DataType::INT32 as i64)]));
    let mut order: Vec<usize> = blocks.keys().copied().collect();
    order.sort_unstable();
    let mut packed_weights = Vec::new();
    let mut own_kernel = false;
    for (i, n) in nodes.into_iter().enumerate().filter(|(i, _)| live[*i]) {
        match blocks.get_mut(&i) {
            Some(Block { packed: Some(p), scale, output, .. }) => {
                let number = order.binary_search(&i).unwrap_or_default();
                let (weights, bias) = (p.weights.name.clone(), p.bias.name.clone());
                let hidden = p.bias.dims.first().map_or(0, |&w| usize::try_from(w).unwrap_or(0) / 3);
                packed_weights.push(std::mem::take(&mut p.weights));
                packed_weights.push(std::mem::take(&mut p.bias));
                if op == AttentionOp::Akidb
                    && hidden % num_heads == 0
                    && akidb_kernels::supported_head_size(hidden / num_heads)
                {
                    own_kernel = true;
                    let qkv = format!("akidb/attention_{number}/qkv");
                    out.push(node("MatMul", "", &format!("{qkv}_matmul"), &[&p.input, &weights], &[&qkv], vec![]));
                    out.push(node(
                        akidb_kernels::ATTENTION,
                        akidb_kernels::DOMAIN,
                        &format!("akidb/attention_{number}"),
                        &[&qkv, &bias, MASK],
                        &[output],
                        vec![int_attr("num_heads", num_heads as i64), float_attr("scale", *scale)],
                    ));
                    continue;
                }
                out.push(node(
                    "Attention",
                    "com.microsoft",
                    &format!("akidb/attention_{number}"),
                    &[&p.input, &weights, &bias, MASK],
                    &[output],
                    vec![int_attr("num_heads", num_heads as i64), float_attr("scale", *scale)],
                ))
            }
            Some(b) => {
                let number = order.binary_search(&i).unwrap_or_default();
                out.push(node(
                    "MultiHeadAttention",
                    "com.microsoft",
                    &format!("akidb/attention_{number}"),
                    &[&b.q, &b.k, &b.v, "", MASK],
                    &[&b.output],
                    vec![int_attr("num_heads", num_heads as i64), float_attr("scale", b.scale)],
                ))
            }
            None => out.push(n),
        }
    }
    graph.node = out;
    // The separate projection weights are read by no node now; `prune` drops them at the end.
    graph.initializer.extend(packed_weights);
    Some(Fused { blocks: blocks.len(), own_kernel })
}

#[cfg(test)]
mod tests {
    use onnx_protobuf::{
        attribute_proto::AttributeType, AttributeProto, Message, ModelProto, NodeProto, ValueInfoProto,
    };

    use super::{
        super::{decode_model, fuse_attention},
        *,
    };

    fn value_info(name: &str) -> ValueInfoProto {
        let mut v = ValueInfoProto::new();
        v.name = name.to_string();
        v
    }

    fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.to_string();
        a.type_ = AttributeType::INTS.into();
        a.ints = values.to_vec();
        a
    }

    fn constant(output: &str, value: f32) -> NodeProto {
        let mut t = TensorProto::new();
        t.data_type = DataType::FLOAT as i32;
        t.float_data = vec![value];
        let mut a = AttributeProto::new();
        a.name = "value".into();
        a.type_ = AttributeType::TENSOR.into();
        a.t = Some(t).into();
        node("Constant", "", output, &[], &[output], vec![a])
    }

    fn op(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        node(op, "", output, inputs, &[output], vec![])
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mask {
        /// From `attention_mask` only, with a bounds check against a constant as exports have.
        Padding,
        /// Plus a lower triangle (`Trilu`).
        CausalTriangle,
        /// Plus `kv_idx <= q_idx` over two position ranges.
        CausalPositions,
    }

    /// One SDPA-style attention block over input `x` [batch, seq, hidden], its additive bias
    /// built from `attention_mask`, plus a causal part when asked.
    fn attention_graph(mask: Mask) -> ModelProto {
        let mut nodes = vec![
            constant("scale", 0.5),
            constant("one", 1.0),
            constant("big_negative", -10000.0),
            constant("zero", 0.0),
            constant("step", 1.0),
            op("Reshape", &["x", "heads_shape"], "q_r"),
            node("Transpose", "", "q_t", &["q_r"], &["q_t"], vec![ints_attr("perm", &[0, 2, 1, 3])]),
            op("Reshape", &["x", "heads_shape"], "k_r"),
            node("Transpose", "", "k_t", &["k_r"], &["k_t"], vec![ints_attr("perm", &[0, 2, 3, 1])]),
            op("Reshape", &["x", "heads_shape"], "v_r"),
            node("Transpose", "", "v_t", &["v_r"], &["v_t"], vec![ints_attr("perm", &[0, 2, 1, 3])]),
            op("Mul", &["q_t", "scale"], "q_s"),
            op("Mul", &["k_t", "scale"], "k_s"),
            op("MatMul", &["q_s", "k_s"], "scores"),
            op("Unsqueeze", &["attention_mask", "axes"], "mask_4d"),
            node("Cast", "", "mask_f", &["mask_4d"], &["mask_f"], vec![int_attr("to", DataType::FLOAT as i64)]),
            op("Sub", &["one", "mask_f"], "inverted"),
            op("Mul", &["inverted", "big_negative"], "padding_raw"),
            // A bounds check of positions against a constant, as transformers' mask code has.
            op("Shape", &["attention_mask"], "mask_shape"),
            op("Gather", &["mask_shape", "seq_axis"], "seq_len"),
            op("Range", &["zero", "seq_len", "step"], "kv_idx"),
            op("GreaterOrEqual", &["kv_idx", "zero"], "in_bounds"),
            op("Where", &["in_bounds", "padding_raw", "big_negative"], "padding"),
        ];
        let causal = match mask {
            Mask::Padding => None,
            Mask::CausalTriangle => Some(vec![
                op("ConstantOfShape", &["square"], "ones_square"),
                op("Trilu", &["ones_square"], "lower"),
                op("Sub", &["one", "lower"], "upper"),
                op("Mul", &["upper", "big_negative"], "causal"),
            ]),
            Mask::CausalPositions => Some(vec![
                op("Unsqueeze", &["kv_idx", "axes"], "kv_row"),
                op("Unsqueeze", &["kv_idx", "axes"], "q_col"),
                op("LessOrEqual", &["kv_row", "q_col"], "visible"),
                op("Where", &["visible", "one", "big_negative"], "causal"),
            ]),
        };
        let bias = match causal {
            Some(part) => {
                nodes.extend(part);
                nodes.push(op("Add", &["padding", "causal"], "bias"));
                "bias"
            }
            None => "padding",
        };
        nodes.extend([
            op("Add", &["scores", bias], "biased"),
            op("Softmax", &["biased"], "probs"),
            op("MatMul", &["probs", "v_t"], "context"),
            node("Transpose", "", "context_t", &["context"], &["context_t"], vec![ints_attr("perm", &[0, 2, 1, 3])]),
            op("Reshape", &["context_t", "hidden_shape"], "y"),
        ]);
        let mut graph = GraphProto::new();
        graph.node = nodes;
        graph.input = vec![value_info("x"), value_info("attention_mask")];
        graph.output = vec![value_info("y")];
        let mut model = ModelProto::new();
        model.graph = Some(graph).into();
        model
    }

    #[test]
    fn a_padding_mask_block_is_fused_into_one_node() {
        let r = fuse_attention(attention_graph(Mask::Padding), 2, "attention_mask", AttentionOp::Packed)
            .unwrap()
            .expect("the block matches");
        assert_eq!(r.fused, 1);
        let nodes = &r.model.graph.as_ref().unwrap().node;
        let mha: Vec<&NodeProto> = nodes.iter().filter(|n| n.op_type == "MultiHeadAttention").collect();
        assert_eq!(mha.len(), 1);
        assert_eq!(mha[0].input, ["x", "x", "x", "", MASK]);
        assert_eq!(mha[0].output, ["y"]);
        assert_eq!(attr(mha[0], "scale").map(|a| a.f), Some(0.25), "both sides' Mul scales multiply");
        assert!(!nodes.iter().any(|n| n.op_type == "Softmax"), "the unfused block is gone");
        assert!(r.model.opset_import.iter().any(|o| o.domain == "com.microsoft"));
        // It survives a round trip through the wire format.
        let again = decode_model(&r.model.write_to_bytes().unwrap()).unwrap();
        assert_eq!(again.graph.node.len(), nodes.len());
    }

    fn initializer(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.to_string();
        t.data_type = DataType::FLOAT as i32;
        t.dims = dims.to_vec();
        t.float_data = values.to_vec();
        t
    }

    /// The block of [`attention_graph`] with Q, K and V projected from `h` by 2×2 weights.
    fn projected_graph() -> ModelProto {
        let mut model = attention_graph(Mask::Padding);
        let graph = model.graph.as_mut().unwrap();
        for n in graph.node.iter_mut().filter(|n| n.op_type == "Reshape" && n.input[0] == "x") {
            let side = &n.output[0][..1];
            n.input[0] = format!("{side}_proj");
        }
        for (i, side) in ["q", "k", "v"].iter().enumerate() {
            let base = 10.0 * i as f32;
            graph.node.insert(0, op("MatMul", &["h", &format!("w{side}")], &format!("{side}_mm")));
            graph.node.insert(1, op("Add", &[&format!("{side}_mm"), &format!("b{side}")], &format!("{side}_proj")));
            graph.initializer.push(initializer(
                &format!("w{side}"),
                &[2, 2],
                &[base, base + 1.0, base + 2.0, base + 3.0],
            ));
            graph.initializer.push(initializer(&format!("b{side}"), &[2], &[base + 4.0, base + 5.0]));
        }
        graph.input = vec![value_info("h"), value_info("attention_mask")];
        model
    }

    #[test]
    fn projections_of_one_input_are_packed_into_one_attention_node() {
        let r = fuse_attention(projected_graph(), 2, "attention_mask", AttentionOp::Packed)
            .unwrap()
            .expect("the block matches");
        let graph = r.model.graph.as_ref().unwrap();
        let fused: Vec<&NodeProto> = graph.node.iter().filter(|n| n.domain == "com.microsoft").collect();
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].op_type, "Attention");
        let weights = "akidb/attention_0/qkv_weight";
        assert_eq!(fused[0].input, ["h", weights, "akidb/attention_0/qkv_bias", MASK]);
        assert_eq!(fused[0].output, ["y"]);
        assert!(!graph.node.iter().any(|n| n.op_type == "MatMul"), "the three projections are gone");
        let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [weights, "akidb/attention_0/qkv_bias"], "the separate weights are dropped");
        let w = &graph.initializer[0];
        assert_eq!(w.dims, [2, 6]);
        // Row by row: Wq's row, then Wk's, then Wv's.
        let expected = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 2.0, 3.0, 12.0, 13.0, 22.0, 23.0];
        assert_eq!(tensor_floats(w).unwrap(), expected);
        assert_eq!(tensor_floats(&graph.initializer[1]).unwrap(), [4.0, 5.0, 14.0, 15.0, 24.0, 25.0]);

        // Without packing, the same block is one MultiHeadAttention over the projections.
        let r = fuse_attention(projected_graph(), 2, "attention_mask", AttentionOp::MultiHead)
            .unwrap()
            .expect("the block matches");
        let graph = r.model.graph.as_ref().unwrap();
        assert!(graph.node.iter().any(|n| n.op_type == "MultiHeadAttention"));
        assert_eq!(graph.node.iter().filter(|n| n.op_type == "MatMul").count(), 3);
    }

    #[test]
    fn a_causal_plus_padding_mask_is_not_fused() {
        for mask in [Mask::CausalTriangle, Mask::CausalPositions] {
            assert!(fuse_attention(attention_graph(mask), 2, "attention_mask", AttentionOp::Packed).unwrap().is_none());
        }
    }

    #[test]
    fn a_bias_not_derived_from_the_mask_is_not_fused() {
        assert!(fuse_attention(attention_graph(Mask::Padding), 2, "x", AttentionOp::Packed).unwrap().is_none());
        let mut model = attention_graph(Mask::Padding);
        model.graph.as_mut().unwrap().input.push(value_info("other_mask"));
        assert!(fuse_attention(model, 2, "other_mask", AttentionOp::Packed).unwrap().is_none());
    }
}
