//! The pipeline in one place: model files → config → tokenizer → session → pooling (or, for a
//! cross-encoder or classifier, the logits of its head).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    batching::{plan_batches, Budget},
    hub::{HubError, ModelRepo},
    model_config::{Activation, ConfigError, Kind, ModelConfig, Pooling},
    pooling,
    session::{
        device::{self, Decision, DecisionCache, DeviceReport, DeviceSession, Outcome},
        fusion::{self, Loaded},
        runtime::{choose_provider, coreml_available, Device, Provider, RuntimeError, Session, SessionOptions},
    },
    tokenize::{Batch, Input, Side, Token, TokenizeError, Tokenizer, Tokens},
};

pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("input {index} is longer than the model's maximum of {max} tokens (truncation is off)")]
    TooLong { index: usize, max: usize },
    #[error("model {model} gives {got} values per text but its config says {expected}")]
    DimensionMismatch { model: String, got: usize, expected: usize },
    #[error("{model} is {is}; {what} needs {needs}")]
    WrongKind { model: String, is: &'static str, what: &'static str, needs: &'static str },
    #[error("{model} has no prompt named '{name}' ({known})")]
    UnknownPrompt { model: String, name: String, known: String },
}

/// How inputs become tokens beyond the model's own settings: TEI's `truncation_direction` and
/// sentence-transformers' `prompt_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    pub side: Side,
    /// One of the model's prompts, put before each text; `None` for the model's default prompt, if any.
    pub prompt_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Hugging Face repo id or local directory.
    pub model: String,
    pub revision: Option<String>,
    /// Path of the ONNX file inside the model; default `onnx/model.onnx`, then `model.onnx`.
    pub onnx_file: Option<String>,
    pub session: SessionOptions,
    /// Padded tokens (rows × longest) per inference call: bounds memory and keeps batches fast.
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
}

/// Measured on MiniLM (docs/performance.md): with ONNX Runtime's kernels ~1k padded tokens per
/// call keeps the activations in cache and beats large batches by ~25%; with akidb's (padding
/// dropped inside the encoder, see `graph`) 2k beats 1k by 2–3%.
pub fn default_max_batch_tokens() -> usize {
    // The same choice the graph rewrite makes, so `AKIDB_ATTENTION=packed` gets ONNX Runtime's budget.
    if fusion::attention_op() == crate::session::graph::AttentionOp::Akidb {
        2048
    } else {
        1024
    }
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.to_string(),
            revision: None,
            onnx_file: None,
            session: SessionOptions::default(),
            max_batch_tokens: default_max_batch_tokens(),
            max_batch_size: 128,
        }
    }
}

/// What was loaded, for `/info`, logs and `--verbose`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub revision: Option<String>,
    pub onnx_file: String,
    pub kind: Kind,
    /// Hidden size: the vectors' dimension for an embedder.
    pub dimension: usize,
    pub max_seq_length: usize,
    pub pooling: &'static str,
    /// `id2label` in id order, for cross-encoders (one) and classifiers; empty for embedders.
    pub labels: Vec<String>,
    /// How a head's logits become scores; `None` for embedders.
    pub activation: Option<Activation>,
    pub provider: &'static str,
    pub onnx_runtime_version: String,
    /// Attention blocks replaced by ONNX Runtime's fused kernel.
    pub fused_attention: usize,
    /// The model's named prompts (see [`EncodeOptions::prompt_name`]).
    pub prompts: std::collections::BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
}

impl ModelInfo {
    /// The text of the prompt `name`, or of the model's default prompt when `name` is `None`.
    pub fn prompt(&self, name: Option<&str>) -> Result<Option<&str>, EngineError> {
        match name.or(self.default_prompt_name.as_deref()) {
            None => Ok(None),
            Some(name) => self.prompts.get(name).map(|p| Some(p.as_str())).ok_or_else(|| {
                let known = if self.prompts.is_empty() {
                    "it has no prompts".to_string()
                } else {
                    format!("it has {}", self.prompts.keys().cloned().collect::<Vec<_>>().join(", "))
                };
                EngineError::UnknownPrompt { model: self.id.clone(), name: name.to_string(), known }
            }),
        }
    }
}

