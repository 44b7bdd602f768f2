#!/usr/bin/env bash
# Runs one GPU test command, with or without gpushim, and skips it cleanly where there is no GPU.
#
#   run_gpu_test.sh [--probe PATH] [--backend B|none] [--lib PATH] [--search DIR] -- COMMAND ARGS...
#
# Exit codes: 77 = skipped (ctest SKIP_RETURN_CODE): no nvidia-smi, or the probe finds no device, or the
# command itself skipped. Under a backend, a skip stands only if the command also skips without gpushim
# (a framework that is not installed); a command that skips only under gpushim (e.g. torch finds no CUDA
# device once gpushim is loaded) fails. With --backend B (not "none") the command runs with libgpushim.so preloaded,
# GPUSHIM_BACKEND=B and GPUSHIM_STATS=1, and passes only if it succeeds AND gpushim's exit statistics
# (stderr, format in docs/configuration.md) show backend B served at least one allocation: a test that
# passes because nothing was intercepted proves nothing.
set -u
# shellcheck source=tests/gpu/gpu_test_options.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_test_options.sh"
parse_gpu_test_options run_gpu_test.sh "$@"
set -- "${gpu_test_command[@]}"
[ $# -gt 0 ] || { echo "run_gpu_test.sh: no command given" >&2; exit 2; }

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no GPU: skipped (nvidia-smi not found)"
  exit 77
fi
if [ -n "$probe" ]; then
  probe_output=$("$probe" 2>&1)
  probe_status=$?
  if [ $probe_status -ne 0 ]; then
    echo "${probe_output:-no GPU: skipped (probe exited $probe_status)}"
    exit 77
  fi
fi

if [ "$backend" = "none" ]; then
  exec "$@"
fi

if ! locate_libgpushim; then
  echo "FAIL: libgpushim.so not found (--lib '${lib}', --search '${search}')"
  exit 1
fi

stderr_file=$(mktemp "${TMPDIR:-/tmp}/gpushim-test-stderr.XXXXXX")
trap 'rm -f "$stderr_file"' EXIT
LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" GPUSHIM_BACKEND="$backend" GPUSHIM_STATS=1 "$@" 2>"$stderr_file"
status=$?
cat "$stderr_file" >&2
if [ $status -eq 77 ]; then
  "$@" >/dev/null 2>&1
  plain_status=$?
  if [ $plain_status -eq 77 ]; then
    echo "skipped: the command skips without gpushim too"
    exit 77
  fi
  echo "FAIL: the command skipped under gpushim backend $backend but exits $plain_status without it"
  exit 1
fi
if [ $status -ne 0 ]; then
  echo "FAIL: exit code $status under gpushim backend $backend"
  exit $status
fi

# gpushim: <device> <backend> <allocs> <frees> <failed> ...; the header line has "allocs" in field 4.
served=$(awk -v b="$backend" '$1 == "gpushim:" && ($3 == b || index($3, b "/") == 1 || index($3, b "(") == 1) \
                              && $4 ~ /^[0-9]+$/ { n += $4 } END { print n + 0 }' "$stderr_file")
if [ "$served" -le 0 ]; then
  echo "FAIL: the command passed, but gpushim's stats show no allocation served by backend '$backend'" \
       "(no GPUSHIM_STATS line for it on stderr: was anything intercepted?)"
  exit 1
fi
echo "gpushim backend $backend served $served allocations"
exit 0
