#!/bin/sh
# scripts/activity_lock_counts.py applied to a copy of router/stream_activity.cpp: fails (naming the line
# it no longer finds) where the source has moved away from what the tool instruments.
#   activity_lock_counts_test.sh REPOSITORY PYTHON
set -eu
repo=$1
python=$2
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
mkdir -p "$copy/router"
cp "$repo/router/stream_activity.cpp" "$copy/router/"
"$python" "$repo/scripts/activity_lock_counts.py" "$copy"
grep -q "TimedSpinLock lock;" "$copy/router/stream_activity.cpp"
grep -q "SiteScope act_site_scope(3);" "$copy/router/stream_activity.cpp"
echo "activity_lock_counts.py applies"
