//! The embedding routes. Each speaks its clients' format (read by [`ApiJson`]), counts its inputs
//! ([`AppState::inputs`]), picks an embedding model from the registry and funnels into
//! [`AppState::run`]; errors take their shape from the route's path, not from here.

use std::time::Instant;

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    api::{texts, ApiJson},
    backend::Output,
    encoding::{self, Encoded, Encoding},
    error::ApiError,
    infer::Encode,
    protocol::{EmbedResponse, Usage},
    registry::Served,
    schema::{texts_schema, Failures, OpenAiFailures},
    state::AppState,
    token_ids::openai_texts,
};
use akidb_engine::{
    model_config::Kind,
    sparse::SparseVector,
    tokenize::{Input, Side},
    Rows,
};

const EMBEDDER: &[Kind] = &[Kind::Embedder];

/// `POST /api/v1/embed`.
#[derive(Deserialize, ToSchema)]
pub struct NativeRequest {
    /// A served model's id, short name or served name [default: the first embedding model]
    model: Option<String>,
    /// One text or an array of texts.
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    inputs: Value,
    /// Unit-length vectors [default: true]
    normalize: Option<bool>,
    /// Only the first this many dimensions (Matryoshka models), normalized after the cut [default: all]
    dimensions: Option<i64>,
    /// Cut texts longer than the model's maximum instead of refusing them [default: true]
    truncate: Option<bool>,
    /// Which end of a too-long input is cut [default: Right]
    truncation_direction: Option<Side>,
    /// One of the model's prompts (`config_sentence_transformers.json`), put before each text
    /// [default: the model's default prompt, if any]
    prompt_name: Option<String>,
    /// `float`; `base64` (little-endian float32 bytes); `ubinary` (sign bits packed 8 per byte,
    /// uint8 numbers, as `numpy.packbits(x > 0)`) or `binary` (the same bytes minus 128, int8) [default: float]
    encoding_format: Option<String>,
}

/// The native answer with `encoding_format` other than float: each vector as written.
#[derive(Serialize, ToSchema)]
pub struct EncodedEmbedResponse {
    model: String,
    embeddings: Vec<Encoded>,
    usage: Usage,
}

/// The native API.
#[utoipa::path(post, path = "/api/v1/embed", tag = "akidb", request_body = NativeRequest,
    responses((status = 200, description = "One vector per input, in order (numbers, or as `encoding_format` asks)", content(
        (EmbedResponse = "application/json"),
        (EncodedEmbedResponse = "application/json"))), Failures))]
pub async fn native_embed(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<NativeRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let encoding = match req.encoding_format.as_deref() {
        None => Encoding::Float,
        Some(name) => Encoding::parse(name, "encoding_format")?,
    };
    let encode = Encode::new(req.truncate, req.truncation_direction, req.prompt_name);
    let route = "POST /api/v1/embed";
    let (model, out) = embed(&state, route, req.model, req.inputs, req.normalize, req.dimensions, encode).await?;
    let usage = Usage { total_tokens: out.total_tokens, duration_ms: started.elapsed().as_millis() as u64 };
    let model = model.name.clone();
    Ok(match encoding {
        Encoding::Float => Json(EmbedResponse { model, embeddings: out.vectors, usage }).into_response(),
        encoding => {
            let embeddings = out.vectors.into_iter().map(|v| encoding.encode(v)).collect();
            Json(EncodedEmbedResponse { model, embeddings, usage }).into_response()
        }
    })
}

/// `/api/v1/embed` and `/embed`: one request under two APIs. Unit vectors unless `normalize` is
/// false; with `dimensions`, cut first and normalized after the cut.
async fn embed<'a>(
    state: &'a AppState,
    route: &str,
    model: Option<String>,
    inputs: Value,
    normalize: Option<bool>,
    dimensions: Option<i64>,
    encode: Encode,
) -> Result<(&'a Served, Rows), ApiError> {
    let inputs = state.inputs(texts(inputs, "inputs")?, "inputs")?;
    let model = state.pick(model.as_deref(), route, EMBEDDER)?;
    let cut = encoding::dimensions(
        dimensions,
        model.backend.info().dimension,
        StatusCode::UNPROCESSABLE_ENTITY,
        "dimensions",
    )?;
    let normalize = normalize.unwrap_or(true);
    let mut out = state.run(model, inputs.singles(), Output::Rows, normalize && cut.is_none(), encode).await?;
    encoding::shorten(&mut out.vectors, cut, normalize);
    Ok((model, out))
}

