//! The request path every inference route shares, as text-embeddings-inference's `Infer`: the
//! rules a request obeys, each written once here, whichever API it came in through.
//!
//! - **Count** ([`AppState::inputs`]): at least one input (422), at most `--max-inputs` (413).
//!   Routes check it before they pick a model: a request's shape before the server's readiness.
//!   Only `inputs` makes the [`Inputs`] that [`AppState::run`] and the tokenizer routes take, so no
//!   route can skip it.
//! - **Prompt** ([`prompt`]): `prompt_name`, else the model's default prompt; an unknown name is
//!   the client's 422, refused before the request is admitted.
//! - **Where tokenizing runs** ([`tokenizer_work`]): a few short texts on the calling thread, the
//!   rest on the blocking pool.
//! - **Truncation** ([`AppState::run`]): `truncate: false` refuses an over-long input (422).
//! - **Admission** ([`AppState::run`]): the worker's health (503), a concurrency permit (429), the
//!   queued-token bound on a lower bound of the request's size before tokenizing (429 with
//!   `Retry-After`), settled to the real count after; all of it under the request timeout (504).
//!
//! The error's shape (OpenAI's, TEI's) is not decided here: see [`crate::error::Flavor::of`].
//!
//! The request's span (opened by `middleware::track`) gets the model, the time spent tokenizing
//! and the tokens; the inference thread, which carries the span with the job, adds the time
//! queued and in inference. The same three times are histograms per model in `/metrics`.

use std::{ops::Deref, time::Instant};

use axum::http::StatusCode;
use tracing::Span;

use crate::{
    backend::{BackendError, Output},
    error::ApiError,
    registry::Served,
    scheduler::SchedulerError,
    state::AppState,
};
use akidb_engine::{
    model::ModelInfo,
    options::EncodeOptions,
    tokenize::{Input, Side},
    Rows,
};

/// The engine tokenizes up to this many inputs on the calling thread and more on the tokenizers
/// crate's rayon pool: an async worker must never wait in that pool behind a bulk request's
/// texts, so only requests the engine keeps on the calling thread stay inline.
const INLINE_INPUTS: usize = akidb_engine::tokenize::SEQUENTIAL_UP_TO;

/// Even a few texts take a while to tokenize when they are long: past this many bytes a request
/// goes off the async workers too.
const INLINE_BYTES: usize = 4096;

/// What a request asks of tokenization: refuse or cut long inputs, from which end, with which prompt.
#[derive(Debug, Clone)]
pub(crate) struct Encode {
    pub truncate: bool,
    pub options: EncodeOptions,
}

impl Encode {
    pub fn new(truncate: Option<bool>, side: Option<Side>, prompt_name: Option<String>) -> Self {
        let options = EncodeOptions { side: side.unwrap_or_default(), prompt_name };
        Self { truncate: truncate.unwrap_or(true), options }
    }
}

/// Long inputs cut at the end, the model's default prompt: what routes without these fields get.
impl Default for Encode {
    fn default() -> Self {
        Self::new(None, None, None)
    }
}

/// What the 413 calls a request's items.
pub(crate) trait Counted {
    const NOUN: &'static str;
}

impl Counted for Input {
    const NOUN: &'static str = "inputs";
}

impl Counted for String {
    const NOUN: &'static str = "inputs";
}

/// `/decode`'s lists of token ids.
impl Counted for Vec<u32> {
    const NOUN: &'static str = "id lists";
}

/// A request's inputs that passed the count rules. Only [`AppState::inputs`] makes one and the
/// request path takes nothing else, so every route goes through the rules; what a route does with
/// them afterwards maps one input to one input.
#[derive(Debug)]
pub(crate) struct Inputs<T = Input>(Vec<T>);

impl<T> Inputs<T> {
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }

    /// Each input through `f`, one for one, so the counts still hold.
    pub fn try_map<U, E>(self, f: impl FnMut(T) -> Result<U, E>) -> Result<Inputs<U>, E> {
        self.0.into_iter().map(f).collect::<Result<_, _>>().map(Inputs)
    }
}

impl<T> Deref for Inputs<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl Inputs<String> {
    /// Each text as one sequence.
    pub fn singles(self) -> Inputs {
        Inputs(self.0.into_iter().map(Input::Single).collect())
    }

    /// Each text after `query`, the (query, passage) pairs a cross-encoder reads.
    pub fn pairs(&self, query: &str) -> Inputs {
        Inputs(self.0.iter().map(|t| Input::Pair(query.to_string(), t.clone())).collect())
    }
}

