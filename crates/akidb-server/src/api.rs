//! The request side every route shares: [`ApiJson`], the one way a JSON body becomes a request
//! type, and the readers of fields several routes take (a text or a list of texts). Handlers
//! import this module; it imports no handler.

use axum::{
    extract::{FromRequest, Request},
    http::{header, HeaderMap, StatusCode},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{error::ApiError, state::AppState};

/// A JSON request body, as every route reads it (after axum's `customize-extractor-error`
/// example): 415 for another content type, 413 over the payload limit, 400 for broken JSON, 422
/// for JSON of the wrong shape, naming the offending field. Its rejection is an [`ApiError`], so
/// a client gets these in its API's shape like every other error.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        json_content_type(request.headers())?;
        // The limit is the extractor's own, not axum's `DefaultBodyLimit`: whatever the layers,
        // no route can read more than `--payload-limit`.
        let limit = state.config.payload_limit;
        let bytes = axum::body::to_bytes(request.into_body(), limit).await.map_err(|e| {
            let cause = e.into_inner();
            if cause.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than the {limit}-byte limit"),
                )
            } else {
                ApiError::bad_request(format!("could not read the request body: {cause}"))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// `application/json`, or a `+json` type such as `application/vnd.api+json`, with any parameters.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        return Ok(());
    }
    let shown = if content_type.is_empty() { "none".to_string() } else { format!("'{content_type}'") };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("expected Content-Type: application/json, got {shown}"),
    ))
}

/// A request type from a JSON value a route read first to choose how to answer, with the same
/// 422 naming the field that [`ApiJson`] gives.
pub(crate) fn from_value<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    // Straight from the value: the body was parsed once already, it is not printed and read again.
    serde_path_to_error::deserialize(body).map_err(|e| invalid(&e.path().to_string(), e.into_inner()))
}

/// The 422 for JSON of the wrong shape, naming the offending field when there is one.
fn invalid(path: &str, e: serde_json::Error) -> ApiError {
    match path {
        "." => ApiError::unprocessable(format!("invalid request: {e}")),
        _ => ApiError::unprocessable(format!("invalid request: {path}: {e}")),
    }
}

/// 400 for bytes that are not JSON, 422 for JSON that is not a `T`.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The path names the offending field (`truncation_direction: unknown variant …`).
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (path, result) = match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => (".".to_string(), de.end().map(|()| value)),
        Err(e) => (e.path().to_string(), Err(e.into_inner())),
    };
    result.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid(&path, e),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}

/// Where token ids usually come from: LangChain's `OpenAIEmbeddings` sends tiktoken ids unless told not to.
pub(crate) const TOKEN_IDS_HINT: &str = " (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))";

/// A string or an array of strings, with a message that says which element is wrong.
pub(crate) fn texts(value: Value, field: &'static str) -> Result<Vec<String>, ApiError> {
    match value {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                Value::Number(_) => Err(ApiError::unprocessable(format!(
                    "{field}[{i}] is a number: token-id inputs are not supported, send text{TOKEN_IDS_HINT}"
                ))
                .param(field)),
                Value::Array(_) => Err(ApiError::unprocessable(format!(
                    "{field}[{i}] is an array: token-id inputs are not supported, send text{TOKEN_IDS_HINT}"
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

/// A JSON value's kind, for messages ("must be a string, not a number").
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde::Deserialize;

    use super::*;
    use crate::config::ServerConfig;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        n: u32,
        side: Option<akidb_engine::tokenize::Side>,
    }

    async fn extract(content_type: &str, body: &str) -> Result<ApiJson<Shape>, ApiError> {
        let state = AppState::new(ServerConfig { payload_limit: 64, ..Default::default() });
        let request = Request::post("/x").header("content-type", content_type).body(Body::from(body.to_string()));
        ApiJson::from_request(request.expect("a request"), &state).await
    }

    #[tokio::test]
    async fn the_extractor_refuses_each_way_a_body_can_be_wrong() {
        assert_eq!(extract("application/json; charset=utf-8", r#"{"n": 1}"#).await.expect("fine").0.n, 1);
        assert_eq!(extract("application/vnd.api+json", r#"{"n": 2}"#).await.expect("+json is JSON").0.n, 2);
        let refused = |r: Result<ApiJson<Shape>, ApiError>| r.err().map(|e| (e.status, e.message)).expect("refused");
        let (s, m) = refused(extract("text/plain", r#"{"n": 1}"#).await);
        assert_eq!(
            (s, m.as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json, got 'text/plain'")
        );
        let (s, m) = refused(extract("application/json", &format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(64))).await);
        assert_eq!((s, m.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "request body is larger than the 64-byte limit"));
        let (s, m) = refused(extract("application/json", r#"{"n": "#).await);
        assert!(s == StatusCode::BAD_REQUEST && m.starts_with("malformed JSON"), "{m}");
        let (s, m) = refused(extract("application/json", r#"{"n": 1, "side": "Up"}"#).await);
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY && m.starts_with("invalid request: side: unknown variant"),
            "{m}"
        );
        let (s, m) = refused(extract("application/json", "5").await);
        assert!(s == StatusCode::UNPROCESSABLE_ENTITY && m.starts_with("invalid request: invalid type"), "{m}");
    }
}
