//! Padding out of the encoder's way: `Unpad` at its entrance keeps only the real tokens of a
//! batch, `Repad` at its exit puts them back, so every matrix product, LayerNorm and GELU between
//! them works on real tokens only (attention then takes each row's extent from the mask). Plain
//! safe copies: no vectors, no `unsafe`.

/// Drops the padding rows of a batch: [batch, seq, hidden] → [tokens, hidden], the real tokens
/// of row 0, then row 1, …; [`Unpad::undo`] (the `Repad` operator) undoes it.
pub(crate) struct Unpad;

impl Unpad {
    /// Where each row's tokens start among the unpadded ones, and (last) how many there are.
    pub(crate) fn starts(mask: &[i32], batch: usize, seq: usize) -> Option<Vec<usize>> {
        if mask.len() != batch * seq {
            return None;
        }
        // One entry per row even when rows are empty (seq = 0), so `starts[b + 1]` always exists.
        let mut starts = Vec::with_capacity(batch + 1);
        starts.push(0);
        for b in 0..batch {
            let n = mask[b * seq..(b + 1) * seq].iter().filter(|&&m| m != 0).count();
            starts.push(starts[b] + n);
        }
        Some(starts)
    }

    /// Copies the real rows of `x` [batch · seq, hidden] into `out` [tokens, hidden].
    pub(crate) fn run(x: &[f32], mask: &[i32], hidden: usize, out: &mut [f32]) {
        let rows = x.chunks_exact(hidden).zip(mask).filter(|(_, &m)| m != 0).map(|(r, _)| r);
        for (dst, src) in out.chunks_exact_mut(hidden).zip(rows) {
            dst.copy_from_slice(src);
        }
    }

    /// Puts the rows of `u` [tokens, hidden] back where `mask` has real tokens; padding gets 0.
    pub(crate) fn undo(u: &[f32], mask: &[i32], hidden: usize, out: &mut [f32]) {
        let mut real = u.chunks_exact(hidden);
        for (dst, &m) in out.chunks_exact_mut(hidden).zip(mask) {
            match (m != 0).then(|| real.next()).flatten() {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0.0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_without_tokens_still_get_their_start() {
        assert_eq!(Unpad::starts(&[], 3, 0), Some(vec![0, 0, 0, 0]));
        assert_eq!(Unpad::starts(&[1, 0, 0, 0, 1, 1], 3, 2), Some(vec![0, 1, 1, 3]));
        assert_eq!(Unpad::starts(&[1, 1], 3, 1), None);
    }

    #[test]
    fn repad_undoes_unpad_and_zeroes_the_padding() {
        let (mask, hidden) = ([1, 0, 1, 1, 0, 0], 2);
        let x: Vec<f32> = (1..=12).map(|i| i as f32).collect();
        let mut u = vec![f32::NAN; 3 * hidden];
        Unpad::run(&x, &mask, hidden, &mut u);
        assert_eq!(u, [1.0, 2.0, 5.0, 6.0, 7.0, 8.0]);
        let mut back = vec![f32::NAN; x.len()];
        Unpad::undo(&u, &mask, hidden, &mut back);
        assert_eq!(back, [1.0, 2.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
