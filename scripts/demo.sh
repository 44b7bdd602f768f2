#!/usr/bin/env bash
# The main job in one command (README.md). On a machine with a GPU: build, then run a CUDA program that
# knows nothing of gpushim (test_apps/alloc_torture) under gpushim, with its statistics at exit. Without
# one: build the tools and summarise the bundled trace of a real PyTorch training run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=${BUILD_DIR:-build}

scripts/setup.sh
# The gpushim command needs CLI11 and nlohmann-json (header-only); machines without apt may carry them in
# .carry/include. Without them, the library and the test apps still build.
tools=OFF
for dir in .carry/include /usr/include /usr/local/include; do
  [ -f "$dir/CLI/CLI.hpp" ] && [ -f "$dir/nlohmann/json.hpp" ] && tools=ON
done
generator=(-G Ninja); command -v ninja >/dev/null 2>&1 || generator=()
cmake -S . -B "$build" "${generator[@]}" -DGPUSHIM_BUILD_TOOLS=$tools >/dev/null

if nvidia-smi -L >/dev/null 2>&1; then
  targets=(gpushim alloc_torture); [ $tools = ON ] && targets+=(gpushim_cli)
  cmake --build "$build" --target "${targets[@]}"
  if [ $tools = ON ]; then
    exec "$build/gpushim" run --stats -- "$build/test_apps/alloc_torture" --seconds 3
  fi
  LD_PRELOAD="$build/lib/libgpushim.so${LD_PRELOAD:+:$LD_PRELOAD}" GPUSHIM_STATS=1 \
    exec "$build/test_apps/alloc_torture" --seconds 3
fi
echo "demo: no GPU here: summarising the bundled trace of a PyTorch run recorded on an H100"
cmake --build "$build" --target gpushim_cli
exec "$build/gpushim" trace summary tests/data/torch_transformer.trace.zst
