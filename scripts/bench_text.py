"""How the benchmark tables write a size and a memory peak: one form for scripts/ab_table.py,
scripts/gpu_bench_table.py and scripts/hot_path_table.py (each had its own copy).

    from bench_text import size_text, mib_text
"""


def size_text(size):
    """A block size in bytes as '64 KiB' ('rand' for 0: alloc_bench's random pattern, 256 B..16 MiB)."""
    size = int(size)
    if size == 0:
        return "rand"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def mib_text(mib):
    """alloc_bench's peak_mib as '400 MiB' or '2.20 GiB'."""
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"
