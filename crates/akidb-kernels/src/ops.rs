//! The ONNX Runtime glue: the operators of domain [`DOMAIN`] that a rewritten graph names, each
//! reading its inputs and attributes, checking every size against the others before any kernel
//! runs (so the kernels' `unsafe` entry points get what their contracts ask), and splitting the
//! work over ONNX Runtime's own intra-op thread pool (`par_for`). No arithmetic here.

use crate::attention::{self, supported_head_size, Shape};
use crate::bf16::{Bf16Isa, MatMul};
use crate::rowwise::{Gelu, Norm};
use crate::simd::Out;
use crate::unpad::Unpad;

/// The custom-operator domain of akidb's kernels in a rewritten graph (`graph`).
pub const DOMAIN: &str = "ai.akidb";
/// The attention core's operator name in [`DOMAIN`].
pub const ATTENTION: &str = "Attention";

/// akidb's operators, to register with every session that may load a rewritten graph.
pub fn operators() -> ort::Result<ort::operator::OperatorDomain> {
    ort::operator::OperatorDomain::new(DOMAIN)?
        .add(AttentionOp)?
        .add(NormOp)?
        .add(GeluOp)?
        .add(UnpadOp)?
        .add(RepadOp)?
        .add(MatMulBf16Op)
}

/// `N` required float inputs.
fn float_inputs<const N: usize>() -> [ort::operator::OperatorInput; N] {
    [0; N].map(|_| ort::operator::OperatorInput::required(ort::value::TensorElementType::Float32))
}

/// One float output.
fn float_output() -> [ort::operator::OperatorOutput; 1] {
    [ort::operator::OperatorOutput::required(ort::value::TensorElementType::Float32)]
}

/// The shared tail of the row-wise operators: an output shaped like their input 0 (`dims`, `len`
/// floats), then `items` (`None`: the sizes do not fit) parallel items of `run`, each called once
/// (ONNX Runtime's `par_for`) with an output of `len` floats.
fn run_row_wise(
    ctx: &ort::operator::ComputeContext,
    op: &str,
    dims: &[i64],
    len: usize,
    items: Option<usize>,
    run: impl Fn(Out<'_>, usize) + Sync + Send,
) -> ort::Result<()> {
    let items = items.ok_or_else(|| ort::Error::new(format!("akidb {op}: sizes do not fit ({dims:?})")))?;
    let mut out = ctx.output(0, dims.to_vec())?.ok_or_else(|| ort::Error::new(format!("akidb {op}: no output")))?;
    let (_, out) = out.try_extract_tensor_mut::<f32>()?;
    if out.len() != len {
        return Err(ort::Error::new(format!("akidb {op}: output of the wrong size")));
    }
    let out = Out::new(out);
    ctx.par_for(items, items, |i| run(out, i))
}

/// The feed-forward activation's operator name in [`DOMAIN`].
pub const BIAS_GELU: &str = "BiasGelu";

/// `BiasGelu(x, bias) → GELU(x + bias)` (see [`Gelu`]); the output has `x`'s shape.
struct GeluOp;

impl ort::operator::Operator for GeluOp {
    type Kernel<'attr> = GeluKernel;

    fn name(&self) -> &str {
        BIAS_GELU
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        float_inputs::<2>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, _: &ort::operator::KernelContext<'attr>) -> ort::Result<GeluKernel> {
        Ok(GeluKernel)
    }
}

struct GeluKernel;

impl ort::operator::Kernel for GeluKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb BiasGelu: missing input"));
        let (x, bias) = (input(0)?, input(1)?);
        let (dims, x) = x.try_extract_tensor::<f32>()?;
        let gelu = Gelu { x, bias: bias.try_extract_tensor::<f32>()?.1 };
        // SAFETY: `Gelu::item`'s contract: `run_row_wise` runs only when `items()` is `Some(n)`,
        // calls each item i < n once, and with an output of x.len() floats.
        run_row_wise(ctx, BIAS_GELU, dims, gelu.x.len(), gelu.items(), |out, i| unsafe { gelu.item(out, i) })
    }
}

/// The bf16 matrix product's operator name in [`DOMAIN`].
pub const MATMUL_BF16: &str = "MatMulBf16";

/// `MatMulBf16(x float [..., k], w uint16 packed) → [..., n]` with attributes `k` and `n`: `x · W`
/// with bf16 inputs and fp32 sums, `W` [k, n] packed by [`crate::bf16::pack`].
struct MatMulBf16Op;

