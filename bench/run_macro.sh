#!/usr/bin/env bash
# Macro benchmarks, every configuration in its own process, one after another on the same GPU,
# in one invocation: the PyTorch transformer training loop and the CuPy FFT/matmul loop, each under the
# peers (the frameworks' own allocators) and under every gpushim backend. Prints the tables last.
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
  --only WORKLOAD     torch or cupy (default: both)
  --lib PATH          libgpushim.so to preload (default: \$GPUSHIM_LIB, else the newest build*/**/libgpushim.so)
  --backends "A B"    gpushim backends to run (default: "$ALL_BACKENDS"; quick: "passthrough tiered")
  --configs "A B"     run only these configuration names (e.g. "default gpushim-tiered")
  --python PATH       interpreter (default: \$PYTHON, else /opt/torch/.venv/bin/python3, else python3)
  --out DIR           results folder (default: \$OUT/macro when OUT is set, else bench/results/<date>)
  --timeout S         per-configuration limit in seconds (default 240; quick 120)
  --repeat N          run each workload's list of configurations N times, pass after pass (default 1);
                      the tables then show per configuration the median rate over the passes, their
                      min-max range, the number of passes, and memory peaks as the max over passes
  --report DIR        only print the tables of an earlier run's folder
  -h, --help          this text

Configurations (each a separate process; names are the table's first column):
  torch: default              PyTorch caching allocator
         expandable           PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
         mallocasync          PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync
         nocache-cudamalloc   PYTORCH_NO_CUDA_MEMORY_CACHING=1 (raw cudaMalloc/cudaFree)
         gpushim-<backend>    PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD=libgpushim.so GPUSHIM_BACKEND=<backend>
  cupy:  pool                 CuPy's default MemoryPool
         mallocasync          cupy.cuda.MemoryAsyncPool (cudaMallocAsync)
         none-cudamalloc      cupy.cuda.set_allocator(None) (raw cudaMalloc/cudaFree)
         gpushim-<backend>    set_allocator(None) under LD_PRELOAD=libgpushim.so GPUSHIM_BACKEND=<backend>
  quick: torch default, expandable, nocache-cudamalloc, gpushim-passthrough, gpushim-tiered (2+6 steps);
         cupy pool, none-cudamalloc, gpushim-tiered (8+100 iterations)

Estimated time on one H100 (each process pays ~10-20 s of Python/CUDA start-up):
  full torch: 10 configs x (~15-20 s start-up + 35 steps at 4-8.5 steps/s)  ~ 4-5 min
  full cupy:   9 configs x (~5-8 s start-up + 16+1000 iterations, 1-3 s)    ~ 1-1.5 min
  full total ~ 5-7 min: fits a 10-minute command limit with little margin; where it is tight,
  run "--only torch" and "--only cupy" as two commands.
  quick total ~ 1.5-2 min (torch 5 x ~12 s, cupy 3 x ~7 s).
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
out=""; per_config_timeout=""; report_dir=""; repeat=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="${2:?--only needs torch or cupy}"; shift ;;
    --lib) lib="${2:?--lib needs a path}"; shift ;;
    --backends) backends="${2:?--backends needs a list}"; shift ;;
    --configs) only_configs="${2:?--configs needs a list}"; shift ;;
    --python) python="${2:?--python needs a path}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --timeout) per_config_timeout="${2:?--timeout needs seconds}"; shift ;;
    --report) report_dir="${2:?--report needs a folder}"; shift ;;
    --repeat) repeat="${2:?--repeat needs a count}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_macro.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in ""|torch|cupy) ;; *) echo "run_macro.sh: --only takes torch or cupy" >&2; exit 2 ;; esac
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || { echo "run_macro.sh: --repeat takes a count >= 1" >&2; exit 2; }

if [[ -z "$python" ]]; then
  if [[ -x /opt/torch/.venv/bin/python3 ]]; then python=/opt/torch/.venv/bin/python3; else python=python3; fi
fi
# The report needs only the standard library: any python3 does.
report_python=$(command -v python3 || echo "$python")

if [[ -n "$report_dir" ]]; then
  exec "$report_python" "$HERE/macro_report.py" "$report_dir"
fi

if [[ $quick -eq 1 ]]; then
  : "${backends:=passthrough tiered}"; : "${per_config_timeout:=120}"
  torch_args=(--warmup 2 --steps 6); cupy_args=(--warmup 8 --iters 100)
  torch_peers="default expandable nocache-cudamalloc"; cupy_peers="pool none-cudamalloc"
  [[ "$backends" == "passthrough tiered" ]] && cupy_backends="tiered" || cupy_backends="$backends"
else
  : "${backends:=$ALL_BACKENDS}"; : "${per_config_timeout:=240}"
  torch_args=(); cupy_args=()
  torch_peers="default expandable mallocasync nocache-cudamalloc"; cupy_peers="pool mallocasync none-cudamalloc"
  cupy_backends="$backends"
fi

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
mkdir -p "$out" || { echo "run_macro.sh: cannot create $out" >&2; exit 2; }

# What the tables' header says: device, date, commit, the command.
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader -i "${BENCH_NVML_INDEX:-0}" 2>/dev/null \
         | head -1 | sed 's/, / driver /')
commit="${GPUSHIM_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
if [[ "$commit" != unknown ]] && [[ -n "$(git -C "$REPO" status --porcelain 2>/dev/null | head -1)" ]]; then
  commit="$commit+dirty"
