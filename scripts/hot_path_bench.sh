#!/usr/bin/env bash
# The hot-path benchmark of docs/benchmarks.md, on the GPU machine: alloc_bench pairs, 1 and 16 threads,
# without and with a stream per thread, under gpushim tiered and vmm and without gpushim (cudaMalloc,
# the warm cudaMallocAsync pool, and host malloc: what this CPU gives 16 threads of the loop), in interleaved passes (pass 1 runs every configuration, then pass 2...),
# so a drift of the machine shows in every column alike. Prints the table of the hot-path targets last
# (scripts/hot_path_table.py: medians over the passes), with the device memory each 16-thread cell held.
# Each thread warms up for --warmup-ms (default 1000) before its timed pairs: 16 threads with a stream
# each take 0.1-3 s to reach their steady state, and without it their 50,000 timed pairs measured the
# climb (docs/perf-notes.md, "Twenty-second session"); 0 measures the cold start.
#
#   scripts/hot_path_bench.sh [--lib PATH] [--baseline-lib PATH] [--passes N] [--cell-ms MS] [--sizes LIST]
#                             [--warmup-ms MS] [--build-dir DIR] [--csv FILE] [--driver-api] [--shared-runtime]
#                             [--stream-ordered] [--pin-one-thread CPUS] [--work-every N]
# --baseline-lib adds tiered and vmm under a second libgpushim.so (labels tiered-base, vmm-base): a
# change and its baseline in the same run, as the measuring rules ask.
# --driver-api adds the same pairs through cuMemAlloc/cuMemFree (alloc_bench --api driver, rows
# "<config> cuMemAlloc"), in the same processes: a cudaMalloc pair's time split into libcudart's share
# and the allocator's.
# --shared-runtime adds tiered and vmm from alloc_bench_shared, the same program linked to libcudart.so
# as PyTorch and CuPy are (labels tiered-shared, vmm-shared): there gpushim serves cudaMalloc/cudaFree
# without entering the runtime (GPUSHIM_DIRECT_CUDART).
# --stream-ordered adds cudaMallocAsync+cudaFreeAsync pairs on each thread's own stream from
# alloc_bench_shared under tiered and vmm (labels tiered-async, vmm-async; served without the runtime
# too), beside the driver's pool (the cudaMallocAsync row). The targets are not evaluated for them.
# --pin-one-thread CPUS (e.g. 3,4): the one-thread cells in processes of their own under taskset -c CPUS,
# the 16-thread cells unpinned as before. Unpinned, a one-thread cell's median sat near the host's level
# or 30-60 ns above it by process, whatever the library (the driver's threads on the benchmark thread's
# core; thirteenth and fifty-first sessions, docs/perf-notes.md), so a change's effect hid in which level
# each process drew. Two CPUs, not one: on one, the driver's threads share it for good.
# --work-every N: with a stream, a kernel on each thread's stream every N pairs (alloc_bench's default,
# 64, without it). At 64, 16 threads of host malloc move only 6-8x one thread's pairs: the harness's own
# launches, serialized in the driver, cap every row; at 1,024 they reach 11-15x (fifty-second session,
# docs/perf-notes.md), so the 16-thread target can be read against the allocator, not the launches.
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-gpu"
lib=""
baseline_lib=""
passes=3
cell_ms=100
warmup_ms=1000
sizes="256,64K,1M,4M,16M,256M,1G"
csv=""
gpushim_apis="runtime"
shared_runtime=0
stream_ordered=0
pin_one_thread=""
work_every=""
usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) lib="$2"; shift 2 ;;
    --baseline-lib) baseline_lib="$2"; shift 2 ;;
    --passes) passes="$2"; shift 2 ;;
    --cell-ms) cell_ms="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --warmup-ms) warmup_ms="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --csv) csv="$2"; shift 2 ;;
    --driver-api) gpushim_apis="runtime,driver"; shift ;;
    --shared-runtime) shared_runtime=1; shift ;;
    --stream-ordered) stream_ordered=1; shift ;;
    --pin-one-thread) pin_one_thread="$2"; shift 2 ;;
    --work-every) work_every="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "hot_path_bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$lib" ] || lib="$build/lib/libgpushim.so"
