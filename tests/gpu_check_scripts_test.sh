#!/usr/bin/env bash
# The verdicts of the GPU check scripts, on made-up logs (CPU only): scripts/gpu_test_verdict.sh fails a
# run in which no GPU test passed, and scripts/served_by_gpushim.sh fails a log in which gpushim served
# nothing; scripts/gpu_bench_table.py shows both of alloc_bench's stream modes. Each case prints its line; the first wrong verdict fails the test.
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

# scripts/gpu_bench_table.py: both stream modes of alloc_bench side by side, and a CSV from before the
# streams column existed (read as streams off).
columns='label,api,pattern,size_bytes,threads,samples,median_ns,p99_ns,mean_ns,pairs_per_s,streams'
printf '%s\n' "$columns" 'none,runtime,pairs,256,1,100,3000.0,4000.0,3100.0,300000,off' \
  'none,async,pairs,256,1,100,640.0,900.0,650.0,1500000,off' 'tiered,runtime,pairs,256,1,100,90.0,200.0,95.0,9000000,off' \
  'tiered,runtime,pairs,256,1,100,97.0,210.0,99.0,8000000,on' 'none,runtime,pairs,256,1,100,3100.0,4100.0,3150.0,290000,on' \
  'tiered,runtime,pairs,256,16,100,120.0,400.0,130.0,99000000,on' > "$dir/bench.csv"
printf '%s\n' 'label,api,pattern,size_bytes,threads,samples,median_ns,p99_ns,mean_ns,pairs_per_s' \
  'vmm,runtime,pairs,65536,1,100,80.0,150.0,85.0,9000000' > "$dir/old_bench.csv"
table_has() {  # table_has CSV ARGS... -- WORD...: the table printed for CSV has every WORD
  local csv=$1; shift
  local args=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  python3 "$repo/scripts/gpu_bench_table.py" "$csv" "${args[@]}" > "$dir/table" || return 1
  for word in "$@"; do grep -q -- "$word" "$dir/table" || { cat "$dir/table"; return 1; }; done
}
expect 0 "bench table: a column per stream mode" \
  table_has "$dir/bench.csv" -- "cudaMalloc " "cudaMallocAsync" "cudaMalloc+stream" "tiered+stream" " 97 ns" " 90 ns" "3000 ns"
expect 1 "bench table: the 16-thread row is not in the 1-thread table" table_has "$dir/bench.csv" -- "120 ns"
expect 0 "bench table: 16 threads"              table_has "$dir/bench.csv" --threads 16 -- "tiered+stream" "120 ns"
expect 0 "bench table: a CSV without the streams column" table_has "$dir/old_bench.csv" -- "vmm" "80 ns"
expect 1 "bench table: no rows for the pattern" table_has "$dir/bench.csv" --pattern window -- "tiered"

# scripts/ab_table.py: the median over the passes per library (mean pair, p99, pairs per second with the
# passes' range from three passes on, median pair), libraries in the order first seen.
printf '%s\n' "$columns" 'new,runtime,pairs,1048576,16,100,300.0,9000.0,1500.0,4900000,on' \
  'base,runtime,pairs,1048576,16,100,310.0,29000.0,2600.0,3600000,on' \
  'new,runtime,pairs,1048576,16,100,320.0,21000.0,1600.0,5000000,on' \
  'base,runtime,pairs,1048576,16,100,330.0,30000.0,2700.0,3700000,on' \
  'new,runtime,pairs,1048576,16,100,310.0,20000.0,1400.0,4800000,on' > "$dir/ab.csv"
ab_has() {  # ab_has CSV WORD...: the A/B table printed for CSV has every WORD
  local csv=$1; shift
  python3 "$repo/scripts/ab_table.py" "$csv" > "$dir/ab_table" || return 1
  for word in "$@"; do grep -qF -- "$word" "$dir/ab_table" || { cat "$dir/ab_table"; return 1; }; done
}
expect 0 "ab table: medians of the passes, first-seen order" \
  ab_has "$dir/ab.csv" "| new | base |" "| 16, on | 1 MiB | 1500 (20.0 us) | 2650 (29.5 us) | 4.90 (4.80-5.00) | 3.65 | 310 | 320 |"
