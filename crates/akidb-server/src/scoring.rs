//! The routes of cross-encoders and classifiers: TEI's `/rerank` and `/predict`, and the
//! Cohere/Jina `/v1/rerank` (and Cohere's `/v2/rerank`) that LangChain, LlamaIndex, LiteLLM and Dify call. Scores are the
//! model's activation over its logits (see [`akidb_engine::model_config::Activation`]) unless raw scores are asked.

use std::time::Instant;

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    api::{from_value, kind, ApiJson},
    backend::{Backend, BackendError, Output},
    error::ApiError,
    infer::{tokenizer_work, Encode, Inputs},
    registry::Served,
    schema::{documents_schema, predict_inputs_schema, Failures, OpenAiFailures},
    state::AppState,
};
use akidb_engine::{
    model_config::{Activation, Kind},
    scores::{self, ranked, Prediction},
    tokenize::{Input, Side},
};

/// Scores of each pair (query, text), in input order: the first logit through the model's
/// activation, or the raw logit.
async fn pair_scores(
    state: &AppState,
    model: &Served,
    query: &str,
    texts: &Inputs<String>,
    raw: bool,
    encode: Encode,
) -> Result<(Vec<f32>, usize), ApiError> {
    let out = state.run(model, texts.pairs(query), Output::Rows, false, encode).await?;
    let activation = model.backend.info().activation;
    let scores = out.vectors.into_iter().map(|logits| scores::relevance(logits, activation, raw)).collect();
    Ok((scores, out.total_tokens))
}

const RERANKER: &[Kind] = &[Kind::CrossEncoder];

/// `POST /rerank`, in TEI's shape (`texts`); Cohere's shape (`documents`), which infinity and
/// vLLM accept here too, is read as `POST /v1/rerank` reads it and answered in its shape.
#[derive(Deserialize, ToSchema)]
pub struct RerankRequest {
    query: String,
    texts: Vec<String>,
    /// Only the best `top_n` results [default: all]
    top_n: Option<i64>,
    /// Logits instead of the model's activation over them [default: false]
    #[serde(default)]
    raw_scores: bool,
    /// Echo each text in its result [default: false]
    #[serde(default)]
    return_text: bool,
    /// Cut pairs longer than the model's maximum (longest first) instead of refusing them [default: true]
    truncate: Option<bool>,
    /// Which end of a too-long pair's longer text is cut [default: Right]
    truncation_direction: Option<Side>,
    /// A served cross-encoder [default: the first one]
    model: Option<String>,
}

/// One result of `POST /rerank`.
#[derive(Serialize, ToSchema)]
pub struct Rank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// What `POST /rerank` answers: TEI's list for TEI's request, Cohere's results for Cohere's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum RerankResponse {
    Tei(Vec<Rank>),
    Cohere(CohereRerankResponse),
}

/// text-embeddings-inference's reranking: each text scored against the query, best first. A body
/// with `documents` instead of `texts` (Cohere's, as LiteLLM's `infinity/` and `hosted_vllm/`
/// providers send it here) is answered as `POST /v1/rerank` answers it.
#[utoipa::path(post, path = "/rerank", tag = "TEI", request_body = RerankRequest,
    responses((status = 200, description = "Texts by score, highest first (TEI's request), or Cohere's results (Cohere's request)", body = RerankResponse), Failures))]
