#!/usr/bin/env python3
"""The hot-path targets' table from alloc_bench CSV rows of interleaved passes (scripts/hot_path_bench.sh).

Per configuration (a gpushim label, cudaMalloc, cudaMallocAsync, host malloc), stream mode and size: the
one-thread median pair (median over the passes of each pass's median) with its p99 in brackets, the
16-thread median pair, and the scaling two ways (medians over the passes of each pass's ratio):
- wall clock: 16 threads' pairs per second over one thread's, as alloc_bench counts them (pairs done
  while every thread runs, the harness's clock reads included: host malloc, which cannot contend,
  shows the ceiling);
- pair time: 16 x one thread's mean pair over 16 threads' mean pair (the pairs alone: what the threads'
  rates would sum to with no harness around them).
Then the device memory each configuration held with 16 threads (alloc_bench's peak_mib: NVML, the most the
process held during the cell beyond its context, medians over the passes), so no rate is read without the
memory that bought it; and the targets, for every gpushim configuration. Only the pairs pattern is read.

    scripts/hot_path_table.py hot_path.csv
"""
import csv
import statistics
import sys
from collections import defaultdict

from bench_text import mib_text

SMALL_LIMIT = 1 << 20       # the 100 ns target: 256 B to 1 MiB
SCALING_LIMIT = 16 << 20    # the 12x target: every size up to 16 MiB


DRIVER_SUFFIX = " cuMemAlloc"  # alloc_bench --api driver: the pair without libcudart's share
ASYNC_SUFFIX = "-async"        # hot_path_bench.sh --stream-ordered: gpushim's cudaMallocAsync+cudaFreeAsync


def config_of(row):
    if row["label"] == "none":
        return {"async": "cudaMallocAsync", "host": "host malloc", "driver": "cuMemAlloc"}.get(row["api"], "cudaMalloc")
    return row["label"] + (DRIVER_SUFFIX if row["api"] == "driver" else "")


def size_text(n):  # the short form of this table's headers (64K), as hot_path_bench.sh's --sizes reads
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def ns_text(ns):
    return f"{ns / 1000:.1f} us" if ns >= 10000 else f"{ns:.0f} ns"


