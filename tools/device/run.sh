#!/usr/bin/env bash
# Run THERE, on the GPU machine (Ubuntu 24.04, CUDA 13, CMake 4, g++ 13, no package registry),
# from the repo root: builds genrec with CUDA against the Debian packages that
# scripts/fetch-device-deps.sh put in .deps/, runs the CUDA tests, the CPU tests and the CUDA
# benchmarks (ops, dynamic table, training), and prints a summary table last. The packages
# are unpacked with `dpkg -x` into .deps/root (never into /) and every find step of the build
# is pointed there; shared libraries the system lacks are linked into .deps/runtime-lib, which
# is the only thing put on LD_LIBRARY_PATH, so no system library is ever shadowed.
#
#   tools/device/run.sh               unpack, configure, build, CUDA tests, CPU tests, benchmarks
#   tools/device/run.sh --build-only  unpack, configure, build (what can be checked without a GPU)
#   tools/device/run.sh --no-bench    everything but the benchmarks
#   tools/device/run.sh --prebuilt    unpack, then test and benchmark the binaries already in the
#                                     build directory (built elsewhere: see below)
# The build needs no GPU: `--build-only` on any x86-64 Linux machine with the CUDA toolkit and
# the .deb files compiles the same binaries, and `--prebuilt` runs them on the GPU machine
# without spending its time on compiling. The tests then run from the gtest binary itself
# (ctest's files name the build machine's paths), and the benchmarks whose binary is missing
# are skipped. The summary and the benchmarks name the commit the binaries were built from, which
# the build writes to source-commit in the build directory.
# Environment: GENREC_BUILD_DIR (build-device), GENREC_CUDA_ARCH (90a), GENREC_JOBS (nproc),
# GENREC_TEST_TIMEOUT (seconds per test, 600; with --prebuilt per half: CUDA, then CPU tests),
# GENREC_TABLE_BENCH_TIMEOUT (seconds, 300),
# GENREC_TARGETS (build only these CMake targets, e.g. "genrec_tests genrec_attention_bench").
# Logs go to $GENREC_LOG_DIR when it is set, else build-device/logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
DEPS="$REPO/.deps"
ROOT="$DEPS/root"
USR="$ROOT/usr"
ARCH=x86_64-linux-gnu
LIBDIR="$USR/lib/$ARCH"
BLASDIR="$LIBDIR/openblas-pthread"
RUNTIME="$DEPS/runtime-lib"
BUILD="${GENREC_BUILD_DIR:-build-device}"
CUDA_ARCH="${GENREC_CUDA_ARCH:-90a}"
JOBS="${GENREC_JOBS:-$(nproc)}"
LOGS="${GENREC_LOG_DIR:-$REPO/$BUILD/logs}"

build_only=0
prebuilt=0
bench=1
for arg in "$@"; do
  case "$arg" in
    --build-only) build_only=1 ;;
    --no-bench) bench=0 ;;
    --prebuilt) prebuilt=1 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

summary=()
failed=0
# summary_row NAME STATUS SECONDS DETAIL: one line of the summary table.
summary_row() {
  summary+=("$(printf '| %-22s | %-4s | %6ss | %s' "$@")")
}

# step NAME DETAIL-FILE COMMAND...: runs COMMAND, records ok/FAIL, seconds and a detail line (the
# detail file's lines joined by "; ", so that a table row stays one line).
step() {
  local name="$1" detail_file="$2"
  shift 2
  local start=$SECONDS rc detail=""
  echo "==== $name"
  "$@"
  rc=$?
  if [ -n "$detail_file" ] && [ -f "$detail_file" ]; then
    detail="$(awk 'NF { sub(/^ +/, ""); printf "%s%s", (n++ ? "; " : ""), $0 }' "$detail_file")"
  fi
  summary_row "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$((SECONDS - start))" "$detail"
  [ $rc -eq 0 ] || failed=1
  return $rc
}

