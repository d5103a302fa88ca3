//! Rewrites the transformer's ONNX graph before ONNX Runtime loads it.
//!
//! Exports made through PyTorch's scaled-dot-product attention spell each attention block as
//! ~20 generic ops: reshapes and transposes of Q, K and V, two scaling Muls, a mask `Where`, an
//! `Add`, `Softmax`, a NaN guard (`IsNaN` + `Where` over the whole [batch, heads, seq, seq]
//! tensor) and two MatMuls. ONNX Runtime's own fusions do not recognise that pattern, and the
//! element-wise passes over the score tensor cost as much as the matrix products. Each block is
//! replaced by one `com.microsoft.MultiHeadAttention` node fed with a key-padding mask, which
//! computes the same thing in one kernel. The NaN guard only matters for rows whose keys are all
//! masked, which cannot happen here: `[CLS]` is always a real token.
//!
//! The rewrite edits the protobuf at the wire level: fields it does not touch (weights included)
//! are copied byte for byte. When a block does not match the pattern exactly it is left alone.

use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the ONNX file is not a valid protobuf ({0})")]
    Malformed(&'static str),
}

/// The rewritten model, and how many attention blocks were fused.
pub struct Rewritten {
    pub model: Vec<u8>,
    pub fused: usize,
}

// --- protobuf wire format -------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Field<'a> {
    number: u64,
    value: Value<'a>,
    /// The whole field, tag included, for verbatim copies.
    raw: &'a [u8],
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, GraphError> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(GraphError::Malformed("truncated varint"))?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(GraphError::Malformed("varint too long"))
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, GraphError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let value = match tag & 7 {
            0 => Value::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| GraphError::Malformed("length"))?;
                let end = pos
                    .checked_add(len)
                    .filter(|&e| e <= buf.len())
                    .ok_or(GraphError::Malformed("length past the end"))?;
                let bytes = &buf[pos..end];
                pos = end;
                Value::Bytes(bytes)
            }
            5 => {
                let b = buf.get(pos..pos + 4).ok_or(GraphError::Malformed("truncated fixed32"))?;
                pos += 4;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(GraphError::Malformed("unsupported wire type")),
        };
        if pos > buf.len() {
            return Err(GraphError::Malformed("field past the end"));
        }
        out.push(Field { number: tag >> 3, value, raw: &buf[start..pos] });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// --- the parts of ONNX the rewrite reads ----------------------------------------------------

struct Node<'a> {
    /// The NodeProto's bytes, copied verbatim when the node is kept.
    raw: &'a [u8],
    op: String,
    domain: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: Vec<&'a [u8]>,
}

fn parse_node(body: &[u8]) -> Result<Node<'_>, GraphError> {
    let mut node = Node {
        raw: body,
        op: String::new(),
        domain: String::new(),
        inputs: vec![],
        outputs: vec![],
        attributes: vec![],
    };
    for f in fields(body)? {
        if let Value::Bytes(b) = f.value {
            match f.number {
                1 => node.inputs.push(text(b)),
                2 => node.outputs.push(text(b)),
                4 => node.op = text(b),
                5 => node.attributes.push(b),
                7 => node.domain = text(b),
                _ => {}
            }
        }
    }
    Ok(node)
}

/// An attribute's integer list (`ints`, packed or not).
fn attr_ints(node: &Node<'_>, name: &str) -> Option<Vec<i64>> {
    for a in &node.attributes {
        let fs = fields(a).ok()?;
        if !fs.iter().any(|f| f.number == 1 && matches!(f.value, Value::Bytes(b) if b == name.as_bytes())) {
            continue;
        }
        let mut out = Vec::new();
        for f in &fs {
            match (f.number, f.value) {
                (8, Value::Varint(v)) => out.push(v as i64),
                (8, Value::Bytes(packed)) => {
                    let mut pos = 0;
                    while pos < packed.len() {
                        out.push(varint(packed, &mut pos).ok()? as i64);
                    }
                }
                _ => {}
            }
        }
        return Some(out);
    }
    None
}

