"""Turns the raw output of bench/run_macro.sh into the macro tables (markdown) and one JSONL per workload.

Input, in the results folder, per workload W (torch, cupy, decode, cnn):
  W-plan.tsv          one line per configuration, in run order: name <TAB> how it was run
  W-<name>.json       the workload's stdout (one JSON line)
  W-<name>.stderr     its stderr; gpushim's GPUSHIM_STATS table is parsed from here
  W-<name>.status     "<exit code> <wall seconds>" or "skipped <reason>"
  W-<name>.rK.*       the same three files of pass K (K = 2..N) when run_macro.sh ran with --repeat N
  meta.json           device, date, commit, command, repeat (optional)
Output: the tables on stdout, and W.jsonl (merged records) plus tables.md in the same folder.

With N passes (N processes per configuration, run interleaved), a row's rate is the median of the passes
that finished cleanly, the ratio is median over the baseline's median, a range column shows the passes'
min-max, and the memory columns are the max over those passes; a failed pass is left out of the median and
named in the check column. With N = 1 the row is the one process's record, exactly as before --repeat.

The PyTorch workloads (torch, decode, cnn) also get the free-safety table: per configuration the median
rate, the passes' min-max, the max NVML peak, the rate over the fastest peer's (peers: PyTorch's caching
allocator, expandable segments, cudaMallocAsync) and, for gpushim rows, whether the targets hold (peak at
most expandable segments', rate at least 0.98x the fastest peer's). For decode and cnn it is the only table.

Stdlib only, so it runs anywhere: `python3 bench/macro_report.py bench/results/<run>`.
"""

import argparse
import json
import os
import statistics
import sys

