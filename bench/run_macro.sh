#!/usr/bin/env bash
# Macro benchmarks, every configuration in its own process, one after another on the same GPU (or, with
# --gpus N, up to N at once, each on its own GPU), in one invocation: the PyTorch transformer training loop
# and the CuPy FFT/matmul loop, and on request the PyTorch decoding loop and CNN training, each under the
# peers (the frameworks' own allocators) and under gpushim's backends. Prints the tables last.
# The same configuration moves by up to +-25% from one process to the next (measured on the H100), so one
# process per configuration cannot rank them: --repeat N runs each workload's whole list N times, pass after
# pass (pass 1 runs every configuration, then pass 2 ...; slow drift hits every configuration alike), keeps
# every process's files (pass 1 under the names of a single run, pass K as W-<config>.rK.*), and the report
# gives each configuration's median rate, the passes' min-max and the max of their memory peaks.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ALL_BACKENDS="passthrough vmm buddy slab mempool tiered"

usage() {
  cat <<EOF
usage: bench/run_macro.sh [options]

  --quick             smoke run: fewer steps and fewer configurations (see below)
  --only LIST         workloads, comma-separated: torch, cupy, decode, cnn, or all (default: torch,cupy)
  --lib PATH          libgpushim.so to preload (default: \$GPUSHIM_LIB, else the newest build*/**/libgpushim.so)
  --backends "A B"    gpushim backends to run (default: "$ALL_BACKENDS"; quick: "passthrough tiered")
  --configs "A B"     run only these configuration names (e.g. "default gpushim-tiered")
  --python PATH       interpreter (default: \$PYTHON, else /opt/torch/.venv/bin/python3, else python3)
  --out DIR           results folder (default: \$OUT/macro when OUT is set, else bench/results/<date>)
  --timeout S         per-configuration limit in seconds (default 240; quick 120)
  --repeat N          run each workload's list of configurations N times, pass after pass (default 1);
                      the tables then show per configuration the median rate over the passes, their
                      min-max range, the number of passes, and memory peaks as the max over passes
  --gpus N            run up to N configuration processes at once, each pinned to its own GPU (nvidia-smi's
                      GPUs 0..N-1, by UUID in CUDA_VISIBLE_DEVICES; default 1: one after another, on the
                      GPU the environment gives). In pass K (counted from 0) the i-th configuration of the
                      workload's list (from 0) runs on GPU (i + K) mod N, so across passes each configuration
                      visits different GPUs and no GPU's bias sticks to one configuration; one GPU runs its
                      processes one after another, in pass order
  --dry-run           print which process would run in which pass on which GPU, and run nothing
  --report DIR        only print the tables of an earlier run's folder
  -h, --help          this text

Configurations (each a separate process; names are the table's first column):
  torch: default              PyTorch caching allocator
         expandable           PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
         mallocasync          PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync
         nocache-cudamalloc   PYTORCH_NO_CUDA_MEMORY_CACHING=1 (raw cudaMalloc/cudaFree)
         gpushim-<backend>    PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD=libgpushim.so GPUSHIM_BACKEND=<backend>
  decode, cnn: the torch configurations; by default only default, expandable, mallocasync, gpushim-tiered,
         gpushim-vmm (gpushim-<backend> for each backend of --backends when given); --configs picks any
  cupy:  pool                 CuPy's default MemoryPool
         mallocasync          cupy.cuda.MemoryAsyncPool (cudaMallocAsync)
         none-cudamalloc      cupy.cuda.set_allocator(None) (raw cudaMalloc/cudaFree)
         gpushim-<backend>    set_allocator(None) under LD_PRELOAD=libgpushim.so GPUSHIM_BACKEND=<backend>
  quick: torch default, expandable, nocache-cudamalloc, gpushim-passthrough, gpushim-tiered (2+6 steps);
         cupy pool, none-cudamalloc, gpushim-tiered (8+100 iterations);
         decode and cnn default, expandable, gpushim-tiered (their --quick sizes)

Workloads (docs/benchmarks.md): torch = bench/torch_transformer.py, cupy = bench/cupy_loop.py,
  decode = bench/torch_decode.py (fp16 greedy decoding, KV cache grown by torch.cat, cuDNN attention),
  cnn = bench/torch_cnn.py (ResNet-like training, cuDNN convolutions, batch and image size varying)

Estimated time on one H100 (each process pays ~10-20 s of Python/CUDA start-up):
  full torch: 10 configs x (~15-20 s start-up + 35 steps at 4-8.5 steps/s)  ~ 4-5 min
  full cupy:   9 configs x (~5-8 s start-up + 16+1000 iterations, 1-3 s)    ~ 1-1.5 min
  full total ~ 5-7 min: fits a 10-minute command limit with little margin; where it is tight,
  run "--only torch" and "--only cupy" as two commands.
  quick total ~ 1.5-2 min (torch 5 x ~12 s, cupy 3 x ~7 s).
  decode, cnn: sized for ~15-25 s per process including start-up (estimates before their first GPU run);
  their 5 default configurations x 3 passes on 4 GPUs ("--repeat 3 --gpus 4") ~ 4 rounds of ~20 s each.
  --repeat N multiplies these by N: "--only cupy --repeat 3" ~ 3-4.5 min fits one command; full torch x 3
  (~12-15 min) does not: narrow it, e.g. --only torch --configs "default expandable gpushim-tiered"
  --repeat 3 ~ 3-4 min.
Results: raw JSON lines and logs in the results folder; tables.md there holds the printed tables.
Files per process: <workload>-<config>.json/.stderr/.status for pass 1 (the only pass without --repeat),
<workload>-<config>.r<K>.json/.stderr/.status for pass K >= 2.
EOF
}

command_line="bench/run_macro.sh${*:+ $*}"
quick=0; only=""; lib="${GPUSHIM_LIB:-}"; backends=""; only_configs=""; python="${PYTHON:-}"
out=""; per_config_timeout=""; report_dir=""; repeat=1; gpus=1; dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="${2:?--only needs a list of workloads}"; shift ;;
    --lib) lib="${2:?--lib needs a path}"; shift ;;
    --backends) backends="${2:?--backends needs a list}"; shift ;;
    --configs) only_configs="${2:?--configs needs a list}"; shift ;;
    --python) python="${2:?--python needs a path}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --timeout) per_config_timeout="${2:?--timeout needs seconds}"; shift ;;
    --report) report_dir="${2:?--report needs a folder}"; shift ;;
    --repeat) repeat="${2:?--repeat needs a count}"; shift ;;
    --gpus) gpus="${2:?--gpus needs a count}"; shift ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_macro.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
