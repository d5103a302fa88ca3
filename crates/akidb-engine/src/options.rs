//! What a caller asks of a model: which one and how to run it ([`ModelOptions`]), and how inputs
//! become tokens ([`EncodeOptions`]).

use crate::{
    session::{graph::AttentionOp, runtime::SessionOptions},
    tokenize::Side,
};

pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// How inputs become tokens beyond the model's own settings: TEI's `truncation_direction` and
/// sentence-transformers' `prompt_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    pub side: Side,
    /// One of the model's prompts, put before each text; `None` for the model's default prompt, if any.
    pub prompt_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Hugging Face repo id or local directory.
    pub model: String,
    pub revision: Option<String>,
    /// Path of the ONNX file inside the model; default `onnx/model.onnx`, then `model.onnx`.
    pub onnx_file: Option<String>,
    pub session: SessionOptions,
    /// Padded tokens (rows × longest) per inference call: bounds memory and keeps batches fast;
    /// `None`: [`default_max_batch_tokens`] for the attention kernel the session uses.
    pub max_batch_tokens: Option<usize>,
    pub max_batch_size: usize,
}

/// Measured on MiniLM (docs/performance.md): with ONNX Runtime's kernels ~1k padded tokens per
/// call keeps the activations in cache and beats large batches by ~25%; with akidb's (padding
/// dropped inside the encoder, see `graph`) 2k beats 1k by 2–3%.
pub fn default_max_batch_tokens(attention: AttentionOp) -> usize {
    if attention == AttentionOp::Akidb {
        2048
    } else {
        1024
    }
}

impl ModelOptions {
    /// The batch budget: the one asked for, else the default for the attention kernel the graph
    /// rewrite uses (`--attention packed` gets ONNX Runtime's budget).
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens.unwrap_or_else(|| default_max_batch_tokens(self.session.attention()))
    }
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.to_string(),
            revision: None,
            onnx_file: None,
            session: SessionOptions::default(),
            max_batch_tokens: None,
            max_batch_size: 128,
        }
    }
}
