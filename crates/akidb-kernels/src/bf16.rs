//! A matrix product with bf16 inputs and fp32 accumulation: `x · W` for activations `x` [rows, k]
//! (float32, rounded to bf16 as they are read) and weights `W` [k, n] converted to bf16 once, when
//! the graph is rewritten, and stored packed for the kernel ([`pack`]). On a CPU with AVX512-BF16
//! each `vdpbf16ps` multiplies 32 bf16 pairs into 16 fp32 sums: twice the multiply-adds of an
//! fp32 FMA of the same width, from half the weight bytes.
//!
//! Packed layout: panels of [`NR`] columns (the last one zero-padded); within a panel, for each
//! pair of rows `2p, 2p + 1` of `W` (an odd `k` gets a zero row), the 32 columns' pairs
//! `(W[2p][c], W[2p + 1][c])` one after the other: exactly the 64 bf16 two `vdpbf16ps` operands
//! take, so the kernel streams a panel front to back.
//!
//! Work is cut into items of [`MC`] rows × [`NC`] panels: an item converts its rows to bf16 once
//! and reuses each panel across its micro-tiles of [`MR`] rows × [`NR`] columns, and its panels
//! stay in L2 while it does.

use crate::simd::{self, Out};

/// Columns per panel: two 16-float registers.
pub const NR: usize = 32;
/// Rows per micro-tile: 12 × 2 accumulators + 2 panel registers of the 32 an AVX-512 CPU has.
pub const MR: usize = 12;
/// Rows per parallel item.
pub const MC: usize = 8 * MR;
/// Panels per parallel item: 256 columns, whose packed weights (k · 512 bytes) stay in L2 while
/// the item's micro-tiles go over them.
pub const NC: usize = 8;

/// `x` rounded to the nearest bf16 (ties to even), as its bits.
pub fn round(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The float a bf16's bits stand for.
pub fn widen(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// bf16 values the packed form of a [k, n] weight holds.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k.div_ceil(2) * NR * 2
}

/// `w` ([k, n], row-major, as ONNX `MatMul`'s second input) rounded to bf16 and packed for the
/// kernel (see the module's documentation).
pub fn pack(w: &[f32], k: usize, n: usize) -> Vec<u16> {
    assert_eq!(w.len(), k * n, "a [{k}, {n}] weight");
    let pairs = k.div_ceil(2);
    let mut out = vec![0u16; packed_len(k, n)];
    for panel in 0..n.div_ceil(NR) {
        for p in 0..pairs {
            for c in 0..NR {
                let col = panel * NR + c;
                if col >= n {
                    continue;
                }
                for e in 0..2 {
                    let row = 2 * p + e;
                    if row < k {
                        out[((panel * pairs + p) * NR + c) * 2 + e] = round(w[row * n + col]);
                    }
                }
            }
        }
    }
    out
}

/// One call's operands: `x` [rows, k] times the packed `w` of a [k, n] weight.
pub(crate) struct MatMul<'a> {
    pub x: &'a [f32],
    pub k: usize,
    pub n: usize,
    pub w: &'a [u16],
}

