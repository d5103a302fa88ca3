#!/usr/bin/env bash
# Provides ONNX Runtime for akidb in third_party/onnxruntime/<target>/lib, at the version pinned in
# Cargo.toml ([package.metadata.onnxruntime]), so that build.rs can link it with no download by ort.
#
#   --prebuilt      the official `onnxruntime` wheel from PyPI (libonnxruntime.so on Linux, a
#                   CoreML-enabled libonnxruntime.dylib on macOS arm64): fast, dynamic.
#   --from-source   clone microsoft/onnxruntime at the pinned tag and build Release static libraries,
#                   merged into one libonnxruntime.a (CoreML EP on macOS): slow, one static binary.
#
# Default: --prebuilt on Linux, --from-source on macOS; AKIDB_ORT_SOURCE=prebuilt|from-source
# overrides. A second run with the same version and mode does nothing (--force redoes it).
# docs/building-onnxruntime.md explains the choices and lists the sources the flags were checked on.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
usage: scripts/build-onnxruntime.sh [--prebuilt | --from-source] [options]

  --prebuilt            unpack the official onnxruntime wheel from PyPI (default on Linux)
  --from-source         build static libraries from source (default on macOS; CoreML EP there)
  --target TRIPLE       Rust target triple to provide for (default: the host's)
  --jobs N              parallel build jobs for --from-source (default: all cores)
  --source-cache DIR    where the onnxruntime checkout lives and is reused
                        (default: $AKIDB_ORT_SOURCE_CACHE or third_party/src)
  --out DIR             output directory (default: third_party/onnxruntime/<target>)
  --force               redo the work even if the output is already there
  --dry-run             print every command instead of running it; touches no file
  -h, --help            this text

environment: AKIDB_ORT_SOURCE=prebuilt|from-source picks the default mode; PYTHON picks the
Python used for pip (default python3).
EOF
}

die() { echo "build-onnxruntime: error: $*" >&2; exit 1; }
say() { echo "build-onnxruntime: $*" >&2; }

MODE=${AKIDB_ORT_SOURCE:-}
TARGET=${AKIDB_ORT_TARGET:-}
JOBS=""
SOURCE_CACHE=${AKIDB_ORT_SOURCE_CACHE:-$ROOT/third_party/src}
OUT=""
FORCE=0
DRY_RUN=0

while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) MODE=prebuilt ;;
    --from-source) MODE=from-source ;;
    --target) [ $# -ge 2 ] || die "--target needs a value"; TARGET=$2; shift ;;
    --jobs) [ $# -ge 2 ] || die "--jobs needs a value"; JOBS=$2; shift ;;
    --source-cache) [ $# -ge 2 ] || die "--source-cache needs a value"; SOURCE_CACHE=$2; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift ;;
    --force) FORCE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# shellcheck source=/dev/null # lib/ort-version.sh is shellchecked on its own
source "$ROOT/scripts/lib/ort-version.sh"
VERSION=$(akidb_ort_version "$ROOT") || exit 1

host_triple() {
  if command -v rustc >/dev/null 2>&1; then
    rustc -vV | sed -n 's/^host: //p'
    return
  fi
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) echo x86_64-unknown-linux-gnu ;;
    Linux-aarch64) echo aarch64-unknown-linux-gnu ;;
    Darwin-arm64) echo aarch64-apple-darwin ;;
    Darwin-x86_64) echo x86_64-apple-darwin ;;
    *) die "unsupported host $(uname -s) $(uname -m); pass --target" ;;
  esac
}

[ -n "$TARGET" ] || TARGET=$(host_triple)
case "$TARGET" in
  x86_64-apple-darwin | aarch64-apple-darwin) OS=macos ;;
  x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu) OS=linux ;;
  *) die "unsupported target $TARGET (supported: x86_64/aarch64-unknown-linux-gnu, aarch64/x86_64-apple-darwin)" ;;
esac
ARCH=${TARGET%%-*}

if [ -z "$MODE" ]; then
  if [ "$OS" = macos ]; then MODE=from-source; else MODE=prebuilt; fi