pub struct Rows {
    pub vectors: Vec<Vec<f32>>,
    pub total_tokens: usize,
}

/// One model's whole pipeline, whatever its [`Kind`]: an embedder's pooled vectors, or a
/// cross-encoder's or classifier's logits (scores come from [`Activation::apply`]).
pub struct Model {
    info: ModelInfo,
    config: ModelConfig,
    tokenizer: Tokenizer,
    session: DeviceSession<Session>,
    decision: Decision,
    budget: Budget,
}

impl Model {
    /// Resolves, loads and warms the model; the warm-up run also checks the dimension.
    pub fn load(options: &ModelOptions) -> Result<Self, EngineError> {
        // Binding ONNX Runtime (its environment, device discovery) takes tens of ms: overlap it
        // with finding the files and parsing the tokenizer. Its result is read where it is used.
        std::thread::spawn(|| crate::session::runtime::init().map(|_| ()));
        let started = std::time::Instant::now();
        let repo = ModelRepo::open(&options.model, options.revision.as_deref())?;
        let config = ModelConfig::load(&repo)?;
        // Parsing tokenizer.json takes tens of ms: it runs beside the session's load below.
        let (tokenizer_file, max_seq_length) = (repo.file("tokenizer.json")?, config.max_seq_length);
        let tokenizer = std::thread::spawn(move || Tokenizer::from_file(&tokenizer_file, max_seq_length));
        let (onnx_file, onnx_path) = match &options.onnx_file {
            Some(name) => (name.clone(), repo.file(name)?),
            None => {
                let path = repo.first_file(&["onnx/model.onnx", "model.onnx"])?;
                let name = if path.ends_with("onnx/model.onnx") { "onnx/model.onnx" } else { "model.onnx" };
                (name.to_string(), path)
            }
        };
        // Large exports keep their weights beside the graph; fetch them into the same snapshot.
        let external_data = repo.optional_file(&format!("{onnx_file}_data"))?.is_some()
            | repo.optional_file(&format!("{onnx_file}.data"))?.is_some();
        let mut session_options = options.session.clone();
        let coreml = coreml_available();
        // Only CoreML's caches are keyed by it; it reads 2 MiB of the model.
        let content = coreml.then(|| device::content_key(&onnx_path).ok()).flatten();
        if let Some(dir) = &session_options.coreml.cache_dir {
            session_options.coreml.cache_dir =
                Some(coreml_cache_dir(dir, &repo, &onnx_file, content.as_deref().unwrap_or("unreadable")));
        }
        // --device coreml without CoreML: a clear error.
        choose_provider(options.session.device, coreml)?;
        // External weights are found relative to the file, so such models are loaded as they are;
        // CoreML has no kernel for the fused op, so its graph stays whole. A fused graph is used
        // only once it gave the same hidden states as the exported one (see `fusion`).
        let heads = config.num_attention_heads.filter(|_| options.session.fuse_attention && !external_data);
        let cpu_options = SessionOptions { device: Device::Cpu, ..session_options.clone() };
        let graphs = crate::session::cache::graphs_dir();
        // Where the CPU serves, a ready optimized graph loads while the tokenizer is parsed.
        let preloaded = match (options.session.device, coreml, heads) {
            (Device::Cpu, _, Some(h)) | (Device::Auto, false, Some(h)) => {
                fusion::preload(&onnx_path, h, &cpu_options, graphs.as_deref())
            }
            _ => None,
        };
        let tokenizer = tokenizer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        tracing::debug!(elapsed = ?started.elapsed(), preloaded = preloaded.is_some(), "tokenizer loaded");
        let cpu = CpuLoader {
            path: onnx_path.clone(),
            heads,
            options: cpu_options,
            tokenizer: tokenizer.clone(),
            graphs,
            preloaded: parking_lot::Mutex::new(preloaded),
        };
        let coreml_options = SessionOptions { device: Device::CoreMl, ..session_options };
        let budget = Budget::new(options.max_batch_tokens, options.max_batch_size);
        let (session, fused_attention, decision) = match (options.session.device, coreml) {
            (Device::Cpu, _) => {
                let (session, n) = cpu.load()?;
                (DeviceSession::new(session, None), n, Decision::fixed(Provider::Cpu, "--device cpu"))
            }
            (Device::Auto, false) => {
                let (session, n) = cpu.load()?;
                let decision = Decision::fixed(Provider::Cpu, device::NO_COREML);
                (DeviceSession::new(session, None), n, decision)
            }
            (Device::CoreMl, _) => {
                let session = Session::load(&onnx_path, None, &coreml_options)?;
                (DeviceSession::new(session, None), 0, Decision::fixed(Provider::CoreMl, "--device coreml"))
            }
            (Device::Auto, true) => {
                let measure = Measure {
                    tokenizer: &tokenizer,
                    output: Output::of(&config),
                    max_seq_length: config.max_seq_length,
                    budget,
                };
                let parts = [
                    content.as_deref().unwrap_or("unreadable"),
                    &format!("{}@{}:{onnx_file}", repo.id(), repo.revision().unwrap_or("local")),
                    &format!("{:?} fuse={:?} threads={:?}", coreml_options.coreml, heads, options.session.threads),
                    &format!("{budget:?} max_seq_length={}", config.max_seq_length),
                ];
                let cache = crate::session::cache::cache_dir().map(|d| DecisionCache::new(&d.join("device"), &parts));
                let load_coreml = || Session::load(&onnx_path, None, &coreml_options);
                choose_by_measurement(cpu, &load_coreml, &measure, cache.as_ref())?
            }
        };
        let info = ModelInfo {
            id: repo.id().to_string(),
            revision: repo.revision().map(str::to_string),
            onnx_file,
            kind: config.kind,
            dimension: config.dimension,
            max_seq_length: config.max_seq_length,
            pooling: if config.head.is_some() { "none" } else { config.pooling.as_str() },
            labels: config.head.as_ref().map(|h| h.labels.clone()).unwrap_or_default(),
            activation: config.head.as_ref().map(|h| h.activation),
            provider: session.provider().as_str(),
            onnx_runtime_version: crate::session::runtime::init()?.to_string(),
            fused_attention,
            prompts: config.prompts.clone(),
            default_prompt_name: config.default_prompt_name.clone(),
        };
        tracing::debug!(elapsed = ?started.elapsed(), "session ready");
        let embedder = Self { info, config, tokenizer, session, decision, budget };
        let warm = embedder.embed(&["warm-up"], false)?;
        tracing::debug!(elapsed = ?started.elapsed(), "warmed up");
        let got = warm.vectors.first().map_or(0, Vec::len);
        if got != embedder.config.output_width() {
            return Err(EngineError::DimensionMismatch {
                model: embedder.info.id.clone(),
                got,
                expected: embedder.config.output_width(),
            });
        }
        tracing::info!(
            model = %embedder.info.id,
            revision = embedder.info.revision.as_deref().unwrap_or("local"),
            onnx = %embedder.info.onnx_file,
            dimension = embedder.info.dimension,
            max_seq_length = embedder.info.max_seq_length,
            kind = %embedder.info.kind,
            pooling = embedder.info.pooling,
            provider = embedder.info.provider,
            fused_attention = embedder.info.fused_attention,
            device = %embedder.device(),
            "model loaded"
        );
        Ok(embedder)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The provider serving now, the decision that picked it (with its timings) and any fallback.
    pub fn device(&self) -> DeviceReport {
        DeviceReport {
            provider: self.session.provider(),
            decision: self.decision.clone(),
            fell_back: self.session.fell_back(),
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Texts with the model's default prompt, if it has one.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Tokens>, EngineError> {
        self.tokenize_texts(texts, &EncodeOptions::default())
    }

    /// Texts with a named prompt (or the default one), cut at `options.side` when too long.
    pub fn tokenize_texts<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &EncodeOptions,
    ) -> Result<Vec<Tokens>, EngineError> {
        // Without a prompt the texts are encoded where they are, uncopied.
        if self.info.prompt(options.prompt_name.as_deref())?.is_none_or(str::is_empty) {
            return Ok(self.tokenizer.encode_texts(texts, options.side)?);
        }
        let inputs: Vec<Input> = texts.iter().map(|t| Input::Single(t.as_ref().to_string())).collect();
        self.tokenize_inputs(&inputs, options)
    }

    /// Texts and (query, passage) pairs; pairs are truncated longest-first to the maximum length.
    /// A prompt goes before each text (not before pairs, which cross-encoders score as they come).
    pub fn tokenize_inputs(&self, inputs: &[Input], options: &EncodeOptions) -> Result<Vec<Tokens>, EngineError> {
        let Some(prompt) = self.info.prompt(options.prompt_name.as_deref())?.filter(|p| !p.is_empty()) else {
            return Ok(self.tokenizer.encode_inputs(inputs, options.side)?);
        };
        let prompted: Vec<Input> = inputs
            .iter()
            .map(|input| match input {
                Input::Single(text) => Input::Single(format!("{prompt}{text}")),
                pair => pair.clone(),
            })
            .collect();
        let mut tokens = self.tokenizer.encode_inputs(&prompted, options.side)?;
        let singles = tokens.iter_mut().zip(inputs).filter(|(_, i)| matches!(i, Input::Single(_))).map(|(t, _)| t);
        self.pool_without_prompt(prompt, singles)?;
        Ok(tokens)
    }

    /// A model that pools without its prompt (`include_prompt: false`) skips the prompt's tokens,
    /// counted as sentence-transformers counts them.
    fn pool_without_prompt<'a>(
        &self,
        prompt: &str,
        tokens: impl Iterator<Item = &'a mut Tokens>,
    ) -> Result<(), EngineError> {
        let pools_tokens = matches!(self.config.pooling, Pooling::Mean | Pooling::MeanSqrtLen | Pooling::Max);
        if self.config.include_prompt || !pools_tokens || self.config.head.is_some() {
            return Ok(());
        }
        let skip = self.tokenizer.prompt_length(prompt)?;
        for t in tokens {
            t.pool_from = skip.min(t.len());
        }
        Ok(())
    }

