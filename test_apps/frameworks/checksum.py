"""Result lines the framework checks print and tests/gpu/run_framework_check.py compares.

One line per named result:  CHECKSUM <name> <float64 value, repr> <sha256 of the raw result bytes>
The hash proves bitwise equality; the value lets the runner accept a difference within 1e-6 (relative).
"""
import hashlib
import sys

SKIP = 77  # ctest's SKIP_RETURN_CODE


def skip(message):
    print(message, flush=True)
    sys.exit(SKIP)


def emit(name, value, raw_bytes):
    digest = hashlib.sha256(raw_bytes).hexdigest()
    print(f"CHECKSUM {name} {float(value)!r} {digest}", flush=True)