# With alloc_bench's peak_mib (NVML): a peak column per library, -1 (no NVML) left out of the median.
printf '%s\n' "$columns,peak_mib" 'new,runtime,pairs,65536,16,100,300.0,9000.0,1500.0,4900000,on,400' \
  'base,runtime,pairs,65536,16,100,310.0,29000.0,2600.0,3600000,on,2250' \
  'new,runtime,pairs,65536,16,100,320.0,21000.0,1600.0,5000000,on,-1' > "$dir/ab_peak.csv"
expect 0 "ab table: the peak each library held" \
  ab_has "$dir/ab_peak.csv" "| peak new | peak base |" "| 310 | 310 | 400 MiB | 2.20 GiB |"
printf '%s\n' "$columns" > "$dir/ab_empty.csv"
expect 1 "ab table: a CSV without rows is an error" ab_has "$dir/ab_empty.csv" "|"
# scripts/at_peak_table.py: a row per process from GPUSHIM_STATS' "at the peak" line (devices summed;
# zeros where a process met no peak), then the medians over the passes per library.
at_peak_line() {  # at_peak_line DEVICE AT TAKEN WAITED RULE UNWAITED AFTER MAPPED MS
  local grew=$(($5 + $6 + $7))
  echo "gpushim: device $1 at the peak while blocks waited for fences: $2 allocations; $3 took blocks other threads got back, $4 waited for fences, $grew were let past the peak ($5 at once by the growth rule, $6 with too little fenced to wait for, $7 after waiting in vain; $8 of them mapped memory); the waits took $9 ms in all"
}
mapping_line() {  # mapping_line DEVICE MAPS MAP_MS UNMAPS UNMAP_MS
  echo "gpushim: device $1 mapped 1.50 GiB in $2 calls ($3 ms), unmapped 512.00 MiB in $4 calls ($5 ms); 0 maps refused"
}
{ echo "gpushim: device 0 fenced 10 of 20 frees; peak waiting for a fence 1.00 MiB"
  at_peak_line 0 10 1 6 1 1 1 2 2.5; at_peak_line 1 4 0 4 0 0 0 0 1.0
  mapping_line 0 3 1.5 1 0.5; mapping_line 1 1 0.5 0 0.0; } > "$dir/stats_a.log"
{ at_peak_line 0 20 0 10 2 3 5 4 8.0; mapping_line 0 6 3.0 2 1.0; } > "$dir/stats_b.log"
echo "no line" > "$dir/stats_none.log"
at_peak_rows() {
  python3 "$repo/scripts/at_peak_table.py" header &&
  python3 "$repo/scripts/at_peak_table.py" row "$dir/stats_a.log" new 16 on 16777216 &&
  python3 "$repo/scripts/at_peak_table.py" row "$dir/stats_b.log" new 16 on 16777216 &&
  python3 "$repo/scripts/at_peak_table.py" row "$dir/stats_none.log" base 16 on 16777216
}
at_peak_rows > "$dir/at_peak.csv"
at_peak_has() {  # at_peak_has CSV WORD...: the table printed for CSV has every WORD
  local csv=$1; shift
  python3 "$repo/scripts/at_peak_table.py" "$csv" > "$dir/at_peak_table" || return 1
  for word in "$@"; do grep -qF -- "$word" "$dir/at_peak_table" || { cat "$dir/at_peak_table"; return 1; }; done
}
expect 0 "at-peak rows: devices summed, no line is zeros" grep -qxF "new,16,on,16777216,14,1,10,1,1,1,2,3.5,4,2,1,0.5" "$dir/at_peak.csv"
expect 0 "at-peak rows: a process without the line" grep -qxF "base,16,on,16777216,0,0,0,0,0,0,0,0,0,0,0,0" "$dir/at_peak.csv"
expect 0 "at-peak table: medians over the passes" \
  at_peak_has "$dir/at_peak.csv" "| new | base |" \
  "| 16, on | 16 MiB | 17 / 0 / 10 / 1, 2, 3 (3) / 5.8 / 5 (2.5), 1 (0.8) | 0 / 0 / 0 / 0, 0, 0 (0) / 0.0 / 0 (0.0), 0 (0.0) |"