    /// `/tokenize`: every token of `text` with its character span, untruncated.
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>, EngineError> {
        Ok(self.tokenizer.tokens(text, add_special_tokens)?)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        Ok(self.tokenizer.decode(ids, skip_special_tokens)?)
    }

    /// One inference call over `items` as a single padded batch; returns one row per item in the
    /// same order: the pooled, unnormalized vector of an embedder, the logits of a head.
    /// Callers keep batches within `max_batch_tokens`.
    pub fn infer(&self, items: &[&Tokens]) -> Result<Vec<Vec<f32>>, EngineError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenizer.batch(items);
        let output = Output::of(&self.config);
        Ok(self.session.run(|session| forward(session, &batch, output))?)
    }

    /// Like [`Model::infer`] without pooling: each item's real tokens' hidden states, one
    /// after the other (`len × dimension` values). Embedders only.
    pub fn infer_tokens(&self, items: &[&Tokens]) -> Result<Vec<Vec<f32>>, EngineError> {
        if self.config.kind != Kind::Embedder {
            return Err(EngineError::WrongKind {
                model: self.info.id.clone(),
                is: self.config.kind.described(),
                what: "per-token vectors",
                needs: Kind::Embedder.described(),
            });
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenizer.batch(items);
        Ok(self.session.run(|session| forward(session, &batch, Output::Tokens))?)
    }

    /// Runs tokenized inputs in length-sorted batches (little padding), keeping input order: an
    /// embedder's vectors (unit length with `normalize`), or a head's logits.
    pub fn embed_tokens(&self, tokens: &[Tokens], normalize: bool) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); tokens.len()];
        for range in plan_batches(order.iter().map(|&i| tokens[i].len()), self.budget) {
            let members = &order[range];
            let items: Vec<&Tokens> = members.iter().map(|&i| &tokens[i]).collect();
            for (&i, mut v) in members.iter().zip(self.infer(&items)?) {
                if normalize {
                    pooling::normalize(&mut v);
                }
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Texts longer than the model's maximum are truncated, as sentence-transformers does.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], normalize: bool) -> Result<Rows, EngineError> {
        self.embed_with(texts, normalize, &EncodeOptions::default())
    }

    /// [`Model::embed`] with a named prompt, or cutting the start of long texts.
    pub fn embed_with<S: AsRef<str>>(
        &self,
        texts: &[S],
        normalize: bool,
        options: &EncodeOptions,
    ) -> Result<Rows, EngineError> {
        let tokens = self.tokenize_texts(texts, options)?;
        let total_tokens = tokens.iter().map(Tokens::len).sum();
        let vectors = self.embed_tokens(&tokens, normalize)?;
        Ok(Rows { vectors, total_tokens })
    }

    /// Refuses texts that would be truncated, naming the first one.
    pub fn check_lengths(&self, tokens: &[Tokens]) -> Result<(), EngineError> {
        match tokens.iter().position(|t| t.truncated) {
            Some(index) => Err(EngineError::TooLong { index, max: self.config.max_seq_length }),
            None => Ok(()),
        }
    }
}