impl MatMul<'_> {
    /// Rows of `x` (0 when `k` is 0).
    pub(crate) fn rows(&self) -> usize {
        self.x.len().checked_div(self.k).unwrap_or(0)
    }

    /// Groups of [`NC`] panels.
    fn groups(&self) -> usize {
        self.n.div_ceil(NR).div_ceil(NC)
    }

    /// How many parallel items (of [`MC`] rows × [`NC`] panels) the call has, when the sizes fit
    /// each other; the precondition of [`MatMul::item`].
    pub(crate) fn items(&self) -> Option<usize> {
        let fits = self.k > 0
            && self.n > 0
            && self.x.len().is_multiple_of(self.k)
            && self.w.len() == packed_len(self.k, self.n);
        fits.then(|| self.rows().div_ceil(MC) * self.groups())
    }

    /// Item `i`: rows `(i / groups)·MC ..` of the output ([rows, n]) in the columns of panel
    /// group `i % groups`, on `isa`.
    ///
    /// # Safety
    /// [`MatMul::items`] is `Some(m)` with `i < m`; `out` holds `rows · n` floats; no other item
    /// with this `i` runs at the same time (items write disjoint blocks); `isa` is
    /// [`Bf16Isa::Avx512Bf16`] only on a CPU that has it ([`Bf16Isa::best`]).
    pub(crate) unsafe fn item(&self, out: Out<'_>, i: usize, isa: Bf16Isa) {
        let (k, n) = (self.k, self.n);
        let pairs = k.div_ceil(2);
        let (block, group) = (i / self.groups(), i % self.groups());
        let first = block * MC;
        let rows = MC.min(self.rows() - first);
        // This item's rows as bf16 pairs, one u32 per pair (low half the even column): what
        // `vdpbf16ps` broadcasts, row-major (`a[r · pairs + p]`), which is also the bit pattern
        // of the row rounded to bf16 (and padded to an even length).
        let mut a = vec![0u32; rows * pairs];
        for (r, a) in a.chunks_exact_mut(pairs).enumerate() {
            let x = &self.x[(first + r) * k..(first + r + 1) * k];
            match isa {
                // SAFETY: `a` holds `pairs` = ⌈x.len() / 2⌉ values; the CPU has the instructions
                // (the caller's promise).
                #[cfg(target_arch = "x86_64")]
                Bf16Isa::Avx512Bf16 => unsafe { simd::bf16_pairs(x, a) },
                _ => portable_pairs(x, a),
            }
        }
        for panel in group * NC..((group + 1) * NC).min(n.div_ceil(NR)) {
            let cols = NR.min(n - panel * NR);
            let b = &self.w[panel * pairs * NR * 2..(panel + 1) * pairs * NR * 2];
            let mut r = 0;
            while r < rows {
                let tile = MR.min(rows - r);
                let a = &a[r * pairs..(r + tile) * pairs];
                // SAFETY: rows first + r .. + tile < self.rows() and columns panel·NR .. + cols ≤ n,
                // so every element written is inside `out` ([rows, n]: the caller's promise) and
                // in this item's rows, which no other item writes; `a` holds `tile` rows of
                // `pairs`, `b` one panel of `pairs` pairs; the CPU has `isa` (the caller's promise).
                unsafe {
                    let c = out.at((first + r) * n + panel * NR);
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        Bf16Isa::Avx512Bf16 => simd::bf16_tile(a, pairs, b, c, n, tile, cols),
                        _ => portable_tile(a, pairs, b, c, n, tile, cols),
                    }
                }
                r += tile;
            }
        }
    }
}

/// The instruction sets the bf16 product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Isa {
    /// `vdpbf16ps` (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later).
    Avx512Bf16,
    /// Plain Rust with the same rounding and fp32 accumulation: a reference, and a way to run a
    /// bf16 graph on a CPU without the instructions (slowly).
    Portable,
}

impl Bf16Isa {
    /// Every set this CPU can run, best first.
    pub fn available() -> Vec<Bf16Isa> {
        let mut sets = Vec::new();
        if simd::has_avx512_bf16() {
            sets.push(Bf16Isa::Avx512Bf16);
        }
        sets.push(Bf16Isa::Portable);
        sets
    }

    /// The best set this CPU can run, detected once.
    pub fn best() -> Bf16Isa {
        static BEST: std::sync::OnceLock<Bf16Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Bf16Isa::available()[0])
    }
}

/// Whether this CPU multiplies bf16 in hardware (AVX512-BF16); what `--precision auto` asks.
pub fn hardware_bf16() -> bool {
    Bf16Isa::best() != Bf16Isa::Portable
}

/// `x` as bf16 pairs in plain Rust: `a[p]` holds `x[2p]` (low half) and `x[2p + 1]` (high half, 0
/// past the end), each rounded to nearest even.
fn portable_pairs(x: &[f32], a: &mut [u32]) {
    for (p, a) in a.iter_mut().enumerate() {
        let hi = x.get(2 * p + 1).map_or(0, |&v| u32::from(round(v)));
        *a = u32::from(round(x[2 * p])) | (hi << 16);
    }
}

