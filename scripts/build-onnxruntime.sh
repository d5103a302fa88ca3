#!/usr/bin/env bash
# Provides ONNX Runtime for akidb in third_party/onnxruntime/<target>/lib, at the version pinned in
# Cargo.toml ([package.metadata.onnxruntime]), so that build.rs can link it with no download by ort.
#
#   --prebuilt      the official `onnxruntime` wheel from PyPI (libonnxruntime.so on Linux, a
#                   CoreML-enabled libonnxruntime.dylib on macOS arm64): fast, dynamic.
#   --from-source   clone microsoft/onnxruntime at the pinned tag and build Release static libraries,
#                   merged into one libonnxruntime.a (CoreML EP on macOS): slow, one static binary.
#   --merge-from D  only the last steps of --from-source on an existing build tree D: collect the
#                   archives ONNX Runtime's own shared library links, merge, link-check.
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
  --merge-from DIR      collect, check, merge and link-check the archives of an existing ONNX
                        Runtime build tree (DIR is <build_dir>/Release); builds nothing
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
MERGE_FROM=""

while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) MODE=prebuilt ;;
    --from-source) MODE=from-source ;;
    --merge-from) [ $# -ge 2 ] || die "--merge-from needs a value"; MODE=merge; MERGE_FROM=$2; shift ;;
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
# The lowest macOS the library (and akidb linked with it) runs on: what ONNX Runtime's own macOS
# release of this version declares (LC_BUILD_VERSION minos 14.0 in the PyPI wheel's dylib). The
# release workflow sets MACOSX_DEPLOYMENT_TARGET to the same value for akidb's own objects.
MACOS_MIN=14.0

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
  merge) [ -d "$MERGE_FROM" ] || die "--merge-from $MERGE_FROM: no such directory" ;;
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
# A merged tree is what --from-source provides: build.rs accepts it the same way.
WANT_STAMP="version=$VERSION mode=${MODE/#merge/from-source} target=$TARGET"

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

