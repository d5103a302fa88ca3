# shellcheck shell=bash
# Sourced by the scripts: `ort_version [CARGO_TOML]` prints `[package.metadata.onnxruntime] version`
# from Cargo.toml (default: the project's), the one place the ONNX Runtime version is pinned.
AKIDB_ORT_VERSION_MANIFEST=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/Cargo.toml

ort_version() {
  sed -n '/^\[package\.metadata\.onnxruntime\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' \
    "${1:-$AKIDB_ORT_VERSION_MANIFEST}"
}
