//! Token vectors to one sentence vector, as sentence-transformers' Pooling and Normalize modules do.
//! Works on the session's output view directly: no copy of the hidden states.

use ndarray::{ArrayView2, ArrayView3};

use crate::model_config::Pooling;

/// One vector per row of `hidden`; `mask` marks real tokens (1) and padding (0).
pub fn pool(hidden: ArrayView3<'_, f32>, mask: ArrayView2<'_, i64>, pooling: Pooling) -> Vec<Vec<f32>> {
    let dim = hidden.shape()[2];
    hidden
        .outer_iter()
        .zip(mask.outer_iter())
        .map(|(tokens, mask)| {
            // Real tokens may follow padding (left-padded decoders) or precede it.
            let first = mask.iter().position(|&m| m != 0).unwrap_or(0);
            let last = mask.iter().rposition(|&m| m != 0).unwrap_or(0);
            match pooling {
                Pooling::Cls => tokens.row(first).to_vec(),
                // The last real token, whichever side the padding is on (sentence-transformers too).
                Pooling::LastToken => tokens.row(last).to_vec(),
                Pooling::Mean | Pooling::MeanSqrtLen => {
                    let mut out = vec![0f32; dim];
                    let mut count = 0f32;
                    for (row, &m) in tokens.outer_iter().zip(mask.iter()) {
                        if m != 0 {
                            count += 1.0;
                            for (o, &v) in out.iter_mut().zip(row.iter()) {
                                *o += v;
                            }
                        }
                    }
                    // sentence-transformers clamps the count at 1e-9.
                    let denom = if pooling == Pooling::Mean { count.max(1e-9) } else { count.max(1e-9).sqrt() };
                    out.iter_mut().for_each(|o| *o /= denom);
                    out
                }
                Pooling::Max => {
                    let mut out = vec![f32::NEG_INFINITY; dim];
                    for (row, &m) in tokens.outer_iter().zip(mask.iter()) {
                        if m != 0 {
                            for (o, &v) in out.iter_mut().zip(row.iter()) {
                                *o = o.max(v);
                            }
                        }
                    }
                    out
                }
            }
        })
        .collect()
}

/// Scales to unit length; a zero vector stays zero (as torch's normalize with eps does).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use ndarray::{array, Array3};

    use super::*;

    fn hidden() -> Array3<f32> {
        // two texts, three token slots, two dims; the second text has one padding slot
        array![[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]], [[-1.0, 1.0], [3.0, -3.0], [100.0, 100.0]]]
    }

    #[test]
    fn mean_ignores_padding() {
        let mask = array![[1i64, 1, 1], [1, 1, 0]];
        let out = pool(hidden().view(), mask.view(), Pooling::Mean);
        assert_eq!(out, vec![vec![3.0, 2.0], vec![1.0, -1.0]]);
    }

    #[test]
    fn cls_takes_first_token_and_last_token_the_last_real_one() {
        let mask = array![[1i64, 1, 1], [1, 1, 0]];
        assert_eq!(pool(hidden().view(), mask.view(), Pooling::Cls), vec![vec![1.0, 2.0], vec![-1.0, 1.0]]);
        assert_eq!(pool(hidden().view(), mask.view(), Pooling::LastToken), vec![vec![5.0, 0.0], vec![3.0, -3.0]]);
    }

    #[test]
    fn last_token_and_cls_find_the_real_tokens_behind_left_padding() {
        let mask = array![[1i64, 1, 1], [0, 1, 1]];
        assert_eq!(pool(hidden().view(), mask.view(), Pooling::LastToken), vec![vec![5.0, 0.0], vec![100.0, 100.0]]);
        assert_eq!(pool(hidden().view(), mask.view(), Pooling::Cls), vec![vec![1.0, 2.0], vec![3.0, -3.0]]);
        assert_eq!(pool(hidden().view(), mask.view(), Pooling::Mean)[1], vec![51.5, 48.5]);
    }

    #[test]
    fn max_and_mean_sqrt_len() {
        let mask = array![[1i64, 1, 1], [1, 1, 0]];
        assert_eq!(pool(hidden().view(), mask.view(), Pooling::Max), vec![vec![5.0, 4.0], vec![3.0, 1.0]]);
        let out = pool(hidden().view(), mask.view(), Pooling::MeanSqrtLen);
        assert!((out[1][0] - 2.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }
}
