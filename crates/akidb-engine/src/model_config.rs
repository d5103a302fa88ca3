//! What a model says about itself: what it is (embedder, cross-encoder, classifier), pooling,
//! maximum sequence length, dimension, labels and score activation. Read from its own files —
//! the classic hub layout and sentence-transformers' newest formats alike — so any BERT-style
//! export works without code changes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hub::{HubError, ModelRepo};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON for this file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported pooling ({detail}); akidb supports exactly one of cls, mean, max, mean_sqrt_len, lasttoken")]
    UnsupportedPooling { path: PathBuf, detail: String },
    #[error("{path}: unsupported SpladePooling {key} '{value}'; akidb supports {supported}")]
    UnsupportedSplade { path: PathBuf, key: &'static str, value: String, supported: &'static str },
    #[error("{path}: a sparse model needs both an MLMTransformer and a SpladePooling module")]
    IncompleteSparse { path: PathBuf },
    #[error("cannot tell the embedding dimension: no hidden_size in config.json and no word_embedding_dimension in the pooling config")]
    UnknownDimension,
    #[error("{path}: unsupported activation_fn '{name}'; akidb supports Sigmoid, Softmax, Tanh and Identity")]
    UnsupportedActivation { path: PathBuf, name: String },
    #[error("{path}: default_prompt_name '{name}' is not one of its prompts")]
    UnknownDefaultPrompt { path: PathBuf, name: String },
    #[error("{path}: module {index} is {module}, which akidb does not implement (it runs {supported}); running the model without it would give wrong vectors")]
    UnsupportedModule { path: PathBuf, index: usize, module: String, supported: &'static str },
    #[error(
        "{path}: a Dense layer of {in_features} inputs follows {previous} values; the model's modules do not chain"
    )]
    DenseChain { path: PathBuf, in_features: usize, previous: usize },
    #[error(
        "{path}: unsupported Dense activation_function '{name}'; akidb supports Identity, Tanh, ReLU, Sigmoid and GELU"
    )]
    UnsupportedDenseActivation { path: PathBuf, name: String },
}

/// The sentence-transformers modules akidb runs, by class name (the last part of the module's
/// `type`, which moved between packages across versions).
pub const SUPPORTED_MODULES: &str =
    "Transformer, Pooling, Dense, Normalize, and for sparse models MLMTransformer, SpladePooling";

fn supported_module(class: &str) -> bool {
    matches!(class, "Transformer" | "Pooling" | "Dense" | "Normalize" | "MLMTransformer" | "SpladePooling")
}

/// What a model computes, which decides the routes that can use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A sentence-transformers embedder: pooled token vectors.
    #[default]
    Embedder,
    /// `*ForSequenceClassification` with one label: a relevance score per (query, passage) pair.
    CrossEncoder,
    /// `*ForSequenceClassification` with several labels: a distribution over `id2label`.
    Classifier,
    /// A sentence-transformers `SparseEncoder` (SPLADE): a masked-LM head's logits pooled into
    /// one weight per vocabulary entry, most of them zero.
    SparseEmbedder,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Embedder => "embedder",
            Kind::CrossEncoder => "cross-encoder",
            Kind::Classifier => "classifier",
            Kind::SparseEmbedder => "sparse-embedder",
        }
    }

    /// With an article, for messages ("route X needs a cross-encoder").
    pub fn described(self) -> &'static str {
        match self {
            Kind::Embedder => "an embedding model",
            Kind::CrossEncoder => "a cross-encoder (reranker)",
            Kind::Classifier => "a classifier",
            Kind::SparseEmbedder => "a sparse embedding model (SPLADE)",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How logits become scores, as sentence-transformers' `CrossEncoder.activation_fn` and
/// transformers' text-classification pipeline do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Sigmoid,
    Softmax,
    Tanh,
    Identity,
}

