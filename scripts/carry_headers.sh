#!/usr/bin/env bash
# Copies the header-only libraries the build uses (CLI11, nlohmann-json) from this machine's system
# include folder into .carry/include, for a machine without apt (the lent GPU machine): carry .carry
# with the tree and the build finds them there (CMakeLists.txt, test_apps/CMakeLists.txt,
# scripts/gpu_check.sh). Nothing is vendored into git (.carry/ is ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/include
for header in CLI nlohmann; do
  found=""
  for dir in /usr/include /usr/local/include; do
    if [ -d "$dir/$header" ]; then found="$dir/$header"; break; fi
  done
  [ -n "$found" ] || { echo "carry_headers.sh: $header not installed here (scripts/setup.sh installs it)" >&2; exit 1; }
  rm -rf ".carry/include/$header"
  cp -r "$found" .carry/include/
done
echo "carry_headers.sh: .carry/include has $(find .carry/include -type f | wc -l) headers (CLI11, nlohmann-json)"