impl ort::operator::Operator for MatMulBf16Op {
    type Kernel<'attr> = MatMulBf16Kernel;

    fn name(&self) -> &str {
        MATMUL_BF16
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        use ort::{operator::OperatorInput, value::TensorElementType};
        [OperatorInput::required(TensorElementType::Float32), OperatorInput::required(TensorElementType::Uint16)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, ctx: &ort::operator::KernelContext<'attr>) -> ort::Result<MatMulBf16Kernel> {
        let size = |name: &str| {
            ctx.get::<i64>(name)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| ort::Error::new(format!("akidb MatMulBf16: {name} must be a positive integer")))
        };
        Ok(MatMulBf16Kernel { k: size("k")?, n: size("n")?, isa: Bf16Isa::best() })
    }
}

struct MatMulBf16Kernel {
    k: usize,
    n: usize,
    isa: Bf16Isa,
}

impl ort::operator::Kernel for MatMulBf16Kernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb MatMulBf16: missing input"));
        let (x, w) = (input(0)?, input(1)?);
        let (dims, x) = x.try_extract_tensor::<f32>()?;
        let (_, w) = w.try_extract_tensor::<u16>()?;
        let product = MatMul { x, k: self.k, n: self.n, w };
        let bad =
            || ort::Error::new(format!("akidb MatMulBf16: sizes do not fit (x {dims:?}, k {}, n {})", self.k, self.n));
        let items = product.items().ok_or_else(bad)?;
        if dims.last().and_then(|&d| usize::try_from(d).ok()) != Some(self.k) {
            return Err(bad());
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.n as i64;
        }
        let mut out = ctx.output(0, shape)?.ok_or_else(|| ort::Error::new("akidb MatMulBf16: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        if out.len() != product.rows() * self.n {
            return Err(ort::Error::new("akidb MatMulBf16: output of the wrong size"));
        }
        let (out, isa) = (Out::new(out), self.isa);
        // SAFETY: `MatMul::item`'s contract: `items` is `product.items()`, par_for calls each
        // i < items once, the output holds rows · n floats (checked above), and `isa` is
        // `Bf16Isa::best()`, which this CPU runs.
        ctx.par_for(items, items, |i| unsafe { product.item(out, i, isa) })
    }
}

/// The residual LayerNorm's operator name in [`DOMAIN`].
pub const SKIP_LAYER_NORM: &str = "SkipLayerNorm";

/// `SkipLayerNorm(x, residual, bias, gamma, beta) → LayerNorm(x + bias + residual)` (see [`Norm`])
/// with attribute `epsilon`; the output has `x`'s shape.
struct NormOp;

impl ort::operator::Operator for NormOp {
    type Kernel<'attr> = NormKernel;

    fn name(&self) -> &str {
        SKIP_LAYER_NORM
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        float_inputs::<5>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, ctx: &ort::operator::KernelContext<'attr>) -> ort::Result<NormKernel> {
        let eps = ctx.get::<f32>("epsilon").ok_or_else(|| ort::Error::new("akidb SkipLayerNorm: no epsilon"))?;
        Ok(NormKernel { eps })
    }
}

struct NormKernel {
    eps: f32,
}

impl ort::operator::Kernel for NormKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb SkipLayerNorm: missing input"));
        let (x, residual, bias, gamma, beta) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
        let (dims, x) = x.try_extract_tensor::<f32>()?;
        let norm = Norm {
            x,
            residual: residual.try_extract_tensor::<f32>()?.1,
            bias: bias.try_extract_tensor::<f32>()?.1,
            gamma: gamma.try_extract_tensor::<f32>()?.1,
            beta: beta.try_extract_tensor::<f32>()?.1,
            eps: self.eps,
        };
        // SAFETY: `Norm::item`'s contract: `run_row_wise` runs only when `items()` is `Some(n)`,
        // calls each item i < n once, and with an output of x.len() floats.
        run_row_wise(ctx, SKIP_LAYER_NORM, dims, norm.x.len(), norm.items(), |out, i| unsafe { norm.item(out, i) })
    }
}

/// `Attention(qkv [batch, seq, 3·hidden], bias [3·hidden], mask int32 [batch, seq]) → [batch,
/// seq, hidden]` with attributes `num_heads` and `scale`.
struct AttentionOp;

impl ort::operator::Operator for AttentionOp {
    type Kernel<'attr> = AttentionKernel;