pub async fn rerank(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<RerankResponse>, ApiError> {
    if body.get("documents").is_some() && body.get("texts").is_none() {
        let req: CohereRerankRequest = from_value(body)?;
        return cohere(&state, req, "POST /rerank").await.map(|r| Json(RerankResponse::Cohere(r)));
    }
    tei_rerank(&state, from_value(body)?).await.map(|r| Json(RerankResponse::Tei(r)))
}

async fn tei_rerank(state: &AppState, req: RerankRequest) -> Result<Vec<Rank>, ApiError> {
    let top_n = match req.top_n {
        None => usize::MAX,
        Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => return Err(ApiError::unprocessable(format!("top_n must be at least 1, not {n}")).param("top_n")),
    };
    let texts = state.inputs(req.texts, "texts")?;
    let model = state.pick(req.model.as_deref(), "POST /rerank", RERANKER)?;
    let encode = Encode::new(req.truncate, req.truncation_direction, None);
    let (scores, _) = pair_scores(state, model, &req.query, &texts, req.raw_scores, encode).await?;
    let mut texts: Vec<Option<String>> = texts.into_vec().into_iter().map(Some).collect();
    Ok(ranked(&scores)
        .into_iter()
        .take(top_n)
        .map(|index| Rank {
            index,
            score: scores[index],
            text: if req.return_text { texts[index].take() } else { None },
        })
        .collect())
}

/// `POST /v1/rerank`, as Cohere and Jina define it.
#[derive(Deserialize, ToSchema)]
pub struct CohereRerankRequest {
    /// A served cross-encoder [default: the first one]
    model: Option<String>,
    query: String,
    /// Strings, or objects with a `text` field.
    #[schema(schema_with = documents_schema)]
    #[serde(default)]
    documents: Value,
    /// Only the best `top_n` results [default: all]
    top_n: Option<i64>,
    /// Include each document in its result [default: false]
    #[serde(default)]
    return_documents: bool,
    /// Cut each document after this many tokens [default: no cap beyond the model's maximum]
    max_tokens_per_doc: Option<i64>,
    /// For object documents: the fields ranked, in this order, as `field: value` lines
    /// [default: the `text` field]
    rank_fields: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct Document {
    text: String,
}

#[derive(Serialize, ToSchema)]
pub struct CohereResult {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<Document>,
}

#[derive(Serialize, ToSchema)]
pub struct RerankUsage {
    total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct CohereRerankResponse {
    results: Vec<CohereResult>,
    model: String,
    usage: RerankUsage,
}

fn documents(value: Value, rank_fields: Option<&[String]>) -> Result<Vec<String>, ApiError> {
    let items = match value {
        Value::Array(items) => items,
        Value::Null => return Err(ApiError::unprocessable("missing field `documents`").param("documents")),
        other => {
            return Err(
                ApiError::unprocessable(format!("documents must be an array, not {}", kind(&other))).param("documents")
            )
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match (item, rank_fields) {
            (Value::String(s), _) => Ok(s),
            (Value::Object(map), Some(names)) => fields(i, &map, names),
            (Value::Object(mut map), None) => match map.remove("text") {
                Some(Value::String(s)) => Ok(s),
                _ => Err(ApiError::unprocessable(format!("documents[{i}] is an object without a string `text`"))
                    .param("documents")),
            },
            (other, _) => Err(ApiError::unprocessable(format!(
                "documents[{i}] must be a string or an object with `text`, not {}",
                kind(&other)
            ))
            .param("documents")),
        })
        .collect()
}

/// Document `i`'s `rank_fields`, in order, as `field: value` lines (strings as they are, other
/// values as JSON), as Cohere ranks an object document; a missing field is the client's error.
fn fields(i: usize, map: &serde_json::Map<String, Value>, names: &[String]) -> Result<String, ApiError> {
    let mut lines = Vec::with_capacity(names.len());
    for name in names {
        let value = match map.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => {
                return Err(ApiError::unprocessable(format!("documents[{i}] has no field `{name}` (in rank_fields)"))
                    .param("rank_fields"))
            }
        };
        lines.push(format!("{name}: {value}"));
    }
    Ok(lines.join("\n"))
}

/// Cohere's and Jina's reranking API: relevance scores in [0, 1] (the model's activation), best first.
#[utoipa::path(post, path = "/v1/rerank", tag = "Cohere", request_body = CohereRerankRequest,
    responses((status = 200, description = "Documents by relevance, highest first", body = CohereRerankResponse), OpenAiFailures))]
pub async fn cohere_rerank(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CohereRerankRequest>,
) -> Result<Json<CohereRerankResponse>, ApiError> {
    cohere(&state, req, "POST /v1/rerank").await.map(Json)
}

/// `POST /v2/rerank`'s answer: v1's, with the `id` and `meta` Cohere's v2 clients read.
#[derive(Serialize, ToSchema)]
pub struct CohereRerankV2Response {
    id: String,
    #[serde(flatten)]
    ranked: CohereRerankResponse,
    meta: CohereMeta,
}

#[derive(Serialize, ToSchema)]
pub struct CohereMeta {
    pub(crate) api_version: CohereApiVersion,
}

#[derive(Serialize, ToSchema)]
pub struct CohereApiVersion {
    pub(crate) version: &'static str,
}

/// Cohere's v2 reranking API (`cohere.ClientV2().rerank`, LiteLLM's `cohere/` models): v1's request
/// and answer, with an `id` and `meta`.
#[utoipa::path(post, path = "/v2/rerank", tag = "Cohere", request_body = CohereRerankRequest,
    responses((status = 200, description = "Documents by relevance, highest first", body = CohereRerankV2Response), OpenAiFailures))]
