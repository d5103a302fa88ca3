//! akidb: text embeddings in process — tokenizers → ONNX Runtime → pooling → normalization.
//!
//! Data flows one way: [`hub`] finds the model's files, [`config`] reads what the model says about
//! itself, [`tokenize`] and [`runtime`] turn text into hidden states ([`graph`] fuses attention
//! first, [`fusion`] keeps that only when it checks out), [`pooling`] into vectors; [`embedder`]
//! ties them together and [`server`] puts them behind HTTP. [`settings`] turns flags, environment
//! and the config file into their options. docs/architecture.md has the exact module graph.

pub mod batching;
pub mod cache;
pub mod config;
pub mod corpus;
pub mod device;
pub mod embedder;
pub mod fusion;
pub mod graph;
pub mod hub;
pub mod kernel;
pub mod pooling;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod tokenize;

pub use embedder::{EmbedError, Embedder, EmbedderOptions, Embeddings, EncodeOptions, ModelInfo, DEFAULT_MODEL};
