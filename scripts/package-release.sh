#!/usr/bin/env bash
# Builds akidb in release mode and packs dist/akidb-<version>-<target>.tar.gz, plus dist/SHA256SUMS.
#
# The archive holds one top directory, akidb-<version>-<target>/, with the akidb binary, README.md,
# LICENSE, config.example.toml, ONNX Runtime's license and notices (licenses/onnxruntime/), and on
# Linux with a dynamically linked ONNX Runtime the library itself, as libonnxruntime.so.1 (its
# SONAME) beside the binary, which finds it through its $ORIGIN rpath. On macOS the binary must link
# ONNX Runtime statically (scripts/build-onnxruntime.sh --from-source): this is checked with otool.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
usage: scripts/package-release.sh [options]

  --target TRIPLE   Rust target triple to build and pack (default: the host's, built without
                    --target into target/release)
  --skip-build      pack the binary already built, do not run cargo
  --dist DIR        output directory (default: dist)
  --dry-run         print every command instead of running it; writes nothing
  -h, --help        this text
EOF
}

die() { echo "package-release: error: $*" >&2; exit 1; }
say() { echo "package-release: $*" >&2; }

TARGET=""
SKIP_BUILD=0
DRY_RUN=0
DIST=$ROOT/dist

while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || die "--target needs a value"; TARGET=$2; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --dist) [ $# -ge 2 ] || die "--dist needs a value"; DIST=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
case "$DIST" in /*) ;; *) DIST=$PWD/$DIST ;; esac

# Prints the command; runs it unless --dry-run. Every side effect goes through here.
run() {
  printf '+ %s\n' "$*"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

have() { command -v "$1" >/dev/null 2>&1; }

NAME=akidb
# The version every crate of the workspace shares ([workspace.package] in the root manifest).
VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1)
[ -n "$VERSION" ] || die "no [workspace.package] version in $ROOT/Cargo.toml"

EXPLICIT_TARGET=1
if [ -z "$TARGET" ]; then
  EXPLICIT_TARGET=0
  have rustc || die "rustc is not installed (https://rustup.rs), or pass --target"
  TARGET=$(rustc -vV | sed -n 's/^host: //p')
  [ -n "$TARGET" ] || die "could not read the host triple from 'rustc -vV'"
fi
case "$TARGET" in
  *-apple-darwin) OS=macos ;;
  *-linux-gnu) OS=linux ;;
  *) die "unsupported target $TARGET (Linux gnu or macOS)" ;;
esac

STEM=$NAME-$VERSION-$TARGET
TARBALL=$DIST/$STEM.tar.gz
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
if [ "$EXPLICIT_TARGET" -eq 1 ]; then PROFILE_DIR=$TARGET_DIR/$TARGET/release; else PROFILE_DIR=$TARGET_DIR/release; fi
BIN=$PROFILE_DIR/$NAME
# Where build.rs took ONNX Runtime from (same order as build.rs).
ORT_LIB_DIR=${ORT_LIB_LOCATION:-${ORT_LIB_PATH:-$ROOT/third_party/onnxruntime/$TARGET/lib}}

START=$(date +%s)
say "packing $NAME $VERSION for $TARGET into $TARBALL"
[ "$DRY_RUN" -eq 0 ] || say "dry run: printing the commands, running none of them"

# The files every archive carries, checked before the long build.
missing=()
for f in README.md LICENSE config.example.toml; do
  [ -f "$ROOT/$f" ] || missing+=("$f")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$DRY_RUN" -eq 1 ]; then
    say "note: missing from $ROOT: ${missing[*]} (a real run stops here)"
  else
    die "missing from $ROOT: ${missing[*]}; every release archive ships them"
  fi
fi

if [ "$SKIP_BUILD" -eq 0 ]; then
  have cargo || [ "$DRY_RUN" -eq 1 ] || die "cargo is not installed (https://rustup.rs)"
  if [ "$EXPLICIT_TARGET" -eq 1 ]; then
    run cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" --target "$TARGET"
  else
    run cargo build --release --locked --manifest-path "$ROOT/Cargo.toml"
  fi
fi
[ -f "$BIN" ] || [ "$DRY_RUN" -eq 1 ] || die "no binary at $BIN (build it, or drop --skip-build)"

STAGE=$DIST/.stage-$STEM
PKG=$STAGE/$STEM
run rm -rf "$STAGE" "$TARBALL"
run mkdir -p "$PKG"
run cp "$BIN" "$PKG/$NAME"
for f in README.md LICENSE config.example.toml; do
  run cp "$ROOT/$f" "$PKG/$f"
done

LINKAGE=""
if [ "$OS" = macos ]; then
  # A release binary carries ONNX Runtime inside: otool -L must list no onnxruntime library.
  printf '+ otool -L %s | grep -i onnxruntime (must print nothing)\n' "$BIN"
  if [ "$DRY_RUN" -eq 0 ]; then
    have otool || die "otool is missing (xcode-select --install)"
    if otool -L "$BIN" | grep -i onnxruntime >&2; then
      die "$BIN links ONNX Runtime dynamically (above); a macOS release links it statically:
  scripts/build-onnxruntime.sh --from-source --force, then build again"
    fi
  fi
  LINKAGE="static"
else
  # Dynamic when the binary needs libonnxruntime.so.1 (the prebuilt wheel), static otherwise.
  dynamic=0
  if [ "$DRY_RUN" -eq 0 ]; then
    have readelf || die "readelf is missing (apt-get install binutils)"
    if readelf -d "$BIN" | grep -q 'NEEDED.*\[libonnxruntime\.so'; then dynamic=1; fi
  elif [ ! -f "$ORT_LIB_DIR/libonnxruntime.a" ]; then
    dynamic=1 # dry run: decide as build.rs would
  fi
  if [ "$dynamic" -eq 1 ]; then
    if [ "$DRY_RUN" -eq 0 ]; then
      # shellcheck disable=SC2016 # a literal $ORIGIN
      readelf -d "$BIN" | grep -E 'R(UN)?PATH' | grep -q '\$ORIGIN' ||
        die "$BIN has no \$ORIGIN rpath, so it would not find libonnxruntime.so.1 beside it (see build.rs)"
    fi
    # build.rs copied the library it linked into the profile directory; else take it at the source.
    lib=$PROFILE_DIR/libonnxruntime.so.1
    [ -e "$lib" ] || lib=$ORT_LIB_DIR/libonnxruntime.so.1
    [ -e "$lib" ] || [ "$DRY_RUN" -eq 1 ] || die "libonnxruntime.so.1 is in neither $PROFILE_DIR nor $ORT_LIB_DIR"
    # -L: the real file, under the name the binary asks for (its SONAME).
    run cp -L "$lib" "$PKG/libonnxruntime.so.1"
    if [ "$DRY_RUN" -eq 0 ]; then
      soname=$(readelf -d "$PKG/libonnxruntime.so.1" | sed -n 's/.*SONAME.*\[\(.*\)\].*/\1/p')
      [ "$soname" = libonnxruntime.so.1 ] || die "$lib has SONAME '$soname', not libonnxruntime.so.1"
    fi
    LINKAGE="dynamic (libonnxruntime.so.1 beside the binary)"
  else
    LINKAGE="static"
  fi
fi

NOTICES=$(dirname "$ORT_LIB_DIR")/licenses
if [ -d "$NOTICES" ] || [ "$DRY_RUN" -eq 1 ]; then
  run mkdir -p "$PKG/licenses/onnxruntime"
  for f in LICENSE ThirdPartyNotices.txt Privacy.md; do
    if [ -f "$NOTICES/$f" ] || [ "$DRY_RUN" -eq 1 ]; then run cp "$NOTICES/$f" "$PKG/licenses/onnxruntime/$f"; fi
  done
else
  say "warning: no ONNX Runtime license/notices in $NOTICES; the archive ships without them"
  say "         (scripts/build-onnxruntime.sh --force puts them there)"
fi

# Owner-neutral archives with GNU tar; no AppleDouble (._*) files with macOS's bsdtar.
tar_flags=()
if tar --version 2>/dev/null | grep -q 'GNU tar'; then tar_flags=(--owner=0 --group=0 --numeric-owner); fi
export COPYFILE_DISABLE=1
run tar -C "$STAGE" "${tar_flags[@]+"${tar_flags[@]}"}" -czf "$TARBALL" "$STEM"
run rm -rf "$STAGE"

# SHA256SUMS covers every akidb archive in the directory, so several targets can share it.
if have sha256sum; then sum=(sha256sum); else sum=(shasum -a 256); fi
printf '+ (cd %s && %s %s-*.tar.gz > SHA256SUMS)\n' "$DIST" "${sum[*]}" "$NAME"
if [ "$DRY_RUN" -eq 0 ]; then
  (cd "$DIST" && "${sum[@]}" "$NAME"-*.tar.gz >SHA256SUMS)
fi

ELAPSED=$(($(date +%s) - START))
say "done: $TARBALL"
say "  ONNX Runtime linkage: $LINKAGE"
if [ "$DRY_RUN" -eq 0 ]; then
  say "  $(grep " $STEM.tar.gz\$" "$DIST/SHA256SUMS" | cut -c1-64) (sha256)"
  say "  contents:"
  tar -tzf "$TARBALL" | sed 's/^/    /' >&2
else
  say "dry run: nothing was run and no file was written"
fi
say "  time taken: $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