impl AppState {
    /// The count rules: a request's `field` has at least one item (422) and at most
    /// `--max-inputs` (413, before anything is tokenized).
    pub(crate) fn inputs<T: Counted>(&self, items: Vec<T>, field: &'static str) -> Result<Inputs<T>, ApiError> {
        if items.is_empty() {
            return Err(ApiError::unprocessable(format!("{field} must not be empty")).param(field));
        }
        let max = self.config.max_inputs;
        if items.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{} {} in one request; the limit is {max}", items.len(), T::NOUN),
            ));
        }
        Ok(Inputs(items))
    }

    /// The path every inference route shares: check the prompt, admit, tokenize, refuse what
    /// truncation would cut when asked to, queue on the model's scheduler; all of it within the
    /// request timeout, past which the request's remaining inputs are dropped. Rows come back in
    /// input order.
    pub(crate) async fn run(
        &self,
        model: &Served,
        inputs: Inputs,
        output: Output,
        normalize: bool,
        encode: Encode,
    ) -> Result<Rows, ApiError> {
        let Encode { truncate, options } = encode;
        let info = model.backend.info();
        prompt(info, options.prompt_name.as_deref())?;
        model.scheduler.health().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
        let permit = self
            .limiter
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded(self.config.max_concurrent_requests))?;

        // Every word is at least one token: a lower bound, admitted before the tokenizing it may spare.
        let max_len = info.max_seq_length;
        let inputs = inputs.into_vec();
        let floor = inputs.iter().map(|i| i.words().min(max_len)).sum();
        let mut ticket = model.scheduler.admit(floor).map_err(ApiError::queue_full)?;

        let span = Span::current();
        span.record("model", model.name.as_str());
        let work = async move {
            let backend = model.backend.clone();
            let count = inputs.len();
            let bytes = inputs.iter().map(Input::bytes).sum();
            let started = Instant::now();
            let tokenized = tokenizer_work(count, bytes, move || backend.tokenize(&inputs, &options)).await;
            let took = started.elapsed();
            model.scheduler.metrics().request_tokenize.observe(took.as_secs_f64());
            span.record("tokenize_ms", crate::metrics::millis(took));
            let tokens = tokenized?;
            if !truncate {
                if let Some(index) = tokens.iter().position(|t| t.truncated) {
                    return Err(ApiError::unprocessable(format!(
                        "input {index} is longer than the model's maximum of {max_len} tokens (truncation is off)"
                    )));
                }
            }
            let total_tokens: usize = tokens.iter().map(|t| t.len()).sum();
            span.record("tokens", total_tokens);
            model.scheduler.settle(&mut ticket, total_tokens).map_err(ApiError::queue_full)?;
            // The scheduler carries this request's span (the current one) to the inference thread.
            let vectors =
                model.scheduler.submit(tokens, output, normalize, ticket, Some(permit)).await.map_err(|e| match e {
                    SchedulerError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    SchedulerError::Inference(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                })?;
            model.scheduler.metrics().tokens.inc_by(total_tokens as u64);
            model.scheduler.metrics().texts.inc_by(count as u64);
            Ok(Rows { vectors, total_tokens })
        };
        match self.config.request_timeout {
            Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| ApiError::timed_out(limit))?,
            None => work.await,
        }
    }
}

/// The prompt a request's texts get: its `prompt_name`, else the model's default prompt, else
/// none (`""`). An unknown name is the client's 422 naming the model's prompts.
pub(crate) fn prompt<'a>(info: &'a ModelInfo, name: Option<&str>) -> Result<&'a str, ApiError> {
    info.prompt(name)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::unprocessable(e.to_string()).param("prompt_name"))
}

/// Runs tokenizer work (`f`, over `inputs` items of `bytes` in all) in a `tokenize` span: on the
/// calling thread when the engine would too and the texts are short, so a query costs no thread
/// hop; on the blocking pool otherwise, so that no async worker waits on the tokenizer. A
/// tokenizer error is the client's 422 (its input cannot be tokenized).
pub(crate) async fn tokenizer_work<T: Send + 'static>(
    inputs: usize,
    bytes: usize,
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::debug_span!("tokenize", inputs, bytes);
    let result = if inputs <= INLINE_INPUTS && bytes < INLINE_BYTES {
        span.in_scope(f)
    } else {
        tokio::task::spawn_blocking(move || span.in_scope(f))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("tokenizer task failed: {e}")))?
    };
    // An unknown prompt never gets here: `run` checks it first (see [`prompt`]).
    result.map_err(|e| ApiError::unprocessable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    #[test]
    fn the_count_rules_name_the_field_and_the_limit() {
        let state = AppState::new(ServerConfig { max_inputs: 2, ..Default::default() });
        let empty = state.inputs(Vec::<String>::new(), "texts").expect_err("empty");
        assert_eq!(
            (empty.status, empty.message.as_str(), empty.param),
            (StatusCode::UNPROCESSABLE_ENTITY, "texts must not be empty", Some("texts"))
        );
        let many = state.inputs(vec![vec![1u32]; 3], "ids").expect_err("over the limit");
        assert_eq!(
            (many.status, many.message.as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "3 id lists in one request; the limit is 2")
        );
        let ok = state.inputs(vec!["a".to_string(), "b".to_string()], "inputs").expect("within");
        assert_eq!(ok.pairs("q")[1], Input::Pair("q".into(), "b".into()));
        assert_eq!(ok.singles().into_vec(), vec![Input::Single("a".into()), Input::Single("b".into())]);
    }

    #[test]
    fn an_unknown_prompt_is_the_clients_422() {
        let mut info = ModelInfo { id: "m".into(), ..Default::default() };
        assert_eq!(prompt(&info, None).unwrap(), "");
        info.prompts.insert("query".into(), "query: ".into());
        assert_eq!(prompt(&info, Some("query")).unwrap(), "query: ");
        let e = prompt(&info, Some("qurey")).expect_err("unknown");
        assert_eq!((e.status, e.param), (StatusCode::UNPROCESSABLE_ENTITY, Some("prompt_name")));
        assert!(e.message.contains("'qurey'") && e.message.contains("query"), "{}", e.message);
    }
}
