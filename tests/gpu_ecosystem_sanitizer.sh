#!/usr/bin/env bash
# compute-sanitizer memcheck on sanitizer_oob, with or without gpushim: the out-of-bounds run and the
# --after-free run must be reported (an "Invalid __global__ write" and exit 99), the --in-bounds run
# must report "ERROR SUMMARY: 0 errors". Exit 77 (skip) without a GPU or without compute-sanitizer.
#
#   gpu_ecosystem_sanitizer.sh [--probe P] [--backend B|none] [--lib L] [--search DIR] -- SANITIZER_OOB
# The command it runs (docs/ecosystem.md):
#   LD_PRELOAD=libgpushim.so GPUSHIM_BACKEND=B compute-sanitizer --tool memcheck --nvtx yes \
#       --error-exitcode 99 SANITIZER_OOB [--in-bounds]
set -u
probe="" backend="none" lib="" search=""
while [ $# -gt 0 ]; do
  case "$1" in
    --probe) probe="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --lib) lib="$2"; shift 2 ;;
    --search) search="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "gpu_ecosystem_sanitizer.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
app="${1:?usage: gpu_ecosystem_sanitizer.sh [options] -- sanitizer_oob}"

command -v nvidia-smi >/dev/null 2>&1 || { echo "no GPU: skipped (nvidia-smi not found)"; exit 77; }
if [ -n "$probe" ] && ! "$probe" >/dev/null 2>&1; then echo "no GPU: skipped (probe failed)"; exit 77; fi
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[ -x "$sanitizer" ] || { echo "compute-sanitizer not found: skipped"; exit 77; }

preload=()
if [ "$backend" != "none" ]; then
  if [ -z "$lib" ] || [ ! -f "$lib" ]; then
    [ -n "$search" ] && lib=$(find "$search" -name libgpushim.so -type f 2>/dev/null | head -n 1)
  fi
  [ -n "$lib" ] && [ -f "$lib" ] || { echo "FAIL: libgpushim.so not found"; exit 1; }
  preload=(env "LD_PRELOAD=$lib${LD_PRELOAD:+:$LD_PRELOAD}" "GPUSHIM_BACKEND=$backend")
fi

run() {  # run LOGFILE [ARGS...]: prints the command, its output, returns its status
  local log="$1"; shift
  echo "+ ${preload[*]} $sanitizer --tool memcheck --nvtx yes --error-exitcode 99 $app $*"
  "${preload[@]}" "$sanitizer" --tool memcheck --nvtx yes --error-exitcode 99 "$app" "$@" >"$log" 2>&1
  local status=$?
  cat "$log"
  return $status
}

dir=$(mktemp -d "${TMPDIR:-/tmp}/gpushim-sanitizer.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fail=0

run "$dir/oob.log"; status=$?
if [ $status -ne 99 ] || ! grep -q "Invalid __global__ write" "$dir/oob.log"; then
  echo "FAIL: out-of-bounds write into a block not reported (backend $backend, exit $status)"
  fail=1
else
  echo "ok: out-of-bounds write reported (backend $backend)"
fi

run "$dir/uaf.log" --after-free; status=$?
if [ $status -ne 99 ] || ! grep -q "Invalid __global__ write" "$dir/uaf.log"; then
  echo "FAIL: write into a freed block not reported (backend $backend, exit $status)"
  fail=1
else
  echo "ok: write into a freed block reported (backend $backend)"
fi

run "$dir/in.log" --in-bounds; status=$?
if [ $status -ne 0 ] || ! grep -q "ERROR SUMMARY: 0 errors" "$dir/in.log"; then
  echo "FAIL: in-bounds run not clean (backend $backend, exit $status)"
  fail=1
else
  echo "ok: in-bounds run reports 0 errors (backend $backend)"
fi
exit $fail
