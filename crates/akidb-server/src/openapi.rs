//! `GET /openapi.json`, generated from the handlers' own annotations and request/response types
//! (utoipa), and `/docs`, Swagger UI served from the binary (its files are vendored in a crate:
//! nothing is downloaded at build or run time). This module only collects: it imports the
//! handlers, and only the router imports it.

use utoipa::OpenApi;

use crate::{
    catalog, cohere, dispatch, routes,
    schema::{ErrorBody, OpenAiErrorBody, OpenAiErrorDetail},
    scoring, status, tokens,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "akidb",
        description = "Text embeddings, reranking and classification in one binary: the native API, \
                       text-embeddings-inference's routes, OpenAI's and Cohere's shapes, Ollama's embed."
    ),
    paths(
        routes::native_embed,
        routes::tei_embed,
        routes::embed_all,
        routes::embed_sparse,
        routes::similarity,
        routes::openai_embeddings,
        cohere::embed_v1,
        cohere::embed_v2,
        routes::ollama_embed,
        routes::ollama_embeddings,
        catalog::ollama_tags,
        catalog::ollama_show,
        catalog::ollama_version,
        catalog::list_models,
        catalog::get_model,
        scoring::rerank,
        scoring::cohere_rerank,
        scoring::cohere_rerank_v2,
        scoring::predict,
        tokens::tokenize,
        tokens::decode,
        dispatch::tei_default,
        dispatch::invocations,
        status::health,
        status::info,
        status::metrics_text,
    ),
    components(schemas(ErrorBody, OpenAiErrorBody, OpenAiErrorDetail))
)]
pub struct ApiDoc;

/// The document `/openapi.json` serves, with this build's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}
