//! The attention core, one (row, head) at a time with its working set in cache. ONNX Runtime's
//! `Attention`/`MultiHeadAttention` run the scores and the weighted sum through a general GEMM per
//! head (K = head size, 32 on MiniLM: thin for a GEMM), score every padded key, and pass the
//! whole score tensor through memory between steps; here the keys are transposed once, the
//! scores of eight queries against 16–32 keys are held in registers, softmax and the weighted sum
//! happen in place, and work stops at the row's last real token. The Q/K/V bias is added as the
//! values are read, so the projection before it is a plain `MatMul`.
//!
//! [`item`] (padded rows) and [`item_unpadded`] (rows after `Unpad`) are the entry points the
//! operator calls once per parallel item; both check the shape's invariants in debug builds.

use crate::simd::{exp, Isa, Kernel, Out, V16, W};

/// The shape of one call: `qkv` is [batch, seq, 3 × heads × head_size] (Q, then K, then V, each
/// head's columns contiguous, as ONNX Runtime's packed `Attention` lays them out) and `bias` its
/// [3 × hidden] projection bias (added here, saving a pass over `qkv`), `mask` is [batch, seq]
/// (non-zero = a real token), the output [batch, seq, heads × head_size].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) heads: usize,
    pub(crate) head_size: usize,
    pub(crate) scale: f32,
}

impl Shape {
    pub(crate) fn hidden(&self) -> usize {
        self.heads * self.head_size
    }

    /// Independent pieces of work, one per (row, head): what a parallel loop splits.
    pub(crate) fn items(&self) -> usize {
        self.batch * self.heads
    }
}

/// Head sizes with a specialized kernel; other sizes keep ONNX Runtime's attention.
pub fn supported_head_size(head_size: usize) -> bool {
    matches!(head_size, 16 | 32 | 64 | 128)
}

/// Whether this CPU is one the kernel was measured faster on than ONNX Runtime's attention
/// (AVX-512, docs/performance.md): only there is it the default.
pub fn measured_faster() -> bool {
    Isa::best() == Isa::Avx512
}

/// Computes item `item` (row `item / heads`, head `item % heads`) of the attention.
///
/// # Safety
/// `qkv`, `bias`, `mask` and `out` have the sizes `shape` says ([batch, seq, 3 × hidden],
/// [3 × hidden], [batch, seq], [batch, seq, hidden]), `item < shape.items()`, and no two
/// concurrent calls on one `out` share an `item` (each writes only its row's head columns).
pub(crate) unsafe fn item(qkv: &[f32], bias: &[f32], mask: &[i32], out: Out<'_>, shape: &Shape, item: usize) {
    // SAFETY: the caller's promises are `item_on`'s; the best instruction set is one the CPU has.
    unsafe { item_on(Isa::best(), qkv, bias, mask, out, shape, item) }
}

/// Item `item` of the attention over unpadded rows: `qkv` is [tokens, 3 × hidden] with sequence
/// b's tokens at rows `starts[b]..starts[b + 1]`, every one real (see `Unpad`); `ones` holds at
/// least the longest sequence's length of 1s; the output is [tokens, hidden].
///
/// # Safety
/// `starts` is `Unpad::starts` of the batch's mask (batch + 1 entries, non-decreasing, the last
/// equal to the tokens of `qkv`), `qkv` is [tokens, 3 × hidden], `bias` [3 × hidden], `out`
/// [tokens, hidden], `ones` at least as long as the longest row, `item < shape.items()`, and no
/// two concurrent calls on one `out` share an `item`.
pub(crate) unsafe fn item_unpadded(
    qkv: &[f32],
    bias: &[f32],
    starts: &[usize],
    ones: &[i32],
    out: Out<'_>,
    shape: &Shape,
    item: usize,
) {
    // SAFETY: the caller's promises are `item_unpadded_on`'s; the best set is one the CPU has.
    unsafe { item_unpadded_on(Isa::best(), qkv, bias, starts, ones, out, shape, item) }
}