/// What one inference call returns per row.
#[derive(Debug, Clone, Copy)]
enum Output {
    Pooled(Pooling),
    Logits,
    /// The real tokens' hidden states, flattened.
    Tokens,
}

impl Output {
    fn of(config: &ModelConfig) -> Self {
        if config.head.is_some() {
            Output::Logits
        } else {
            Output::Pooled(config.pooling)
        }
    }
}

/// Runs one batch: one row per member, in the batch's order (vectors unnormalized).
fn forward(session: &Session, batch: &Batch, output: Output) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let mask = batch.attention_mask.view();
    match output {
        Output::Pooled(pooling) => {
            let pooled = batch.pool_mask.as_ref().map_or(mask, |m| m.view());
            session.run(batch, |hidden| pooling::pool(hidden, pooled, pooling))
        }
        Output::Logits => session
            .run(batch, |logits: ndarray::ArrayView2<'_, f32>| logits.outer_iter().map(|row| row.to_vec()).collect()),
        Output::Tokens => session.run(batch, |hidden: ndarray::ArrayView3<'_, f32>| {
            hidden
                .outer_iter()
                .zip(mask.outer_iter())
                .map(|(tokens, mask)| {
                    let len = mask.iter().take_while(|&&m| m != 0).count();
                    tokens.slice(ndarray::s![..len, ..]).iter().copied().collect()
                })
                .collect()
        }),
    }
}

