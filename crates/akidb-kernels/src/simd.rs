//! Where the kernels meet the CPU's vector instructions, so that nothing else has to: the
//! kernels are written once against [`V16`] (sixteen floats), and [`Isa::run`] runs one on the
//! best instruction set the CPU has (AVX-512, AVX2 + FMA, or portable Rust). Every
//! `#[target_feature]` function of the crate is here, next to the run-time check that makes
//! calling it sound; so are the math shared by several kernels ([`exp`], [`hsum`]) and [`Out`],
//! the handle through which parallel items write their disjoint parts of one output.

use std::marker::PhantomData;

/// Floats per [`V16`]: the kernels' widths (head sizes, hidden sizes) are multiples of it.
pub(crate) const W: usize = 16;

/// Sixteen floats, in whatever registers the CPU has: the kernels are written once against this.
///
/// # Safety
/// For callers: the methods are `unsafe` because implementations use vendor intrinsics. A value
/// of an implementing type may only be made, and its methods called, where the CPU supports the
/// type's instruction set and the calling code is compiled with it enabled: inside a
/// [`Kernel::run`] that [`Isa::run`] called with the matching [`Isa`], which is how every kernel
/// reaches these types. [`Portable`] needs no CPU feature. [`V16::load`] and [`V16::store`]
/// also state what they need of their pointer; the other methods need nothing more.
///
/// For implementors: `load` reads and `store` writes exactly the 16 floats at their pointer
/// (unaligned), and no other method touches memory: the kernels' bounds arguments count on it.
/// Methods are `#[inline(always)]` without `#[target_feature]` of their own, so they inline into
/// the `#[target_feature]` function of [`Isa::run`] that calls the kernel.
pub(crate) unsafe trait V16: Copy {
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// # Safety
    /// As the trait, and: `p` is valid for reads of 16 floats (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// As the trait, and: `p` is valid for writes of 16 floats (no alignment needed) that nothing
    /// else accesses meanwhile.
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
    #[inline(always)]
    unsafe fn to_array(self) -> [f32; 16] {
        let mut a = [0f32; 16];
        // SAFETY: `a` is 16 writable floats of our own; the CPU supports `Self` (the trait's
        // contract, passed on by our caller).
        unsafe { self.store(a.as_mut_ptr()) };
        a
    }
}

/// A computation written once against [`V16`], for [`Isa::run`] to run on an instruction set.
/// Implementations are `#[inline(always)]`, so the kernel is compiled for the set that runs it.
pub(crate) trait Kernel {
    /// Runs the kernel with vectors `S`.
    ///
    /// # Safety
    /// The CPU supports `S`'s instruction set ([`V16`]'s contract; [`Isa::run`] ensures it), and
    /// whatever the implementing type's own documentation requires of its fields holds.
    unsafe fn run<S: V16>(self);
}

/// The instruction sets the kernels are compiled for; the best one the CPU has is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    /// Plain Rust over 16-float arrays, left to the compiler to vectorize.
    Portable,
}

impl Isa {
    /// Every set this CPU can run, best first.
    pub(crate) fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable].into_iter().filter(|isa| isa.supported()).collect()
    }

    /// The best set this CPU can run, detected once.
    pub(crate) fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Isa::available()[0])
    }

    /// Whether this CPU can run `self`: the precondition of [`Isa::run`]. Under Miri only
    /// [`Isa::Portable`] is offered (Miri runs no `#[target_feature]` code the build did not enable).
    pub(crate) fn supported(self) -> bool {
        match self {
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(all(target_arch = "x86_64", not(miri)))]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            Isa::Portable => true,
            #[allow(unreachable_patterns)] // reachable on other targets and under Miri
            _ => false,
        }
    }

    /// Runs `kernel` on this instruction set.
    ///
    /// # Safety
    /// The CPU supports `self` ([`Isa::supported`]; true of every value of [`Isa::available`] and
    /// [`Isa::best`]), and `kernel` meets its own [`Kernel::run`] contract.
    #[inline(always)]
    pub(crate) unsafe fn run<K: Kernel>(self, kernel: K) {
        debug_assert!(self.supported(), "{self:?} is not supported on this CPU");
        match self {
            // SAFETY: the caller guarantees the CPU has AVX-512F, all `avx512` needs; `kernel`'s
            // own contract is the caller's too.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::avx512(kernel) },
            // SAFETY: the caller guarantees the CPU has AVX2 and FMA, all `avx2` needs; `kernel`'s
            // own contract is the caller's too.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::avx2(kernel) },
            // SAFETY: `Portable` needs no CPU feature; `kernel`'s own contract is the caller's.
            _ => unsafe { kernel.run::<Portable>() },
        }
    }
}