/// `POST /embed` and `POST /embed_all`.
#[derive(Deserialize, ToSchema)]
pub struct TeiRequest {
    /// One text or an array of texts.
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    inputs: Value,
    /// Unit-length vectors (`/embed` only) [default: true]
    normalize: Option<bool>,
    /// Only the first this many dimensions (`/embed` only; Matryoshka models), normalized after
    /// the cut [default: all]
    dimensions: Option<i64>,
    /// Cut texts longer than the model's maximum instead of refusing them [default: true]
    truncate: Option<bool>,
    /// Which end of a too-long input is cut [default: Right]
    truncation_direction: Option<Side>,
    /// One of the model's prompts (`config_sentence_transformers.json`), put before each text
    /// [default: the model's default prompt, if any]
    prompt_name: Option<String>,
    /// A served model [default: the first embedding model]
    model: Option<String>,
}

/// text-embeddings-inference's route.
#[utoipa::path(post, path = "/embed", tag = "TEI", request_body = TeiRequest,
    responses((status = 200, description = "One vector per input, in order", body = Vec<Vec<f32>>), Failures))]
pub async fn tei_embed(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TeiRequest>,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let encode = Encode::new(req.truncate, req.truncation_direction, req.prompt_name);
    let (_, out) = embed(&state, "POST /embed", req.model, req.inputs, req.normalize, req.dimensions, encode).await?;
    Ok(Json(out.vectors))
}

/// Every token's hidden state, unpooled: per input, one vector per token (special tokens included).
#[utoipa::path(post, path = "/embed_all", tag = "TEI", request_body = TeiRequest,
    responses((status = 200, description = "Per input, one vector per token", body = Vec<Vec<Vec<f32>>>), Failures))]
pub async fn embed_all(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TeiRequest>,
) -> Result<Json<Vec<Vec<Vec<f32>>>>, ApiError> {
    let encode = Encode::new(req.truncate, req.truncation_direction, req.prompt_name);
    let inputs = state.inputs(texts(req.inputs, "inputs")?, "inputs")?;
    let model = state.pick(req.model.as_deref(), "POST /embed_all", EMBEDDER)?;
    let dim = model.backend.info().dimension.max(1);
    let out = state.run(model, inputs.singles(), Output::Tokens, false, encode).await?;
    Ok(Json(out.vectors.into_iter().map(|flat| flat.chunks(dim).map(<[f32]>::to_vec).collect()).collect()))
}

/// `POST /embed_sparse`.
#[derive(Deserialize, ToSchema)]
pub struct SparseRequest {
    /// One text or an array of texts.
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    inputs: Value,
    /// Keep only the largest this many weights of each vector (akidb) [default: the model's
    /// `max_active_dims`, else all]
    top_k: Option<usize>,
    /// Cut texts longer than the model's maximum instead of refusing them [default: true]
    truncate: Option<bool>,
    /// Which end of a too-long input is cut [default: Right]
    truncation_direction: Option<Side>,
    /// One of the model's prompts (`config_sentence_transformers.json`), put before each text
    /// [default: the model's default prompt, if any]
    prompt_name: Option<String>,
    /// A served model [default: the first sparse model]
    model: Option<String>,
}

/// One non-zero weight of a sparse vector: a vocabulary index and its value.
#[derive(Serialize, ToSchema)]
pub struct SparseValue {
    index: u32,
    value: f32,
}

const SPARSE: &[Kind] = &[Kind::SparseEmbedder];

/// A SPLADE model's sparse vectors, as text-embeddings-inference answers them: per input, its
/// non-zero weights by vocabulary index (ascending).
#[utoipa::path(post, path = "/embed_sparse", tag = "TEI", request_body = SparseRequest,
    responses((status = 200, description = "Per input, its non-zero weights", body = Vec<Vec<SparseValue>>), Failures))]