/// Loads the CPU session, with the verified attention-fused graph when it can (see `fusion`); kept
/// whole so `auto` can rebuild the CPU session after a CoreML failure.
struct CpuLoader {
    path: PathBuf,
    /// Attention heads, when the graph is to be fused.
    heads: Option<usize>,
    options: SessionOptions,
    /// Tokenizes the probe batch that checks a fused graph.
    tokenizer: Tokenizer,
    /// Where verified fused graphs (and refusals) are kept.
    graphs: Option<PathBuf>,
    /// A session loaded ahead (`fusion::preload`), served by the first `load`.
    preloaded: parking_lot::Mutex<Option<Loaded>>,
}

impl CpuLoader {
    /// The session and how many attention blocks were fused.
    fn load(&self) -> Result<(Session, usize), RuntimeError> {
        if let Some(Loaded { session, fused }) = self.preloaded.lock().take() {
            return Ok((session, fused));
        }
        let Some(heads) = self.heads else {
            return Ok((Session::load(&self.path, None, &self.options)?, 0));
        };
        let Loaded { session, fused } =
            fusion::load(&self.path, heads, &self.options, &self.tokenizer, self.graphs.as_deref())?;
        Ok((session, fused))
    }
}

/// What the `auto` warm-up runs: the shapes the server will see, through the real pipeline.
struct Measure<'a> {
    tokenizer: &'a Tokenizer,
    output: Output,
    max_seq_length: usize,
    budget: Budget,
}

impl Measure<'_> {
    fn batches(&self) -> Result<Vec<Batch>, EngineError> {
        device::warmup_shapes(self.max_seq_length, self.budget.max_tokens, self.budget.max_rows)
            .into_iter()
            .map(|shape| {
                let tokens = self.tokenizer.encode(&device::warmup_texts(shape))?;
                let refs: Vec<&Tokens> = tokens.iter().collect();
                Ok(self.tokenizer.batch(&refs))
            })
            .collect()
    }

    fn run(&self, session: &Session, batches: &[Batch]) -> Outcome {
        device::measure(batches, device::REPEATS, |batch| forward(session, batch, self.output))
    }
}

