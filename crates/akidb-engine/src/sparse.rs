//! Sparse vectors from a SPLADE model: the masked-LM head's logits `[batch, tokens, vocabulary]`
//! pooled into one weight per vocabulary entry (sentence-transformers' `SpladePooling`), then
//! kept as the non-zero entries only. The logits of a batch are the biggest tensor akidb reads
//! (tokens × vocabulary floats), so a sparse model's batches are capped by [`LOGITS_BYTES`] and
//! each batch is pooled and pruned before the next one runs.

use ndarray::{ArrayView2, ArrayView3};
use serde::{Deserialize, Serialize};

use crate::model_config::{Splade, SpladeActivation, SpladeStrategy};

/// The most bytes of logits one inference call may produce: 256 MiB is 2,198 tokens of a
/// 30,522-entry BERT vocabulary per call, enough for full batches of short texts.
pub const LOGITS_BYTES: usize = 256 << 20;

/// The token budget of one call for a vocabulary of `vocabulary` entries, within `max_tokens`.
pub fn max_tokens(max_tokens: usize, vocabulary: usize) -> usize {
    max_tokens.min(LOGITS_BYTES / (4 * vocabulary.max(1))).max(1)
}

/// One text's non-zero weights, by vocabulary index (ascending).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    /// The positive entries of a pooled row, and with `top_k` only the `top_k` largest of them
    /// (sentence-transformers' `max_active_dims`; ties broken towards the lower index).
    pub fn from_dense(row: &[f32], top_k: Option<usize>) -> Self {
        let mut entries: Vec<(u32, f32)> =
            row.iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(i, &v)| (i as u32, v)).collect();
        if let Some(k) = top_k.filter(|&k| k < entries.len()) {
            let larger = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            if k == 0 {
                entries.clear();
            } else {
                entries.select_nth_unstable_by(k - 1, larger);
                entries.truncate(k);
                entries.sort_unstable_by_key(|e| e.0);
            }
        }
        let (indices, values) = entries.into_iter().unzip();
        Self { indices, values }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// `(index, value)` pairs in index order.
    pub fn entries(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.indices.iter().copied().zip(self.values.iter().copied())
    }
}

/// One pooled row (vocabulary-wide, zeros included) per member of the batch; `mask` marks real
/// tokens. Padding contributes nothing, as sentence-transformers multiplies it out.
pub fn pool(logits: ArrayView3<'_, f32>, mask: ArrayView2<'_, i64>, splade: Splade) -> Vec<Vec<f32>> {
    let vocabulary = logits.shape()[2];
    let activate = |x: f32| match splade.activation {
        SpladeActivation::Relu => x.max(0.0).ln_1p(),
        SpladeActivation::Log1pRelu => x.max(0.0).ln_1p().ln_1p(),
    };
    logits
        .outer_iter()
        .zip(mask.outer_iter())
        .map(|(tokens, mask)| {
            let mut out = vec![0f32; vocabulary];
            let real = tokens.outer_iter().zip(mask.iter()).filter(|(_, &m)| m != 0).map(|(t, _)| t);
            match splade.strategy {
                // log1p∘relu is monotonic, so the max of the raw logits (floored at 0, which
                // padding and relu both give) goes through it once per entry, not once per token.
                SpladeStrategy::Max => {
                    for token in real {
                        for (o, &x) in out.iter_mut().zip(token.iter()) {
                            *o = o.max(x);
                        }
                    }
                    out.iter_mut().for_each(|o| *o = activate(*o));
                }
                SpladeStrategy::Sum => {
                    for token in real {
                        for (o, &x) in out.iter_mut().zip(token.iter()) {
                            if x > 0.0 {
                                *o += activate(x);
                            }
                        }
                    }
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    #[test]
    fn pooling_matches_its_definition_and_ignores_padding() {
        // Two rows of two tokens over a vocabulary of three; row 1's second token is padding.
        let logits =
            Array3::from_shape_vec((2, 2, 3), vec![1.0, -2.0, 0.5, 3.0, -1.0, 0.0, 2.0, 0.0, -1.0, 9.0, 9.0, 9.0])
                .unwrap();
        let mask = array![[1i64, 1], [1, 0]];
        let f = |x: f64| (x.max(0.0)).ln_1p() as f32;
        let max = pool(
            logits.view(),
            mask.view(),
            Splade { strategy: SpladeStrategy::Max, activation: SpladeActivation::Relu },
        );
        assert_eq!(max, vec![vec![f(3.0), 0.0, f(0.5)], vec![f(2.0), 0.0, 0.0]]);
        let sum = pool(
            logits.view(),
            mask.view(),
            Splade { strategy: SpladeStrategy::Sum, activation: SpladeActivation::Relu },
        );
        assert_eq!(sum[0], vec![f(1.0) + f(3.0), 0.0, f(0.5)]);
        let twice = pool(
            logits.view(),
            mask.view(),
            Splade { strategy: SpladeStrategy::Max, activation: SpladeActivation::Log1pRelu },
        );
        assert_eq!(twice[1][0], f(2.0).ln_1p());
    }

    #[test]
    fn sparse_vectors_keep_positive_entries_and_the_top_k() {
        let row = [0.0, 0.5, 0.0, 2.0, 1.0, 1.0];
        let all = SparseVector::from_dense(&row, None);
        assert_eq!((all.indices.as_slice(), all.values.as_slice()), (&[1, 3, 4, 5][..], &[0.5, 2.0, 1.0, 1.0][..]));
        let top = SparseVector::from_dense(&row, Some(2));
        assert_eq!(top.entries().collect::<Vec<_>>(), vec![(3, 2.0), (4, 1.0)], "ties go to the lower index");
        assert!(SparseVector::from_dense(&row, Some(0)).is_empty());
        assert_eq!(SparseVector::from_dense(&row, Some(10)), all);
        assert_eq!(max_tokens(8192, 30522), 2198);
    }
}
