#!/usr/bin/env python3
"""The out-of-memory answers on the GPU with PyTorch (docs/oom-dump.md), around
test_apps/frameworks/torch_oom_app.py:

 1. Under GPUSHIM_LIMIT with GPUSHIM_OOM_DUMP (+ stacks) the app runs out of memory: torch raises
    torch.cuda.OutOfMemoryError, the app goes on; the dump exists; `gpushim trace summary DUMP` names the
    top holders (with --require-names: by function, not module+offset); `gpushim trace export --format
    torch-snapshot` writes a pickle that `python -m torch.cuda._memory_viz` turns into trace_plot and
    segment_plot pages, and whose stats/trace/memory views read it.
 2. With GPUSHIM_FAIL=size>=1GiB and no limit, the app's one 1 GiB tensor raises OutOfMemoryError, the
    app catches it and goes on, and gpushim's report and exit statistics say it was injected.
 3. Without gpushim, the same 1 GiB tensor is served (the failure in 2 was gpushim's doing).

  run_oom_check.py --lib PATH/libgpushim.so --search BUILD_DIR --backend tiered [--cli PATH/gpushim]

Exit codes: 0 pass, 1 fail, 77 skipped (torch not importable or no GPU).
"""
import argparse
import glob
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "..", "..", "test_apps", "frameworks", "torch_oom_app.py")
failures = []


def check(condition, what, detail=""):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        failures.append(what)
        if detail:
            print("      " + detail.rstrip().replace("\n", "\n      "))
    return condition


def run(command, env=None, timeout=300):
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def results(stdout):
    found = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "RESULT":
            found[parts[1]] = parts[2]
    return found


def find_file(search, name):
    for root, _, files in os.walk(search):
        if name in files and os.access(os.path.join(root, name), os.X_OK):
            return os.path.join(root, name)
    return ""