/// `auto` where CoreML is available: the cached decision, or both sessions timed over the warm-up
/// and compared ([`device::decide`]). CoreML keeps a way back to the CPU for run-time failures.
fn choose_by_measurement(
    cpu: CpuLoader,
    load_coreml: &dyn Fn() -> Result<Session, RuntimeError>,
    measure: &Measure<'_>,
    cache: Option<&DecisionCache>,
) -> Result<(DeviceSession<Session>, usize, Decision), EngineError> {
    let cached = cache.filter(|_| !cpu.options.remeasure_device).and_then(DecisionCache::load);
    let (decision, mut cpu_session, mut coreml_session) = match cached {
        Some(decision) => (decision, None, None),
        None => {
            let batches = measure.batches()?;
            let (cpu_session, fused) = cpu.load()?;
            let cpu_outcome = measure.run(&cpu_session, &batches);
            if let Outcome::Failed(e) = &cpu_outcome {
                return Err(RuntimeError::Ort(format!("the CPU session failed its warm-up: {e}")).into());
            }
            let (coreml_outcome, coreml_session) = match load_coreml() {
                Ok(session) => (measure.run(&session, &batches), Some(session)),
                Err(e) => (Outcome::Failed(e.to_string()), None),
            };
            let decision = device::decide(&cpu_outcome, Some(&coreml_outcome));
            tracing::info!(
                provider = decision.provider.as_str(),
                cpu_ms = decision.cpu_ms,
                coreml_ms = decision.coreml_ms,
                min_cosine = decision.min_cosine,
                shapes = batches.len(),
                "device decision: {}",
                decision.reason
            );
            if let Some(cache) = cache {
                cache.store(&decision);
            }
            (decision, Some((cpu_session, fused)), coreml_session)
        }
    };
    let mut decision = decision;
    if decision.provider == Provider::CoreMl {
        let session = match coreml_session.take() {
            Some(session) => Ok(session),
            None => load_coreml(), // a cached decision
        };
        match session {
            Ok(session) => {
                drop(cpu_session.take());
                let rebuild = Box::new(move || cpu.load().map(|(session, _)| session));
                return Ok((DeviceSession::new(session, Some(rebuild)), 0, decision));
            }
            Err(e) => {
                tracing::warn!("the cached decision was CoreML, but its session did not load ({e}); using the CPU");
                decision =
                    Decision { provider: Provider::Cpu, reason: format!("CoreML did not load: {e}"), ..decision };
            }
        }
    }
    drop(coreml_session);
    let (session, fused) = match cpu_session {
        Some(loaded) => loaded,
        None => cpu.load()?,
    };
    Ok((DeviceSession::new(session, None), fused, decision))
}

