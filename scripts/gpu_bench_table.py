#!/usr/bin/env python3
"""Pivots alloc_bench CSV rows into one table: rows = sizes, columns = allocators, cells = median ns per
alloc+free pair (p99 with --p99). Used by scripts/gpu_check.sh; works on any alloc_bench CSV.

Column names: label "none" with api "runtime" -> cudaMalloc, api "async" -> cudaMallocAsync; any other
label (a gpushim backend) -> the label (with "/async" appended for its async rows); rows measured with
--streams on (every thread created a stream that carries work) get "+stream" appended. CSVs written
before the streams column existed read as streams off.
"""
import argparse
import csv
import sys

from bench_text import size_text


def column_name(label, api, streams="off"):
    if label == "none":
        name = "cudaMalloc" if api == "runtime" else "cudaMallocAsync"
    else:
        name = label if api == "runtime" else f"{label}/async"
    return name + "+stream" if streams == "on" else name


def cell_text(ns):
    ns = float(ns)
    return f"{ns / 1000:.1f} us" if ns >= 10000 else f"{ns:.0f} ns"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv")
    parser.add_argument("--pattern", default="pairs")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--p99", action="store_true", help="show the 99th percentile instead of the median")
    args = parser.parse_args()

    columns, sizes, cells = [], [], {}
    with open(args.csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("pattern") != args.pattern or row.get("threads") != args.threads:
                continue
            column = column_name(row["label"], row["api"], row.get("streams") or "off")
            size = int(row["size_bytes"])
            if column not in columns:
                columns.append(column)
            if size not in sizes:
                sizes.append(size)
            cells[(size, column)] = row["p99_ns" if args.p99 else "median_ns"]
    if not cells:
        print(f"(no alloc_bench rows for pattern {args.pattern}, {args.threads} thread(s))")
        return 1
    sizes.sort()
    header = ["size"] + columns
    table = [[size_text(s)] + [cell_text(cells[(s, c)]) if (s, c) in cells else "-" for c in columns]
             for s in sizes]
    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]
    what = "p99" if args.p99 else "median"
    print(f"alloc+free pair, {what} host time ({args.pattern}, {args.threads} thread(s)):")
    for r in [header] + table:
        print("  " + "  ".join(r[i].rjust(widths[i]) for i in range(len(r))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