/// A float scalar tensor (TensorProto): `float_data` or 4 bytes of `raw_data`.
fn tensor_scalar(tensor: &[u8]) -> Option<f32> {
    let fs = fields(tensor).ok()?;
    let is_float = fs.iter().any(|f| f.number == 2 && matches!(f.value, Value::Varint(1)));
    if !is_float {
        return None;
    }
    for f in &fs {
        match (f.number, f.value) {
            (4, Value::Fixed32(bits)) => return Some(f32::from_bits(bits)),
            (4, Value::Bytes(b)) | (9, Value::Bytes(b)) if b.len() == 4 => {
                return Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => {}
        }
    }
    None
}

fn constant_value(node: &Node<'_>) -> Option<f32> {
    if node.op != "Constant" {
        return None;
    }
    node.attributes.iter().find_map(|a| {
        let fs = fields(a).ok()?;
        fs.iter().find_map(|f| match (f.number, f.value) {
            (5, Value::Bytes(t)) => tensor_scalar(t),
            _ => None,
        })
    })
}

struct Graph<'a> {
    nodes: Vec<Node<'a>>,
    producer: HashMap<String, usize>,
    consumers: HashMap<String, Vec<usize>>,
    initializers: HashMap<String, &'a [u8]>,
}

impl<'a> Graph<'a> {
    fn node(&self, output: &str) -> Option<&Node<'a>> {
        self.producer.get(output).map(|&i| &self.nodes[i])
    }

    fn index(&self, output: &str) -> Option<usize> {
        self.producer.get(output).copied()
    }

    fn scalar(&self, name: &str) -> Option<f32> {
        match self.node(name) {
            Some(n) => constant_value(n),
            None => self.initializers.get(name).and_then(|t| tensor_scalar(t)),
        }
    }

    fn consumers_of(&self, output: &str) -> impl Iterator<Item = usize> + '_ {
        self.consumers.get(output).into_iter().flatten().copied()
    }

    /// Does `name` depend on the graph input `input` within a few steps?
    fn reaches(&self, name: &str, input: &str) -> bool {
        let mut stack = vec![name.to_string()];
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if n == input {
                return true;
            }
            if seen.len() > 64 || !seen.insert(n.clone()) {
                continue;
            }
            if let Some(node) = self.node(&n) {
                stack.extend(node.inputs.iter().cloned());
            }
        }
        false
    }
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
}

/// `input → Reshape → Transpose(perm)`: returns the Reshape's input.
fn unshape(g: &Graph<'_>, transposed: &str, perm: &[i64]) -> Option<String> {
    let t = g.node(transposed).filter(|n| n.op == "Transpose")?;
    if attr_ints(t, "perm")? != perm {
        return None;
    }
    let r = g.node(t.inputs.first()?).filter(|n| n.op == "Reshape")?;
    r.inputs.first().cloned()
}