/// Compiled CoreML models are only valid for one model's content and one ONNX Runtime version
/// (cached models have broken across versions; ONNX Runtime recompiles only when metadata or graph
/// structure change, not weights), so the directory is keyed by both: `content` is
/// [`device::content_key`], which changes when a model is re-exported to the same path and size.
fn coreml_cache_dir(base: &Path, repo: &ModelRepo, onnx_file: &str, content: &str) -> PathBuf {
    let clean = |s: &str| s.replace(['/', '\\', ':'], "--");
    base.join(format!("onnxruntime-{}", crate::session::runtime::PINNED_VERSION)).join(clean(repo.id())).join(format!(
        "{}-{}-{content}",
        repo.revision().unwrap_or("local"),
        clean(onnx_file)
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The `auto` measurement with real ONNX Runtime sessions on the tiny test model. No CoreML
    /// here, so the unfused graph on the CPU stands in for it: the real warm-up, timing, vector
    /// comparison, decision cache and session hand-over run; only the provider differs on a Mac.
    #[test]
    fn auto_measures_real_sessions_caches_the_decision_and_remeasures_on_request() {
        if std::env::var_os("HF_HOME").is_none() {
            std::env::set_var("HF_HOME", Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/hf"));
        }
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let repo = ModelRepo::open("akidb-test/tiny-bert-cls", None).expect("tiny model in the HF cache");
        let config = ModelConfig::load(&repo).unwrap();
        let tokenizer = Tokenizer::from_file(&repo.file("tokenizer.json").unwrap(), config.max_seq_length).unwrap();
        let path = repo.first_file(&["onnx/model.onnx", "model.onnx"]).unwrap();
        let cpu_options = SessionOptions { device: Device::Cpu, threads: Some(1), ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let loader = |remeasure: bool| CpuLoader {
            path: path.clone(),
            heads: config.num_attention_heads,
            options: SessionOptions { remeasure_device: remeasure, ..cpu_options.clone() },
            tokenizer: tokenizer.clone(),
            graphs: Some(dir.path().join("graphs")),
            preloaded: parking_lot::Mutex::new(None),
        };
        let measure = Measure {
            tokenizer: &tokenizer,
            output: Output::of(&config),
            max_seq_length: config.max_seq_length,
            budget: Budget::new(256, 16),
        };
        let cache = DecisionCache::new(dir.path(), &[&device::content_key(&path).unwrap(), "tiny"]);
        let loads = AtomicUsize::new(0);
        let stand_in = || {
            loads.fetch_add(1, Ordering::SeqCst);
            Session::load(&path, None, &cpu_options)
        };

        let (session, _, decision) = choose_by_measurement(loader(false), &stand_in, &measure, Some(&cache)).unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(!decision.cached);
        assert!(decision.cpu_ms.unwrap() > 0.0 && decision.coreml_ms.unwrap() > 0.0, "{decision:?}");
        assert!(decision.min_cosine.unwrap() >= device::MIN_COSINE, "same model, same vectors: {decision:?}");
        assert!(decision.reason.contains("faster"), "{decision:?}");
        let batch = measure.batches().unwrap().remove(0);
        let vectors = session.run(|s| forward(s, &batch, Output::of(&config))).unwrap();
        assert_eq!(vectors[0].len(), config.dimension);

        // A second start reads the decision: nothing measured, the stand-in only loaded if chosen.
        let (_, _, again) = choose_by_measurement(loader(false), &stand_in, &measure, Some(&cache)).unwrap();
        // (serde_json's default float parser is not bit-exact: compare the timing closely, not exactly)
        let same_timing = (again.cpu_ms.unwrap() - decision.cpu_ms.unwrap()).abs() < 1e-9;
        assert!(again.cached && again.provider == decision.provider && same_timing, "{again:?} vs {decision:?}");
        let expected = if decision.provider == Provider::CoreMl { 2 } else { 1 };
        assert_eq!(loads.load(Ordering::SeqCst), expected);

        // --remeasure-device measures again.
        let (_, _, fresh) = choose_by_measurement(loader(true), &stand_in, &measure, Some(&cache)).unwrap();
        assert!(!fresh.cached && loads.load(Ordering::SeqCst) == expected + 1, "{fresh:?}");

        // A candidate that cannot even load leaves the CPU serving.
        let broken = || -> Result<Session, RuntimeError> { Err(RuntimeError::CoreMlUnavailable) };
        let (session, _, d) = choose_by_measurement(loader(true), &broken, &measure, None).unwrap();
        assert!(d.provider == Provider::Cpu && d.reason.contains("failed during the warm-up"), "{d:?}");
        assert_eq!(session.provider(), Provider::Cpu);

        // A cached CoreML decision whose session no longer loads: the CPU serves, start-up goes on.
        let stale = DecisionCache::new(dir.path(), &["stale"]);
        stale.store(&Decision::fixed(Provider::CoreMl, "measured faster earlier"));
        let (session, _, d) = choose_by_measurement(loader(false), &broken, &measure, Some(&stale)).unwrap();
        assert!(d.provider == Provider::Cpu && d.reason.contains("CoreML did not load"), "{d:?}");
        assert!(session.run(|s| forward(s, &batch, Output::of(&config))).is_ok());
    }
}
