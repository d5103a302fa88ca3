#!/usr/bin/env bash
# Corpus throughput of each model family's fixture (and MiniLM) against the Python path
# (onnxruntime + tokenizers + numpy on the same ONNX file: scripts/bench_peer.py), interleaved in
# one run, ROUNDS rounds; each side reports its best of 3 timed passes over benches/corpus.txt,
# in process (model load excluded). Needs target/release/examples/throughput
# (`cargo build --release --examples`) and target/bench-venv (onnxruntime, tokenizers, numpy;
# `cargo run --release --example bench -- setup` makes it).
# Usage: scripts/bench-families.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HOME=${HF_HOME:-$PWD/../shared/hf} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
rounds=${1:-3}
python=target/bench-venv/bin/python
[ -x "$python" ] || { echo "bench-families: no $python (cargo run --release --example bench -- setup)" >&2; exit 1; }
[ -x target/release/examples/throughput ] || { echo "bench-families: cargo build --release --examples first" >&2; exit 1; }
cases=(
  "sentence-transformers/all-MiniLM-L6-v2 onnx/model.onnx"
  "akidb-test/tiny-qwen3-embedding onnx/model.onnx"
  "akidb-test/tiny-qwen3-embedding onnx/model_plain.onnx"
  "akidb-test/tiny-embeddinggemma onnx/model.onnx"
  "akidb-test/tiny-xlm-roberta onnx/model.onnx"
  "akidb-test/tiny-modernbert onnx/model.onnx"
  "akidb-test/tiny-bert-dense onnx/model.onnx"
)
rate() { sed -n 's/.*"texts_per_s": *\([0-9.e+-]*\).*/\1/p'; }
printf '%-40s %-24s %5s %12s %12s %7s\n' model onnx round akidb/s python/s ratio
for r in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    read -r model onnx <<<"$c"
    a=$(target/release/examples/throughput --model "$model" --onnx-file "$onnx" --corpus benches/corpus.txt --repeat 3 | rate)
    p=$("$python" scripts/bench_peer.py --model "$model" --onnx-file "$onnx" --mode throughput \
      --corpus benches/corpus.txt --repeat 3 | rate)
    printf '%-40s %-24s %5s %12.0f %12.0f %7.2f\n' "$model" "$onnx" "$r" "$a" "$p" "$(python3 -c "print($a/$p)")"
  done
done
