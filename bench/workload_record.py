"""The one JSON line a macro workload prints (bench/cupy_loop.py and the bench/torch_*.py workloads).

A workload builds its record with its own keys, then hands it here with its run(args, record, sampler):
the NVML sampler starts first, so its device baseline is taken before the process creates a CUDA context;
a failure (an out-of-memory error, an interrupt) still ends in the JSON line, with "error", and exit code 1.
bench/macro_report.py reads the line: the workload's keys first, then what run() added, then "error" if
any, then the sampler's peaks.
"""

import argparse
import json
import os
import sys
import traceback

from nvml_sampler import NvmlPeakSampler


def first_line(exc):
    """The exception's type and the first line of its message: one line fits the JSON record."""
    lines = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, lines[0] if lines else "")


def recorded_env(names):
    """The variables among `names` that are set: what chose the allocator under test."""
    return {k: os.environ[k] for k in names if k in os.environ}


def run_and_print_record(run, args, record):
    """Runs run(args, record, sampler) under the NVML sampler (args.sample_ms), prints `record` as one
    JSON line on stdout and returns the exit code: 0, or 1 when run() raised (the traceback goes to
    stderr). The sampler's peaks cover the timed window, or the whole run after an error."""
    sampler = NvmlPeakSampler(interval_s=args.sample_ms / 1000.0)
    sampler.start()
    rc = 0
    try:
        run(args, record, sampler)
    except BaseException as exc:  # report OOMs and interrupts as a JSON line too
        record["error"] = first_line(exc)
        traceback.print_exc(file=sys.stderr)
        rc = 1
    finally:
        sampler.stop()
    record.update(sampler.result(window="timed" if "error" not in record else "all"))
    print(json.dumps(record), flush=True)
    return rc


def sized_argument_parser(doc, quick):
    """The options every sized workload shares: --config (the name the JSON line carries), --quick (the
    smoke-test sizes `quick`), --sample-ms. Its own sizes default to None, for apply_sizes to fill."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--config", default=os.environ.get("BENCH_CONFIG", "unnamed"),
                   help="name of the configuration, copied into the JSON line")
    p.add_argument("--quick", action="store_true", help="smoke test: %s" % quick)
    p.add_argument("--sample-ms", type=float, default=5.0, help="NVML sampling interval (default 5 ms)")
    return p


def apply_sizes(args, full, quick):
    """Every size not given on the command line takes its --quick or full default."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