/// [`item`] on a given instruction set.
///
/// # Safety
/// As [`item`], and the CPU supports `isa`.
unsafe fn item_on(isa: Isa, qkv: &[f32], bias: &[f32], mask: &[i32], out: Out<'_>, shape: &Shape, item: usize) {
    let hidden = shape.hidden();
    debug_assert!(supported_head_size(shape.head_size), "head size {}", shape.head_size);
    debug_assert!(item < shape.items(), "item {item} of {}", shape.items());
    debug_assert_eq!(qkv.len(), shape.batch * shape.seq * 3 * hidden, "qkv vs {shape:?}");
    debug_assert_eq!(bias.len(), 3 * hidden, "bias vs {shape:?}");
    debug_assert_eq!(mask.len(), shape.batch * shape.seq, "mask vs {shape:?}");
    debug_assert_eq!(out.len(), shape.batch * shape.seq * hidden, "output vs {shape:?}");
    let (b, h) = (item / shape.heads, item % shape.heads);
    let qkv = &qkv[b * shape.seq * 3 * hidden..][..shape.seq * 3 * hidden];
    let mask = &mask[b * shape.seq..][..shape.seq];
    // SAFETY: b < batch, so row b's [seq, hidden] starts inside `out` ([batch, seq, hidden]).
    let out = unsafe { out.at(b * shape.seq * hidden) };
    let head = Head { qkv, bias, mask, out, hidden, h, seq: shape.seq, scale: shape.scale };
    // SAFETY: `head` meets `Head`'s invariants: its slices are row b's, `out` points at row b's
    // [seq, hidden] output, and head h's columns of it are this item's alone (the caller's
    // promise); the CPU supports `isa` (the caller's promise too).
    unsafe { head_on(isa, &head, shape.head_size) }
}

/// [`item_unpadded`] on a given instruction set.
///
/// # Safety
/// As [`item_unpadded`], and the CPU supports `isa`.
#[allow(clippy::too_many_arguments)] // `item_unpadded`'s, and the instruction set
unsafe fn item_unpadded_on(
    isa: Isa,
    qkv: &[f32],
    bias: &[f32],
    starts: &[usize],
    ones: &[i32],
    out: Out<'_>,
    shape: &Shape,
    item: usize,
) {
    let hidden = shape.hidden();
    debug_assert!(supported_head_size(shape.head_size), "head size {}", shape.head_size);
    debug_assert!(item < shape.items(), "item {item} of {}", shape.items());
    debug_assert_eq!(starts.len(), shape.batch + 1, "starts vs {shape:?}");
    debug_assert!(starts.windows(2).all(|s| s[0] <= s[1]), "starts decrease: {starts:?}");
    let tokens = starts.last().copied().unwrap_or(0);
    debug_assert_eq!(qkv.len(), tokens * 3 * hidden, "qkv vs {tokens} tokens of {shape:?}");
    debug_assert_eq!(bias.len(), 3 * hidden, "bias vs {shape:?}");
    debug_assert_eq!(out.len(), tokens * hidden, "output vs {tokens} tokens of {shape:?}");
    debug_assert!(starts.windows(2).all(|s| s[1] - s[0] <= ones.len()), "`ones` shorter than a row");
    debug_assert!(ones.iter().all(|&m| m != 0), "`ones` holds a 0");
    let (b, h) = (item / shape.heads, item % shape.heads);
    let rows = starts[b]..starts[b + 1];
    let n = rows.len();
    let qkv = &qkv[rows.start * 3 * hidden..rows.end * 3 * hidden];
    // SAFETY: rows.start ≤ tokens (`starts` is non-decreasing up to the tokens), so sequence
    // b's rows start inside `out` ([tokens, hidden]).
    let out = unsafe { out.at(rows.start * hidden) };
    let head = Head { qkv, bias, mask: &ones[..n], out, hidden, h, seq: n, scale: shape.scale };
    // SAFETY: `head` meets `Head`'s invariants: `qkv` is sequence b's n rows, `out` points at
    // their [n, hidden] output (rows.end ≤ tokens), and head h's columns of it are this item's
    // alone (the caller's promise); the CPU supports `isa` (the caller's promise too).
    unsafe { head_on(isa, &head, shape.head_size) }
}