fi
case "$MODE" in
  prebuilt | from-source) ;;
  *) die "AKIDB_ORT_SOURCE must be 'prebuilt' or 'from-source', not '$MODE'" ;;
esac

if [ -z "$JOBS" ]; then
  JOBS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
fi
case "$JOBS" in '' | *[!0-9]* | 0) die "--jobs takes a positive whole number, not '$JOBS'" ;; esac

# Absolute paths: build.py runs from ONNX Runtime's checkout, not from here.
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
SOURCE_CACHE=$(absolute "$SOURCE_CACHE")
[ -n "$OUT" ] || OUT=$ROOT/third_party/onnxruntime/$TARGET
OUT=$(absolute "$OUT")
STAMP=$OUT/akidb-onnxruntime.stamp
WANT_STAMP="version=$VERSION mode=$MODE target=$TARGET"

# Prints the command; runs it unless --dry-run. Every side effect goes through here.
run() {
  printf '+ %s\n' "$*"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

# need TOOL WHY: fails clearly when TOOL is missing (only notes it under --dry-run).
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$DRY_RUN" -eq 1 ]; then say "note: '$1' is not installed here ($2)"; return 0; fi
  die "'$1' is required: $2"
}

# version_at_least HAVE WANT: true when dotted version HAVE >= WANT (numeric, component-wise).
version_at_least() {
  local have=$1 want=$2 h w
  while [ -n "$want" ]; do
    h=${have%%.*} w=${want%%.*}
    h=${h%%[!0-9]*} w=${w%%[!0-9]*}
    [ "${h:-0}" -gt "${w:-0}" ] && return 0
    [ "${h:-0}" -lt "${w:-0}" ] && return 1
    case "$have" in *.*) have=${have#*.} ;; *) have="" ;; esac
    case "$want" in *.*) want=${want#*.} ;; *) want="" ;; esac
  done
  return 0
}

if [ "$FORCE" -eq 0 ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$WANT_STAMP" ]; then
  say "ONNX Runtime $VERSION ($MODE) already provided in $OUT; nothing to do (--force to redo)"
  exit 0
fi

START=$(date +%s)
say "providing ONNX Runtime $VERSION for $TARGET ($MODE) in $OUT"
[ "$DRY_RUN" -eq 0 ] || say "dry run: printing the commands, running none of them"

EPS=""
TELEMETRY=""

provide_prebuilt() {
  local platform pyver=3.12
  case "$TARGET" in
    x86_64-unknown-linux-gnu) platform=manylinux_2_28_x86_64 ;;
    aarch64-unknown-linux-gnu) platform=manylinux_2_28_aarch64 ;;
    aarch64-apple-darwin) platform=macosx_14_0_arm64 ;;
    *) die "PyPI has no onnxruntime $VERSION wheel for $TARGET; use --from-source" ;;
  esac
  local py=${PYTHON:-python3}
  need "$py" "the wheel is fetched with pip (apt-get install python3-pip, or set PYTHON)"
  if [ "$DRY_RUN" -eq 0 ] && ! "$py" -m pip --version >/dev/null 2>&1; then
    die "pip is missing for $py (apt-get install python3-pip, or set PYTHON)"
  fi
  local tmp
  if [ "$DRY_RUN" -eq 1 ]; then tmp=/tmp/akidb-ort-wheel.XXXXXX; else tmp=$(mktemp -d /tmp/akidb-ort-wheel.XXXXXX); fi
  # shellcheck disable=SC2064 # expand $tmp now: it is local
  [ "$DRY_RUN" -eq 1 ] || trap "rm -rf '$tmp'" EXIT
  say "downloading the onnxruntime==$VERSION wheel ($platform) from PyPI"
  if ! run "$py" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "$platform" --python-version "$pyver" --implementation cp \
    --dest "$tmp" "onnxruntime==$VERSION"; then
    die "pip could not download onnxruntime==$VERSION for $platform (is PyPI reachable? proxy settings?)"
  fi
  run "$py" -m zipfile -e "$tmp"/onnxruntime-"$VERSION"-*.whl "$tmp/wheel"
  run rm -rf "$OUT/lib"
  run mkdir -p "$OUT/lib"
  if [ "$OS" = linux ]; then
    run cp "$tmp/wheel/onnxruntime/capi/libonnxruntime.so.$VERSION" "$OUT/lib/"
    # The SONAME is libonnxruntime.so.1; the linker looks for libonnxruntime.so.
    run ln -sf "libonnxruntime.so.$VERSION" "$OUT/lib/libonnxruntime.so.1"
    run ln -sf "libonnxruntime.so.$VERSION" "$OUT/lib/libonnxruntime.so"
  else
    run cp "$tmp/wheel/onnxruntime/capi/libonnxruntime.$VERSION.dylib" "$OUT/lib/"
    # The dylib's install name is @rpath/libonnxruntime.1.dylib (checked in the 1.31.1 wheel):
    # that is the name the binary asks dyld for. The linker looks for libonnxruntime.dylib.
    run ln -sf "libonnxruntime.$VERSION.dylib" "$OUT/lib/libonnxruntime.1.dylib"
    run ln -sf "libonnxruntime.$VERSION.dylib" "$OUT/lib/libonnxruntime.dylib"
  fi
  # ONNX Runtime's license and its dependencies' notices go with any binary that ships it.
  run rm -rf "$OUT/licenses"
  run mkdir -p "$OUT/licenses"
  run cp "$tmp/wheel/onnxruntime/LICENSE" "$tmp/wheel/onnxruntime/ThirdPartyNotices.txt" \
    "$tmp/wheel/onnxruntime/Privacy.md" "$OUT/licenses/"
  # The macOS arm64 wheel is built with the CoreML EP; the Linux one has the CPU EP only. Both
  # official builds have Microsoft's 1DS telemetry compiled in.
  if [ "$OS" = macos ]; then EPS="CPU, CoreML"; else EPS="CPU"; fi
  TELEMETRY="compiled in (official build; ORT_DISABLE_TELEMETRY=1 turns it off at run time)"
}

