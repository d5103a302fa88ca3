//! akidb's row-wise kernels in place of their spelled-out patterns: each residual LayerNorm
//! (`(MatMul + bias) + residual`, then the ~9 ops of LayerNorm) becomes `ai.akidb.SkipLayerNorm`,
//! each `MatMul + bias` → erf GELU becomes `ai.akidb.BiasGelu`. One kernel per pattern reads and
//! writes each row once instead of once per op; and only row-wise nodes can run unpadded (`unpad`).

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{tensor_proto::DataType, AttributeProto, GraphProto, NodeProto};

use super::{
    float_attr,
    index::{attr, Graph},
    node,
};

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

/// Replaces the residual LayerNorms (the embeddings' one, a sum of three lookups, stays) and the
/// GELUs with akidb's kernels; returns how many nodes it made.
pub(super) fn fuse_norms_and_gelus(graph: &mut GraphProto) -> usize {
    fuse_each(graph, "Sub", match_norm) + fuse_each(graph, "Erf", match_gelu)
}

/// Replaces every match of `matcher`, tried at each `anchor` node of the default domain, with its
/// akidb node; returns how many. Matchers check that nothing outside a match reads inside it.
fn fuse_each(graph: &mut GraphProto, anchor: &str, matcher: fn(&Graph<'_>, usize) -> Option<Match>) -> usize {
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
