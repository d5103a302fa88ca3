//! The native API's wire format, shared by `akidb embed` and `POST /api/v1/embed`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbedResponse {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub total_tokens: usize,
    pub duration_ms: u64,
}

/// One line of `akidb embed --format jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexedEmbedding {
    pub index: usize,
    pub embedding: Vec<f32>,
}