def main(path):
    # (config, streams, size, threads) -> list over passes of (median, p99, pairs/s), in file order
    cells = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("pattern") != "pairs":
                continue
            key = (config_of(row), row.get("streams", "off"), int(row["size_bytes"]), int(row["threads"]))
            peak = float(row.get("peak_mib") or -1)  # absent in CSV from before the column existed
            cells[key].append((float(row["median_ns"]), float(row["p99_ns"]), float(row["pairs_per_s"]),
                               float(row["mean_ns"]), peak if peak >= 0 else None))
    if not cells:
        print(f"(no pairs rows in {path})")
        return 1
    peers = ("cudaMalloc", "cuMemAlloc", "cudaMallocAsync", "host malloc")
    configs = sorted({k[0] for k in cells}, key=lambda c: (c in peers, c))
    sizes = sorted({k[2] for k in cells})
    streams = sorted({k[1] for k in cells})

    def over_passes(key, index, reduce=statistics.median):
        values = [v[index] for v in cells.get(key, []) if v[index] is not None]
        return reduce(values) if values else None

    # The targets are for cudaMalloc pairs under gpushim: not the peers, nor the cuMemAlloc or
    # stream-ordered rows.
    target_configs = [c for c in configs
                      if c not in peers and not c.endswith(DRIVER_SUFFIX) and not c.endswith(ASYNC_SUFFIX)]

    def scaling(config, stream, size, by_pair_time=False):
        one, many = cells.get((config, stream, size, 1), []), cells.get((config, stream, size, 16), [])
        if by_pair_time:
            ratios = [16 * o[3] / m[3] for o, m in zip(one, many) if m[3] > 0]
        else:
            ratios = [m[2] / o[2] for o, m in zip(one, many) if o[2] > 0]
        return statistics.median(ratios) if ratios else None

    passes = max(len(v) for v in cells.values())
    print(f"\nmedian ns per cudaMalloc+cudaFree pair (p99 of one thread), medians of {passes} interleaved pass(es)"
          + ("; 'cuMemAlloc' rows: cuMemAlloc+cuMemFree, the pair without libcudart"
             if any(c.endswith(DRIVER_SUFFIX.strip()) for c in configs) else "")
          + ("; '-async' rows: gpushim's cudaMallocAsync+cudaFreeAsync on each thread's own stream"
             if any(c.endswith(ASYNC_SUFFIX) for c in configs) else ""))
    print("| config | stream | threads | " + " | ".join(size_text(s) for s in sizes) + " |")
    print("|---|---|---:|" + "---:|" * len(sizes))
    for config in configs:
        for stream in streams:
            for threads in (1, 16):
                row = []
                for s in sizes:
                    m = over_passes((config, stream, s, threads), 0)
                    if m is None:
                        row.append("-")
                        continue
                    text = ns_text(m)
                    if threads == 1:
                        text += f" ({ns_text(over_passes((config, stream, s, 1), 1))})"
                    row.append(text)
                if any(x != "-" for x in row):
                    print(f"| {config} | {stream} | {threads} | " + " | ".join(row) + " |")
    for by_pair_time, title in ((False, "16 threads' pairs per second over one thread's (wall clock)"),
                                (True, "16 x one thread's mean pair over 16 threads' mean pair (pair time)")):
        print(f"\n{title}")
        print("| config | stream | " + " | ".join(size_text(s) for s in sizes) + " |")
        print("|---|---|" + "---:|" * len(sizes))
        for config in configs:
            for stream in streams:
                row = [scaling(config, stream, s, by_pair_time) for s in sizes]
                if any(r is not None for r in row):
                    print(f"| {config} | {stream} | " + " | ".join("-" if r is None else f"{r:.1f}x" for r in row) + " |")

    peak_rows = []
    for config in configs:
        for stream in streams:
            row = [over_passes((config, stream, s, 16), 4) for s in sizes]
            if any(r is not None for r in row):
                peak_rows.append(f"| {config} | {stream} | " + " | ".join("-" if r is None else mib_text(r) for r in row) + " |")
    if peak_rows:
        print("\n16 threads: the most device memory the process held during the cell (NVML, beyond its context;"
              " scripts/hot_path_bench.sh runs a process per size, so it includes that size's other cells)")
        print("| config | stream | " + " | ".join(size_text(s) for s in sizes) + " |")
        print("|---|---|" + "---:|" * len(sizes))
        print("\n".join(peak_rows))

    print("\ntargets (one thread: median <= 100 ns to 1 MiB, <= 300 ns to 1 GiB, p99 <= 2 us; 16 threads >= 12x"
          " one thread to 16 MiB; faster than the warm cudaMallocAsync pool in every cell)")
    for config in target_configs:
        for stream in streams:
            one = {s: over_passes((config, stream, s, 1), 0) for s in sizes}
            p99 = {s: over_passes((config, stream, s, 1), 1) for s in sizes}
            small = [v for s, v in one.items() if v is not None and s <= SMALL_LIMIT]
            every = [v for v in one.values() if v is not None]
            tails = [v for v in p99.values() if v is not None]
            scal = [r for s in sizes if s <= SCALING_LIMIT for r in [scaling(config, stream, s)] if r is not None]
            scal_pair = [r for s in sizes if s <= SCALING_LIMIT for r in [scaling(config, stream, s, True)]
                         if r is not None]
            slower = []
            for s in sizes:
                for threads in (1, 16):
                    mine = over_passes((config, stream, s, threads), 0)
                    pool = over_passes(("cudaMallocAsync", stream, s, threads), 0)
                    if mine is not None and pool is not None and mine >= pool:
                        slower.append(f"{size_text(s)}/{threads}t")

            def verdict(ok):
                return "met" if ok else "MISSED"
            line = [f"{config}, stream {stream}:"]
            if small:
                line.append(f"<=1M {ns_text(max(small))} max ({verdict(max(small) <= 100)});")
            if every:
                line.append(f"all sizes {ns_text(max(every))} max ({verdict(max(every) <= 300)});")
            if tails:
                line.append(f"p99 {ns_text(max(tails))} max ({verdict(max(tails) <= 2000)});")
            if scal:
                line.append(f"scaling {min(scal):.1f}x min ({verdict(min(scal) >= 12)}; pair time "
                            f"{min(scal_pair):.1f}x, {verdict(min(scal_pair) >= 12)});")
            line.append("vs cudaMallocAsync: " + ("faster in every cell" if not slower else "not faster at " + ", ".join(slower)))
            print(" ".join(line))

    # A thread's pairs run at one of the host's two speeds, about 2x apart, drawn afresh for each thread
    # and stretch of time (docs/perf-notes.md, "Twenty-ninth session"), so a median over a few passes
    # falls on either. The fastest pass of a cell is the lower speed whenever any pass drew it.
    best_rows = []
    for config in target_configs:
        for stream in streams:
            texts = []
            for c in (config, config + DRIVER_SUFFIX):
                worst = [b for s in sizes if s <= SMALL_LIMIT for b in [over_passes((c, stream, s, 1), 0, min)]
                         if b is not None]
                texts.append(ns_text(max(worst)) if worst else "-")
            if texts[0] != "-":
                best_rows.append(f"| {config} | {stream} | " + " | ".join(texts) + " |")
    if best_rows:
        print(f"\none thread to 1 MiB, the fastest of the {passes} pass(es) of each size, its slowest size"
              " (cuMemAlloc: the same pairs without libcudart)")
        print("| config | stream | cudaMalloc+cudaFree | cuMemAlloc+cuMemFree |")
        print("|---|---|---:|---:|")
        print("\n".join(best_rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(sys.argv[1]))