impl Activation {
    /// Scores for one row of logits.
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Activation::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Activation::Tanh => logits.iter().map(|&x| x.tanh()).collect(),
            Activation::Identity => logits.to_vec(),
            Activation::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                exp.into_iter().map(|e| e / sum).collect()
            }
        }
    }

    /// Reads a torch module path such as `torch.nn.modules.activation.Sigmoid`.
    fn from_torch(name: &str) -> Option<Self> {
        match name.rsplit('.').next().unwrap_or(name) {
            "Sigmoid" => Some(Activation::Sigmoid),
            "Softmax" => Some(Activation::Softmax),
            "Tanh" => Some(Activation::Tanh),
            "Identity" => Some(Activation::Identity),
            _ => None,
        }
    }
}

/// The classification head of a cross-encoder or classifier.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    /// `id2label` in id order; one entry for a cross-encoder.
    pub labels: Vec<String>,
    pub activation: Activation,
}

/// How token vectors become one sentence vector (sentence-transformers' `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Cls,
    Mean,
    Max,
    MeanSqrtLen,
    LastToken,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
            Pooling::LastToken => "lasttoken",
        }
    }
}

/// sentence-transformers' `SpladePooling`: each token's logits through `log1p(relu(x))` (twice
/// log1p for `log1p_relu`), then the max or the sum over the real tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Splade {
    pub strategy: SpladeStrategy,
    pub activation: SpladeActivation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpladeStrategy {
    Max,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpladeActivation {
    /// `log1p(relu(x))`, every SPLADE model's.
    Relu,
    /// `log1p(log1p(relu(x)))`, OpenSearch's neural-sparse models'.
    Log1pRelu,
}

impl Splade {
    pub fn as_str(self) -> &'static str {
        match (self.strategy, self.activation) {
            (SpladeStrategy::Max, SpladeActivation::Relu) => "splade max log1p(relu)",
            (SpladeStrategy::Sum, SpladeActivation::Relu) => "splade sum log1p(relu)",
            (SpladeStrategy::Max, SpladeActivation::Log1pRelu) => "splade max log1p(log1p(relu))",
            (SpladeStrategy::Sum, SpladeActivation::Log1pRelu) => "splade sum log1p(log1p(relu))",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// Tokens per text, special tokens included; longer texts are truncated (or refused).
    pub max_seq_length: usize,
    pub pooling: Pooling,
    pub dimension: usize,
    /// From config.json; needed to fuse attention blocks (see `graph`).
    pub num_attention_heads: Option<usize>,
    pub kind: Kind,
    /// `Some` for cross-encoders and classifiers.
    pub head: Option<Head>,
    /// Named texts put before an input (`query: `, `passage: `), from
    /// `config_sentence_transformers.json`: e5, bge and nomic models are trained with them.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The prompt sentence-transformers applies when none is named.
    pub default_prompt_name: Option<String>,
    /// Whether the prompt's tokens count in pooling (the pooling config's `include_prompt`).
    pub include_prompt: bool,
    /// sentence-transformers `Dense` modules after pooling, in order (weights read by `dense`).
    pub dense: Vec<DenseSpec>,
    /// Width of the transformer's token vectors (config.json's `hidden_size`).
    pub hidden_size: Option<usize>,
    /// config.json's `model_type` (`bert`, `qwen3`, `gemma3_text`, …), for `inspect` and logs.
    pub family: Option<String>,
    /// config.json's `architectures`.
    pub architectures: Vec<String>,
    /// The modules of `modules.json` by class name, in order (empty without one).
    pub modules: Vec<String>,
    /// Which end padding goes on: `tokenizer_config.json`'s `padding_side` (decoders pad left).
    pub padding_left: bool,
    /// `tokenizer_config.json`'s `pad_token`, when tokenizer.json itself sets no padding.
    pub pad_token: Option<String>,
    /// `Some` for a sparse model: how its `SpladePooling` pools the vocabulary logits.
    pub splade: Option<Splade>,
    /// A sparse model's own pruning (`max_active_dims` of `config_sentence_transformers.json`):
    /// only this many of the largest weights are kept.
    pub max_active_dims: Option<usize>,
}

/// One `Dense` module: `activation(x · Wᵀ + b)`, weights in `<path>/model.safetensors`.
#[derive(Debug, Clone, Serialize)]
pub struct DenseSpec {
    /// The module's directory inside the model (`2_Dense`).
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: DenseActivation,
}

/// What a Dense module applies after its linear map (`activation_function`, a torch path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenseActivation {
    Identity,
    Tanh,
    Relu,
    Sigmoid,
    Gelu,
}

impl DenseActivation {
    fn from_torch(name: &str) -> Option<Self> {
        match name.rsplit('.').next().unwrap_or(name) {
            "Identity" => Some(Self::Identity),
            "Tanh" => Some(Self::Tanh),
            "ReLU" => Some(Self::Relu),
            "Sigmoid" => Some(Self::Sigmoid),
            "GELU" => Some(Self::Gelu),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    /// sentence-transformers' default is Tanh.
    activation_function: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct SpladeConfig {
    #[serde(default = "splade_max")]
    pooling_strategy: String,
    #[serde(default = "splade_relu")]
    activation_function: String,
    #[serde(alias = "embedding_dimension")]
    word_embedding_dimension: Option<usize>,
}

fn splade_max() -> String {
    "max".into()
}

fn splade_relu() -> String {
    "relu".into()
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    /// sentence-transformers 6: `sequence-classification` for a CrossEncoder's Transformer module.
    transformer_task: Option<String>,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    include_prompt: Option<bool>,
}

#[derive(Deserialize)]
struct TransformerConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    vocab_size: Option<usize>,
    #[serde(default)]
    architectures: Vec<String>,
    /// Keys are ids as strings ("0", "1", …).
    id2label: Option<std::collections::BTreeMap<String, String>>,
    num_labels: Option<usize>,
    /// Where sentence-transformers before v4 kept a CrossEncoder's activation.
    sbert_ce_default_activation_function: Option<String>,
}

/// `config_sentence_transformers.json`; v4+ CrossEncoders say so here and name their activation.
#[derive(Deserialize, Default)]
struct SentenceTransformersConfig {
    model_type: Option<String>,
    activation_fn: Option<String>,
    #[serde(default)]
    prompts: std::collections::BTreeMap<String, String>,
    default_prompt_name: Option<String>,
    /// A `SparseEncoder`'s pruning: the largest this many weights are kept.
    max_active_dims: Option<usize>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
    padding_side: Option<String>,
    /// A string, or (older files) `{"content": …}`.
    pad_token: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
}

fn optional_json<T: for<'de> Deserialize<'de>>(
    repo: &ModelRepo,
    name: &str,
) -> Result<Option<(PathBuf, T)>, ConfigError> {
    match repo.optional_file(name)? {
        Some(path) => {
            let value = read_json(&path)?;
            Ok(Some((path, value)))
        }
        None => Ok(None),
    }
}

impl ModelConfig {
    /// Reads `modules.json`, the pooling module's config, `sentence_bert_config.json`,
    /// `config.json` and `tokenizer_config.json`, as sentence-transformers does.
    pub fn load(repo: &ModelRepo) -> Result<Self, ConfigError> {
        let modules_file = optional_json::<Vec<Module>>(repo, "modules.json")?;
        let class = |m: &Module| m.kind.rsplit('.').next().unwrap_or(&m.kind).to_string();
        if let Some((path, modules)) = &modules_file {
            // A module akidb skipped would silently change every vector: refuse the model instead.
            if let Some((index, m)) = modules.iter().enumerate().find(|(_, m)| !supported_module(&class(m))) {
                return Err(ConfigError::UnsupportedModule {
                    path: path.clone(),
                    index,
                    module: m.kind.clone(),
                    supported: SUPPORTED_MODULES,
                });
            }
        }
        let modules_path = modules_file.as_ref().map(|(p, _)| p.clone());
        let modules: Vec<Module> = modules_file.map(|(_, m)| m).unwrap_or_default();
        let splade = splade(repo, modules_path.as_deref(), &modules, class)?;
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| m.path.trim_end_matches('/').to_string())
            .unwrap_or_else(|| "1_Pooling".to_string());

        let pooling_file = format!("{pooling_dir}/config.json");
        let (pooling, pooled_dim, include_prompt) = match optional_json::<PoolingConfig>(repo, &pooling_file)? {
            Some((path, cfg)) => {
                (pooling_mode(&path, &cfg)?, cfg.word_embedding_dimension, cfg.include_prompt.unwrap_or(true))
            }
            // sentence-transformers wraps a plain transformer with mean pooling.
            None => (Pooling::Mean, None, true),
        };

        let transformer = optional_json::<TransformerConfig>(repo, "config.json")?.map(|(_, c)| c);
        let max_positions = transformer.as_ref().and_then(|c| c.max_position_embeddings);
        let sbert = optional_json::<SentenceBertConfig>(repo, "sentence_bert_config.json")?.map(|(_, c)| c);
        let st_max = sbert.as_ref().and_then(|c| c.max_seq_length);
        let tokenizer_config = optional_json::<TokenizerConfig>(repo, "tokenizer_config.json")?.map(|(_, c)| c);
        let max_seq_length = match st_max {
            Some(n) => n,
            None => {
                // sentence-transformers: min(max_position_embeddings, tokenizer.model_max_length).
                let tok_max = tokenizer_config
                    .as_ref()
                    .and_then(|c| c.model_max_length)
                    .filter(|n| *n > 0.0 && *n < 1e9)
                    .map(|n| n as usize);
                [max_positions, tok_max].into_iter().flatten().min().unwrap_or(512)
            }
        };
        let padding_left = tokenizer_config.as_ref().and_then(|c| c.padding_side.as_deref()) == Some("left");
        let pad_token = tokenizer_config.and_then(|c| c.pad_token).and_then(|t| match t {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
            _ => None,
        });
        // Position embeddings are a hard limit of the network itself.
        let max_seq_length = max_positions.map_or(max_seq_length, |p| max_seq_length.min(p)).max(2);

        let num_attention_heads = transformer.as_ref().and_then(|c| c.num_attention_heads);
        let mut st = optional_json::<SentenceTransformersConfig>(repo, "config_sentence_transformers.json")?;
        let prompts = st.as_mut().map(|(_, c)| std::mem::take(&mut c.prompts)).unwrap_or_default();
        let default_prompt_name = st.as_ref().and_then(|(_, c)| c.default_prompt_name.clone());
        if let (Some(name), Some((path, _))) = (&default_prompt_name, &st) {
            // sentence-transformers refuses such a model too.
            if !prompts.contains_key(name) {
                return Err(ConfigError::UnknownDefaultPrompt { path: path.clone(), name: name.clone() });
            }
        }
        let max_active_dims = st.as_ref().and_then(|(_, c)| c.max_active_dims);
        let head = head(transformer.as_ref(), sbert.as_ref(), st)?;
        let kind = match &head {
            None if splade.is_some() => Kind::SparseEmbedder,
            None => Kind::Embedder,
            Some(h) if h.labels.len() == 1 => Kind::CrossEncoder,
            Some(_) => Kind::Classifier,
        };
        let hidden_size = transformer.as_ref().and_then(|c| c.hidden_size).or(pooled_dim);
        // A sparse vector has one weight per vocabulary entry.
        let pooled = match &splade {
            Some((_, width)) => width.or(transformer.as_ref().and_then(|c| c.vocab_size)),
            None => hidden_size,
        }
        .ok_or(ConfigError::UnknownDimension)?;
        let splade = splade.map(|(s, _)| s);
        let mut dense = Vec::new();
        for m in modules.iter().filter(|m| class(m) == "Dense") {
            dense.push(dense_spec(
                repo,
                m.path.trim_end_matches('/'),
                dense.last().map_or(pooled, |d: &DenseSpec| d.out_features),
            )?);
        }
        // The vectors are as wide as the last Dense layer makes them.
        let dimension = dense.last().map_or(pooled, |d| d.out_features);
        let (family, architectures) = match transformer {
            Some(c) => (c.model_type, c.architectures),
            None => (None, Vec::new()),
        };
        Ok(Self {
            max_seq_length,
            pooling,
            dimension,
            num_attention_heads,
            kind,
            head,
            prompts,
            default_prompt_name,
            include_prompt,
            dense,
            hidden_size,
            family,
            architectures,
            modules: modules.iter().map(class).collect(),
            padding_left,
            pad_token,
            splade,
            max_active_dims,
        })
    }

    /// Width of one output row: the vector's dimension, or the number of labels.
    pub fn output_width(&self) -> usize {
        self.head.as_ref().map_or(self.dimension, |h| h.labels.len())
    }
}

/// The classification head, when the model has one: `*ForSequenceClassification` in config.json,
/// a sentence-transformers `CrossEncoder`, or a sentence-transformers 6 Transformer module whose
/// task is sequence classification. The activation is the model's own (`activation_fn`, or the
/// pre-v4 `sbert_ce_default_activation_function`), else sigmoid for one label, softmax for more.
fn head(
    transformer: Option<&TransformerConfig>,
    sbert: Option<&SentenceBertConfig>,
    st: Option<(PathBuf, SentenceTransformersConfig)>,
) -> Result<Option<Head>, ConfigError> {
    let by_architecture =
        transformer.is_some_and(|c| c.architectures.iter().any(|a| a.ends_with("ForSequenceClassification")));
    let by_st = st.as_ref().is_some_and(|(_, c)| c.model_type.as_deref() == Some("CrossEncoder"));
    let by_task = sbert.and_then(|c| c.transformer_task.as_deref()) == Some("sequence-classification");
    if !(by_architecture || by_st || by_task) {
        return Ok(None);
    }
    let labels = match transformer.and_then(|c| c.id2label.as_ref()) {
        Some(map) => {
            let mut ids: Vec<(usize, &String)> =
                map.iter().map(|(id, label)| (id.parse().unwrap_or(usize::MAX), label)).collect();
            ids.sort();
            ids.into_iter().map(|(_, label)| label.clone()).collect()
        }
        // transformers' default is two labels.
        None => {
            let n = transformer.and_then(|c| c.num_labels).unwrap_or(2).max(1);
            (0..n).map(|i| format!("LABEL_{i}")).collect::<Vec<_>>()
        }
    };
    let named = match &st {
        Some((path, c)) if c.activation_fn.is_some() => {
            Some((path.clone(), c.activation_fn.clone().unwrap_or_default()))
        }
        _ => transformer
            .and_then(|c| c.sbert_ce_default_activation_function.clone())
            .map(|name| (PathBuf::from("config.json"), name)),
    };
    let activation = match named {
        Some((path, name)) => Activation::from_torch(&name).ok_or(ConfigError::UnsupportedActivation { path, name })?,
        None if labels.len() == 1 => Activation::Sigmoid,
        None => Activation::Softmax,
    };
    Ok(Some(Head { labels, activation }))
}

/// A sparse model's `SpladePooling` (with the width its config names, if any); `None` for a model
/// without one. Its MLM logits are only meaningful through that pooling, so the two come together.
fn splade(
    repo: &ModelRepo,
    modules_path: Option<&Path>,
    modules: &[Module],
    class: impl Fn(&Module) -> String,
) -> Result<Option<(Splade, Option<usize>)>, ConfigError> {
    let pooling = modules.iter().find(|m| class(m) == "SpladePooling");
    let mlm = modules.iter().any(|m| class(m) == "MLMTransformer");
    let path = || modules_path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("modules.json"));
    let module = match (pooling, mlm) {
        (None, false) => return Ok(None),
        (Some(m), true) => m,
        _ => return Err(ConfigError::IncompleteSparse { path: path() }),
    };
    let file = format!("{}/config.json", module.path.trim_end_matches('/'));
    let (path, cfg) = match optional_json::<SpladeConfig>(repo, &file)? {
        Some(found) => found,
        // sentence-transformers' defaults.
        None => (
            PathBuf::from(file),
            SpladeConfig {
                pooling_strategy: splade_max(),
                activation_function: splade_relu(),
                word_embedding_dimension: None,
            },
        ),
    };
    let strategy = match cfg.pooling_strategy.as_str() {
        "max" => SpladeStrategy::Max,
        "sum" => SpladeStrategy::Sum,
        other => {
            return Err(ConfigError::UnsupportedSplade {
                path,
                key: "pooling_strategy",
                value: other.into(),
                supported: "max and sum",
            })
        }
    };
    let activation = match cfg.activation_function.as_str() {
        "relu" => SpladeActivation::Relu,
        "log1p_relu" => SpladeActivation::Log1pRelu,
        other => {
            return Err(ConfigError::UnsupportedSplade {
                path,
                key: "activation_function",
                value: other.into(),
                supported: "relu and log1p_relu",
            })
        }
    };
    Ok(Some((Splade { strategy, activation }, cfg.word_embedding_dimension)))
}

/// Reads one Dense module's config; its input must be what the step before it gives.
fn dense_spec(repo: &ModelRepo, dir: &str, previous: usize) -> Result<DenseSpec, ConfigError> {
    let file = format!("{dir}/config.json");
    let path = repo.file(&file)?;
    let cfg: DenseConfig = read_json(&path)?;
    if cfg.in_features != previous {
        return Err(ConfigError::DenseChain { path, in_features: cfg.in_features, previous });
    }
    let name = cfg.activation_function.unwrap_or_else(|| "torch.nn.modules.activation.Tanh".to_string());
    let activation =
        DenseActivation::from_torch(&name).ok_or_else(|| ConfigError::UnsupportedDenseActivation { path, name })?;
    Ok(DenseSpec {
        path: dir.to_string(),
        in_features: cfg.in_features,
        out_features: cfg.out_features,
        bias: cfg.bias,
        activation,
    })
}

fn pooling_mode(path: &Path, cfg: &PoolingConfig) -> Result<Pooling, ConfigError> {
    let modes = [
        (cfg.pooling_mode_cls_token, Some(Pooling::Cls), "cls"),
        (cfg.pooling_mode_mean_tokens, Some(Pooling::Mean), "mean"),
        (cfg.pooling_mode_max_tokens, Some(Pooling::Max), "max"),
        (cfg.pooling_mode_mean_sqrt_len_tokens, Some(Pooling::MeanSqrtLen), "mean_sqrt_len"),
        (cfg.pooling_mode_lasttoken, Some(Pooling::LastToken), "lasttoken"),
        (cfg.pooling_mode_weightedmean_tokens, None, "weightedmean"),
    ];
    let on: Vec<_> = modes.iter().filter(|(set, _, _)| *set).collect();
    match on.as_slice() {
        [(_, Some(mode), _)] => Ok(*mode),
        [] => Err(ConfigError::UnsupportedPooling { path: path.to_path_buf(), detail: "no mode is set".into() }),
        _ => Err(ConfigError::UnsupportedPooling {
            path: path.to_path_buf(),
            detail: on.iter().map(|(_, _, n)| *n).collect::<Vec<_>>().join(" + "),
        }),
    }
}
