#!/usr/bin/env python3
"""Folder-level include graph of the source tree; exits 1 when it has a cycle.

Every `#include "folder/file.h"` from a file under another top-level folder is an edge between the two
folders. The layers (README.md, "Where a cudaMalloc goes") only hold if those edges never loop back:
a cycle means two folders can no longer be built, tested or read one without the other.

  folder_include_graph.py [ROOT]          check; prints the cycle and the include lines that make it
  folder_include_graph.py --dot [ROOT]    print the graph in Graphviz dot
"""
import os
import re
import sys

SOURCE_SUFFIXES = (".h", ".hpp", ".cpp", ".cc", ".c", ".cu", ".cuh")
SKIPPED_DIRS = {".git", ".carry", "build"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def top_folders(root):
    return {d for d in os.listdir(root)
            if os.path.isdir(os.path.join(root, d)) and d not in SKIPPED_DIRS and not d.startswith(".")}


def folder_edges(root):
    """{(from_folder, to_folder): [(file, included path), ...]}"""
    folders = top_folders(root)
    edges = {}
    for folder in sorted(folders):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("build")]
            for name in filenames:
                if not name.endswith(SOURCE_SUFFIXES):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                for included in INCLUDE.findall(text):
                    target = included.split("/", 1)[0]
                    if "/" in included and target in folders and target != folder:
                        edges.setdefault((folder, target), []).append((os.path.relpath(path, root), included))
    return edges


def find_cycle(edges):
    """One cycle as a list of folders [a, b, ..., a], or None."""
    graph = {}
    for (a, b) in edges:
        graph.setdefault(a, []).append(b)
    state = {}  # absent: unvisited, 1: on the stack, 2: done
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, [])):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main(argv):
    dot = "--dot" in argv
    args = [a for a in argv if a != "--dot"]
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    edges = folder_edges(root)
    if dot:
        print("digraph folders {")
        for (a, b) in sorted(edges):
            print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    cycle = find_cycle(edges)
    if cycle is None:
        print(f"folder include graph: {len(edges)} edges between "
              f"{len({f for e in edges for f in e})} folders, no cycle")
        return 0
    print("folder include cycle: " + " -> ".join(cycle))
    for a, b in zip(cycle, cycle[1:]):
        path, included = edges[(a, b)][0]
        more = len(edges[(a, b)]) - 1
        print(f"  {a} -> {b}: {path} includes \"{included}\"" + (f" (and {more} more)" if more else ""))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
