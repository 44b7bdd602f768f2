#!/usr/bin/env bash
# The verdicts of the GPU check scripts, on made-up logs (CPU only): scripts/gpu_test_verdict.sh fails a
# run in which no GPU test passed, and scripts/served_by_gpushim.sh fails a log in which gpushim served
# nothing. Each case prints its line; the first wrong verdict fails the test.
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0
expect() {  # expect STATUS DESCRIPTION COMMAND...
  local want=$1 what=$2
  shift 2
  "$@" > "$dir/out" 2>&1
  local got=$?
  if { [ "$want" = 0 ] && [ "$got" = 0 ]; } || { [ "$want" != 0 ] && [ "$got" != 0 ]; }; then
    echo "ok    $what"
  else
    echo "WRONG $what: exit $got, expected $([ "$want" = 0 ] && echo 0 || echo non-zero)"; cat "$dir/out"
    failures=$((failures + 1))
  fi
}

passed='1/3 Test #1: torture_static_noshim ..........   Passed    2.01 sec'
skipped='2/3 Test #2: torture_static_vmm .............***Skipped   0.01 sec'
failed='3/3 Test #3: framework_torch_vmm ............***Failed    9.20 sec'
printf '%s\n%s\n' "$skipped" "$skipped" > "$dir/all_skipped.log"
printf '%s\n%s\n' "$passed" "$skipped" > "$dir/some_passed.log"
printf '%s\n%s\n' "$passed" "$failed" > "$dir/one_failed.log"
: > "$dir/none_ran.log"
expect 1 "every GPU test skipped: tested nothing"  "$repo/scripts/gpu_test_verdict.sh" "$dir/all_skipped.log" 0
expect 1 "no GPU test ran"                          "$repo/scripts/gpu_test_verdict.sh" "$dir/none_ran.log" 0
expect 1 "a GPU test failed"                        "$repo/scripts/gpu_test_verdict.sh" "$dir/one_failed.log" 8
expect 1 "ctest itself failed"                      "$repo/scripts/gpu_test_verdict.sh" "$dir/some_passed.log" 8
expect 0 "one passed, one skipped (a framework not installed)" \
                                                    "$repo/scripts/gpu_test_verdict.sh" "$dir/some_passed.log" 0

header='gpushim: device backend       allocs      frees     failed  bytes_allocated   peak_live  peak_reserved'
printf 'all reduce ok\n%s\ngpushim:      0 vmm                12         12          0        1.50 GiB  256.00 MiB     288.00 MiB\n' \
  "$header" > "$dir/served.log"
printf 'all reduce ok\n' > "$dir/no_stats.log"
printf 'ok\n%s\ngpushim:      0 passthrough        12         12          0        1.50 GiB  256.00 MiB     288.00 MiB\n' \
  "$header" > "$dir/other_backend.log"
printf 'ok\n%s\ngpushim:      0 vmm                 0          0          0           0 B       0 B            0 B\n' \
  "$header" > "$dir/zero.log"
expect 0 "vmm served 12 allocations"          "$repo/scripts/served_by_gpushim.sh" "$dir/served.log" vmm
expect 1 "no statistics: nothing proves gpushim served" "$repo/scripts/served_by_gpushim.sh" "$dir/no_stats.log" vmm
expect 1 "another backend served"             "$repo/scripts/served_by_gpushim.sh" "$dir/other_backend.log" vmm
expect 1 "vmm served nothing"                 "$repo/scripts/served_by_gpushim.sh" "$dir/zero.log" vmm
exit $((failures > 0))