provide_from_source() {
  need git "to clone microsoft/onnxruntime (apt-get install git / xcode-select --install)"
  need cmake "ONNX Runtime $VERSION needs CMake 3.28 or newer (pip install 'cmake>=3.28', or brew install cmake)"
  need python3 "ONNX Runtime's build.sh runs tools/ci_build/build.py with python3 (3.10 or newer)"
  if [ "$OS" = macos ]; then
    need xcrun "the Xcode command-line tools (xcode-select --install)"
    need libtool "Apple's libtool merges the archives (xcode-select --install)"
    need patch "the CoreML EP patches coremltools while configuring (xcode-select --install)"
  else
    need ar "binutils merges the archives (apt-get install binutils)"
    need ranlib "binutils indexes the merged archive (apt-get install binutils)"
  fi
  if [ "$DRY_RUN" -eq 0 ]; then
    local cmake_version
    cmake_version=$(cmake --version | sed -n '1s/^cmake version \([0-9.]*\).*/\1/p')
    version_at_least "${cmake_version:-0}" 3.28 ||
      die "CMake ${cmake_version:-(unknown version)} is too old: ONNX Runtime $VERSION needs 3.28 or newer (pip install 'cmake>=3.28')"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
      die "python3 is $(python3 -c 'import sys; print(sys.version.split()[0])'); ONNX Runtime's build.py needs 3.10 or newer"
  fi

  local src=$SOURCE_CACHE/onnxruntime-$VERSION
  local build=$src/build/$TARGET
  local config=Release
  if [ -d "$src/.git" ]; then
    say "reusing the checkout in $src"
  else
    run mkdir -p "$SOURCE_CACHE"
    # Dependencies come from cmake/deps.txt through FetchContent while configuring (network!);
    # the submodules (emsdk, for WebAssembly, in recent releases) are cheap, so clone them too
    # and tell build.py not to touch git again (--skip_submodule_sync).
    if ! run git clone --depth 1 --branch "v$VERSION" --recurse-submodules --shallow-submodules \
      https://github.com/microsoft/onnxruntime.git "$src"; then
      die "git could not clone microsoft/onnxruntime at v$VERSION (is github.com reachable? does the tag exist?)"
    fi
  fi

  # Flags checked against tools/ci_build/build.py and build_args.py (docs/building-onnxruntime.md,
  # "Sources checked"). Static libraries are the default (no --build_shared_lib).
  local args=(
    --config "$config" --build_dir "$build" --update --build --parallel "$JOBS"
    --skip_tests --compile_no_warning_as_error --skip_submodule_sync
  )
  # Telemetry is on by default in build.py for Linux and macOS since ONNX Runtime 1.29 and would
  # put the 1DS SDK, curl and mbedTLS into the static link; --no_telemetry compiles it out.
  # Releases from before that option had no telemetry there and would reject the flag.
  if [ "$DRY_RUN" -eq 1 ] || grep -qs -- '--no_telemetry' "$src/tools/ci_build/build_args.py" "$src/tools/ci_build/build.py"; then
    args+=(--no_telemetry)
    TELEMETRY="compiled out (--no_telemetry)"
  else
    TELEMETRY="not compiled in (this release has no telemetry on $OS source builds)"
  fi
  if [ "$OS" = macos ]; then
    local osx_arch=arm64
    [ "$ARCH" = x86_64 ] && osx_arch=x86_64
    args+=(--use_coreml --osx_arch "$osx_arch" --apple_deploy_target 13.4)
  else
    # build.py refuses to run as root on Linux without it (containers); harmless otherwise.
    args+=(--allow_running_as_root)
  fi
  # onnxruntime_BUILD_UNIT_TESTS=OFF: no test programs, no googletest. CMAKE_POLICY_VERSION_MINIMUM:
  # lets CMake 4 configure dependencies that still declare cmake_minimum_required < 3.5 (CMake 3.x
  # ignores it). Keep these last: --cmake_extra_defines takes every value up to the next flag.
  args+=(--cmake_extra_defines onnxruntime_BUILD_UNIT_TESTS=OFF CMAKE_POLICY_VERSION_MINIMUM=3.5)

  say "building ONNX Runtime $VERSION from source with $JOBS jobs (tens of minutes to over an hour)"
  run "$src/build.sh" "${args[@]}"

  # One archive, which build.rs links alone: nothing to list per abseil/protobuf component.
  local built=$build/$config
  local archives=() a
  if [ "$DRY_RUN" -eq 0 ]; then
    [ -d "$built" ] || die "build.sh finished but $built does not exist"
    while IFS= read -r a; do archives+=("$a"); done < <(list_archives "$built")
    # (bash 3.2, macOS's, treats "${empty[@]}" as unbound under set -u: test the count first)
    [ "${#archives[@]}" -gt 0 ] || die "no static libraries found under $built (did build.sh build a shared library?)"
    check_archives "$built" "${archives[@]}"
  else
    archives=("$built/libonnxruntime_*.a" "$built/_deps/*-build/**/*.a")
    [ "$OS" = macos ] && archives+=("$built/libcoreml_proto.a")
  fi
  run rm -rf "$OUT/lib"
  run mkdir -p "$OUT/lib"
  run rm -rf "$OUT/licenses"
  run mkdir -p "$OUT/licenses"
  run cp "$src/LICENSE" "$src/ThirdPartyNotices.txt" "$OUT/licenses/"
  if [ "$OS" = macos ]; then
    run libtool -static -no_warning_for_no_symbols -o "$OUT/lib/libonnxruntime.a" "${archives[@]}"
  else
    merge_with_ar "$OUT/lib/libonnxruntime.a" "${archives[@]}"
  fi
  EPS="CPU"
  if [ -f "$built/libonnxruntime_providers_coreml.a" ] || { [ "$DRY_RUN" -eq 1 ] && [ "$OS" = macos ]; }; then
    EPS="CPU, CoreML"
  fi
}

