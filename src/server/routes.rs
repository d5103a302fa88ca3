//! The embedding routes. Each speaks its clients' format and funnels into [`AppState::embed`].

use std::time::Instant;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::HeaderMap,
    Json,
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    error::{parse_json, ApiError, Flavor},
    AppState,
};
use crate::{
    pooling,
    protocol::{EmbedResponse, Usage},
};

type Body = Result<Bytes, BytesRejection>;

/// A string or an array of strings, with a message that says which element is wrong.
fn texts(value: Value, field: &'static str) -> Result<Vec<String>, ApiError> {
    match value {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                Value::Number(_) => Err(ApiError::unprocessable(format!(
                    "{field}[{i}] is a number: token-id inputs are not supported, send text"
                ))
                .param(field)),
                Value::Array(_) => Err(ApiError::unprocessable(format!(
                    "{field}[{i}] is an array: token-id inputs are not supported, send text"
                ))
                .param(field)),
                other => Err(ApiError::unprocessable(format!("{field}[{i}] must be a string, not {}", kind(&other)))
                    .param(field)),
            })
            .collect(),
        Value::Null => Err(ApiError::unprocessable(format!("missing field `{field}`")).param(field)),
        other => Err(ApiError::unprocessable(format!(
            "{field} must be a string or an array of strings, not {}",
            kind(&other)
        ))
        .param(field)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Deserialize)]
pub struct NativeRequest {
    model: Option<String>,
    #[serde(default)]
    inputs: Value,
    normalize: Option<bool>,
    truncate: Option<bool>,
}

/// `POST /api/v1/embed`: the native API.
pub async fn native_embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EmbedResponse>, ApiError> {
    let started = Instant::now();
    let req: NativeRequest = parse_json(&headers, body, state.config.payload_limit)?;
    let texts = texts(req.inputs, "inputs")?;
    let out =
        state.embed(req.model.as_deref(), texts, req.normalize.unwrap_or(true), req.truncate.unwrap_or(true)).await?;
    Ok(Json(EmbedResponse {
        model: state.model_name(),
        embeddings: out.vectors,
        usage: Usage { total_tokens: out.total_tokens, duration_ms: started.elapsed().as_millis() as u64 },
    }))
}

#[derive(Deserialize)]
pub struct TeiRequest {
    #[serde(default)]
    inputs: Value,
    normalize: Option<bool>,
    truncate: Option<bool>,
}

/// `POST /embed`: text-embeddings-inference's route.
pub async fn tei_embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let req: TeiRequest = parse_json(&headers, body, state.config.payload_limit)?;
    let texts = texts(req.inputs, "inputs")?;
    let out = state.embed(None, texts, req.normalize.unwrap_or(true), req.truncate.unwrap_or(true)).await?;
    Ok(Json(out.vectors))
}

#[derive(Deserialize)]
pub struct OllamaRequest {
    model: Option<String>,
    #[serde(default)]
    input: Value,
    truncate: Option<bool>,
}

/// `POST /api/embed`: Ollama's route (vectors are unit length there too).
pub async fn ollama_embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let req: OllamaRequest = parse_json(&headers, body, state.config.payload_limit)?;
    let texts = texts(req.input, "input")?;
    let out = state.embed(req.model.as_deref(), texts, true, req.truncate.unwrap_or(true)).await?;
    Ok(Json(json!({
        "model": state.model_name(),
        "embeddings": out.vectors,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": out.total_tokens,
    })))
}

#[derive(Deserialize)]
pub struct OpenAiRequest {
    #[serde(default)]
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
}

/// `POST /v1/embeddings`: OpenAI's API, errors in OpenAI's shape.
pub async fn openai_embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    openai(state, headers, body).await.map_err(|e| e.flavor(Flavor::OpenAi))
}

async fn openai(state: AppState, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let req: OpenAiRequest = parse_json(&headers, body, state.config.payload_limit)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("encoding_format must be 'float' or 'base64', not '{other}'"))
                .param("encoding_format"))
        }
    };
    let texts = texts(req.input, "input")?;
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 && (d as usize) <= state.dimension() => Some(d as usize),
        Some(d) => {
            return Err(ApiError::bad_request(format!(
                "dimensions must be between 1 and the model's {}, not {d}",
                state.dimension()
            ))
            .param("dimensions"))
        }
    };
    // Shortened vectors are re-normalized after truncation, so normalize only then.
    let out = state.embed(req.model.as_deref(), texts, dimensions.is_none(), true).await?;
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, mut v)| {
            if let Some(d) = dimensions {
                v.truncate(d);
                pooling::normalize(&mut v);
            }
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": state.model_name(),
        "usage": { "prompt_tokens": out.total_tokens, "total_tokens": out.total_tokens },
    })))
}
