//! akidb's own CPU kernels, registered with ONNX Runtime as custom operators (domain [`DOMAIN`])
//! for the graph `graph` rewrites, run on ONNX Runtime's own intra-op thread pool.
//!
//! - `Attention`: ONNX Runtime's `Attention`/`MultiHeadAttention` run the scores and the weighted
//!   sum through a general GEMM per head (K = head size, 32 on MiniLM: thin for a GEMM), score
//!   every padded key, and pass the whole score tensor through memory between steps. This kernel
//!   does one (row, head) at a time with its working set in cache: keys transposed once, scores
//!   of four queries against 16–32 keys held in registers, softmax and the weighted sum in place,
//!   stopping at the row's last real token. The Q/K/V bias is added as the values are read, so the
//!   projection before it is a plain `MatMul`.
//! - `SkipLayerNorm` ([`Norm`]) and `BiasGelu` ([`Gelu`]): what ONNX Runtime runs as two or three
//!   passes over memory (bias `Add`, residual `Add`, `LayerNormalization`; bias `Add`, `Gelu`), in
//!   one.
//! - `Unpad` / `Repad` ([`Unpad`]): the encoder between them works on real tokens only, so no
//!   matrix product is spent on padding (attention then takes the rows' extents from the mask).
//!
//! Measured in docs/performance.md ("Levers of issue #15").

/// The shape of one call: `qkv` is [batch, seq, 3 × heads × head_size] (Q, then K, then V, each
/// head's columns contiguous, as ONNX Runtime's packed `Attention` lays them out) and `bias` its
/// [3 × hidden] projection bias (added here, saving a pass over `qkv`), `mask` is [batch, seq]
/// (non-zero = a real token), the output [batch, seq, heads × head_size].
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_size: usize,
    pub scale: f32,
}

impl Shape {
    fn hidden(&self) -> usize {
        self.heads * self.head_size
    }

    /// Independent pieces of work, one per (row, head): what a parallel loop splits.
    pub fn items(&self) -> usize {
        self.batch * self.heads
    }
}

/// Head sizes with a specialized kernel; other sizes keep ONNX Runtime's attention.
pub fn supported_head_size(head_size: usize) -> bool {
    matches!(head_size, 16 | 32 | 64 | 128)
}

/// Where one call writes: shared by the parallel items, each writing only its own (row, head)
/// columns.
#[derive(Clone, Copy)]
pub struct Out(*mut f32);

// SAFETY: items write disjoint elements (row b, columns of head h); see `item`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub fn new(out: &mut [f32]) -> Self {
        Out(out.as_mut_ptr())
    }
}

/// Computes item `item` (row `item / heads`, head `item % heads`) of the attention.
///
/// # Safety
/// `out` must point to [batch, seq, hidden] floats that outlive the call, `qkv` and `mask` must
/// have the sizes `shape` says, and no two concurrent calls may share an `item`.
pub unsafe fn item(qkv: &[f32], bias: &[f32], mask: &[i32], out: Out, shape: &Shape, item: usize) {
    // SAFETY: forwarded; the best instruction set is one the CPU has.
    unsafe { item_on(Isa::best(), qkv, bias, mask, out, shape, item) }
}

/// Item `item` of the attention over unpadded rows: `qkv` is [tokens, 3 × hidden] with sequence
/// b's tokens at rows `starts[b]..starts[b + 1]`, every one real (see [`Unpad`]); `ones` holds at
/// least the longest sequence's length of 1s; the output is [tokens, hidden].
///
/// # Safety
/// As [`item`], and: `starts` is [`Unpad::starts`] of the batch's mask (batch + 1 entries, non-
/// decreasing, the last equal to the tokens of `qkv`), `out` holds [tokens, hidden] floats, and
/// `ones` is at least as long as the longest row.
pub unsafe fn item_unpadded(
    qkv: &[f32],
    bias: &[f32],
    starts: &[usize],
    ones: &[i32],
    out: Out,
    shape: &Shape,
    item: usize,
) {
    let (b, h) = (item / shape.heads, item % shape.heads);
    let hidden = shape.hidden();
    let rows = starts[b]..starts[b + 1];
    let n = rows.len();
    let qkv = &qkv[rows.start * 3 * hidden..rows.end * 3 * hidden];
    // SAFETY: rows of sequence b of `out`; this item touches only head h's columns.
    let out = unsafe { out.0.add(rows.start * hidden) };
    let head = Head { qkv, bias, mask: &ones[..n], out, hidden, h, seq: n, scale: shape.scale };
    // SAFETY: the best ISA is one the CPU has.
    unsafe { head_on(Isa::best(), &head, shape.head_size) }
}

/// [`item`] on a given instruction set.
///
/// # Safety
/// As [`item`]; the CPU must support `isa`.
unsafe fn item_on(isa: Isa, qkv: &[f32], bias: &[f32], mask: &[i32], out: Out, shape: &Shape, item: usize) {
    let (b, h) = (item / shape.heads, item % shape.heads);
    let hidden = shape.hidden();
    let qkv = &qkv[b * shape.seq * 3 * hidden..][..shape.seq * 3 * hidden];
    let mask = &mask[b * shape.seq..][..shape.seq];
    // SAFETY: row b of `out`, [seq, hidden]; this item touches only head h's columns.
    let out = unsafe { out.0.add(b * shape.seq * hidden) };
    let head = Head { qkv, bias, mask, out, hidden, h, seq: shape.seq, scale: shape.scale };
    // SAFETY: forwarded.
    unsafe { head_on(isa, &head, shape.head_size) }
}