/// A micro-tile in plain Rust: per output, the products of each bf16 pair summed in fp32. `a` is
/// row-major (`a[r · pairs + p]`), as [`MatMul::item`] lays it out.
///
/// # Safety
/// `c` is valid for writes of `rows` rows of `cols` floats at stride `ldc` that nothing else
/// accesses meanwhile; `a` holds `rows · pairs` pairs and `b` `pairs · NR · 2` values.
unsafe fn portable_tile(a: &[u32], pairs: usize, b: &[u16], c: *mut f32, ldc: usize, rows: usize, cols: usize) {
    for r in 0..rows {
        for col in 0..cols {
            let mut sum = 0f32;
            for p in 0..pairs {
                let pair = a[r * pairs + p];
                let lo = widen(pair as u16) * widen(b[(p * NR + col) * 2]);
                let hi = widen((pair >> 16) as u16) * widen(b[(p * NR + col) * 2 + 1]);
                sum += lo + hi;
            }
            // SAFETY: r < rows and col < cols: inside what the caller lets us write.
            unsafe { *c.add(r * ldc + col) = sum };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) that are not all representable in bf16.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product on `isa`, every item in turn.
    fn run(x: &[f32], k: usize, n: usize, w: &[u16], isa: Bf16Isa) -> Vec<f32> {
        let product = MatMul { x, k, n, w };
        let mut out = vec![f32::NAN; product.rows() * n];
        let items = product.items().expect("sizes fit");
        let handle = Out::new(&mut out);
        for i in 0..items {
            // SAFETY: i < items, the output holds rows · n floats, items run one at a time, and
            // `isa` comes from `Bf16Isa::available()`.
            unsafe { product.item(handle, i, isa) };
        }
        out
    }

    /// Against its definition in f64 (the bf16-rounded inputs multiplied exactly and summed), on
    /// every instruction set this CPU has: shapes with odd k, a narrow last panel, rows that
    /// leave a partial micro-tile and a partial item.
    #[test]
    fn matches_the_f64_definition_on_every_instruction_set() {
        for (rows, k, n) in [
            (1, 1, 1),
            (5, 3, 17),
            (13, 32, 33),
            (7, 50, 20),
            (3, 29, 64),
            (50, 384, 64),
            (61, 385, 96),
            (12, 1536, 40),
        ] {
            let (x, w) = (values(rows * k, 1), values(k * n, 2));
            let packed = pack(&w, k, n);
            for isa in Bf16Isa::available() {
                let got = run(&x, k, n, &packed, isa);
                for r in 0..rows {
                    for c in 0..n {
                        let (mut exact, mut scale) = (0f64, 0f64);
                        for i in 0..k {
                            let term = f64::from(widen(round(x[r * k + i]))) * f64::from(widen(round(w[i * n + c])));
                            exact += term;
                            scale += term.abs();
                        }
                        let err = (f64::from(got[r * n + c]) - exact).abs();
                        // fp32 sums of k terms: a few ulps of their magnitude per term.
                        assert!(
                            err <= 1e-6 * scale + 1e-7,
                            "{isa:?} [{rows}x{k}]·[{k}x{n}] ({r}, {c}): {} vs {exact} (|terms| {scale})",
                            got[r * n + c]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_packing_pairs_rows() {
        assert_eq!(round(1.0), 0x3f80);
        assert_eq!(widen(round(1.0 + 1.0 / 256.0)), 1.0, "a tie rounds to even");
        assert_eq!(widen(round(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        // W = [[1, 2], [3, 4], [5, 6]]: pairs (1, 3), (2, 4) then (5, 0), (6, 0); 30 zero columns.
        let packed = pack(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2);
        assert_eq!(packed.len(), packed_len(3, 2));
        let at = |p: usize, c: usize, e: usize| widen(packed[(p * NR + c) * 2 + e]);
        assert_eq!([at(0, 0, 0), at(0, 0, 1), at(0, 1, 0), at(0, 1, 1)], [1.0, 3.0, 2.0, 4.0]);
        assert_eq!([at(1, 0, 0), at(1, 0, 1), at(1, 1, 0), at(0, 2, 0)], [5.0, 0.0, 6.0, 0.0]);
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let w = pack(&[0.0; 6], 3, 2);
        assert_eq!(MatMul { x: &[0.0; 6], k: 3, n: 2, w: &w }.items(), Some(1));
        assert_eq!(MatMul { x: &[0.0; 7], k: 3, n: 2, w: &w }.items(), None, "x is not rows of k");
        assert_eq!(MatMul { x: &[0.0; 6], k: 2, n: 3, w: &w }.items(), None, "w is not [k, n] packed");
    }
}
