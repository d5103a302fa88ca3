//! What clients list before they embed: OpenAI's `/v1/models` (the `openai` client's
//! `models.list()`, LiteLLM's and Open WebUI's model discovery) and Ollama's `/api/tags`,
//! `/api/show` and `/api/version`, which Ollama front-ends call first.

use axum::{
    extract::{Path, State},
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::{
    api::ApiJson,
    error::ApiError,
    registry::Served,
    schema::{Failures, OpenAiFailures},
    state::AppState,
};

/// One model as OpenAI lists it.
#[derive(Serialize, ToSchema)]
pub struct OpenAiModel {
    /// The name requests use: the served name.
    id: String,
    /// Always `model`.
    object: &'static str,
    /// When the server had it ready, in Unix seconds.
    created: u64,
    owned_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<OpenAiModel>,
}

fn openai_model(model: &Served, created: u64) -> OpenAiModel {
    let id = &model.backend.info().id;
    // A Hub id's owner is its namespace; a local directory's is this server.
    let owner = id.split_once('/').filter(|_| !std::path::Path::new(id).is_absolute()).map(|(o, _)| o);
    OpenAiModel { id: model.name.clone(), object: "model", created, owned_by: owner.unwrap_or("akidb").to_string() }
}

/// Every served model, in the order served.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses((status = 200, description = "The served models", body = OpenAiModelList), OpenAiFailures))]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<OpenAiModelList>, ApiError> {
    let registry = state.registry()?;
    let data = registry.models().iter().map(|m| openai_model(m, registry.ready_at)).collect();
    Ok(Json(OpenAiModelList { object: "list", data }))
}

/// One served model, by any name that selects it (id, short name, served name).
#[utoipa::path(get, path = "/v1/models/{model}", tag = "OpenAI",
    params(("model" = String, Path, description = "A served model's id, short name or served name")),
    responses((status = 200, description = "The model", body = OpenAiModel), OpenAiFailures))]
pub async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<OpenAiModel>, ApiError> {
    let registry = state.registry()?;
    let model = registry.find(&name)?;
    Ok(Json(openai_model(model, registry.ready_at)))
}

/// One model as Ollama lists it.
#[derive(Serialize, ToSchema)]
pub struct OllamaModel {
    /// The served name with Ollama's `:latest` tag (either selects the model).
    name: String,
    model: String,
    details: OllamaDetails,
}

#[derive(Serialize, ToSchema)]
pub struct OllamaDetails {
    /// Always `onnx`.
    format: &'static str,
    /// embedder, cross-encoder or classifier.
    family: String,
}

#[derive(Serialize, ToSchema)]
pub struct OllamaTags {
    models: Vec<OllamaModel>,
}

/// Ollama's model list (Open WebUI, Continue and the `ollama` client read it).
#[utoipa::path(get, path = "/api/tags", tag = "Ollama",
    responses((status = 200, description = "The served models", body = OllamaTags), Failures))]
pub async fn ollama_tags(State(state): State<AppState>) -> Result<Json<OllamaTags>, ApiError> {
    let registry = state.registry()?;
    let models = registry
        .models()
        .iter()
        .map(|m| {
            let name = format!("{}:latest", m.name);
            OllamaModel {
                model: name.clone(),
                name,
                details: OllamaDetails { format: "onnx", family: m.kind().to_string() },
            }
        })
        .collect();
    Ok(Json(OllamaTags { models }))
}

/// `POST /api/show`: `model` (or `name`, as older clients send it).
#[derive(Deserialize, ToSchema)]
pub struct OllamaShowRequest {
    model: Option<String>,
    name: Option<String>,
}

/// What Ollama front-ends read of a model: its details, its `model_info` (architecture, embedding
/// length, context length) and its capabilities. There is no Modelfile or template.
#[derive(Serialize, ToSchema)]
pub struct OllamaShow {
    modelfile: &'static str,
    parameters: &'static str,
    template: &'static str,
    details: OllamaDetails,
    #[schema(value_type = Object)]
    model_info: Value,
    capabilities: Vec<&'static str>,
}

/// Ollama's model details for one served model.
#[utoipa::path(post, path = "/api/show", tag = "Ollama", request_body = OllamaShowRequest,
    responses((status = 200, description = "The model's details", body = OllamaShow), Failures))]
pub async fn ollama_show(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<OllamaShowRequest>,
) -> Result<Json<OllamaShow>, ApiError> {
    let registry = state.registry()?;
    let name = req.model.or(req.name).ok_or_else(|| ApiError::unprocessable("missing field `model`").param("model"))?;
    let model = registry.find(&name)?;
    let info = model.backend.info();
    let arch = info.pipeline.family.clone().unwrap_or_else(|| "unknown".into());
    let model_info = json!({
        "general.architecture": arch,
        "general.basename": info.id,
        format!("{arch}.embedding_length"): info.dimension,
        format!("{arch}.context_length"): info.max_seq_length,
    });
    let capabilities = match model.kind() {
        akidb_engine::model_config::Kind::Embedder => vec!["embedding"],
        _ => Vec::new(),
    };
    Ok(Json(OllamaShow {
        modelfile: "",
        parameters: "",
        template: "",
        details: OllamaDetails { format: "onnx", family: model.kind().to_string() },
        model_info,
        capabilities,
    }))
}

/// Ollama's version answer.
#[derive(Serialize, ToSchema)]
pub struct OllamaVersion {
    /// An Ollama version whose API akidb's Ollama routes follow (`/api/embed` with `dimensions`).
    version: &'static str,
}

/// `GET /api/version`: front-ends check it before anything else.
#[utoipa::path(get, path = "/api/version", tag = "Ollama",
    responses((status = 200, description = "The Ollama API version served", body = OllamaVersion)))]
pub async fn ollama_version() -> Json<OllamaVersion> {
    Json(OllamaVersion { version: OLLAMA_API_VERSION })
}

/// The Ollama release whose embedding API (`/api/embed` with `truncate` and `dimensions`) the
/// Ollama routes follow.
const OLLAMA_API_VERSION: &str = "0.12.0";
