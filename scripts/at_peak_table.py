#!/usr/bin/env python3
"""How each library's allocations at the peak were served, from GPUSHIM_STATS' "at the peak" line
(docs/configuration.md), in A/B runs of several libraries (scripts/ab_bench.sh --stats).

    scripts/at_peak_table.py header                                 the CSV's header line
    scripts/at_peak_table.py row LOG LABEL THREADS STREAMS SIZES   one CSV row for one process's stderr
    scripts/at_peak_table.py CSV                                    the table: medians over the passes

A process whose stderr has no such line had no allocation at the peak while blocks waited for fences:
its row is all zeros (a variant that never meets the peak is a result, not a missing one). Devices are
summed. Per cell and library the table gives the medians of: allocations at the peak, those served by
a block another thread got back, those served by a wait for the fences, those let past the peak (by the
growth rule's turn / with too little fenced to wait for / after waiting in vain) and how many of those
mapped memory (grew), the milliseconds the waits took, and from the "mapped" line the provider's maps
and unmaps with the milliseconds the driver took for them.
"""
import csv
import re
import statistics
import sys
from collections import defaultdict

from bench_text import size_text

AT_PEAK = ["at_peak", "taken", "waited", "past_by_rule", "past_unwaited", "past_after_wait", "past_mapped",
           "wait_ms"]
MAPPING = ["maps", "map_ms", "unmaps", "unmap_ms"]
COUNTS = AT_PEAK + MAPPING
COLUMNS = ["label", "threads", "streams", "sizes"] + COUNTS

AT_PEAK_LINE = re.compile(
    r"at the peak while blocks waited for fences: (\d+) allocations; (\d+) took blocks other threads got "
    r"back, (\d+) waited for fences, \d+ were let past the peak \((\d+) at once by the growth rule, (\d+) "
    r"with too little fenced to wait for, (\d+) after waiting in vain; (\d+) of them mapped memory\); the "
    r"waits took ([0-9.]+) ms in all")
MAPPING_LINE = re.compile(
    r"device \d+ mapped [0-9.]+ \S+ in (\d+) calls \(([0-9.]+) ms\), unmapped [0-9.]+ \S+ in (\d+) calls "
    r"\(([0-9.]+) ms\)")


def summed(pattern, text, width):
    total = [0.0] * width
    for match in pattern.finditer(text):
        total = [t + float(v) for t, v in zip(total, match.groups())]
    return total


def counts_in(text):
    """The counts of every device's "at the peak" and "mapped" lines in `text`, summed (zeros where there
    is none)."""
    return summed(AT_PEAK_LINE, text, len(AT_PEAK)) + summed(MAPPING_LINE, text, len(MAPPING))


def row(log, label, threads, streams, sizes):
    with open(log, errors="replace") as f:
        values = counts_in(f.read())
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([label, threads, streams, sizes] + ["%g" % v for v in values])
    return 0


def sizes_text(sizes):
    return ",".join(size_text(s) if s.isdigit() else s for s in sizes.split(","))


def table(path):
    cells = defaultdict(list)
    labels = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] not in labels:
                labels.append(r["label"])
            cells[(int(r["threads"]), r["streams"], r["sizes"], r["label"])].append(r)
    if not cells:
        print("at_peak_table.py: no rows in %s" % path, file=sys.stderr)
        return 1
    print("Allocations at the peak while blocks waited for fences (GPUSHIM_STATS), medians over the passes:")
    print("at the peak / took blocks other threads got back / waited for fences / let past the peak: by the "
          "rule, with too little fenced, after waiting in vain (of them mapped memory) / ms the waits took / "
          "maps (ms), unmaps (ms)")
    print()
    print("| threads, stream | sizes | " + " | ".join(labels) + " |")
    print("|---|---|" + "---:|" * len(labels))
    for threads, streams, sizes in sorted({key[:3] for key in cells}, key=lambda k: (k[0], k[1], k[2])):
        texts = []
        for label in labels:
            rows = cells.get((threads, streams, sizes, label))
            if not rows:
                texts.append("-")
                continue
            m = {c: statistics.median(float(r[c]) for r in rows) for c in COUNTS}
            texts.append("%d / %d / %d / %d, %d, %d (%d) / %.1f / %d (%.1f), %d (%.1f)" % (
                m["at_peak"], m["taken"], m["waited"], m["past_by_rule"], m["past_unwaited"], m["past_after_wait"],
                m["past_mapped"], m["wait_ms"], m["maps"], m["map_ms"], m["unmaps"], m["unmap_ms"]))
        print("| %d, %s | %s | %s |" % (threads, streams, sizes_text(sizes), " | ".join(texts)))
    return 0


def main(argv):
    if len(argv) == 2 and argv[1] == "header":
        print(",".join(COLUMNS))
        return 0
    if len(argv) == 7 and argv[1] == "row":
        return row(*argv[2:])
    if len(argv) == 2:
        return table(argv[1])
    print("\n".join(line.strip() for line in __doc__.splitlines()[3:6]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
