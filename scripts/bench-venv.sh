# shellcheck shell=bash
# Shared by scripts/bench-peer.sh and scripts/bench-http.sh (sourced, not run): creates or reuses the
# Python venv of the benchmark peer at target/bench-venv, with onnxruntime at the version pinned in
# Cargo.toml ([package.metadata.onnxruntime]) plus tokenizers and numpy, all from PyPI.
#
#   source "$ROOT/scripts/bench-venv.sh"
#   bench_venv_ensure "$ROOT" "$DRY_RUN"    # sets BENCH_PYTHON (the venv's python) and ORT_VERSION
#
# PYTHON picks the interpreter that creates the venv (default python3); BENCH_VENV its directory.

# bench_venv_ensure ROOT [DRY_RUN]: makes sure the venv exists with the right packages.
bench_venv_ensure() {
  local root=$1 dry_run=${2:-0}
  local venv=${BENCH_VENV:-$root/target/bench-venv}
  local base_python=${PYTHON:-python3}
  # shellcheck source=/dev/null # lib/ort-version.sh is shellchecked on its own
  source "$root/scripts/lib/ort-version.sh"
  ORT_VERSION=$(akidb_ort_version "$root") || return 1
  BENCH_PYTHON=$venv/bin/python

  # onnxruntime's version when numpy, tokenizers and onnxruntime all import; else empty.
  local have=""
  if [ -x "$BENCH_PYTHON" ]; then
    have=$("$BENCH_PYTHON" -c 'import importlib.metadata as m, numpy, tokenizers, onnxruntime; print(m.version("onnxruntime"))' 2>/dev/null || true)
  fi

  if [ "$dry_run" -eq 1 ]; then
    [ -x "$BENCH_PYTHON" ] || echo "+ $base_python -m venv $venv"
    if [ "$have" = "$ORT_VERSION" ]; then
      echo "# reuse $venv (onnxruntime $ORT_VERSION, tokenizers and numpy are there)"
    else
      echo "+ $BENCH_PYTHON -m pip install --quiet --disable-pip-version-check onnxruntime==$ORT_VERSION tokenizers numpy"
    fi
    return 0
  fi

  if [ ! -x "$BENCH_PYTHON" ]; then
    command -v "$base_python" >/dev/null 2>&1 || {
      echo "bench-venv: error: $base_python not found; install Python 3 (or set PYTHON=...)" >&2
      return 1
    }
    echo "bench-venv: creating $venv" >&2
    mkdir -p "$(dirname "$venv")"
    if ! "$base_python" -m venv "$venv"; then
      echo "bench-venv: error: '$base_python -m venv' failed; install the venv module (e.g. apt-get install python3-venv)" >&2
      return 1
    fi
  fi

  if [ "$have" != "$ORT_VERSION" ]; then
    echo "bench-venv: installing onnxruntime==$ORT_VERSION, tokenizers, numpy into $venv (from PyPI)" >&2
    if ! "$BENCH_PYTHON" -m pip install --quiet --disable-pip-version-check \
      "onnxruntime==$ORT_VERSION" tokenizers numpy; then
      echo "bench-venv: error: pip could not install onnxruntime==$ORT_VERSION tokenizers numpy (is PyPI reachable?)" >&2
      return 1
    fi
  fi
}

# bench_hf_env ROOT: HF_HOME defaults to ROOT/../shared/hf (the shared Hugging Face cache beside the
# checkout); HF_HUB_OFFLINE defaults to 1 only when HF_HOME is that shared cache and it exists, so a
# machine without it (or a caller's own HF_HOME) can still download from the Hub.
bench_hf_env() {
  local root=$1 shared
  shared=$(cd "$root/.." && pwd)/shared/hf
  export HF_HOME=${HF_HOME:-$shared}
  if [ -z "${HF_HUB_OFFLINE:-}" ] && [ -d "$shared" ] && [ "$HF_HOME" -ef "$shared" ]; then
    export HF_HUB_OFFLINE=1
  fi
}
