#!/usr/bin/env bash
# Alternated runs: the stdin path vs the corpus path (--input/--output) on benches/corpus.txt repeated
# REPS times, ROUNDS rounds, MiniLM, release build (cargo build --release first). Usage: scripts/bench-corpus.sh [REPS] [ROUNDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HOME=${HF_HOME:-$PWD/../shared/hf} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
reps=${1:-3}; rounds=${2:-3}
tmp=$(mktemp -d)
for _ in $(seq "$reps"); do cat benches/corpus.txt; done > "$tmp/corpus.txt"
wc -l < "$tmp/corpus.txt"
for r in $(seq "$rounds"); do
  s=$( { /usr/bin/time -f %e target/release/akidb embed < "$tmp/corpus.txt" > "$tmp/stdin.json"; } 2>&1 | tail -1)
  rm -f "$tmp/out.jsonl"
  c=$( { /usr/bin/time -f %e target/release/akidb embed --quiet --input "$tmp/corpus.txt" --output "$tmp/out.jsonl"; } 2>&1 | tail -1)
  echo "round $r: stdin ${s}s corpus ${c}s ratio(stdin/corpus) $(python3 -c "print(round($s/$c,3))")"
done
