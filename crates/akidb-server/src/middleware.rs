//! What every request goes through before and after its handler, outermost first:
//!
//! - [`track`]: the request's span, its metrics and its one log line;
//! - [`shape_errors`]: every error in the shape its route's clients read ([`Flavor::of`]);
//! - [`authorize`]: the API key (401);
//! - [`read_body`]: the whole body within the body-read timeout (408) and the payload limit (413).

use std::time::Instant;

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::{field::Empty, Instrument as _};

use crate::{
    error::{ApiError, Flavor},
    state::AppState,
};

/// Opens the request's span, counts and times the request, and logs one line for it in the span.
/// The span is the request's trace: tokenizing is a child of it, the inference thread records
/// into it (it travels with the job through the queue), and its fields say where the time went.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        %method,
        %route,
        model = Empty,
        tokens = Empty,
        tokenize_ms = Empty,
        queue_ms = Empty,
        inference_ms = Empty,
    );
    // Only a missed route's path is logged (the matched route is the span's `route`).
    let path = (route == "unmatched").then(|| request.uri().path().to_string());
    let response = next.run(request).instrument(span.clone()).await;
    // A 4xx says why in the log too (the message the client got); 5xx are logged where they happen.
    let reason =
        response.extensions().get::<ApiError>().filter(|e| e.status.is_client_error()).map(|e| e.message.clone());
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe_request(&route, status, elapsed);
    let ms = crate::metrics::millis(elapsed);
    span.in_scope(|| match reason {
        // What a person debugging a client needs: which route was missed, why a request was refused.
        Some(reason) if path.is_some() => {
            tracing::warn!(status, ms, path = path.as_deref().unwrap_or_default(), reason = %reason, "request matched no route")
        }
        Some(reason) => tracing::info!(status, ms, reason = %reason, "request refused"),
        None => tracing::info!(status, ms, "request"),
    });
    response
}

/// Renders every [`ApiError`] a handler, an extractor or a layer inside this one returned in the
/// shape of the request's route. Errors only say what went wrong; this is where their shape is
/// chosen, once, so that no route can answer an OpenAI client in TEI's shape. Headers the error
/// picked up on the way (`Retry-After`, `WWW-Authenticate`) are kept.
pub(crate) async fn shape_errors(request: Request, next: Next) -> Response {
    let flavor = Flavor::of(request.uri().path());
    let mut response = next.run(request).await;
    let Some(error) = response.extensions_mut().remove::<ApiError>() else { return response };
    // Kept on the response for `track`, which logs a refusal's reason.
    if error.flavor == flavor {
        response.extensions_mut().insert(error);
        return response;
    }
    let error = error.flavor(flavor);
    let body = error.body().to_string();
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions.insert(error);
    Response::from_parts(parts, Body::from(body))
}

/// Reads the whole body within the body-read timeout (408) and the payload limit (413), so a
/// client that trickles its body cannot hold a handler, then hands it on in memory.
pub(crate) async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use http_body_util::BodyExt as _;
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, state.config.payload_limit);
    let error = match tokio::time::timeout(state.config.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => return next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", state.config.body_read_timeout.as_secs_f64()),
        ),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the {}-byte limit", state.config.payload_limit),
        ),
        Ok(Err(e)) => ApiError::bad_request(format!("could not read the request body: {e}")),
    };
    error.into_response()
}

/// With an API key configured, every request but the probes' and the API description's must
/// carry it as a bearer token (401 with `WWW-Authenticate: Bearer` otherwise).
pub(crate) async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else { return next.run(request).await };
    // Health for probes; the API's description so a browser can show /docs.
    let path = request.uri().path();
    if path == "/health" || path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key: send Authorization: Bearer <key>")
            .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// Compares without stopping at the first difference, so response time does not tell how much of
/// a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
