# shellcheck shell=bash
# The ONNX Runtime version pinned in Cargo.toml ([package.metadata.onnxruntime] version), for the
# scripts (sourced, not run). build.rs reads the same key and passes it to Rust as AKIDB_ORT_VERSION.
#
#   source "$ROOT/scripts/lib/ort-version.sh"
#   VERSION=$(akidb_ort_version "$ROOT") || exit 1

# akidb_ort_version ROOT: prints the pinned version from ROOT/Cargo.toml; fails when it is missing.
akidb_ort_version() {
  local root=$1 version
  version=$(sed -n '/^\[package\.metadata\.onnxruntime\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml")
  if [ -z "$version" ]; then
    echo "error: no [package.metadata.onnxruntime] version in $root/Cargo.toml" >&2
    return 1
  fi
  printf '%s\n' "$version"
}