/// Where one call of a kernel writes: an output buffer shared by the call's parallel items, each
/// writing only its own elements (which ones is the contract of the `unsafe fn` that writes).
/// The `'a` borrow keeps the buffer alive and otherwise untouched while any copy exists.
#[derive(Clone, Copy)]
pub(crate) struct Out<'a> {
    ptr: *mut f32,
    len: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

// SAFETY: an `Out` is an address and a length, and reads or writes nothing by itself. Every
// write through it is in an `unsafe fn` (`attention::item`, `attention::item_unpadded`,
// `Norm::item`, `Gelu::item`) whose contract has concurrent callers write disjoint elements, and
// the `'a` borrow keeps the buffer alive and unaliased meanwhile: sending or sharing it between
// threads is what `&'a mut [f32]` split into disjoint parts would allow.
unsafe impl Send for Out<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for Out<'_> {}

impl<'a> Out<'a> {
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        Out { ptr: out.as_mut_ptr(), len: out.len(), _buffer: PhantomData }
    }

    /// The buffer's length in floats.
    pub(crate) fn len(self) -> usize {
        self.len
    }

    /// The address of element `offset`.
    ///
    /// # Safety
    /// `offset ≤ self.len()`.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        debug_assert!(offset <= self.len, "offset {offset} past an output of {}", self.len);
        // SAFETY: `offset ≤ len` (the caller's promise), so the result stays inside (or one past)
        // the buffer `ptr` points to, which the `'a` borrow keeps alive.
        unsafe { self.ptr.add(offset) }
    }
}

/// 1.5 · 2^23: adding it rounds a float to an integer, kept in the low mantissa bits.
pub(crate) const ROUND: f32 = 12_582_912.0;