    fn name(&self) -> &str {
        ATTENTION
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        use ort::{operator::OperatorInput, value::TensorElementType};
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, ctx: &ort::operator::KernelContext<'attr>) -> ort::Result<AttentionKernel> {
        let heads = ctx.get::<i64>("num_heads").and_then(|h| usize::try_from(h).ok()).filter(|&h| h > 0);
        let heads = heads.ok_or_else(|| ort::Error::new("akidb Attention: num_heads must be a positive integer"))?;
        let scale = ctx.get::<f32>("scale").ok_or_else(|| ort::Error::new("akidb Attention: no scale"))?;
        let unpadded = ctx.get::<i64>("unpadded").unwrap_or(0) != 0;
        Ok(AttentionKernel { heads, scale, unpadded })
    }
}

struct AttentionKernel {
    heads: usize,
    scale: f32,
    /// qkv is [tokens, 3·hidden] of real tokens only (after `Unpad`), the mask says which row of
    /// the batch each belongs to.
    unpadded: bool,
}

impl ort::operator::Kernel for AttentionKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let missing = || ort::Error::new("akidb Attention: missing input");
        let qkv = ctx.input(0)?.ok_or_else(missing)?;
        let bias = ctx.input(1)?.ok_or_else(missing)?;
        let mask = ctx.input(2)?.ok_or_else(missing)?;
        let (dims, qkv) = qkv.try_extract_tensor::<f32>()?;
        let (_, bias) = bias.try_extract_tensor::<f32>()?;
        let (mask_dims, mask) = mask.try_extract_tensor::<i32>()?;
        let dims: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
        if self.unpadded {
            return self.unpadded(ctx, &dims, qkv, bias, mask, mask_dims);
        }
        let &[batch, seq, wide] = dims.as_slice() else {
            return Err(ort::Error::new(format!("akidb Attention: qkv must be [batch, seq, 3·hidden], got {dims:?}")));
        };
        let hidden = wide / 3;
        let head_size = hidden / self.heads;
        let shape = Shape { batch, seq, heads: self.heads, head_size, scale: self.scale };
        if wide % 3 != 0 || hidden % self.heads != 0 || !supported_head_size(head_size) {
            return Err(ort::Error::new(format!("akidb Attention: unsupported shape {dims:?}, {} heads", self.heads)));
        }
        if bias.len() != wide || mask.len() != batch * seq || mask_dims.len() != 2 {
            return Err(ort::Error::new("akidb Attention: bias or mask does not match qkv"));
        }
        let out_dims = [batch as i64, seq as i64, hidden as i64];
        let mut out = ctx.output(0, out_dims.to_vec())?.ok_or_else(|| ort::Error::new("akidb Attention: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        if out.len() != batch * seq * hidden {
            return Err(ort::Error::new("akidb Attention: output of the wrong size"));
        }
        let out = Out::new(out);
        // SAFETY: `attention::item`'s contract: qkv is [batch, seq, 3·hidden] (its dims), bias
        // [3·hidden], mask [batch, seq] and out [batch, seq, hidden] (checked above); `par_for`
        // calls each item i < items() once.
        ctx.par_for(shape.items(), shape.items(), |i| unsafe { attention::item(qkv, bias, mask, out, &shape, i) })
    }
}

