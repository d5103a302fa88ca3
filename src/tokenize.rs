//! Text to token ids with the model's `tokenizer.json`, truncated at the model's own
//! `max_seq_length` and padded per batch, never to the fixed length a tokenizer file may carry.

use std::path::Path;

use ndarray::Array2;
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

/// Up to this many texts are tokenized on the calling thread (see [`Tokenizer::encode`]).
const SEQUENTIAL_UP_TO: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("could not load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
}

/// One text's tokens, special tokens included, unpadded.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text was longer than the model's maximum and was cut.
    pub truncated: bool,
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
}

/// Cloned where a session may have to be rebuilt later (its fused graph is checked on a probe batch).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: i64,
}

impl Tokenizer {
    pub fn from_file(path: &Path, max_seq_length: usize) -> Result<Self, TokenizeError> {
        let load_err = |message: String| TokenizeError::Load { path: path.display().to_string(), message };
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        let pad_id = inner.get_padding().map_or(0, |p| i64::from(p.pad_id));
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
        Ok(Self { inner, pad_id })
    }

    /// Tokenizes without computing offsets: a few texts on the calling thread, more in parallel on the
    /// tokenizers crate's rayon pool. A query must not queue in that pool behind a bulk request's texts.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Tokens>, TokenizeError> {
        let encodings = if texts.len() <= SEQUENTIAL_UP_TO {
            texts.iter().map(|t| self.inner.encode_fast(t.as_ref(), true)).collect::<Result<Vec<_>, _>>()
        } else {
            self.inner.encode_batch_fast(texts.iter().map(AsRef::as_ref).collect::<Vec<&str>>(), true)
        }
        .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Tokens {
                truncated: !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// Pads to the longest member: attention never sees padding, and short batches stay short.
    pub fn batch(&self, items: &[&Tokens]) -> Batch {
        let width = items.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let rows = items.len();
        let mut input_ids = Array2::from_elem((rows, width), self.pad_id);
        let mut attention_mask = Array2::zeros((rows, width));
        let mut token_type_ids = Array2::zeros((rows, width));
        for (row, tokens) in items.iter().enumerate() {
            for (col, (&id, &ty)) in tokens.ids.iter().zip(&tokens.type_ids).enumerate() {
                input_ids[[row, col]] = i64::from(id);
                attention_mask[[row, col]] = 1;
                token_type_ids[[row, col]] = i64::from(ty);
            }
        }
        Batch { input_ids, attention_mask, token_type_ids }
    }
}
