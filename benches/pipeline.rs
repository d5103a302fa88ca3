//! Criterion benchmarks of the pipeline's stages on MiniLM: tokenization, pooling +
//! normalization, and end-to-end batch embedding. Uses the Hugging Face cache (HF_HOME), or
//! ../shared/hf offline when HF_HOME is unset.
//!
//!     cargo bench --bench pipeline

use std::hint::black_box;

use akidb_engine::{model_config::Pooling, pooling, Model, ModelOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::{Array2, Array3};

fn corpus() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/corpus.txt");
    let text = std::fs::read_to_string(path).expect("benches/corpus.txt");
    text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn embedder() -> Model {
    if std::env::var_os("HF_HOME").is_none() {
        std::env::set_var("HF_HOME", concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    Model::load(&ModelOptions::default()).expect("load MiniLM")
}

fn benches(c: &mut Criterion) {
    let embedder = embedder();
    let texts = corpus();
    let batch: Vec<&str> = texts.iter().take(32).map(String::as_str).collect();

    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("32 texts", |b| b.iter(|| black_box(embedder.tokenize(&batch).unwrap())));
    g.finish();

    // 32 texts × 128 tokens × 384 dims, a quarter of each row padding.
    let hidden = Array3::from_shape_fn((32, 128, 384), |(i, j, k)| ((i * 7 + j * 3 + k) % 17) as f32 * 0.1);
    let mask = Array2::from_shape_fn((32, 128), |(_, j)| i64::from(j < 96));
    let mut g = c.benchmark_group("pool+normalize");
    g.throughput(Throughput::Elements(32));
    g.bench_function("mean 32x128x384", |b| {
        b.iter(|| {
            let mut v = pooling::pool(hidden.view(), mask.view(), Pooling::Mean);
            v.iter_mut().for_each(|x| pooling::normalize(x));
            black_box(v)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("embed");
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("32 corpus texts", |b| b.iter(|| black_box(embedder.embed(&batch, true).unwrap())));
    g.bench_function("1 short text", |b| b.iter(|| black_box(embedder.embed(&["The quick brown fox"], true).unwrap())));
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
