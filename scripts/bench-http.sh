#!/usr/bin/env bash
# HTTP load on akidb with wrk: POST /embed with one short text per request (scripts/wrk-embed.lua),
# first with 1 connection / 1 thread (single-text latency: p50/p90/p99), then 16 connections /
# 2 threads (throughput in req/s, p99). Then the batching the server did (akidb_batch_requests from
# /metrics: mean requests per batching round), its RSS after the load, and, for comparison, the
# Python peer's in-process single-text latency (scripts/bench_peer.py, no HTTP) in the same run.
#
# By default it starts `target/release/akidb serve` on 127.0.0.1 at a free port (building it with
# `cargo build --release` if missing) and stops it at the end; --url uses a running server instead.
# Raw results go to target/bench-http/results.jsonl, the server's log to target/bench-http/server.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# bench-venv.sh is shellchecked on its own (so no -x is needed here).
# shellcheck source=/dev/null
source "$ROOT/scripts/bench-venv.sh"

usage() {
  cat <<'EOF'
usage: scripts/bench-http.sh [options]

  --duration D        length of each wrk run, as wrk takes it (default 20s)
  --text T            the text every request embeds (default "The quick brown fox jumps over the lazy dog.")
  --url URL           benchmark a server already running there (e.g. http://127.0.0.1:8080);
                      nothing is started, built or stopped; RSS only with --pid
  --pid PID           that server's process id, for its RSS
  --port P            port for the server this script starts (default: a free one)
  --onnx-file F       ONNX graph inside the model, for the started server and the Python peer
  --threads N         inference threads, for the started server and the Python peer
  --build             run `cargo build --release` first even if target/release/akidb exists
  --startup-timeout S seconds to wait for /health to answer 200 (default 180)
  --iterations N      Python peer: timed single-text calls (default 300)
  --warmup W          Python peer: untimed calls first (default 30)
  --no-python         skip the Python peer's in-process latency
  --no-mixed          skip the mixed workload (bulk indexing + one-text queries)
  --dry-run           print the commands instead of running them
  -h, --help          this text

environment: HF_HOME (default ../shared/hf beside the repo; HF_HUB_OFFLINE=1 is then the default),
AKIDB_API_KEY (sent as a Bearer token when the server wants one), PYTHON, BENCH_VENV (see
scripts/bench-venv.sh).
EOF
}

die() { echo "bench-http: error: $*" >&2; exit 1; }
say() { echo "bench-http: $*" >&2; }

DURATION=20s
TEXT="The quick brown fox jumps over the lazy dog."
URL=""
PID=""
PORT=""
ONNX_FILE=""
THREADS=""
BUILD=0
STARTUP_TIMEOUT=180
ITERATIONS=300
WARMUP=30
PYTHON_PEER=1
MIXED=1
MIXED_OUT=""
DRY_RUN=0

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) [ $# -ge 2 ] || die "--duration needs a value"; DURATION=$2; shift ;;
    --text) [ $# -ge 2 ] || die "--text needs a value"; TEXT=$2; shift ;;
    --url) [ $# -ge 2 ] || die "--url needs a value"; URL=${2%/}; shift ;;
    --pid) [ $# -ge 2 ] || die "--pid needs a value"; PID=$2; shift ;;
    --port) [ $# -ge 2 ] || die "--port needs a value"; PORT=$2; shift ;;
    --onnx-file) [ $# -ge 2 ] || die "--onnx-file needs a value"; ONNX_FILE=$2; shift ;;
    --threads) [ $# -ge 2 ] || die "--threads needs a value"; THREADS=$2; shift ;;
    --build) BUILD=1 ;;
    --startup-timeout) [ $# -ge 2 ] || die "--startup-timeout needs a value"; STARTUP_TIMEOUT=$2; shift ;;
    --iterations) [ $# -ge 2 ] || die "--iterations needs a value"; ITERATIONS=$2; shift ;;
    --warmup) [ $# -ge 2 ] || die "--warmup needs a value"; WARMUP=$2; shift ;;
    --no-python) PYTHON_PEER=0 ;;
    --no-mixed) MIXED=0 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

