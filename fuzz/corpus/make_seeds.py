#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus (fuzz/corpus/*): small valid inputs that reach deep into each parser,
from which libFuzzer mutates. Run from anywhere: `fuzz/corpus/make_seeds.py`. The trace layout is
docs/trace-format.md; the checksums are ports of tracing/trace_format.h."""
import os
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
M64 = (1 << 64) - 1


def payload_checksum(data):
    h = 0x9E3779B97F4A7C15 ^ len(data)
    whole = len(data) & ~7
    for i in range(0, whole, 8):
        h ^= struct.unpack_from("<Q", data, i)[0]
        h = ((h << 31) | (h >> 33)) & M64
        h = (h * 0x87C37B91114253D5) & M64
    tail = int.from_bytes(data[whole:], "little")
    h ^= tail
    h ^= h >> 29
    h = (h * 0xBF58476D1CE4E5B9) & M64
    return h ^ (h >> 32)


def chunk(thread_id, records):
    payload = b"".join(records)
    fields = (thread_id << 32) | len(records)
    checksum = payload_checksum(payload) ^ ((fields * 0x9E3779B97F4A7C15) & M64)
    return b"GTCK" + struct.pack("<IIIQ", len(payload), thread_id, len(records), checksum) + payload


def header(version):
    fields = b"GPUSHTRC" + struct.pack("<IIQQIiII", version, 64, 1000, 1700000000 * 10**9, 4242, 0, 4, 0)
    if version == 1:
        return fields + bytes(16)
    checksum = payload_checksum(fields + bytes(16)) ^ 0x48454144
    return fields + struct.pack("<Q", checksum) + bytes(8)


def event(kind, device, time, stream, address, size, frames=()):
    return struct.pack("<BBBBiQQQQ", 1, kind, 1, len(frames), device, time, stream, address, size) + \
        b"".join(struct.pack("<Q", f) for f in frames)


def module(path, build_id, base, end):
    body = path + build_id
    body += bytes((-len(body)) % 8)
    return struct.pack("<BBHIQQ", 2, len(build_id), len(path), 0, base, end) + body


def trace(version, devices=(0,)):
    out = header(version)
    out += chunk(0, [module(b"/usr/lib/libgpushim.so", b"\x12\x34", 0x7000000000, 0x7000100000),
                     module(b"/opt/app/train", b"", 0x400000, 0x500000)])
    records = []
    t = 2000
    for d in devices:
        base = 0x10000000 + d * 0x100000000
        frames = (0x7000000100, 0x400123)
        records += [event(8, d, t, 0, base, 4 << 20),
                    event(1, d, t + 10, 0, base, 1 << 20, frames),
                    event(3, d, t + 20, 0x77, base + (1 << 20), 512, frames),
                    event(2, d, t + 30, 0, base, 1 << 20),
                    event(4, d, t + 40, 0x77, base + (1 << 20), 512),
                    event(5, d, t + 50, 0, 0, 1 << 30, frames),
                    event(7, d, t + 60, 0, 0, 1 << 30, frames),
                    event(6, d, t + 70, 0, 0, 2 << 20),
                    event(9, d, t + 80, 0, base, 4 << 20)]
        t += 100
    out += chunk(77, records)
    out += chunk(0, [struct.pack("<B7x", 3)])
    return out


def write(directory, name, data):
    os.makedirs(os.path.join(HERE, directory), exist_ok=True)
    with open(os.path.join(HERE, directory, name), "wb") as f:
        f.write(data)


write("trace", "v2_one_device.trace", trace(2))
write("trace", "v2_two_devices.trace", trace(2, (0, 1)))
write("trace", "v1_one_device.trace", trace(1))
write("trace", "v2_one_device.trace.zst",
      subprocess.run(["zstd", "-q", "-c", "-19"], input=trace(2), stdout=subprocess.PIPE, check=True).stdout)

write("settings", "backend_and_limit", b"\x00vmm\x00\x04" + b"80%\x00")
write("settings", "sizes", b"\x07512MiB\x00\x081.5GiB\x00\x09bad value\nwith newline\x00")

TOKEN = 0x0123456789abcdef
MAGIC = 0x3270696d68737067
write("ipc", "fetch_export_1", struct.pack("<QQQII", MAGIC, TOKEN, 1, 0, 0))
write("ipc", "release_export_1", struct.pack("<QQQII", MAGIC, TOKEN, 1, 1, 0))
write("ipc", "wrong_token", struct.pack("<QQQII", MAGIC, 7, 1, 0, 0))
write("ipc", "reply_header", struct.pack("<QIIQQiIQ", MAGIC, 0, 1, 4096, 0, 0, 0, 0) + bytes(64))
write("ipc", "chunk_batch", struct.pack("<QII", MAGIC, 1, 0) + struct.pack("<QQ", 0, 4096) + bytes(16 * 63))
