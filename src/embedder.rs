//! The pipeline in one place: model files → config → tokenizer → session → pooling.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    batching::{plan_batches, Budget},
    config::{ConfigError, ModelConfig},
    fusion::{self, Loaded},
    hub::{HubError, ModelRepo},
    pooling,
    runtime::{choose_provider, coreml_available, Provider, RuntimeError, Session, SessionOptions},
    tokenize::{TokenizeError, Tokenizer, Tokens},
};

pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
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
    #[error("model {model} gives {got}-dimensional vectors but its config says {expected}")]
    DimensionMismatch { model: String, got: usize, expected: usize },
}

#[derive(Debug, Clone)]
pub struct EmbedderOptions {
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

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.to_string(),
            revision: None,
            onnx_file: None,
            session: SessionOptions::default(),
            // Measured on MiniLM (docs/performance.md): ~1k padded tokens per call keeps the
            // activations in cache and beats large batches by ~25%.
            max_batch_tokens: 1024,
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
    pub dimension: usize,
    pub max_seq_length: usize,
    pub pooling: &'static str,
    pub provider: &'static str,
    pub onnx_runtime_version: String,
    /// Attention blocks replaced by ONNX Runtime's fused kernel.
    pub fused_attention: usize,
}

pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub total_tokens: usize,
}

pub struct Embedder {
    info: ModelInfo,
    config: ModelConfig,
    tokenizer: Tokenizer,
    session: Session,
    budget: Budget,
}

impl Embedder {
    /// Resolves, loads and warms the model; the warm-up run also checks the dimension.
    pub fn load(options: &EmbedderOptions) -> Result<Self, EmbedError> {
        let repo = ModelRepo::open(&options.model, options.revision.as_deref())?;
        let config = ModelConfig::load(&repo)?;
        let tokenizer = Tokenizer::from_file(&repo.file("tokenizer.json")?, config.max_seq_length)?;
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
        if let Some(dir) = &session_options.coreml.cache_dir {
            session_options.coreml.cache_dir = Some(coreml_cache_dir(dir, &repo, &onnx_file, &onnx_path));
        }
        // External weights are found relative to the file, so such models are loaded as they are;
        // CoreML has no kernel for the fused op, so its graph stays whole there too. A fused graph
        // is used only once it gave the same hidden states as the exported one (see `fusion`).
        let on_cpu = choose_provider(options.session.device, coreml_available())? == Provider::Cpu;
        let Loaded { session, fused: fused_attention } =
            match (options.session.fuse_attention && on_cpu && !external_data, config.num_attention_heads) {
                (true, Some(heads)) => {
                    let cache = crate::cache::graphs_dir();
                    fusion::load(&onnx_path, heads, &session_options, &tokenizer, cache.as_deref())?
                }
                _ => Loaded { session: Session::load(&onnx_path, None, &session_options)?, fused: 0 },
            };
        let info = ModelInfo {
            id: repo.id().to_string(),
            revision: repo.revision().map(str::to_string),
            onnx_file,
            dimension: config.dimension,
            max_seq_length: config.max_seq_length,
            pooling: config.pooling.as_str(),
            provider: session.provider().as_str(),
            onnx_runtime_version: crate::runtime::init()?.to_string(),
            fused_attention,
        };
        let embedder = Self {
            info,
            config,
            tokenizer,
            session,
            budget: Budget::new(options.max_batch_tokens, options.max_batch_size),
        };
        let warm = embedder.embed(&["warm-up"], true)?;
        let got = warm.vectors.first().map_or(0, Vec::len);
        if got != embedder.config.dimension {
            return Err(EmbedError::DimensionMismatch {
                model: embedder.info.id.clone(),
                got,
                expected: embedder.config.dimension,
            });
        }
        tracing::info!(
            model = %embedder.info.id,
            revision = embedder.info.revision.as_deref().unwrap_or("local"),
            onnx = %embedder.info.onnx_file,
            dimension = embedder.info.dimension,
            max_seq_length = embedder.info.max_seq_length,
            pooling = embedder.info.pooling,
            provider = embedder.info.provider,
            fused_attention = embedder.info.fused_attention,
            "model loaded"
        );
        Ok(embedder)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn tokenize<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Tokens>, EmbedError> {
        Ok(self.tokenizer.encode(texts)?)
    }

    /// One inference call over `items` as a single padded batch; returns pooled, unnormalized
    /// vectors in the same order. Callers keep batches within `max_batch_tokens`.
    pub fn infer(&self, items: &[&Tokens]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenizer.batch(items);
        let pooling = self.config.pooling;
        let mask = batch.attention_mask.view();
        Ok(self.session.run(&batch, |hidden| pooling::pool(hidden, mask, pooling))?)
    }

    /// Embeds tokenized texts in length-sorted batches (little padding), keeping input order.
    pub fn embed_tokens(&self, tokens: &[Tokens], normalize: bool) -> Result<Vec<Vec<f32>>, EmbedError> {
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
    pub fn embed<S: AsRef<str> + Sync>(&self, texts: &[S], normalize: bool) -> Result<Embeddings, EmbedError> {
        let tokens = self.tokenize(texts)?;
        let total_tokens = tokens.iter().map(Tokens::len).sum();
        let vectors = self.embed_tokens(&tokens, normalize)?;
        Ok(Embeddings { vectors, total_tokens })
    }

    /// Refuses texts that would be truncated, naming the first one.
    pub fn check_lengths(&self, tokens: &[Tokens]) -> Result<(), EmbedError> {
        match tokens.iter().position(|t| t.truncated) {
            Some(index) => Err(EmbedError::TooLong { index, max: self.config.max_seq_length }),
            None => Ok(()),
        }
    }
}

/// Compiled CoreML models are only valid for one model file and one ONNX Runtime version
/// (cached models have broken across versions), so the cache directory is keyed by both.
fn coreml_cache_dir(base: &Path, repo: &ModelRepo, onnx_file: &str, onnx_path: &Path) -> PathBuf {
    let size = std::fs::metadata(onnx_path).map_or(0, |m| m.len());
    let clean = |s: &str| s.replace(['/', '\\', ':'], "--");
    base.join(format!("onnxruntime-{}", crate::runtime::PINNED_VERSION)).join(clean(repo.id())).join(format!(
        "{}-{}-{size}",
        repo.revision().unwrap_or("local"),
        clean(onnx_file)
    ))
}
