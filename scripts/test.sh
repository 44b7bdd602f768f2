#!/usr/bin/env bash
# Installs the Debian packages (scripts/setup.sh), configures and builds everything into build/ and runs
# every CPU test. GPU tests carry the ctest label "gpu" and are left out here; they run on a GPU machine
# (scripts/gpu_check.sh).
# Without a CUDA toolkit the build is CPU-only (algorithms, tracing, tools, CPU tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# First on a fresh machine too: install what the build and tests need (does nothing when it is there).
scripts/setup.sh

build=${BUILD_DIR:-build}   # BUILD_DIR: another build folder, for developers sharing a tree
jobs=${JOBS:-$(nproc)}
generator=()
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null; then
  generator=(-G Ninja)   # an existing build dir keeps the generator it was made with
fi
# CMake finds nvcc on PATH; the Debian images keep the toolkit in /usr/local/cuda without it.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

cmake -S . -B "$build" "${generator[@]}"
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" -LE gpu --output-on-failure
# Hostile input (docs/fuzzing.md): the CPU tests again under ASan+UBSan, then every fuzz target for a
# bounded time (FUZZ_SECONDS each). HOSTILE_INPUT_CHECKS=0 skips both on a developer machine.
if [ "${HOSTILE_INPUT_CHECKS:-1}" != 0 ]; then
  scripts/sanitize.sh
  scripts/fuzz.sh
fi