ALL_WORKLOADS="torch cupy decode cnn"
workloads=""
for w in ${only//,/ }; do
  case "$w" in
    all) workloads="$ALL_WORKLOADS" ;;
    torch|cupy|decode|cnn) workloads+=" $w" ;;
    *) echo "run_macro.sh: --only takes torch, cupy, decode, cnn or all, comma-separated (got '$w')" >&2; exit 2 ;;
  esac
done
: "${workloads:=torch cupy}"
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || { echo "run_macro.sh: --repeat takes a count >= 1" >&2; exit 2; }
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || { echo "run_macro.sh: --gpus takes a count >= 1" >&2; exit 2; }

if [[ -z "$python" ]]; then
  if [[ -x /opt/torch/.venv/bin/python3 ]]; then python=/opt/torch/.venv/bin/python3; else python=python3; fi
fi
# The report needs only the standard library: any python3 does.
report_python=$(command -v python3 || echo "$python")

if [[ -n "$report_dir" ]]; then
  exec "$report_python" "$HERE/macro_report.py" "$report_dir"
fi

# decode and cnn offer every torch configuration but run a short list unless --configs names others: each
# of their processes costs ~20 s of a GPU, and the list is the one the free-safety targets are about.
family_peers="default expandable mallocasync nocache-cudamalloc"
if [[ -n "$backends" ]]; then family_backends="$backends"; else family_backends=""; fi
if [[ $quick -eq 1 ]]; then
  : "${backends:=passthrough tiered}"; : "${per_config_timeout:=120}"
  torch_args=(--warmup 2 --steps 6); cupy_args=(--warmup 8 --iters 100)
  torch_peers="default expandable nocache-cudamalloc"; cupy_peers="pool none-cudamalloc"
  [[ "$backends" == "passthrough tiered" ]] && cupy_backends="tiered" || cupy_backends="$backends"
  decode_args=(--quick); cnn_args=(--quick)
  family_default="default expandable"; : "${family_backends:=tiered}"
