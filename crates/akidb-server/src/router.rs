//! The whole HTTP surface in one table: every route with its handler, the fallbacks, and the
//! layers every request goes through (see `middleware` for what each does). Only this module
//! imports the handlers' modules and `openapi`.

use axum::{
    extract::Request,
    http::StatusCode,
    middleware,
    routing::{get, post},
    Router,
};

use crate::{
    catalog, cohere, dispatch,
    error::ApiError,
    middleware::{authorize, read_body, shape_errors, track},
    openapi, routes, scoring,
    state::AppState,
    status, tokens,
};

/// The whole HTTP surface; `state` decides readiness, limits and auth. Layers run outermost
/// (last added) first: track → shape_errors → authorize → read_body → the route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/embed", post(routes::native_embed))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/embeddings", post(routes::openai_embeddings))
        .route("/embed", post(routes::tei_embed))
        .route("/embed_all", post(routes::embed_all))
        .route("/embed_sparse", post(routes::embed_sparse))
        .route("/similarity", post(routes::similarity))
        .route("/api/embed", post(routes::ollama_embed))
        .route("/api/embeddings", post(routes::ollama_embeddings))
        .route("/api/tags", get(catalog::ollama_tags))
        .route("/api/show", post(catalog::ollama_show))
        .route("/api/version", get(catalog::ollama_version))
        .route("/v1/models", get(catalog::list_models))
        .route("/v1/models/{*model}", get(catalog::get_model))
        .route("/rerank", post(scoring::rerank))
        .route("/v1/embed", post(cohere::embed_v1))
        .route("/v2/embed", post(cohere::embed_v2))
        .route("/v1/rerank", post(scoring::cohere_rerank))
        .route("/v2/rerank", post(scoring::cohere_rerank_v2))
        .route("/predict", post(scoring::predict))
        .route("/tokenize", post(tokens::tokenize))
        .route("/decode", post(tokens::decode))
        .route("/", post(dispatch::tei_default))
        .route("/invocations", post(dispatch::invocations))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi::document()))
        .route("/health", get(status::health))
        .route("/info", get(status::info))
        .route("/metrics", get(status::metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(shape_errors))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    //! The router without a model: readiness, routing, content types and auth, driven with
    //! `tower::ServiceExt::oneshot` as axum's own examples do.
    use axum::body::{to_bytes, Body};
    use tower::ServiceExt;

    use super::*;
    use crate::config::ServerConfig;

    async fn call(app: Router, request: axum::http::Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    fn post(path: &str, content_type: &str, body: &str) -> axum::http::Request<Body> {
        axum::http::Request::post(path).header("content-type", content_type).body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn before_the_model_is_loaded_health_and_embeddings_are_503() {
        let app = router(AppState::new(ServerConfig::default()));
        let (s, v) = call(app.clone(), axum::http::Request::get("/health").body(Body::empty()).unwrap()).await;
        assert_eq!((s, v["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("loading")));
        let (s, v) = call(app.clone(), post("/api/v1/embed", "application/json", r#"{"inputs":["a"]}"#)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error_type"], "unhealthy");
        let (s, v) = call(app, post("/v1/embeddings", "application/json", r#"{"input":"a"}"#)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn content_type_and_json_are_checked_before_anything_else() {
        let app = router(AppState::new(ServerConfig::default()));
        let (s, _) = call(app.clone(), post("/embed", "text/plain", r#"{"inputs":"a"}"#)).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (s, v) = call(app.clone(), post("/embed", "application/json; charset=utf-8", r#"{"inputs":"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = call(app, post("/embed", "application/json", r#"{"inputs": 5}"#)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "the request's shape is checked before readiness: {v}");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let app = router(AppState::new(ServerConfig::default()));
        let (s, v) = call(app.clone(), axum::http::Request::get("/v1/completions").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "not_found");
        let (s, v) = call(app, axum::http::Request::get("/api/v1/embed").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(v["error"].as_str().unwrap().contains("GET"));
    }

    /// One rule for every error, whichever layer or handler made it: OpenAI's shape on OpenAI's
    /// and Cohere's routes, TEI's elsewhere, with the headers the error came with.
    #[tokio::test]
    async fn errors_take_the_shape_their_routes_clients_read() {
        let app = router(AppState::new(ServerConfig { api_key: Some("k".into()), ..Default::default() }));
        for path in ["/v1/embeddings", "/embeddings", "/v1/rerank", "/v2/rerank"] {
            let response = app.clone().oneshot(post(path, "application/json", "{}")).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}: the header survives the reshaping");
            let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(v["error"]["type"], "authentication_error", "{path}: {v}");
        }
        let (s, v) = call(app.clone(), post("/embed", "application/json", "{}")).await;
        assert_eq!((s, v["error_type"].as_str()), (StatusCode::UNAUTHORIZED, Some("authentication")));

        let app = router(AppState::new(ServerConfig::default()));
        let (s, v) = call(app.clone(), axum::http::Request::get("/v1/embeddings").body(Body::empty()).unwrap()).await;
        assert_eq!((s, v["error"]["type"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("invalid_request_error")));
        let (s, v) = call(app.clone(), post("/v2/rerank", "text/plain", "{}")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
        );
        let (s, v) = call(app.clone(), post("/v1/embeddings", "application/json", r#"{"input": []}"#)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "counted before readiness: {v}");
        assert_eq!(
            (v["error"]["param"].as_str(), v["error"]["message"].as_str()),
            (Some("input"), Some("input must not be empty"))
        );
        let (s, v) = call(app, post("/rerank", "application/json", r#"{"query": "q", "texts": []}"#)).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("texts must not be empty")));
    }

    #[tokio::test]
    async fn api_key_is_required_except_on_health() {
        let app = router(AppState::new(ServerConfig { api_key: Some("k".into()), ..Default::default() }));
        let (s, _) = call(app.clone(), axum::http::Request::get("/health").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "health answers without a key");
        let (s, v) = call(app.clone(), axum::http::Request::get("/info").body(Body::empty()).unwrap()).await;
        assert_eq!((s, v["error_type"].as_str()), (StatusCode::UNAUTHORIZED, Some("authentication")));
        let authorized =
            axum::http::Request::get("/info").header("authorization", "Bearer k").body(Body::empty()).unwrap();
        let (s, _) = call(app, authorized).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "past auth, the model is not loaded yet");
    }
}
