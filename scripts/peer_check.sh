#!/usr/bin/env bash
# The multi-GPU check of peer-mapped memory (docs/peers.md), for a lent machine with N >= 2 GPUs:
#   1. build libgpushim.so, the test apps and tests/peers_cuda_provider_test (when GoogleTest is there),
#   2. peers_cuda_provider_test (the provider alone, on the real driver),
#   3. peer_access under gpushim for every placement (local, interleave, spill) over all N GPUs: every
#      ordered pair writes and reads, interleave stripes round every GPU, spill goes to GPU 1 first, and
#      a read-bandwidth table of every ordered pair,
#   4. the per-device cap: GPUSHIM_LIMIT=2GiB with GPUSHIM_PEERS=all (interleave, spill), no GPU backs
#      more than 2 GiB (counted by the app, and by the OOM report's "memory mapped by device" line),
#      and more than 2 GiB fits in all,
#   5. peer_copy_check and pool_access_check for every ordered pair of GPUs (--pair A,B), without
#      gpushim and under the vmm and tiered backends,
#   6. an N-process NCCL all-reduce (torchrun) over gpushim-allocated tensors, for every placement,
#      with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so every tensor is a cuMemAlloc that gpushim serves,
#   7. a summary table last (also written to peer_check.txt, with the bandwidth table).
# The table goes to $OUT/peer_check.txt when OUT is set, else <build>/peer-check/; the logs go to
# <build>/peer-check/logs/, and into $OUT/peer_check_logs.tar.gz (few files come back from $OUT). A failed
# row's log tail is printed after the summary. Exit 0 only when every step ran and passed,
# and gpushim served the allocations of every run under it (GPUSHIM_STATS=1, scripts/served_by_gpushim.sh).
# A skipped step (one GPU, no GoogleTest, a provider test that skipped) is reported as SKIP and the check
# does not pass: on a GPU machine, a check that tested nothing across GPUs is not a pass.
#
#   scripts/peer_check.sh [--build-dir DIR] [--jobs N] [--no-build]
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-gpu"
jobs=$(nproc 2>/dev/null || echo 8)
do_build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "peer_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
out="${OUT:-$build/peer-check}"
logs="$build/peer-check/logs"
rm -rf "$logs"
mkdir -p "$out" "$logs"
table="$out/peer_check.txt"
: > "$table"
status=0
skips=0
summary=""
failures=""
evidence=""  # the log of the step a row reports; its tail is shown when the row fails
row() {
  printf '%-56s %s\n' "$1" "$2" | tee -a "$table"
  summary+=$(printf '%-56s %s' "$1" "$2")$'\n'
  if [ "$2" = SKIP ]; then skips=$((skips + 1)); elif [ "$2" != PASS ]; then
    status=1
    [ -n "$evidence" ] && [ -f "$evidence" ] &&
      failures+="-- $1: $(basename "$evidence") --"$'\n'"$(tail -n 8 "$evidence")"$'\n'
  fi
  evidence=""
}
# PASS only when the run succeeded and gpushim's vmm backend served its allocations.
served() { "$repo/scripts/served_by_gpushim.sh" "$1" "${2:-vmm}" >> "$1"; }
cap_bytes=$((2 << 30))  # step 4's GPUSHIM_LIMIT

# NVLink multicast stays off (device library KINDS.md): NCCL would otherwise try NVLS.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PATH="$PATH:/usr/local/cuda/bin"

if [ "$do_build" = 1 ]; then
  generator="Ninja"; command -v ninja >/dev/null 2>&1 || generator="Unix Makefiles"
  tests=OFF
  for f in /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake /usr/lib/cmake/GTest/GTestConfig.cmake \
           /usr/local/lib/cmake/GTest/GTestConfig.cmake; do [ -f "$f" ] && tests=ON; done
  cmake -S "$repo" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DGPUSHIM_BUILD_TOOLS=OFF -DGPUSHIM_BUILD_TESTS=$tests > "$logs/configure.log" 2>&1 || {
    echo "peer_check: configure failed, see $logs/configure.log"; exit 2; }
  targets="gpushim peer_access peer_copy_check pool_access_check"
  [ "$tests" = ON ] && targets="$targets peers_cuda_provider_test"
  cmake --build "$build" -j "$jobs" --target $targets > "$logs/build.log" 2>&1 || {
    echo "peer_check: build failed, see $logs/build.log"; tail -20 "$logs/build.log"; exit 2; }
fi

