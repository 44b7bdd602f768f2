#!/usr/bin/env python3
"""Fails when a comment (or a document) cites something a reader of the repository cannot open.

Checked in the comments of source files, scripts and CMake files, and in every Markdown file:
  - a path that starts with one of the repository's top-level folders ("docs/peers.md",
    "router/router.cpp", "tests/gpu/") must exist (a "*" in it must match something);
  - documents kept outside the repository and issue numbers are never cited: a reader of the
    repository cannot follow "STYLE.md", "DESIGN.md", "notes/...", or "issue 3".

  comment_references.py [ROOT]
"""
import glob
import os
import re
import subprocess
import sys

C_LIKE = (".h", ".hpp", ".cpp", ".cc", ".c", ".cu", ".cuh")
HASH_COMMENTED = (".py", ".sh", ".cmake")
PATH = re.compile(r"(?<![\w./-])((?:[A-Za-z_][\w.-]*/)+[\w.*-]*)")
OUTSIDE = re.compile(r"\b(STYLE\.md|DESIGN\.md|notes/[\w./-]+|[Ii]ssue [0-9]+)\b")


def tracked_files(root):
    """The repository's files (not build outputs); every file under `root` outside git."""
    listed = subprocess.run(["git", "-C", root, "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True)
    if listed.returncode == 0:
        return [f for f in listed.stdout.splitlines() if os.path.isfile(os.path.join(root, f))]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "build"))]
        files += [os.path.relpath(os.path.join(dirpath, name), root) for name in filenames]
    return files


def comment_lines(path, text):
    """(line number, comment text) of each line of `text` that carries a comment."""
    name = os.path.basename(path)
    if path.endswith(".md"):
        return list(enumerate(text.splitlines(), 1))
    lines = []
    if path.endswith(C_LIKE):
        in_block = False
        for number, line in enumerate(text.splitlines(), 1):
            if in_block:
                end = line.find("*/")
                lines.append((number, line if end < 0 else line[:end]))
                in_block = end < 0
                continue
            slash = line.find("//")
            block = line.find("/*")
            if slash >= 0 and (block < 0 or slash < block):
                lines.append((number, line[slash + 2:]))
            elif block >= 0:
                end = line.find("*/", block + 2)
                lines.append((number, line[block + 2:] if end < 0 else line[block + 2:end]))
                in_block = end < 0
    elif path.endswith(HASH_COMMENTED) or name == "CMakeLists.txt" or _is_script(text):
        for number, line in enumerate(text.splitlines(), 1):
            hash_at = line.find("#")
            if hash_at >= 0 and not line.startswith("#!"):
                lines.append((number, line[hash_at + 1:]))
    return lines


def _is_script(text):
    return text.startswith("#!")


def problems(root):
    files = tracked_files(root)
    top = {f.split("/", 1)[0] for f in files if "/" in f}
    found = []
    for rel in files:
        if not (rel.endswith(C_LIKE + HASH_COMMENTED + (".md",)) or os.path.basename(rel) == "CMakeLists.txt"
                or rel.startswith(("scripts/", ".ci/"))):
            continue
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        for number, comment in comment_lines(rel, text):
            for match in OUTSIDE.finditer(comment):
                found.append(f"{rel}:{number}: cites \"{match.group(1)}\", which is not in the repository")
            for match in PATH.finditer(comment):
                cited = match.group(1).rstrip(".")
                if cited.split("/", 1)[0] not in top:
                    continue
                # "ipc/cuda_ipc" names the pair of files cuda_ipc.h and .cpp, "test_apps/alloc_torture" the program
                # built from test_apps/alloc_torture.cu: a path without a suffix stands for its files.
                path = os.path.join(root, cited)
                exists = bool(glob.glob(path)) if "*" in cited else os.path.exists(path)
                if not exists and "." not in os.path.basename(cited):
                    exists = bool(glob.glob(glob.escape(path) + ".*"))
                if not exists:
                    found.append(f"{rel}:{number}: cites {cited}, which does not exist")
    return found


def main(argv):
    root = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    found = problems(root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} reference(s) a reader of the repository cannot follow")
        return 1
    print("every cited repository path exists; nothing cites documents outside the repository")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
