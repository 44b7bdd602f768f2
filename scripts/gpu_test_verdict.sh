#!/usr/bin/env bash
# Reads a ctest log (ctest --output-on-failure) of GPU tests and says whether it proves anything:
#   gpu_test_verdict.sh TESTS_LOG [CTEST_STATUS]
# Prints "N run: P passed, F failed, S skipped", then the failed tests one a line. Exits 1 when a test
# failed (or CTEST_STATUS is non-zero), and also when no test passed: on a GPU machine a run where every
# GPU test skipped, or none ran, tested nothing (scripts/gpu_check.sh uses this).
set -u
log="$1"
ctest_status="${2:-0}"
passed=$(grep -cE 'Test +#[0-9]+: .* Passed' "$log")
skipped=$(grep -cE 'Test +#[0-9]+: .*\*\*\*Skipped' "$log")
failed=$(grep -cE 'Test +#[0-9]+: .*\*\*\*(Failed|Timeout|Exception|Not Run)' "$log")
echo "$((passed + skipped + failed)) run: $passed passed, $failed failed, $skipped skipped"
grep -E 'Test +#[0-9]+: .*\*\*\*(Failed|Timeout|Exception|Not Run)' "$log" |
  sed -E 's/.*Test +#[0-9]+: ([^ ]+) .*\*\*\*(Failed|Timeout|Exception|Not Run).*/  FAILED  \1 (\2)/'
if [ "$passed" -eq 0 ]; then
  echo "  FAILED  no GPU test passed: a check that tested nothing is not a pass"
  exit 1
fi
[ "$failed" -eq 0 ] && [ "$ctest_status" -eq 0 ]
