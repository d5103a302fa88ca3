//! The graph index every pattern match reads through: which node produces each value, which nodes
//! read it, and what a constant (initializer or `Constant` node) holds. The node list is a flat
//! `Vec`; without this index each match would rescan it.

use std::collections::HashMap;

use onnx_protobuf::{tensor_proto::DataType, AttributeProto, NodeProto, TensorProto};

pub(super) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// A float scalar tensor: `float_data` or 4 bytes of `raw_data`.
fn tensor_scalar(tensor: &TensorProto) -> Option<f32> {
    if tensor.data_type != DataType::FLOAT as i32 {
        return None;
    }
    match (tensor.float_data.as_slice(), tensor.raw_data.as_slice()) {
        ([v], _) => Some(*v),
        ([], &[a, b, c, d]) => Some(f32::from_le_bytes([a, b, c, d])),
        _ => None,
    }
}

/// A float tensor's values, from `float_data` or little-endian `raw_data`.
pub(super) fn tensor_floats(tensor: &TensorProto) -> Option<Vec<f32>> {
    if tensor.data_type != DataType::FLOAT as i32 || tensor.data_location.enum_value_or_default() != Default::default()
    {
        return None;
    }
    if !tensor.float_data.is_empty() {
        return Some(tensor.float_data.clone());
    }
    let raw = tensor.raw_data.as_slice();
    raw.len()
        .is_multiple_of(4)
        .then(|| raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// A node list indexed by the values its nodes produce and read.
pub(super) struct Graph<'a> {
    pub(super) nodes: &'a [NodeProto],
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    pub(super) fn new(nodes: &'a [NodeProto], initializer: &'a [TensorProto]) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for input in &n.input {
                consumers.entry(input.as_str()).or_default().push(i);
            }
        }
        let initializers = initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Graph { nodes, producer, consumers, initializers }
    }

    pub(super) fn node(&self, output: &str) -> Option<&'a NodeProto> {
        self.producer.get(output).map(|&i| &self.nodes[i])
    }

    pub(super) fn index(&self, output: &str) -> Option<usize> {
        self.producer.get(output).copied()
    }

    pub(super) fn scalar(&self, name: &str) -> Option<f32> {
        match self.node(name) {
            Some(n) if n.op_type == "Constant" => attr(n, "value").and_then(|a| a.t.as_ref()).and_then(tensor_scalar),
            Some(_) => None,
            None => self.initializers.get(name).and_then(|t| tensor_scalar(t)),
        }
    }

    /// A constant tensor: an initializer or a `Constant` node's `value`, also through `Identity`
    /// (exports share equal weights that way).
    pub(super) fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        match self.node(name) {
            Some(n) if n.op_type == "Constant" => attr(n, "value").and_then(|a| a.t.as_ref()),
            Some(n) if n.op_type == "Identity" && n.domain.is_empty() => self.tensor(n.input.first()?),
            Some(_) => None,
            None => self.initializers.get(name).copied(),
        }
    }

    pub(super) fn consumers_of(&self, output: &str) -> impl Iterator<Item = usize> + '_ {
        self.consumers.get(output).into_iter().flatten().copied()
    }

    /// Is `name` a constant: a `Constant` node, an initializer, or computed from constants only?
    pub(super) fn is_constant(&self, name: &str, depth: usize) -> bool {
        match self.node(name) {
            None => self.initializers.contains_key(name),
            Some(n) if n.op_type == "Constant" => true,
            Some(n) => {
                depth < 16
                    && !n.input.is_empty()
                    && n.input.iter().filter(|i| !i.is_empty()).all(|i| self.is_constant(i, depth + 1))
            }
        }
    }
}