else
  : "${backends:=$ALL_BACKENDS}"; : "${per_config_timeout:=240}"
  torch_args=(); cupy_args=()
  torch_peers="default expandable mallocasync nocache-cudamalloc"; cupy_peers="pool mallocasync none-cudamalloc"
  cupy_backends="$backends"
  decode_args=(); cnn_args=()
  family_default="default expandable mallocasync"; : "${family_backends:=tiered vmm}"
fi
for b in $family_backends; do family_default+=" gpushim-$b"; done

if [[ -z "$lib" ]]; then
  # Newest libgpushim.so in any build folder of the repository.
  lib=$(find "$REPO" -maxdepth 5 -path "$REPO/build*" -name libgpushim.so -type f -printf '%T@ %p\n' 2>/dev/null \
        | sort -rn | head -1 | cut -d' ' -f2-)
fi
lib_missing=""
if [[ -z "$lib" || ! -f "$lib" ]]; then
  lib_missing="no libgpushim.so (pass --lib or set GPUSHIM_LIB)"
  echo "run_macro.sh: WARNING: $lib_missing; gpushim configurations will be skipped" >&2
else
  lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")
fi

if [[ -z "$out" ]]; then
  if [[ -n "${OUT:-}" ]]; then out="$OUT/macro"; else out="$HERE/results/$(date -u +%Y%m%d-%H%M%S)"; fi
fi

