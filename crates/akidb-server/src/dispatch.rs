//! TEI's default routes, `POST /` and `POST /invocations` (SageMaker's): the clients that post to
//! a server's bare address (huggingface_hub's `InferenceClient`, Haystack's TEI embedders,
//! LiteLLM's `huggingface/` provider) reach the route their body and the model ask for, as TEI
//! chooses it: by the model's kind, and for an embedder by the body (`source_sentence` asks for
//! similarity). The model is the one the body names, else the first served.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::{
    api::{from_value, ApiJson},
    error::ApiError,
    routes, scoring,
    state::AppState,
};
use akidb_engine::model_config::Kind;

/// `POST /` and `POST /invocations`.
#[utoipa::path(post, path = "/", tag = "TEI", request_body = Object,
    responses((status = 200, description = "What /embed, /embed_sparse, /similarity, /rerank or /predict answers, chosen by the model's kind and the body")))]
pub async fn tei_default(State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, ApiError> {
    let kind = {
        let registry = state.registry()?;
        match body.get("model").and_then(Value::as_str) {
            Some(name) => registry.find(name)?.kind(),
            None => registry
                .models()
                .first()
                .map(|m| m.kind())
                .ok_or_else(|| ApiError::unprocessable("no model is served"))?,
        }
    };
    let similarity = body.get("inputs").is_some_and(|i| i.get("source_sentence").is_some());
    Ok(match kind {
        Kind::Embedder if similarity => {
            routes::similarity(State(state), ApiJson(from_value(body)?)).await?.into_response()
        }
        Kind::Embedder => routes::tei_embed(State(state), ApiJson(from_value(body)?)).await?.into_response(),
        Kind::SparseEmbedder => routes::embed_sparse(State(state), ApiJson(from_value(body)?)).await?.into_response(),
        Kind::CrossEncoder if body.get("query").is_some() => {
            scoring::rerank(State(state), ApiJson(body)).await?.into_response()
        }
        Kind::CrossEncoder | Kind::Classifier => {
            scoring::predict(State(state), ApiJson(from_value(body)?)).await?.into_response()
        }
    })
}

/// `POST /invocations`: SageMaker's name for the same route.
#[utoipa::path(post, path = "/invocations", tag = "TEI", request_body = Object,
    responses((status = 200, description = "As `POST /`")))]
pub async fn invocations(state: State<AppState>, body: ApiJson<Value>) -> Result<Response, ApiError> {
    tei_default(state, body).await
}