fn match_block(g: &Graph<'_>, softmax: usize, mask_input: &str) -> Option<Block> {
    let sm = &g.nodes[softmax];
    let add = g.node(sm.inputs.first()?).filter(|n| n.op == "Add" && n.inputs.len() == 2)?;
    let (qk_name, bias) = match g.node(&add.inputs[0]) {
        Some(n) if n.op == "MatMul" => (&add.inputs[0], &add.inputs[1]),
        _ => (&add.inputs[1], &add.inputs[0]),
    };
    // The additive bias must be the padding mask, nothing else (no causal part).
    if !g.reaches(bias, mask_input) {
        return None;
    }
    let qk = g.node(qk_name).filter(|n| n.op == "MatMul")?;
    let mut scale = 1.0f32;
    let mut side = |name: &str| -> Option<String> {
        match g.node(name) {
            Some(n) if n.op == "Mul" => {
                scale *= g.scalar(n.inputs.get(1)?)?;
                n.inputs.first().cloned()
            }
            _ => Some(name.to_string()),
        }
    };
    let qt = side(qk.inputs.first()?)?;
    let kt = side(qk.inputs.get(1)?)?;
    let q = unshape(g, &qt, &[0, 2, 1, 3])?;
    let k = unshape(g, &kt, &[0, 2, 3, 1])?;

    // Softmax, then optionally the NaN guard Where(IsNaN(p), 0, p).
    let mut probs = sm.outputs.first()?.clone();
    if let Some(w) =
        g.consumers_of(&probs).find(|&i| g.nodes[i].op == "Where" && g.nodes[i].inputs.get(2) == Some(&probs))
    {
        let guard = &g.nodes[w];
        let cond = g.node(guard.inputs.first()?)?;
        if cond.op != "IsNaN" {
            return None;
        }
        probs = guard.outputs.first()?.clone();
    }
    let pv =
        g.consumers_of(&probs).map(|i| &g.nodes[i]).find(|n| n.op == "MatMul" && n.inputs.first() == Some(&probs))?;
    let v = unshape(g, pv.inputs.get(1)?, &[0, 2, 1, 3])?;

    // [batch, heads, seq, head_dim] back to [batch, seq, hidden] through Reshape/Transpose only.
    let mut output = pv.outputs.first()?.clone();
    let mut at = g.index(&output)?;
    let mut steps = 0;
    while let Some(i) = g.consumers_of(&output).find(|&i| matches!(g.nodes[i].op.as_str(), "Reshape" | "Transpose")) {
        output = g.nodes[i].outputs.first()?.clone();
        at = i;
        steps += 1;
        if steps > 3 {
            return None;
        }
    }
    if steps == 0 || !scale.is_finite() || scale <= 0.0 {
        return None;
    }
    Some(Block { q, k, v, scale, output, at })
}

fn encode_node(op: &str, domain: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for i in inputs {
        put_bytes(&mut body, 1, i.as_bytes());
    }
    for o in outputs {
        put_bytes(&mut body, 2, o.as_bytes());
    }
    put_bytes(&mut body, 3, name.as_bytes());
    put_bytes(&mut body, 4, op.as_bytes());
    for a in attrs {
        put_bytes(&mut body, 5, a);
    }
    if !domain.is_empty() {
        put_bytes(&mut body, 7, domain.as_bytes());
    }
    body
}

fn int_attr(name: &str, value: i64) -> Vec<u8> {
    let mut a = Vec::new();
    put_bytes(&mut a, 1, name.as_bytes());
    put_varint(&mut a, 3 << 3);
    put_varint(&mut a, value as u64);
    put_varint(&mut a, 20 << 3);
    put_varint(&mut a, 2); // AttributeProto.INT
    a
}

fn float_attr(name: &str, value: f32) -> Vec<u8> {
    let mut a = Vec::new();
    put_bytes(&mut a, 1, name.as_bytes());
    put_varint(&mut a, 2 << 3 | 5);
    a.extend_from_slice(&value.to_le_bytes());
    put_varint(&mut a, 20 << 3);
    put_varint(&mut a, 1); // AttributeProto.FLOAT
    a
}

const MASK: &str = "akidb/key_padding_mask";

