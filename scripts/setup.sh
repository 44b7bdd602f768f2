#!/usr/bin/env bash
# Installs what building and testing gpushim needs on Debian 12 (CI, developer machines). Idempotent and
# quiet: apt runs only when a package is missing. The GPU machine has no apt; it builds the library and
# test apps with the CUDA toolkit alone (see README.md).
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libgtest-dev libgmock-dev libbenchmark-dev   # tests and CPU micro-benchmarks
  libcli11-dev nlohmann-json3-dev              # the gpushim command (header-only)
  libunwind-dev libzstd-dev zstd               # call stacks and trace compression
  chromium libpng-dev                          # renders the HTML trace report in its test, reads its screenshot
  clang libclang-rt-14-dev                     # libFuzzer for the fuzz targets (scripts/fuzz.sh)
  valgrind                                     # instructions per pair, the hot path's CPU guard
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no dpkg/apt on this machine; using what is installed" >&2
  exit 0
fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -ne 0 ] && sudo=(sudo)
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A machine without a package mirror (the lent GPU machine) cannot install: say so and build with what is
# there (the CUDA half needs none of these; the build leaves out what it cannot find).
if ! { "${sudo[@]}" apt-get update -qq && \
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "setup: could not install ${missing[*]}; continuing with what is installed" >&2
  [ "${CI:-}" = "true" ] && exit 1   # CI must have them
fi
exit 0