lib=$(find "$build" -name libgpushim.so -path '*/lib/*' | head -1)
app=$(find "$build" -name peer_access -type f -perm -u+x | head -1)
copy_app=$(find "$build" -name peer_copy_check -type f -perm -u+x | head -1)
pool_app=$(find "$build" -name pool_access_check -type f -perm -u+x | head -1)
provider_test=$(find "$build" -name peers_cuda_provider_test -type f -perm -u+x | head -1)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
echo "peer_check: $gpus GPU(s); library ${lib:-missing}; peer_access ${app:-missing}" | tee -a "$table"
nvidia-smi topo -m > "$logs/topology.txt" 2>&1 || true

# 2. The provider alone.
if [ -n "$provider_test" ]; then
  if ! "$provider_test" > "$logs/peers_cuda_provider_test.log" 2>&1; then row "peers_cuda_provider_test" FAIL
  elif grep -q '\[  SKIPPED \]' "$logs/peers_cuda_provider_test.log"; then row "peers_cuda_provider_test (skipped tests)" SKIP
  else row "peers_cuda_provider_test" PASS; fi
else
  row "peers_cuda_provider_test (no GoogleTest)" SKIP
fi

# 3. peer_access under gpushim, every placement.
for policy in local interleave spill; do
  log="$logs/peer_access.$policy.log"
  if [ -z "$lib" ] || [ -z "$app" ]; then row "peer_access $policy" FAIL; continue; fi
  evidence=$log
  if LD_PRELOAD="$lib" GPUSHIM_BACKEND=vmm GPUSHIM_PEERS=all GPUSHIM_PLACEMENT=$policy GPUSHIM_LOG=info \
       GPUSHIM_STATS=1 timeout 300 "$app" > "$log" 2>&1 && served "$log"
  then row "peer_access $policy, $gpus GPUs" PASS; else row "peer_access $policy, $gpus GPUs" FAIL; fi
  grep -E "granules|spill:|FAILED" "$log" | sed "s/^/    [$policy] /" | tee -a "$table"
done
# The bandwidth table of placement local, where a GPU's block is that GPU's memory.
bandwidth=$(grep "peer_access: bandwidth" "$logs/peer_access.local.log" 2>/dev/null | sed 's/^peer_access: bandwidth //')

# 4. The per-device cap under GPUSHIM_PEERS: the app counts where every granule lives, and every OOM
#    report's "memory mapped by device" line must show no device over the cap.
over_cap() {  # prints the device sizes of LOG's report lines that exceed cap_bytes
  grep -o "memory mapped by device: .*" "$1" | sed 's/^memory mapped by device: //' | tr ',' '\n' |
    awk -v cap="$cap_bytes" '{ n = $3; u = $4
      m = (u == "GiB") ? 2^30 : (u == "MiB") ? 2^20 : (u == "KiB") ? 2^10 : 1
      if (n * m > cap) print }'
}
for policy in interleave spill; do
  log="$logs/peer_access.cap.$policy.log"
  name="cap 2GiB/device, GPUSHIM_PEERS=all, $policy"
  if [ "$gpus" -lt 2 ]; then row "$name" SKIP; continue; fi
  if [ -z "$lib" ] || [ -z "$app" ]; then row "$name" FAIL; continue; fi
  LD_PRELOAD="$lib" GPUSHIM_BACKEND=vmm GPUSHIM_PEERS=all GPUSHIM_PLACEMENT=$policy GPUSHIM_LIMIT=2GiB GPUSHIM_LOG=info \
    GPUSHIM_STATS=1 timeout 300 "$app" --cap "$cap_bytes" > "$log" 2>&1
  rc=$?
  reports=$(grep -c "memory mapped by device" "$log")
  over=$(over_cap "$log")
  echo "peer_check: $reports OOM report(s) name the devices; over the cap: ${over:-none}" >> "$log"
  evidence=$log
  if [ $rc = 0 ] && [ "$reports" -gt 0 ] && [ -z "$over" ] && served "$log"
  then row "$name" PASS; else row "$name" FAIL; fi
  grep -E "peer_access: cap|memory mapped by device|FAILED" "$log" | head -3 | sed "s/^/    [cap $policy] /" | tee -a "$table"
done

