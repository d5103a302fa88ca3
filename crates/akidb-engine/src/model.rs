//! The pipeline in one place: model files → config → tokenizer → session → pooling (or, for a
//! cross-encoder or classifier, the logits of its head).

use std::sync::Arc;

use serde::Serialize;

use crate::{
    batching::{plan_batches, Budget},
    dense::Dense,
    error::EngineError,
    forward::{forward, Readout},
    load::{Measure, ModelFiles, Probe, SessionPlan},
    model_config::{Activation, DenseSpec, Kind, ModelConfig, Pooling},
    options::{EncodeOptions, ModelOptions},
    pooling,
    session::{
        device::{Decision, DeviceReport, DeviceSession},
        runtime::{self, Session},
    },
    sparse::SparseVector,
    tokenize::{Input, Token, Tokenizer, Tokens},
};

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
    /// A sparse model's own pruning: the largest this many weights are kept (`None`: all).
    pub max_active_dims: Option<usize>,
    /// The model's named prompts (see [`EncodeOptions::prompt_name`]).
    pub prompts: std::collections::BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// How the pipeline was put together from the model's files, for `akidb inspect` and `/info`:
    /// the first thing to read when a model misbehaves.
    pub pipeline: Pipeline,
}

/// What akidb found in a model and will do with it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pipeline {
    /// config.json's `model_type` (`bert`, `qwen3`, `gemma3_text`, `xlm-roberta`, `modernbert`, …).
    pub family: Option<String>,
    pub architectures: Vec<String>,
    /// sentence-transformers modules, by class, in order.
    pub modules: Vec<String>,
    /// Every graph input and what akidb feeds it.
    pub inputs: Vec<InputFeed>,
    /// The graph output read, and how rows are made from it.
    pub output: String,
    pub rows: String,
    /// Dense layers akidb runs after pooling (empty when the graph holds them or there are none).
    pub dense: Vec<DenseSpec>,
    /// `left` (decoders) or `right`.
    pub padding_side: &'static str,
    /// Attention blocks fused (akidb's kernels or ONNX Runtime's), and if none, why.
    pub fused_attention: usize,
    pub fusion: String,
    /// `fp32 (…)` or `bf16 (…)`: what the matrix products run in, and why (`--precision`).
    pub precision: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputFeed {
    pub name: String,
    pub fed: String,
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

/// [`Rows`] of a sparse model.
pub struct SparseRows {
    pub vectors: Vec<SparseVector>,
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
    /// What a batch's rows are read as (pooled + Dense, the graph's sentence vector, logits).
    readout: Readout,
}

impl Model {
    /// Resolves, loads and warms the model ([`crate::load`] has the steps); the warm-up run also
    /// checks the row width (the dimension, or the number of labels).
    pub fn load(options: &ModelOptions) -> Result<Self, EngineError> {
        // Binding ONNX Runtime (its environment, device discovery) takes tens of ms: overlap it
        // with finding the files and parsing the tokenizer. Its result is read where it is used.
        let binding = std::thread::spawn(|| runtime::init().map(|_| ()));
        let loaded = Self::load_overlapped(options);
        // Joined before returning, so a caller that exits on a load error never exits while
        // ONNX Runtime is half set up on another thread (that crashed in its teardown).
        let _ = binding.join();
        loaded
    }

    fn load_overlapped(options: &ModelOptions) -> Result<Self, EngineError> {
        let started = std::time::Instant::now();
        let files = ModelFiles::resolve(options)?;
        let config = ModelConfig::load(&files.repo)?;
        // Parsing tokenizer.json takes tens of ms: it runs beside the session's preload.
        let (tokenizer_file, max_seq_length) = (files.repo.file("tokenizer.json")?, config.max_seq_length);
        let (pad_left, pad_token) = (config.padding_left, config.pad_token.clone());
        let tokenizer = std::thread::spawn(move || {
            Tokenizer::from_file(&tokenizer_file, max_seq_length).map(|t| t.pad_as(pad_left, pad_token.as_deref()))
        });
        // The Dense layers akidb may have to run (only read when the graph lacks them, below).
        let dense_specs = config.dense.clone();
        let max_tokens = match config.splade {
            // A sparse model's logits are vocabulary-wide per token: cap the tokens per call.
            Some(_) => crate::sparse::max_tokens(options.max_batch_tokens(), config.dimension),
            None => options.max_batch_tokens(),
        };
        let budget = Budget::new(max_tokens, options.max_batch_size);
        let plan = SessionPlan::new(&files, &config, options, budget)?;
        let preloaded = plan.preload();
        let tokenizer = tokenizer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        tracing::debug!(elapsed = ?started.elapsed(), preloaded = preloaded.is_some(), "tokenizer loaded");
        let probe = Probe::new(&tokenizer)?;
        // The Dense layers akidb runs when the graph outputs token vectors; a graph with
        // `sentence_embedding` holds them, so a failure to read them only matters without it.
        let dense: crate::dense::Layers = if config.head.is_none() {
            dense_specs
                .iter()
                .map(|spec| Dense::load(&files.repo, spec))
                .collect::<Result<Vec<_>, _>>()
                .map(Into::into)
                .map_err(Arc::new)
        } else {
            Ok(Vec::new().into())
        };
        let measure = Measure { tokenizer: &tokenizer, config: &config, dense: &dense, max_seq_length, budget };
        let (session, rewrite, precision, decision) = plan.choose_device(preloaded, probe, measure)?;
        tracing::info!(precision = %precision.describe(), "matrix products");
        let fused_attention = rewrite.fused();
        let readout = session.run(|s| Ok(Readout::rows(&config, s.outputs(), &dense)))??;
        let pipeline = session.run(|s| {
            Ok(Pipeline {
                family: config.family.clone(),
                architectures: config.architectures.clone(),
                modules: config.modules.clone(),
                inputs: s
                    .feeds()
                    .iter()
                    .map(|(name, feed)| InputFeed { name: name.clone(), fed: feed.describe() })
                    .collect(),
                output: match &readout {
                    Readout::Sentence => crate::forward::SENTENCE_OUTPUT.to_string(),
                    _ => s.default_output().to_string(),
                },
                rows: readout.describe(),
                dense: if matches!(&readout, Readout::Pooled { dense, .. } if !dense.is_empty()) {
                    config.dense.clone()
                } else {
                    Vec::new()
                },
                padding_side: if tokenizer.pads_left() { "left" } else { "right" },
                fused_attention,
                fusion: rewrite.describe(),
                precision: precision.describe(),
            })
        })?;
        tracing::info!(fused_attention, fusion = %pipeline.fusion, "attention");
        let info = ModelInfo {
            id: files.repo.id().to_string(),
            revision: files.repo.revision().map(str::to_string),
            onnx_file: files.onnx_file,
            kind: config.kind,
            dimension: config.dimension,
            max_seq_length: config.max_seq_length,
            pooling: match (&config.head, config.splade) {
                (Some(_), _) => "none",
                (None, Some(splade)) => splade.as_str(),
                (None, None) => config.pooling.as_str(),
            },
            max_active_dims: config.max_active_dims,
            labels: config.head.as_ref().map(|h| h.labels.clone()).unwrap_or_default(),
            activation: config.head.as_ref().map(|h| h.activation),
            provider: session.provider().as_str(),
            onnx_runtime_version: runtime::init()?.to_string(),
            fused_attention,
            prompts: config.prompts.clone(),
            default_prompt_name: config.default_prompt_name.clone(),
            pipeline,
        };
        tracing::debug!(elapsed = ?started.elapsed(), "session ready");
        let model = Self { info, config, tokenizer, session, decision, budget, readout };
        let warm = model.embed(&["warm-up"], false)?;
        tracing::debug!(elapsed = ?started.elapsed(), "warmed up");
        let got = warm.vectors.first().map_or(0, Vec::len);
        if got != model.config.output_width() {
            return Err(EngineError::DimensionMismatch {
                model: model.info.id.clone(),
                got,
                expected: model.config.output_width(),
            });
        }
        tracing::info!(
            model = %model.info.id,
            revision = model.info.revision.as_deref().unwrap_or("local"),
            onnx = %model.info.onnx_file,
            dimension = model.info.dimension,
            max_seq_length = model.info.max_seq_length,
            kind = %model.info.kind,
            pooling = model.info.pooling,
            provider = model.info.provider,
            fused_attention = model.info.fused_attention,
            device = %model.device(),
            "model loaded"
        );
        Ok(model)
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
        Ok(self.session.run(|session| forward(session, &batch, &self.readout))?)
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
        Ok(self.session.run(|session| forward(session, &batch, &Readout::Tokens))?)
    }

    /// Runs tokenized inputs in length-sorted batches (little padding), keeping input order: an
    /// embedder's vectors (unit length with `normalize`), or a head's logits.
    pub fn embed_tokens(&self, tokens: &[Tokens], normalize: bool) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_tokens_reporting(tokens, normalize, &mut |_| {})
    }

    /// [`Model::embed_tokens`], calling `done` with the number of inputs of each batch as it
    /// completes (a corpus run's progress moves per batch, not per window of texts).
    pub fn embed_tokens_reporting(
        &self,
        tokens: &[Tokens],
        normalize: bool,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.run_sorted(tokens, done, |mut v| {
            if normalize {
                pooling::normalize(&mut v);
            }
            v
        })
    }

    /// Runs `tokens` in length-sorted batches and turns each row into `R` as its batch completes,
    /// so only one batch's rows are ever held in their full width; results keep input order.
    fn run_sorted<R>(
        &self,
        tokens: &[Tokens],
        done: &mut dyn FnMut(usize),
        mut row: impl FnMut(Vec<f32>) -> R,
    ) -> Result<Vec<R>, EngineError> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].len()));
        let mut out: Vec<Option<R>> = std::iter::repeat_with(|| None).take(tokens.len()).collect();
        for range in plan_batches(order.iter().map(|&i| tokens[i].len()), self.budget) {
            let members = &order[range];
            let items: Vec<&Tokens> = members.iter().map(|&i| &tokens[i]).collect();
            for (&i, v) in members.iter().zip(self.infer(&items)?) {
                out[i] = Some(row(v));
            }
            done(members.len());
        }
        // Every index is in exactly one batch, so every slot is filled.
        Ok(out.into_iter().flatten().collect())
    }

    /// A sparse model's vectors for `texts`: non-zero weights only, the largest `top_k` of them
    /// (the model's own `max_active_dims` when `None`). Each batch is pruned as it completes.
    pub fn embed_sparse_reporting<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &EncodeOptions,
        top_k: Option<usize>,
        done: &mut dyn FnMut(usize),
    ) -> Result<SparseRows, EngineError> {
        if self.config.kind != Kind::SparseEmbedder {
            return Err(EngineError::WrongKind {
                model: self.info.id.clone(),
                is: self.config.kind.described(),
                what: "sparse vectors",
                needs: Kind::SparseEmbedder.described(),
            });
        }
        let tokens = self.tokenize_texts(texts, options)?;
        let total_tokens = tokens.iter().map(Tokens::len).sum();
        let top_k = top_k.or(self.config.max_active_dims);
        let vectors = self.run_sorted(&tokens, done, |v| SparseVector::from_dense(&v, top_k))?;
        Ok(SparseRows { vectors, total_tokens })
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
        self.embed_reporting(texts, normalize, options, &mut |_| {})
    }

    /// [`Model::embed_with`], calling `done` with the number of texts of each batch as it completes.
    pub fn embed_reporting<S: AsRef<str>>(
        &self,
        texts: &[S],
        normalize: bool,
        options: &EncodeOptions,
        done: &mut dyn FnMut(usize),
    ) -> Result<Rows, EngineError> {
        let tokens = self.tokenize_texts(texts, options)?;
        let total_tokens = tokens.iter().map(Tokens::len).sum();
        let vectors = self.embed_tokens_reporting(&tokens, normalize, done)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hub::tests::test_model, session::runtime::SessionOptions};

    /// Many texts in small batches: `done` hears of every text once, batch by batch, and the rows
    /// are the ones `embed` gives.
    #[test]
    fn progress_is_reported_per_batch() {
        let dir = test_model(crate::hub::tests::MINILM).file("tokenizer.json").unwrap();
        let dir = dir.parent().unwrap().to_string_lossy().into_owned();
        let options = ModelOptions {
            model: dir,
            max_batch_tokens: Some(64),
            session: SessionOptions { threads: Some(1), fuse_attention: false, ..Default::default() },
            ..Default::default()
        };
        let model = Model::load(&options).unwrap();
        let texts: Vec<String> = (0..40).map(|i| format!("text number {i} of the progress test")).collect();
        let mut reports = Vec::new();
        let rows = model.embed_reporting(&texts, true, &EncodeOptions::default(), &mut |n| reports.push(n)).unwrap();
        assert_eq!(reports.iter().sum::<usize>(), texts.len(), "{reports:?}");
        assert!(reports.len() > 4, "several batches of at most 64 padded tokens: {reports:?}");
        assert_eq!(rows.vectors, model.embed(&texts, true).unwrap().vectors);
    }
}