# The commit the binaries were built from: the build writes it next to them (with "-dirty" when
# the tree had changes), so that --prebuilt binaries name their source, not this copy's HEAD.
source_commit() {
  git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'no git'
}
binaries_commit() {
  if [ $prebuilt -eq 1 ]; then
    cat "$BUILD/source-commit" 2>/dev/null || echo 'prebuilt, source unknown'
  else
    source_commit
  fi
}

print_summary() {
  echo
  echo "==== summary ($(binaries_commit), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo 'no nvidia-smi'))"
  printf '| %-22s | %-4s | %7s | %s\n' step rc time detail
  printf '|%s|%s|%s|%s\n' "------------------------" "------" "---------" "-------"
  for line in "${summary[@]}"; do echo "$line"; done
}

unpack() {
  shopt -s nullglob
  local debs=("$DEPS"/*.deb)
  if [ ${#debs[@]} -eq 0 ]; then
    echo "run.sh: no .deb files in .deps/: run scripts/fetch-device-deps.sh on a machine with the" \
      "Debian registry and bring .deps/ along" >&2
    return 1
  fi
  rm -rf "$ROOT" "$RUNTIME"
  mkdir -p "$ROOT" "$RUNTIME"
  for deb in "${debs[@]}"; do
    if command -v dpkg >/dev/null; then
      dpkg -x "$deb" "$ROOT" || return 1
    else  # no dpkg: a .deb is an ar archive holding data.tar.*
      (cd "$ROOT" && ar p "$deb" "$(ar t "$deb" | grep '^data\.tar')" | tar -x -f - -C "$ROOT") ||
        return 1
    fi
  done
  # pkg-config files say prefix=/usr (some give absolute /usr paths): point them into .deps.
  while IFS= read -r pc; do
    sed -i -e "s|=/usr/|=$USR/|g" -e "s|=/usr\$|=$USR|" -e "s|-I/usr/include|-I$USR/include|g" \
      "$pc"
  done < <(find "$USR" -name '*.pc')
  # zstd's .pc gives libdir /usr/lib; Debian ships the library in the multiarch directory.
  sed -i "s|^libdir=\${exec_prefix}/lib\$|libdir=\${exec_prefix}/lib/$ARCH|" "$LIBDIR/pkgconfig/libzstd.pc"
  # Runtime libraries the system lacks (at least libgfortran for OpenBLAS, usually all).
  # The cache is read once: `ldconfig -p | grep -q` under pipefail fails at random when grep
  # stops reading first (SIGPIPE), which would shadow a system library.
  local missing=() ldconfig cache
  ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
  cache="$("$ldconfig" -p 2>/dev/null)"
  for soname in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libfmt.so.9 \
    libyaml-cpp.so.0.7 libxxhash.so.0 libzstd.so.1 libpkgconf.so.3; do
    if ! grep -q "[[:space:]]$soname " <<<"$cache"; then
      local file
      file="$(find "$LIBDIR" "$BLASDIR" -maxdepth 1 -name "$soname" | head -1)"
      [ -n "$file" ] && ln -sf "$file" "$RUNTIME/$soname" && missing+=("$soname")
    fi
  done
  # pkgconf from .deps, run with its own library only.
  cat >"$DEPS/pkg-config" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$USR/bin/pkgconf" "\$@"
WRAPPER
  chmod +x "$DEPS/pkg-config"
  echo "$(ls "$DEPS"/*.deb | wc -l) packages into .deps/root; runtime-lib: ${missing[*]:-none}" \
    >"$LOGS/unpack.txt"
  cat "$LOGS/unpack.txt"
}

configure() {
  local pkg_config="$DEPS/pkg-config"
  if ! "$pkg_config" --version >/dev/null 2>&1; then
    pkg_config="$(command -v pkg-config || true)"
    echo "run.sh: bundled pkgconf does not run here; using '${pkg_config:-none}'"
  fi
  export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$USR/share/pkgconfig"
  export PKG_CONFIG_LIBDIR="$PKG_CONFIG_PATH"
  # CMAKE_POLICY_VERSION_MINIMUM: CMake 4 refuses package files that ask for policies < 3.5.
  # -rpath-link: lets the linker resolve libopenblas's own dependency (libgfortran) in .deps.
  # GENREC_ROCKSDB=OFF: .deps has no RocksDB, so binaries built on a machine that has it would
  # not load on the GPU machine.
  cmake -S "$REPO" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGENREC_CUDA=ON \
    -DGENREC_ROCKSDB=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
    -DCMAKE_PREFIX_PATH="$USR" \
    -DCMAKE_LIBRARY_PATH="$BLASDIR;$LIBDIR" \
    -DBLA_VENDOR=OpenBLAS \
    -DCBLAS_INCLUDE_DIR="$USR/include/$ARCH/openblas-pthread" \
    -DPKG_CONFIG_EXECUTABLE="$pkg_config" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$LIBDIR:$BLASDIR" \
    -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
    2>&1 | tee "$LOGS/configure.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  # Proof that the dependencies came from .deps: count compile commands naming it.
  local n
  n="$(grep -c "$ROOT" "$BUILD/compile_commands.json" 2>/dev/null || echo 0)"
  echo "$n compile commands reference .deps/root" >"$LOGS/configure.txt"
}

build() {
  # shellcheck disable=SC2086 # one word per target
  cmake --build "$BUILD" -j"$JOBS" ${GENREC_TARGETS:+--target $GENREC_TARGETS} 2>&1 | tee "$LOGS/build.log" | grep -E "error|warning|Linking|Built target" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  source_commit >"$BUILD/source-commit"
}

# run_tests NAME CUDA|CPU: the CUDA tests (names starting with Cuda) or the others, with a
# pass/fail count as the step detail; ctest (the CPU tests in parallel), or with --prebuilt the
# gtest binary itself under one timeout.
run_tests() {
  local name="$1" kind="$2" rc
  if [ "$prebuilt" -eq 1 ]; then
    local filter='Cuda*'
    [ "$kind" = CPU ] && filter='-Cuda*'
    timeout "${GENREC_TEST_TIMEOUT:-600}" "$BUILD/genrec_tests" --gtest_filter="$filter" 2>&1 |
      tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    grep -E "^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?[,.]" "$LOGS/$name.log" |
      sed -E 's/^\[ *([A-Z]+) *\] ([0-9]+) tests?.*/\2 \L\1/' | paste -sd, >"$LOGS/$name.txt"
    grep -E "^\[  FAILED +\] [A-Za-z]" "$LOGS/$name.log" | sed -E 's/^\[  FAILED  \] ([^ ]+).*/  failed: \1/' |
      sort -u | head -10 >>"$LOGS/$name.txt"
    if [ "$rc" -eq 124 ]; then
      echo "  timed out after ${GENREC_TEST_TIMEOUT:-600} s" >>"$LOGS/$name.txt"
    elif [ "$rc" -ne 0 ] && [ ! -s "$LOGS/$name.txt" ]; then
      echo "genrec_tests ended with status $rc before its summary" >"$LOGS/$name.txt"
    fi
    return "$rc"
  fi
  local args=(-R '^Cuda')
  [ "$kind" = CPU ] && args=(-E '^Cuda' -j"$JOBS")
  ctest --test-dir "$BUILD" --output-on-failure --timeout "${GENREC_TEST_TIMEOUT:-600}" "${args[@]}" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  grep -E "tests passed|tests failed" "$LOGS/$name.log" | tail -1 >"$LOGS/$name.txt"
  grep -E "^\s+[0-9]+ - .*\((Failed|SEGFAULT|Timeout|Subprocess aborted|Exception)" "$LOGS/$name.log" |
    head -10 | sed 's/^ */  failed: /' >>"$LOGS/$name.txt"
  return "$rc"
}

# check_prebuilt: the build directory holds the test binary (the benchmarks are optional), and
# the CUDA runtime the binaries were linked against is found where this machine's toolkit is
# (their run path names the build machine's).
check_prebuilt() {
  if [ ! -x "$BUILD/genrec_tests" ]; then
    echo "no $BUILD/genrec_tests: build it with run.sh --build-only" | tee "$LOGS/prebuilt.txt" >&2
    return 1
  fi
  local nvcc cuda dir
  nvcc="$(command -v nvcc || true)"
  cuda="${CUDA_HOME:-${nvcc:+$(dirname "$(dirname "$nvcc")")}}"
  cuda="${cuda:-/usr/local/cuda}"
  for dir in "$cuda/lib64" "$cuda/lib"; do
    [ -d "$dir" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir"
  done
  echo "binaries from $BUILD; CUDA libraries from $cuda" >"$LOGS/prebuilt.txt"
}

# bench_step NAME BINARY FUNCTION: a benchmark step, skipped (not failed) when only some targets
# were built (GENREC_TARGETS, or a --prebuilt directory without that binary).
bench_step() {
  if [ ! -x "$BUILD/$2" ]; then
    summary_row "$1" skip 0 "$2 not built"
    return 0
  fi
  step "$1" "$LOGS/$3.txt" "run_${3//-/_}"
}

run_bench() {
  GENREC_COMMIT="${GENREC_COMMIT:-$(binaries_commit)}" \
    "$BUILD/genrec_cuda_bench" 2>&1 | tee "$LOGS/bench.log"
  local rc=${PIPESTATUS[0]}
  grep -m1 "^device:" "$LOGS/bench.log" | cut -c1-60 >"$LOGS/bench.txt"
  return "$rc"
}

run_attention_bench() {
  GENREC_COMMIT="${GENREC_COMMIT:-$(binaries_commit)}" \
    "$BUILD/genrec_attention_bench" 2>&1 | tee "$LOGS/attention-bench.log"
  local rc=${PIPESTATUS[0]}
  grep -m1 "| 32 | 1024 | 4 | 128 | uniform" "$LOGS/attention-bench.log" |
    awk -F'|' '{print "B32 N1024 fwd+bwd" $9 "ms"}' >"$LOGS/attention-bench.txt"
  return "$rc"
}

# The dynamic-table benchmark: about a minute on an H100 (filling 96M-row tables dominates);
# the timeout keeps a hung kernel from stalling the run.
run_table_bench() {
  timeout "${GENREC_TABLE_BENCH_TIMEOUT:-300}" "$BUILD/genrec_table_bench" 2>&1 | tee "$LOGS/table-bench.log"
  local rc=${PIPESTATUS[0]}
  grep -m1 "^total" "$LOGS/table-bench.log" >"$LOGS/table-bench.txt"
  return "$rc"
}

run_train_bench() {
  "$BUILD/genrec_train_bench" --device cuda 2>&1 | tee "$LOGS/train-bench.log"
  local rc=${PIPESTATUS[0]}
  grep -m1 "all max" "$LOGS/train-bench.log" | awk -F'|' '{print $10 " tokens/s"}' >"$LOGS/train-bench.txt"
  return "$rc"
}

mkdir -p "$LOGS" "$BUILD"
export LD_LIBRARY_PATH="$RUNTIME${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
step unpack "$LOGS/unpack.txt" unpack &&
  if [ $prebuilt -eq 1 ]; then
    step "prebuilt binaries" "$LOGS/prebuilt.txt" check_prebuilt
  else
    step configure "$LOGS/configure.txt" configure && step build "" build
  fi
built=$?
if [ $built -eq 0 ] && [ $build_only -eq 0 ]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "run.sh: nvidia-smi finds no GPU; the CUDA tests will skip themselves"
  fi
  step "CUDA tests" "$LOGS/cuda-tests.txt" run_tests cuda-tests CUDA
  step "CPU tests" "$LOGS/cpu-tests.txt" run_tests cpu-tests CPU
  if [ $bench -eq 1 ]; then
    bench_step benchmark genrec_cuda_bench bench
    bench_step "attention benchmark" genrec_attention_bench attention-bench
    bench_step "table benchmark" genrec_table_bench table-bench
    bench_step "train benchmark" genrec_train_bench train-bench
  fi
fi
print_summary
exit $failed
