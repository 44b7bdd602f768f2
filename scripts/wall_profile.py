#!/usr/bin/env python3
"""Where the threads of a wall-clock profile spent their time (bench/wall_profiler.cpp, preloaded as
build/bench/libwall_profiler.so).

    scripts/wall_profile.py PROFILE [--match TEXT] [--top N] [--lines]

Frames are named with addr2line (binutils), once per module. Only samples whose stack has a frame whose
module or function contains TEXT are counted (default: every sample). Three tables: the innermost
frame of each sample (what the thread was doing: a futex wait, an ioctl into the driver, a yield...),
the innermost gpushim frame paired with that leaf (who in gpushim was waiting, and on what), the leaf
with its first six gpushim callers, and the gpushim functions inclusive of everything below them.
--lines adds a fifth: the source line of each sample's innermost gpushim frame, with the functions
inlined there (innermost first), and the leaf's module: which lock, which load. It needs a build with
line tables (-DCMAKE_CXX_FLAGS=-g keeps -O3); without them the lines read "??".
"""
import argparse
import collections
import re
import subprocess
import sys


def symbolize(frames):
    by_module = collections.defaultdict(set)
    for frame in frames:
        module, _, offset = frame.rpartition("+")
        if module and module != "?":
            by_module[module].add(offset)
    names = {}
    for module, offsets in by_module.items():
        offsets = sorted(offsets)
        try:
            out = subprocess.run(["addr2line", "-f", "-C", "-e", module] + offsets, capture_output=True,
                                 text=True, check=False).stdout.splitlines()
        except OSError:
            out = []
        short = module.rsplit("/", 1)[-1]
        for i, offset in enumerate(offsets):
            fn = out[2 * i] if 2 * i < len(out) else "??"
            if fn == "??":
                fn = offset
            names[module + "+" + offset] = short + ":" + fn.split("(")[0]
    return names


def short_function(name):
    """A C++ function name without templates, arguments or namespaces."""
    while True:
        shorter = re.sub(r"<[^<>]*>", "", name)
        if shorter == name:
            return name.split("(")[0].rsplit("::", 1)[-1]
        name = shorter


def inlined_lines(frames):
    """frame -> "function@file:line | caller@file:line ..." for libgpushim.so frames (addr2line -i)."""
    by_module = collections.defaultdict(set)
    for frame in frames:
        module, _, offset = frame.rpartition("+")
        if module.endswith("libgpushim.so"):
            by_module[module].add(offset)
    lines = {}
    for module, offsets in by_module.items():
        try:
            out = subprocess.run(["addr2line", "-i", "-f", "-C", "-a", "-e", module] + sorted(offsets),
                                 capture_output=True, text=True, check=False).stdout.splitlines()
        except OSError:
            out = []
        # Per address: "0x..." then, per inlined level, the function and its file:line.
        key, chain = None, []
        for line in out + ["0x"]:  # the sentinel closes the last address
            if line.startswith("0x"):
                if key is not None:
                    lines[key] = " | ".join(
                        short_function(chain[i]) + "@" + chain[i + 1].rsplit("/", 1)[-1]
                        for i in range(0, len(chain) - 1, 2))
                key = module + "+" + "0x%x" % int(line, 16) if len(line) > 2 else None
                chain = []
            elif len(chain) < 32:
                chain.append(line)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--match", default="")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lines", action="store_true")
    args = parser.parse_args()
    samples = []
    for line in open(args.profile):
        if line.startswith("#"):
            print(line.strip())
            continue
        parts = line.split()
        if len(parts) < 3:
            continue
        samples.append((int(parts[0]), int(parts[1]), parts[2:]))
    names = symbolize({f for _, _, stack in samples for f in stack})
    leaf = collections.Counter()
    pair = collections.Counter()
    inclusive = collections.Counter()
    chains = collections.Counter()
    source = collections.Counter()
    lines = inlined_lines({f for _, _, stack in samples for f in stack}) if args.lines else {}
    total = 0
    for _, count, stack in samples:
        named = [names.get(f, f) for f in stack]
        if args.match and not any(args.match in n for n in named):
            continue
        total += count
        if args.lines:
            innermost = next((f for f in stack if f in lines), None)
            if innermost:
                source[(lines[innermost], named[0].split(":", 1)[0])] += count
        leaf[named[0]] += count
        ours = [n for n in named if n.startswith("libgpushim.so:")]
        pair[(ours[0] if ours else "(no gpushim frame)", named[0])] += count
        for n in set(ours):
            inclusive[n] += count
        chains[" <- ".join([named[0]] + [n.split(":", 1)[1] for n in ours[:6]])] += count
    if not total:
        sys.exit("wall_profile.py: no sample matched")
    print(f"{total} samples")
    print("\n## innermost frame")
    for n, c in leaf.most_common(args.top):
        print(f"{100.0 * c / total:6.1f}%  {n}")
    print("\n## innermost gpushim frame <- leaf")
    for (ours, n), c in pair.most_common(args.top):
        print(f"{100.0 * c / total:6.1f}%  {ours}  <-  {n}")
    print("\n## leaf and its first six gpushim callers")
    for chain, c in chains.most_common(args.top):
        print(f"{100.0 * c / total:6.1f}%  {chain}")
    print("\n## gpushim functions, inclusive")
    for n, c in inclusive.most_common(args.top):
        print(f"{100.0 * c / total:6.1f}%  {n}")
    if args.lines:
        print("\n## innermost gpushim source line (inlined functions, innermost first) [leaf module]")
        for (chain, module), c in source.most_common(args.top):
            print(f"{100.0 * c / total:6.1f}%  [{module}]  {chain}")


if __name__ == "__main__":
    main()
