#!/usr/bin/env python3
"""Writes the committed damaged-trace corpus (tests/data/damaged_*.trace) from one good trace without
stacks: `make_damaged_corpus.py good.trace`. Each file must make `gpushim trace summary` exit 2 with a
byte offset, except the one cut inside a chunk, which reads the chunks before the cut with a warning
(tests/trace_damaged_files_test.cpp, CommittedCorpus). The committed files are format version 1."""
import os
import struct
import sys

good = open(sys.argv[1], "rb").read()
here = os.path.dirname(os.path.abspath(__file__))
HEADER = 64  # FileHeader; the first chunk starts here (docs/trace-format.md)
first_payload = struct.unpack_from("<I", good, HEADER + 4)[0]

def write(name, data):
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)

write("damaged_empty.trace", b"")
write("damaged_wrong_magic.trace", b"GPUSHTRX" + good[8:])
write("damaged_newer_version.trace", good[:8] + struct.pack("<I", 99) + good[12:])
write("damaged_truncated_chunk.trace", good[:HEADER + 24 + first_payload // 2])
flipped = bytearray(good)
flipped[HEADER + 24 + 17] ^= 0x10  # inside the first event's time stamp: only the checksum sees it
write("damaged_flipped_payload.trace", bytes(flipped))
