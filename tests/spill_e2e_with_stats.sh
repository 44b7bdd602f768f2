#!/usr/bin/env bash
# Runs the spilling end-to-end test (tests/router_spill_end_to_end_test.cpp) and passes only if it passed
# AND its GPUSHIM_STATS output at exit carries the spill line (router/memory_report.cpp), which only the
# process's exit can show.   spill_e2e_with_stats.sh TEST_BINARY
out=$("$1" --gtest_filter='*ItSpills*' 2>&1)
rc=$?
printf '%s\n' "$out"
[ $rc -eq 0 ] || exit $rc
grep -q '^gpushim: device 0 spilled to host: [1-9][0-9]* blocks' <<<"$out" && exit 0
echo "FAIL: no 'device 0 spilled to host' line in gpushim's exit statistics"
exit 1
