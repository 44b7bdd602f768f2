"""Host spill end to end (docs/host-spill.md): a PyTorch training run whose peak exceeds GPUSHIM_LIMIT by
25% and by 50% completes under GPUSHIM_SPILL=host with losses identical to an uncapped run, and its
device memory (NVML) stays within the limit. Prints a table; exit status 0 when every check holds.

One command does all of it, each run in its own process, under gpushim (PYTORCH_NO_CUDA_MEMORY_CACHING=1,
so every tensor is a cudaMalloc that gpushim serves):
  1. uncapped: the reference losses, steps/s, gpushim's peak live bytes P (GPUSHIM_STATS) and NVML peak;
  2. for each overshoot X (25, 50): GPUSHIM_LIMIT = P / (1 + X/100), GPUSHIM_SPILL=host;
  3. control: the 25% limit WITHOUT spilling must fail with out-of-memory (the limit does bind).

The model: nn.TransformerEncoder (4 layers, d_model 1024, 16 heads, ff 4096, batch 8, fp32), the
sequence length cycling through 128..512 as in bench/torch_transformer.py, AdamW, fixed seeds. Attention
runs on the math path (flash / memory-efficient kernels off) and deterministic algorithms are on, so two
runs compute bit-identical losses whatever the allocator does.

"Within the limit" for NVML: NVML counts the whole process (CUDA context, kernel images loaded on first
use), not only allocations. That overhead is measured in the uncapped run (NVML peak - gpushim's peak
device reserve) and allowed on top of the limit: NVML peak <= limit + overhead + 64 MiB.

  python3 bench/torch_spill.py [--lib build/lib/libgpushim.so] [--steps 16] [--over 25,50] [--out DIR]
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from macro_report import UNITS, parse_gpushim_stats  # noqa: E402
from nvml_sampler import GIB  # noqa: E402
from torch_transformer import SEQ_CYCLE  # noqa: E402  (the same sequence lengths, step after step)

MIB = float(1 << 20)
# router/memory_report.cpp: "device 0 spilled to host: N blocks, peak live X U, peak mapped Y U, cap Z U".
SPILL_LINE = re.compile(r"gpushim: device 0 spilled to host: (\d+) blocks, peak live ([\d.]+) (\S+), "
                        r"peak mapped ([\d.]+) (\S+), cap")
NVML_SLACK = 64 << 20
# Host memory the spilled runs may pin: the lent machines have limited pinned memory (keep it <= 8 GiB).
SPILL_LIMIT = "6GiB"


# --- the training run (worker process) --------------------------------------------------------------
def train(args, record, sampler):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    dev = torch.device("cuda")
    torch.cuda.init()
    torch.zeros(1, device=dev)  # the context exists now
    sampler.sample()
    record["nvml_after_init_gib"] = sampler.result(window="all")["peak_nvml_process_gib_whole_run"]

    torch.manual_seed(args.seed)
    layer = nn.TransformerEncoderLayer(d_model=args.d_model, nhead=args.heads, dim_feedforward=args.ff,
                                       dropout=0.1, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=args.layers, enable_nested_tensor=False).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data_gen = torch.Generator(device=dev)
    data_gen.manual_seed(args.seed + 1)

    losses = []

    def step(i):
        seq = SEQ_CYCLE[i % len(SEQ_CYCLE)]
        x = torch.randn(args.batch, seq, args.d_model, device=dev, generator=data_gen)
        target = torch.randn(args.batch, seq, args.d_model, device=dev, generator=data_gen)
        loss = F.mse_loss(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    sampler.begin_timed()
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    sampler.end_timed()
    record["steps_per_s"] = round(args.steps / elapsed, 4)
    # float.hex: the exact bits, so "identical" means identical.
    record["losses"] = [float(v.item()).hex() for v in losses]


def worker(args):
    from workload_record import run_and_print_record
    record = {"config": args.config}
    return run_and_print_record(train, args, record)


# --- the driver ----------------------------------------------------------------------------------------
def find_lib(explicit):
    if explicit:
        return os.path.abspath(explicit)
    repo = os.path.dirname(HERE)
    found = sorted(glob.glob(os.path.join(repo, "build*", "lib", "libgpushim.so")), key=os.path.getmtime)
    return found[-1] if found else None


def gpushim_stats(stderr):
    """Device 0's GPUSHIM_STATS row (bench/macro_report.py reads the table) and its spill line, in bytes."""
    out = {}
    for row in parse_gpushim_stats(stderr):
        if row["device"] == 0:
            out["peak_live"] = row.get("peak_live_gib", 0) * GIB
            out["peak_reserved"] = row.get("peak_reserved_gib", 0) * GIB
            out["failed"] = row["failed"]
    for line in stderr.splitlines():
        m = SPILL_LINE.match(line)
        if m:
            out["spilled_blocks"] = int(m.group(1))
            out["spilled_peak_live"] = float(m.group(2)) * UNITS[m.group(3)]
            out["spilled_peak_mapped"] = float(m.group(4)) * UNITS[m.group(5)]
    return out


