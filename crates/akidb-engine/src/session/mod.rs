//! Tokens in, hidden states out: the ONNX Runtime session of one model file, and everything that
//! decides what that session is — the graph rewrite ([`graph`], running akidb's kernels), its
//! verification ([`fusion`]), bf16 matrix products behind a quality gate ([`precision`]), the device ([`device`]), and the caches they keep ([`cache`]).

pub mod cache;
pub mod device;
pub mod fusion;
pub mod graph;
pub mod precision;
pub mod runtime;
