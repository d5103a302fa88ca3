//! Cohere's embed API, `POST /v1/embed` and `POST /v2/embed`, as `cohere.Client.embed` and
//! `cohere.ClientV2.embed` (and LangChain's and LlamaIndex's Cohere integrations) call it:
//! `input_type` picks the model's own prompt, `embedding_types` the forms returned (float, base64,
//! ubinary, binary), `truncate` what happens to long texts, and v2's `output_dimension` and
//! `max_tokens` shorten vectors and texts. Anything akidb cannot honour is a 422 that says so.

use std::{collections::BTreeMap, time::Instant};

use axum::{extract::State, http::StatusCode, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    api::{texts, ApiJson},
    backend::Output,
    encoding::{self, Encoded, Encoding},
    error::ApiError,
    infer::{tokenizer_work, Encode},
    schema::{texts_schema, OpenAiFailures},
    scoring::{cap_tokens, request_id, CohereApiVersion},
    state::AppState,
};
use akidb_engine::{model::ModelInfo, model_config::Kind, tokenize::Side};

/// `POST /v1/embed` and `POST /v2/embed` (v2 adds `inputs`, `output_dimension` and `max_tokens`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CohereEmbedRequest {
    /// The texts to embed.
    #[serde(default)]
    #[schema(schema_with = texts_schema)]
    texts: Value,
    /// v2: inputs whose content is one text each (`{"content": [{"type": "text", "text": …}]}`).
    inputs: Option<Vec<CohereInput>>,
    /// Images are not embedded by akidb (a text model): any is a 422.
    images: Option<Vec<Value>>,
    /// A served model's id, short name or alias [default: the first embedding model]
    model: Option<String>,
    /// `search_query`, `search_document`, `classification` or `clustering`: the model's prompt of
    /// that name (`query`, `document`/`passage`, …) goes before each text when it has one
    input_type: Option<String>,
    /// Any of float, base64, ubinary, binary [default: float; v1 without it answers
    /// `embeddings_floats`]
    embedding_types: Option<Vec<String>>,
    /// `END` (cut the end of long texts), `START` (cut the start) or `NONE` (refuse them) [default: END]
    truncate: Option<String>,
    /// v2: only the first this many dimensions (Matryoshka models), re-normalized [default: all]
    output_dimension: Option<i64>,
    /// v2: cut each text after this many tokens [default: the model's maximum]
    max_tokens: Option<i64>,
    /// v2: accepted when 0 (Cohere's default): akidb schedules by size, not by priority
    priority: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
pub struct CohereInput {
    content: Vec<CohereContent>,
}

#[derive(Deserialize, ToSchema)]
pub struct CohereContent {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// Cohere's embed answer: `embeddings_floats` (v1 without `embedding_types`: one list per text)
/// or `embeddings_by_type` (an object keyed by type).
#[derive(Serialize, ToSchema)]
pub struct CohereEmbedResponse {
    response_type: &'static str,
    id: String,
    texts: Vec<String>,
    embeddings: CohereEmbeddings,
    meta: CohereEmbedMeta,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum CohereEmbeddings {
    Floats(Vec<Vec<f32>>),
    ByType(BTreeMap<&'static str, Vec<Encoded>>),
}

#[derive(Serialize, ToSchema)]
pub struct CohereEmbedMeta {
    api_version: CohereApiVersion,
    billed_units: CohereBilledUnits,
}

#[derive(Serialize, ToSchema)]
pub struct CohereBilledUnits {
    input_tokens: usize,
}

/// Cohere's v1 embed API.
#[utoipa::path(post, path = "/v1/embed", tag = "Cohere", request_body = CohereEmbedRequest,
    responses((status = 200, description = "One embedding per text, of each requested type", body = CohereEmbedResponse), OpenAiFailures))]
pub async fn embed_v1(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CohereEmbedRequest>,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    for (given, field) in [
        (req.inputs.is_some(), "inputs"),
        (req.output_dimension.is_some(), "output_dimension"),
        (req.max_tokens.is_some(), "max_tokens"),
    ] {
        if given {
            return Err(ApiError::unprocessable(format!("{field} is a v2 field: post to /v2/embed")).param(field));
        }
    }
    embed(&state, req, Version::V1).await.map(Json)
}

/// Cohere's v2 embed API.
#[utoipa::path(post, path = "/v2/embed", tag = "Cohere", request_body = CohereEmbedRequest,
    responses((status = 200, description = "One embedding per text, of each requested type", body = CohereEmbedResponse), OpenAiFailures))]
