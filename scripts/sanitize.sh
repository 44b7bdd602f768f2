#!/usr/bin/env bash
# Builds the CPU half (no CUDA: algorithms, tracing, tools, their tests) with AddressSanitizer and
# UndefinedBehaviorSanitizer into build-asan/ and runs every CPU test there. Any sanitizer report fails
# the test that caused it (the build does not recover from one).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${SANITIZE_BUILD_DIR:-build-asan}
generator=()
[ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DGPUSHIM_SANITIZE=ON -DGPUSHIM_CPU_ONLY=ON >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}"
# detect_leaks=0: the tools and tests may keep process-lifetime singletons; leaks are not what this
# build looks for. abort_on_error: a report ends the test with a failure ctest sees.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build" -LE gpu --output-on-failure -j "${JOBS:-$(nproc)}"
