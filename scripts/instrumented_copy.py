"""What the tools that instrument a copy of the tree share (scripts/activity_lock_counts.py,
scripts/marked_batch_round_trip.py): the copy named on the command line, never the repository itself,
and edits that exit naming the text a source file no longer has, so a tool that has fallen behind the
code says where instead of building something else.
"""
import os
import sys


def copy_from_argv(tool, needed):
    """The directory named by the only argument: a copy of the tree that holds `needed` and is not a git
    checkout (the instrumented code must never be committed). Exits with a usage line otherwise."""
    if len(sys.argv) != 2 or not os.path.isfile(os.path.join(sys.argv[1], needed)):
        sys.exit('usage: %s COPY (a copy of the tree: it is edited in place)' % tool)
    if os.path.exists(os.path.join(sys.argv[1], '.git')):
        sys.exit('%s: %s is a git checkout; instrument a copy (git archive HEAD | tar x -C COPY)'
                 % (tool, sys.argv[1]))
    return sys.argv[1]


def replace_once(tool, where, text, old, new):
    """`text` (of the file `where`) with `old` replaced once; exits naming `old` where it is missing."""
    if old not in text:
        sys.exit('%s: %s no longer has %r' % (tool, where, old[:70]))
    return text.replace(old, new, 1)


def edit(tool, copy, path, old, new):
    """Replaces `old` once in the file COPY/path."""
    full = os.path.join(copy, path)
    with open(full) as f:
        text = f.read()
    with open(full, 'w') as f:
        f.write(replace_once(tool, path, text, old, new))