/// # Safety
/// The CPU must support `isa`; `head` must describe valid memory.
unsafe fn head_on(isa: Isa, head: &Head<'_>, head_size: usize) {
    // SAFETY: forwarded.
    unsafe {
        match head_size {
            16 => dispatch::<16>(isa, head),
            32 => dispatch::<32>(isa, head),
            64 => dispatch::<64>(isa, head),
            128 => dispatch::<128>(isa, head),
            _ => head.zero_from(0, head_size),
        }
    }
}

/// The whole call on the current thread, for the tests.
#[cfg(test)]
fn attention_on(isa: Isa, qkv: &[f32], bias: &[f32], mask: &[i32], out: &mut [f32], shape: &Shape) {
    assert!(Isa::available().contains(&isa), "{isa:?} is not available on this CPU");
    assert_eq!(qkv.len(), shape.batch * shape.seq * 3 * shape.hidden());
    assert_eq!(bias.len(), 3 * shape.hidden());
    assert_eq!(mask.len(), shape.batch * shape.seq);
    assert_eq!(out.len(), shape.batch * shape.seq * shape.hidden());
    let ptr = Out::new(out);
    for i in 0..shape.items() {
        // SAFETY: sizes asserted above; items run one after another.
        unsafe { item_on(isa, qkv, bias, mask, ptr, shape, i) };
    }
}

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
    /// Zeroes this head's output for queries `from..seq`: padded positions come out as zeros
    /// (the exported graph computes values there that nothing mask-aware reads).
    unsafe fn zero_from(&self, from: usize, d: usize) {
        for i in from..self.seq {
            // SAFETY: row i, head h's d columns, inside this row's [seq, hidden].
            unsafe { std::ptr::write_bytes(self.out.add(i * self.hidden + self.h * d), 0, d) };
        }
    }
}

/// The instruction sets the kernel is compiled for; the best one the CPU has is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    /// Plain Rust over 16-float arrays, left to the compiler to vectorize.
    Portable,
}

impl Isa {
    /// Every set this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                all.push(Isa::Avx2);
            }
        }
        all.push(Isa::Portable);
        all
    }

    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Isa::available()[0])
    }
}

/// Whether this CPU is one the kernel was measured faster on than ONNX Runtime's attention
/// (AVX-512, docs/performance.md): only there is it the default.
pub fn measured_faster() -> bool {
    Isa::best() == Isa::Avx512
}

/// # Safety
/// The CPU must support `isa` (one of [`Isa::available`]).
unsafe fn dispatch<const D: usize>(isa: Isa, head: &Head<'_>) {
    match isa {
        // SAFETY (both): the caller checked the CPU has the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::run_avx512::<D>(head) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::run_avx2::<D>(head) },
        // SAFETY: plain Rust, no CPU features assumed.
        _ => unsafe { run::<Portable, D>(head) },
    }
}

