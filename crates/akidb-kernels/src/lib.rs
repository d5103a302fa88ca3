//! akidb's own CPU kernels, registered with ONNX Runtime as custom operators (domain [`DOMAIN`])
//! for the graph `graph` rewrites, run on ONNX Runtime's own intra-op thread pool.
//!
//! - `Attention` (`attention`): ONNX Runtime's `Attention`/`MultiHeadAttention` run the scores
//!   and the weighted sum through a general GEMM per head (K = head size, 32 on MiniLM: thin for a
//!   GEMM), score every padded key, and pass the whole score tensor through memory between steps.
//!   This kernel does one (row, head) at a time with its working set in cache: keys transposed
//!   once, scores of eight queries against 16–32 keys held in registers, softmax and the weighted
//!   sum in place, stopping at the row's last real token. The Q/K/V bias is added as the values
//!   are read, so the projection before it is a plain `MatMul`.
//! - `SkipLayerNorm` and `BiasGelu` (`rowwise`): what ONNX Runtime runs as two or three passes
//!   over memory (bias `Add`, residual `Add`, `LayerNormalization`; bias `Add`, `Gelu`), in one.
//! - `MatMulBf16` (`bf16`): ONNX Runtime 1.31 has no bf16 GEMM on x86; this product rounds its
//!   inputs to bf16 and sums in fp32 with AVX512-BF16's `vdpbf16ps`, from weights packed at
//!   rewrite time (`--precision bf16`, kept only when a quality gate passes).
//! - `Unpad` / `Repad` (`unpad`): the encoder between them works on real tokens only, so no
//!   matrix product is spent on padding (attention then takes the rows' extents from the mask).
//!
//! The modules: `simd` (the 16-float vector trait `V16`, its AVX-512, AVX2 + FMA and portable
//! implementations, the run-time choice among them, shared math), `attention`, `rowwise` and
//! `unpad` (the kernels, written once against `V16`), `ops` (the ONNX Runtime operators: inputs,
//! attributes, size checks, the thread pool). Every `unsafe` block says, in a `// SAFETY:`
//! comment, which contract makes it sound, and every `unsafe fn` and unsafe trait states its
//! contract in a `# Safety` section (the crate's lints deny both omissions).
//!
//! Measured in docs/performance.md ("Levers of issue #15").

mod attention;
pub mod bf16;
mod ops;
mod rowwise;
mod simd;
mod unpad;

#[cfg(test)]
mod speed;
#[cfg(test)]
mod tests;

pub use attention::{measured_faster, supported_head_size};
pub use ops::{operators, ATTENTION, BIAS_GELU, DOMAIN, MATMUL_BF16, REPAD, SKIP_LAYER_NORM, UNPAD};

/// Part of the key of a verified graph (`fusion`): a change to any kernel's arithmetic must bump
/// it, so graphs verified against the old kernels are verified again.
pub const VERSION: u32 = 1;
