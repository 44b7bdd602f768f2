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
# shellcheck source=tests/gpu/gpu_test_options.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu/gpu_test_options.sh"
parse_gpu_test_options gpu_ecosystem_sanitizer.sh "$@"
set -- "${gpu_test_command[@]}"
app="${1:?usage: gpu_ecosystem_sanitizer.sh [options] -- sanitizer_oob}"

command -v nvidia-smi >/dev/null 2>&1 || { echo "no GPU: skipped (nvidia-smi not found)"; exit 77; }
if [ -n "$probe" ] && ! "$probe" >/dev/null 2>&1; then echo "no GPU: skipped (probe failed)"; exit 77; fi
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[ -x "$sanitizer" ] || { echo "compute-sanitizer not found: skipped"; exit 77; }

preload=()
if [ "$backend" != "none" ]; then
  locate_libgpushim || { echo "FAIL: libgpushim.so not found"; exit 1; }
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

# expect_run LOG WANT_STATUS WANT_TEXT WHAT_FAILED WHAT_PASSED [ARGS...]: one sanitizer run passes if it exits
# WANT_STATUS and its output holds WANT_TEXT; a failure is reported and remembered in `fail`.
expect_run() {
  local log="$dir/$1" want_status="$2" want_text="$3" what_failed="$4" what_passed="$5"
  shift 5
  run "$log" "$@"
  local status=$?
  if [ $status -ne "$want_status" ] || ! grep -q "$want_text" "$log"; then
    echo "FAIL: $what_failed (backend $backend, exit $status)"
    fail=1
  else
    echo "ok: $what_passed (backend $backend)"
  fi
}

expect_run oob.log 99 "Invalid __global__ write" \
  "out-of-bounds write into a block not reported" "out-of-bounds write reported"
expect_run uaf.log 99 "Invalid __global__ write" \
  "write into a freed block not reported" "write into a freed block reported" --after-free
expect_run in.log 0 "ERROR SUMMARY: 0 errors" \
  "in-bounds run not clean" "in-bounds run reports 0 errors" --in-bounds
exit $fail
