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

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
};

pub use onnx_protobuf::ModelProto;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, Message, NodeProto, OperatorSetIdProto,
    TensorProto,
};

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

/// Which node a matched attention block becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The rewritten model, and how many attention blocks were fused.
pub struct Rewritten {
    pub model: ModelProto,
    pub fused: usize,
}

/// Reads an ONNX file straight from disk into the generated types: the weights land in their
/// final buffers without an intermediate copy of the file.
pub fn read_model(path: &Path) -> Result<ModelProto, GraphError> {
    let read_err = |source| GraphError::Read { path: path.display().to_string(), source };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    ModelProto::parse_from_reader(&mut reader).map_err(|e| GraphError::Malformed(e.to_string()))
}

/// Decodes an ONNX model held in memory.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, GraphError> {
    ModelProto::parse_from_bytes(bytes).map_err(|e| GraphError::Malformed(e.to_string()))
}

/// Streams a model to `path` (large fields are written through, not buffered).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), GraphError> {
    let write_err = |message: String| GraphError::Write { path: path.display().to_string(), message };
    let mut writer = BufWriter::new(File::create(path).map_err(|e| write_err(e.to_string()))?);
    model.write_to_writer(&mut writer).map_err(|e| write_err(e.to_string()))?;
    writer.flush().map_err(|e| write_err(e.to_string()))
}

// --- reading the graph ----------------------------------------------------------------------

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
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

struct Graph<'a> {
    nodes: &'a [NodeProto],
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    fn new(nodes: &'a [NodeProto], initializer: &'a [TensorProto]) -> Self {
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

    fn node(&self, output: &str) -> Option<&'a NodeProto> {
        self.producer.get(output).map(|&i| &self.nodes[i])
    }

    fn index(&self, output: &str) -> Option<usize> {
        self.producer.get(output).copied()
    }

    fn scalar(&self, name: &str) -> Option<f32> {
        match self.node(name) {
            Some(n) if n.op_type == "Constant" => attr(n, "value").and_then(|a| a.t.as_ref()).and_then(tensor_scalar),
            Some(_) => None,
            None => self.initializers.get(name).and_then(|t| tensor_scalar(t)),
        }
    }

    /// A constant tensor: an initializer or a `Constant` node's `value`, also through `Identity`
    /// (exports share equal weights that way).
    fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        match self.node(name) {
            Some(n) if n.op_type == "Constant" => attr(n, "value").and_then(|a| a.t.as_ref()),
            Some(n) if n.op_type == "Identity" && n.domain.is_empty() => self.tensor(n.input.first()?),
            Some(_) => None,
            None => self.initializers.get(name).copied(),
        }
    }

    fn consumers_of(&self, output: &str) -> impl Iterator<Item = usize> + '_ {
        self.consumers.get(output).into_iter().flatten().copied()
    }

    /// Is `name` a constant: a `Constant` node, an initializer, or computed from constants only?
    fn is_constant(&self, name: &str, depth: usize) -> bool {
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

    /// Is `bias` a key-padding mask: derived from the graph input `mask_input`, with no causal
    /// part? A causal mask compares positions with positions (`kv_idx <= q_idx` as a `LessOrEqual`
    /// of two `Range`-derived tensors) or takes a triangle (`Trilu`, `CumSum`); a padding mask
    /// only compares with constants (bounds checks). A causal bias is [seq, seq], which the fused
    /// kernel's key-padding mask cannot express. Shapes are not followed into: they carry no
    /// values.
    fn is_padding_mask(&self, bias: &str, mask_input: &str) -> bool {
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
            let Some(node) = self.node(name) else { continue };
            let op = node.op_type.as_str();
            if TRIANGLE.contains(&op) {
                return false;
            }
            if COMPARE.contains(&op) && node.input.iter().all(|i| !self.is_constant(i, 0)) {
                return false;
            }
            if op != "Shape" {
                stack.extend(node.input.iter().map(String::as_str).filter(|i| !i.is_empty()));
            }
        }
        reaches_mask
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
    /// Q, K and V projected from one input by constant weights: packed into one GEMM.
    packed: Option<Packed>,
}

