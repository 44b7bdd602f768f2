#!/usr/bin/env python3
"""The A/B table of several libraries from alloc_bench CSV rows of interleaved passes (scripts/ab_bench.sh).

Per threads, stream mode (and pattern, when it is not pairs) and size, one row; per library (alloc_bench's label, in the order first seen)
the median over the passes of the mean pair in ns with the median p99 in brackets, then the median pairs
per second of all threads in millions (launches of --streams on included: the mean pair leaves them out),
with the least and the most of any pass in brackets where there were three passes or more (one library's
passes of 16 threads of mixed sizes spread 4-9 M pairs/s, docs/perf-notes.md, forty-fourth session: a
difference of medians inside that range is not a result), then the median over the passes of each pass's
median pair in ns, and, where alloc_bench could read NVML, the median of the most device memory the process held during the cell (peak_mib). One pass's median can sit on either of
two levels (one thread on the H200: ~100 or ~170-240 ns by process, with or without a stream; mostly the
lower one with the process on two cores, scripts/ab_bench.sh says why): compare medians over 5-7 passes,
and the means beside them.

    scripts/ab_table.py ab_bench.csv
"""
import csv
import statistics
import sys
from collections import defaultdict

from bench_text import mib_text, size_text


def peak_of(row):
    value = float(row.get("peak_mib") or -1)  # -1: no NVML; absent: a CSV from before the column
    return value if value >= 0 else None


def time_text(ns):
    return "%.1f us" % (ns / 1000) if ns >= 1000 else "%d" % ns


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    cells = defaultdict(list)
    labels = []
    with open(argv[1], newline="") as f:
        for row in csv.DictReader(f):
            if row["pattern"] not in ("pairs", "handoff", "random"):
                continue
            if row["label"] not in labels:
                labels.append(row["label"])
            streams = row.get("streams", "off")
            if row["pattern"] != "pairs":
                streams += ", " + row["pattern"]
            key = (int(row["threads"]), streams, int(row["size_bytes"]), row["label"])
            cells[key].append(row)
    if not cells:
        print("ab_table.py: no pairs, handoff or random rows in %s" % argv[1], file=sys.stderr)
        return 1
    with_peaks = any(peak_of(r) is not None for rows in cells.values() for r in rows)
    columns = 4 if with_peaks else 3
    print("| threads, stream | size | " + " | ".join(labels) + " | " +
          " | ".join("Mpairs/s " + label for label in labels) + " | " +
          " | ".join("median " + label for label in labels) + " |" +
          ("".join(" peak " + label + " |" for label in labels) if with_peaks else ""))
    print("|---|---:|" + "---:|" * (columns * len(labels)))
    for threads, streams, size in sorted({key[:3] for key in cells}):
        times, rates, medians, peaks = [], [], [], []
        for label in labels:
            rows = cells.get((threads, streams, size, label))
            if not rows:
                times.append("-")
                rates.append("-")
                medians.append("-")
                peaks.append("-")
                continue
            known = [peak_of(r) for r in rows if peak_of(r) is not None]
            peaks.append(mib_text(statistics.median(known)) if known else "-")
            mean = statistics.median(float(r["mean_ns"]) for r in rows)
            p99 = statistics.median(float(r["p99_ns"]) for r in rows)
            pass_rates = [float(r["pairs_per_s"]) / 1e6 for r in rows]
            times.append("%d (%s)" % (mean, time_text(p99)))
            rates.append("%.2f" % statistics.median(pass_rates) +
                         (" (%.2f-%.2f)" % (min(pass_rates), max(pass_rates)) if len(rows) >= 3 else ""))
            medians.append("%d" % statistics.median(float(r["median_ns"]) for r in rows))
        print("| %d, %s | %s | %s | %s | %s |" % (threads, streams, size_text(size), " | ".join(times),
                                                 " | ".join(rates), " | ".join(medians)) +
              ("".join(" %s |" % p for p in peaks) if with_peaks else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
