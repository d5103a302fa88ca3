//! The models one server holds: each with its backend and its own scheduler (so a bulk
//! reranking job queues behind its own model, never in front of another's queries), and the
//! names a request's `model` field may use for it.

use std::sync::Arc;

use axum::http::StatusCode;

use super::{backend::Backend, config, error::ApiError, scheduler::Scheduler};
use akidb_engine::model_config::Kind;

pub struct Served {
    pub backend: Arc<dyn Backend>,
    pub scheduler: Scheduler,
    /// What responses call it: `--served-model-name` for the first model, else its id.
    pub name: String,
    /// More names that select it (`--model-alias`).
    pub aliases: Vec<String>,
}

impl Served {
    pub fn kind(&self) -> Kind {
        self.backend.info().kind
    }

    /// The id, its last path part (`all-MiniLM-L6-v2`), the served name and its aliases all
    /// select it, with or without the `:latest` tag Ollama clients add.
    fn answers_to(&self, requested: &str) -> bool {
        let bare = requested.strip_suffix(":latest").unwrap_or(requested);
        config::selects(&self.backend.info().id, &self.name, requested) || self.aliases.iter().any(|a| a == bare)
    }
}

pub struct Registry {
    models: Vec<Served>,
    /// When the models were ready, in Unix seconds: OpenAI's model `created`.
    pub ready_at: u64,
}

impl Registry {
    pub fn new(models: Vec<Served>) -> Self {
        let ready_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { models, ready_at }
    }

    /// The model called `name` (see [`Served::answers_to`]); 404 naming what is served.
    pub fn find(&self, name: &str) -> Result<&Served, ApiError> {
        self.models.iter().find(|m| m.answers_to(name)).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{name}' is not served here; this server serves {}", self.listing()),
            )
            .param("model")
        })
    }

    pub fn models(&self) -> &[Served] {
        &self.models
    }

    /// The model a request names, else the first of the kinds the route takes (in the order
    /// given). A named model of another kind, or no model of any of them, is a 422 saying what
    /// the route needs and what is served.
    pub fn pick(&self, requested: Option<&str>, route: &str, kinds: &[Kind]) -> Result<&Served, ApiError> {
        let needs = kinds.iter().map(|k| k.described()).collect::<Vec<_>>().join(" or ");
        match requested {
            Some(name) => {
                let model = self.find(name)?;
                if kinds.contains(&model.kind()) {
                    Ok(model)
                } else {
                    Err(ApiError::unprocessable(format!(
                        "{route} needs {needs}, but '{name}' is {}, served on {}",
                        model.kind().described(),
                        routes_for(model.kind())
                    ))
                    .param("model"))
                }
            }
            None => kinds.iter().find_map(|k| self.models.iter().find(|m| m.kind() == *k)).ok_or_else(|| {
                ApiError::unprocessable(format!("{route} needs {needs}; this server serves {}", self.listing()))
            }),
        }
    }

    /// `'a' (embedder), 'b' (cross-encoder)`, for messages.
    fn listing(&self) -> String {
        self.models.iter().map(|m| format!("'{}' ({})", m.name, m.kind())).collect::<Vec<_>>().join(", ")
    }
}

/// Where a model of `kind` is served, for the 422 of a route that cannot use it.
fn routes_for(kind: Kind) -> &'static str {
    match kind {
        Kind::Embedder => "the dense routes (/embed, /api/v1/embed, /v1/embeddings, /v1/embed, /v2/embed, /api/embed)",
        Kind::SparseEmbedder => "/embed_sparse (sparse vectors)",
        Kind::CrossEncoder => "/rerank, /v1/rerank and /v2/rerank",
        Kind::Classifier => "/predict",
    }
}
