#!/bin/sh
# scripts/activity_lock_counts.py and scripts/marked_batch_round_trip.py applied, one after the other, to a
# copy of the files they edit: fails (naming the line a tool no longer finds) where the source has moved
# away from what they instrument.
#   instrumented_copies_test.sh REPOSITORY PYTHON
set -eu
repo=$1
python=$2
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
mkdir -p "$copy/router"
for file in stream_activity.cpp free_fence_queue.h marked_batches.h marked_batches.cpp; do
  cp "$repo/router/$file" "$copy/router/"
done
"$python" "$repo/scripts/activity_lock_counts.py" "$copy"
"$python" "$repo/scripts/marked_batch_round_trip.py" "$copy"
grep -q "TimedSpinLock lock;" "$copy/router/stream_activity.cpp"
grep -q "SiteScope act_site_scope(3);" "$copy/router/stream_activity.cpp"
grep -q "batch.closed_ns = monotonic_ns();" "$copy/router/marked_batches.cpp"
echo "both tools apply"
