#!/usr/bin/env bash
# The whole GPU check in one command, for the lent GPU machine (docs/gpu-check.md):
#   1. configure + build (Ninja, Release, CUDA arch 90; the gpushim command only where CLI11 is found),
#   2. ctest -L gpu (alloc_torture x 3 builds x every backend, PyTorch/CuPy/JAX with and without gpushim),
#   3. alloc_bench once without gpushim (cudaMalloc and cudaMallocAsync) and once under each backend,
#   4. with --macro: three PyTorch workloads against PyTorch's allocators (bench/run_macro.sh, all GPUs),
#   5. a short summary table, printed last (also written to summary.txt).
# Logs and CSV go to $OUT when it is set (the device machine's folder that comes back), else
# <build>/gpu-check/. Exit status: 0 when the build worked and no GPU test failed.
#
#   scripts/gpu_check.sh [--tests-only | --bench-only] [--quick] [--full-bench] [--macro] [--build-dir DIR] [--jobs N]
#                        [--test-jobs N]   (ctest's parallel tests, default 4; the tests that fill a GPU lock it)
# Both benchmark tables of docs/benchmarks.md in one command: scripts/gpu_check.sh --bench-only --full-bench --macro
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-gpu"
jobs=$(nproc 2>/dev/null || echo 8)
test_jobs=4
run_tests=1
run_bench=1
quick=0
full_bench=0
macro=0
backends="passthrough vmm buddy slab mempool tiered"
bench_sizes="256,4K,64K,1M,16M,256M,1G"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tests-only) run_bench=0; shift ;;
    --bench-only) run_tests=0; shift ;;
    --quick) quick=1; shift ;;
    --full-bench) full_bench=1; shift ;;
    --macro) macro=1; shift ;;
    --build-dir) build="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --test-jobs) test_jobs="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
out="${OUT:-$build/gpu-check}"
mkdir -p "$out"
started=$(date +%s)
note() { echo "[gpu_check $(( $(date +%s) - started ))s] $*"; }

# Keep NVLink multicast off in anything started from here (device library KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PATH="$PATH:/usr/local/cuda/bin"

# --- 1. configure and build ------------------------------------------------------------------------
have_header() {  # have_header RELATIVE_PATH: in .carry/include or the system include dirs
  [ -f "$repo/.carry/include/$1" ] || [ -f "/usr/include/$1" ] || [ -f "/usr/local/include/$1" ]
}
# The test apps read their options with CLI11: without it alloc_torture and alloc_bench are not built and
# the check could test nothing. The GPU machine has no apt: carry the headers (scripts/carry_headers.sh).
if ! have_header CLI/CLI.hpp; then
  note "FAIL: CLI11 (CLI/CLI.hpp) not in .carry/include or the system: run scripts/carry_headers.sh on a"
  note "      machine that has it (scripts/setup.sh installs it) and carry .carry with the tree"
  exit 1
fi
tools=OFF
if have_header CLI/CLI.hpp && have_header nlohmann/json.hpp; then tools=ON; fi
tests=OFF
for f in /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake /usr/lib/cmake/GTest/GTestConfig.cmake \
         /usr/local/lib/cmake/GTest/GTestConfig.cmake /usr/include/gtest/gtest.h; do
  [ -f "$f" ] && tests=ON
done
generator="Ninja"
command -v ninja >/dev/null 2>&1 || generator="Unix Makefiles"

note "configure: $build (tools $tools, GoogleTest $tests, $generator)"
cmake -S "$repo" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DGPUSHIM_BUILD_TOOLS=$tools -DGPUSHIM_BUILD_TESTS=$tests >"$out/configure.log" 2>&1
configure_status=$?
build_status=1
if [ $configure_status -eq 0 ]; then
  note "build (-j$jobs)"
  keep_going="-k 0"; [ "$generator" = "Ninja" ] || keep_going="-k"
  cmake --build "$build" -j "$jobs" -- $keep_going >"$out/build.log" 2>&1
  build_status=$?
