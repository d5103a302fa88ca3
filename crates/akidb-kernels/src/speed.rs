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