/// The Q, K and V projections of one block as one: `input · [Wq Wk Wv] + [bq bk bv]`.
struct Packed {
    input: String,
    weights: TensorProto,
    bias: TensorProto,
}

/// A float tensor's values, from `float_data` or little-endian `raw_data`.
fn tensor_floats(tensor: &TensorProto) -> Option<Vec<f32>> {
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
    if !g.is_padding_mask(bias, mask_input) {
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

// --- writing the graph ----------------------------------------------------------------------

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

const MASK: &str = "akidb/key_padding_mask";

/// A matched pattern: the nodes it replaces (the last is where the fused node goes, taking over
/// that node's output) and the fused node's akidb operator, inputs and attributes.
struct Match {
    nodes: Vec<usize>,
    op: &'static str,
    inputs: Vec<String>,
    attributes: Vec<AttributeProto>,
}

/// The only consumer of `name`, if it has exactly one and it is an `op` of the default domain.
fn only_consumer<'a>(g: &Graph<'a>, name: &str, op: &str) -> Option<(usize, &'a NodeProto)> {
    let mut c = g.consumers_of(name);
    let (Some(i), None) = (c.next(), c.next()) else { return None };
    let n = &g.nodes[i];
    (n.op_type == op && n.domain.is_empty()).then_some((i, n))
}

/// The other input of a two-input node.
fn other<'a>(n: &'a NodeProto, this: &str) -> Option<&'a str> {
    match n.input.as_slice() {
        [a, b] if a == this => Some(b),
        [a, b] if b == this => Some(a),
        _ => None,
    }
}

fn last_axis_mean(n: &NodeProto) -> bool {
    n.op_type == "ReduceMean"
        && n.domain.is_empty()
        && n.input.len() == 1
        && attr(n, "axes").is_some_and(|a| a.ints == [-1])
        && attr(n, "keepdims").is_none_or(|a| a.i == 1)
}

/// A 1-D float constant of length `len`.
fn vector(g: &Graph<'_>, name: &str, len: usize) -> bool {
    g.tensor(name).is_some_and(|t| t.data_type == DataType::FLOAT as i32 && t.dims == [len as i64])
}

/// One residual LayerNorm as exported: `x = (MatMul + bias) + residual`, then LayerNorm spelled
/// out (`ReduceMean`, `Sub`, `Pow`, `ReduceMean`, `Add` ε, `Sqrt`, `Div`, `Mul` γ, `Add` β).
fn match_norm(g: &Graph<'_>, sub: usize) -> Option<Match> {
    let s = &g.nodes[sub];
    let [x, mean] = s.input.as_slice() else { return None };
    let (d, mean_node) = (s.output.first()?, g.index(mean)?);
    if !(last_axis_mean(&g.nodes[mean_node]) && g.nodes[mean_node].input[0] == *x) {
        return None;
    }
    if g.consumers_of(mean).count() != 1 {
        return None;
    }
    let users: Vec<usize> = g.consumers_of(d).collect();
    let pow = *users.iter().find(|&&i| g.nodes[i].op_type == "Pow")?;
    let div = *users.iter().find(|&&i| g.nodes[i].op_type == "Div")?;
    let (pn, dn) = (&g.nodes[pow], &g.nodes[div]);
    if users.len() != 2 || pn.input.len() != 2 || pn.input[0] != *d || g.scalar(&pn.input[1]) != Some(2.0) {
        return None;
    }
    let (var, vn) = only_consumer(g, pn.output.first()?, "ReduceMean")?;
    let (add_eps, en) = only_consumer(g, vn.output.first()?, "Add")?;
    let eps = g.scalar(other(en, vn.output.first()?)?)?;
    let (sqrt, sn) = only_consumer(g, en.output.first()?, "Sqrt")?;
    let sqrt_out = sn.output.first()?;
    if !last_axis_mean(vn) || only_consumer(g, sqrt_out, "Div")?.0 != div || dn.input != [d.clone(), sqrt_out.clone()] {
        return None;
    }
    let (mul, mn) = only_consumer(g, dn.output.first()?, "Mul")?;
    let gamma = other(mn, dn.output.first()?)?;
    let (add_beta, bn) = only_consumer(g, mn.output.first()?, "Add")?;
    let beta = other(bn, mn.output.first()?)?;
    // x = (MatMul + bias) + residual, read by nothing but the mean and the subtraction.
    let sum = g.index(x)?;
    let xn = &g.nodes[sum];
    let readers: HashSet<usize> = g.consumers_of(x).collect();
    if xn.op_type != "Add" || !xn.domain.is_empty() || readers != HashSet::from([mean_node, sub]) {
        return None;
    }
    let hidden = usize::try_from(*g.tensor(gamma)?.dims.first()?).ok()?;
    if !(hidden.is_multiple_of(16) && vector(g, gamma, hidden) && vector(g, beta, hidden)) {
        return None;
    }
    let (add_bias, matmul_out, bias, residual) = xn.input.iter().find_map(|p| {
        let i = g.index(p)?;
        let an = &g.nodes[i];
        let bias = an.input.iter().find(|b| vector(g, b, hidden))?;
        let projected = other(an, bias)?;
        let is_matmul = g.node(projected).is_some_and(|m| m.op_type == "MatMul" && m.domain.is_empty());
        let single = g.consumers_of(p).count() == 1;
        (an.op_type == "Add" && an.domain.is_empty() && is_matmul && single)
            .then(|| Some((i, projected.to_string(), bias.clone(), other(xn, p)?.to_string())))
            .flatten()
    })?;
    Some(Match {
        nodes: vec![add_bias, sum, mean_node, sub, pow, var, add_eps, sqrt, div, mul, add_beta],
        op: akidb_kernels::SKIP_LAYER_NORM,
        inputs: vec![matmul_out, residual, bias, gamma.to_string(), beta.to_string()],
        attributes: vec![float_attr("epsilon", eps)],
    })
}

