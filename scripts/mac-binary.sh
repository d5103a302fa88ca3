#!/usr/bin/env bash
# Builds and inspects the Mac (aarch64-apple-darwin) akidb on a machine that is not a Mac: what
# can be checked of the macOS release without one.
#
#   scripts/mac-binary.sh check   # type-check every target for the Mac, static and dynamic branch
#   scripts/mac-binary.sh link    # link a real arm64 Mach-O akidb (unoptimized: the mac-check
#                                 # profile) against the official ONNX Runtime macOS wheel's
#                                 # dylib, then inspect it
#
# Needs: rustup (the aarch64-apple-darwin standard library is added from rustup's server),
# cargo-zigbuild and ziglang (PyPI; zig is the C compiler and linker for the Mac target), LLVM's
# llvm-objdump and llvm-nm (Debian's llvm), python3 with pip (the wheel, through
# scripts/build-onnxruntime.sh --prebuilt). Everything goes under target/mac/.
#
# The linked binary is the check it is: dynamically linked to ONNX Runtime's official dylib, with
# CoreFoundation (which iana-time-zone, under chrono, links on macOS) from a stub that names the
# symbols it exports. The release stays the static binary built on a Mac by the release workflow.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=aarch64-apple-darwin
# Same as MACOS_MIN in scripts/build-onnxruntime.sh and the release workflow's deployment target.
MACOS_MIN=$(sed -n 's/^MACOS_MIN=//p' scripts/build-onnxruntime.sh)
WORK=$PWD/target/mac
export CARGO_TARGET_DIR=$WORK/target MACOSX_DEPLOYMENT_TARGET=$MACOS_MIN