else
  note "configure FAILED (see $out/configure.log)"; tail -n 20 "$out/configure.log"
fi
[ $build_status -eq 0 ] || { note "build had errors (see $out/build.log):"; grep -m 15 -E 'error|FAILED' "$out/build.log"; }
lib=$(find "$build" -name libgpushim.so -type f 2>/dev/null | head -n 1)
bench="$build/test_apps/alloc_bench"
note "libgpushim.so: ${lib:-NOT BUILT}"

# --- 2. GPU tests -----------------------------------------------------------------------------------
tests_summary="not run"
failed_tests=""
tests_status=0
if [ $run_tests -eq 1 ] && [ -x "$build/test_apps/alloc_torture" ]; then
  test_dir="$build"
  if [ "$(ctest --test-dir "$build" -N -L gpu 2>"$out/ctest_list.log" | grep -c 'Test *#')" -eq 0 ]; then
    # No tests/ in the main build (no GoogleTest here): register the same GPU tests standalone.
    test_dir="$build/gpu-tests"
    cmake -S "$repo/tests/gpu/standalone" -B "$test_dir" -DGPUSHIM_BUILD_DIR="$build" >>"$out/configure.log" 2>&1
  fi
  selection=()
  # --quick: the torture builds without gpushim and under passthrough, vmm and tiered; torch under vmm.
  [ $quick -eq 1 ] && selection=(-R '(torture_.*_(noshim|passthrough|vmm|tiered)$|framework_torch_vmm$)')
  note "ctest -L gpu -j$test_jobs ${selection[*]}"
  ctest --test-dir "$test_dir" -L gpu -j"$test_jobs" --output-on-failure "${selection[@]}" >"$out/tests.log" 2>&1
  ctest_status=$?
  # Fails on a failed test, and on a run where no GPU test passed (all skipped: it tested nothing).
  verdict=$("$repo/scripts/gpu_test_verdict.sh" "$out/tests.log" "$ctest_status")
  tests_status=$?
  tests_summary=$(echo "$verdict" | head -n 1)
  failed_tests=$(echo "$verdict" | tail -n +2 | sed 's/^  FAILED  //')
  note "tests: $tests_summary"
elif [ $run_tests -eq 1 ]; then
  tests_summary="not run: test apps not built"
  tests_status=1
fi

# --- 3. alloc_bench: without gpushim, then under each backend -------------------------------------------
csv="$out/alloc_bench.csv"
bench_failures=""
launch_table=""
if [ $run_bench -eq 1 ] && [ -x "$bench" ]; then
  rm -f "$csv"
  cell_ms=300; [ $quick -eq 1 ] && cell_ms=100
  # Both stream modes (test_apps/alloc_bench.cu): without a stream, and with each thread's own stream
  # carrying work, when gpushim's frees take the fenced path.
  common=(--patterns pairs --threads 1 --streams off,on --sizes "$bench_sizes" --cell-ms "$cell_ms" --csv "$csv")
  note "alloc_bench without gpushim (cudaMalloc, cudaMallocAsync)"
  "$bench" --api runtime,async --label none "${common[@]}" >>"$out/bench.log" 2>&1 || bench_failures+=" none"
  for backend in $backends; do
    if [ -z "$lib" ]; then bench_failures+=" $backend(no-lib)"; continue; fi
    note "alloc_bench under gpushim $backend"
    LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" GPUSHIM_BACKEND=$backend \
      "$bench" --api runtime --label "$backend" "${common[@]}" >>"$out/bench.log" 2>&1 ||
      bench_failures+=" $backend"
  done
  if [ $full_bench -eq 1 ]; then
    full_csv="$out/alloc_bench_full.csv"
    rm -f "$full_csv"
    note "alloc_bench full matrix (pairs/window/random x 1,4,16 threads)"
    "$bench" --api runtime,async --label none --streams off,on --csv "$full_csv" >>"$out/bench_full.log" 2>&1 ||
      bench_failures+=" full:none"
    for backend in $backends; do
      [ -n "$lib" ] || continue
      LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" GPUSHIM_BACKEND=$backend \
        "$bench" --api runtime --label "$backend" --streams off,on --csv "$full_csv" >>"$out/bench_full.log" 2>&1 ||
        bench_failures+=" full:$backend"
    done
  fi
  # What the work-submission hooks cost a launch-bound loop (docs/free-safety.md, target: under 2%).
  if [ -x "$build/test_apps/launch_rate" ] && [ -n "$lib" ]; then
    note "launch rate with and without gpushim (scripts/launch_overhead.sh)"
    launch_table=$("$repo/scripts/launch_overhead.sh" --build-dir "$build" --rounds 7 2>>"$out/bench.log") ||
      bench_failures+=" launch_rate"
  fi