# The static libraries the runtime needs, one per line: ONNX Runtime's own (libonnxruntime_*.a,
# libcoreml_proto.a) and its dependencies under _deps/*-build (abseil, protobuf-lite, onnx,
# onnx_proto, re2, cpuinfo, flatbuffers, kleidiai, utf8_range/utf8_validity, nsync: whatever this
# release builds). Not test, mock, benchmark or fuzzing libraries, not the protobuf compiler, and
# not the full protobuf when the lite one is there (ONNX Runtime links lite by default; both would
# define the same symbols).
list_archives() {
  local dir=$1 lite
  lite=$(find "$dir/_deps" -name 'libprotobuf-lite.a' -print -quit 2>/dev/null || true)
  {
    find "$dir" -maxdepth 1 -type f \( -name 'libonnxruntime_*.a' -o -name 'libcoreml_proto.a' \)
    if [ -d "$dir/_deps" ]; then
      find "$dir/_deps" \( -name '*-src' -o -name '*-subbuild' -o -name CMakeFiles \) -prune -o \
        -type f -name '*.a' -print
    fi
  } | while IFS= read -r a; do
    case "$(basename "$a")" in
      *test* | *mock* | *benchmark* | *fuzz* | *mutator*) continue ;; # gtest, gmock: covered
      libprotoc.a | libprotoc-*.a) continue ;;
      libprotobuf.a) [ -n "$lite" ] && continue ;;
    esac
    printf '%s\n' "$a"
  done | sort -u
}

