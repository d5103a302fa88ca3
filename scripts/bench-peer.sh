#!/usr/bin/env bash
# akidb against its Python peer (onnxruntime + tokenizers + numpy, scripts/bench_peer.py), in one
# run on one machine: batch throughput over benches/corpus.txt and single-text latency, the two
# implementations alternated round by round so that background noise hits both; the best result of
# each implementation is kept. Prints a table with the ratios, the machine and the versions, and
# writes every raw JSON line to target/bench-peer/results.jsonl.
#
# The Python side runs in target/bench-venv (made by scripts/bench-venv.sh) with onnxruntime at the
# version Cargo.toml pins, so both sides run the same ONNX Runtime release.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# bench-venv.sh is shellchecked on its own (so no -x is needed here).
# shellcheck source=/dev/null
source "$ROOT/scripts/bench-venv.sh"

usage() {
  cat <<'EOF'
usage: scripts/bench-peer.sh [options]

  --rounds N          rounds; each runs akidb then python, for throughput and latency (default 2)
  --corpus FILE       throughput corpus, one text per line (default benches/corpus.txt)
  --batch N           texts per inference call for throughput (default 32)
  --repeat R          timed passes over the corpus per run, best kept (default 3)
  --text T            latency text (default "The quick brown fox jumps over the lazy dog.")
  --iterations N      timed single-text calls per latency run (default 300)
  --warmup W          untimed calls before them (default 30)
  --onnx-file F       ONNX graph inside the model, for both sides (default onnx/model.onnx)
  --threads N         inference threads, for both sides (default: each side's own default)
  --no-build          do not run `cargo build --release --examples` first
  --dry-run           print the commands instead of running them
  -h, --help          this text

environment: HF_HOME (default ../shared/hf beside the repo; HF_HUB_OFFLINE=1 is then the default),
PYTHON (the interpreter that makes the venv, default python3), BENCH_VENV (default target/bench-venv).
EOF
}

die() { echo "bench-peer: error: $*" >&2; exit 1; }
say() { echo "bench-peer: $*" >&2; }

ROUNDS=2
CORPUS=$ROOT/benches/corpus.txt
BATCH=32
REPEAT=3
TEXT="The quick brown fox jumps over the lazy dog."
ITERATIONS=300
WARMUP=30
ONNX_FILE=""
THREADS=""
BUILD=1
DRY_RUN=0

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; ROUNDS=$2; shift ;;
    --corpus) [ $# -ge 2 ] || die "--corpus needs a value"; CORPUS=$2; shift ;;
    --batch) [ $# -ge 2 ] || die "--batch needs a value"; BATCH=$2; shift ;;
    --repeat) [ $# -ge 2 ] || die "--repeat needs a value"; REPEAT=$2; shift ;;
    --text) [ $# -ge 2 ] || die "--text needs a value"; TEXT=$2; shift ;;
    --iterations) [ $# -ge 2 ] || die "--iterations needs a value"; ITERATIONS=$2; shift ;;
    --warmup) [ $# -ge 2 ] || die "--warmup needs a value"; WARMUP=$2; shift ;;
    --onnx-file) [ $# -ge 2 ] || die "--onnx-file needs a value"; ONNX_FILE=$2; shift ;;
    --threads) [ $# -ge 2 ] || die "--threads needs a value"; THREADS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

is_count() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ]; }
is_count "$ROUNDS" 1 || die "--rounds must be a whole number >= 1 (got '$ROUNDS')"
is_count "$BATCH" 1 || die "--batch must be a whole number >= 1 (got '$BATCH')"
is_count "$REPEAT" 1 || die "--repeat must be a whole number >= 1 (got '$REPEAT')"
is_count "$ITERATIONS" 1 || die "--iterations must be a whole number >= 1 (got '$ITERATIONS')"
is_count "$WARMUP" 0 || die "--warmup must be a whole number >= 0 (got '$WARMUP')"
[ -z "$THREADS" ] || is_count "$THREADS" 1 || die "--threads must be a whole number >= 1 (got '$THREADS')"
[ -n "$TEXT" ] || die "--text must not be empty"
[ -f "$CORPUS" ] || die "corpus not found: $CORPUS (scripts/make_corpus.py makes benches/corpus.txt)"
CORPUS=$(cd "$(dirname "$CORPUS")" && pwd)/$(basename "$CORPUS")

