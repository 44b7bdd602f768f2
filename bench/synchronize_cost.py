"""Micro benchmark: what a synchronization costs a program, with and without gpushim in front of it.

Any hook on the synchronizations adds to this (docs/perf-notes.md, thirty-second session: idle checks
after cuCtxSynchronize, cuStreamSynchronize and cuEventSynchronize cost the last two 30-80 ns a call;
thirty-third session: gpushim hooks cuCtxSynchronize alone, and the other two cost what they cost
without it).
This times the three as PyTorch calls them, on an idle device: torch.cuda.synchronize(), a stream's synchronize(), an event's synchronize(). Each kind is
timed in batches of --calls calls, --batches times, interleaved; the table gives the median ns per call
and the batches' spread.

Run it once per library, in one machine session, and compare the rows:
    python3 bench/synchronize_cost.py --label none
    LD_PRELOAD=build-gpu/lib/libgpushim.so python3 bench/synchronize_cost.py --label gpushim
Prints a Markdown table row per kind.
"""

import argparse
import statistics
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="run", help="the first column of each row")
    parser.add_argument("--calls", type=int, default=20000, help="calls per batch")
    parser.add_argument("--batches", type=int, default=9, help="batches per kind (interleaved)")
    parser.add_argument("--header", action="store_true", help="print the table's header first")
    args = parser.parse_args()

    torch.cuda.init()
    stream = torch.cuda.Stream()
    event = torch.cuda.Event()
    event.record(stream)
    torch.cuda.synchronize()
    kinds = {
        "torch.cuda.synchronize()": torch.cuda.synchronize,
        "stream.synchronize()": stream.synchronize,
        "event.synchronize()": event.synchronize,
    }
    for call in kinds.values():  # warm-up
        for _ in range(args.calls // 10):
            call()
    samples = {name: [] for name in kinds}
    for _ in range(args.batches):
        for name, call in kinds.items():
            begin = time.perf_counter_ns()
            for _ in range(args.calls):
                call()
            samples[name].append((time.perf_counter_ns() - begin) / args.calls)
    if args.header:
        print("| library | call | median ns | batches' range |")
        print("|---|---|---:|---|")
    for name, values in samples.items():
        print(f"| {args.label} | {name} | {statistics.median(values):.0f} | {min(values):.0f}-{max(values):.0f} |")


if __name__ == "__main__":
    main()
