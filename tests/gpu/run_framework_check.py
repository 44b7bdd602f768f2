#!/usr/bin/env python3
"""Runs a framework check (test_apps/frameworks/*_check.py) without gpushim and with it, and passes when
both runs print the same CHECKSUM lines (bitwise, or within 1e-6 relative) and gpushim's exit statistics
show that the backend served allocations.

  run_framework_check.py --lib PATH/libgpushim.so --backend vmm test_apps/frameworks/torch_check.py

Exit codes: 0 pass, 1 fail, 77 skipped (the framework is not importable or sees no GPU).
"""
import argparse
import os
import subprocess
import sys

SKIP = 77
TOLERANCE = 1e-6


def run(command, env, timeout):
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return 124, expired.stdout or "", expired.stderr or ""
    return done.returncode, done.stdout, done.stderr


def checksums(stdout):
    found = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] == "CHECKSUM":
            found[fields[1]] = (float(fields[2]), fields[3])
    return found


def served_allocations(stderr, backend):
    """Sum of the allocs column over the stats lines of `backend` (docs/configuration.md, "The statistics table")."""
    total = 0
    for line in stderr.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[0] != "gpushim:" or not fields[3].isdigit():
            continue
        name = fields[2]
        if name == backend or name.startswith(backend + "/") or name.startswith(backend + "("):
            total += int(fields[3])
    return total


def show(title, stdout, stderr):
    print(f"--- {title}: stdout ---\n{stdout.rstrip()}\n--- {title}: stderr (last 40 lines) ---")
    print("\n".join(stderr.rstrip().splitlines()[-40:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default="", help="path to libgpushim.so")
    parser.add_argument("--search", default="", help="directory to search for libgpushim.so if --lib is absent")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--timeout", type=float, default=240, help="seconds per run")
    parser.add_argument("script")
    args = parser.parse_args()
    name = os.path.basename(args.script).replace("_check.py", "")
    command = [sys.executable, args.script]

    plain_env = dict(os.environ)
    plain_env["PYTHONUNBUFFERED"] = "1"
    status, out0, err0 = run(command, plain_env, args.timeout)
    if status == SKIP:
        print(out0.strip() or f"{name}: skipped")
        return SKIP
    if status != 0:
        show(f"{name} without gpushim", out0, err0)
        print(f"FAIL: {name} failed without gpushim (exit {status}): the check itself is broken here")
        return 1

    if not os.path.isfile(args.lib) and args.search:
        for root, _, files in os.walk(args.search):
            if "libgpushim.so" in files:
                args.lib = os.path.join(root, "libgpushim.so")
                break
    if not os.path.isfile(args.lib):
        print(f"FAIL: libgpushim.so not found at {args.lib}")
        return 1
    shim_env = dict(plain_env)
    preload = plain_env.get("LD_PRELOAD", "")
    shim_env["LD_PRELOAD"] = args.lib + (":" + preload if preload else "")
    shim_env["GPUSHIM_BACKEND"] = args.backend
    shim_env["GPUSHIM_STATS"] = "1"
    status, out1, err1 = run(command, shim_env, args.timeout)
    if status != 0:
        show(f"{name} under gpushim ({args.backend})", out1, err1)
        print(f"FAIL: {name} exited {status} under gpushim backend {args.backend}")
        return 1

    expected, actual = checksums(out0), checksums(out1)
    failures, bitwise = [], 0
    if not expected:
        failures.append("no CHECKSUM lines in the run without gpushim")
    for key, (value, digest) in expected.items():
        if key not in actual:
            failures.append(f"{key}: missing under gpushim")
            continue
        other_value, other_digest = actual[key]
        if other_digest == digest:
            bitwise += 1
            continue
        scale = max(abs(value), abs(other_value), 1e-30)
        difference = abs(value - other_value) / scale
        if difference > TOLERANCE:
            failures.append(f"{key}: {value!r} without gpushim, {other_value!r} with (relative {difference:.2e})")
        else:
            print(f"note: {key} differs in bits but within {TOLERANCE} (relative {difference:.2e})")

    served = served_allocations(err1, args.backend)
    if served <= 0:
        failures.append(f"gpushim's stats show no allocation served by backend '{args.backend}' "
                        "(no GPUSHIM_STATS line for it on stderr)")
    if failures:
        show(f"{name} under gpushim ({args.backend})", out1, err1)
        for failure in failures:
            print(f"FAIL: {failure}")
        return 1
    print(f"{name} under gpushim {args.backend}: {len(expected)} results equal ({bitwise} bitwise), "
          f"{served} allocations served by {args.backend}: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