pub async fn embed_v2(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CohereEmbedRequest>,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    embed(&state, req, Version::V2).await.map(Json)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

const EMBEDDER: &[Kind] = &[Kind::Embedder];

async fn embed(state: &AppState, req: CohereEmbedRequest, version: Version) -> Result<CohereEmbedResponse, ApiError> {
    let started = Instant::now();
    let route = if version == Version::V1 { "POST /v1/embed" } else { "POST /v2/embed" };
    if req.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::unprocessable("akidb embeds text: images are not supported").param("images"));
    }
    if let Some(p) = req.priority.filter(|&p| p != 0) {
        return Err(ApiError::unprocessable(format!(
            "priority {p} cannot be honoured: akidb schedules requests by size, not priority"
        ))
        .param("priority"));
    }
    let texts = match (req.inputs, req.texts) {
        (Some(inputs), Value::Null) => input_texts(inputs)?,
        (Some(_), _) => {
            return Err(ApiError::unprocessable("send texts or inputs, not both").param("inputs"));
        }
        (None, value) => texts(value, "texts")?,
    };
    let texts = state.inputs(texts, "texts")?;
    let types = embedding_types(req.embedding_types.as_deref())?;
    let side = match req.truncate.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("END") => Some(Side::Right),
        Some("START") => Some(Side::Left),
        Some("NONE") => None,
        Some(_) => {
            return Err(ApiError::unprocessable(format!(
                "truncate must be NONE, START or END, not '{}'",
                req.truncate.unwrap_or_default()
            ))
            .param("truncate"))
        }
    };
    let model = state.pick(req.model.as_deref(), route, EMBEDDER)?;
    let info = model.backend.info();
    let prompt_name = prompt_for(info, req.input_type.as_deref())?;
    let cut = encoding::dimensions(
        req.output_dimension,
        info.dimension,
        StatusCode::UNPROCESSABLE_ENTITY,
        "output_dimension",
    )?;
    let echoed: Vec<String> = texts.to_vec();
    let texts = match req.max_tokens {
        None => texts,
        Some(n) if n < 1 => {
            return Err(ApiError::unprocessable(format!("max_tokens must be at least 1, not {n}")).param("max_tokens"))
        }
        Some(n) if n as usize >= info.max_seq_length => texts,
        Some(n) if side == Some(Side::Right) => {
            let backend = model.backend.clone();
            let (count, bytes) = (texts.len(), texts.iter().map(String::len).sum());
            tokenizer_work(count, bytes, move || texts.try_map(|t| cap_tokens(backend.as_ref(), t, n as usize))).await?
        }
        Some(_) => return Err(ApiError::unprocessable(
            "max_tokens below the model's maximum is applied by cutting the end of each text: use it with truncate END",
        )
        .param("max_tokens")),
    };
    let encode = Encode::new(Some(side.is_some()), side, prompt_name);
    let mut out = state.run(model, texts.singles(), Output::Rows, cut.is_none(), encode).await?;
    encoding::shorten(&mut out.vectors, cut, true);
    let (response_type, embeddings) = match (version, &types) {
        (Version::V1, None) => ("embeddings_floats", CohereEmbeddings::Floats(out.vectors)),
        _ => {
            let types = types.unwrap_or_else(|| vec![Encoding::Float]);
            let mut by_type = BTreeMap::new();
            for (i, encoding) in types.iter().enumerate() {
                // The last type takes the vectors; the others encode copies.
                let vectors = if i + 1 == types.len() { std::mem::take(&mut out.vectors) } else { out.vectors.clone() };
                by_type.insert(encoding.name(), vectors.into_iter().map(|v| encoding.encode(v)).collect());
            }
            ("embeddings_by_type", CohereEmbeddings::ByType(by_type))
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "cohere embed");
    Ok(CohereEmbedResponse {
        response_type,
        id: request_id(),
        texts: echoed,
        embeddings,
        meta: CohereEmbedMeta {
            api_version: CohereApiVersion { version: if version == Version::V1 { "1" } else { "2" } },
            billed_units: CohereBilledUnits { input_tokens: out.total_tokens },
        },
    })
}