if [ "$MODE" != merge ] && [ "$FORCE" -eq 0 ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$WANT_STAMP" ]; then
  say "ONNX Runtime $VERSION ($MODE) already provided in $OUT; nothing to do (--force to redo)"
  exit 0
fi

START=$(date +%s)
say "providing ONNX Runtime $VERSION for $TARGET ($MODE) in $OUT"
[ "$DRY_RUN" -eq 0 ] || say "dry run: printing the commands, running none of them"
# A stamp from an earlier run must not vouch for a library this run fails to finish.
run rm -f "$STAMP"

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
  # "Sources checked"). The component libraries are static in every build; --build_shared_lib adds
  # ONNX Runtime's own shared library, whose link line (CMakeFiles/onnxruntime.dir/link.txt, from
  # the Makefile generator) is the list of archives to merge, and whose build builds every one of
  # them (model_package, re2, ...). The shared library itself is not used.
  local args=(
    --config "$config" --build_dir "$build" --update --build --parallel "$JOBS"
    --skip_tests --compile_no_warning_as_error --skip_submodule_sync
    --build_shared_lib --cmake_generator "Unix Makefiles"
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
    args+=(--use_coreml --osx_arch "$osx_arch" --apple_deploy_target "$MACOS_MIN")
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
  merge_tree "$build/$config" "$src"
}

# Collect, check, merge, link-check: the part of --from-source that needs no network and no
# compiler toolchain for ONNX Runtime, so it also runs alone (--merge-from) and in tests.
# merge_tree BUILT [SRC]: BUILT is <build_dir>/<config>; SRC the checkout (licenses), if any.
merge_tree() {
  local built=$1 src=${2:-}
  local archives=() a list
  # An archive from an earlier run must not outlive a merge this run fails to finish.
  run rm -rf "$OUT/lib"
  if [ "$DRY_RUN" -eq 0 ]; then
    [ -d "$built" ] || die "$built does not exist (did build.sh finish?)"
    # A command substitution, not `done < <(...)`: `die` in a process substitution only ends that
    # subshell, and the merge would go on with the archives listed before it.
    list=$(link_line_archives "$built") || exit 1
    while IFS= read -r a; do [ -z "$a" ] || archives+=("$a"); done <<<"$list"
    # (bash 3.2, macOS's, treats "${empty[@]}" as unbound under set -u: test the count first)
    [ "${#archives[@]}" -gt 0 ] || die "the link line in $built/$LINK_TXT names no static library"
    check_archives "$built" "${archives[@]}"
  else
    archives=("<the archives named in $built/$LINK_TXT>")
  fi
  run mkdir -p "$OUT/lib"
  if [ -n "$src" ]; then
    run rm -rf "$OUT/licenses"
    run mkdir -p "$OUT/licenses"
    run cp "$src/LICENSE" "$src/ThirdPartyNotices.txt" "$OUT/licenses/"
  fi
  if [ "$OS" = macos ]; then
    run libtool -static -no_warning_for_no_symbols -o "$OUT/lib/libonnxruntime.a" "${archives[@]}"
  else
    merge_with_ar "$OUT/lib/libonnxruntime.a" "${archives[@]}"
  fi
  [ "$DRY_RUN" -eq 1 ] || say "merged ${#archives[@]} archives into $OUT/lib/libonnxruntime.a"
  link_check "$OUT/lib/libonnxruntime.a" "$built"
  EPS="CPU"
  if [ -f "$built/libonnxruntime_providers_coreml.a" ] || { [ "$DRY_RUN" -eq 1 ] && [ "$OS" = macos ]; }; then
    EPS="CPU, CoreML"
  fi
}

# Written by CMake's Makefile generator for ONNX Runtime's shared library (--build_shared_lib):
# the exact command that links libonnxruntime.so/.dylib from its static libraries.
LINK_TXT=CMakeFiles/onnxruntime.dir/link.txt

# The static libraries ONNX Runtime's own shared library links, one absolute path per line, in
# link order: what the release build needs, whatever subfolder a release puts them in
# (model_package/, _deps/re2-build, _deps/abseil_cpp-build/absl/...). Defensive filters on top:
# never test/mock/benchmark libraries, never the protobuf compiler, and not the full protobuf
# when the lite one is also named (both define the same symbols).
link_line_archives() {
  local dir=$1 words=() w path lite="" seen=" "
  [ -f "$dir/$LINK_TXT" ] ||
    die "no $LINK_TXT in $dir: the archive list comes from the link line of ONNX Runtime's shared library; build with build.sh --build_shared_lib --cmake_generator 'Unix Makefiles'"
  read -ra words <<<"$(tr '\n' ' ' <"$dir/$LINK_TXT")"
  for w in "${words[@]}"; do
    case "$w" in */libprotobuf-lite.a | libprotobuf-lite.a) lite=1 ;; esac
  done
  for w in "${words[@]}"; do
    w=${w##-Wl,*,} # -Wl,-force_load,path and similar
    case "$w" in *.a) ;; *) continue ;; esac
    case "$w" in /*) path=$w ;; *) path=$dir/$w ;; esac
    case "$(basename "$path")" in
      *gtest* | *gmock* | *benchmark* | *fuzz*) continue ;;
      libprotoc.a | libprotoc-*.a) continue ;;
      libprotobuf.a) [ -n "$lite" ] && continue ;;
    esac
    [ -f "$path" ] || die "$LINK_TXT names $w, which is not in $dir (was the build interrupted?)"
    case "$seen" in *" $path "*) continue ;; esac
    seen+="$path "
    printf '%s\n' "$path"
  done
}

# Fails clearly when an archive a static link cannot do without is missing from the list.
check_archives() {
  local dir=$1
  shift
  local list=" $* " want
  local required=(libonnxruntime_session.a libonnxruntime_framework.a libonnxruntime_graph.a
    libonnxruntime_common.a libonnxruntime_mlas.a libonnxruntime_providers.a libonnx.a libonnx_proto.a libre2.a)
  [ "$OS" = macos ] && required+=(libonnxruntime_providers_coreml.a libcoreml_proto.a)
  # arm64 builds of 1.31 link Arm's KleidiAI micro-kernels into MLAS (onnxruntime_USE_KLEIDIAI).
  [ "$TARGET" = aarch64-apple-darwin ] && required+=(libkleidiai.a)
  for want in "${required[@]}"; do
    case "$list" in */"$want"\ *) ;; *) die "$want is missing from the link line in $dir/$LINK_TXT" ;; esac
  done
  case "$list" in */libprotobuf-lite.a\ * | */libprotobuf.a\ *) ;; *) die "no protobuf archive on the link line in $dir/$LINK_TXT" ;; esac
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

