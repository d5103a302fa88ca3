//! What the OpenAPI document says about the parts routes share: the error bodies, the failures
//! every inference route may answer with, and the schemas of fields serde cannot describe (a
//! string or an array, TEI's `/predict` grammar). Handlers name these in their `#[utoipa::path]`
//! annotations; `openapi` only collects the handlers, so nothing here imports a handler.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{
    openapi::{
        schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type},
        ContentBuilder, Ref, RefOr, Response, ResponseBuilder, ResponsesBuilder, Schema,
    },
    IntoResponses, ToSchema,
};

/// TEI's error body, on every route outside `/v1/`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: String,
    /// validation, payload_too_large, unsupported_media_type, overloaded, unhealthy, timeout, …
    error_type: String,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: String,
}

/// OpenAI's error body, on `/v1/*`.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    error: OpenAiErrorDetail,
}

/// The failures every inference route shares, each with its meaning.
const FAILURES: [(&str, &str); 9] = [
    ("400", "Malformed JSON, or an option with a bad value"),
    ("401", "A missing or wrong API key (when the server has one)"),
    ("404", "The requested model is not served here"),
    ("413", "The body or the number of inputs is over the server's limit"),
    ("415", "The body is not application/json"),
    ("422", "Well-formed JSON of the wrong shape: empty inputs, a pair grammar error, a model of the wrong kind, a text over the maximum length with truncation off"),
    ("429", "Too many requests in flight or queued tokens; see Retry-After"),
    ("503", "The models are loading, or the server is unhealthy"),
    ("504", "The request did not finish within the request timeout"),
];

fn failures(body: &str) -> BTreeMap<String, RefOr<Response>> {
    let mut responses = ResponsesBuilder::new();
    for (status, description) in FAILURES {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(body))).build();
        responses = responses
            .response(status, ResponseBuilder::new().description(description).content("application/json", content));
    }
    responses.build().into()
}

/// Error responses in TEI's shape.
pub struct Failures;

impl IntoResponses for Failures {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        failures("ErrorBody")
    }
}

/// Error responses in OpenAI's shape.
pub struct OpenAiFailures;

impl IntoResponses for OpenAiFailures {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        failures("OpenAiErrorBody")
    }
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// A string or an array of strings.
pub fn texts_schema() -> Schema {
    OneOfBuilder::new()
        .item(string().description(Some("One text")))
        .item(ArrayBuilder::new().items(string()).description(Some("Several texts")))
        .build()
        .into()
}

/// Strings, or objects with a `text` field.
pub fn documents_schema() -> Schema {
    let object = ObjectBuilder::new().property("text", string()).required("text");
    ArrayBuilder::new()
        .items(OneOfBuilder::new().item(string()).item(object))
        .description(Some("The documents to rank: strings, or objects with a `text` field"))
        .build()
        .into()
}

/// TEI's `/predict` grammar.
pub fn predict_inputs_schema() -> Schema {
    let sequence = |n: usize, what: &str| {
        ArrayBuilder::new().items(string()).min_items(Some(n)).max_items(Some(n)).description(Some(what))
    };
    OneOfBuilder::new()
        .item(string().description(Some("One text")))
        .item(sequence(2, "A pair [string, string]"))
        .item(
            ArrayBuilder::new()
                .items(OneOfBuilder::new().item(sequence(1, "[string]")).item(sequence(2, "[string, string]")))
                .description(Some("A batch of texts and pairs")),
        )
        .build()
        .into()
}

/// Token ids, or a batch of them.
pub fn ids_schema() -> Schema {
    let id = || ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
    OneOfBuilder::new()
        .item(ArrayBuilder::new().items(id()).description(Some("One list of token ids")))
        .item(ArrayBuilder::new().items(ArrayBuilder::new().items(id())).description(Some("A batch of lists")))
        .build()
        .into()
}