/// Fuses every attention block it recognises; `None` when there is none (the model is then used
/// as it is). `mask_input` names the graph's attention-mask input.
pub fn fuse_attention(model: &[u8], num_heads: usize, mask_input: &str) -> Result<Option<Rewritten>, GraphError> {
    let model_fields = fields(model)?;
    let Some(graph_field) = model_fields.iter().find(|f| f.number == 7) else { return Ok(None) };
    let Value::Bytes(graph_bytes) = graph_field.value else { return Err(GraphError::Malformed("graph")) };
    let graph_fields = fields(graph_bytes)?;

    let mut nodes = Vec::new();
    let mut initializers = HashMap::new();
    let mut graph_outputs = Vec::new();
    let mut graph_inputs = Vec::new();
    for f in &graph_fields {
        let Value::Bytes(b) = f.value else { continue };
        match f.number {
            1 => nodes.push(parse_node(b)?),
            5 => {
                let name = fields(b)?.iter().find_map(|t| match (t.number, t.value) {
                    (8, Value::Bytes(n)) => Some(text(n)),
                    _ => None,
                });
                if let Some(name) = name {
                    initializers.insert(name, b);
                }
            }
            11 | 12 => {
                let name = fields(b)?.iter().find_map(|t| match (t.number, t.value) {
                    (1, Value::Bytes(n)) => Some(text(n)),
                    _ => None,
                });
                if let Some(name) = name {
                    if f.number == 11 {
                        graph_inputs.push(name)
                    } else {
                        graph_outputs.push(name)
                    }
                }
            }
            _ => {}
        }
    }
    if !graph_inputs.iter().any(|i| i == mask_input) || num_heads == 0 {
        return Ok(None);
    }
    let mut producer = HashMap::new();
    let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in &n.outputs {
            producer.insert(o.clone(), i);
        }
        for input in &n.inputs {
            consumers.entry(input.clone()).or_default().push(i);
        }
    }
    let g = Graph { nodes, producer, consumers, initializers };

    let blocks: Vec<Block> = (0..g.nodes.len())
        .filter(|&i| g.nodes[i].op == "Softmax" && g.nodes[i].domain.is_empty())
        .filter_map(|i| match_block(&g, i, mask_input))
        .collect();
    if blocks.is_empty() {
        return Ok(None);
    }

    // New node list: the original order, each block's fused node in place of its last node.
    let cast = encode_node("Cast", "", "akidb/mask_cast", &[mask_input], &[MASK], &[int_attr("to", 6)]);
    // Node index → (fused node, its block).
    let mut replaced: HashMap<usize, (Vec<u8>, &Block)> = HashMap::new();
    for (n, b) in blocks.iter().enumerate() {
        let attrs = [int_attr("num_heads", num_heads as i64), float_attr("scale", b.scale)];
        let name = format!("akidb/attention_{n}");
        let node = encode_node(
            "MultiHeadAttention",
            "com.microsoft",
            &name,
            &[&b.q, &b.k, &b.v, "", MASK],
            &[&b.output],
            &attrs,
        );
        replaced.insert(b.at, (node, b));
    }
    // Dead-node elimination: keep what the graph outputs still need.
    let inputs_of = |i: usize| -> Vec<String> {
        match replaced.get(&i) {
            Some((_, b)) => vec![b.q.clone(), b.k.clone(), b.v.clone()],
            None => g.nodes[i].inputs.clone(),
        }
    };
    let mut live = vec![false; g.nodes.len()];
    let mut stack: Vec<String> = graph_outputs.clone();
    while let Some(name) = stack.pop() {
        if let Some(i) = g.index(&name) {
            if !live[i] {
                live[i] = true;
                stack.extend(inputs_of(i));
            }
        }
    }

    let mut new_graph = Vec::with_capacity(graph_bytes.len() + 1024);
    put_bytes(&mut new_graph, 1, &cast);
    for (i, node) in g.nodes.iter().enumerate().filter(|(i, _)| live[*i]) {
        match replaced.get(&i) {
            Some((fused, _)) => put_bytes(&mut new_graph, 1, fused),
            None => put_bytes(&mut new_graph, 1, node.raw),
        }
    }
    for f in graph_fields.iter().filter(|f| f.number != 1) {
        new_graph.extend_from_slice(f.raw);
    }

    let has_ms_opset = model_fields.iter().any(|f| {
        f.number == 8
            && matches!(f.value, Value::Bytes(b) if fields(b).map(|fs| fs.iter().any(|x| x.number == 1 && matches!(x.value, Value::Bytes(d) if d == b"com.microsoft"))).unwrap_or(false))
    });
    let mut out = Vec::with_capacity(model.len() + 2048);
    for f in &model_fields {
        if f.number == 7 {
            put_bytes(&mut out, 7, &new_graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if !has_ms_opset {
        let mut opset = Vec::new();
        put_bytes(&mut opset, 1, b"com.microsoft");
        put_varint(&mut opset, 2 << 3);
        put_varint(&mut opset, 1);
        put_bytes(&mut out, 8, &opset);
    }
    Ok(Some(Rewritten { model: out, fused: blocks.len() }))
}