WORKLOADS = {
    # workload: (title, baseline config, rate column, result column, peak-memory target config)
    "torch": ("PyTorch transformer training (bench/torch_transformer.py)", "default", "steps/s", "last loss",
              "expandable"),
    "cupy": ("CuPy FFT + matmul loop (bench/cupy_loop.py)", "pool", "ops/s", "checksum", None),
    "decode": ("PyTorch LLM decoding, KV cache grown by torch.cat, cuDNN attention (bench/torch_decode.py)",
               "default", "tokens/s", "log-prob sum", "expandable"),
    "cnn": ("PyTorch CNN training, cuDNN convolutions, varying batch and image size (bench/torch_cnn.py)",
            "default", "images/s", "last loss", "expandable"),
}
# The workloads of the free-safety table, and the ones for which it is the only table.
FREE_SAFETY_WORKLOADS = ("torch", "decode", "cnn")
FREE_SAFETY_ONLY = ("decode", "cnn")
PEERS = ("default", "expandable", "mallocasync")  # what a PyTorch user would otherwise pick
MEMORY_PEER = "expandable"
SPEED_TARGET = 0.98  # of the fastest peer's median rate: closer than the passes' spread can rank
TARGET_BACKEND = "tiered"  # gpushim's default backend (allocators/backend_registry.h kDefaultBackend)
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
         "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_gpushim_stats(text):
    """Rows of the GPUSHIM_STATS table (docs/configuration.md, "The statistics table"): 'gpushim: <device> <backend> <allocs>
    <frees> <failed> <n> <unit> <n> <unit> <n> <unit>'. Header and other gpushim lines are skipped."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[0] != "gpushim:" or not fields[1].isdigit():
            continue
        try:
            row = {"device": int(fields[1]), "backend": fields[2], "allocs": int(fields[3]),
                   "frees": int(fields[4]), "failed": int(fields[5])}
        except ValueError:
            continue
        names = ("bytes_allocated", "peak_live", "peak_reserved")
        for k, name in enumerate(names):
            pair = fields[6 + 2 * k: 8 + 2 * k]
            if len(pair) == 2 and pair[1] in UNITS:
                try:
                    row[name + "_gib"] = round(float(pair[0]) * UNITS[pair[1]] / (1 << 30), 4)
                except ValueError:
                    pass
        rows.append(row)
    return rows


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def last_json_line(text):
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def pass_suffix(k):
    """File-name suffix of pass k: pass 1 keeps the names of a run without --repeat."""
    return "" if k == 1 else ".r%d" % k


def pass_count(folder, workload, name, repeat):
    """Passes of one configuration: what meta.json says was asked for, or more if more files exist
    (a folder from before meta.json had "repeat"). Asked-for passes without files read as not run."""
    k = 1
    while any(os.path.exists(os.path.join(folder, "%s-%s%s%s" % (workload, name, pass_suffix(k + 1), ext)))
              for ext in (".status", ".json", ".stderr")):
        k += 1
    return max(k, repeat)


def load_workload(folder, workload, repeat=None):
    """One record per configuration, in plan order. repeat: passes asked for (default: meta.json's, else 1)."""
    plan = read_text(os.path.join(folder, workload + "-plan.tsv"))
    if plan is None:
        return None
    if repeat is None:
        meta = last_json_line(read_text(os.path.join(folder, "meta.json"))) or {}
        repeat = meta.get("repeat", 1) if isinstance(meta.get("repeat", 1), int) else 1
    records = []
    for line in plan.splitlines():
        if not line.strip():
            continue
        name, _, how = line.partition("\t")
        passes = [load_process(folder, workload, name, how, k)
                  for k in range(1, pass_count(folder, workload, name, repeat) + 1)]
        records.append(passes[0] if len(passes) == 1 else combine_passes(passes))
    return records


def load_process(folder, workload, name, how, k):
    """The record of one process: pass k of configuration name."""
    base = os.path.join(folder, "%s-%s%s" % (workload, name, pass_suffix(k)))
    rec = last_json_line(read_text(base + ".json")) or {}
    rec["config"] = name
    rec["how"] = how
    status = (read_text(base + ".status") or "").split()
    if status and status[0] == "skipped":
        rec["skipped"] = " ".join(status[1:]) or "skipped"
    elif status:
        rec["exit_code"] = int(status[0]) if status[0].lstrip("-").isdigit() else status[0]
        if len(status) > 1:
            rec["wall_s"] = float(status[1])
    else:
        rec.setdefault("error", "not run (no status file)")
    stderr = read_text(base + ".stderr") or ""
    if name.startswith("gpushim-"):
        rec["gpushim_backend_requested"] = name[len("gpushim-"):]
        rec["gpushim_stats"] = parse_gpushim_stats(stderr)
    if "rate" not in rec and "error" not in rec and "skipped" not in rec:
        tail = [l for l in stderr.strip().splitlines() if l.strip()][-1:]
        code = rec.get("exit_code")
        why = {124: "timed out", 137: "killed (timeout or out of host memory)"}.get(code, "exit %s" % code)
        rec["error"] = "%s, no JSON line%s" % (why, (": " + tail[0][:160]) if tail else "")
    return rec


def counts(rec):
    """Does this process's rate enter the median? Only a clean finish with a rate does."""
    return ("rate" in rec and "error" not in rec and "skipped" not in rec
            and rec.get("exit_code") in (0, None))


# Columns that are a maximum over passes: memory peaks, and gpushim's figures (same every pass anyway).
MAX_OVER_PASSES = ("peak_nvml_gib", "torch_max_reserved_gib", "cupy_pool_total_gib")


def combine_passes(passes):
    """One row from N processes of one configuration. Fields not summarised (result, how, gpushim_stats,
    ...) come from the first pass that counts, else the first pass; every pass stays under "passes"."""
    counted = [p for p in passes if counts(p)]
    rec = dict(counted[0] if counted else passes[0])
    rec["repeat"] = len(passes)
    rec["passes_counted"] = len(counted)
    rec["pass_rates"] = [p["rate"] if counts(p) else None for p in passes]
    rates = sorted(p["rate"] for p in counted)
    if rates:
        rec["rate"] = statistics.median(rates)
        rec["rate_min"], rec["rate_max"] = rates[0], rates[-1]
    else:
        rec.pop("rate", None)
    for key in MAX_OVER_PASSES:
        values = [p[key] for p in counted if p.get(key) is not None]
        if values:
            rec[key] = max(values)
    rec["passes"] = passes
    return rec


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def checks(rec, base, tolerance):
    """Problems worth a flag; an empty list means the row is trustworthy."""
    flags = []
    if "skipped" in rec:
        return ["skipped: " + rec["skipped"]]
    if "error" in rec:
        return ["ERROR: " + rec["error"]]
    if rec.get("exit_code") not in (0, None):
        flags.append("exit code %s" % rec["exit_code"])
    if base and base.get("result") is not None and rec.get("result") is not None:
        ref, got = base["result"], rec["result"]
        rel = abs(got - ref) / max(abs(ref), 1e-30)
        if rel > tolerance or got != got:  # got != got: NaN
            flags.append("RESULT DIFFERS from %s (rel %.1e)" % (base["config"], rel))
    if "gpushim_stats" in rec:
        stats = rec["gpushim_stats"]
        want = rec["gpushim_backend_requested"]
        if not stats:
            flags.append("no GPUSHIM_STATS table (gpushim not loaded?)")
        else:
            allocs = sum(r["allocs"] for r in stats)
            if allocs == 0:
                flags.append("NOT INTERCEPTED: gpushim served 0 allocations")
            backends = sorted({r["backend"] for r in stats})
            if want not in backends:
                flags.append("backend %s served, %s requested" % ("/".join(backends), want))
            failed = sum(r["failed"] for r in stats)
            if failed:
                flags.append("%d failed allocations" % failed)
    if rec.get("config") == "mallocasync" and rec.get("allocator_backend") not in (None, "cudaMallocAsync"):
        flags.append("allocator backend is %s" % rec.get("allocator_backend"))
    if rec.get("nvml_source") not in (None, "process"):
        flags.append("NVML peak from %s" % rec.get("nvml_source"))
    cuda_gpu, nvml_gpu = rec.get("cuda_device_uuid"), rec.get("nvml_device_uuid")
    if cuda_gpu and nvml_gpu and cuda_gpu.lower() != nvml_gpu.lower():
        flags.append("NVML watched %s, CUDA ran on %s" % (nvml_gpu, cuda_gpu))
    return flags


def processes(rec):
    """The per-process records behind a row: its passes, or the row itself when it had one."""
    return rec.get("passes", [rec])


def pass_list(ks, n):
    return "all %d passes" % n if len(ks) == n else "pass%s %s" % ("es" if len(ks) > 1 else "", ",".join(map(str, ks)))


def repeated_checks(rec, base, tolerance):
    """checks() of every pass of a row; a flag found in several passes is named once, with the passes.
    A pass that does not count is named as excluded from the median, with why."""
    passes = processes(rec)
    n = len(passes)
    if all("skipped" in p for p in passes):
        return checks(passes[0], base, tolerance)
    where = {}
    excluded = []
    for k, p in enumerate(passes, 1):
        flags = checks(p, base, tolerance)
        if not counts(p):
            excluded.append("pass %d EXCLUDED from median: %s" % (k, "; ".join(flags) or "no rate"))
            continue
        for f in flags:
            where.setdefault(f, []).append(k)
    return excluded + ["%s (%s)" % (f, pass_list(ks, n)) for f, ks in where.items()]


def shim_columns(rec):
    """gpushim allocs and peak reserved GiB of one process, from its GPUSHIM_STATS table."""
    stats = rec.get("gpushim_stats") or []
    if not stats:
        return None, None
    return sum(r["allocs"] for r in stats), sum(r.get("peak_reserved_gib", 0) for r in stats)


def max_or_none(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def repeated_table(workload, records, tolerance, n):
    """The table when configurations ran N > 1 passes: medians, range, pass count, memory maxima."""
    title, base_name, rate_col, result_col, _ = WORKLOADS[workload]
    base = next((r for r in records if r["config"] == base_name and "rate" in r), None)
    lines = ["### " + title, "",
             "| config | %s (median) | range of passes | passes | ratio to %s | peak GiB (NVML, max) | "
             "framework reserved GiB (max) | gpushim allocs | gpushim peak reserved GiB (max) | %s | check |"
             % (rate_col, base_name, result_col),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rec in records:
        passes = processes(rec)
        counted = [p for p in passes if counts(p)] or passes
        rate = rec.get("rate")
        ratio = rate / base["rate"] if (rate and base) else None
        spread = ("%.2f-%.2f" % (rec["rate_min"], rec["rate_max"])) if "rate_min" in rec else "-"
        reserved = max_or_none(p.get("torch_max_reserved_gib", p.get("cupy_pool_total_gib")) for p in counted)
        shim = [shim_columns(p) for p in counted]
        result = rec.get("result")
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            rec["config"], fmt(rate, ".2f"), spread,
            "%d of %d" % (rec.get("passes_counted", 0), len(passes)) if rec.get("passes_counted", 1) != len(passes)
            else str(len(passes)),
            fmt(ratio, ".3f"), fmt(max_or_none(p.get("peak_nvml_gib") for p in counted), ".2f"),
            fmt(reserved, ".2f"), fmt(max_or_none(a for a, _ in shim), "d"),
            fmt(max_or_none(b for _, b in shim), ".2f"), "-" if result is None else repr(result),
            "; ".join(repeated_checks(rec, base, tolerance)) or "ok"))
    lines += ["", "Each configuration ran %d times as separate processes, pass after pass (every configuration "
              "once per pass). %s: median over the passes that finished cleanly; range: their min-max; ratio: "
              "median over %s's median; memory columns and gpushim allocs: max over those passes. A failed pass "
              "is left out of the median and named in the check column; results are checked for every pass."
              % (n, rate_col, base_name), ""]
    for rec in records:
        lines.append("- `%s`: %s" % (rec["config"], rec.get("how", "")))
    return lines, base


def table(workload, records, tolerance):
    n = max(len(processes(r)) for r in records) if records else 1
    if n > 1:
        return repeated_table(workload, records, tolerance, n)
    title, base_name, rate_col, result_col, _ = WORKLOADS[workload]
    base = next((r for r in records if r["config"] == base_name and "rate" in r), None)
    lines = ["### " + title, "",
             "| config | %s | ratio to %s | peak GiB (NVML) | framework reserved GiB | gpushim allocs | "
             "gpushim peak reserved GiB | %s | check |" % (rate_col, base_name, result_col),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rec in records:
        rate = rec.get("rate")
        ratio = rate / base["rate"] if (rate and base) else None
        reserved = rec.get("torch_max_reserved_gib", rec.get("cupy_pool_total_gib"))
        stats = rec.get("gpushim_stats") or []
        allocs = sum(r["allocs"] for r in stats) if stats else None
        shim_peak = sum(r.get("peak_reserved_gib", 0) for r in stats) if stats else None
        result = rec.get("result")
        flags = checks(rec, base if rec is not base else None, tolerance)
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            rec["config"], fmt(rate, ".2f"), fmt(ratio, ".3f"), fmt(rec.get("peak_nvml_gib"), ".2f"),
            fmt(reserved, ".2f"), fmt(allocs, "d"), fmt(shim_peak, ".2f"),
            "-" if result is None else repr(result), "; ".join(flags) or "ok"))
    lines.append("")
    for rec in records:
        lines.append("- `%s`: %s" % (rec["config"], rec.get("how", "")))
    return lines, base


