//! The row-wise kernels between the attention blocks: each turns two or three passes of ONNX
//! Runtime over memory into one. [`Norm`] is the residual LayerNorm (bias `Add`, residual `Add`,
//! `LayerNormalization`), [`Gelu`] the feed-forward activation with its bias (`Add`, `Gelu`).
//! Both split their rows into parallel items; `item` is the entry point the operator calls once
//! per item, and checks the sizes' invariants in debug builds.

use std::ops::Range;

use crate::simd::{exp, hsum, Isa, Kernel, Out, V16, W};

/// One residual LayerNorm: `out = LayerNorm(x + bias + residual) · gamma + beta` over rows of
/// `hidden` (a multiple of 16) — what follows the attention output and the feed-forward output in
/// a BERT layer. ONNX Runtime runs it as two `Add`s and a `LayerNormalization`, three passes over
/// memory; here it is one pass (the row's sum stays in L1 for its statistics).
pub(crate) struct Norm<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) residual: &'a [f32],
    pub(crate) bias: &'a [f32],
    pub(crate) gamma: &'a [f32],
    pub(crate) beta: &'a [f32],
    pub(crate) eps: f32,
}

impl Norm<'_> {
    fn hidden(&self) -> usize {
        self.gamma.len()
    }

    /// Rows of one parallel item: enough to amortize the hand-off, few enough to share 2+ cores.
    const ROWS: usize = 16;

    /// `None` when the sizes do not fit together.
    pub(crate) fn items(&self) -> Option<usize> {
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
    /// `items()` is `Some(n)` with `item < n`, `out` holds `x.len()` floats, and no two
    /// concurrent calls on one `out` share an item.
    pub(crate) unsafe fn item(&self, out: Out<'_>, item: usize) {
        debug_assert!(self.items().is_some_and(|n| item < n), "item {item} of {:?}", self.items());
        debug_assert_eq!(out.len(), self.x.len(), "output vs x");
        let rows = self.x.len() / self.hidden();
        let range = item * Self::ROWS..((item + 1) * Self::ROWS).min(rows);
        // SAFETY: `out` holds x.len() floats and this item's rows are its alone (the caller's
        // promises), so `rows_on`'s contract holds; the best set is one the CPU has.
        unsafe { self.rows_on(Isa::best(), out.at(0), range) }
    }

    /// Normalizes rows `rows` into `out` on instruction set `isa`.
    ///
    /// # Safety
    /// The CPU supports `isa`; `items()` is `Some`; `rows` lies within `x`'s rows; `out` is valid
    /// for writes of `x.len()` floats, of which those of `rows` nothing else accesses meanwhile.
    unsafe fn rows_on(&self, isa: Isa, out: *mut f32, rows: Range<usize>) {
        debug_assert!(self.items().is_some(), "sizes that do not fit");
        debug_assert!(rows.start <= rows.end && rows.end * self.hidden() <= self.x.len(), "rows {rows:?}");
        // SAFETY: the caller's promises are `NormRows`' contract, and the CPU supports `isa`.
        unsafe { isa.run(NormRows { n: self, out, rows }) }
    }
}

/// [`norm_rows`] as a [`Kernel`]; its contract is [`Norm::rows_on`]'s on its fields.
struct NormRows<'n, 'a> {
    n: &'n Norm<'a>,
    out: *mut f32,
    rows: Range<usize>,
}

impl Kernel for NormRows<'_, '_> {
    #[inline(always)]
    unsafe fn run<S: V16>(self) {
        // SAFETY: the CPU supports `S` and the fields meet `norm_rows`' contract (`Kernel::run`'s
        // contract and `NormRows`', both the caller's).
        unsafe { norm_rows::<S>(self.n, self.out, self.rows) }
    }
}

/// # Safety
/// The CPU supports `S` ([`V16`]'s contract), and `n`, `out` and `rows` meet [`Norm::rows_on`]'s
/// contract.
#[inline(always)]
unsafe fn norm_rows<S: V16>(n: &Norm<'_>, out: *mut f32, rows: Range<usize>) {
    let h = n.hidden();
    let mut y = vec![0f32; h];
    // SAFETY: the CPU supports `S` (our caller's promise); every offset is below row · h + h ≤
    // x.len() = residual.len() (rows lie within x's rows; `items` is `Some`), which `out` is valid
    // for and where this call's rows are its own, or below h for the per-column vectors and `y`
    // (bias, gamma, beta have h floats: `items` is `Some`), 16 at a time (h is a multiple of 16).
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
pub(crate) struct Gelu<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) bias: &'a [f32],
}

