//! The rewrite's last pass: drops what the fused-away nodes leave behind with no reader — their
//! initializers, the `Constant` nodes that fed them and `value_info` notes on values no node reads.
//! ONNX Runtime would otherwise drop the initializers itself, with a warning for each, on every
//! first run.

use std::collections::HashSet;

use onnx_protobuf::{GraphProto, NodeProto};

/// Every name the nodes read, their subgraphs' too (an `If`/`Loop`/`Scan` body may read a value of
/// the enclosing graph without listing it as an input).
fn reads<'a>(nodes: &'a [NodeProto], read: &mut HashSet<&'a str>) {
    for n in nodes {
        read.extend(n.input.iter().map(String::as_str).filter(|i| !i.is_empty()));
        for a in &n.attribute {
            for g in a.g.as_ref().into_iter().chain(&a.graphs) {
                reads(&g.node, read);
                read.extend(g.output.iter().map(|o| o.name.as_str()));
            }
        }
    }
}

/// Keeps the items of `items` whose flag in `keep` (one per item, in order) is set.
fn retain_flagged<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut keep = keep.iter();
    items.retain(|_| keep.next().copied().unwrap_or(true));
}

/// Removes, until nothing more goes, every initializer and `value_info` entry no node reads that is
/// not a graph output, and every `Constant` node none of whose outputs is read. Only `Constant`
/// nodes: any other node, even one nobody reads, is left to ONNX Runtime. An initializer that is
/// also a graph input is kept (it is a default the caller may override). Returns how many entries
/// went.
pub(super) fn drop_unread(graph: &mut GraphProto) -> usize {
    let mut dropped = 0;
    loop {
        let (nodes, initializers, infos) = {
            let mut read = HashSet::new();
            reads(&graph.node, &mut read);
            read.extend(graph.output.iter().map(|o| o.name.as_str()));
            let inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
            let nodes: Vec<bool> = graph
                .node
                .iter()
                .map(|n| {
                    let constant = n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx");
                    !constant || n.output.iter().any(|o| read.contains(o.as_str()))
                })
                .collect();
            let kept = |name: &str| read.contains(name) || inputs.contains(name);
            let initializers: Vec<bool> = graph.initializer.iter().map(|t| kept(&t.name)).collect();
            let infos: Vec<bool> = graph.value_info.iter().map(|v| kept(&v.name)).collect();
            (nodes, initializers, infos)
        };
        let going = [&nodes, &initializers, &infos].iter().map(|k| k.iter().filter(|&&k| !k).count()).sum::<usize>();
        if going == 0 {
            return dropped;
        }
        retain_flagged(&mut graph.node, &nodes);
        retain_flagged(&mut graph.initializer, &initializers);
        retain_flagged(&mut graph.value_info, &infos);
        dropped += going;
    }
}

#[cfg(test)]
mod tests {
    use onnx_protobuf::{attribute_proto::AttributeType, AttributeProto, TensorProto, ValueInfoProto};

    use super::{super::node, *};

    fn value_info(name: &str) -> ValueInfoProto {
        let mut v = ValueInfoProto::new();
        v.name = name.to_string();
        v
    }

    fn tensor(name: &str) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.to_string();
        t.float_data = vec![1.0];
        t
    }

    fn names<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        items.into_iter().collect()
    }

    #[test]
    fn what_no_node_reads_is_dropped_and_what_one_reads_is_kept() {
        let mut body = GraphProto::new();
        body.node = vec![node("Identity", "", "inner", &["from_outside"], &["inner_out"], vec![])];
        let mut branch = AttributeProto::new();
        branch.name = "then_branch".into();
        branch.type_ = AttributeType::GRAPH.into();
        branch.g = Some(body).into();

        let mut graph = GraphProto::new();
        graph.input = vec![value_info("x"), value_info("overridable")];
        graph.output = vec![value_info("y"), value_info("kept_constant")];
        graph.node = vec![
            node("Constant", "", "dead_constant", &[], &["dead_constant"], vec![]),
            node("Constant", "", "kept_constant", &[], &["kept_constant"], vec![]),
            node("Constant", "", "read_constant", &[], &["read_constant"], vec![]),
            node("Add", "", "add", &["x", "weight"], &["sum"], vec![]),
            node("Mul", "", "mul", &["sum", "read_constant"], &["y"], vec![]),
            node("If", "", "if", &["cond"], &["branch_out"], vec![branch]),
            // Read by nobody, but not a constant: ONNX Runtime's to judge.
            node("Shape", "", "dead_shape", &["x"], &["unread_shape"], vec![]),
        ];
        graph.initializer =
            ["weight", "stale_weight", "from_outside", "overridable", "y"].into_iter().map(tensor).collect();
        graph.value_info = ["sum", "stale_info", "unread_shape"].into_iter().map(value_info).collect();

        assert_eq!(drop_unread(&mut graph), 4);
        let nodes = names(graph.node.iter().map(|n| n.name.as_str()));
        assert_eq!(nodes, ["kept_constant", "read_constant", "add", "mul", "if", "dead_shape"]);
        let initializers = names(graph.initializer.iter().map(|t| t.name.as_str()));
        assert_eq!(initializers, ["weight", "from_outside", "overridable", "y"]);
        assert_eq!(names(graph.value_info.iter().map(|v| v.name.as_str())), ["sum"]);
        assert_eq!(drop_unread(&mut graph), 0, "nothing left to drop");
    }
}