/// Sixteen floats, in whatever registers the CPU has: the kernel is written once against this.
trait V16: Copy {
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a * b + self`
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    /// 2^n for floats `t` that hold `ROUND + n` (integer n in their low mantissa bits, |n| ≤ 126).
    unsafe fn pow2_of_rounded(t: Self) -> Self;
    unsafe fn to_array(self) -> [f32; 16] {
        let mut a = [0f32; 16];
        unsafe { self.store(a.as_mut_ptr()) };
        a
    }
}

/// 1.5 · 2^23: adding it rounds a float to an integer, kept in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;

#[derive(Clone, Copy)]
struct Portable([f32; 16]);

impl Portable {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Portable(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }
}

impl V16 for Portable {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 16])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable([x; 16])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(unsafe { p.cast::<[f32; 16]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { p.cast::<[f32; 16]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        // Not `mul_add`: without FMA hardware that is a call into libm per element.
        Portable(std::array::from_fn(|i| a.0[i] * b.0[i] + self.0[i]))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self.map2(o, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self.map2(o, |a, b| a - b)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self.map2(o, |a, b| a * b)
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        self.map2(o, |a, b| a / b)
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        self.map2(o, f32::max)
    }
    #[inline(always)]
    unsafe fn pow2_of_rounded(t: Self) -> Self {
        let bias = ROUND.to_bits() as i32 - 127;
        Portable(t.0.map(|t| f32::from_bits(((t.to_bits() as i32).wrapping_sub(bias) << 23) as u32)))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{run, Head, ROUND, V16};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_avx512<const D: usize>(head: &Head<'_>) {
        unsafe { run::<Avx512, D>(head) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<const D: usize>(head: &Head<'_>) {
        unsafe { run::<Avx2, D>(head) }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn norm_avx512(n: &super::Norm<'_>, out: *mut f32, rows: std::ops::Range<usize>) {
        unsafe { super::norm_rows::<Avx512>(n, out, rows) }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gelu_avx512(g: &super::Gelu<'_>, out: *mut f32, rows: std::ops::Range<usize>) {
        unsafe { super::gelu_rows::<Avx512>(g, out, rows) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_avx2(g: &super::Gelu<'_>, out: *mut f32, rows: std::ops::Range<usize>) {
        unsafe { super::gelu_rows::<Avx2>(g, out, rows) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn norm_avx2(n: &super::Norm<'_>, out: *mut f32, rows: std::ops::Range<usize>) {
        unsafe { super::norm_rows::<Avx2>(n, out, rows) }
    }

    #[derive(Clone, Copy)]
    struct Avx512(__m512);

    impl V16 for Avx512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(x) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_div_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(t: Self) -> Self {
            unsafe {
                let bias = _mm512_set1_epi32(ROUND.to_bits() as i32 - 127);
                let n = _mm512_sub_epi32(_mm512_castps_si512(t.0), bias);
                Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(n)))
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Avx2(__m256, __m256);

    impl V16 for Avx2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(x), _mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe {
                _mm256_storeu_ps(p, self.0);
                _mm256_storeu_ps(p.add(8), self.1);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            unsafe { Avx2(_mm256_fmadd_ps(a.0, b.0, self.0), _mm256_fmadd_ps(a.1, b.1, self.1)) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_div_ps(self.0, o.0), _mm256_div_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_max_ps(self.0, o.0), _mm256_max_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(t: Self) -> Self {
            unsafe {
                let bias = _mm256_set1_epi32(ROUND.to_bits() as i32 - 127);
                let f = |x: __m256| {
                    let n = _mm256_sub_epi32(_mm256_castps_si256(x), bias);
                    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n))
                };
                Avx2(f(t.0), f(t.1))
            }
        }
    }
}

/// Keys per score vector.
const W: usize = 16;
/// Queries per block: their scores and outputs stay in registers while K and V are read once.
const R: usize = 8;
/// Added to the scores of padded keys: far below any real score, so they weigh ~2^-126 (nothing).
const MASKED: f32 = -1.0e30;

/// Scores → softmax → weighted sum for one (row, head); `D` = head size, a multiple of 16.
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
            // SAFETY: D floats at each of x, b and q.
            unsafe {
                let scale = S::splat(head.scale);
                for c in (0..D).step_by(W) {
                    S::load(x.add(c)).add(S::load(b.add(c))).mul(scale).store(q.as_mut_ptr().add(c));
                }
            }
        }
        // SAFETY (all loads and stores below): indices stay inside kt [D][lanes],
        // scores [R][lanes], bias [lanes], and V's rows j < len of this head (stride apart).
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
    // SAFETY: as in `zero_from`.
    unsafe { head.zero_from(len, D) };
}

/// exp(y) = 2^k · p(r) with y = k·ln2 + r, |r| ≤ ln2/2 and p of degree 6 (relative error
/// < 2e-7); y is clamped at -87, where exp is ~1e-38 (nothing, next to the row's maximum's 1).
#[inline(always)]
unsafe fn exp<S: V16>(y: S) -> S {
    unsafe {
        let y = y.max(S::splat(-87.0));
        let t = S::splat(ROUND).fma(y, S::splat(std::f32::consts::LOG2_E)); // y·log2e + ROUND
        let k = t.sub(S::splat(ROUND));
        let r = y.sub(k.mul(S::splat(0.693_145_75))).sub(k.mul(S::splat(1.428_606_8e-6)));
        let mut p = S::splat(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = S::splat(c).fma(p, r);
        }
        p.mul(S::pow2_of_rounded(t))
    }
}

/// `x = exp(x - shift)`, for the tests of `exp`.
#[cfg(test)]
fn exp_shifted(x: &mut [f32], shift: f32) {
    for chunk in x.chunks_mut(16) {
        let mut a = [0f32; 16];
        a[..chunk.len()].copy_from_slice(chunk);
        // SAFETY: plain Rust.
        let e = unsafe { exp(Portable(a).sub(Portable::splat(shift))) };
        chunk.copy_from_slice(&e.0[..chunk.len()]);
    }
}

/// One residual LayerNorm: `out = LayerNorm(x + bias + residual) · gamma + beta` over rows of
/// `hidden` (a multiple of 16) — what follows the attention output and the feed-forward output in
/// a BERT layer. ONNX Runtime runs it as two `Add`s and a `LayerNormalization`, three passes over
/// memory; here it is one pass (the row's sum stays in L1 for its statistics).
pub struct Norm<'a> {
    pub x: &'a [f32],
    pub residual: &'a [f32],
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl Norm<'_> {
    fn hidden(&self) -> usize {
        self.gamma.len()
    }

    /// Rows of one parallel item: enough to amortize the hand-off, few enough to share 2+ cores.
    const ROWS: usize = 16;

    /// `None` when the sizes do not fit together.
    pub fn items(&self) -> Option<usize> {
        let h = self.hidden();
        let fits = h > 0
            && h.is_multiple_of(W)
            && [self.bias.len(), self.beta.len()].iter().all(|&n| n == h)
            && self.x.len().is_multiple_of(h)
            && self.residual.len() == self.x.len();
        fits.then(|| (self.x.len() / h).div_ceil(Self::ROWS))
    }

    /// Normalizes the rows of item `item` into `out` (as long as `x`).
    ///
    /// # Safety
    /// `items()` must be `Some(n)` with `item < n`, `out` must hold `x.len()` floats, and no two
    /// concurrent calls may share an item.
    pub unsafe fn item(&self, out: Out, item: usize) {
        let rows = self.x.len() / self.hidden();
        let range = item * Self::ROWS..((item + 1) * Self::ROWS).min(rows);
        // SAFETY: as the caller promised; the ISA is one this CPU has.
        unsafe { self.rows_on(Isa::best(), out.0, range) }
    }

    unsafe fn rows_on(&self, isa: Isa, out: *mut f32, rows: std::ops::Range<usize>) {
        match isa {
            // SAFETY (all): the CPU has the ISA; rows lie inside `x` and `out`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::norm_avx512(self, out, rows) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::norm_avx2(self, out, rows) },
            _ => unsafe { norm_rows::<Portable>(self, out, rows) },
        }
    }
}

#[inline(always)]
unsafe fn hsum<S: V16>(v: S) -> f32 {
    unsafe { v.to_array() }.iter().sum()
}

#[inline(always)]
unsafe fn norm_rows<S: V16>(n: &Norm<'_>, out: *mut f32, rows: std::ops::Range<usize>) {
    let h = n.hidden();
    let mut y = vec![0f32; h];
    // SAFETY: every offset is below row · h + h ≤ x.len() = out.len(), or below h for the
    // per-column vectors (checked by `items`).
    unsafe {
        let (bias, gamma, beta, y) = (n.bias.as_ptr(), n.gamma.as_ptr(), n.beta.as_ptr(), y.as_mut_ptr());
        for row in rows {
            let (x, r, o) = (n.x.as_ptr().add(row * h), n.residual.as_ptr().add(row * h), out.add(row * h));
            // The exported graph's order: (x + bias) + residual.
            let mut sum = S::zero();
            for c in (0..h).step_by(W) {
                let v = S::load(x.add(c)).add(S::load(bias.add(c))).add(S::load(r.add(c)));
                v.store(y.add(c));
                sum = sum.add(v);
            }
            let mean = S::splat(hsum(sum) / h as f32);
            let mut squares = S::zero();
            for c in (0..h).step_by(W) {
                let d = S::load(y.add(c)).sub(mean);
                squares = squares.fma(d, d);
            }
            let inv = S::splat(1.0 / (hsum(squares) / h as f32 + n.eps).sqrt());
            for c in (0..h).step_by(W) {
                let d = S::load(y.add(c)).sub(mean).mul(inv);
                S::load(beta.add(c)).fma(d, S::load(gamma.add(c))).store(o.add(c));
            }
        }
    }
}

/// The feed-forward activation with its bias: `out = GELU(x + bias)` over rows of `bias.len()`
/// (a multiple of 16), GELU(v) = v/2 · (1 + erf(v/√2)). ONNX Runtime runs the bias `Add` and
/// `Gelu` as two passes over the widest activation of the layer; here it is one.
pub struct Gelu<'a> {
    pub x: &'a [f32],
    pub bias: &'a [f32],
}

impl Gelu<'_> {
    const ROWS: usize = 8;

    /// `None` when the sizes do not fit together.
    pub fn items(&self) -> Option<usize> {
        let n = self.bias.len();
        (n > 0 && n.is_multiple_of(W) && self.x.len().is_multiple_of(n))
            .then(|| (self.x.len() / n).div_ceil(Self::ROWS))
    }

    /// # Safety
    /// As [`Norm::item`].
    pub unsafe fn item(&self, out: Out, item: usize) {
        let rows = self.x.len() / self.bias.len();
        let range = item * Self::ROWS..((item + 1) * Self::ROWS).min(rows);
        // SAFETY: as the caller promised; the ISA is one this CPU has.
        unsafe { self.rows_on(Isa::best(), out.0, range) }
    }

    unsafe fn rows_on(&self, isa: Isa, out: *mut f32, rows: std::ops::Range<usize>) {
        match isa {
            // SAFETY (all): the CPU has the ISA; rows lie inside `x` and `out`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::gelu_avx512(self, out, rows) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::gelu_avx2(self, out, rows) },
            _ => unsafe { gelu_rows::<Portable>(self, out, rows) },
        }
    }
}

/// GELU with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): with a = |v| and
/// e = erfc(a/√2) = t·p(t)·exp(-a²/2), t = 1/(1 + 0.3275911·a/√2), GELU(v) = max(v, 0) - a·e/2
/// for either sign of v, so no branch or sign copy is needed.
#[inline(always)]
unsafe fn gelu<S: V16>(v: S) -> S {
    unsafe {
        let a = v.max(S::zero().sub(v));
        let z = a.mul(S::splat(std::f32::consts::FRAC_1_SQRT_2));
        let t = S::splat(1.0).div(S::splat(1.0).fma(S::splat(0.327_591_1), z));
        let mut p = S::splat(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            p = S::splat(c).fma(p, t);
        }
        let e = p.mul(t).mul(exp(S::zero().sub(z.mul(z))));
        v.max(S::zero()).sub(S::splat(0.5).mul(a).mul(e))
    }
}

#[inline(always)]
unsafe fn gelu_rows<S: V16>(g: &Gelu<'_>, out: *mut f32, rows: std::ops::Range<usize>) {
    let n = g.bias.len();
    // SAFETY: offsets below row · n + n ≤ x.len() = out.len(), or below n for the bias.
    unsafe {
        for row in rows {
            let (x, o) = (g.x.as_ptr().add(row * n), out.add(row * n));
            for c in (0..n).step_by(W) {
                gelu(S::load(x.add(c)).add(S::load(g.bias.as_ptr().add(c)))).store(o.add(c));
            }
        }
    }
}

/// Part of the key of a verified graph (`fusion`): a change to any kernel's arithmetic must bump
/// it, so graphs verified against the old kernels are verified again.
pub const VERSION: u32 = 1;

/// The custom-operator domain of akidb's kernels in a rewritten graph (`graph`).
pub const DOMAIN: &str = "ai.akidb";
/// The attention core's operator name in [`DOMAIN`].
pub const ATTENTION: &str = "Attention";

/// akidb's operators, to register with every session that may load a rewritten graph.
pub fn operators() -> ort::Result<ort::operator::OperatorDomain> {
    ort::operator::OperatorDomain::new(DOMAIN)?.add(AttentionOp)?.add(NormOp)?.add(GeluOp)?.add(UnpadOp)?.add(RepadOp)
}

/// `N` required float inputs.
fn float_inputs<const N: usize>() -> [ort::operator::OperatorInput; N] {
    [0; N].map(|_| ort::operator::OperatorInput::required(ort::value::TensorElementType::Float32))
}

/// One float output.
fn float_output() -> [ort::operator::OperatorOutput; 1] {
    [ort::operator::OperatorOutput::required(ort::value::TensorElementType::Float32)]
}

/// The shared tail of the row-wise operators: an output shaped like their input 0 (`dims`, `len`
/// floats), then `items` (`None`: the sizes do not fit) parallel items of `run`.
fn run_row_wise(
    ctx: &ort::operator::ComputeContext,
    op: &str,
    dims: &[i64],
    len: usize,
    items: Option<usize>,
    run: impl Fn(Out, usize) + Sync + Send,
) -> ort::Result<()> {
    let items = items.ok_or_else(|| ort::Error::new(format!("akidb {op}: sizes do not fit ({dims:?})")))?;
    let mut out = ctx.output(0, dims.to_vec())?.ok_or_else(|| ort::Error::new(format!("akidb {op}: no output")))?;
    let (_, out) = out.try_extract_tensor_mut::<f32>()?;
    if out.len() != len {
        return Err(ort::Error::new(format!("akidb {op}: output of the wrong size")));
    }
    let out = Out::new(out);
    ctx.par_for(items, items, |i| run(out, i))
}

/// The feed-forward activation's operator name in [`DOMAIN`].
pub const BIAS_GELU: &str = "BiasGelu";

/// `BiasGelu(x, bias) → GELU(x + bias)` (see [`Gelu`]); the output has `x`'s shape.
struct GeluOp;

impl ort::operator::Operator for GeluOp {
    type Kernel<'attr> = GeluKernel;

    fn name(&self) -> &str {
        BIAS_GELU
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        float_inputs::<2>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, _: &ort::operator::KernelContext<'attr>) -> ort::Result<GeluKernel> {
        Ok(GeluKernel)
    }
}

struct GeluKernel;

impl ort::operator::Kernel for GeluKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb BiasGelu: missing input"));
        let (x, bias) = (input(0)?, input(1)?);
        let (dims, x) = x.try_extract_tensor::<f32>()?;
        let gelu = Gelu { x, bias: bias.try_extract_tensor::<f32>()?.1 };
        // SAFETY: sizes checked by `items` and `run_row_wise`; each item runs once, on its own rows.
        run_row_wise(ctx, BIAS_GELU, dims, gelu.x.len(), gelu.items(), |out, i| unsafe { gelu.item(out, i) })
    }
}

/// The residual LayerNorm's operator name in [`DOMAIN`].
pub const SKIP_LAYER_NORM: &str = "SkipLayerNorm";

/// `SkipLayerNorm(x, residual, bias, gamma, beta) → LayerNorm(x + bias + residual)` (see [`Norm`])
/// with attribute `epsilon`; the output has `x`'s shape.
struct NormOp;

impl ort::operator::Operator for NormOp {
    type Kernel<'attr> = NormKernel;

    fn name(&self) -> &str {
        SKIP_LAYER_NORM
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        float_inputs::<5>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, ctx: &ort::operator::KernelContext<'attr>) -> ort::Result<NormKernel> {
        let eps = ctx.get::<f32>("epsilon").ok_or_else(|| ort::Error::new("akidb SkipLayerNorm: no epsilon"))?;
        Ok(NormKernel { eps })
    }
}

struct NormKernel {
    eps: f32,
}

impl ort::operator::Kernel for NormKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb SkipLayerNorm: missing input"));
        let (x, residual, bias, gamma, beta) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
        let (dims, x) = x.try_extract_tensor::<f32>()?;
        let norm = Norm {
            x,
            residual: residual.try_extract_tensor::<f32>()?.1,
            bias: bias.try_extract_tensor::<f32>()?.1,
            gamma: gamma.try_extract_tensor::<f32>()?.1,
            beta: beta.try_extract_tensor::<f32>()?.1,
            eps: self.eps,
        };
        // SAFETY: sizes checked by `items` and `run_row_wise`; each item runs once, on its own rows.
        run_row_wise(ctx, SKIP_LAYER_NORM, dims, norm.x.len(), norm.items(), |out, i| unsafe { norm.item(out, i) })
    }
}

/// `Attention(qkv [batch, seq, 3·hidden], bias [3·hidden], mask int32 [batch, seq]) → [batch,
/// seq, hidden]` with attributes `num_heads` and `scale`.
struct AttentionOp;

impl ort::operator::Operator for AttentionOp {
    type Kernel<'attr> = AttentionKernel;

    fn name(&self) -> &str {
        ATTENTION
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        use ort::{operator::OperatorInput, value::TensorElementType};
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, ctx: &ort::operator::KernelContext<'attr>) -> ort::Result<AttentionKernel> {
        let heads = ctx.get::<i64>("num_heads").and_then(|h| usize::try_from(h).ok()).filter(|&h| h > 0);
        let heads = heads.ok_or_else(|| ort::Error::new("akidb Attention: num_heads must be a positive integer"))?;
        let scale = ctx.get::<f32>("scale").ok_or_else(|| ort::Error::new("akidb Attention: no scale"))?;
        let unpadded = ctx.get::<i64>("unpadded").unwrap_or(0) != 0;
        Ok(AttentionKernel { heads, scale, unpadded })
    }
}

struct AttentionKernel {
    heads: usize,
    scale: f32,
    /// qkv is [tokens, 3·hidden] of real tokens only (after `Unpad`), the mask says which row of
    /// the batch each belongs to.
    unpadded: bool,
}

impl ort::operator::Kernel for AttentionKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let missing = || ort::Error::new("akidb Attention: missing input");
        let qkv = ctx.input(0)?.ok_or_else(missing)?;
        let bias = ctx.input(1)?.ok_or_else(missing)?;
        let mask = ctx.input(2)?.ok_or_else(missing)?;
        let (dims, qkv) = qkv.try_extract_tensor::<f32>()?;
        let (_, bias) = bias.try_extract_tensor::<f32>()?;
        let (mask_dims, mask) = mask.try_extract_tensor::<i32>()?;
        let dims: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
        if self.unpadded {
            return self.unpadded(ctx, &dims, qkv, bias, mask, mask_dims);
        }
        let &[batch, seq, wide] = dims.as_slice() else {
            return Err(ort::Error::new(format!("akidb Attention: qkv must be [batch, seq, 3·hidden], got {dims:?}")));
        };
        let hidden = wide / 3;
        let head_size = hidden / self.heads;
        let shape = Shape { batch, seq, heads: self.heads, head_size, scale: self.scale };
        if wide % 3 != 0 || hidden % self.heads != 0 || !supported_head_size(head_size) {
            return Err(ort::Error::new(format!("akidb Attention: unsupported shape {dims:?}, {} heads", self.heads)));
        }
        if bias.len() != wide || mask.len() != batch * seq || mask_dims.len() != 2 {
            return Err(ort::Error::new("akidb Attention: bias or mask does not match qkv"));
        }
        let out_dims = [batch as i64, seq as i64, hidden as i64];
        let mut out = ctx.output(0, out_dims.to_vec())?.ok_or_else(|| ort::Error::new("akidb Attention: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        if out.len() != batch * seq * hidden {
            return Err(ort::Error::new("akidb Attention: output of the wrong size"));
        }
        let out = Out::new(out);
        // SAFETY: sizes checked above; ONNX Runtime runs each item once, and items write
        // disjoint parts of `out`.
        ctx.par_for(shape.items(), shape.items(), |i| unsafe { item(qkv, bias, mask, out, &shape, i) })
    }
}

impl AttentionKernel {
    fn unpadded(
        &self,
        ctx: &ort::operator::ComputeContext,
        dims: &[usize],
        qkv: &[f32],
        bias: &[f32],
        mask: &[i32],
        mask_dims: &[i64],
    ) -> ort::Result<()> {
        let (&[tokens, wide], &[batch, seq]) = (dims, mask_dims) else {
            return Err(ort::Error::new(format!(
                "akidb Attention: unpadded qkv must be [tokens, 3·hidden], got {dims:?}"
            )));
        };
        let (batch, seq) = (usize::try_from(batch).unwrap_or(0), usize::try_from(seq).unwrap_or(0));
        let hidden = wide / 3;
        let head_size = hidden / self.heads;
        if wide % 3 != 0 || hidden % self.heads != 0 || !supported_head_size(head_size) || bias.len() != wide {
            return Err(ort::Error::new(format!("akidb Attention: unsupported shape {dims:?}, {} heads", self.heads)));
        }
        let starts = Unpad::starts(mask, batch, seq)
            .filter(|s| s.last() == Some(&tokens))
            .ok_or_else(|| ort::Error::new("akidb Attention: the mask does not match the unpadded tokens"))?;
        let shape = Shape { batch, seq, heads: self.heads, head_size, scale: self.scale };
        let ones = vec![1i32; seq];
        let out_dims = [tokens as i64, hidden as i64];
        let mut out = ctx.output(0, out_dims.to_vec())?.ok_or_else(|| ort::Error::new("akidb Attention: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        if out.len() != tokens * hidden {
            return Err(ort::Error::new("akidb Attention: output of the wrong size"));
        }
        let out = Out::new(out);
        // SAFETY: sizes checked above; each item runs once and writes its own rows and columns.
        ctx.par_for(shape.items(), shape.items(), |i| unsafe {
            item_unpadded(qkv, bias, &starts, &ones, out, &shape, i)
        })
    }
}

/// Drops the padding rows of a batch: [batch, seq, hidden] → [tokens, hidden], the real tokens
/// of row 0, then row 1, …; [`Repad`] undoes it. Between the two, every matrix product, LayerNorm
/// and GELU works on real tokens only, and attention knows each row's tokens from the mask.
pub struct Unpad;

impl Unpad {
    /// Where each row's tokens start among the unpadded ones, and (last) how many there are.
    pub fn starts(mask: &[i32], batch: usize, seq: usize) -> Option<Vec<usize>> {
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
    pub fn run(x: &[f32], mask: &[i32], hidden: usize, out: &mut [f32]) {
        let rows = x.chunks_exact(hidden).zip(mask).filter(|(_, &m)| m != 0).map(|(r, _)| r);
        for (dst, src) in out.chunks_exact_mut(hidden).zip(rows) {
            dst.copy_from_slice(src);
        }
    }

    /// Puts the rows of `u` [tokens, hidden] back where `mask` has real tokens; padding gets 0.
    pub fn undo(u: &[f32], mask: &[i32], hidden: usize, out: &mut [f32]) {
        let mut real = u.chunks_exact(hidden);
        for (dst, &m) in out.chunks_exact_mut(hidden).zip(mask) {
            match (m != 0).then(|| real.next()).flatten() {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0.0),
            }
        }
    }
}

/// The `Unpad` operator: `(x [batch, seq, hidden], mask int32 [batch, seq]) → [tokens, hidden]`.
struct UnpadOp;
/// The `Repad` operator: `(u [tokens, hidden], mask int32 [batch, seq]) → [batch, seq, hidden]`.
struct RepadOp;

/// The padded operator names in [`DOMAIN`].
pub const UNPAD: &str = "Unpad";
pub const REPAD: &str = "Repad";

fn pad_io() -> [ort::operator::OperatorInput; 2] {
    use ort::{operator::OperatorInput, value::TensorElementType};
    [OperatorInput::required(TensorElementType::Float32), OperatorInput::required(TensorElementType::Int32)]
}

impl ort::operator::Operator for UnpadOp {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        UNPAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        pad_io()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, _: &ort::operator::KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ort::operator::ComputeContext| {
            let (x, mask) = pad_inputs(ctx)?;
            let (dims, x) = x.try_extract_tensor::<f32>()?;
            let (mask_dims, mask) = mask.try_extract_tensor::<i32>()?;
            let (&[b, s, h], &[mb, ms]) = (&dims[..], &mask_dims[..]) else {
                return Err(ort::Error::new("akidb Unpad: x must be [batch, seq, hidden], mask [batch, seq]"));
            };
            let (hidden, tokens) = (usize::try_from(h).unwrap_or(0), mask.iter().filter(|&&m| m != 0).count());
            if (b, s) != (mb, ms) || hidden == 0 || x.len() != mask.len() * hidden {
                return Err(ort::Error::new("akidb Unpad: x and mask do not match"));
            }
            let mut out =
                ctx.output(0, vec![tokens as i64, h])?.ok_or_else(|| ort::Error::new("akidb Unpad: no output"))?;
            Unpad::run(x, mask, hidden, out.try_extract_tensor_mut::<f32>()?.1);
            Ok(())
        }))
    }
}