python3 "$repo/scripts/at_peak_table.py" header > "$dir/at_peak_empty.csv"
expect 1 "at-peak table: a CSV without rows is an error" at_peak_has "$dir/at_peak_empty.csv" "|"
# scripts/ab_bench.sh --stats, end to end over a stand-in alloc_bench that writes one CSV row and, under
# GPUSHIM_STATS=1 only, the "at the peak" line: the libraries' lines become rows, the peer's run has none.
mkdir -p "$dir/stub/test_apps"
cat > "$dir/stub/test_apps/alloc_bench" <<'STUB'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do case "$1" in --label) label=$2 ;; --csv) csv=$2 ;; esac; shift; done
[ -s "$csv" ] || echo "label,api,pattern,size_bytes,threads,samples,median_ns,p99_ns,mean_ns,pairs_per_s,streams" > "$csv"
echo "$label,runtime,pairs,16777216,16,100,300.0,900.0,320.0,4000000,on" >> "$csv"
[ "${GPUSHIM_STATS:-0}" = 1 ] && echo "gpushim: device 0 at the peak while blocks waited for fences: 9 allocations; 4 took blocks other threads got back, 3 waited for fences, 2 were let past the peak (1 at once by the growth rule, 0 with too little fenced to wait for, 1 after waiting in vain; 1 of them mapped memory); the waits took 12.5 ms in all" >&2
[ "${GPUSHIM_STATS:-0}" = 1 ] && echo "gpushim: device 0 mapped 64.00 MiB in 2 calls (0.7 ms), unmapped 0 B in 0 calls (0.0 ms); 0 maps refused" >&2
exit 0
STUB
chmod +x "$dir/stub/test_apps/alloc_bench"
: > "$dir/stub/libstandin.so"
ab_stats_has() {  # ab_stats_has WORD...: ab_bench.sh --stats over the stand-in prints every WORD
  "$repo/scripts/ab_bench.sh" --build-dir "$dir/stub" --lib new="$dir/stub/libstandin.so" --peer pool=async \
    --stats --passes 2 --sizes 16M --csv "$dir/stub/ab.csv" > "$dir/ab_stats" 2>&1 || { cat "$dir/ab_stats"; return 1; }
  for word in "$@"; do grep -qF -- "$word" "$dir/ab_stats" || { cat "$dir/ab_stats"; return 1; }; done
}
expect 0 "ab_bench.sh --stats: the libraries' at-the-peak counts, and a peer without any" \
  ab_stats_has "| threads, stream | sizes | new |" "| 16, on | 16M | 9 / 4 / 3 / 1, 0, 1 (1) / 12.5 / 2 (0.7), 0 (0.0) |"
expect 0 "ab_bench.sh --stats: one row per library run" test "$(wc -l < "$dir/stub/ab_at_peak.csv")" -eq 3
# scripts/hot_path_table.py: the 16-thread peak table appears only when the CSV has peak_mib.
hot_has() {  # hot_has CSV WORD...: the hot-path table printed for CSV has every WORD
  local csv=$1; shift
  python3 "$repo/scripts/hot_path_table.py" "$csv" > "$dir/hot_table" || return 1
  for word in "$@"; do grep -qF -- "$word" "$dir/hot_table" || { cat "$dir/hot_table"; return 1; }; done
}
printf '%s\n' "$columns,peak_mib" 'tiered,runtime,pairs,65536,1,100,90.0,200.0,95.0,9000000,on,30' \
  'tiered,runtime,pairs,65536,16,100,300.0,900.0,320.0,90000000,on,410' \
  'none,async,pairs,65536,16,100,600.0,900.0,650.0,20000000,on,3000' > "$dir/hot.csv"
expect 0 "hot-path table: 16 threads' peaks" hot_has "$dir/hot.csv" "most device memory" "| tiered | on | 410 MiB |" \
  "| cudaMallocAsync | on | 2.93 GiB |"
expect 1 "hot-path table: no peak table without peak_mib" hot_has "$dir/bench.csv" "most device memory"
# --api driver rows (cuMemAlloc+cuMemFree) are their own configurations, and the targets skip them.
printf '%s\n' "$columns,peak_mib" 'tiered,runtime,pairs,256,1,100,95.0,200.0,95.0,9000000,off,1' \
  'tiered,driver,pairs,256,1,100,45.0,90.0,45.0,20000000,off,1' \
  'none,driver,pairs,256,1,100,900.0,1900.0,950.0,1000000,off,1' > "$dir/hot_driver.csv"