impl Gelu<'_> {
    const ROWS: usize = 8;

    /// `None` when the sizes do not fit together.
    pub(crate) fn items(&self) -> Option<usize> {
        let n = self.bias.len();
        (n > 0 && n.is_multiple_of(W) && self.x.len().is_multiple_of(n))
            .then(|| (self.x.len() / n).div_ceil(Self::ROWS))
    }

    /// Applies the activation to the rows of item `item`, into `out` (as long as `x`).
    ///
    /// # Safety
    /// As [`Norm::item`].
    pub(crate) unsafe fn item(&self, out: Out<'_>, item: usize) {
        debug_assert!(self.items().is_some_and(|n| item < n), "item {item} of {:?}", self.items());
        debug_assert_eq!(out.len(), self.x.len(), "output vs x");
        let rows = self.x.len() / self.bias.len();
        let range = item * Self::ROWS..((item + 1) * Self::ROWS).min(rows);
        // SAFETY: `out` holds x.len() floats and this item's rows are its alone (the caller's
        // promises), so `rows_on`'s contract holds; the best set is one the CPU has.
        unsafe { self.rows_on(Isa::best(), out.at(0), range) }
    }

    /// Applies the activation to rows `rows`, into `out`, on instruction set `isa`.
    ///
    /// # Safety
    /// As [`Norm::rows_on`].
    unsafe fn rows_on(&self, isa: Isa, out: *mut f32, rows: Range<usize>) {
        debug_assert!(self.items().is_some(), "sizes that do not fit");
        debug_assert!(rows.start <= rows.end && rows.end * self.bias.len() <= self.x.len(), "rows {rows:?}");
        // SAFETY: the caller's promises are `GeluRows`' contract, and the CPU supports `isa`.
        unsafe { isa.run(GeluRows { g: self, out, rows }) }
    }
}

/// [`gelu_rows`] as a [`Kernel`]; its contract is [`Gelu::rows_on`]'s on its fields.
struct GeluRows<'g, 'a> {
    g: &'g Gelu<'a>,
    out: *mut f32,
    rows: Range<usize>,
}

impl Kernel for GeluRows<'_, '_> {
    #[inline(always)]
    unsafe fn run<S: V16>(self) {
        // SAFETY: the CPU supports `S` and the fields meet `gelu_rows`' contract (`Kernel::run`'s
        // contract and `GeluRows`', both the caller's).
        unsafe { gelu_rows::<S>(self.g, self.out, self.rows) }
    }
}

/// GELU with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): with a = |v| and
/// e = erfc(a/√2) = t·p(t)·exp(-a²/2), t = 1/(1 + 0.3275911·a/√2), GELU(v) = max(v, 0) - a·e/2
/// for either sign of v, so no branch or sign copy is needed.
///
/// # Safety
/// The CPU supports `S` ([`V16`]'s contract).
#[inline(always)]
unsafe fn gelu<S: V16>(v: S) -> S {
    // SAFETY: register arithmetic only; the CPU supports `S` (our caller's promise).
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

/// # Safety
/// The CPU supports `S` ([`V16`]'s contract), and `g`, `out` and `rows` meet [`Gelu::rows_on`]'s
/// contract.
#[inline(always)]
unsafe fn gelu_rows<S: V16>(g: &Gelu<'_>, out: *mut f32, rows: Range<usize>) {
    let n = g.bias.len();
    // SAFETY: the CPU supports `S` (our caller's promise); offsets are below row · n + n ≤ x.len()
    // (rows lie within x's rows), which `out` is valid for and where this call's rows are its
    // own, or below n for the bias, 16 at a time (n is a multiple of 16: `items` is `Some`).
    unsafe {
        for row in rows {
            let (x, o) = (g.x.as_ptr().add(row * n), out.add(row * n));
            for c in (0..n).step_by(W) {
                gelu(S::load(x.add(c)).add(S::load(g.bias.as_ptr().add(c)))).store(o.add(c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::data;

    fn the_residual_layer_norm_matches_the_definition(isa: Isa) {
        // Under Miri, 17 rows: still one full item of 16 and a short one.
        let (rows, h) = (if cfg!(miri) { 17 } else { 37 }, 48);
        let (x, residual, bias, gamma, beta) =
            (data(rows * h, 1), data(rows * h, 2), data(h, 3), data(h, 4), data(h, 5));
        let norm = Norm { x: &x, residual: &residual, bias: &bias, gamma: &gamma, beta: &beta, eps: 1e-12 };
        assert_eq!(norm.items(), Some(rows.div_ceil(16)));
        let mut out = vec![f32::NAN; rows * h];
        let ptr = Out::new(&mut out);
        for i in 0..norm.items().unwrap() {
            // SAFETY: `out` is as long as `x`; items one after another; `per_isa!` runs only
            // instruction sets the CPU has.
            unsafe { norm.rows_on(isa, ptr.at(0), i * 16..((i + 1) * 16).min(rows)) };
        }
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

    fn bias_gelu_matches_the_definition(isa: Isa) {
        let (rows, n) = (9, 32);
        let x: Vec<f32> = (0..rows * n).map(|i| -6.0 + 12.0 * i as f32 / (rows * n) as f32).collect();
        let bias: Vec<f32> = data(n, 9).iter().map(|b| b * 0.01).collect();
        let gelu = Gelu { x: &x, bias: &bias };
        assert_eq!(gelu.items(), Some(2));
        let mut out = vec![f32::NAN; rows * n];
        // SAFETY: `out` is as long as `x`; one call over all rows; `per_isa!` runs only
        // instruction sets the CPU has.
        unsafe { gelu.rows_on(isa, out.as_mut_ptr(), 0..rows) };
        for (i, &got) in out.iter().enumerate() {
            let v = x[i] as f64 + bias[i % n] as f64;
            let want = 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
            assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{isa:?} GELU({v}): {got} vs {want}");
        }
        assert_eq!(Gelu { x: &x[..40], bias: &bias }.items(), None);
    }

    crate::tests::per_isa!(the_residual_layer_norm_matches_the_definition, bias_gelu_matches_the_definition);
}
