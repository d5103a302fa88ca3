//! What the server needs to know about its limits and identity: plain data, filled in by
//! `settings` from flags, environment and the config file.

use std::time::Duration;

/// Server limits and identity. Defaults are what a single-machine deployment wants.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Another name clients may send as `model` (besides the repo id and its short name).
    pub served_model_name: Option<String>,
    pub api_key: Option<String>,
    pub payload_limit: usize,
    pub max_inputs: usize,
    pub max_concurrent_requests: usize,
    pub max_batch_requests: usize,
    /// Tokens admitted but not yet embedded, across all requests; beyond it new requests get 429.
    pub max_queued_tokens: usize,
    /// Past this a request is answered with an error and its remaining texts are dropped.
    pub request_timeout: Option<Duration>,
    /// After SIGTERM, in-flight requests get this long before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// From accept (or the next request's first byte) to its complete headers.
    pub header_read_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keep_alive_timeout: Duration,
    /// Time allowed to receive a request's body once its headers are in.
    pub body_read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            served_model_name: None,
            api_key: None,
            payload_limit: 2_000_000,
            max_inputs: 512,
            max_concurrent_requests: 512,
            max_batch_requests: 64,
            // ~20 s of work for MiniLM on two cores (~11k tokens/s): bounded, yet room for bulk jobs.
            max_queued_tokens: 262_144,
            request_timeout: Some(Duration::from_secs(60)),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 2048,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}