pub async fn embed_sparse(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SparseRequest>,
) -> Result<Json<Vec<Vec<SparseValue>>>, ApiError> {
    let encode = Encode::new(req.truncate, req.truncation_direction, req.prompt_name);
    let inputs = state.inputs(texts(req.inputs, "inputs")?, "inputs")?;
    let model = state.pick(req.model.as_deref(), "POST /embed_sparse", SPARSE)?;
    let top_k = req.top_k.or(model.backend.info().max_active_dims);
    let out = state.run(model, inputs.singles(), Output::Rows, false, encode).await?;
    Ok(Json(
        out.vectors
            .iter()
            .map(|row| {
                SparseVector::from_dense(row, top_k)
                    .entries()
                    .map(|(index, value)| SparseValue { index, value })
                    .collect()
            })
            .collect(),
    ))
}

/// `POST /similarity`'s inputs.
#[derive(Deserialize, ToSchema)]
pub struct SimilarityInputs {
    source_sentence: String,
    sentences: Vec<String>,
}

/// `POST /similarity`.
#[derive(Deserialize, ToSchema)]
pub struct SimilarityRequest {
    inputs: SimilarityInputs,
    /// Cut texts longer than the model's maximum instead of refusing them [default: true]
    truncate: Option<bool>,
    /// Which end of a too-long input is cut [default: Right]
    truncation_direction: Option<Side>,
    /// One of the model's prompts (`config_sentence_transformers.json`), put before each text
    /// [default: the model's default prompt, if any]
    prompt_name: Option<String>,
    /// A served model [default: the first embedding model]
    model: Option<String>,
}

/// Cosine similarity of `source_sentence` to each of `sentences`, in order.
#[utoipa::path(post, path = "/similarity", tag = "TEI", request_body = SimilarityRequest,
    responses((status = 200, description = "One cosine per sentence", body = Vec<f32>), Failures))]
pub async fn similarity(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SimilarityRequest>,
) -> Result<Json<Vec<f32>>, ApiError> {
    let encode = Encode::new(req.truncate, req.truncation_direction, req.prompt_name);
    // Not the count rule (the source sentence is an input too): nothing to compare it with.
    if req.inputs.sentences.is_empty() {
        return Err(ApiError::unprocessable("inputs.sentences must not be empty").param("inputs.sentences"));
    }
    let mut inputs = vec![Input::Single(req.inputs.source_sentence)];
    inputs.extend(req.inputs.sentences.into_iter().map(Input::Single));
    let inputs = state.inputs(inputs, "inputs")?;
    let model = state.pick(req.model.as_deref(), "POST /similarity", EMBEDDER)?;
    let out = state.run(model, inputs, Output::Rows, true, encode).await?;
    let (source, others) = out.vectors.split_first().ok_or_else(|| ApiError::unprocessable("no vectors"))?;
    Ok(Json(others.iter().map(|v| v.iter().zip(source).map(|(a, b)| a * b).sum()).collect()))
}

/// `POST /api/embed`.
#[derive(Deserialize, ToSchema)]
pub struct OllamaRequest {
    model: Option<String>,
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    input: Value,
    truncate: Option<bool>,
    /// Only the first this many dimensions (Matryoshka models), normalized after the cut [default: all]
    dimensions: Option<i64>,
}

/// Ollama's answer; durations in nanoseconds, as Ollama reports them.
#[derive(Serialize, ToSchema)]
pub struct OllamaResponse {
    model: String,
    embeddings: Vec<Vec<f32>>,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: usize,
}

/// Ollama's route (vectors are unit length there too).
#[utoipa::path(post, path = "/api/embed", tag = "Ollama", request_body = OllamaRequest,
    responses((status = 200, description = "Ollama's embed response", body = OllamaResponse), Failures))]