def targets(workload, records, base):
    """The issue's targets, stated as pass/miss with the numbers."""
    _, base_name, _, _, memory_peer = WORKLOADS[workload]
    mine = next((r for r in records if r["config"] == "gpushim-" + TARGET_BACKEND), None)
    out = []
    if mine is None or "rate" not in mine:
        return ["- target: gpushim-%s has no result" % TARGET_BACKEND]
    repeated = "passes" in mine or (base is not None and "passes" in base)
    if base:
        ratio = mine["rate"] / base["rate"]
        how = ""
        if repeated:
            n_mine, n_base = mine.get("passes_counted", 1), base.get("passes_counted", 1)
            how = ("median of %d passes, " % n_mine if n_mine == n_base
                   else "median of %d / median of %d passes, " % (n_mine, n_base))
            if "rate_min" in mine and "rate_min" in base and \
                    mine["rate_min"] <= base["rate_max"] and base["rate_min"] <= mine["rate_max"]:
                how += "pass ranges overlap, "
        out.append("- speed: gpushim-%s / %s = %.3f (%starget >= 1.00): %s" % (
            TARGET_BACKEND, base_name, ratio, how,
            "MET" if ratio >= 1.0 else "MISSED by %.1f%%" % (100 * (1 - ratio))))
    peer = next((r for r in records if r["config"] == memory_peer), None) if memory_peer else base
    if peer and peer.get("peak_nvml_gib") is not None and mine.get("peak_nvml_gib") is not None:
        a, b = mine["peak_nvml_gib"], peer["peak_nvml_gib"]
        out.append("- memory: gpushim-%s peak %.2f GiB vs %s %.2f GiB (%starget <=): %s" % (
            TARGET_BACKEND, a, peer["config"], b, "max over passes, " if repeated else "",
            "MET" if a <= b else "MISSED by %.2f GiB" % (a - b)))
    return out