cd "$ROOT"
bench_hf_env "$ROOT"
HOST_PYTHON=${PYTHON:-python3}
command -v "$HOST_PYTHON" >/dev/null 2>&1 || die "$HOST_PYTHON not found; install Python 3 (or set PYTHON=...)"

# Printed as a shell command line (quoted where needed), then run unless --dry-run.
show() {
  local out="+" arg
  for arg in "$@"; do out+=" $(printf '%q' "$arg")"; done
  echo "$out"
}

OUT_DIR=$ROOT/target/bench-peer
RESULTS=$OUT_DIR/results.jsonl
THROUGHPUT_BIN=$ROOT/target/release/examples/throughput
LATENCY_BIN=$ROOT/target/release/examples/latency

# The same pass-through options for both sides.
common=()
[ -z "$ONNX_FILE" ] || common+=(--onnx-file "$ONNX_FILE")
[ -z "$THREADS" ] || common+=(--threads "$THREADS")

# 1. The Python peer's venv.
if [ "$DRY_RUN" -eq 1 ]; then
  echo "# HF_HOME=$HF_HOME HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-}"
fi
bench_venv_ensure "$ROOT" "$DRY_RUN" || die "could not prepare the Python venv"
PEER=("$BENCH_PYTHON" "$ROOT/scripts/bench_peer.py")

# 2. The Rust examples.
if [ "$BUILD" -eq 1 ]; then
  if [ "$DRY_RUN" -eq 1 ]; then
    show cargo build --release --examples
  else
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs) or pass --no-build"
    say "building the release examples (cargo build --release --examples)"
    cargo build --release --examples || die "cargo build --release --examples failed"
  fi
fi
if [ "$DRY_RUN" -eq 0 ]; then
  for bin in "$THROUGHPUT_BIN" "$LATENCY_BIN"; do
    [ -x "$bin" ] || die "$bin is missing; run cargo build --release --examples (or drop --no-build)"
  done
  mkdir -p "$OUT_DIR"
  : >"$RESULTS"
fi

# run_one LABEL CMD...: runs one benchmark, checks its last stdout line is a JSON object and keeps it.
run_one() {
  local label=$1 out line
  shift
  if [ "$DRY_RUN" -eq 1 ]; then
    show "$@"
    return 0
  fi
  say "$label"
  if ! out=$("$@"); then
    die "$label failed: $(show "$@")"
  fi
  line=$(printf '%s\n' "$out" | grep '^{' | tail -n 1 || true)
  if [ -z "$line" ] || ! printf '%s' "$line" | "$HOST_PYTHON" -c 'import json,sys; json.load(sys.stdin)' 2>/dev/null; then
    die "$label printed no JSON result line; its output was: $out"
  fi
  echo "  $line" >&2
  printf '%s\n' "$line" >>"$RESULTS"
}

# 3. Alternate the implementations, round by round.
for round in $(seq 1 "$ROUNDS"); do
  if [ "$DRY_RUN" -eq 1 ]; then echo "# round $round of $ROUNDS"; fi
  run_one "round $round/$ROUNDS: akidb throughput" \
    "$THROUGHPUT_BIN" --corpus "$CORPUS" --batch "$BATCH" --repeat "$REPEAT" ${common[@]+"${common[@]}"}
  run_one "round $round/$ROUNDS: python throughput" \
    "${PEER[@]}" --mode throughput --corpus "$CORPUS" --batch "$BATCH" --repeat "$REPEAT" ${common[@]+"${common[@]}"}
  run_one "round $round/$ROUNDS: akidb latency" \
    "$LATENCY_BIN" --text "$TEXT" --iterations "$ITERATIONS" --warmup "$WARMUP" ${common[@]+"${common[@]}"}
  run_one "round $round/$ROUNDS: python latency" \
    "${PEER[@]}" --mode latency --text "$TEXT" --iterations "$ITERATIONS" --warmup "$WARMUP" ${common[@]+"${common[@]}"}
done

if [ "$DRY_RUN" -eq 1 ]; then
  echo "# then: a table of the best run of each side, ratios, machine and versions; raw lines in $RESULTS"
  exit 0