# Links scripts/lib/ort-link-check.c against the merged archive (plus the C++ runtime; on macOS
# Foundation and CoreML) and runs it: it calls OrtGetApiBase() and creates an environment. On a
# link failure it lists the undefined symbols and the archives of the build tree that define them.
link_check() {
  local archive=$1 built=$2 cc=${CC:-cc} api=${VERSION#*.}
  api=${api%%.*}
  local system_libs=(-lstdc++ -lm -lpthread -ldl)
  [ "$OS" = macos ] && system_libs=(-lc++ -framework Foundation -framework CoreML)
  if [ "$TARGET" != "$(host_triple)" ]; then
    say "note: skipped the link check: $TARGET is not this machine's target ($(host_triple))"
    return 0
  fi
  local tmp=/tmp/akidb-link-check.XXXXXX
  if [ "$DRY_RUN" -eq 0 ]; then
    need "$cc" "the link check compiles a small C program (apt-get install gcc / xcode-select --install; or set CC)"
    tmp=$(mktemp -d /tmp/akidb-link-check.XXXXXX)
  fi
  printf '+ %s\n' "$cc -DAKIDB_ORT_API_VERSION=$api -o $tmp/check $ROOT/scripts/lib/ort-link-check.c $archive ${system_libs[*]}"
  printf '+ %s\n' "$tmp/check"
  [ "$DRY_RUN" -eq 0 ] || return 0
  local log=$tmp/link.log
  if ! "$cc" -DAKIDB_ORT_API_VERSION="$api" -o "$tmp/check" "$ROOT/scripts/lib/ort-link-check.c" "$archive" \
    "${system_libs[@]}" >"$log" 2>&1; then
    local symbols
    # GNU ld: undefined reference to `sym'; lld: undefined symbol: sym; ld64: "_sym", referenced from:
    symbols=$(sed -n -e "s/.*undefined reference to \`\([^']*\)'.*/\1/p" -e 's/.*undefined symbol: \(.*\)$/\1/p' \
      -e 's/^ *"\([^"]*\)", referenced from:.*/\1/p' "$log" | sort -u)
    {
      echo "build-onnxruntime: error: $archive does not link: a program calling OrtGetApiBase() has undefined symbols."
      if [ -n "$symbols" ]; then
        echo "undefined symbols ($(printf '%s\n' "$symbols" | wc -l | tr -d ' ')):"
        printf '%s\n' "$symbols" | head -n 40 | sed 's/^/  /'
        defined_in "$built" "$symbols"
      else
        echo "linker output:"
        sed 's/^/  /' "$log"
      fi
    } >&2
    rm -rf "$tmp"
    exit 1
  fi
  local ran
  if ! ran=$("$tmp/check" 2>&1); then
    rm -rf "$tmp"
    die "the link-check program linked but failed: $ran"
  fi
  rm -rf "$tmp"
  say "link check passed: a C program links against libonnxruntime.a and creates an environment (ONNX Runtime $ran)"
}

# defined_in BUILT SYMBOLS: names the archives under BUILT (not merged) that define the symbols,
# which is the archive the link line or the merge missed.
defined_in() {
  local built=$1 symbols=$2 hits
  command -v nm >/dev/null 2>&1 || return 0
  hits=$(find "$built" -name CMakeFiles -prune -o -type f -name '*.a' -print 2>/dev/null | while IFS= read -r a; do
    nm -g --defined-only "$a" 2>/dev/null | awk -v a="${a#"$built"/}" 'NF >= 3 { print $3 "\t" a }'
  done | awk -F '\t' 'NR == FNR { want[$0] = 1; next } ($1 in want) { print "  " $1 " is defined in " $2 }' \
    <(printf '%s\n' "$symbols") - | sort -u | head -n 40)
  if [ -n "$hits" ]; then
    echo "archives in $built that define them (missing from the link line or the merge):"
    printf '%s\n' "$hits"
  else
    echo "no archive in $built defines them"
  fi
}

case "$MODE" in
  prebuilt) provide_prebuilt ;;
  from-source) provide_from_source ;;
  merge)
    MERGE_FROM=$(absolute "$MERGE_FROM")
    merge_tree "$MERGE_FROM"
    TELEMETRY="as built in $MERGE_FROM"
    ;;
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
