//! What a sentence-transformers model says about itself: pooling, maximum sequence length,
//! dimension. Read from its own files so any BERT-style export works without code changes.

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
    #[error("cannot tell the embedding dimension: no hidden_size in config.json and no word_embedding_dimension in the pooling config")]
    UnknownDimension,
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

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// Tokens per text, special tokens included; longer texts are truncated (or refused).
    pub max_seq_length: usize,
    pub pooling: Pooling,
    pub dimension: usize,
    /// From config.json; needed to fuse attention blocks (see `graph`).
    pub num_attention_heads: Option<usize>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
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
}

#[derive(Deserialize)]
struct TransformerConfig {
    hidden_size: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
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
        let modules: Vec<Module> = optional_json(repo, "modules.json")?.map(|(_, m)| m).unwrap_or_default();
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| m.path.trim_end_matches('/').to_string())
            .unwrap_or_else(|| "1_Pooling".to_string());

        let pooling_file = format!("{pooling_dir}/config.json");
        let (pooling, pooled_dim) = match optional_json::<PoolingConfig>(repo, &pooling_file)? {
            Some((path, cfg)) => (pooling_mode(&path, &cfg)?, cfg.word_embedding_dimension),
            // sentence-transformers wraps a plain transformer with mean pooling.
            None => (Pooling::Mean, None),
        };

        let transformer = optional_json::<TransformerConfig>(repo, "config.json")?.map(|(_, c)| c);
        let max_positions = transformer.as_ref().and_then(|c| c.max_position_embeddings);
        let st_max =
            optional_json::<SentenceBertConfig>(repo, "sentence_bert_config.json")?.and_then(|(_, c)| c.max_seq_length);
        let max_seq_length = match st_max {
            Some(n) => n,
            None => {
                // sentence-transformers: min(max_position_embeddings, tokenizer.model_max_length).
                let tok_max = optional_json::<TokenizerConfig>(repo, "tokenizer_config.json")?
                    .and_then(|(_, c)| c.model_max_length)
                    .filter(|n| *n > 0.0 && *n < 1e9)
                    .map(|n| n as usize);
                [max_positions, tok_max].into_iter().flatten().min().unwrap_or(512)
            }
        };
        // Position embeddings are a hard limit of the network itself.
        let max_seq_length = max_positions.map_or(max_seq_length, |p| max_seq_length.min(p)).max(2);

        let num_attention_heads = transformer.as_ref().and_then(|c| c.num_attention_heads);
        let dimension = transformer.and_then(|c| c.hidden_size).or(pooled_dim).ok_or(ConfigError::UnknownDimension)?;
        Ok(Self { max_seq_length, pooling, dimension, num_attention_heads })
    }
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
