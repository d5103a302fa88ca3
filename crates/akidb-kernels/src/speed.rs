//! The attention kernel's speed on each instruction set, at corpus-like shapes: not a check (it
//! is `#[ignore]`d), a number to compare before and after a change to the kernel, single-threaded:
//! `cargo test -p akidb-kernels --release speed -- --ignored --nocapture`.

use crate::attention::{attention_on, Shape};
use crate::simd::Isa;

/// Single-thread GFLOP/s of each instruction set at corpus-like shapes.
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

/// Single-thread GFLOP/s of the bf16 product at MiniLM's shapes (2048 rows: a full batch) against
/// an fp32 reference count: `cargo test -p akidb-kernels --release speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn bf16_gflops() {
    use crate::bf16::{pack, Bf16Isa, MatMul};
    use crate::simd::Out;
    for (k, n) in [(384usize, 1152usize), (384, 384), (384, 1536), (1536, 384)] {
        let rows = 2048;
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let packed = pack(&w, k, n);
        let product = MatMul { x: &x, k, n, w: &packed };
        let mut out = vec![0f32; rows * n];
        let isa = Bf16Isa::best();
        let items = product.items().unwrap();
        let mut run = || {
            let handle = Out::new(&mut out);
            for i in 0..items {
                // SAFETY: i < items, the output holds rows · n floats, one item at a time, `isa`
                // is this CPU's best.
                unsafe { product.item(handle, i, isa) };
            }
        };
        run();
        let reps = 10;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            run();
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        let flop = (2 * rows * k * n) as f64;
        println!("{isa:?} [{rows}x{k}]·[{k}x{n}]: {:.2} ms, {:.1} GFLOP/s", secs * 1e3, flop / secs / 1e9);
    }
}

/// Single-thread GFLOP/s of the bf16 micro-tile alone, its operands in cache: the ceiling the
/// whole product (`bf16_gflops`) approaches (AVX512-BF16 only):
/// `cargo test -p akidb-kernels --release --lib bf16_tile_alone -- --ignored --nocapture`.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn bf16_tile_alone() {
    if !crate::simd::has_avx512_bf16() {
        return println!("no AVX512-BF16 on this CPU");
    }
    for k in [192usize, 384, 1536] {
        let pairs = k / 2;
        let a: Vec<u32> = (0..12 * pairs).map(|i| (i as u32 % 97) * 0x10001 + 0x3c00_3c00).collect();
        let b: Vec<u16> = (0..pairs * 64).map(|i| 0x3c00 + (i % 31) as u16).collect();
        let mut c = vec![0f32; 12 * 32];
        let reps = 20_000_000 / pairs;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            // SAFETY: `a` holds 12 rows of `pairs`, `b` one panel of `pairs`, `c` 12 rows of 32;
            // the CPU has AVX512-BF16 (checked above).
            unsafe { crate::simd::bf16_tile(&a, pairs, &b, c.as_mut_ptr(), 32, 12, 32) };
            std::hint::black_box(&mut c);
        }
        let secs = t.elapsed().as_secs_f64();
        println!("12x32 tile, k {k}: {:.1} GFLOP/s", (reps * 12 * 32 * k * 2) as f64 / secs / 1e9);
    }
}