/// # Safety
/// The CPU supports `isa`; `head` meets [`Head`]'s invariants for head size `head_size`.
unsafe fn head_on(isa: Isa, head: &Head<'_>, head_size: usize) {
    debug_assert!(head.fits(head_size), "a head that does not fit its slices");
    // SAFETY: `Attend`'s contract is `head`'s invariants, which the caller promises, and the
    // CPU supports `isa` (the caller's promise too).
    unsafe {
        match head_size {
            16 => isa.run(Attend::<16>(head)),
            32 => isa.run(Attend::<32>(head)),
            64 => isa.run(Attend::<64>(head)),
            128 => isa.run(Attend::<128>(head)),
            _ => head.zero_from(0, head_size),
        }
    }
}

/// The whole call on the current thread, for the tests.
#[cfg(test)]
pub(crate) fn attention_on(isa: Isa, qkv: &[f32], bias: &[f32], mask: &[i32], out: &mut [f32], shape: &Shape) {
    assert!(isa.supported(), "{isa:?} is not available on this CPU");
    assert_eq!(qkv.len(), shape.batch * shape.seq * 3 * shape.hidden());
    assert_eq!(bias.len(), 3 * shape.hidden());
    assert_eq!(mask.len(), shape.batch * shape.seq);
    assert_eq!(out.len(), shape.batch * shape.seq * shape.hidden());
    let ptr = Out::new(out);
    for i in 0..shape.items() {
        // SAFETY: sizes asserted above; items run one after another; the CPU supports `isa`.
        unsafe { item_on(isa, qkv, bias, mask, ptr, shape, i) };
    }
}

/// One (row, head) of a call.
///
/// Invariants, which the unsafe functions taking a `Head` rely on: `qkv` is this row's
/// [seq, 3 × hidden], `mask` its seq flags, `bias` [3 × hidden]; `h < hidden / d` for the head size
/// `d` it is run with; `out` is valid for writes of this row's [seq, hidden] floats, of which
/// head h's `d` columns are written by no one else while the `Head` is in use.
struct Head<'a> {
    /// This row's [seq, 3 × hidden].
    qkv: &'a [f32],
    bias: &'a [f32],
    mask: &'a [i32],
    /// This row's [seq, hidden] output.
    out: *mut f32,
    hidden: usize,
    h: usize,
    seq: usize,
    scale: f32,
}

impl Head<'_> {
    /// The invariants that the slices' lengths can show, for head size `d` (for `debug_assert!`).
    fn fits(&self, d: usize) -> bool {
        self.qkv.len() == self.seq * 3 * self.hidden
            && self.mask.len() == self.seq
            && self.bias.len() == 3 * self.hidden
            && (self.h + 1) * d <= self.hidden
    }

    /// Zeroes this head's output for queries `from..seq`: padded positions come out as zeros
    /// (the exported graph computes values there that nothing mask-aware reads).
    ///
    /// # Safety
    /// `self` meets [`Head`]'s invariants for head size `d`.
    unsafe fn zero_from(&self, from: usize, d: usize) {
        for i in from..self.seq {
            // SAFETY: row i < seq, head h's d columns (h·d + d ≤ hidden), inside this row's
            // [seq, hidden] output, which is ours to write (`Head`'s invariants).
            unsafe { std::ptr::write_bytes(self.out.add(i * self.hidden + self.h * d), 0, d) };
        }
    }
}

/// Queries per block: their scores and outputs stay in registers while K and V are read once.
const R: usize = 8;
/// Added to the scores of padded keys: far below any real score, so they weigh ~2^-126 (nothing).
const MASKED: f32 = -1.0e30;