bench="$build/test_apps/alloc_bench"
bench_shared="$build/test_apps/alloc_bench_shared"
needed=("$bench" "$lib" ${baseline_lib:+"$baseline_lib"})
[ "$shared_runtime$stream_ordered" = 00 ] || needed+=("$bench_shared")
for f in "${needed[@]}"; do
  [ -e "$f" ] || { echo "hot_path_bench.sh: $f not found (build first: scripts/gpu_check.sh --tests-only)" >&2; exit 1; }
done
csv="${csv:-${OUT:-$build}/hot_path.csv}"
rm -f "$csv"
log="${csv%.csv}.log"
: >"$log"

common=(--patterns pairs --streams off,on --cell-ms "$cell_ms" --warmup-ms "$warmup_ms" --csv "$csv"
        ${work_every:+--work-every "$work_every"})
failures=""
# Each thread count's cells: in one process (threads 1,16), or with --pin-one-thread one process each,
# the one-thread process pinned.
if [ -n "$pin_one_thread" ]; then thread_runs=("taskset -c $pin_one_thread:1" ":16"); else thread_runs=(":1,16"); fi
run() {  # run LABEL LIB|"" API SIZE [PROGRAM]; the backend is the label up to its first '-'
  local label=$1 library=$2 api=$3 size=$4 program=${5:-$bench} entry prefix threads
  for entry in "${thread_runs[@]}"; do
    prefix=${entry%%:*} threads=${entry#*:}
    if [ -n "$library" ]; then
      LD_PRELOAD="$library" GPUSHIM_BACKEND="${label%%-*}" $prefix "$program" --api "$api" --label "$label" \
        --sizes "$size" --threads "$threads" "${common[@]}" >>"$log" 2>&1 || failures+=" $label/$size/$threads"
    else
      $prefix "$bench" --api "$api" --label none --sizes "$size" --threads "$threads" "${common[@]}" >>"$log" 2>&1 ||
        failures+=" $api/$size/$threads"
    fi
  done
}
# A process per configuration and size (and per API without gpushim): a cell's peak column is then what
# that size needed, not what the process's earlier cells left cached (a 1 GiB cell leaves 16 GiB in an
# arena or the driver's pool, and every later cell of the process showed it).
for pass in $(seq 1 "$passes"); do
  echo "[hot_path_bench] pass $pass of $passes" >&2
  for size in ${sizes//,/ }; do
    run tiered "$lib" "$gpushim_apis" "$size"
    run vmm "$lib" "$gpushim_apis" "$size"
    if [ -n "$baseline_lib" ]; then
      run tiered-base "$baseline_lib" "$gpushim_apis" "$size"
      run vmm-base "$baseline_lib" "$gpushim_apis" "$size"
    fi
    if [ "$shared_runtime" = 1 ]; then
      run tiered-shared "$lib" runtime "$size" "$bench_shared"
      run vmm-shared "$lib" runtime "$size" "$bench_shared"
    fi
    if [ "$stream_ordered" = 1 ]; then
      run tiered-async "$lib" async "$size" "$bench_shared"
      run vmm-async "$lib" async "$size" "$bench_shared"
    fi
    for api in runtime async host; do run none "" "$api" "$size"; done
    [ "$gpushim_apis" = "runtime" ] || run none "" driver "$size"
  done
done
echo "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1), $(nproc) CPUs ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1))"
flags=""
[ "$gpushim_apis" = "runtime" ] || flags+=" --driver-api"
[ "$shared_runtime" = 0 ] || flags+=" --shared-runtime"
[ "$stream_ordered" = 0 ] || flags+=" --stream-ordered"
[ -z "$pin_one_thread" ] || flags+=" --pin-one-thread $pin_one_thread"
[ -z "$work_every" ] || flags+=" --work-every $work_every"
echo "command: scripts/hot_path_bench.sh --passes $passes --cell-ms $cell_ms --warmup-ms $warmup_ms --sizes $sizes${baseline_lib:+ --baseline-lib ...}$flags"
[ -z "$failures" ] || echo "runs that failed:$failures (see $log)"
python3 "$repo/scripts/hot_path_table.py" "$csv"
