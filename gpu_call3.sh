#!/bin/bash
# Session 34, call 3: the hot-path table on the final library (sources of 9af7a1c; later commits are docs).
export PATH=/opt/torch/.venv/bin:$PATH:/usr/local/cuda/bin
cd "$(dirname "$0")"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DGPUSHIM_BUILD_TOOLS=OFF -DGPUSHIM_BUILD_TESTS=OFF > "$OUT/configure.log" 2>&1 &&
  cmake --build build-gpu -j16 --target gpushim alloc_bench alloc_bench_shared > "$OUT/build.log" 2>&1
echo "build rc=$? after $(( $(date +%s) - start )) s"
timeout 500 scripts/hot_path_bench.sh --sizes 256,64K,1M,16M,1G --passes 3 --warmup-ms 500 --shared-runtime \
  --csv "$OUT/hot_path.csv" > "$OUT/table.txt" 2> "$OUT/progress.log"
echo "bench rc=$? after $(( $(date +%s) - start )) s"
cat "$OUT/table.txt"