def fastest_peer(records):
    """The peer row with the highest median rate, or None when no peer has one."""
    peers = [r for r in records if r["config"] in PEERS and r.get("rate")]
    return max(peers, key=lambda r: r["rate"]) if peers else None


def peak_of(rec):
    """Max NVML peak over the passes that count (the row's own figure for one pass)."""
    counted = [p for p in processes(rec) if counts(p)] or processes(rec)
    return max_or_none(p.get("peak_nvml_gib") for p in counted)


def target_cell(rec, fastest, memory_peer):
    """'mem MET, speed MISSED (0.952)' for a gpushim row: peak <= the memory peer's, rate >= SPEED_TARGET x
    the fastest peer's; '-' for other rows, '?' parts where a figure is missing."""
    if not rec["config"].startswith("gpushim-"):
        return "-"
    mine, theirs = peak_of(rec), peak_of(memory_peer) if memory_peer else None
    if mine is None or theirs is None:
        mem = "mem ?"
    elif mine <= theirs:
        mem = "mem MET"
    else:
        mem = "mem MISSED (+%.2f GiB)" % (mine - theirs)
    if not rec.get("rate") or fastest is None:
        speed = "speed ?"
    else:
        ratio = rec["rate"] / fastest["rate"]
        speed = "speed MET" if ratio >= SPEED_TARGET else "speed MISSED (%.3f)" % ratio
    return mem + ", " + speed


