//! The seam between serving and inference, in the spirit of text-embeddings-inference's
//! `Backend`: the router needs a model's identity and tokenizer, the scheduler needs "embed this
//! batch" and "are you well". The real implementation is [`Embedder`]; tests plug in a fake whose
//! speed and failures they control.

use crate::{batching::Budget, embedder::ModelInfo, tokenize::Tokens, Embedder};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The texts cannot be tokenized: the client's input is at fault.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("backend unhealthy: {0}")]
    Unhealthy(String),
}

pub trait Backend: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;
    /// Limits of one inference call; the scheduler cuts batches within them.
    fn budget(&self) -> Budget;
    fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokens>, BackendError>;
    /// Pooled, unnormalized vectors for one batch, in the batch's order.
    fn embed(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError>;
    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Where inference runs and why (`/info`); `None` for backends without a device.
    fn device(&self) -> Option<crate::device::DeviceReport> {
        None
    }
}

impl Backend for Embedder {
    fn info(&self) -> &ModelInfo {
        Embedder::info(self)
    }

    fn device(&self) -> Option<crate::device::DeviceReport> {
        Some(Embedder::device(self))
    }

    fn budget(&self) -> Budget {
        Embedder::budget(self)
    }

    fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokens>, BackendError> {
        Embedder::tokenize(self, texts).map_err(|e| BackendError::Tokenize(e.to_string()))
    }

    fn embed(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.infer(batch).map_err(|e| BackendError::Inference(e.to_string()))
    }
}
