//! Every failure is JSON with the right status, in the shape the calling client expects:
//! OpenAI's `{"error":{"message","type","param","code"}}` on `/v1/*`, TEI's
//! `{"error","error_type"}` elsewhere (Ollama clients read `error` too).

use axum::body::Bytes;
use axum::{
    extract::rejection::BytesRejection,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Native,
    OpenAi,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub flavor: Flavor,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, flavor: Flavor::Native, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    pub fn overloaded(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many concurrent requests (limit {limit}); retry shortly"),
        );
        e.retry_after = Some(1);
        e
    }

    /// Over the queued-token bound: come back when the queue has drained.
    pub fn queue_full(overloaded: super::scheduler::Overloaded) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, format!("the server is busy: {overloaded}"));
        e.retry_after = Some(overloaded.retry_after);
        e
    }

    pub fn timed_out(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request did not finish within the {} s request timeout; its remaining texts were dropped",
                limit.as_secs_f64()
            ),
        )
    }

    fn error_type(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::TOO_MANY_REQUESTS => "overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "unhealthy",
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "timeout",
            s if s.is_server_error() => "backend",
            _ => "validation",
        }
    }

    fn openai_type(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.flavor {
            Flavor::Native => json!({ "error": self.message, "error_type": self.error_type() }),
            Flavor::OpenAi => json!({ "error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.error_type(),
            }}),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Parses a JSON body: 415 for another content type, 413 over the size limit, 400 for broken
/// JSON, 422 for JSON of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))) {
        let shown = if content_type.is_empty() { "none".to_string() } else { format!("'{content_type}'") };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type: application/json, got {shown}"),
        ));
    }
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than the {limit}-byte limit"))
        } else {
            ApiError::bad_request(format!("could not read the request body: {rejection}"))
        }
    })?;
    // The path names the offending field (`truncation_direction: unknown variant …`).
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let (path, result) = match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => (".".to_string(), de.end().map(|()| value)),
        Err(e) => (e.path().to_string(), Err(e.into_inner())),
    };
    result.map_err(|e| match e.classify() {
        serde_json::error::Category::Data if path == "." => ApiError::unprocessable(format!("invalid request: {e}")),
        serde_json::error::Category::Data => ApiError::unprocessable(format!("invalid request: {path}: {e}")),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}
