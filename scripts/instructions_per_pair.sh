#!/usr/bin/env bash
# Instructions per cuMemAlloc+cuMemFree pair through the real libgpushim.so over the fake driver: the CPU
# guard of the hot path (docs/perf-notes.md). Deterministic where wall time on a shared machine is not,
# so a change that adds work to the hot path shows up without a GPU.
#
#   scripts/instructions_per_pair.sh [--build DIR] [--pairs N] [--check FILE] [--tolerance PERCENT]
#                                    [--library PATH]
#
# One bench/router_pair_bench run per cell (backend x mode x size, one thread) under callgrind with
# --instr-atstart=no: the bench turns instrumentation on only around its timed pairs, so callgrind's
# total divided by the pairs is the cost of one pair (with 1/256 of a clock read and, fenced, of the
# stream's memset). Prints a markdown table. --check FILE compares it with the table recorded in FILE
# between the lines "<!-- instructions_per_pair begin -->" and "<!-- instructions_per_pair end -->" and
# fails when a cell exceeds its recorded value by more than PERCENT (default 10).
# Exit 77 (ctest: skipped) when valgrind is not installed.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build"
pairs=25600
check=""
tolerance=10
library=()  # --library: another libgpushim.so (an older build) under the same bench, for a "before" table
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --check) check=$2; shift 2 ;;
    --tolerance) tolerance=$2; shift 2 ;;
    --library) library=(--library "$2"); shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--pairs N] [--check FILE] [--tolerance PERCENT] [--library PATH]" >&2; exit 2 ;;
  esac
done
if ! command -v valgrind >/dev/null; then
  echo "instructions_per_pair: SKIPPED: valgrind is not installed (scripts/setup.sh installs it)"
  exit 77
fi
bench="$build/bench/router_pair_bench"
if [ ! -x "$bench" ]; then
  echo "instructions_per_pair: $bench not built (cmake --build $build --target router_pair_bench)" >&2
  exit 2
fi

backends=(tiered vmm)
# legacy: no stream; stream: the thread's own stream carries work once per 256 pairs (gpushim joins it,
# then finds it idle: router/stream_activity.h); fenced: the same, with every free fenced
# (GPUSHIM_FREE_FENCE=always), so the fenced path itself is what is counted; async: the pairs are
# cuMemAllocAsync+cuMemFreeAsync on the thread's own stream (the stream's free list,
# router/stream_free_lists.h); static: cudaMalloc+cudaFree of a fake static runtime linked into the
# bench, which gpushim redirects to its own functions (shim/static_runtime_redirects.cpp).
modes=(legacy stream fenced async static)
# 4 MiB: above the thread caches' classes, the large-block path (allocators/thread_cache_allocator.h).
sizes=(256 65536 1048576 4194304)
size_names=("256 B" "64 KiB" "1 MiB" "4 MiB")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# Ir of one cell: the parent bench re-executes itself per backend; --trace-children follows the child,
# whose instrumented pairs are the only instructions counted (the parent's file says 0).
cell_ir() {  # cell_ir BACKEND MODE SIZE
  local out="$dir/$1.$2.$3" bench_mode="$2" fence=auto
  case "$2" in stream) bench_mode=fenced ;; fenced) fence=always ;; esac
  GPUSHIM_FREE_FENCE=$fence valgrind --tool=callgrind --trace-children=yes --instr-atstart=no --callgrind-out-file="$out.%p" \
    "$bench" --backends "$1" --modes "$bench_mode" --sizes "$3" --threads 1 --pairs "$pairs" "${library[@]}" > "$out.log" 2>&1 || {
    cat "$out.log" >&2
    return 1
  }
  if grep -q FAILED "$out.log"; then cat "$out.log" >&2; return 1; fi
  awk '/^totals:/ { sum += $2 } END { printf "%d\n", sum }' "$out".[0-9]*
}

declare -A measured
status=0
echo "Instructions per cuMemAlloc+cuMemFree pair (async: cuMemAllocAsync+cuMemFreeAsync; static: cudaMalloc+cudaFree; Ir/pair, callgrind, $pairs pairs, one thread):"
echo
header="| backend | mode |"
rule="|---|---|"
for name in "${size_names[@]}"; do header+=" $name |"; rule+="---:|"; done
echo "$header"
echo "$rule"
for backend in "${backends[@]}"; do
  for mode in "${modes[@]}"; do
    row="| $backend | $mode |"
    for size in "${sizes[@]}"; do
      if ! ir=$(cell_ir "$backend" "$mode" "$size") || [ "$ir" -le 0 ]; then
        echo "instructions_per_pair: the $backend/$mode/$size run failed" >&2
        status=1
        row+=" - |"
        continue
      fi
      per_pair=$((ir / pairs))
      measured["$backend|$mode|$size"]=$per_pair
      row+=" $per_pair |"
    done
    echo "$row"
  done
done
[ $status -eq 0 ] || exit $status
[ -n "$check" ] || exit 0

# The recorded table: rows "| backend | mode | n | n | ... |" between the markers, sizes in the order above
# (a recorded table with fewer size columns is checked on the ones it has).
recorded=$(sed -n '/<!-- instructions_per_pair begin -->/,/<!-- instructions_per_pair end -->/p' "$check" |
  awk -F'|' 'NF >= 6 && $4 ~ /[0-9]/ { gsub(/[ ,]/, "", $2); gsub(/[ ,]/, "", $3); line = $2 " " $3;
    for (i = 4; i < NF; i++) { gsub(/[ ,]/, "", $i); if ($i != "") line = line " " $i } print line }')
if [ -z "$recorded" ]; then
  echo "instructions_per_pair: no recorded table in $check" >&2
  exit 1
fi
echo
checked=0
while read -r backend mode rest; do
  read -r -a values <<< "$rest"
  for i in "${!values[@]}"; do
    key="$backend|$mode|${sizes[$i]}"
    [ -n "${measured[$key]:-}" ] || continue
    limit=$(( values[i] * (100 + tolerance) / 100 ))
    checked=$((checked + 1))
    if [ "${measured[$key]}" -gt "$limit" ]; then
      echo "REGRESSION $backend $mode ${size_names[$i]}: ${measured[$key]} Ir/pair, recorded ${values[$i]} (limit $limit)"
      status=1
    elif [ "${measured[$key]}" -lt $(( values[i] * (100 - tolerance) / 100 )) ]; then
      echo "better     $backend $mode ${size_names[$i]}: ${measured[$key]} Ir/pair, recorded ${values[$i]}: record the new table in $check"
    fi
  done
done <<< "$recorded"
if [ $checked -eq 0 ]; then
  echo "instructions_per_pair: the recorded table in $check names none of the measured cells" >&2
  exit 1
fi
[ $status -eq 0 ] && echo "instructions_per_pair: $checked cells within $tolerance% of $check"
exit $status