fi

# --- 4. macro benchmarks: three PyTorch workloads side by side with the peers ---------------------------
# (docs/benchmarks.md): LLM decoding with cuDNN attention, a cuDNN CNN, the transformer; every peer and
# gpushim tiered and vmm, 3 interleaved passes, one process per GPU at a time (all GPUs of the machine).
macro_tables=""
if [ $macro -eq 1 ] && [ -n "$lib" ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${gpus:-0}" -ge 1 ] || gpus=1
  note "macro benchmarks (bench/run_macro.sh on $gpus GPU(s), about $((16 / gpus + 2)) minutes)"
  OUT="$out" "$repo/bench/run_macro.sh" --lib "$lib" --only decode,cnn,torch \
    --configs "default expandable mallocasync gpushim-tiered gpushim-vmm" --repeat 3 --gpus "$gpus" \
    --timeout 150 >"$out/macro.log" 2>&1 || true
  macro_tables=$(sed -n '/^## Macro benchmarks/,$p' "$out/macro.log" | grep -E '^\|| target|^### ')
fi

# --- 5. summary (printed last) ------------------------------------------------------------------------
{
  echo
  echo "================ gpushim GPU check ================"
  # Read whole, then the first line: piped into head, nvidia-smi died of SIGPIPE on a machine of two GPUs
  # and pipefail printed "nvidia-smi not found" under the device it had named.
  gpu_list=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null) || gpu_list="nvidia-smi not found"
  echo "device:   ${gpu_list%%$'\n'*}"
  echo "commit:   $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  echo "build:    configure $([ $configure_status -eq 0 ] && echo ok || echo FAILED), build $([ $build_status -eq 0 ] && echo ok || echo 'had errors'), libgpushim.so $([ -n "$lib" ] && echo found || echo MISSING), tools $tools"
  echo "tests:    $tests_summary"
  if [ -n "$failed_tests" ]; then echo "$failed_tests" | sed 's/^/  FAILED  /'; fi
  if [ $run_bench -eq 1 ]; then
    [ -z "$bench_failures" ] || echo "bench:    runs that failed:$bench_failures (see bench.log)"
    if [ -f "$csv" ]; then
      python3 "$repo/scripts/gpu_bench_table.py" "$csv" || true
      if [ $full_bench -eq 1 ] && [ -f "${full_csv:-}" ]; then
        python3 "$repo/scripts/gpu_bench_table.py" "$full_csv" --threads 16 || true
        echo "full matrix: $out/alloc_bench_full.csv"
      fi
    else
      echo "bench:    no results"
    fi
  fi
  [ -z "$launch_table" ] || printf 'launch rate (kernels per second, median of 7 processes):\n%s\n' "$launch_table"
  [ -z "$macro_tables" ] || printf '%s\n' "$macro_tables"
  echo "logs:     $out   (total $(( $(date +%s) - started )) s)"
} | tee "$out/summary.txt"

[ $build_status -eq 0 ] && [ $tests_status -eq 0 ]