/// [`run`] as a [`Kernel`], for [`Isa::run`]. Its contract: the `Head` meets [`Head`]'s
/// invariants for head size `D`.
struct Attend<'h, 'a, const D: usize>(&'h Head<'a>);

impl<const D: usize> Kernel for Attend<'_, '_, D> {
    #[inline(always)]
    unsafe fn run<S: V16>(self) {
        // SAFETY: the CPU supports `S` and the head meets its invariants (`Kernel::run`'s
        // contract and `Attend`'s, both the caller's).
        unsafe { run::<S, D>(self.0) }
    }
}

/// Scores → softmax → weighted sum for one (row, head); `D` = head size, a multiple of 16.
///
/// # Safety
/// The CPU supports `S` ([`V16`]'s contract); `head` meets [`Head`]'s invariants for head size `D`.
// Register blocks are indexed by query and by vector across several arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn run<S: V16, const D: usize>(head: &Head<'_>) {
    let hidden = head.hidden;
    let stride = 3 * hidden;
    let len = head.mask.iter().rposition(|&m| m != 0).map_or(0, |i| i + 1);
    let lanes = len.div_ceil(W) * W;
    let (qc, kc, vc) = (head.h * D, hidden + head.h * D, 2 * hidden + head.h * D);

    // K transposed [D][lanes] (zero past `len`) and each key's score bias. The projection biases
    // of K and V need no pass of their own: K's adds q·b_K to every score of a query, which the
    // softmax cancels, and V's adds b_V to every output row, since a row's weights sum to 1.
    let mut kt = vec![0f32; D * lanes];
    let mut bias = vec![MASKED; lanes];
    for j in 0..len {
        for (c, &x) in head.qkv[j * stride + kc..][..D].iter().enumerate() {
            kt[c * lanes + j] = x;
        }
        if head.mask[j] != 0 {
            bias[j] = 0.0;
        }
    }
    let v = &head.qkv[vc..];
    let bv = &head.bias[vc..vc + D];

    let mut scores = vec![0f32; R * lanes];
    let mut q = [[0f32; D]; R];
    let mut i0 = 0;
    while i0 < len {
        let rows = R.min(len - i0);
        for (r, q) in q.iter_mut().enumerate() {
            let i = (i0 + r).min(len - 1); // a short last block repeats its last query
            let (x, b) = (head.qkv[i * stride + qc..][..D].as_ptr(), head.bias[qc..qc + D].as_ptr());
            // SAFETY: x, b and q each hold D floats (the slices above, `q`'s type), read and
            // written 16 at a time at c < D (D is a multiple of 16); the CPU supports `S` (our
            // caller's promise).
            unsafe {
                let scale = S::splat(head.scale);
                for c in (0..D).step_by(W) {
                    S::load(x.add(c)).add(S::load(b.add(c))).mul(scale).store(q.as_mut_ptr().add(c));
                }
            }
        }
        // SAFETY: for all loads and stores below, the CPU supports `S` (our caller's promise), and
        // every access stays inside kt [D][lanes], scores [R][lanes] and bias [lanes] (j steps by
        // W up to lanes, a multiple of W), V's rows j < len ≤ seq of this head (stride apart, D
        // floats at vc + h·D, ≤ 3·hidden: `Head`'s invariants), and the output rows i0 + r < len
        // ≤ seq, head h's D columns, which are ours to write (`Head`'s invariants).
        unsafe {
            let mut max = [S::splat(MASKED); R];
            // Two key vectors at a time where there are two: eight independent FMA chains.
            let mut j = 0;
            while j + 2 * W <= lanes {
                let (b0, b1) = (S::load(bias.as_ptr().add(j)), S::load(bias.as_ptr().add(j + W)));
                let (mut acc0, mut acc1) = ([b0; R], [b1; R]);
                for c in 0..D {
                    let k0 = S::load(kt.as_ptr().add(c * lanes + j));
                    let k1 = S::load(kt.as_ptr().add(c * lanes + j + W));
                    for r in 0..R {
                        let x = S::splat(q[r][c]);
                        acc0[r] = acc0[r].fma(x, k0);
                        acc1[r] = acc1[r].fma(x, k1);
                    }
                }
                for r in 0..R {
                    acc0[r].store(scores.as_mut_ptr().add(r * lanes + j));
                    acc1[r].store(scores.as_mut_ptr().add(r * lanes + j + W));
                    max[r] = max[r].max(acc0[r]).max(acc1[r]);
                }
                j += 2 * W;
            }
            if j < lanes {
                let mut acc = [S::load(bias.as_ptr().add(j)); R];
                for c in 0..D {
                    let k = S::load(kt.as_ptr().add(c * lanes + j));
                    for r in 0..R {
                        acc[r] = acc[r].fma(S::splat(q[r][c]), k);
                    }
                }
                for r in 0..R {
                    acc[r].store(scores.as_mut_ptr().add(r * lanes + j));
                    max[r] = max[r].max(acc[r]);
                }
            }
            let mut sums = [0f32; R];
            for r in 0..R {
                let m = S::splat(max[r].to_array().into_iter().fold(MASKED, f32::max));
                let mut sum = S::zero();
                for j in (0..lanes).step_by(W) {
                    let p = scores.as_mut_ptr().add(r * lanes + j);
                    let e = exp(S::load(p).sub(m));
                    e.store(p);
                    sum = sum.add(e);
                }
                sums[r] = sum.to_array().iter().sum();
            }
            const { assert!(D.is_multiple_of(W)) };
            let mut acc = [[S::zero(); 8]; R];
            let p0 = scores.as_ptr();
            for j in 0..len {
                let vj = v.as_ptr().add(j * stride);
                for r in 0..R {
                    let p = S::splat(*p0.add(r * lanes + j));
                    for c in 0..D / W {
                        acc[r][c] = acc[r][c].fma(p, S::load(vj.add(c * W)));
                    }
                }
            }
            for r in 0..rows {
                let inv = S::splat(1.0 / sums[r]);
                let dst = head.out.add((i0 + r) * hidden + head.h * D);
                for c in 0..D / W {
                    S::load(bv.as_ptr().add(c * W)).fma(acc[r][c], inv).store(dst.add(c * W));
                }
            }
        }
        i0 += rows;
    }
    // SAFETY: `head` meets its invariants for head size D (our caller's promise).
    unsafe { head.zero_from(len, D) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::data;
    use crate::unpad::Unpad;

    fn naive(qkv: &[f32], bias: &[f32], mask: &[i32], s: &Shape) -> Vec<f32> {
        let hidden = s.hidden();
        let mut out = vec![0f32; s.batch * s.seq * hidden];
        for b in 0..s.batch {
            let len = mask[b * s.seq..][..s.seq].iter().rposition(|&m| m != 0).map_or(0, |i| i + 1);
            for h in 0..s.heads {
                for i in 0..len {
                    let at = |t: usize, part: usize, c: usize| {
                        let col = part * hidden + h * s.head_size + c;
                        qkv[(b * s.seq + t) * 3 * hidden + col] as f64 + bias[col] as f64
                    };
                    let scores: Vec<f64> = (0..s.seq)
                        .map(|j| {
                            if mask[b * s.seq + j] == 0 {
                                f64::NEG_INFINITY
                            } else {
                                (0..s.head_size).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * s.scale as f64
                            }
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..s.head_size {
                        let y: f64 = (0..s.seq).map(|j| e[j] * at(j, 2, c)).sum::<f64>() / sum;
                        out[(b * s.seq + i) * hidden + h * s.head_size + c] = y as f32;
                    }
                }
            }
        }
        out
    }

    fn matches_the_definition_with_padding_and_holes(isa: Isa) {
        // (head size, heads, seq). Under Miri, which interprets every float operation, two small
        // cases that still reach every path: rows of 32, 37 and 1 keys (both key loops, the
        // short last query block) at head size 16, and the widest head at a short seq.
        let cases: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(16, 1, 37), (128, 1, 9)]
        } else {
            &[(32, 12, 37), (16, 2, 37), (64, 2, 37), (128, 1, 37)]
        };
        for &(head_size, heads, seq) in cases {
            let s = Shape { batch: 3, seq, heads, head_size, scale: 1.0 / (head_size as f32).sqrt() };
            let qkv = data(s.batch * s.seq * 3 * s.hidden(), head_size as u64);
            let bias = data(3 * s.hidden(), 7);
            let mut mask = vec![1i32; s.batch * s.seq];
            mask[seq - 5..seq].fill(0); // row 0: 5 padded
            mask[seq + 3] = 0; // row 1: a hole
            mask[2 * seq + 1..].fill(0); // row 2: one real token
            let want = naive(&qkv, &bias, &mask, &s);
            let mut out = vec![f32::NAN; s.batch * s.seq * s.hidden()];
            attention_on(isa, &qkv, &bias, &mask, &mut out, &s);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{isa:?}, head size {head_size}, element {i}: {a} vs {b}"
                );
            }
        }
    }

    fn unpadded_attention_equals_padded_on_the_real_tokens(isa: Isa) {
        // Under Miri, head size 16: half the interpreted work, the same paths.
        let head_size = if cfg!(miri) { 16 } else { 32 };
        let s = Shape { batch: 3, seq: 21, heads: 2, head_size, scale: 0.2 };
        let hidden = s.hidden();
        let qkv = data(s.batch * s.seq * 3 * hidden, 11);
        let bias = data(3 * hidden, 12);
        let mut mask = vec![1i32; s.batch * s.seq];
        mask[21 - 6..21].fill(0); // row 0: 15 real
        mask[2 * 21 + 4..].fill(0); // row 2: 4 real
        let mut padded = vec![0f32; s.batch * s.seq * hidden];
        attention_on(isa, &qkv, &bias, &mask, &mut padded, &s);

        let starts = Unpad::starts(&mask, s.batch, s.seq).unwrap();
        assert_eq!(starts, [0, 15, 36, 40]);
        let mut u = vec![f32::NAN; 40 * 3 * hidden];
        Unpad::run(&qkv, &mask, 3 * hidden, &mut u);
        let mut out = vec![f32::NAN; 40 * hidden];
        let (ones, ptr) = (vec![1i32; s.seq], Out::new(&mut out));
        for i in 0..s.items() {
            // SAFETY: sizes as built above; items one after another; `per_isa!` runs only
            // instruction sets the CPU has.
            unsafe { item_unpadded_on(isa, &u, &bias, &starts, &ones, ptr, &s, i) };
        }
        let mut back = vec![f32::NAN; s.batch * s.seq * hidden];
        Unpad::undo(&out, &mask, hidden, &mut back);
        for (i, (a, b)) in back.iter().zip(&padded).enumerate() {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{isa:?}, element {i}: {a} vs {b}");
        }
    }

    /// The entry points' `debug_assert!`s catch a caller that breaks the contract, before any
    /// unchecked access (release builds rely on `ops`' checks alone).
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "mask vs")]
    fn a_mask_of_the_wrong_length_is_caught_in_debug_builds() {
        let s = Shape { batch: 2, seq: 3, heads: 1, head_size: 16, scale: 0.25 };
        let (qkv, bias, mask) = (vec![0.0; 2 * 3 * 48], vec![0.0; 48], vec![1; 5]);
        let mut out = vec![0.0; 2 * 3 * 16];
        // SAFETY: not sound to call (the mask is one short): the debug assertion stops it first.
        unsafe { item_on(Isa::Portable, &qkv, &bias, &mask, Out::new(&mut out), &s, 0) };
    }

    crate::tests::per_isa!(
        matches_the_definition_with_padding_and_holes,
        unpadded_attention_equals_padded_on_the_real_tokens
    );
}
