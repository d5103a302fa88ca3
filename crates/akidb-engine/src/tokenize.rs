//! Text to token ids with the model's `tokenizer.json`, truncated at the model's own
//! `max_seq_length` and padded per batch, never to the fixed length a tokenizer file may carry.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tokenizers::{EncodeInput, TruncationDirection, TruncationParams, TruncationStrategy};

/// Up to this many texts are tokenized on the calling thread (see [`Tokenizer::encode`]); more
/// go to the tokenizers crate's rayon pool. The server keeps exactly these requests inline.
pub const SEQUENTIAL_UP_TO: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("could not load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
}

/// What one model row is made of: a text, or a (query, passage) pair for a cross-encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Single(String),
    /// Encoded as one sequence, token type 0 for the first text and 1 for the second.
    Pair(String, String),
}

impl Input {
    /// A lower bound of its tokens: every word is at least one.
    pub fn words(&self) -> usize {
        match self {
            Input::Single(a) => a.split_whitespace().count(),
            Input::Pair(a, b) => a.split_whitespace().count() + b.split_whitespace().count(),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Input::Single(a) => a.len(),
            Input::Pair(a, b) => a.len() + b.len(),
        }
    }

    fn encode_input(&self) -> EncodeInput<'_> {
        match self {
            Input::Single(a) => a.as_str().into(),
            Input::Pair(a, b) => (a.as_str(), b.as_str()).into(),
        }
    }
}

impl From<String> for Input {
    fn from(text: String) -> Self {
        Input::Single(text)
    }
}

/// Which end of an over-long input is cut: TEI's `truncation_direction` (`"Left"`, `"Right"`,
/// lowercase too) and `akidb embed --truncation-direction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = TruncationDirection))]
pub enum Side {
    /// Cut the end: keep the first tokens, as sentence-transformers does.
    #[default]
    #[serde(alias = "right")]
    Right,
    /// Cut the start: keep the last tokens.
    #[serde(alias = "left")]
    Left,
}

/// One token as `/tokenize` shows it; `start`/`stop` are character offsets into its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// One text's tokens, special tokens included, unpadded.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text was longer than the model's maximum and was cut.
    pub truncated: bool,
    /// Leading tokens left out of pooling: a prompt the model pools without (`include_prompt: false`).
    pub pool_from: usize,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Model inputs for a batch, padded to its longest member.
pub struct Batch {
    pub input_ids: Array2<i64>,
    pub attention_mask: Array2<i64>,
    pub token_type_ids: Array2<i64>,
    /// The tokens pooling counts, where it differs from `attention_mask` (see [`Tokens::pool_from`]).
    pub pool_mask: Option<Array2<i64>>,
}

/// Cloned where a session may have to be rebuilt later (its fused graph is checked on a probe batch).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same without truncation, made on first use: `/tokenize` shows every token.
    untruncated: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// The same cutting the start of long inputs, made on first use.
    left: std::sync::OnceLock<tokenizers::Tokenizer>,
    pad_id: i64,
    /// Padding goes before the tokens (decoders such as Qwen3 are exported and pooled that way).
    pad_left: bool,
}

impl Tokenizer {
    pub fn from_file(path: &Path, max_seq_length: usize) -> Result<Self, TokenizeError> {
        let load_err = |message: String| TokenizeError::Load { path: path.display().to_string(), message };
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        let pad_id = inner.get_padding().map_or(0, |p| i64::from(p.pad_id));
        let pad_left = inner.get_padding().is_some_and(|p| matches!(p.direction, tokenizers::PaddingDirection::Left));
        // Padding is ours (per batch); truncation is the model's, whatever the file says.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| load_err(e.to_string()))?;
        Ok(Self { inner, untruncated: std::sync::OnceLock::new(), left: std::sync::OnceLock::new(), pad_id, pad_left })
    }

    /// Pads as the model's `tokenizer_config.json` says, where tokenizer.json says nothing: on
    /// the left for `padding_side: left`, with its `pad_token` (XLM-R's position ids count from
    /// the pad id, so padding with another id moves them).
    pub fn pad_as(mut self, left: bool, pad_token: Option<&str>) -> Self {
        if self.inner.get_padding().is_none() {
            self.pad_left = left;
            if let Some(id) = pad_token.and_then(|t| self.inner.token_to_id(t)) {
                self.pad_id = i64::from(id);
            }
        } else {
            self.pad_left |= left;
        }
        self
    }

    /// Whether padding goes before the tokens.
    pub fn pads_left(&self) -> bool {
        self.pad_left
    }