/// Runs the encoder on real tokens only: an `Unpad` where the first attention block's input
/// enters, a `Repad` where the encoder's one result leaves, and the attention nodes between told
/// their input is unpadded. Applied only when every node between is row-wise (a `MatMul` by a
/// constant matrix, akidb's `SkipLayerNorm` and `BiasGelu`) or akidb's attention, and the
/// region has exactly one entrance and one exit; otherwise the graph is left as it is.
fn unpad_encoder(graph: &mut onnx_protobuf::GraphProto) -> bool {
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

/// The feed-forward activation as exported: `x = MatMul + bias`, then
/// `Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)`.
fn match_gelu(g: &Graph<'_>, erf: usize) -> Option<Match> {
    let en = &g.nodes[erf];
    let div = g.index(en.input.first()?)?;
    let dn = &g.nodes[div];
    let [x, root] = dn.input.as_slice() else { return None };
    let is_root2 = g.scalar(root).is_some_and(|r| (r - std::f32::consts::SQRT_2).abs() < 1e-6);
    if dn.op_type != "Div" || !dn.domain.is_empty() || !is_root2 || g.consumers_of(dn.output.first()?).count() != 1 {
        return None;
    }
    let (add_one, an) = only_consumer(g, en.output.first()?, "Add")?;
    if g.scalar(other(an, en.output.first()?)?) != Some(1.0) {
        return None;
    }
    let (mul, mn) = only_consumer(g, an.output.first()?, "Mul")?;
    if other(mn, an.output.first()?)? != x {
        return None;
    }
    let (half, hn) = only_consumer(g, mn.output.first()?, "Mul")?;
    if g.scalar(other(hn, mn.output.first()?)?) != Some(0.5) {
        return None;
    }
    let readers: HashSet<usize> = g.consumers_of(x).collect();
    let add_bias = g.index(x)?;
    let bn = &g.nodes[add_bias];
    if readers != HashSet::from([div, mul]) || bn.op_type != "Add" || !bn.domain.is_empty() {
        return None;
    }
    let (projected, bias) = bn.input.iter().find_map(|b| {
        let width = g.tensor(b)?.dims.as_slice().to_vec();
        let projected = other(bn, b)?;
        let is_matmul = g.node(projected).is_some_and(|m| m.op_type == "MatMul" && m.domain.is_empty());
        let fits = matches!(width.as_slice(), [w] if *w > 0 && (*w as usize).is_multiple_of(16));
        (is_matmul && fits && vector(g, b, width[0] as usize)).then(|| (projected.to_string(), b.clone()))
    })?;
    Some(Match {
        nodes: vec![add_bias, div, erf, add_one, mul, half],
        op: akidb_kernels::BIAS_GELU,
        inputs: vec![projected, bias],
        attributes: vec![],
    })
}

/// Replaces every match of `matcher`, tried at each `anchor` node of the default domain, with its
/// akidb node; returns how many. Matchers check that nothing outside a match reads inside it.
fn fuse_each(
    graph: &mut onnx_protobuf::GraphProto,
    anchor: &str,
    matcher: fn(&Graph<'_>, usize) -> Option<Match>,
) -> usize {
    let nodes = std::mem::take(&mut graph.node);
    let found: Vec<Match> = {
        let g = Graph::new(&nodes, &graph.initializer);
        (0..nodes.len())
            .filter(|&i| nodes[i].op_type == anchor && nodes[i].domain.is_empty())
            .filter_map(|i| matcher(&g, i))
            .collect()
    };
    let mut replaced: HashMap<usize, Option<NodeProto>> = HashMap::new();
    let mut fused = 0;
    for m in found {
        let Some(&at) = m.nodes.last() else { continue };
        if m.nodes.iter().any(|i| replaced.contains_key(i)) {
            continue; // overlapping matches cannot happen in a valid graph; be safe anyway
        }
        // An intermediate the graph outputs (all hidden states, say) must survive: no fusion.
        let inner_output = m.nodes[..m.nodes.len() - 1]
            .iter()
            .flat_map(|&i| &nodes[i].output)
            .any(|o| graph.output.iter().any(|go| go.name == *o));
        if inner_output {
            continue;
        }
        let inputs: Vec<&str> = m.inputs.iter().map(String::as_str).collect();
        let outputs: Vec<&str> = nodes[at].output.iter().map(String::as_str).collect();
        let name = format!("akidb/{}_{fused}", m.op);
        let fused_node = node(m.op, akidb_kernels::DOMAIN, &name, &inputs, &outputs, m.attributes);
        for &i in &m.nodes {
            replaced.insert(i, None);
        }
        replaced.insert(at, Some(fused_node));
        fused += 1;
    }
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| match replaced.remove(&i) {
            Some(fused) => fused,
            None => Some(n),
        })
        .collect();
    fused
}

/// Changes whenever the rewrite does, so graphs cached by an older one are made again.
pub const REWRITE_VERSION: u32 = 4;

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
    let pack_qkv = op != AttentionOp::MultiHead;
    let Some(graph) = model.graph.as_mut() else { return Ok(None) };
    if !graph.input.iter().any(|i| i.name == mask_input) || num_heads == 0 {
        return Ok(None);
    }
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
        return Ok(None);
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
    // The separate projection weights are no longer read by any node.
    if !packed_weights.is_empty() {
        let used: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(graph.output.iter().map(|o| o.name.as_str()))
            .collect();
        graph.initializer.retain(|t| used.contains(t.name.as_str()));
        graph.initializer.extend(packed_weights);
    }
    // akidb's other kernels, then real tokens only, once the packed weights are initializers.
    if op == AttentionOp::Akidb {
        // Residual LayerNorms (the embeddings' one, a sum of three lookups, stays) and GELUs.
        own_kernel |= fuse_each(graph, "Sub", match_norm) + fuse_each(graph, "Erf", match_gelu) > 0;
        if own_kernel && unpad_encoder(graph) {
            tracing::debug!("the encoder runs on real tokens only");
        }
    }
    for domain in ["com.microsoft", akidb_kernels::DOMAIN].into_iter().take(if own_kernel { 2 } else { 1 }) {
        if !model.opset_import.iter().any(|o| o.domain == domain) {
            let mut opset = OperatorSetIdProto::new();
            opset.domain = domain.to_string();
            opset.version = 1;
            model.opset_import.push(opset);
        }
    }
    Ok(Some(Rewritten { model, fused: blocks.len() }))
}

#[cfg(test)]
mod tests {
    use onnx_protobuf::{GraphProto, ValueInfoProto};

    use super::*;

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