say() { echo "mac-binary: $*" >&2; }
die() { echo "mac-binary: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

tools() {
  need cargo-zigbuild "pip install cargo-zigbuild ziglang (scripts/test.sh puts them in its venv)"
  need llvm-objdump "apt-get install llvm"
  need llvm-nm "apt-get install llvm"
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
}

# The official macOS arm64 wheel's dylib (libonnxruntime.1.dylib, with the CoreML EP).
dylib_dir() {
  scripts/build-onnxruntime.sh --prebuilt --target "$TARGET" --out "$WORK/onnxruntime" >&2
  echo "$WORK/onnxruntime/lib"
}

# A directory holding a stand-in libonnxruntime.a: what build.rs needs to choose its static branch.
# A type check links nothing, so an empty archive does.
standin_dir() {
  local dir=$WORK/standin
  mkdir -p "$dir"
  printf '!<arch>\n' >"$dir/libonnxruntime.a"
  echo "$dir"
}

check() {
  tools
  local dir
  dir=$(standin_dir)
  say "cargo-zigbuild check --target $TARGET --all-targets (static branch: $dir/libonnxruntime.a)"
  ORT_LIB_LOCATION=$dir RUSTFLAGS="-D warnings" cargo-zigbuild check --locked --workspace --all-targets --target "$TARGET"
  dir=$(dylib_dir)
  say "cargo-zigbuild check --target $TARGET --all-targets (dynamic branch: $dir)"
  ORT_LIB_LOCATION=$dir RUSTFLAGS="-D warnings" cargo-zigbuild check --locked --workspace --all-targets --target "$TARGET"
  say "both branches type-check for $TARGET"
}

# CoreFoundation as a text-based stub (.tbd): the install name of the real framework and the
# symbols akidb's dependencies take from it, so the binary's load command is the real one.
stub_frameworks() {
  local dir=$WORK/frameworks/CoreFoundation.framework
  mkdir -p "$dir"
  cat >"$dir/CoreFoundation.tbd" <<TBD
--- !tapi-tbd
tbd-version:     4
targets:         [ arm64-macos ]
install-name:    '/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation'
current-version: 1971
exports:
  - targets:         [ arm64-macos ]
    symbols:         [ _CFRelease, _CFStringGetBytes, _CFStringGetCStringPtr, _CFStringGetLength,
                       _CFTimeZoneCopySystem, _CFTimeZoneGetName, _kCFAllocatorDefault ]
...
TBD
  echo "$WORK/frameworks"
}

link() {
  tools
  local lib frameworks bin
  lib=$(dylib_dir)
  frameworks=$(stub_frameworks)
  # The mac-check profile (Cargo.toml): unoptimized, as linkage does not depend on optimization.
  say "cargo zigbuild --profile mac-check --target $TARGET --bin akidb (ONNX Runtime: $lib)"
  ORT_LIB_LOCATION=$lib CARGO_TARGET_AARCH64_APPLE_DARWIN_RUSTFLAGS="-C link-arg=-F$frameworks" \
    cargo zigbuild --profile mac-check --locked --target "$TARGET" --bin akidb
  bin=$CARGO_TARGET_DIR/$TARGET/mac-check/akidb
  inspect "$bin" "$lib/libonnxruntime.1.dylib"
}

# inspect BINARY DYLIB: what the Mac's loader will see.
inspect() {
  local bin=$1 dylib=$2 headers loads
  headers=$(llvm-objdump --macho --private-headers "$bin")
  grep -Eq 'MH_MAGIC_64 +ARM64' <<<"$headers" || die "$bin is not an arm64 Mach-O executable"
  say "arm64 Mach-O: $(grep -E 'MH_MAGIC_64' <<<"$headers" | tr -s ' ')"
  local minos
  minos=$(awk '/cmd LC_BUILD_VERSION/ { on = 1 } on && $1 == "minos" { print $2; exit }' <<<"$headers")
  [ "$minos" = "$MACOS_MIN" ] || die "LC_BUILD_VERSION minos is '$minos', not $MACOS_MIN"
  say "LC_BUILD_VERSION minos $minos"
  loads=$(awk '/cmd LC_LOAD_DYLIB/ { on = 1 } on && $1 == "name" { print $2; on = 0 }' <<<"$headers")
  grep -qx '@rpath/libonnxruntime.1.dylib' <<<"$loads" || die "no @rpath load of libonnxruntime.1.dylib:"$'\n'"$loads"
  local rpaths
  rpaths=$(awk '/cmd LC_RPATH/ { on = 1 } on && $1 == "path" { print $2; on = 0 }' <<<"$headers")
  grep -qx '@executable_path' <<<"$rpaths" || die "no @executable_path rpath (the dylib goes beside the binary):"$'\n'"$rpaths"
  local l
  while read -r l; do
    case "$l" in
      @rpath/libonnxruntime.1.dylib | /usr/lib/*.dylib) ;; # macOS system libraries (in the dyld shared cache)
      /System/Library/Frameworks/*.framework/Versions/A/*) ;;
      *) die "$bin loads $l, which is not a macOS system library or ONNX Runtime" ;;
    esac
  done <<<"$loads"
  say "loads: $(tr '\n' ' ' <<<"$loads")"
  say "rpaths: $(tr '\n' ' ' <<<"$rpaths")"
  # Two-level namespace: each undefined symbol names the library that must export it.
  local wanted exported missing unbound
  unbound=$(llvm-nm -m -u "$bin" | grep -v ' (from [^)]*)$' || true)
  [ -z "$unbound" ] || die "undefined symbols bound to no library:"$'\n'"$unbound"
  wanted=$(llvm-nm -m -u "$bin" | sed -n 's/^ *(undefined) external \([^ ]*\) (from libonnxruntime)$/\1/p' | sort -u)
  [ -n "$wanted" ] || die "$bin takes no symbol from libonnxruntime"
  exported=$(llvm-nm -g -U -j "$dylib" | sort -u)
  missing=$(comm -23 <(printf '%s\n' "$wanted") <(printf '%s\n' "$exported"))
  [ -z "$missing" ] || die "$(basename "$dylib") does not export: $missing"
  say "every symbol taken from libonnxruntime is exported by $(basename "$dylib"): $(tr '\n' ' ' <<<"$wanted")"
  say "ok: $bin ($(du -h "$bin" | cut -f1))"
}

case "${1:-}" in
  check) check ;;
  link) link ;;
  inspect) [ $# -eq 3 ] || die "usage: $0 inspect BINARY DYLIB"; inspect "$2" "$3" ;;
  *) die "usage: $0 check | link | inspect BINARY DYLIB" ;;
esac