    /// Tokenizes without computing offsets: a few texts on the calling thread, more in parallel on the
    /// tokenizers crate's rayon pool. A query must not queue in that pool behind a bulk request's texts.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Tokens>, TokenizeError> {
        self.encode_texts(texts, Side::Right)
    }

    /// [`Tokenizer::encode`], cutting long texts at `side`.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S], side: Side) -> Result<Vec<Tokens>, TokenizeError> {
        self.encode_all(texts.iter().map(|t| EncodeInput::from(t.as_ref())).collect(), side)
    }

    /// Like [`Tokenizer::encode`] for texts and (query, passage) pairs; pairs are truncated
    /// longest-first to the model's maximum, as sentence-transformers' CrossEncoder does.
    pub fn encode_inputs(&self, inputs: &[Input], side: Side) -> Result<Vec<Tokens>, TokenizeError> {
        self.encode_all(inputs.iter().map(Input::encode_input).collect(), side)
    }

    fn encode_all(&self, inputs: Vec<EncodeInput<'_>>, side: Side) -> Result<Vec<Tokens>, TokenizeError> {
        let tokenizer = match side {
            Side::Right => &self.inner,
            Side::Left => self.left.get_or_init(|| {
                let mut t = self.inner.clone();
                if let Some(mut params) = t.get_truncation().cloned() {
                    params.direction = TruncationDirection::Left;
                    // The parameters were valid with the other direction, so they are with this one.
                    let _ = t.with_truncation(Some(params));
                }
                t
            }),
        };
        let encodings = if inputs.len() <= SEQUENTIAL_UP_TO {
            inputs.into_iter().map(|i| tokenizer.encode_fast(i, true)).collect::<Result<Vec<_>, _>>()
        } else {
            tokenizer.encode_batch_fast(inputs, true)
        }
        .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Tokens {
                truncated: !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                pool_from: 0,
            })
            .collect())
    }

    /// How many leading tokens a prompt takes, counted as sentence-transformers does: the prompt
    /// alone with special tokens, less the closing one.
    pub fn prompt_length(&self, prompt: &str) -> Result<usize, TokenizeError> {
        let encoding = self.inner.encode_fast(prompt, true).map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().len().saturating_sub(1))
    }

    /// Every token of `text`, untruncated, with its character span (`None` for special tokens).
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>, TokenizeError> {
        let untruncated = self.untruncated.get_or_init(|| {
            let mut t = self.inner.clone();
            // Switching truncation off cannot fail (only invalid parameters can).
            let _ = t.with_truncation(None);
            t
        });
        let encoding = untruncated
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let chars: Vec<char> = text.chars().collect();
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .zip(encoding.get_special_tokens_mask())
            .zip(encoding.get_tokens())
            .map(|(((&id, &(start, stop)), &special), token)| {
                if special == 1 {
                    Token { id, text: token.clone(), special: true, start: None, stop: None }
                } else {
                    let (start, stop) = (start.min(chars.len()), stop.min(chars.len()));
                    let text = chars[start..stop.max(start)].iter().collect();
                    Token { id, text, special: false, start: Some(start), stop: Some(stop) }
                }
            })
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| TokenizeError::Encode(e.to_string()))
    }

    /// Pads to the longest member: attention never sees padding, and short batches stay short.
    pub fn batch(&self, items: &[&Tokens]) -> Batch {
        let width = items.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let rows = items.len();
        let mut input_ids = Array2::from_elem((rows, width), self.pad_id);
        let mut attention_mask = Array2::zeros((rows, width));
        let mut token_type_ids = Array2::zeros((rows, width));
        // Where each row's tokens start: 0, or after the padding when it goes first.
        let start = |t: &Tokens| if self.pad_left { width - t.len() } else { 0 };
        for (row, tokens) in items.iter().enumerate() {
            let from = start(tokens);
            for (col, (&id, &ty)) in tokens.ids.iter().zip(&tokens.type_ids).enumerate() {
                input_ids[[row, from + col]] = i64::from(id);
                attention_mask[[row, from + col]] = 1;
                token_type_ids[[row, from + col]] = i64::from(ty);
            }
        }
        let pool_mask = items.iter().any(|t| t.pool_from > 0).then(|| {
            let mut mask = attention_mask.clone();
            for (row, tokens) in items.iter().enumerate() {
                mask.row_mut(row).iter_mut().skip(start(tokens)).take(tokens.pool_from).for_each(|m| *m = 0);
            }
            mask
        });
        Batch { input_ids, attention_mask, token_type_ids, pool_mask }
    }
}
