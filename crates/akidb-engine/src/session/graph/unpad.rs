//! The encoder on real tokens only: an `ai.akidb.Unpad` where the first attention block's input
//! enters and an `ai.akidb.Repad` where the encoder's result leaves, so every row-wise node between
//! skips the padding of a mixed-length batch. Only done when the whole region is provably
//! row-wise with one entrance and one exit.

use std::collections::HashSet;

use onnx_protobuf::{GraphProto, NodeProto};

use super::{index::Graph, int_attr, node, MASK};

/// Runs the encoder on real tokens only: an `Unpad` where the first attention block's input
/// enters, a `Repad` where the encoder's one result leaves, and the attention nodes between told
/// their input is unpadded. Applied only when every node between is row-wise (a `MatMul` by a
/// constant matrix, akidb's `SkipLayerNorm` and `BiasGelu`) or akidb's attention, and the
/// region has exactly one entrance and one exit; otherwise the graph is left as it is.
pub(super) fn unpad_encoder(graph: &mut GraphProto) -> bool {
    use akidb_kernels::{ATTENTION, BIAS_GELU, DOMAIN, REPAD, SKIP_LAYER_NORM, UNPAD};
    let (entrance, exit, region) = {
        let g = Graph::new(&graph.node, &graph.initializer);
        let row_wise = |n: &NodeProto| {
            (n.op_type == "MatMul"
                && n.domain.is_empty()
                && n.input.len() == 2
                && g.tensor(&n.input[1]).is_some_and(|w| w.dims.len() == 2))
                || (n.domain == DOMAIN && [ATTENTION, SKIP_LAYER_NORM, BIAS_GELU].contains(&n.op_type.as_str()))
        };
        let Some(first) = graph.node.iter().find(|n| n.domain == DOMAIN && n.op_type == ATTENTION) else {
            return false;
        };
        let Some(entrance) = g.node(&first.input[0]).and_then(|mm| mm.input.first()).cloned() else { return false };
        // Every node reachable from the entrance through row-wise nodes.
        let mut region = HashSet::new();
        let mut exits = HashSet::new();
        let mut stack = vec![entrance.as_str()];
        while let Some(name) = stack.pop() {
            let readers: Vec<usize> = g.consumers_of(name).collect();
            if (readers.is_empty() || graph.output.iter().any(|o| o.name == name)) && name != entrance {
                exits.insert(name);
            }
            for i in readers {
                if row_wise(&graph.node[i]) {
                    if region.insert(i) {
                        stack.extend(graph.node[i].output.iter().map(String::as_str));
                    }
                } else if name == entrance {
                    return false; // the padded input is needed elsewhere too
                } else {
                    exits.insert(name);
                }
            }
        }
        // What the region reads from outside: the entrance, constants and the mask only.
        let produced: HashSet<&str> =
            region.iter().flat_map(|&i| graph.node[i].output.iter().map(String::as_str)).collect();
        let closed = region.iter().all(|&i| {
            graph.node[i]
                .input
                .iter()
                .all(|x| x == &entrance || x == MASK || produced.contains(x.as_str()) || g.is_constant(x, 0))
        });
        let exit = match exits.into_iter().collect::<Vec<_>>().as_slice() {
            [one] if closed => one.to_string(),
            _ => return false,
        };
        (entrance, exit, region)
    };
    let (unpadded_in, unpadded_out) = ("akidb/unpadded_input", "akidb/unpadded_output");
    let mut nodes = Vec::with_capacity(graph.node.len() + 2);
    let mut entered = false;
    for (i, mut n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        let inside = region.contains(&i);
        if inside && !entered {
            entered = true;
            nodes.push(node(UNPAD, DOMAIN, "akidb/unpad", &[&entrance, MASK], &[unpadded_in], vec![]));
        }
        if inside {
            for x in n.input.iter_mut().filter(|x| **x == entrance) {
                *x = unpadded_in.to_string();
            }
            if n.op_type == ATTENTION && n.domain == DOMAIN {
                n.attribute.push(int_attr("unpadded", 1));
            }
        }
        let leaves = inside && n.output.contains(&exit);
        if leaves {
            for o in n.output.iter_mut().filter(|o| **o == exit) {
                *o = unpadded_out.to_string();
            }
        }
        nodes.push(n);
        if leaves {
            nodes.push(node(REPAD, DOMAIN, "akidb/repad", &[unpadded_out, MASK], &[&exit], vec![]));
        }
    }
    graph.node = nodes;
    true
}