impl ort::operator::Operator for RepadOp {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        REPAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        pad_io()
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        float_output()
    }

    fn create_kernel<'attr>(&self, _: &ort::operator::KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ort::operator::ComputeContext| {
            let (u, mask) = pad_inputs(ctx)?;
            let (dims, u) = u.try_extract_tensor::<f32>()?;
            let (mask_dims, mask) = mask.try_extract_tensor::<i32>()?;
            let (&[tokens, h], &[b, s]) = (&dims[..], &mask_dims[..]) else {
                return Err(ort::Error::new("akidb Repad: u must be [tokens, hidden], mask [batch, seq]"));
            };
            let hidden = usize::try_from(h).unwrap_or(0);
            let real = mask.iter().filter(|&&m| m != 0).count();
            if hidden == 0 || usize::try_from(tokens).ok() != Some(real) || u.len() != real * hidden {
                return Err(ort::Error::new("akidb Repad: u and mask do not match"));
            }
            let mut out = ctx.output(0, vec![b, s, h])?.ok_or_else(|| ort::Error::new("akidb Repad: no output"))?;
            Unpad::undo(u, mask, hidden, out.try_extract_tensor_mut::<f32>()?.1);
            Ok(())
        }))
    }
}

fn pad_inputs(
    ctx: &ort::operator::ComputeContext,
) -> ort::Result<(ort::value::ValueRef<'_>, ort::value::ValueRef<'_>)> {
    let input = |i: usize| ctx.input(i)?.ok_or_else(|| ort::Error::new("akidb Unpad/Repad: missing input"));
    Ok((input(0)?, input(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_with_padding_and_holes() {
        for (head_size, heads) in [(32, 12), (16, 2), (64, 2), (128, 1)] {
            let s = Shape { batch: 3, seq: 37, heads, head_size, scale: 1.0 / (head_size as f32).sqrt() };
            let qkv = data(s.batch * s.seq * 3 * s.hidden(), head_size as u64);
            let bias = data(3 * s.hidden(), 7);
            let mut mask = vec![1i32; s.batch * s.seq];
            mask[37 - 5..37].fill(0); // row 0: 5 padded
            mask[37 + 3] = 0; // row 1: a hole
            mask[2 * 37 + 1..].fill(0); // row 2: one real token
            let want = naive(&qkv, &bias, &mask, &s);
            for isa in Isa::available() {
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
    }

    #[test]
    fn the_residual_layer_norm_matches_the_definition() {
        let (rows, h) = (37, 48);
        let (x, residual, bias, gamma, beta) =
            (data(rows * h, 1), data(rows * h, 2), data(h, 3), data(h, 4), data(h, 5));
        let norm = Norm { x: &x, residual: &residual, bias: &bias, gamma: &gamma, beta: &beta, eps: 1e-12 };
        assert_eq!(norm.items(), Some(3));
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; rows * h];
            // SAFETY: `out` is as long as `x`; rows one after another.
            unsafe { norm.rows_on(isa, out.as_mut_ptr(), 0..rows) };
            for r in 0..rows {
                let y: Vec<f64> = (0..h).map(|c| (x[r * h + c] + bias[c] + residual[r * h + c]) as f64).collect();
                let mean = y.iter().sum::<f64>() / h as f64;
                let var = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / h as f64;
                for c in 0..h {
                    let want = (y[c] - mean) / (var + 1e-12).sqrt() * gamma[c] as f64 + beta[c] as f64;
                    let got = out[r * h + c] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{isa:?} [{r}, {c}]: {got} vs {want}");
                }
            }
        }
        // Rows without tokens (seq = 0) still get their start.
        assert_eq!(Unpad::starts(&[], 3, 0), Some(vec![0, 0, 0, 0]));
        // Sizes that do not fit are refused, not run.
        assert_eq!(Norm { gamma: &gamma[..40], ..norm }.items(), None);
    }

    /// erf by its Taylor series in f64, exact enough for |x| ≤ 4.3.
    fn erf(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-18 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn bias_gelu_matches_the_definition() {
        let (rows, n) = (9, 32);
        let x: Vec<f32> = (0..rows * n).map(|i| -6.0 + 12.0 * i as f32 / (rows * n) as f32).collect();
        let bias: Vec<f32> = data(n, 9).iter().map(|b| b * 0.01).collect();
        let gelu = Gelu { x: &x, bias: &bias };
        assert_eq!(gelu.items(), Some(2));
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; rows * n];
            // SAFETY: `out` is as long as `x`; rows one after another.
            unsafe { gelu.rows_on(isa, out.as_mut_ptr(), 0..rows) };
            for (i, &got) in out.iter().enumerate() {
                let v = x[i] as f64 + bias[i % n] as f64;
                let want = 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
                assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{isa:?} GELU({v}): {got} vs {want}");
            }
        }
        assert_eq!(Gelu { x: &x[..40], bias: &bias }.items(), None);
    }

    #[test]
    fn unpadded_attention_equals_padded_on_the_real_tokens() {
        let s = Shape { batch: 3, seq: 21, heads: 2, head_size: 32, scale: 0.2 };
        let hidden = s.hidden();
        let qkv = data(s.batch * s.seq * 3 * hidden, 11);
        let bias = data(3 * hidden, 12);
        let mut mask = vec![1i32; s.batch * s.seq];
        mask[21 - 6..21].fill(0); // row 0: 15 real
        mask[2 * 21 + 4..].fill(0); // row 2: 4 real
        let mut padded = vec![0f32; s.batch * s.seq * hidden];
        attention_on(Isa::best(), &qkv, &bias, &mask, &mut padded, &s);

        let starts = Unpad::starts(&mask, s.batch, s.seq).unwrap();
        assert_eq!(starts, [0, 15, 36, 40]);
        let mut u = vec![f32::NAN; 40 * 3 * hidden];
        Unpad::run(&qkv, &mask, 3 * hidden, &mut u);
        let mut out = vec![f32::NAN; 40 * hidden];
        let (ones, ptr) = (vec![1i32; s.seq], Out::new(&mut out));
        for i in 0..s.items() {
            // SAFETY: sizes as built above; items one after another.
            unsafe { item_unpadded(&u, &bias, &starts, &ones, ptr, &s, i) };
        }
        let mut back = vec![f32::NAN; s.batch * s.seq * hidden];
        Unpad::undo(&out, &mask, hidden, &mut back);
        for (i, (a, b)) in back.iter().zip(&padded).enumerate() {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut x: Vec<f32> = (0..20000).map(|i| -90.0 + i as f32 * 0.0045).collect();
        let want: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
        exp_shifted(&mut x, 0.0);
        for (a, b) in x.iter().zip(&want) {
            if *b < 1.7e-38 {
                assert!(*a <= 2e-38, "{a} vs {b}");
            } else {
                assert!((*a as f64 - b).abs() <= 3e-7 * b, "{a} vs {b}");
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Single-thread GFLOP/s of each instruction set at corpus-like shapes:
    /// `cargo test --release --lib kernel::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gflops() {
        for isa in Isa::available() {
            for (b, s) in [(10usize, 100usize), (48, 21), (4, 256), (1, 12)] {
                let shape = Shape { batch: b, seq: s, heads: 12, head_size: 32, scale: 0.17 };
                let qkv: Vec<f32> = (0..b * s * 3 * 384).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
                let (bias, mask) = (vec![0.1f32; 3 * 384], vec![1i32; b * s]);
                let mut out = vec![0f32; b * s * 384];
                attention_on(isa, &qkv, &bias, &mask, &mut out, &shape);
                let n = 50;
                let t = std::time::Instant::now();
                for _ in 0..n {
                    attention_on(isa, &qkv, &bias, &mask, &mut out, &shape);
                }
                let secs = t.elapsed().as_secs_f64() / n as f64;
                let flop = (b * 12 * s * s * 32 * 4) as f64;
                println!("{isa:?} {b}x{s}: {:.3} ms, {:.1} GFLOP/s", secs * 1e3, flop / secs / 1e9);
            }
        }
    }
}
