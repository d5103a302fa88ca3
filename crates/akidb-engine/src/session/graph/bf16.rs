//! `--precision bf16`'s rewrite: every `MatMul` of an activation by a constant `[k, n]` float
//! weight becomes akidb's `MatMulBf16`, reading the weight rounded to bf16 and packed for the
//! kernel here, once (`akidb_kernels::bf16::pack`), as a uint16 initializer. The float weights are
//! then unread and dropped, so a bf16 graph holds half the weight bytes: the fp32 weights never
//! reach memory when bf16 runs. Everything else (LayerNorm, softmax, the residual stream,
//! pooling) stays fp32.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{tensor_proto::DataType, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

use super::{index::tensor_floats, int_attr, prune};

/// Rewrites `model`'s matrix products by constant weights to bf16; returns how many.
pub fn to_bf16(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else { return 0 };
    // Only the second inputs of plain MatMuls are read as floats (not, say, the word embeddings).
    let operands: HashSet<&str> = graph.node.iter().filter(|n| plain_matmul(n)).map(|n| n.input[1].as_str()).collect();
    let packed: HashMap<String, (usize, usize, TensorProto)> = graph
        .initializer
        .iter()
        .filter(|t| operands.contains(t.name.as_str()))
        .filter_map(|t| {
            let [k, n] = t.dims.as_slice() else { return None };
            let (k, n) = (usize::try_from(*k).ok()?, usize::try_from(*n).ok()?);
            let values = tensor_floats(t).filter(|v| v.len() == k * n && k > 0 && n > 0)?;
            let bf16 = akidb_kernels::bf16::pack(&values, k, n);
            let mut packed = TensorProto::new();
            packed.name = format!("{}/bf16", t.name);
            packed.data_type = DataType::UINT16 as i32;
            packed.dims = vec![bf16.len() as i64];
            packed.raw_data = bf16.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some((t.name.clone(), (k, n, packed)))
        })
        .collect();
    let mut count = 0;
    for node in &mut graph.node {
        if !plain_matmul(node) {
            continue;
        }
        let Some((k, n, packed)) = packed.get(&node.input[1]) else { continue };
        node.op_type = akidb_kernels::MATMUL_BF16.to_string();
        node.domain = akidb_kernels::DOMAIN.to_string();
        node.input[1] = packed.name.clone();
        node.attribute = vec![int_attr("k", *k as i64), int_attr("n", *n as i64)];
        count += 1;
    }
    graph.initializer.extend(packed.into_values().map(|(_, _, t)| t));
    // The float weights now have no reader.
    prune::drop_unread(graph);
    if count > 0 && !model.opset_import.iter().any(|o| o.domain == akidb_kernels::DOMAIN) {
        let mut opset = OperatorSetIdProto::new();
        opset.domain = akidb_kernels::DOMAIN.to_string();
        opset.version = 1;
        model.opset_import.push(opset);
    }
    count
}

/// ONNX's own two-input `MatMul`.
fn plain_matmul(node: &NodeProto) -> bool {
    node.op_type == "MatMul" && node.domain.is_empty() && node.input.len() == 2
}
