//! akidb's engine: text in, vectors (or a head's logits) out, in process — tokenizers → ONNX
//! Runtime → pooling → normalization. No HTTP, no command line, no file formats: those are the
//! server's, the binary's and the corpus crate's.
//!
//! Data flows one way: [`hub`] finds the model's files, [`model_config`] reads what the model says
//! about itself, [`tokenize`] turns text into tokens, [`session`] turns tokens into hidden states
//! (the graph rewritten and verified first, the device chosen by measurement), [`pooling`] turns
//! them into vectors ([`sparse`] a SPLADE model's logits into sparse vectors) and [`scores`]
//! logits into scores; [`quantize`] packs vectors into bits; [`model`] ties them together.
//! docs/architecture.md has the exact graph.

pub mod batching;
pub mod dense;
pub mod error;
mod forward;
pub mod hub;
pub mod load;
pub mod model;
pub mod model_config;
pub mod options;
pub mod pooling;
pub mod quantize;
pub mod scores;
pub mod session;
pub mod sparse;
pub mod tokenize;

pub use error::EngineError;
pub use model::{Model, ModelInfo, Rows, SparseRows};
pub use options::{EncodeOptions, ModelOptions, DEFAULT_MODEL};
