//! The routes that describe the server rather than compute: `/health` (what a load balancer or
//! Kubernetes probe reads), `/info` (the models and limits) and `/metrics` (Prometheus).

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{error::ApiError, registry::Served, schema::ErrorBody, state::AppState};

/// 200 when every model is loaded and its scheduler and backend are well; else 503 with why.
#[utoipa::path(get, path = "/health", tag = "akidb", responses(
    (status = 200, description = "Every model is loaded and well", body = Object),
    (status = 503, description = "Loading, or unhealthy (with the reason)", body = Object)))]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let Some(registry) = state.registry.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "loading" }))).into_response();
    };
    let problems: Vec<String> = registry
        .models()
        .iter()
        .filter_map(|m| {
            m.scheduler.health().and_then(|()| m.backend.health().map_err(|e| e.to_string())).err().map(|e| {
                if registry.models().len() > 1 {
                    format!("{}: {e}", m.name)
                } else {
                    e
                }
            })
        })
        .collect();
    if problems.is_empty() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        let error = problems.join("; ");
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unhealthy", "error": error }))).into_response()
    }
}

/// One model as `/info` lists it.
fn model_info(model: &Served) -> serde_json::Value {
    let info = model.backend.info();
    let device = model.backend.device();
    let budget = model.backend.budget();
    json!({
        "model_id": info.id,
        "served_model_name": model.name,
        "kind": info.kind,
        "model_revision": info.revision,
        "onnx_file": info.onnx_file,
        "dimension": info.dimension,
        "labels": (!info.labels.is_empty()).then_some(&info.labels),
        "activation": info.activation,
        "max_input_length": info.max_seq_length,
        "pooling": info.pooling,
        "prompts": (!info.prompts.is_empty()).then_some(&info.prompts),
        "default_prompt_name": info.default_prompt_name,
        // The provider serving now: after a CoreML run-time failure, the CPU.
        "execution_provider": device.as_ref().map_or(info.provider, |d| d.provider.as_str()),
        "device": device,
        "max_batch_tokens": budget.max_tokens,
        "max_batch_size": budget.max_rows,
        // What the loader found and does: inputs fed, output read, Dense layers, fusion and why.
        "pipeline": info.pipeline,
    })
}

/// Every model with its kind, dimension or labels, max length and execution provider; the first
/// model's fields also at the top level, where single-model clients read them.
#[utoipa::path(get, path = "/info", tag = "akidb", responses(
    (status = 200, description = "The served models and the server's limits", body = Object),
    (status = 503, description = "The models are still loading", body = ErrorBody)))]
pub(crate) async fn info(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let registry = state.registry()?;
    let models: Vec<serde_json::Value> = registry.models().iter().map(model_info).collect();
    let mut out = models.first().cloned().unwrap_or_else(|| json!({}));
    let c = &state.config;
    let first = registry.models().first().map(|m| m.backend.info());
    let budget = registry.models().first().map(|m| m.backend.budget());
    let extra = json!({
        "models": models,
        "onnx_runtime_version": first.map(|i| i.onnx_runtime_version.clone()),
        "version": env!("CARGO_PKG_VERSION"),
        "limits": {
            "payload_limit": c.payload_limit,
            "max_inputs": c.max_inputs,
            "max_concurrent_requests": c.max_concurrent_requests,
            "max_batch_requests": c.max_batch_requests,
            "max_queued_tokens": c.max_queued_tokens,
            "request_timeout_seconds": c.request_timeout.map(|d| d.as_secs_f64()),
            "shutdown_timeout_seconds": c.shutdown_timeout.as_secs_f64(),
            "max_batch_tokens": budget.map(|b| b.max_tokens),
            "max_batch_size": budget.map(|b| b.max_rows),
        },
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    Ok(Json(out))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "akidb", responses(
    (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
