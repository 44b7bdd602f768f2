#!/usr/bin/env bash
# Whether gpushim served a program's allocations, from the GPUSHIM_STATS=1 table in its log (format:
# docs/configuration.md, "The statistics table"):
#   served_by_gpushim.sh LOG BACKEND
# Exits 0 when the rows of BACKEND (every process and device in the log) count at least one allocation;
# a program that passed without gpushim serving it proves nothing about gpushim.
set -u
log="$1"
backend="$2"
awk -v backend="$backend" '
  # A composed backend names its parts in its rows ("tiered/slab", "tiered(vmm)"): they count as its own.
  $1 == "gpushim:" && ($3 == backend || index($3, backend "/") == 1 || index($3, backend "(") == 1) &&
    $4 ~ /^[0-9]+$/ { allocs += $4 }
  END {
    printf "gpushim %s served %d allocation(s)\n", backend, allocs
    exit !(allocs > 0)
  }' "$log"