# 5. The transparency apps between every ordered pair of GPUs, without gpushim and under vmm and tiered.
#    The pairs of one app and mode run at once (each needs 64 MB per GPU): a run's exit status is kept in
#    LOG.status.
run_pair() {  # MODE BINARY PAIR LOG
  if [ "$1" = noshim ]; then
    timeout 120 "$2" --pair "$3" > "$4" 2>&1
  else
    LD_PRELOAD="$lib" GPUSHIM_BACKEND=$1 GPUSHIM_STATS=1 timeout 120 "$2" --pair "$3" > "$4" 2>&1 && served "$4" "$1"
  fi
  echo $? > "$4.status"
}
for check in peer_copy_check pool_access_check; do
  binary=$copy_app; [ $check = pool_access_check ] && binary=$pool_app
  for mode in noshim vmm tiered; do
    name="$check, every ordered pair, $mode"
    if [ "$gpus" -lt 2 ]; then row "$name" SKIP; continue; fi
    if [ -z "$binary" ] || { [ $mode != noshim ] && [ -z "$lib" ]; }; then row "$name" FAIL; continue; fi
    failed=""; pairs=0
    for ((a = 0; a < gpus; a++)); do
      for ((b = 0; b < gpus; b++)); do
        [ $a = $b ] || run_pair $mode "$binary" $a,$b "$logs/$check.$mode.$a-$b.log" &
      done
    done
    wait
    for ((a = 0; a < gpus; a++)); do
      for ((b = 0; b < gpus; b++)); do
        [ $a = $b ] && continue
        log="$logs/$check.$mode.$a-$b.log"
        pairs=$((pairs + 1))
        [ "$(cat "$log.status" 2>/dev/null)" = 0 ] || { failed+=" $a,$b"; evidence=${evidence:-$log}; }
      done
    done
    if [ -z "$failed" ]; then row "$name ($pairs)" PASS; else row "$name (failed:$failed)" FAIL; fi
  done
done

# 6. NCCL all-reduce over gpushim buffers, one process per GPU.
allreduce=$(mktemp --suffix=.py)
trap 'rm -f "$allreduce"' EXIT
cat > "$allreduce" <<'PY'
# Each rank fills gpushim-allocated tensors with rank+1 and all-reduces them; the sum must be 1+2+...+n.
import os, sys, torch, torch.distributed as dist
rank = int(os.environ["RANK"]); local = int(os.environ["LOCAL_RANK"]); world = int(os.environ["WORLD_SIZE"])
torch.cuda.set_device(local)
dist.init_process_group("nccl", device_id=torch.device("cuda", local))
expected = world * (world + 1) / 2
ok = True
for elements in (1, 1000, 1 << 20, 64 << 20):      # 4 B .. 256 MiB per tensor
    t = torch.full((elements,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    torch.cuda.synchronize()
    good = bool(torch.all(t == expected).item())
    ok &= good
    print(f"rank {rank}: all_reduce of {elements} floats: {'ok' if good else 'WRONG'}", flush=True)
dist.destroy_process_group()
sys.exit(0 if ok else 1)
PY
if [ "$gpus" -lt 2 ]; then
  row "nccl all_reduce $gpus processes" SKIP
elif ! python3 -c "import torch" 2>/dev/null || ! command -v torchrun >/dev/null; then
  row "nccl all_reduce (no torch/torchrun)" FAIL
else
  for policy in local interleave spill; do
    log="$logs/allreduce.$policy.log"
    evidence=$log
    if LD_PRELOAD="$lib" GPUSHIM_BACKEND=vmm GPUSHIM_PEERS=all GPUSHIM_PLACEMENT=$policy GPUSHIM_STATS=1 \
         PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 torchrun --standalone --nproc_per_node=$gpus "$allreduce" \
         > "$log" 2>&1 && served "$log"
    then row "nccl all_reduce $gpus processes, $policy" PASS; else row "nccl all_reduce $gpus processes, $policy" FAIL; fi
  done
  # The same without gpushim: if this fails too, the machine is at fault, not gpushim.
  evidence="$logs/allreduce.without_gpushim.log"
  if PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 torchrun --standalone --nproc_per_node=$gpus "$allreduce" \
       > "$logs/allreduce.without_gpushim.log" 2>&1
  then row "nccl all_reduce $gpus processes, no gpushim" PASS; else row "nccl all_reduce $gpus processes, no gpushim" FAIL; fi
fi

# 7. The summary, last: every row once more, then the bandwidth table.
{
  echo "== peer_check summary: $gpus GPU(s), $SECONDS s =="
  printf '%s' "$summary"
  if [ -n "$bandwidth" ]; then
    echo "read bandwidth, GB/s: a kernel on the row's GPU reads the column's GPU's gpushim block (placement local):"
    echo "$bandwidth"
  fi
  [ -n "$failures" ] && printf '== the end of each failed step'"'"'s log ==\n%s' "$failures"
} | tee -a "$table"
[ -n "${OUT:-}" ] && tar czf "$OUT/peer_check_logs.tar.gz" -C "$logs" . 2>/dev/null
if [ $status = 0 ] && [ $skips -gt 0 ]; then
  echo "peer_check: NOT PASSED: $skips step(s) skipped, so the check is incomplete; logs in $logs" | tee -a "$table"
  exit 3
fi
echo "peer_check: $([ $status = 0 ] && echo passed || echo FAILED); logs in $logs" | tee -a "$table"
exit $status