# The GPU of each of the --gpus lanes, as CUDA_VISIBLE_DEVICES will name it: its UUID, which CUDA and NVML
# both resolve to the same card (bench/nvml_sampler.py), whatever order each of them numbers the cards in.
# Without nvidia-smi: indices, with CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA numbers the cards as NVML does.
# A dry run prints lanes only and asks nothing of the machine.
gpu_ids=(); gpu_order=()
if [[ $gpus -gt 1 && $dry_run -eq 0 ]]; then
  mapfile -t gpu_ids < <(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null | grep -o '^GPU-[0-9a-fA-F-]*')
  if [[ ${#gpu_ids[@]} -eq 0 ]]; then
    gpu_ids=(); for (( g = 0; g < gpus; g++ )); do gpu_ids+=("$g"); done
    gpu_order=(CUDA_DEVICE_ORDER=PCI_BUS_ID)
    echo "run_macro.sh: WARNING: nvidia-smi lists no GPU; pinning by index" >&2
  elif [[ ${#gpu_ids[@]} -lt $gpus ]]; then
    echo "run_macro.sh: --gpus $gpus but nvidia-smi lists ${#gpu_ids[@]} GPU(s)" >&2; exit 2
  fi
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    echo "run_macro.sh: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES ignored: --gpus $gpus uses nvidia-smi's GPUs 0..$((gpus - 1))" >&2
  fi
fi

if [[ $dry_run -eq 0 ]]; then
mkdir -p "$out" || { echo "run_macro.sh: cannot create $out" >&2; exit 2; }

# What the tables' header says: device, date, commit, the command.
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader -i "${BENCH_NVML_INDEX:-0}" 2>/dev/null \
         | head -1 | sed 's/, / driver /')
commit="${GPUSHIM_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
if [[ "$commit" != unknown ]] && [[ -n "$(git -C "$REPO" status --porcelain 2>/dev/null | head -1)" ]]; then
  commit="$commit+dirty"
fi
"$report_python" - "$out/meta.json" "${device:-unknown}" "$commit" "$lib" "$python" "$quick" \
    "$command_line" "$repeat" "$gpus" <<'PY'
import json, sys, datetime
path, device, commit, lib, python, quick, command, repeat, gpus = sys.argv[1:10]
with open(path, "w") as f:
    json.dump({"device": device, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "commit": commit, "lib": lib, "python": python, "quick": quick == "1", "command": command,
               "repeat": int(repeat), "gpus": int(gpus)}, f)
    f.write("\n")
PY
fi

# Variables that choose an allocator; every configuration starts with none of them set.
CLEAN_ENV=(-u LD_PRELOAD -u GPUSHIM_BACKEND -u GPUSHIM_STATS -u PYTORCH_CUDA_ALLOC_CONF -u PYTORCH_ALLOC_CONF
           -u PYTORCH_NO_CUDA_MEMORY_CACHING -u BENCH_CONFIG)

selected() {  # is configuration $2 of workload $1 wanted (--configs, else the workload's default list)?
  local list="$only_configs"
  if [[ -z "$list" ]]; then
    case "$1" in decode|cnn) list="$family_default" ;; *) return 0 ;; esac
  fi
  local c; for c in $list; do [[ "$c" == "$2" ]] && return 0; done; return 1
}

# gpu_lane CONFIG_INDEX PASS_INDEX GPUS: the GPU (0..GPUS-1) that runs the CONFIG_INDEX-th configuration
# (from 0) in pass PASS_INDEX (from 0). Rotating by the pass moves each configuration to another GPU every
# pass, so a faster or slower card shifts every configuration's median alike.
gpu_lane() { echo $(( ($1 + $2) % $3 )); }

# queue_one WORKLOAD NAME HOW SCRIPT [VAR=VALUE ...] -- [ARGS ...]: pass $pass of one configuration, queued
# for the GPU gpu_lane gives; run_queue runs the queue. The plan is written here, in list order, whatever
# order the GPUs finish in.
queue_one() {
  local lane; lane=$(gpu_lane "$config_index" $(( pass - 1 )) "$gpus")
  config_index=$(( config_index + 1 ))
  [[ $pass -eq 1 && $dry_run -eq 0 ]] && printf '%s\t%s\n' "$2" "$3" >>"$out/$1-plan.tsv"
  queue_lane+=("$lane")
  queue_what+=("pass $pass gpu $lane $1 $2: $3")
  queue_cmd+=("$(printf '%q ' run_one "$pass" "$lane" "$@")")
}

run_queue() {  # every queued process: one after another, or one lane per GPU at once
  local j lane
  if [[ $dry_run -eq 1 ]]; then
    printf '%s\n' "${queue_what[@]}"
  elif [[ $gpus -eq 1 ]]; then
    for j in "${!queue_cmd[@]}"; do eval "${queue_cmd[$j]}"; done
  else
    for (( lane = 0; lane < gpus; lane++ )); do
      ( for j in "${!queue_cmd[@]}"; do
          [[ ${queue_lane[$j]} -eq $lane ]] && eval "${queue_cmd[$j]}"
        done ) &
    done
    wait
  fi
  queue_lane=(); queue_what=(); queue_cmd=()
}

# run_one PASS LANE WORKLOAD NAME HOW SCRIPT [VAR=VALUE ...] -- [ARGS ...]: one process of one configuration.
run_one() {
  local pass=$1 lane=$2 workload=$3 name=$4 how=$5 script=$6; shift 6
  local vars=(); while [[ $# -gt 0 && "$1" != -- ]]; do vars+=("$1"); shift; done; shift
  # Pass 1 keeps the names of a run without --repeat; pass K >= 2 adds .rK (macro_report.py reads both).
  local base="$out/$workload-$name" tag="" where=""
  [[ $pass -gt 1 ]] && base+=".r$pass"
  [[ $repeat -gt 1 ]] && tag=" (pass $pass/$repeat)"
  if [[ $gpus -gt 1 ]]; then
    vars+=("CUDA_VISIBLE_DEVICES=${gpu_ids[$lane]}" "${gpu_order[@]}"); where=" gpu=$lane"; tag+=" [GPU $lane]"
  fi
  if [[ "$how" == *libgpushim.so* && -n "$lib_missing" ]]; then
    echo "skipped $lib_missing" >"$base.status"; echo "[$workload] $name$tag: skipped" >&2; return
  fi
  local t0 t1 rc
  t0=$(date +%s.%N)
  # timeout runs outside the preload; only the benchmark process gets LD_PRELOAD.
  timeout -k 10 "$per_config_timeout" env "${CLEAN_ENV[@]}" "${vars[@]}" "$python" "$HERE/$script" \
      --config "$name" "$@" >"$base.json" 2>"$base.stderr" </dev/null
  rc=$?
  t1=$(date +%s.%N)
  local wall; wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "$rc $wall$where" >"$base.status"
  local rate; rate=$(grep -o '"rate": [0-9.e+-]*' "$base.json" | head -1 | cut -d' ' -f2)
  echo "[$workload] $name$tag: exit $rc, ${wall} s, rate ${rate:-none}" >&2
}

start=$(date +%s)
[[ $dry_run -eq 1 ]] || echo "run_macro.sh: results in $out; lib ${lib:-none}; python $python" >&2

# torch_family_pass WORKLOAD SCRIPT ARGS_ARRAY PEERS BACKENDS: every configuration of a PyTorch workload
# once, as pass $pass (the torch transformer, the decoding loop, the CNN share the configurations).
torch_family_pass() {
  local workload=$1 script=$2 peers=$4 family_backend_list=$5 name backend
  local -n extra=$3
  for name in $peers; do
    selected "$workload" "$name" || continue
    case "$name" in
      default) queue_one "$workload" "$name" "PyTorch caching allocator" "$script" -- "${extra[@]}" ;;
      expandable) queue_one "$workload" "$name" "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" "$script" \
                    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True -- "${extra[@]}" ;;
      mallocasync) queue_one "$workload" "$name" "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync" "$script" \
                     PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync -- "${extra[@]}" ;;
      nocache-cudamalloc) queue_one "$workload" "$name" "PYTORCH_NO_CUDA_MEMORY_CACHING=1, raw cudaMalloc" \
                            "$script" PYTORCH_NO_CUDA_MEMORY_CACHING=1 -- "${extra[@]}" ;;
    esac
  done
  for backend in $family_backend_list; do
    name="gpushim-$backend"; selected "$workload" "$name" || continue
    queue_one "$workload" "$name" "PYTORCH_NO_CUDA_MEMORY_CACHING=1 GPUSHIM_BACKEND=$backend LD_PRELOAD=libgpushim.so" \
      "$script" PYTORCH_NO_CUDA_MEMORY_CACHING=1 "LD_PRELOAD=$lib" "GPUSHIM_BACKEND=$backend" \
      GPUSHIM_STATS=1 -- "${extra[@]}"
  done
}

run_torch_pass() { torch_family_pass torch torch_transformer.py torch_args "$torch_peers" "$backends"; }
# --configs may name any backend for these two; without it, selected() keeps the short default list.
run_decode_pass() { torch_family_pass decode torch_decode.py decode_args "$family_peers" "$ALL_BACKENDS"; }
run_cnn_pass() { torch_family_pass cnn torch_cnn.py cnn_args "$family_peers" "$ALL_BACKENDS"; }

run_cupy_pass() {  # every cupy configuration once, as pass $pass
  local name backend
  for name in $cupy_peers; do
    selected cupy "$name" || continue
    case "$name" in
      pool) queue_one cupy "$name" "CuPy default MemoryPool" cupy_loop.py -- --allocator pool "${cupy_args[@]}" ;;
      mallocasync) queue_one cupy "$name" "cupy.cuda.MemoryAsyncPool (cudaMallocAsync)" cupy_loop.py -- \
                     --allocator async "${cupy_args[@]}" ;;
      none-cudamalloc) queue_one cupy "$name" "set_allocator(None), raw cudaMalloc" cupy_loop.py -- \
                         --allocator none "${cupy_args[@]}" ;;
    esac
  done
  for backend in $cupy_backends; do
    name="gpushim-$backend"; selected cupy "$name" || continue
    queue_one cupy "$name" "set_allocator(None) GPUSHIM_BACKEND=$backend LD_PRELOAD=libgpushim.so" cupy_loop.py \
      "LD_PRELOAD=$lib" "GPUSHIM_BACKEND=$backend" GPUSHIM_STATS=1 -- --allocator none "${cupy_args[@]}"
  done
}

queue_lane=(); queue_what=(); queue_cmd=()
for workload in $ALL_WORKLOADS; do
  [[ " $workloads " == *" $workload "* ]] || continue
  [[ $dry_run -eq 1 ]] || : >"$out/$workload-plan.tsv"
  # Interleaved: the whole list once per pass, so drift over minutes (clocks, temperature) hits every
  # configuration alike instead of the ones that happen to run last.
  for (( pass = 1; pass <= repeat; pass++ )); do
    config_index=0
    "run_${workload}_pass"
  done
  run_queue
done

[[ $dry_run -eq 1 ]] && exit 0
echo "run_macro.sh: all configurations done in $(( $(date +%s) - start )) s" >&2
echo
"$report_python" "$HERE/macro_report.py" "$out"
