#!/usr/bin/env bash
# What gpushim's work-submission hooks cost a launch-bound program (docs/free-safety.md, "Cost"):
# test_apps/launch_rate without gpushim and under it, process after process, alternating, then the median
# of the processes' medians per configuration and the ratio to no preload. Target: under 2% slower.
#
#   scripts/launch_overhead.sh [--build-dir DIR] [--rounds N] [--launches N]
set -u -o pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-gpu"; rounds=5; launches=200000
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --launches) launches="$2"; shift 2 ;;
    *) echo "launch_overhead.sh: unknown option $1 (--build-dir DIR, --rounds N, --launches N)" >&2; exit 2 ;;
  esac
done
app="$build/test_apps/launch_rate"
lib=$(find "$build" -name libgpushim.so | head -1)
[ -x "$app" ] && [ -n "$lib" ] || { echo "launch_overhead.sh: build $build first (launch_rate, libgpushim.so)" >&2; exit 2; }
tmp=$(mktemp -d)
for round in $(seq "$rounds"); do
  "$app" "$launches" 3 >>"$tmp/none" || exit 1
  LD_PRELOAD="$lib" GPUSHIM_BACKEND=tiered "$app" "$launches" 3 >>"$tmp/tiered" || exit 1
done
python3 - "$tmp" <<'PY'
import statistics, sys, os
d = sys.argv[1]
rate = {}
for config in ("none", "tiered"):
    for line in open(os.path.join(d, config)):
        _, kind, median, *_ = line.split()
        rate.setdefault((config, kind), []).append(float(median))
print("| stream | no gpushim (kernels per s) | gpushim tiered (kernels per s) | ratio | processes |")
print("|---|---:|---:|---:|---:|")
for kind in ("legacy", "nonblocking"):
    a = statistics.median(rate[("none", kind)]); b = statistics.median(rate[("tiered", kind)])
    print("| %s | %.0f | %.0f | %.3f | %d |" % (kind, a, b, b / a, len(rate[("none", kind)])))
PY
rm -rf "$tmp"