fi
"$report_python" - "$out/meta.json" "${device:-unknown}" "$commit" "$lib" "$python" "$quick" \
    "$command_line" "$repeat" <<'PY'
import json, sys, datetime
path, device, commit, lib, python, quick, command, repeat = sys.argv[1:9]
with open(path, "w") as f:
    json.dump({"device": device, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "commit": commit, "lib": lib, "python": python, "quick": quick == "1", "command": command,
               "repeat": int(repeat)}, f)
    f.write("\n")
PY

# Variables that choose an allocator; every configuration starts with none of them set.
CLEAN_ENV=(-u LD_PRELOAD -u GPUSHIM_BACKEND -u GPUSHIM_STATS -u PYTORCH_CUDA_ALLOC_CONF -u PYTORCH_ALLOC_CONF
           -u PYTORCH_NO_CUDA_MEMORY_CACHING -u BENCH_CONFIG)

selected() {  # is configuration $1 wanted by --configs?
  [[ -z "$only_configs" ]] && return 0
  local c; for c in $only_configs; do [[ "$c" == "$1" ]] && return 0; done; return 1
}

# run_one WORKLOAD NAME HOW SCRIPT [VAR=VALUE ...] -- [ARGS ...]: pass $pass of one configuration.
run_one() {
  local workload=$1 name=$2 how=$3 script=$4; shift 4
  local vars=(); while [[ $# -gt 0 && "$1" != -- ]]; do vars+=("$1"); shift; done; shift
  # Pass 1 keeps the names of a run without --repeat; pass K >= 2 adds .rK (macro_report.py reads both).
  local base="$out/$workload-$name" tag=""
  [[ $pass -gt 1 ]] && base+=".r$pass"
  [[ $repeat -gt 1 ]] && tag=" (pass $pass/$repeat)"
  [[ $pass -eq 1 ]] && printf '%s\t%s\n' "$name" "$how" >>"$out/$workload-plan.tsv"
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
  echo "$rc $wall" >"$base.status"
  local rate; rate=$(grep -o '"rate": [0-9.e+-]*' "$base.json" | head -1 | cut -d' ' -f2)
  echo "[$workload] $name$tag: exit $rc, ${wall} s, rate ${rate:-none}" >&2
}

start=$(date +%s)
echo "run_macro.sh: results in $out; lib ${lib:-none}; python $python" >&2

run_torch_pass() {  # every torch configuration once, as pass $pass
  local name backend
  for name in $torch_peers; do
    selected "$name" || continue
    case "$name" in
      default) run_one torch "$name" "PyTorch caching allocator" torch_transformer.py -- "${torch_args[@]}" ;;
      expandable) run_one torch "$name" "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" torch_transformer.py \
                    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True -- "${torch_args[@]}" ;;
      mallocasync) run_one torch "$name" "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync" torch_transformer.py \
                     PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync -- "${torch_args[@]}" ;;
      nocache-cudamalloc) run_one torch "$name" "PYTORCH_NO_CUDA_MEMORY_CACHING=1, raw cudaMalloc" \
                            torch_transformer.py PYTORCH_NO_CUDA_MEMORY_CACHING=1 -- "${torch_args[@]}" ;;
    esac
  done
  for backend in $backends; do
    name="gpushim-$backend"; selected "$name" || continue
    run_one torch "$name" "PYTORCH_NO_CUDA_MEMORY_CACHING=1 GPUSHIM_BACKEND=$backend LD_PRELOAD=libgpushim.so" \
      torch_transformer.py PYTORCH_NO_CUDA_MEMORY_CACHING=1 "LD_PRELOAD=$lib" "GPUSHIM_BACKEND=$backend" \
      GPUSHIM_STATS=1 -- "${torch_args[@]}"
  done
}

run_cupy_pass() {  # every cupy configuration once, as pass $pass
  local name backend
  for name in $cupy_peers; do
    selected "$name" || continue
    case "$name" in
      pool) run_one cupy "$name" "CuPy default MemoryPool" cupy_loop.py -- --allocator pool "${cupy_args[@]}" ;;
      mallocasync) run_one cupy "$name" "cupy.cuda.MemoryAsyncPool (cudaMallocAsync)" cupy_loop.py -- \
                     --allocator async "${cupy_args[@]}" ;;
      none-cudamalloc) run_one cupy "$name" "set_allocator(None), raw cudaMalloc" cupy_loop.py -- \
                         --allocator none "${cupy_args[@]}" ;;
    esac
  done
  for backend in $cupy_backends; do
    name="gpushim-$backend"; selected "$name" || continue
    run_one cupy "$name" "set_allocator(None) GPUSHIM_BACKEND=$backend LD_PRELOAD=libgpushim.so" cupy_loop.py \
      "LD_PRELOAD=$lib" "GPUSHIM_BACKEND=$backend" GPUSHIM_STATS=1 -- --allocator none "${cupy_args[@]}"
  done
}

for workload in torch cupy; do
  [[ -z "$only" || "$only" == "$workload" ]] || continue
  : >"$out/$workload-plan.tsv"
  # Interleaved: the whole list once per pass, so drift over minutes (clocks, temperature) hits every
  # configuration alike instead of the ones that happen to run last.
  for (( pass = 1; pass <= repeat; pass++ )); do
    "run_${workload}_pass"
  done
done

echo "run_macro.sh: all configurations done in $(( $(date +%s) - start )) s" >&2
echo
"$report_python" "$HERE/macro_report.py" "$out"
