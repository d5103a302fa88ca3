//! What the kernels' unit tests share: test data, and [`per_isa!`], which names each test after
//! the instruction set it runs on, so one set's tests can be picked by name (Miri runs only the
//! `portable` ones: `cargo +nightly miri test -p akidb-kernels --lib portable`).

use crate::simd::Isa;

/// `n` pseudo-random floats in [-2, 2), the same for the same `seed`.
pub(crate) fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Runs `test` on `isa`, or says it is skipped where the CPU lacks `isa`.
pub(crate) fn on(isa: Isa, test: fn(Isa)) {
    if isa.supported() {
        test(isa);
    } else {
        eprintln!("{isa:?} is not supported here: skipped");
    }
}

/// For each function `name(isa: Isa)` of the calling module, the tests `portable::name`,
/// `avx2::name` and `avx512::name`, each running it on that instruction set (where the CPU has it).
macro_rules! per_isa {
    ($($test:ident),+ $(,)?) => {
        mod portable {
            $(#[test]
            fn $test() {
                $crate::tests::on($crate::simd::Isa::Portable, super::$test);
            })+
        }
        mod avx2 {
            $(#[test]
            fn $test() {
                $crate::tests::on($crate::simd::Isa::Avx2, super::$test);
            })+
        }
        mod avx512 {
            $(#[test]
            fn $test() {
                $crate::tests::on($crate::simd::Isa::Avx512, super::$test);
            })+
        }
    };
}
pub(crate) use per_isa;
