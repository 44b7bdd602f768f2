#!/usr/bin/env bash
# Where 16 threads with a stream each wait, on the GPU machine: alloc_bench pairs under gpushim with the
# wall-clock profiler preloaded beside it (bench/wall_profiler.cpp), one profile per size, each read by
# scripts/wall_profile.py. The profile of docs/perf-notes.md, "Ninth session", in one command.
#
#   scripts/wall_profile_bench.sh [--lib PATH] [--backend NAME] [--sizes LIST] [--threads N] [--streams on|off]
#                                 [--cell-ms MS] [--period-us US] [--pattern NAME] [--work-every N]
#                                 [--warmup-ms MS] [--build-dir DIR] [--out DIR]
# Writes DIR/wall_<backend>_<size>.txt (the tables), DIR/raw_<backend>_<size>.txt (the samples) and
# DIR/log_<backend>_<size>.txt (alloc_bench's output, with GPUSHIM_STATS' lines where it is set);
# DIR defaults to $OUT where set (the device machine's folder that comes back), else <build>/wall-profile.
# Build first: scripts/gpu_check.sh --tests-only (or ninja gpushim alloc_bench wall_profiler). The last
# table (source lines: which lock, which load) needs line tables: configure that build with
# -DCMAKE_CXX_FLAGS=-g, which keeps -O3 (docs/perf-notes.md, "Seventeenth session").
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-gpu"
lib=""
backend=tiered
sizes="1M,4M,16M"
threads=16
streams=on
cell_ms=2000
period_us=500
out=""
pattern=pairs  # alloc_bench's --patterns: random profiles the mixed sizes (its size argument is ignored)
work_every=64  # alloc_bench's --work-every: pairs between two launches on a thread's stream
# alloc_bench's --warmup-ms. The profile covers the whole process, and a thread's timed pairs are at most
# 50,000 (~100 ms at 1 MiB on 16 threads with a stream), so without a long warm-up it is mostly the
# start: the arena's climb to its working set. 3000 makes it mostly the steady state.
warmup_ms=0
usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) lib="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --cell-ms) cell_ms="$2"; shift 2 ;;
    --period-us) period_us="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --pattern) pattern="$2"; shift 2 ;;
    --work-every) work_every="$2"; shift 2 ;;
    --warmup-ms) warmup_ms="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "wall_profile_bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$lib" ] || lib="$build/lib/libgpushim.so"
[ -n "$out" ] || out="${OUT:-$build/wall-profile}"
bench="$build/test_apps/alloc_bench"
profiler="$build/bench/libwall_profiler.so"
for f in "$bench" "$lib" "$profiler"; do
  [ -e "$f" ] || {
    echo "wall_profile_bench.sh: $f not found (build first: ninja -C $build gpushim alloc_bench wall_profiler)" >&2
    exit 1
  }
done
command -v addr2line > /dev/null || { echo "wall_profile_bench.sh: addr2line (binutils) not found" >&2; exit 1; }
mkdir -p "$out"
samples=$(mktemp -d)
trap 'rm -rf "$samples"' EXIT

status=0
for size in ${sizes//,/ }; do
  # "%p": each process writes its own file, so a wrapper that inherits LD_PRELOAD cannot overwrite it.
  if ! WALL_PROFILE="$samples/$size.%p.txt" WALL_PROFILE_US="$period_us" LD_PRELOAD="$profiler $lib" \
      GPUSHIM_BACKEND="$backend" "$bench" --api runtime --patterns "$pattern" --threads "$threads" \
      --streams "$streams" --sizes "$size" --cell-ms "$cell_ms" --work-every "$work_every" --warmup-ms "$warmup_ms" > "$samples/$size.log" 2>&1; then
    echo "alloc_bench failed at $size:"
    tail -5 "$samples/$size.log"
    status=1
    continue
  fi
  profile=$(ls -S "$samples/$size".*.txt 2>/dev/null | head -1)
  [ -n "$profile" ] || { echo "no profile written at $size"; status=1; continue; }
  cp "$profile" "$out/raw_${backend}_$size.txt"
  cp "$samples/$size.log" "$out/log_${backend}_$size.txt"
  python3 "$repo/scripts/wall_profile.py" "$profile" --top 30 --lines > "$out/wall_${backend}_$size.txt" || status=1
  result=$(grep -m1 '^gpushim-' "$samples/$size.log" || true)
  echo "== $backend, $threads threads, streams $streams, $size: $result"
  sed -n '/## leaf and its/,/## gpushim functions/p' "$out/wall_${backend}_$size.txt" | sed -n '2,9p'
done
echo "tables: $out/wall_${backend}_*.txt"
exit $status
