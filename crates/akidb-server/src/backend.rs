//! The seam between serving and inference, in the spirit of text-embeddings-inference's
//! `Backend`: the router needs a model's identity and tokenizer, the scheduler needs "run this
//! batch" and "are you well". The real implementation is [`Model`] (any model kind); tests plug
//! in a fake whose speed and failures they control.

use akidb_engine::{
    batching::Budget,
    model::ModelInfo,
    options::EncodeOptions,
    tokenize::{Input, Token, Tokens},
    EngineError, Model,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The texts cannot be tokenized: the client's input is at fault.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("backend unhealthy: {0}")]
    Unhealthy(String),
    /// The request asked for something this model does not have (an unknown prompt).
    #[error("{0}")]
    Options(String),
    /// The backend cannot do this at all (a fake without a tokenizer, logits without tokens).
    #[error("{0}")]
    Unsupported(String),
}

/// What the scheduler asks of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One row per sequence: an embedder's pooled vector, or a head's logits.
    Rows,
    /// Every real token's hidden state, flattened (`/embed_all`).
    Tokens,
}

pub trait Backend: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;
    /// Limits of one inference call; the scheduler cuts batches within them.
    fn budget(&self) -> Budget;
    fn tokenize(&self, inputs: &[Input], options: &EncodeOptions) -> Result<Vec<Tokens>, BackendError>;
    /// One row per member of the batch, in order: pooled, unnormalized vectors for an embedder;
    /// logits for a cross-encoder or classifier.
    fn forward(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError>;
    /// Each member's real tokens' hidden states, one after the other.
    fn forward_tokens(&self, _batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError> {
        Err(BackendError::Unsupported(format!("{} gives no per-token vectors", self.info().id)))
    }
    /// Every token of `text` with its character span, untruncated (`/tokenize`).
    fn tokens(&self, _text: &str, _add_special_tokens: bool) -> Result<Vec<Token>, BackendError> {
        Err(BackendError::Unsupported(format!("{} has no tokenizer to show", self.info().id)))
    }
    fn decode(&self, _ids: &[u32], _skip_special_tokens: bool) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(format!("{} has no tokenizer to decode with", self.info().id)))
    }
    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Where inference runs and why (`/info`); `None` for backends without a device.
    fn device(&self) -> Option<akidb_engine::session::device::DeviceReport> {
        None
    }
}

impl Backend for Model {
    fn info(&self) -> &ModelInfo {
        Model::info(self)
    }

    fn device(&self) -> Option<akidb_engine::session::device::DeviceReport> {
        Some(Model::device(self))
    }

    fn budget(&self) -> Budget {
        Model::budget(self)
    }

    fn tokenize(&self, inputs: &[Input], options: &EncodeOptions) -> Result<Vec<Tokens>, BackendError> {
        self.tokenize_inputs(inputs, options).map_err(|e| match e {
            EngineError::UnknownPrompt { .. } => BackendError::Options(e.to_string()),
            e => BackendError::Tokenize(e.to_string()),
        })
    }

    fn forward(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.infer(batch).map_err(|e| BackendError::Inference(e.to_string()))
    }

    fn forward_tokens(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.infer_tokens(batch).map_err(|e| BackendError::Inference(e.to_string()))
    }

    fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>, BackendError> {
        Model::tokens(self, text, add_special_tokens).map_err(|e| BackendError::Tokenize(e.to_string()))
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, BackendError> {
        Model::decode(self, ids, skip_special_tokens).map_err(|e| BackendError::Tokenize(e.to_string()))
    }
}