fi

# 4. Machine and versions.
nproc_n=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo "?")
cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1 || true)
[ -n "$cpu" ] || cpu=$(sysctl -n machdep.cpu.brand_string 2>/dev/null || true)
[ -n "$cpu" ] || cpu=$(sed -n 's/^\(Hardware\|CPU part\)[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1 || true)
[ -n "$cpu" ] || cpu="unknown CPU"
akidb_version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
rustc_version=$(rustc --version 2>/dev/null || echo "rustc ?")
py_versions=$("$BENCH_PYTHON" -c 'import sys, onnxruntime, tokenizers, numpy; print(f"Python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}, numpy {numpy.__version__}")')

# 5. The table.
threads_desc=${THREADS:-"default on each side (akidb: one per physical core; python: os.cpu_count())"}
onnx_desc=${ONNX_FILE:-"onnx/model.onnx (default)"}
BENCH_MACHINE="$(uname -srm), $nproc_n logical CPUs (nproc), $cpu" \
BENCH_VERSIONS_RUST="akidb $akidb_version ($rustc_version), ONNX Runtime $ORT_VERSION (Cargo.toml pin)" \
BENCH_VERSIONS_PY="$py_versions" \
BENCH_BATCH="$BATCH" \
BENCH_SETUP="onnx file: $onnx_desc; threads: $threads_desc; corpus ${CORPUS#"$ROOT"/}, batch $BATCH, best of $REPEAT timed passes per run; latency $ITERATIONS calls after $WARMUP warm-up; $ROUNDS rounds" \
  "$HOST_PYTHON" - "$RESULTS" <<'EOF'
import json, os, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def pick(impl, mode):
    return [r for r in rows if r.get("impl") == impl and r.get("mode") == mode]

best = {}
for impl in ("akidb", "python"):
    tp = pick(impl, "throughput")
    lat = pick(impl, "latency")
    if not tp or not lat:
        sys.exit(f"bench-peer: error: no {impl} results in {sys.argv[1]}")
    best[impl] = (max(tp, key=lambda r: r["texts_per_s"]), min(lat, key=lambda r: r["p50_ms"]))

print()
print(f"machine:  {os.environ['BENCH_MACHINE']}")
print(f"akidb:    {os.environ['BENCH_VERSIONS_RUST']}")
print(f"python:   {os.environ['BENCH_VERSIONS_PY']}")
print(f"setup:    {os.environ['BENCH_SETUP']}")
print()
tp_a, tp_p = best["akidb"][0], best["python"][0]
lat_a, lat_p = best["akidb"][1], best["python"][1]
runs = len(pick("akidb", "throughput"))
W = 34
print(f"{'throughput, batch of ' + os.environ['BENCH_BATCH']:<{W}}{'texts/s':>10}{'tokens/s':>11}{'seconds':>10}")
for impl in ("akidb", "python"):
    r = best[impl][0]
    print(f"  {impl:<{W - 2}}{r['texts_per_s']:>10.1f}{r['tokens_per_s']:>11.0f}{r['seconds']:>10.3f}")
print(f"  {'ratio akidb / python':<{W - 2}}{tp_a['texts_per_s'] / tp_p['texts_per_s']:>9.2f}x")
print(f"  ({tp_a['texts']} texts, {tp_a['tokens']} tokens; best of {runs} runs per side)")
if tp_a["texts"] != tp_p["texts"] or tp_a["tokens"] != tp_p["tokens"]:
    print(f"  note: the sides counted differently: akidb {tp_a['texts']} texts/{tp_a['tokens']} tokens, "
          f"python {tp_p['texts']} texts/{tp_p['tokens']} tokens")
print()
print(f"{'latency, one text':<{W}}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
for impl in ("akidb", "python"):
    r = best[impl][1]
    print(f"  {impl:<{W - 2}}{r['p50_ms']:>10.3f}{r['p95_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['mean_ms']:>10.3f}")
print(f"  {'ratio python p50 / akidb p50':<{W - 2}}{lat_p['p50_ms'] / lat_a['p50_ms']:>9.2f}x")
print(f"  (run with the lowest p50 of {len(pick('akidb', 'latency'))} per side)")
print()
print(f"raw results: {sys.argv[1]}")
EOF