expect 0 "hot-path table: cuMemAlloc rows beside cudaMalloc's" hot_has "$dir/hot_driver.csv" \
  "| tiered | off | 1 | 95 ns (200 ns) |" "| tiered cuMemAlloc | off | 1 | 45 ns (90 ns) |" \
  "| cuMemAlloc | off | 1 | 900 ns (1900 ns) |" "tiered, stream off: <=1M 95 ns max (met)"
expect 1 "hot-path table: no targets line for the cuMemAlloc rows" hot_has "$dir/hot_driver.csv" \
  "tiered cuMemAlloc, stream"
# The fastest pass of each one-thread cell to 1 MiB, its slowest size: 95 (256 B) and 120 (1 MiB) -> 120.
printf '%s\n' "$columns,peak_mib" 'tiered,runtime,pairs,256,1,100,95.0,200.0,95.0,9000000,off,1' \
  'tiered,runtime,pairs,256,1,100,190.0,300.0,190.0,5000000,off,1' \
  'tiered,runtime,pairs,1048576,1,100,240.0,300.0,240.0,4000000,off,1' \
  'tiered,runtime,pairs,1048576,1,100,120.0,300.0,120.0,8000000,off,1' \
  'tiered,driver,pairs,256,1,100,45.0,90.0,45.0,20000000,off,1' > "$dir/hot_best.csv"
expect 0 "hot-path table: each cell's fastest pass" hot_has "$dir/hot_best.csv" "| tiered | off | 120 ns | 45 ns |"
# scripts/hot_path_bench.sh --shared-runtime: tiered and vmm once more from alloc_bench_shared (a stand-in
# that names the backend it ran under and the API it was asked for in its label), each under the backend
# its label starts with.
sed -e 's/--label) label=\$2 ;;/--label) label=$2 ;; --api) api=$2 ;;/' \
  -e 's/echo "\$label,runtime/echo "$label@$GPUSHIM_BACKEND\/$api,runtime/' "$dir/stub/test_apps/alloc_bench" \
  > "$dir/stub/test_apps/alloc_bench_shared"
chmod +x "$dir/stub/test_apps/alloc_bench_shared"
hot_bench_has() {  # hot_bench_has OPTION... -- WORD...: hot_path_bench.sh over the stand-ins prints every WORD
  local options=()
  while [ "$1" != "--" ]; do options+=("$1"); shift; done
  shift
  "$repo/scripts/hot_path_bench.sh" --build-dir "$dir/stub" --lib "$dir/stub/libstandin.so" --passes 1 \
    --sizes 16M --warmup-ms 0 --csv "$dir/stub/hot.csv" "${options[@]}" > "$dir/hot_bench" 2>&1 || { cat "$dir/hot_bench"; return 1; }
  for word in "$@"; do grep -qF -- "$word" "$dir/hot_bench" || { cat "$dir/hot_bench"; return 1; }; done
}
expect 0 "hot_path_bench.sh --shared-runtime: rows from the shared-runtime program, each under its backend" \
  hot_bench_has --shared-runtime -- "| tiered-shared@tiered/runtime | on | 16 |" "| vmm-shared@vmm/runtime | on | 16 |" \
  "--shared-runtime"
expect 1 "hot_path_bench.sh: no shared-runtime rows unless asked" hot_bench_has -- "tiered-shared"
expect 0 "hot_path_bench.sh --stream-ordered: cudaMallocAsync pairs from the shared-runtime program, each under its backend" \
  hot_bench_has --stream-ordered -- "| tiered-async@tiered/async | on | 16 |" "| vmm-async@vmm/async | on | 16 |" \
  "--stream-ordered"
expect 1 "hot_path_bench.sh: no stream-ordered rows unless asked" hot_bench_has -- "tiered-async"
# The stream-ordered rows are named in the table's title and left out of the targets.
printf '%s\n' "$columns,peak_mib" 'tiered,runtime,pairs,256,1,100,95.0,200.0,95.0,9000000,off,1' \
  'tiered-async,async,pairs,256,1,100,80.0,150.0,80.0,12000000,off,1' > "$dir/hot_async.csv"
expect 0 "hot-path table: stream-ordered rows beside cudaMalloc's" hot_has "$dir/hot_async.csv" \
  "'-async' rows" "| tiered-async | off | 1 | 80 ns (150 ns) |" "tiered, stream off: <=1M 95 ns max (met)"
expect 1 "hot-path table: no targets line for the stream-ordered rows" hot_has "$dir/hot_async.csv" \
  "tiered-async, stream"
exit $((failures > 0))
