//! akidb's integration tests in one binary, as uv's `tests/it` (the timing tests are in `tests/timing`).
//! Each module tests through real components: the ONNX Runtime session, the hf-hub cache in
//! `../shared/hf`, an HTTP server on 127.0.0.1 with a real client, the built `akidb` binary.

mod architecture;
mod cli;
mod clients;
mod cluster;
mod cold_start;
mod common;
mod concurrent_sessions;
mod corpus;
mod embed_apis;
mod families;
mod fusion;
mod hardening;
mod models;
mod onnxruntime_script;
mod pipeline;
mod precision;
mod profile;
mod prompts;
mod release;
mod server;