pub async fn cohere_rerank_v2(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CohereRerankRequest>,
) -> Result<Json<CohereRerankV2Response>, ApiError> {
    let ranked = cohere(&state, req, "POST /v2/rerank").await?;
    Ok(Json(CohereRerankV2Response {
        id: request_id(),
        ranked,
        meta: CohereMeta { api_version: CohereApiVersion { version: "2" } },
    }))
}

/// Unique within a process and unlikely to repeat across restarts: time and a counter.
pub(crate) fn request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{n:x}")
}

/// `doc` cut after its first `n` tokens (special tokens aside), as Cohere's `max_tokens_per_doc`
/// asks; pairs are then cut to the model's maximum as usual.
pub(crate) fn cap_tokens(backend: &dyn Backend, doc: String, n: usize) -> Result<String, BackendError> {
    let tokens = backend.tokens(&doc, false)?;
    match tokens.get(n.saturating_sub(1)).and_then(|t| t.stop) {
        Some(stop) if tokens.len() > n => Ok(doc.chars().take(stop).collect()),
        _ => Ok(doc),
    }
}

/// `/v1/rerank` and `/v2/rerank`: one request, two answers.
async fn cohere(state: &AppState, req: CohereRerankRequest, route: &str) -> Result<CohereRerankResponse, ApiError> {
    let started = Instant::now();
    if req.rank_fields.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::unprocessable("rank_fields must name at least one field").param("rank_fields"));
    }
    let docs = state.inputs(documents(req.documents, req.rank_fields.as_deref())?, "documents")?;
    let top_n = match req.top_n {
        None => docs.len(),
        Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX).min(docs.len()),
        Some(n) => return Err(ApiError::unprocessable(format!("top_n must be at least 1, not {n}")).param("top_n")),
    };
    if let Some(n) = req.max_tokens_per_doc.filter(|&n| n < 1) {
        return Err(ApiError::unprocessable(format!("max_tokens_per_doc must be at least 1, not {n}"))
            .param("max_tokens_per_doc"));
    }
    let model = state.pick(req.model.as_deref(), route, RERANKER)?;
    let docs = match req.max_tokens_per_doc {
        Some(n) if (n as usize) < model.backend.info().max_seq_length => {
            let backend = model.backend.clone();
            let (count, bytes) = (docs.len(), docs.iter().map(String::len).sum());
            tokenizer_work(count, bytes, move || docs.try_map(|doc| cap_tokens(backend.as_ref(), doc, n as usize)))
                .await?
        }
        _ => docs,
    };
    let (scores, total_tokens) = pair_scores(state, model, &req.query, &docs, false, Encode::default()).await?;
    let mut docs: Vec<Option<String>> = docs.into_vec().into_iter().map(Some).collect();
    let results = ranked(&scores)
        .into_iter()
        .take(top_n)
        .map(|index| CohereResult {
            index,
            relevance_score: scores[index],
            document: if req.return_documents { docs[index].take().map(|text| Document { text }) } else { None },
        })
        .collect();
    tracing::debug!(elapsed = ?started.elapsed(), "reranked");
    Ok(CohereRerankResponse { results, model: model.name.clone(), usage: RerankUsage { total_tokens } })
}