/// exp(y) = 2^k · p(r) with y = k·ln2 + r, |r| ≤ ln2/2 and p of degree 6 (relative error
/// < 2e-7); y is clamped at -87, where exp is ~1e-38 (nothing, next to the row's maximum's 1).
///
/// # Safety
/// The CPU supports `S` ([`V16`]'s contract).
#[inline(always)]
pub(crate) unsafe fn exp<S: V16>(y: S) -> S {
    // SAFETY: register arithmetic only; the CPU supports `S` (our caller's promise).
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

/// The sum of the 16 lanes.
///
/// # Safety
/// The CPU supports `S` ([`V16`]'s contract).
#[inline(always)]
pub(crate) unsafe fn hsum<S: V16>(v: S) -> f32 {
    // SAFETY: the CPU supports `S` (our caller's promise).
    unsafe { v.to_array() }.iter().sum()
}

/// Portable Rust: sixteen floats in an array.
#[derive(Clone, Copy)]
pub(crate) struct Portable(pub(crate) [f32; 16]);

impl Portable {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Portable(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }
}

// SAFETY: `load` and `store` touch exactly the 16 floats at their pointer, nothing else touches
// memory, and no method assumes a CPU feature.
unsafe impl V16 for Portable {
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
        // SAFETY: `p` is valid for reads of 16 floats (`load`'s contract); unaligned is allowed.
        Portable(unsafe { p.cast::<[f32; 16]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: `p` is valid for writes of 16 floats (`store`'s contract); unaligned is allowed.
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

/// The x86-64 vectors and the `#[target_feature]` functions that run kernels on them.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Kernel, ROUND, V16};

    /// `x` rounded to bf16 pairs, 32 floats per `vcvtne2ps2bf16`; the tail through masks.
    ///
    /// # Safety
    /// As [`super::bf16_pairs`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_pairs(x: &[f32], a: &mut [u32]) {
        let (xp, ap) = (x.as_ptr(), a.as_mut_ptr());
        let mut i = 0;
        // SAFETY: each full step reads x[i .. i + 32] (i + 32 ≤ x.len()) and writes
        // a[i/2 .. i/2 + 16]; the tail reads only x's remaining `rest` floats and writes ⌈rest/2⌉
        // pairs, inside `a` (⌈x.len() / 2⌉ long: the caller's promise); the CPU has AVX512-BF16.
        unsafe {
            while i + 32 <= x.len() {
                let (lo, hi) = (_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(xp.add(i + 16)));
                let pairs = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(ap.add(i / 2).cast(), pairs);
                i += 32;
            }
            let rest = x.len() - i;
            if rest > 0 {
                let mask = |n: usize| if n >= 16 { u16::MAX } else { ((1u32 << n) - 1) as u16 };
                let lo = _mm512_maskz_loadu_ps(mask(rest.min(16)), xp.add(i));
                let hi = _mm512_maskz_loadu_ps(mask(rest.saturating_sub(16)), xp.add(i + 16));
                let pairs = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(ap.add(i / 2).cast(), mask(rest.div_ceil(2)), pairs);
            }
        }
    }

    /// The bf16 micro-tile: `R` rows × 32 columns, 2·R fp32 accumulators, one `vdpbf16ps` per
    /// row, register and pair of `k`; the pair of `a` is broadcast from memory.
    ///
    /// # Safety
    /// As [`super::bf16_tile`], with `rows` = `R` ≤ 12 and pointers to its slices.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_tile<const R: usize>(
        a: *const u32,
        pairs: usize,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        // SAFETY: every read is inside `a` (R rows of `pairs`) or `b` (`pairs` blocks of 64), every
        // write inside the `R` × `cols` block of `c` the caller lends us; the CPU has AVX512-BF16.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for p in 0..pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 64).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 64 + 32).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + p) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
                }
            }
            // The panel's real columns: all 32 but in a weight's last, narrower panel.
            let mask = |n: usize| if n >= 16 { u16::MAX } else { ((1u32 << n) - 1) as u16 };
            let (low, high) = (mask(cols.min(16)), mask(cols.saturating_sub(16)));
            for (r, acc) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, low, acc[0]);
                _mm512_mask_storeu_ps(row.add(16), high, acc[1]);
            }
        }
    }

    /// Runs `kernel` compiled for AVX-512F.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, and `kernel` meets its [`Kernel::run`] contract.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512<K: Kernel>(kernel: K) {
        // SAFETY: `Avx512` needs AVX-512F, which the caller guarantees and this function enables;
        // `kernel`'s own contract is the caller's.
        unsafe { kernel.run::<Avx512>() }
    }

    /// Runs `kernel` compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA, and `kernel` meets its [`Kernel::run`] contract.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<K: Kernel>(kernel: K) {
        // SAFETY: `Avx2` needs AVX2 and FMA, which the caller guarantees and this function
        // enables; `kernel`'s own contract is the caller's.
        unsafe { kernel.run::<Avx2>() }
    }

    /// One AVX-512 register.
    #[derive(Clone, Copy)]
    struct Avx512(__m512);

    // SAFETY: `load`/`store` are unaligned 512-bit accesses of the 16 floats at their pointer;
    // the other methods are register operations. All are AVX-512F intrinsics, which V16's
    // contract lets callers use only where the CPU has AVX-512F (via `avx512` above).
    unsafe impl V16 for Avx512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_set1_ps(x) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the CPU has AVX-512F; `p` is valid for reads of 16 floats (`load`'s
            // contract), and `loadu` needs no alignment.
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the CPU has AVX-512F; `p` is valid for writes of 16 floats (`store`'s
            // contract), and `storeu` needs no alignment.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_div_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract).
            Avx512(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(t: Self) -> Self {
            // SAFETY: the CPU has AVX-512F (V16's contract); register operations only.
            unsafe {
                let bias = _mm512_set1_epi32(ROUND.to_bits() as i32 - 127);
                let n = _mm512_sub_epi32(_mm512_castps_si512(t.0), bias);
                Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(n)))
            }
        }
    }

    /// Two AVX registers: lanes 0–7, then 8–15.
    #[derive(Clone, Copy)]
    struct Avx2(__m256, __m256);

    // SAFETY: `load`/`store` are two unaligned 256-bit accesses covering the 16 floats at their
    // pointer (p..p+8, p+8..p+16); the other methods are register operations. All are AVX/AVX2/FMA
    // intrinsics, which V16's contract lets callers use only where the CPU has AVX2 and FMA (via
    // `avx2` above).
    unsafe impl V16 for Avx2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_set1_ps(x), _mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the CPU has AVX2; `p` is valid for reads of 16 floats (`load`'s contract):
            // two reads of 8, unaligned, the second at `p + 8`, inside them.
            unsafe { Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the CPU has AVX2; `p` is valid for writes of 16 floats (`store`'s
            // contract): two writes of 8, unaligned, the second at `p + 8`, inside them.
            unsafe {
                _mm256_storeu_ps(p, self.0);
                _mm256_storeu_ps(p.add(8), self.1);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            // SAFETY: the CPU has FMA (V16's contract).
            unsafe { Avx2(_mm256_fmadd_ps(a.0, b.0, self.0), _mm256_fmadd_ps(a.1, b.1, self.1)) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_div_ps(self.0, o.0), _mm256_div_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract).
            unsafe { Avx2(_mm256_max_ps(self.0, o.0), _mm256_max_ps(self.1, o.1)) }
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(t: Self) -> Self {
            // SAFETY: the CPU has AVX2 (V16's contract); register operations only.
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

/// Whether the CPU has AVX512-BF16 (`vdpbf16ps`): the precondition of [`bf16_tile`]. Never under
/// Miri (it runs no `#[target_feature]` code the build did not enable).
pub(crate) fn has_avx512_bf16() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        false
    }
}

/// `x` rounded to bf16 (to nearest even; subnormal inputs become zero, as `vcvtne2ps2bf16` has
/// it) as pairs: `a[p]` holds `x[2p]` in its low half and `x[2p + 1]` (0 past the end) in its high.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`has_avx512_bf16`]); `a.len()` = ⌈`x.len()` / 2⌉.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn bf16_pairs(x: &[f32], a: &mut [u32]) {
    assert_eq!(a.len(), x.len().div_ceil(2), "one pair per two floats");
    // SAFETY: the sizes were just checked; the CPU is the caller's promise.
    unsafe { x86::bf16_pairs(x, a) }
}

/// One micro-tile of the bf16 product (`bf16`): `rows` (≤ `bf16::MR`) rows of bf16 pairs `a`
/// (row-major: `a[r · pairs + p]`) times one packed panel `b`, the fp32 sums written to `cols`
/// (≤ 32) columns of `c`.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`has_avx512_bf16`]); `a` holds `rows · pairs` pairs and `b`
/// `pairs · 64` values; `c` is valid for writes of `rows` rows of `cols` floats at stride `ldc`
/// that nothing else accesses meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn bf16_tile(a: &[u32], pairs: usize, b: &[u16], c: *mut f32, ldc: usize, rows: usize, cols: usize) {
    debug_assert!(a.len() >= rows * pairs && b.len() >= pairs * 64 && cols <= 32);
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: the caller's promises are `tile`'s, with R = rows.
                $($r => unsafe { x86::bf16_tile::<$r>(a.as_ptr(), pairs, b.as_ptr(), c, ldc, cols) },)*
                _ => unreachable!("a micro-tile has 1 to 12 rows, not {rows}"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x = exp(x - shift)` on vectors `S`, in chunks of 16 (the last one zero-filled).
    struct ExpShifted<'a> {
        x: &'a mut [f32],
        shift: f32,
    }

    impl Kernel for ExpShifted<'_> {
        #[inline(always)]
        unsafe fn run<S: V16>(self) {
            for chunk in self.x.chunks_mut(W) {
                let mut a = [0f32; W];
                a[..chunk.len()].copy_from_slice(chunk);
                // SAFETY: `a` is 16 floats of our own, read and written back whole; the CPU
                // supports `S` (our caller's promise).
                unsafe {
                    exp(S::load(a.as_ptr()).sub(S::splat(self.shift))).store(a.as_mut_ptr());
                }
                chunk.copy_from_slice(&a[..chunk.len()]);
            }
        }
    }

    fn exp_is_accurate_over_the_softmax_range(isa: Isa) {
        // Under Miri, every 97th point of the range (still across the clamp at -87).
        let step = if cfg!(miri) { 97 } else { 1 };
        let mut x: Vec<f32> = (0..20000).step_by(step).map(|i| -90.0 + i as f32 * 0.0045).collect();
        let want: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
        // SAFETY: `isa` is supported (`per_isa!` runs only those); `ExpShifted` has no contract.
        unsafe { isa.run(ExpShifted { x: &mut x, shift: 0.0 }) };
        for (a, b) in x.iter().zip(&want) {
            if *b < 1.7e-38 {
                assert!(*a <= 2e-38, "{isa:?}: {a} vs {b}");
            } else {
                assert!((*a as f64 - b).abs() <= 3e-7 * b, "{isa:?}: {a} vs {b}");
            }
        }
    }

    crate::tests::per_isa!(exp_is_accurate_over_the_softmax_range);

    #[test]
    fn the_best_set_is_available_and_portable_always_is() {
        let all = Isa::available();
        assert_eq!(all[0], Isa::best());
        assert_eq!(all.last(), Some(&Isa::Portable));
        assert!(all.iter().all(|isa| isa.supported()));
    }
}
