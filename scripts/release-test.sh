#!/usr/bin/env bash
# The release workflow's test step, shared by its two jobs (.github/workflows/release.yml) and by
# the test command, so what the workflow runs cannot drift from what is tested here.
#
#   scripts/release-test.sh                  # the workflow: HF_HOME holds what it fetched
#   scripts/release-test.sh --from-cache DIR # here: an HF_HOME made of only the workflow's MODEL
#                                            # and MODEL_FILES, copied from the HF cache DIR
#
# The workflow fetches one model (MODEL, the files MODEL_FILES lists); the tests run here are the
# ones that need nothing else: the libraries' unit tests and the ONNX Runtime script's tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "release-test: error: $*" >&2; exit 1; }

if [ "${1:-}" = --from-cache ]; then
  [ -n "${2:-}" ] && [ -d "$2/hub" ] || die "--from-cache needs a Hugging Face cache directory (with hub/)"
  from=$2
  workflow=.github/workflows/release.yml
  # `  MODEL: owner/name` and the folded `  MODEL_FILES: >-` block under the workflow's env.
  model=$(sed -n 's/^  MODEL: *//p' "$workflow")
  files=$(awk '/^  MODEL_FILES: >-/ { on = 1; next } on && /^    / { print; next } on { exit }' "$workflow")
  [ -n "$model" ] && [ -n "$files" ] || die "no MODEL / MODEL_FILES in $workflow"
  repo=models--${model//\//--}
  rev=$(cat "$from/hub/$repo/refs/main") || die "$model is not in $from"
  home=$(mktemp -d "${TMPDIR:-/tmp}/akidb-release-hf.XXXXXX")
  trap 'rm -rf "$home"' EXIT
  mkdir -p "$home/hub/$repo/refs" "$home/hub/$repo/snapshots/$rev"
  printf '%s' "$rev" >"$home/hub/$repo/refs/main"
  read -ra list <<<"$(tr '\n' ' ' <<<"$files")"
  for f in "${list[@]}"; do
    mkdir -p "$(dirname "$home/hub/$repo/snapshots/$rev/$f")"
    cp -L "$from/hub/$repo/snapshots/$rev/$f" "$home/hub/$repo/snapshots/$rev/$f" ||
      die "$model's $f (in the workflow's MODEL_FILES) is not in $from"
  done
  echo "release-test: HF_HOME=$home holds only $model: ${list[*]}" >&2
  export HF_HOME=$home
fi
export HF_HUB_OFFLINE=1

cargo test --release --locked --workspace --lib
cargo test --release --locked --test it onnxruntime_script::