/// `POST /predict`.
#[derive(Deserialize, ToSchema)]
pub struct PredictRequest {
    /// A string, a pair `[string, string]`, or a batch `[[string], [string, string], …]`.
    #[serde(default)]
    #[schema(schema_with = predict_inputs_schema)]
    inputs: Value,
    /// Logits instead of the model's activation over them [default: false]
    #[serde(default)]
    raw_scores: bool,
    /// Cut inputs longer than the model's maximum instead of refusing them [default: true]
    truncate: Option<bool>,
    /// Which end of a too-long input is cut [default: Right]
    truncation_direction: Option<Side>,
    /// A served classifier or cross-encoder [default: the first classifier, else the first cross-encoder]
    model: Option<String>,
    /// Hugging Face's text-classification parameters (huggingface_hub's `text_classification`)
    parameters: Option<PredictParameters>,
}

/// `parameters` of `POST /predict`; any other parameter is refused, never ignored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictParameters {
    /// Only the best this many labels of each input [default: all]
    top_k: Option<i64>,
    /// Instead of the model's activation [default: the model's]
    function_to_apply: Option<FunctionToApply>,
}

/// What turns a classifier's logits into scores, as transformers' pipelines name it.
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FunctionToApply {
    Sigmoid,
    Softmax,
    /// The logits themselves.
    None,
}

/// One list of predictions, or one per input of a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    Single(Vec<Prediction>),
    Batch(Vec<Vec<Prediction>>),
}