def app_env(lib, backend, extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", LD_PRELOAD=lib, GPUSHIM_BACKEND=backend, GPUSHIM_STATS="1")
    env.update(extra)
    return env


def tail(text, lines=30):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default="")
    parser.add_argument("--cli", default="", help="the gpushim command (default: searched under --search)")
    parser.add_argument("--search", default="")
    parser.add_argument("--backend", default="tiered")
    parser.add_argument("--limit", default="2GiB")
    parser.add_argument("--require-names", action="store_true",
                        help="fail unless the top holder is named by function (needs the symbolizer)")
    args = parser.parse_args()

    status, out, err = run([sys.executable, APP, "big"], dict(os.environ, PYTHONUNBUFFERED="1"))
    if status == SKIP:
        print(out.strip())
        return SKIP
    check(status == 0 and results(out).get("raised") == "False",
          "without gpushim the 1 GiB tensor is served", out + tail(err))

    if not os.path.isfile(args.lib) and args.search:
        args.lib = find_file(args.search, "libgpushim.so")
    if not os.path.isfile(args.cli) and args.search:
        args.cli = find_file(args.search, "gpushim")
    if not check(os.path.isfile(args.lib), "libgpushim.so found", f"--lib {args.lib!r} --search {args.search!r}"):
        return 1
    have_cli = check(os.path.isfile(args.cli), "the gpushim command is built (CLI11 + nlohmann-json headers)",
                     "build it (scripts/gpu_check.sh builds it where .carry/include has the headers)")
    work = tempfile.mkdtemp(prefix="gpushim_oom_check_")

    # 1. Out of memory under the cap, with a dump.
    dump_pattern = os.path.join(work, "oom.%p.dump")
    status, out, err = run([sys.executable, APP, "fill"], app_env(args.lib, args.backend, {
        "GPUSHIM_LIMIT": args.limit, "GPUSHIM_OOM_DUMP": dump_pattern, "GPUSHIM_OOM_DUMP_STACK": "24"}))
    r = results(out)
    check(status == 0, "fill: the app exits 0", out + tail(err))
    check(r.get("raised") == "True", "fill: torch raised torch.cuda.OutOfMemoryError under GPUSHIM_LIMIT", out)
    check(r.get("continued") == "True", "fill: the app went on after catching it", out)
    check("out of memory on device 0" in err, "fill: gpushim's out-of-memory report is on stderr", tail(err))
    dumps = glob.glob(os.path.join(work, "oom.*.dump"))
    if check(len(dumps) == 1, "fill: exactly one dump was written", f"{dumps}\n{tail(err)}") and have_cli:
        dump = dumps[0]
        status, summary, serr = run([args.cli, "trace", "summary", dump])
        print("---- gpushim trace summary (first 30 lines) ----\n" + "\n".join(summary.splitlines()[:30]) + "\n----")
        check(status == 0, "summary: exit 0", serr)
        check("out-of-memory dump: device 0" in summary, "summary: names the failing request", summary)
        holders = re.findall(r"^\s+#1 .*? blocks  at (.*)$", summary.split("top holders at the failure")[-1], re.M)
        check("top holders at the failure, by call site" in summary and holders,
              "summary: lists the top holders by call site", summary)
        if holders and args.require_names:
            check(not re.match(r"^\S+\+0x[0-9a-f]+", holders[0]) and not holders[0].startswith("(no stack"),
                  f"summary: the top holder is named by function ({holders[0]})")
        pickle_path = os.path.join(work, "oom.pickle")
        status, _, eerr = run([args.cli, "trace", "export", "--format", "torch-snapshot", dump, "-o", pickle_path])
        check(status == 0 and os.path.isfile(pickle_path), "export --format torch-snapshot: written", eerr)
        if os.path.isfile(pickle_path):
            with open(pickle_path, "rb") as f:
                snapshot = pickle.load(f)
            allocs = [e for e in snapshot["device_traces"][0] if e["action"] == "alloc"]
            check(len(snapshot["segments"]) == len(allocs) > 0 and snapshot["device_traces"][0][-1]["action"] == "oom",
                  "snapshot: one segment per live block, the oom last")
            check(any(e["frames"] for e in allocs), "snapshot: blocks carry their stack frames")
            for view in ("trace_plot", "segment_plot"):
                html = os.path.join(work, f"{view}.html")
                status, vout, verr = run([sys.executable, "-m", "torch.cuda._memory_viz", view, pickle_path, "-o", html])
                page = open(html).read() if os.path.isfile(html) else ""
                # The page embeds the snapshot (re-pickled by torch, base64) for MemoryViz.js.
                check(status == 0 and "snapshot.pickle" in page and len(page) > 1000,
                      f"memory_viz {view}: rendered {html} ({len(page)} bytes)", vout + tail(verr))
            for view in ("stats", "trace"):
                status, vout, verr = run([sys.executable, "-m", "torch.cuda._memory_viz", view, pickle_path])
                check(status == 0 and vout.strip(), f"memory_viz {view}: reads the snapshot", tail(verr))
            code = ("import pickle,sys; from torch.cuda._memory_viz import memory, segments; "
                    "s=pickle.load(open(sys.argv[1],'rb')); m=memory(s, format_flamegraph=lambda x: x); "
                    "segments(s, format_flamegraph=lambda x: x); assert 'active_allocated' in m; print(len(m))")
            status, vout, verr = run([sys.executable, "-c", code, pickle_path])
            check(status == 0, "memory_viz memory/segments: flamegraph input built from the snapshot", tail(verr))

    # 2. GPUSHIM_FAIL picks the 1 GiB allocation.
    status, out, err = run([sys.executable, APP, "big"], app_env(args.lib, args.backend, {"GPUSHIM_FAIL": "size>=1GiB"}))
    r = results(out)
    check(status == 0, "fail: the app exits 0", out + tail(err))
    check(r.get("raised") == "True", "fail: GPUSHIM_FAIL=size>=1GiB made torch raise torch.cuda.OutOfMemoryError", out)
    check(r.get("continued") == "True", "fail: the app went on after catching it", out)
    check("(injected by GPUSHIM_FAIL)" in err, "fail: the report says the failure was injected", tail(err))
    check(re.search(r"GPUSHIM_FAIL injected [1-9]\d* of the failed allocations", err) is not None,
          "fail: the exit statistics count the injected failures", tail(err))

    # Bring the files back from a lent machine ($OUT comes back), for reading them elsewhere.
    if os.environ.get("OUT"):
        keep = os.path.join(os.environ["OUT"], f"oom_check_{args.backend}")
        shutil.copytree(work, keep, dirs_exist_ok=True)
        print(f"files kept in {keep}")
    print(f"{len(failures)} failed" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