# Fails clearly when an archive a static link cannot do without is missing from the list.
check_archives() {
  local dir=$1
  shift
  local list=" $* " want
  local required=(libonnxruntime_session.a libonnxruntime_framework.a libonnxruntime_graph.a
    libonnxruntime_common.a libonnxruntime_mlas.a libonnxruntime_providers.a libonnx.a libonnx_proto.a)
  [ "$OS" = macos ] && required+=(libonnxruntime_providers_coreml.a libcoreml_proto.a)
  for want in "${required[@]}"; do
    case "$list" in */"$want"\ *) ;; *) die "$want is missing from the archives under $dir" ;; esac
  done
  case "$list" in */libprotobuf-lite.a\ * | */libprotobuf.a\ *) ;; *) die "no protobuf archive under $dir/_deps" ;; esac
}

# GNU ar's MRI script language merges archives member by member (ar -M); its parser splits on
# spaces and treats + ; * , specially, so such paths are refused.
merge_with_ar() {
  local out=$1
  shift
  local mri="create $out"$'\n'
  local a
  if [ "$DRY_RUN" -eq 0 ]; then
    for a in "$out" "$@"; do
      case "$a" in
        *[[:space:]+\;*,]*) die "ar -M cannot take the path '$a' (spaces or + ; * ,): use --source-cache and --out without them" ;;
      esac
    done
  fi
  for a in "$@"; do mri+="addlib $a"$'\n'; done
  mri+=$'save\nend\n'
  printf '+ ar -M <<MRI (create %s; addlib %s; save; end)\n' "$out" "$*"
  printf '+ ranlib %s\n' "$out"
  if [ "$DRY_RUN" -eq 0 ]; then
    printf '%s' "$mri" | ar -M
    ranlib "$out"
  fi
}

case "$MODE" in
  prebuilt) provide_prebuilt ;;
  from-source) provide_from_source ;;
esac

if [ "$DRY_RUN" -eq 0 ]; then
  printf '%s\neps=%s\ntelemetry=%s\n' "$WANT_STAMP" "$EPS" "$TELEMETRY" >"$STAMP"
fi
ELAPSED=$(($(date +%s) - START))
say "done: ONNX Runtime $VERSION ($MODE) for $TARGET"
say "  execution providers: $EPS"
say "  telemetry: $TELEMETRY"
say "  time taken: $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
say "  library directory: $OUT/lib (license and notices: $OUT/licenses)"
if [ "$DRY_RUN" -eq 1 ]; then say "dry run: nothing was run and no file was written"; fi