is_count() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ]; }
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "--duration must look like 20s, 2m or 30 (got '$DURATION')"
[ -n "$TEXT" ] || die "--text must not be empty"
[ -z "$PORT" ] || { is_count "$PORT" 1 && [ "$PORT" -le 65535 ]; } || die "--port must be 1-65535 (got '$PORT')"
[ -z "$PID" ] || is_count "$PID" 1 || die "--pid must be a process id (got '$PID')"
[ -z "$THREADS" ] || is_count "$THREADS" 1 || die "--threads must be a whole number >= 1 (got '$THREADS')"
is_count "$STARTUP_TIMEOUT" 1 || die "--startup-timeout must be a whole number of seconds >= 1"
is_count "$ITERATIONS" 1 || die "--iterations must be a whole number >= 1 (got '$ITERATIONS')"
is_count "$WARMUP" 0 || die "--warmup must be a whole number >= 0 (got '$WARMUP')"
if [ -n "$URL" ]; then
  [[ $URL =~ ^https?://[^/]+$ ]] || die "--url must be a base URL like http://127.0.0.1:8080 (got '$URL')"
  if [ -n "$PORT" ] || [ "$BUILD" -eq 1 ]; then
    die "--port and --build are for the server this script starts, not with --url"
  fi
  if [ -n "$ONNX_FILE" ] || [ -n "$THREADS" ]; then
    say "note: with --url, --onnx-file and --threads reach only the Python peer"
  fi
fi

cd "$ROOT"
bench_hf_env "$ROOT"
HOST_PYTHON=${PYTHON:-python3}
AKIDB=$ROOT/target/release/akidb
LUA=$ROOT/scripts/wrk-embed.lua
OUT_DIR=$ROOT/target/bench-http
RESULTS=$OUT_DIR/results.jsonl
LOG=$OUT_DIR/server.log
export AKIDB_BENCH_TEXT=$TEXT

show() {
  local out="+" arg
  for arg in "$@"; do out+=" $(printf '%q' "$arg")"; done
  echo "$out"
}

if [ "$DRY_RUN" -eq 0 ]; then
  command -v wrk >/dev/null 2>&1 || die "wrk not found; install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
  command -v curl >/dev/null 2>&1 || die "curl not found; install it (apt-get install curl)"
  command -v "$HOST_PYTHON" >/dev/null 2>&1 || die "$HOST_PYTHON not found; install Python 3 (or set PYTHON=...)"
  [ -f "$LUA" ] || die "missing $LUA"
  mkdir -p "$OUT_DIR"
  : >"$RESULTS"
else
  echo "# HF_HOME=$HF_HOME HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-} AKIDB_BENCH_TEXT=$(printf '%q' "$TEXT")"
fi

auth=()
[ -z "${AKIDB_API_KEY:-}" ] || auth=(-H "Authorization: Bearer $AKIDB_API_KEY")

SERVER_PID=""
WRK_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid=$SERVER_PID i
  SERVER_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      [ "$i" -lt 100 ] || { say "the server did not stop in 10 s; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
      sleep 0.1
    done
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  if [ -n "$WRK_PID" ]; then
    kill -TERM "$WRK_PID" 2>/dev/null || true
    wait "$WRK_PID" 2>/dev/null || true
  fi
  stop_server
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The server: a running one (--url) or ours.
if [ -z "$URL" ]; then
  if [ "$BUILD" -eq 1 ] || [ ! -x "$AKIDB" ]; then
    if [ "$DRY_RUN" -eq 1 ]; then
      show cargo build --release
    else
      command -v cargo >/dev/null 2>&1 || die "$AKIDB is missing and cargo is not installed (https://rustup.rs)"
      say "building akidb (cargo build --release)"
      cargo build --release || die "cargo build --release failed"
      [ -x "$AKIDB" ] || die "cargo build --release made no $AKIDB"
    fi
  fi
  if [ -z "$PORT" ]; then
    if [ "$DRY_RUN" -eq 1 ]; then
      PORT='<free port>'
    else
      PORT=$("$HOST_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
        die "could not find a free port; pass --port"
    fi
  fi
  URL=http://127.0.0.1:$PORT
  serve=("$AKIDB" serve --host 127.0.0.1 --port "$PORT")
  [ -z "$ONNX_FILE" ] || serve+=(--onnx-file "$ONNX_FILE")
  [ -z "$THREADS" ] || serve+=(--threads "$THREADS")
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "$(show "${serve[@]}") >$LOG 2>&1 &"
  else
    say "starting: $(show "${serve[@]}" | cut -c3-) (log: ${LOG#"$ROOT"/})"
    "${serve[@]}" >"$LOG" 2>&1 &
    SERVER_PID=$!
    PID=$SERVER_PID
  fi
fi

if [ "$DRY_RUN" -eq 1 ]; then
  echo "# wait until $(show curl -s -o /dev/null -w '%{http_code}' "$URL/health" | cut -c3-) says 200 (at most ${STARTUP_TIMEOUT}s)"
else
  say "waiting for $URL/health to answer 200 (at most ${STARTUP_TIMEOUT}s)"
  deadline=$((SECONDS + STARTUP_TIMEOUT))
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL/health" || true)
    [ "$code" != 200 ] || break
    if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null && rc=0 || rc=$?
      SERVER_PID=""
      echo "--- last lines of $LOG:" >&2
      tail -n 20 "$LOG" >&2 || true
      die "the server exited (status $rc) before /health said 200"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "$URL/health did not answer 200 within ${STARTUP_TIMEOUT}s (last status: ${code:-none}); see $LOG"
    sleep 0.5
  done
  say "server ready at $URL"
fi

# metrics FILE: saves /metrics.
metrics() {
  if [ "$DRY_RUN" -eq 1 ]; then
    show curl -sf ${auth[@]+"${auth[@]}"} "$URL/metrics" -o "$1"
  elif ! curl -sf --max-time 10 ${auth[@]+"${auth[@]}"} "$URL/metrics" -o "$1"; then
    say "warning: could not read $URL/metrics"
    : >"$1"
  fi
}

# load NAME CONNECTIONS THREADS: one wrk run, its report shown, its AKIDB_WRK line kept.
load() {
  local name=$1 conns=$2 threads=$3 out line
  local cmd=(wrk -t "$threads" -c "$conns" -d "$DURATION" --timeout 30s --latency -s "$LUA" "$URL/embed")
  if [ "$DRY_RUN" -eq 1 ]; then
    show "${cmd[@]}"
    return 0
  fi
  say "wrk: $conns connection(s), $threads thread(s), $DURATION"
  # In the background and waited for, so that a signal stops the run at once (see cleanup).
  "${cmd[@]}" >"$OUT_DIR/wrk.out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || die "wrk failed: $(show "${cmd[@]}")"$'\n'"$(cat "$OUT_DIR/wrk.out")"
  WRK_PID=""
  out=$(cat "$OUT_DIR/wrk.out")
  printf '%s\n' "$out" | grep -v '^AKIDB_WRK ' | sed 's/^/    /' >&2
  line=$(printf '%s\n' "$out" | sed -n 's/^AKIDB_WRK //p' | tail -n 1)
  [ -n "$line" ] || die "wrk printed no AKIDB_WRK line (is $LUA the script it ran?)"
  printf '{"impl":"akidb-http","setting":"%s","connections":%d,"threads":%d,"wrk":%s}\n' \
    "$name" "$conns" "$threads" "$line" >>"$RESULTS"
}

# 2. Load, with /metrics read around each run so the batching of each can be told apart.
M0=$OUT_DIR/metrics.0.txt M1=$OUT_DIR/metrics.1.txt M2=$OUT_DIR/metrics.2.txt
metrics "$M0"
load single 1 1
metrics "$M1"
load concurrent 16 2
metrics "$M2"

# 2b. The mixed workload: an indexing client (256-text requests back to back) and a one-text
# query every 0.2 s, against each alone (examples/mixed_load.rs).
if [ "$MIXED" -eq 1 ]; then
  mixed=(cargo run --quiet --release --example mixed_load -- --url "$URL")
  if [ "$DRY_RUN" -eq 1 ]; then
    show "${mixed[@]}"
  else
    say "mixed workload: bulk indexing + one-text queries"
    MIXED_OUT=$("${mixed[@]}") || die "the mixed workload failed: $(show "${mixed[@]}")"
    printf '%s\n' "$MIXED_OUT" | sed 's/^/    /' >&2
  fi
fi

# 3. The server's memory after the load.
rss_kib="" hwm_kib=""
if [ "$DRY_RUN" -eq 1 ]; then
  echo "# read VmRSS (and VmHWM) from /proc/<server pid>/status (when the pid is known)"
elif [ -n "$PID" ]; then
  if [ -r "/proc/$PID/status" ]; then
    rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
    hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
  else
    rss_kib=$(ps -o rss= -p "$PID" 2>/dev/null | tr -d ' ' || true)
  fi
fi

# 4. Done with the server; the Python peer gets the machine to itself.
stop_server
py_line=""
if [ "$PYTHON_PEER" -eq 1 ]; then
  bench_venv_ensure "$ROOT" "$DRY_RUN" || die "could not prepare the Python venv (or pass --no-python)"
  peer=("$BENCH_PYTHON" "$ROOT/scripts/bench_peer.py" --mode latency --text "$TEXT" --iterations "$ITERATIONS" --warmup "$WARMUP")
  [ -z "$ONNX_FILE" ] || peer+=(--onnx-file "$ONNX_FILE")
  [ -z "$THREADS" ] || peer+=(--threads "$THREADS")
  if [ "$DRY_RUN" -eq 1 ]; then
    show "${peer[@]}"
  else
    say "python peer: in-process single-text latency ($ITERATIONS calls)"
    py_out=$("${peer[@]}") || die "the Python peer failed: $(show "${peer[@]}")"
    py_line=$(printf '%s\n' "$py_out" | grep '^{' | tail -n 1 || true)
    [ -n "$py_line" ] || die "the Python peer printed no JSON line: $py_out"
    printf '%s\n' "$py_line" >>"$RESULTS"
  fi
fi

if [ "$DRY_RUN" -eq 1 ]; then
  echo "# then: a summary (latency, req/s, non-2xx, batching from akidb_batch_requests, RSS, Python p50); raw lines in $RESULTS"
  exit 0
fi

# 5. The summary.
BENCH_URL=$URL BENCH_DURATION=$DURATION BENCH_TEXT=$TEXT BENCH_RSS_KIB=$rss_kib BENCH_HWM_KIB=$hwm_kib \
  BENCH_PY_LINE=$py_line BENCH_NPROC=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo "?") \
  "$HOST_PYTHON" - "$RESULTS" "$M0" "$M1" "$M2" <<'EOF'
import json, os, re, sys

results, m0, m1, m2 = sys.argv[1:5]
runs = {r["setting"]: r for r in map(json.loads, open(results)) if r.get("impl") == "akidb-http"}
env = os.environ

def batch_hist(path):
    """akidb_batch_requests sum, count and cumulative buckets from an OpenMetrics text."""
    out = {"sum": None, "count": None, "buckets": {}}
    for line in open(path):
        m = re.match(r'akidb_batch_requests_(sum|count|bucket)(\{[^}]*\})?\s+([0-9.eE+-]+|\+Inf|NaN)', line)
        if not m:
            continue
        kind, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if kind == "bucket":
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                out["buckets"][le.group(1)] = value
        else:
            out[kind] = value
    return out if out["count"] is not None else None

def delta(a, b):
    if a is None or b is None:
        return None
    return {
        "sum": b["sum"] - a["sum"], "count": b["count"] - a["count"],
        "buckets": {k: v - a["buckets"].get(k, 0) for k, v in b["buckets"].items()},
    }

def describe(d):
    if d is None:
        return "n/a (no akidb_batch_requests in /metrics)"
    if d["count"] <= 0:
        return "no batching rounds"
    text = f"mean {d['sum'] / d['count']:.2f} requests/round over {d['count']:.0f} rounds"
    prev, parts = 0.0, []
    def order(k):
        return float("inf") if k == "+Inf" else float(k)
    for le in sorted(d["buckets"], key=order):
        n = d["buckets"][le] - prev
        prev = d["buckets"][le]
        if n > 0:
            parts.append(f"<={le.removesuffix('.0')}: {n:.0f}")
    return text + (f" (rounds by size {', '.join(parts)})" if parts else "")

h0, h1, h2 = batch_hist(m0), batch_hist(m1), batch_hist(m2)
print()
print(f"akidb HTTP: POST {env['BENCH_URL']}/embed, one text per request ({env['BENCH_TEXT']!r}), "
      f"{env['BENCH_DURATION']} per setting, wrk on the same machine ({env['BENCH_NPROC']} CPUs)")
print(f"{'setting':<28}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}")
for name, label in (("single", "1 connection, 1 thread"), ("concurrent", "16 connections, 2 threads")):
    r = runs.get(name)
    if not r:
        continue
    w = r["wrk"]
    errors = sum(w["errors"].values())
    print(f"  {label:<26}{w['requests_per_s']:>10.1f}{w['p50_ms']:>9.3f}{w['p90_ms']:>9.3f}{w['p99_ms']:>9.3f}"
          f"{w['non_2xx']:>9d}{errors:>8d}")
print()
print("batching (akidb_batch_requests = requests per batching round):")
print(f"  1 connection:   {describe(delta(h0, h1))}")
print(f"  16 connections: {describe(delta(h1, h2))}")
if h2 and h2["count"]:
    print(f"  whole server:   mean {h2['sum'] / h2['count']:.2f} "
          f"(akidb_batch_requests_sum {h2['sum']:.0f} / akidb_batch_requests_count {h2['count']:.0f})")
if env.get("BENCH_RSS_KIB"):
    rss = f"{int(env['BENCH_RSS_KIB']) / 1024:.1f} MiB"
    if env.get("BENCH_HWM_KIB"):
        rss += f" (peak VmHWM {int(env['BENCH_HWM_KIB']) / 1024:.1f} MiB)"
    print(f"server RSS after the load: VmRSS {rss}")
else:
    print("server RSS: n/a (pass --pid with --url)")
if env.get("BENCH_PY_LINE"):
    py = json.loads(env["BENCH_PY_LINE"])
    print()
    print(f"python peer in process (no HTTP), one text: p50 {py['p50_ms']:.3f} ms, p95 {py['p95_ms']:.3f} ms, "
          f"p99 {py['p99_ms']:.3f} ms ({py['iterations']} calls)")
    single = runs.get("single")
    if single:
        print(f"  akidb over HTTP (1 connection) p50 {single['wrk']['p50_ms']:.3f} ms = "
              f"{single['wrk']['p50_ms'] / py['p50_ms']:.2f}x the Python in-process p50")
print()
print(f"raw results: {results}")
EOF
[ -z "$MIXED_OUT" ] || printf '\nmixed workload (examples/mixed_load.rs):\n%s\n' "$MIXED_OUT"
