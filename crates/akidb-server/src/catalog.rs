//! What clients list before they embed: OpenAI's `/v1/models` (the `openai` client's
//! `models.list()`, LiteLLM's and Open WebUI's model discovery) and Ollama's `/api/tags`.

use axum::{
    extract::{Path, State},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
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
