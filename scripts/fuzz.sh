#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, libFuzzer + ASan + UBSan, clang) into build-fuzz/ and runs each for a
# bounded time from its seed corpus. Any finding (a crash, a sanitizer report, a broken promise) fails.
#   FUZZ_SECONDS   seconds per target (default 20; CI's budget)
#   FUZZ_TARGETS   names to run (default: all of them)
#   FUZZ_FINDINGS  where inputs that broke something are saved (default build-fuzz/findings)
set -euo pipefail
cd "$(dirname "$0")/.."

build=${FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-20}
findings=${FUZZ_FINDINGS:-$build/findings}
if ! command -v clang++ >/dev/null; then
  echo "fuzz: clang++ not found (scripts/setup.sh installs clang and libclang-rt-14-dev)" >&2
  exit 1
fi
generator=()
[ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null && generator=(-G Ninja)
CC=clang CXX=clang++ cmake -S . -B "$build" "${generator[@]}" -DGPUSHIM_BUILD_FUZZERS=ON -DGPUSHIM_CPU_ONLY=ON \
  -DGPUSHIM_BUILD_TESTS=OFF -DGPUSHIM_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}"

targets=${FUZZ_TARGETS:-$(cd "$build/fuzz" && ls -- *_fuzzer)}
mkdir -p "$findings"
for target in $targets; do
  case $target in
    trace_*) seeds=trace ;;
    settings_*) seeds=settings ;;
    ipc_*) seeds=ipc ;;
    *) echo "fuzz: no seed corpus known for $target" >&2; exit 1 ;;
  esac
  # The corpus grows in a scratch copy: the committed seeds stay small.
  work=$(mktemp -d)
  cp fuzz/corpus/$seeds/* "$work/"
  echo "fuzz: $target for ${seconds}s"
  # -rss_limit_mb: a target holding more than this is a finding (the readers cap what they hold).
  if ! "$build/fuzz/$target" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=25 \
       -artifact_prefix="$findings/$target-" -print_final_stats=1 "$work" >"$findings/$target.log" 2>&1; then
    tail -n 40 "$findings/$target.log" >&2
    echo "fuzz: $target found a problem; the input is in $findings/" >&2
    rm -rf "$work"
    exit 1
  fi
  grep -E "stat::number_of_executed_units|cov:" "$findings/$target.log" | tail -n 2 || true
  rm -rf "$work"
done