pub async fn ollama_embed(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<OllamaRequest>,
) -> Result<Json<OllamaResponse>, ApiError> {
    let started = Instant::now();
    let inputs = state.inputs(texts(req.input, "input")?, "input")?;
    let model = state.pick(req.model.as_deref(), "POST /api/embed", EMBEDDER)?;
    let cut =
        encoding::dimensions(req.dimensions, model.backend.info().dimension, StatusCode::BAD_REQUEST, "dimensions")?;
    let encode = Encode::new(req.truncate, None, None);
    let mut out = state.run(model, inputs.singles(), Output::Rows, cut.is_none(), encode).await?;
    encoding::shorten(&mut out.vectors, cut, true);
    Ok(Json(OllamaResponse {
        model: model.name.clone(),
        embeddings: out.vectors,
        total_duration: started.elapsed().as_nanos() as u64,
        load_duration: 0,
        prompt_eval_count: out.total_tokens,
    }))
}

/// `POST /api/embeddings`, Ollama's first embedding route.
#[derive(Deserialize, ToSchema)]
pub struct OllamaLegacyRequest {
    model: Option<String>,
    /// One text.
    prompt: String,
}

#[derive(Serialize, ToSchema)]
pub struct OllamaLegacyResponse {
    embedding: Vec<f32>,
}

/// The route older Ollama clients call (LangChain's and LlamaIndex's first Ollama integrations):
/// one text, and, as Ollama answers there, an unnormalized vector; an empty prompt gets an empty
/// one.
#[utoipa::path(post, path = "/api/embeddings", tag = "Ollama", request_body = OllamaLegacyRequest,
    responses((status = 200, description = "The text's vector", body = OllamaLegacyResponse), Failures))]
pub async fn ollama_embeddings(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<OllamaLegacyRequest>,
) -> Result<Json<OllamaLegacyResponse>, ApiError> {
    let model = state.pick(req.model.as_deref(), "POST /api/embeddings", EMBEDDER)?;
    if req.prompt.is_empty() {
        return Ok(Json(OllamaLegacyResponse { embedding: Vec::new() }));
    }
    let inputs = state.inputs(vec![Input::Single(req.prompt)], "prompt")?;
    let mut out = state.run(model, inputs, Output::Rows, false, Encode::default()).await?;
    Ok(Json(OllamaLegacyResponse { embedding: out.vectors.pop().unwrap_or_default() }))
}

/// `POST /v1/embeddings`.
#[derive(Deserialize, ToSchema)]
pub struct OpenAiRequest {
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    input: Value,
    model: Option<String>,
    /// `float` or `base64` (little-endian f32) [default: float]
    encoding_format: Option<String>,
    /// Shorten the vectors to this many dimensions (re-normalized)
    dimensions: Option<i64>,
}

/// OpenAI's embeddings list.
#[derive(Serialize, ToSchema)]
pub struct OpenAiResponse {
    /// Always `list`.
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: OpenAiUsage,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    object: &'static str,
    index: usize,
    /// Numbers, or with `encoding_format: base64` the little-endian f32 bytes in base64.
    embedding: Encoded,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// OpenAI's API, errors in OpenAI's shape.
#[utoipa::path(post, path = "/v1/embeddings", tag = "OpenAI", request_body = OpenAiRequest,
    responses((status = 200, description = "OpenAI's embeddings list", body = OpenAiResponse), OpenAiFailures))]
pub async fn openai_embeddings(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<OpenAiRequest>,
) -> Result<Json<OpenAiResponse>, ApiError> {
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("encoding_format must be 'float' or 'base64', not '{other}'"))
                .param("encoding_format"))
        }
    };
    let texts = openai_texts(req.input, req.model.as_deref(), state.config.openai_token_ids)?;
    let inputs = state.inputs(texts, "input")?;
    let model = state.pick(req.model.as_deref(), "POST /v1/embeddings", EMBEDDER)?;
    let cut =
        encoding::dimensions(req.dimensions, model.backend.info().dimension, StatusCode::BAD_REQUEST, "dimensions")?;
    let mut out = state.run(model, inputs.singles(), Output::Rows, cut.is_none(), Encode::default()).await?;
    encoding::shorten(&mut out.vectors, cut, true);
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 { Encoding::Base64.encode(v) } else { Encoding::Float.encode(v) };
            OpenAiEmbedding { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(OpenAiResponse {
        object: "list",
        data,
        model: model.name.clone(),
        usage: OpenAiUsage { prompt_tokens: out.total_tokens, total_tokens: out.total_tokens },
    }))
}