def free_safety_table(workload, records, tolerance):
    """The compact table: median, min-max, passes, max NVML peak, ratio to the fastest peer, targets."""
    _, base_name, rate_col, _, _ = WORKLOADS[workload]
    base = next((r for r in records if r["config"] == base_name and "rate" in r), None)
    fastest = fastest_peer(records)
    memory_peer = next((r for r in records if r["config"] == MEMORY_PEER), None)
    lines = ["| config | %s (median) | min-max | passes | peak GiB (NVML, max) | vs fastest peer | targets | check |"
             % rate_col, "|---|---:|---:|---:|---:|---:|---|---|"]
    for rec in records:
        passes = processes(rec)
        counted = [p for p in passes if counts(p)]
        rates = sorted(p["rate"] for p in counted)
        rate = rec.get("rate") if counted else None
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            rec["config"], fmt(rate, ".2f"), ("%.2f-%.2f" % (rates[0], rates[-1])) if rates else "-",
            str(len(passes)) if len(counted) == len(passes) else "%d of %d" % (len(counted), len(passes)),
            fmt(peak_of(rec) if counted else None, ".2f"),
            fmt(rate / fastest["rate"] if (rate and fastest) else None, ".3f"),
            target_cell(rec, fastest, memory_peer) if counted else "-",
            "; ".join(repeated_checks(rec, base, tolerance) if len(passes) > 1
                      else checks(rec, base if rec is not base else None, tolerance)) or "ok"))
    lines += ["", "fastest peer: %s. targets (gpushim rows): peak <= %s's, rate >= %.2fx the fastest peer's." % (
        ("%s, %.2f %s" % (fastest["config"], fastest["rate"], rate_col)) if fastest else "none finished",
        MEMORY_PEER, SPEED_TARGET)]
    lines += attention_notes(workload, records)
    return lines


def attention_notes(workload, records):
    """decode: which SDPA backend each phase ran with and what made cuDNN's handle, once if every process
    agrees, else per configuration."""
    if workload != "decode":
        return []
    seen = {}
    for rec in records:
        for p in processes(rec):
            if "sdpa_backend_prefill" in p:
                seen.setdefault((p["sdpa_backend_prefill"], p.get("sdpa_backend_decode"),
                                 p.get("cudnn_handle_made_by")), []).append(rec["config"])
    text = ["attention: prefill %s, decode %s; cuDNN handle made by %s%s" % (
        pre, dec, made, "" if len(seen) == 1 else " (%s)" % ", ".join(sorted(set(configs))))
        for (pre, dec, made), configs in sorted(seen.items(), key=str)]
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description="Print the macro benchmark tables from a results folder.")
    p.add_argument("folder")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="relative difference of loss/checksum to the baseline that is flagged (default 1e-4)")
    args = p.parse_args(argv)

    meta = last_json_line(read_text(os.path.join(args.folder, "meta.json"))) or {}
    out = ["## Macro benchmarks", "",
           "device: %s; date: %s; commit: %s" % (meta.get("device", "?"), meta.get("date", "?"),
                                                  meta.get("commit", "?")),
           "command: `%s`" % meta.get("command", "?"), ""]
    found = False
    for workload in WORKLOADS:
        records = load_workload(args.folder, workload)
        if records is None:
            continue
        found = True
        if workload in FREE_SAFETY_ONLY:
            out += ["### " + WORKLOADS[workload][0], ""] + free_safety_table(workload, records, args.tolerance)
            out += [""] + ["- `%s`: %s" % (r["config"], r.get("how", "")) for r in records] + [""]
        else:
            lines, base = table(workload, records, args.tolerance)
            out += lines + [""] + targets(workload, records, base) + [""]
            if workload in FREE_SAFETY_WORKLOADS:
                out += ["Free-safety targets (peers: %s):" % ", ".join(PEERS), ""]
                out += free_safety_table(workload, records, args.tolerance) + [""]
        with open(os.path.join(args.folder, workload + ".jsonl"), "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    if not found:
        print("no *-plan.tsv in %s: nothing was run there" % args.folder, file=sys.stderr)
        return 1
    text = "\n".join(out)
    with open(os.path.join(args.folder, "tables.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