/// TEI's input grammar: `"text"` or `["a", "b"]` (one sequence) or `[["a"], ["a", "b"], …]` (a
/// batch); `true` for a batch. `[]` is an empty batch, which the count rule refuses.
fn predict_inputs(value: Value) -> Result<(Vec<Input>, bool), ApiError> {
    let bad = |message: String| ApiError::unprocessable(message).param("inputs");
    let sequence = |items: Vec<Value>, at: &str| -> Result<Input, ApiError> {
        let strings: Vec<String> = items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(bad(format!("inputs{at}[{i}] must be a string, not {}", kind(&other)))),
            })
            .collect::<Result<_, _>>()?;
        let n = strings.len();
        let mut strings = strings.into_iter();
        match (strings.next(), strings.next()) {
            (Some(a), None) => Ok(Input::Single(a)),
            (Some(a), Some(b)) if n == 2 => Ok(Input::Pair(a, b)),
            _ => Err(bad(format!(
                "inputs{at} has {n} strings: a sequence is one string or a pair of two [string, string]"
            ))),
        }
    };
    match value {
        Value::String(s) => Ok((vec![Input::Single(s)], false)),
        Value::Array(items) if items.is_empty() => Ok((Vec::new(), true)),
        Value::Array(items) if items[0].is_string() => Ok((vec![sequence(items, "")?], false)),
        Value::Array(items) => {
            let batch = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Array(inner) => sequence(inner, &format!("[{i}]")),
                    other => Err(bad(format!(
                        "inputs[{i}] must be an array ([string] or [string, string]) in a batch, not {}",
                        kind(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((batch, true))
        }
        Value::Null => Err(bad("missing field `inputs`".into())),
        other => Err(bad(format!(
            "inputs must be a string, a pair [string, string] or a batch [[string], [string, string], …], not {}",
            kind(&other)
        ))),
    }
}

/// Classification of texts or pairs: every label with its score, best first.
#[utoipa::path(post, path = "/predict", tag = "TEI", request_body = PredictRequest,
    responses((status = 200, description = "Labels by score, best first; a list of those for a batch", body = PredictResponse), Failures))]
pub async fn predict(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    let (inputs, batch) = predict_inputs(req.inputs)?;
    let inputs = state.inputs(inputs, "inputs")?;
    let (top_k, function) = match req.parameters {
        None => (None, None),
        Some(PredictParameters { top_k: Some(k), .. }) if k < 1 => {
            return Err(ApiError::unprocessable(format!("parameters.top_k must be at least 1, not {k}"))
                .param("parameters.top_k"))
        }
        Some(p) => (p.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)), p.function_to_apply),
    };
    let model = state.pick(req.model.as_deref(), "POST /predict", &[Kind::Classifier, Kind::CrossEncoder])?;
    let info = model.backend.info();
    let labels = &info.labels;
    let (activation, raw) = match function {
        None => (info.activation, req.raw_scores),
        Some(FunctionToApply::Sigmoid) => (Some(Activation::Sigmoid), req.raw_scores),
        Some(FunctionToApply::Softmax) => (Some(Activation::Softmax), req.raw_scores),
        Some(FunctionToApply::None) => (None, true),
    };
    let encode = Encode::new(req.truncate, req.truncation_direction, None);
    let out = state.run(model, inputs, Output::Rows, false, encode).await?;
    let mut all: Vec<Vec<Prediction>> = out
        .vectors
        .into_iter()
        .map(|logits| {
            let mut labelled = scores::predictions(logits, labels, activation, raw);
            labelled.truncate(top_k.unwrap_or(usize::MAX));
            labelled
        })
        .collect();
    Ok(Json(if batch { PredictResponse::Batch(all) } else { PredictResponse::Single(all.pop().unwrap_or_default()) }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn predict_grammar_follows_tei() {
        let one = |v: Value| predict_inputs(v).map_err(|e| e.message);
        assert_eq!(one(json!("a")).unwrap(), (vec![Input::Single("a".into())], false));
        assert_eq!(one(json!(["a"])).unwrap(), (vec![Input::Single("a".into())], false));
        assert_eq!(one(json!(["q", "p"])).unwrap(), (vec![Input::Pair("q".into(), "p".into())], false));
        assert_eq!(one(json!([])).unwrap(), (vec![], true), "an empty batch, refused by the count rule");
        assert_eq!(
            one(json!([["a"], ["q", "p"]])).unwrap(),
            (vec![Input::Single("a".into()), Input::Pair("q".into(), "p".into())], true)
        );
        for (bad, says) in [
            (json!(["a", "b", "c"]), "has 3 strings"),
            (json!([["a", "b", "c"]]), "inputs[0] has 3 strings"),
            (json!([[]]), "inputs[0] has 0 strings"),
            (json!([["a"], "b"]), "inputs[1] must be an array"),
            (json!(["a", 3]), "inputs[1] must be a string, not a number"),
            (json!(5), "not a number"),
            (Value::Null, "missing field"),
        ] {
            let e = one(bad.clone()).expect_err(&bad.to_string());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn documents_are_strings_or_objects_with_text() {
        assert_eq!(documents(json!(["a", {"text": "b"}]), None).unwrap(), vec!["a", "b"]);
        assert!(documents(json!([{"title": "b"}]), None).unwrap_err().message.contains("documents[0]"));
        assert!(documents(json!("a"), None).unwrap_err().message.contains("must be an array"));
        let fields = ["title".to_string(), "year".to_string()];
        let docs = json!(["plain", {"title": "Rust", "year": 2015, "text": "ignored"}]);
        assert_eq!(documents(docs, Some(&fields)).unwrap(), vec!["plain", "title: Rust\nyear: 2015"]);
        let e = documents(json!([{"title": "x"}]), Some(&fields)).unwrap_err();
        assert!(e.message.contains("documents[0] has no field `year`"), "{}", e.message);
    }
}
