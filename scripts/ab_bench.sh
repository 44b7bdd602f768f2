#!/usr/bin/env bash
# Several builds of libgpushim.so side by side, on the GPU machine: alloc_bench pairs under each, in
# interleaved passes (pass 1 runs every library, then pass 2...), so a drift of the machine shows in
# every column alike. Prints, per size, the median over the passes of each library's mean pair (p99)
# and pairs per second, with the passes' range from three passes on (scripts/ab_table.py). The A/B
# tables of docs/benchmarks.md from the tenth session on.
#
#   scripts/ab_bench.sh --lib NAME=PATH [--lib NAME=PATH ...] [--peer NAME=API ...] [--backend NAME]
#                       [--passes N] [--threads N] [--streams on|off|off,on] [--sizes LIST] [--cell-ms MS]
#                       [--pattern pairs|handoff|random] [--work-every N] [--warmup-ms MS] [--build-dir DIR]
#                       [--csv FILE] [--process-per-size] [--stats]
#                       [--env NAME=VAR=VALUE ...]
# --pattern handoff: each pair frees a block another thread allocated (alloc_bench --patterns handoff).
# --pattern random: log-uniform sizes 256 B..16 MiB over 64 live blocks (both tiers; the size column reads rand).
# --work-every N: with a stream, a launch on it every N pairs (alloc_bench's --work-every; 64).
# --warmup-ms MS: each thread warms up at least this long before its timed pairs (alloc_bench's
#   --warmup-ms; 0: 2000 pairs only, which at 16 threads with a stream leaves the arena's climb in the cell).
# --process-per-size: each size in a process of its own (in pass order), so the peak column (alloc_bench's
#   peak_mib, NVML) is that cell's alone and not what earlier sizes of the process left cached.
# --stats: the libraries run under GPUSHIM_STATS=1, and each process's "at the peak" line (how its
#   allocations at the peak were served, and why those let past the peak were) is a row of
#   FILE_at_peak.csv; a second table gives the medians (scripts/at_peak_table.py). With
#   --process-per-size a row is one cell's. Counting costs every pair a few ns: compare libraries that
#   all ran under --stats.
# --peer NAME=API: a column without gpushim, alloc_bench's --api API (async: the driver's warm
# cudaMallocAsync pool; runtime: cudaMalloc; host: malloc+free, the harness's own ceiling with the same
# launches), interleaved with the libraries in every pass.
# --env NAME=VAR=VALUE: set VAR for the library NAME's runs only (one library under two settings, e.g.
# --lib one=P --lib eight=P --env one=GPUSHIM_ARENA_SHARDS=1).
# Build the other trees first (cmake -DGPUSHIM_BUILD_TESTS=OFF -DGPUSHIM_BUILD_TOOLS=OFF; ninja gpushim);
# alloc_bench comes from DIR (default build-gpu).
# One thread: pin the process to two cores (taskset -c 3,4), not one. Pinned to one core, the driver's
# own threads share the benchmark thread's core, and a pass's median sat near 100 or near 170-240 ns by
# process, with or without a stream (thirteenth session, docs/perf-notes.md); on two cores 7 of 8
# passes sat at the lower level.
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-gpu"
libs=()
peers=()
backend=tiered
passes=3
threads=16
streams=on
sizes="256K,1M,4M,16M,256M"
cell_ms=250
csv=""
pattern=pairs
work_every=64
warmup_ms=0
process_per_size=0
stats=0
envs=()
usage() { sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) libs+=("$2"); shift 2 ;;
    --peer) peers+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --passes) passes="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --cell-ms) cell_ms="$2"; shift 2 ;;
    --pattern) pattern="$2"; shift 2 ;;
    --work-every) work_every="$2"; shift 2 ;;
    --warmup-ms) warmup_ms="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --csv) csv="$2"; shift 2 ;;
    --process-per-size) process_per_size=1; shift ;;
    --stats) stats=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "ab_bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ $((${#libs[@]} + ${#peers[@]})) -gt 0 ] || { echo "ab_bench.sh: give at least one --lib NAME=PATH" >&2; usage >&2; exit 2; }
for entry in "${peers[@]}"; do
  case "$entry" in
    *=async|*=runtime|*=host) ;;
    *) echo "ab_bench.sh: --peer takes NAME=async, NAME=runtime or NAME=host, got $entry" >&2; exit 2 ;;
  esac
done
bench="$build/test_apps/alloc_bench"
if [ ! -e "$bench" ]; then
  echo "ab_bench.sh: $bench not found (build first: scripts/gpu_check.sh --tests-only)" >&2
  exit 1
fi
for entry in "${libs[@]}"; do
  case "$entry" in
    *=*) [ -e "${entry#*=}" ] || { echo "ab_bench.sh: ${entry#*=} not found" >&2; exit 1; } ;;
    *) echo "ab_bench.sh: --lib takes NAME=PATH, got $entry" >&2; exit 2 ;;
  esac
done
[ -n "$csv" ] || csv="${OUT:-$build}/ab_bench.csv"
rm -f "$csv"
at_peak_csv="${csv%.csv}_at_peak.csv"
stderr_log=$(mktemp)
trap 'rm -f "$stderr_log"' EXIT
if [ $stats -eq 1 ]; then
  python3 "$repo/scripts/at_peak_table.py" header > "$at_peak_csv"
fi

status=0
size_groups=("$sizes")
[ $process_per_size -eq 0 ] || IFS=, read -r -a size_groups <<<"$sizes"
for pass in $(seq 1 "$passes"); do
  for group in "${size_groups[@]}"; do
  for entry in "${libs[@]}" "${peers[@]/#/peer:}"; do
    name=${entry%%=*}
    preload=${entry#*=}
    api=runtime
    case "$entry" in peer:*) name=${name#peer:}; api=${entry#*=}; preload="" ;; esac
    settings=()
    for e in "${envs[@]}"; do [ "${e%%=*}" = "$name" ] && settings+=("${e#*=}"); done
    [ $stats -eq 1 ] && [ -n "$preload" ] && settings+=(GPUSHIM_STATS=1)
    if ! env "${settings[@]}" LD_PRELOAD="$preload" GPUSHIM_BACKEND="$backend" timeout 300 "$bench" --api "$api" --patterns "$pattern" \
        --threads "$threads" --streams "$streams" --sizes "$group" --cell-ms "$cell_ms" --work-every "$work_every" --warmup-ms "$warmup_ms" \
        --label "$name" --csv "$csv" > /dev/null 2> "$stderr_log"; then
      echo "ab_bench.sh: pass $pass under $name failed; its last lines:" >&2
      tail -n 5 "$stderr_log" >&2
      status=1
    elif [ $stats -eq 1 ] && [ -n "$preload" ]; then
      python3 "$repo/scripts/at_peak_table.py" row "$stderr_log" "$name" "$threads" "$streams" "$group" \
        >> "$at_peak_csv" || status=1
    fi
  done
  done
done
python3 "$repo/scripts/ab_table.py" "$csv" || status=1
if [ $stats -eq 1 ]; then
  echo
  python3 "$repo/scripts/at_peak_table.py" "$at_peak_csv" || status=1
fi
exit $status
