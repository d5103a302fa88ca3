//! TEI's tokenizer routes: `/tokenize` (tokens with character spans) and `/decode`. They use a
//! model's tokenizer only, so they skip the scheduler; large requests run off the async workers.

use axum::{extract::State, http::HeaderMap, http::StatusCode, Json};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    backend::BackendError,
    error::{parse_json, ApiError},
    openapi::{ids_schema, texts_schema, Failures},
    routes::{kind, texts, Body},
    AppState,
};
use akidb_engine::{model_config::Kind, tokenize::Token};

const ANY: &[Kind] = &[Kind::Embedder, Kind::CrossEncoder, Kind::Classifier];

/// Runs `f` on the blocking pool when the request is large, in place otherwise.
pub(crate) async fn tokenizer_work<T: Send + 'static>(
    bytes: usize,
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    let result = if bytes < 4096 {
        f()
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("tokenizer task failed: {e}")))?
    };
    result.map_err(|e| match e {
        BackendError::Unsupported(m) => ApiError::unprocessable(m),
        other => ApiError::unprocessable(other.to_string()),
    })
}

/// `POST /tokenize`.
#[derive(Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// One text or an array of texts.
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    inputs: Value,
    /// Add the model's special tokens ([CLS], [SEP], …) [default: true]
    add_special_tokens: Option<bool>,
    /// One of the model's prompts, put before each text as the embedding routes do; spans then
    /// count from the prompt's start [default: the model's default prompt, if any]
    prompt_name: Option<String>,
    /// A served model [default: the first model]
    model: Option<String>,
}

/// Every token of each input, untruncated, with its id and its `start`..`stop` character span in
/// the input (`null` for special tokens).
#[utoipa::path(post, path = "/tokenize", tag = "TEI", request_body = TokenizeRequest,
    responses((status = 200, description = "Per input, its tokens", body = Vec<Vec<Token>>), Failures))]
pub async fn tokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Vec<Token>>>, ApiError> {
    let req: TokenizeRequest = parse_json(&headers, body, state.config.payload_limit)?;
    let texts = texts(req.inputs, "inputs")?;
    if texts.is_empty() {
        return Err(ApiError::unprocessable("inputs must not be empty").param("inputs"));
    }
    if texts.len() > state.config.max_inputs {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} inputs in one request; the limit is {}", texts.len(), state.config.max_inputs),
        ));
    }
    let backend = state.pick(req.model.as_deref(), "POST /tokenize", ANY)?.backend.clone();
    let prompt = backend
        .info()
        .prompt(req.prompt_name.as_deref())
        .map_err(|e| ApiError::unprocessable(e.to_string()).param("prompt_name"))?
        .unwrap_or_default();
    let texts: Vec<String> =
        if prompt.is_empty() { texts } else { texts.into_iter().map(|t| format!("{prompt}{t}")).collect() };
    let special = req.add_special_tokens.unwrap_or(true);
    let bytes = texts.iter().map(String::len).sum();
    let tokens = tokenizer_work(bytes, move || texts.iter().map(|t| backend.tokens(t, special)).collect()).await?;
    Ok(Json(tokens))
}

/// `POST /decode`.
#[derive(Deserialize, ToSchema)]
pub struct DecodeRequest {
    /// Token ids, or a batch of them.
    #[serde(default)]
    #[schema(schema_with = ids_schema)]
    ids: Value,
    /// Leave out special tokens [default: true]
    skip_special_tokens: Option<bool>,
    /// A served model [default: the first model]
    model: Option<String>,
}

fn id_lists(value: Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |m: String| ApiError::unprocessable(m).param("ids");
    let ids = |items: Vec<Value>, at: &str| -> Result<Vec<u32>, ApiError> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(format!("ids{at}[{i}] must be a token id (an integer from 0 to 2^32-1)")))
            })
            .collect()
    };
    match value {
        Value::Array(items) if items.is_empty() => Err(bad("ids must not be empty".into())),
        Value::Array(items) if items[0].is_array() => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Array(inner) => ids(inner, &format!("[{i}]")),
                other => Err(bad(format!("ids[{i}] must be an array of token ids, not {}", kind(&other)))),
            })
            .collect(),
        Value::Array(items) => Ok(vec![ids(items, "")?]),
        Value::Null => Err(bad("missing field `ids`".into())),
        other => Err(bad(format!("ids must be an array of token ids or of arrays of them, not {}", kind(&other)))),
    }
}

/// Token ids back to text: one string per list of ids.
#[utoipa::path(post, path = "/decode", tag = "TEI", request_body = DecodeRequest,
    responses((status = 200, description = "One text per list of ids", body = Vec<String>), Failures))]
pub async fn decode(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<String>>, ApiError> {
    let req: DecodeRequest = parse_json(&headers, body, state.config.payload_limit)?;
    let lists = id_lists(req.ids)?;
    if lists.len() > state.config.max_inputs {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} id lists in one request; the limit is {}", lists.len(), state.config.max_inputs),
        ));
    }
    let backend = state.pick(req.model.as_deref(), "POST /decode", ANY)?.backend.clone();
    let skip = req.skip_special_tokens.unwrap_or(true);
    let bytes = lists.iter().map(Vec::len).sum::<usize>() * 4;
    let texts = tokenizer_work(bytes, move || lists.iter().map(|ids| backend.decode(ids, skip)).collect()).await?;
    Ok(Json(texts))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ids_are_one_list_or_a_batch_of_lists() {
        assert_eq!(id_lists(json!([1, 2])).unwrap(), vec![vec![1, 2]]);
        assert_eq!(id_lists(json!([[1], [2, 3]])).unwrap(), vec![vec![1], vec![2, 3]]);
        for bad in [json!([]), json!([-1]), json!([1.5]), json!([[1], 2]), json!("1"), json!([4294967296u64])] {
            assert_eq!(id_lists(bad.clone()).unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }
}