impl AttentionKernel {
    fn unpadded(
        &self,
        ctx: &ort::operator::ComputeContext,
        dims: &[usize],
        qkv: &[f32],
        bias: &[f32],
        mask: &[i32],
        mask_dims: &[i64],
    ) -> ort::Result<()> {
        let (&[tokens, wide], &[batch, seq]) = (dims, mask_dims) else {
            return Err(ort::Error::new(format!(
                "akidb Attention: unpadded qkv must be [tokens, 3·hidden], got {dims:?}"
            )));
        };
        let (batch, seq) = (usize::try_from(batch).unwrap_or(0), usize::try_from(seq).unwrap_or(0));
        let hidden = wide / 3;
        let head_size = hidden / self.heads;
        if wide % 3 != 0 || hidden % self.heads != 0 || !supported_head_size(head_size) || bias.len() != wide {
            return Err(ort::Error::new(format!("akidb Attention: unsupported shape {dims:?}, {} heads", self.heads)));
        }
        let starts = Unpad::starts(mask, batch, seq)
            .filter(|s| s.last() == Some(&tokens))
            .ok_or_else(|| ort::Error::new("akidb Attention: the mask does not match the unpadded tokens"))?;
        let shape = Shape { batch, seq, heads: self.heads, head_size, scale: self.scale };
        let ones = vec![1i32; seq];
        let out_dims = [tokens as i64, hidden as i64];
        let mut out = ctx.output(0, out_dims.to_vec())?.ok_or_else(|| ort::Error::new("akidb Attention: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        if out.len() != tokens * hidden {
            return Err(ort::Error::new("akidb Attention: output of the wrong size"));
        }
        let out = Out::new(out);
        // SAFETY: `attention::item_unpadded`'s contract: `starts` is `Unpad::starts` of the mask,
        // ending at the tokens of qkv [tokens, 3·hidden] (its dims); bias is [3·hidden] and out
        // [tokens, hidden] (checked above); `ones` is seq long, and no row has more than seq
        // tokens; `par_for` calls each item i < items() once.
        ctx.par_for(shape.items(), shape.items(), |i| unsafe {
            attention::item_unpadded(qkv, bias, &starts, &ones, out, &shape, i)
        })
    }
}

/// The `Unpad` operator: `(x [batch, seq, hidden], mask int32 [batch, seq]) → [tokens, hidden]`.
struct UnpadOp;
/// The `Repad` operator: `(u [tokens, hidden], mask int32 [batch, seq]) → [batch, seq, hidden]`.
struct RepadOp;

/// The operator name in [`DOMAIN`] that drops a batch's padding (`Unpad::run`).
pub const UNPAD: &str = "Unpad";
/// The operator name in [`DOMAIN`] that puts a batch's padding back (`Unpad::undo`).
pub const REPAD: &str = "Repad";

fn pad_io() -> [ort::operator::OperatorInput; 2] {
    use ort::{operator::OperatorInput, value::TensorElementType};
    [OperatorInput::required(TensorElementType::Float32), OperatorInput::required(TensorElementType::Int32)]
}

impl ort::operator::Operator for UnpadOp {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        UNPAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        pad_io()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, _: &ort::operator::KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ort::operator::ComputeContext| {
            let (x, mask) = pad_inputs(ctx)?;
            let (dims, x) = x.try_extract_tensor::<f32>()?;
            let (mask_dims, mask) = mask.try_extract_tensor::<i32>()?;
            let (&[b, s, h], &[mb, ms]) = (&dims[..], &mask_dims[..]) else {
                return Err(ort::Error::new("akidb Unpad: x must be [batch, seq, hidden], mask [batch, seq]"));
            };
            let (hidden, tokens) = (usize::try_from(h).unwrap_or(0), mask.iter().filter(|&&m| m != 0).count());
            if (b, s) != (mb, ms) || hidden == 0 || x.len() != mask.len() * hidden {
                return Err(ort::Error::new("akidb Unpad: x and mask do not match"));
            }
            let mut out =
                ctx.output(0, vec![tokens as i64, h])?.ok_or_else(|| ort::Error::new("akidb Unpad: no output"))?;
            Unpad::run(x, mask, hidden, out.try_extract_tensor_mut::<f32>()?.1);
            Ok(())
        }))
    }
}

impl ort::operator::Operator for RepadOp {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        REPAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        pad_io()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, _: &ort::operator::KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ort::operator::ComputeContext| {
            let (u, mask) = pad_inputs(ctx)?;
            let (dims, u) = u.try_extract_tensor::<f32>()?;
            let (mask_dims, mask) = mask.try_extract_tensor::<i32>()?;
            let (&[tokens, h], &[b, s]) = (&dims[..], &mask_dims[..]) else {
                return Err(ort::Error::new("akidb Repad: u must be [tokens, hidden], mask [batch, seq]"));
            };
            let hidden = usize::try_from(h).unwrap_or(0);
            let real = mask.iter().filter(|&&m| m != 0).count();
            if hidden == 0 || usize::try_from(tokens).ok() != Some(real) || u.len() != real * hidden {
                return Err(ort::Error::new("akidb Repad: u and mask do not match"));
            }
            let mut out = ctx.output(0, vec![b, s, h])?.ok_or_else(|| ort::Error::new("akidb Repad: no output"))?;
            Unpad::undo(u, mask, hidden, out.try_extract_tensor_mut::<f32>()?.1);
            Ok(())
        }))
    }
}

fn pad_inputs(
    ctx: &ort::operator::ComputeContext,
) -> ort::Result<(ort::value::ValueRef<'_>, ort::value::ValueRef<'_>)> {
    let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb Unpad/Repad: missing input"));
    Ok((input(0)?, input(1)?))
}
