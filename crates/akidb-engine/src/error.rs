//! The engine's one error type at its edge: what went wrong loading or running a model, with the
//! lower layers' errors passed through as they are.

use crate::{
    dense::DenseError, hub::HubError, model_config::ConfigError, session::runtime::RuntimeError,
    tokenize::TokenizeError,
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Dense(std::sync::Arc<DenseError>),
    #[error("the ONNX graph has no output akidb can use: {why} (outputs: {outputs})")]
    UnusableOutput { why: String, outputs: String },
    #[error("input {index} is longer than the model's maximum of {max} tokens (truncation is off)")]
    TooLong { index: usize, max: usize },
    #[error("model {model} gives {got} values per text but its config says {expected}")]
    DimensionMismatch { model: String, got: usize, expected: usize },
    #[error("{model} is {is}; {what} needs {needs}")]
    WrongKind { model: String, is: &'static str, what: &'static str, needs: &'static str },
    #[error("{model} has no prompt named '{name}' ({known})")]
    UnknownPrompt { model: String, name: String, known: String },
}