/// `embedding_types`, each once, in a fixed order; `None` when the request names none.
fn embedding_types(names: Option<&[String]>) -> Result<Option<Vec<Encoding>>, ApiError> {
    let Some(names) = names else { return Ok(None) };
    if names.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "embedding_types must name at least one of {}",
            Encoding::SUPPORTED
        ))
        .param("embedding_types"));
    }
    let mut types = names.iter().map(|n| Encoding::parse(n, "embedding_types")).collect::<Result<Vec<_>, _>>()?;
    types.sort();
    types.dedup();
    Ok(Some(types))
}

/// v2 `inputs`: each must be exactly one text component.
fn input_texts(inputs: Vec<CohereInput>) -> Result<Vec<String>, ApiError> {
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| match input.content.as_slice() {
            [CohereContent { kind, text: Some(text) }] if kind == "text" => Ok(text.clone()),
            _ => Err(ApiError::unprocessable(format!(
                "inputs[{i}] must hold exactly one {{\"type\": \"text\", \"text\": …}} component (akidb embeds text)"
            ))
            .param("inputs")),
        })
        .collect()
}

/// The model prompt an `input_type` stands for: the first of its usual names the model has (any
/// case); none when the model has none of them (its default prompt then applies).
fn prompt_for(info: &ModelInfo, input_type: Option<&str>) -> Result<Option<String>, ApiError> {
    let names: &[&str] = match input_type {
        None => return Ok(None),
        Some("search_query") => &["query", "search_query"],
        Some("search_document") => &["document", "passage", "search_document", "doc"],
        Some("classification") => &["classification"],
        Some("clustering") => &["clustering"],
        Some("image") => {
            return Err(ApiError::unprocessable("input_type image: akidb embeds text").param("input_type"));
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "input_type must be search_query, search_document, classification or clustering, not '{other}'"
                ),
            )
            .param("input_type"))
        }
    };
    Ok(names.iter().find_map(|want| info.prompts.keys().find(|k| k.eq_ignore_ascii_case(want)).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_types_pick_the_models_own_prompts() {
        let mut info = ModelInfo::default();
        for name in ["query", "passage", "Classification"] {
            info.prompts.insert(name.into(), format!("{name}: "));
        }
        assert_eq!(prompt_for(&info, Some("search_query")).unwrap().as_deref(), Some("query"));
        assert_eq!(prompt_for(&info, Some("search_document")).unwrap().as_deref(), Some("passage"));
        assert_eq!(prompt_for(&info, Some("classification")).unwrap().as_deref(), Some("Classification"));
        assert_eq!(prompt_for(&info, Some("clustering")).unwrap(), None, "no such prompt: none");
        assert_eq!(prompt_for(&info, None).unwrap(), None);
        let e = prompt_for(&info, Some("search")).expect_err("unknown");
        assert!(e.message.contains("search_query, search_document"), "{}", e.message);
    }

    #[test]
    fn embedding_types_are_read_once_each() {
        let names: Vec<String> = ["ubinary", "float", "ubinary"].iter().map(|s| s.to_string()).collect();
        assert_eq!(embedding_types(Some(&names)).unwrap(), Some(vec![Encoding::Float, Encoding::Ubinary]));
        assert!(embedding_types(Some(&[])).is_err());
        assert_eq!(embedding_types(None).unwrap(), None);
    }
}
