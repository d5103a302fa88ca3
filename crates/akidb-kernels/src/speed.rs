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
