//! TEI's tokenizer routes: `/tokenize` (tokens with character spans) and `/decode`. They use a
//! model's tokenizer only, so they skip the scheduler; large requests run off the async workers.

use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    api::{kind, texts, ApiJson},
    error::ApiError,
    infer::{prompt, tokenizer_work},
    schema::{ids_schema, texts_schema, Failures},
    state::AppState,
};
use akidb_engine::{model_config::Kind, tokenize::Token};

const ANY: &[Kind] = &[Kind::Embedder, Kind::CrossEncoder, Kind::Classifier];

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
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Vec<Vec<Token>>>, ApiError> {
    let texts = state.inputs(texts(req.inputs, "inputs")?, "inputs")?;
    let backend = state.pick(req.model.as_deref(), "POST /tokenize", ANY)?.backend.clone();
    let prompt = prompt(backend.info(), req.prompt_name.as_deref())?;
    let texts = texts.into_vec();
    let texts: Vec<String> =
        if prompt.is_empty() { texts } else { texts.into_iter().map(|t| format!("{prompt}{t}")).collect() };
    let special = req.add_special_tokens.unwrap_or(true);
    let (count, bytes) = (texts.len(), texts.iter().map(String::len).sum());
    let tokens =
        tokenizer_work(count, bytes, move || texts.iter().map(|t| backend.tokens(t, special)).collect()).await?;
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

/// One list of ids or a batch of lists; `[]` is an empty batch, which the count rule refuses.
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
        Value::Array(items) if items.is_empty() => Ok(Vec::new()),
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
    ApiJson(req): ApiJson<DecodeRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    let lists = state.inputs(id_lists(req.ids)?, "ids")?;
    let backend = state.pick(req.model.as_deref(), "POST /decode", ANY)?.backend.clone();
    let skip = req.skip_special_tokens.unwrap_or(true);
    let (count, bytes) = (lists.len(), lists.iter().map(Vec::len).sum::<usize>() * 4);
    let texts =
        tokenizer_work(count, bytes, move || lists.iter().map(|ids| backend.decode(ids, skip)).collect()).await?;
    Ok(Json(texts))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn ids_are_one_list_or_a_batch_of_lists() {
        assert_eq!(id_lists(json!([1, 2])).unwrap(), vec![vec![1, 2]]);
        assert_eq!(id_lists(json!([[1], [2, 3]])).unwrap(), vec![vec![1], vec![2, 3]]);
        assert!(id_lists(json!([])).unwrap().is_empty(), "an empty batch, refused by the count rule");
        for bad in [json!([-1]), json!([1.5]), json!([[1], 2]), json!("1"), json!([4294967296u64])] {
            assert_eq!(id_lists(bad.clone()).unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }
}
