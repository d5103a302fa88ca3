//! Every failure is JSON with the right status, in the shape the calling client expects:
//! OpenAI's `{"error":{"message","type","param","code"}}` on OpenAI's and Cohere's routes, TEI's
//! `{"error","error_type"}` elsewhere (Ollama clients read `error` too). Code that fails only says
//! what went wrong; which shape the client gets is decided once, by [`Flavor::of`] the request's
//! path, in the `middleware::shape_errors` layer.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Native,
    OpenAi,
}

impl Flavor {
    /// The shape a path's errors take — the one place this is decided. OpenAI's clients (and
    /// LangChain's, LiteLLM's) read `error.message`: OpenAI's shape on `/v1/*`, on `/embeddings`
    /// (OpenAI's route for clients whose base URL has no `/v1`), and on Cohere's `/v2/rerank` and
    /// `/v2/embed`, whose clients parse the same shape as on `/v1/*`. TEI's shape everywhere else.
    pub fn of(path: &str) -> Self {
        if path.starts_with("/v1/") || path == "/embeddings" || path == "/v2/rerank" || path == "/v2/embed" {
            Self::OpenAi
        } else {
            Self::Native
        }
    }
}

/// Clone so that a response can carry it (an extension) to the layer that shapes it.
#[derive(Debug, Clone)]
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

    /// The body in this error's flavour.
    pub fn body(&self) -> serde_json::Value {
        match self.flavor {
            Flavor::Native => json!({ "error": self.message, "error_type": self.error_type() }),
            Flavor::OpenAi => json!({ "error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.error_type(),
            }}),
        }
    }
}

/// Rendered in the error's own flavour (TEI's unless set), and carried along as an extension so
/// that `middleware::shape_errors` can render it again in the shape its route's clients read.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self);
        response
    }
}