def run_one(args, lib, config, extra_env, out_dir):
    env = dict(os.environ)
    for k in [k for k in env if k.startswith("GPUSHIM_")]:
        del env[k]
    env.update({"LD_PRELOAD": lib, "GPUSHIM_BACKEND": args.backend, "GPUSHIM_STATS": "1",
                "PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    env.update(extra_env)
    cmd = [sys.executable, args.worker_script or os.path.abspath(__file__), "--worker", "--config", config,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--layers", str(args.layers),
           "--d-model", str(args.d_model), "--heads", str(args.heads), "--ff", str(args.ff),
           "--batch", str(args.batch), "--seed", str(args.seed)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    with open(os.path.join(out_dir, config + ".stderr"), "w") as f:
        f.write(proc.stderr)
    record = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
    record["exit"] = proc.returncode
    record["wall_s"] = round(wall, 1)
    record["env"] = {k: v for k, v in extra_env.items()}
    record.update(gpushim_stats(proc.stderr))
    record["oom_report"] = "out of memory on device 0" in proc.stderr
    with open(os.path.join(out_dir, config + ".json"), "w") as f:
        json.dump(record, f, indent=1)
    print("torch_spill: %-14s exit %d in %.0f s %s" % (config, proc.returncode, wall, record.get("error", "")),
          file=sys.stderr, flush=True)
    return record


def nvml_peak(rec):
    """GiB: the process's NVML peak over the whole run, else the timed window's (per process or, where
    NVML does not list our pid, the device's growth since the sampler started)."""
    whole = rec.get("peak_nvml_process_gib_whole_run")
    return whole if whole is not None else rec.get("peak_nvml_gib")


def gib(v):
    return "-" if v is None else "%.2f" % (v / GIB)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-script", help=argparse.SUPPRESS)  # bench/test_torch_spill.py: a fake training run
    p.add_argument("--lib", help="libgpushim.so (default: the newest build*/lib/libgpushim.so)")
    p.add_argument("--backend", default="tiered")
    p.add_argument("--over", default="25,50", help="overshoots of the peak over the limit, in %% (default 25,50)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ff", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-ms", type=float, default=5.0)
    p.add_argument("--timeout", type=int, default=240, help="per run, seconds")
    p.add_argument("--out", help="folder for each run's JSON and stderr (default $OUT/torch_spill or /tmp)")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    lib = find_lib(args.lib)
    if not lib or not os.path.exists(lib):
        print("torch_spill: libgpushim.so not found (--lib)", file=sys.stderr)
        return 2
    out_dir = args.out or os.path.join(os.environ.get("OUT", "/tmp"), "torch_spill")
    os.makedirs(out_dir, exist_ok=True)
    overs = [int(x) for x in args.over.split(",") if x.strip()]

    ref = run_one(args, lib, "uncapped", {}, out_dir)
    if ref["exit"] != 0 or "peak_live" not in ref or "losses" not in ref:
        print("torch_spill: the uncapped run failed; see %s/uncapped.stderr" % out_dir, file=sys.stderr)
        return 1
    peak = ref["peak_live"]
    overhead = None
    if nvml_peak(ref) is not None and "peak_reserved" in ref:
        overhead = max(0.0, nvml_peak(ref) * GIB - ref["peak_reserved"])

    rows, checks = [], []
    rows.append(("uncapped", None, ref))
    for over in overs:
        limit = int(peak / (1 + over / 100.0)) // (1 << 20) << 20
        env = {"GPUSHIM_LIMIT": str(limit), "GPUSHIM_SPILL": "host", "GPUSHIM_SPILL_LIMIT": SPILL_LIMIT}
        rec = run_one(args, lib, "spill+%d%%" % over, env, out_dir)
        rows.append(("spill+%d%%" % over, limit, rec))
        name = "peak %d%% over the limit" % over
        checks.append((name + ": completes", rec["exit"] == 0 and "losses" in rec))
        checks.append((name + ": losses identical to uncapped", rec.get("losses") == ref["losses"]))
        checks.append((name + ": blocks were spilled", rec.get("spilled_blocks", 0) > 0))
        nvml = nvml_peak(rec)
        if nvml is None or overhead is None:
            checks.append((name + ": NVML device memory within the limit (NVML unavailable)", False))
        else:
            checks.append((name + ": NVML peak %.2f GiB <= limit %.2f + overhead %.2f GiB"
                           % (nvml, limit / GIB, overhead / GIB), nvml * GIB <= limit + overhead + NVML_SLACK))
    control_limit = int(peak / 1.25) // (1 << 20) << 20
    control = run_one(args, lib, "limit-only", {"GPUSHIM_LIMIT": str(control_limit)}, out_dir)
    rows.append(("limit-only", control_limit, control))
    checks.append(("the same limit without GPUSHIM_SPILL fails with out-of-memory",
                   control["exit"] != 0 and control.get("oom_report", False)))

    print()
    print("PyTorch training under GPUSHIM_LIMIT with GPUSHIM_SPILL=host (backend %s, %d timed steps, "
          "gpushim peak live of the uncapped run %.2f GiB)" % (args.backend, args.steps, peak / GIB))
    print("| run | GPUSHIM_LIMIT GiB | steps/s | vs uncapped | NVML peak GiB | spilled blocks | "
          "spilled peak live GiB | host mapped peak GiB | losses |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, limit, rec in rows:
        rate = rec.get("steps_per_s")
        rel = "%.2fx" % (rate / ref["steps_per_s"]) if rate else "-"
        nvml = nvml_peak(rec)
        if name == "uncapped":
            losses = "reference (%d steps, last %.6f)" % (len(ref["losses"]), float.fromhex(ref["losses"][-1]))
        elif "losses" not in rec:
            losses = "failed: %s" % ("out of memory" if rec.get("oom_report") else rec.get("error", "exit %d" % rec["exit"]))
        else:
            losses = "identical" if rec["losses"] == ref["losses"] else "DIFFER"
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, gib(limit), rate if rate else "-", rel, "-" if nvml is None else "%.2f" % nvml,
            rec.get("spilled_blocks", "-"), gib(rec.get("spilled_peak_live")), gib(rec.get("spilled_peak_mapped")),
            losses))
    print()
    print("NVML overhead (context, kernel images) from the uncapped run: %s GiB" % gib(overhead))
    failed = 0
    for text, ok in checks:
        print("%s  %s" % ("ok  " if ok else "FAIL", text))
        failed += 0 if ok else 1
    print("torch_spill: %s" % ("passed" if failed == 0 else "%d check(s) FAILED" % failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
