"""Macro benchmark: a PyTorch training loop whose allocation pattern changes every step.

nn.TransformerEncoder, 12 layers, d_model 1024, 16 heads, feed-forward 4096, batch-first, batch 16, AdamW,
fp32. The sequence length cycles through 128, 256, 384, 512, 192, 448, 320, 64, one step each, so every step
frees and requests activation blocks of a size the previous step did not use: the pattern that fragments a
caching allocator and that costs a raw cudaMalloc/cudaFree per tensor when PyTorch's cache is off.

The allocator under test is chosen from outside, by the environment (see bench/run_macro.sh):
PYTORCH_CUDA_ALLOC_CONF, PYTORCH_NO_CUDA_MEMORY_CACHING, LD_PRELOAD=libgpushim.so + GPUSHIM_BACKEND.
This program only names the configuration (--config) and measures.

Prints ONE JSON line on stdout (also on failure, with "error"). Everything else goes to stderr.
Every configuration computes the same thing from the same seeds, so `last_loss` must agree across them.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_record import describe_cuda_device, record_torch_memory  # noqa: E402
from workload_record import recorded_env, run_and_print_record  # noqa: E402

SEQ_CYCLE = (128, 256, 384, 512, 192, 448, 320, 64)
ENV_RECORDED = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
                "LD_PRELOAD", "GPUSHIM_BACKEND", "CUDA_VISIBLE_DEVICES")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.environ.get("BENCH_CONFIG", "unnamed"),
                   help="name of the configuration, copied into the JSON line")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ff", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.1,
                   help="nn.TransformerEncoderLayer's default; seeded, so still the same in every config")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a logic check without a GPU")
    p.add_argument("--sample-ms", type=float, default=5.0, help="NVML sampling interval (default 5 ms)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def run(args, record, sampler):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    record["torch_version"] = torch.__version__
    # fp32 matmuls are IEEE fp32 by default (no TF32). Left untouched on purpose: torch >= 2.9 raises if the
    # legacy allow_tf32 flags and the new fp32_precision API are mixed.

    dev = torch.device(args.device)
    on_cuda = dev.type == "cuda"
    if on_cuda:
        describe_cuda_device(torch, dev, record)

    # Weights are drawn on the CPU from the CPU generator: the same numbers whatever the GPU allocator.
    torch.manual_seed(args.seed)
    layer = nn.TransformerEncoderLayer(d_model=args.d_model, nhead=args.heads, dim_feedforward=args.ff,
                                       dropout=args.dropout, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=args.layers, enable_nested_tensor=False).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    record["parameters"] = sum(p.numel() for p in model.parameters())

    # Inputs come from their own generator on the device (cheap, no host copies); dropout uses the default
    # device generator, seeded above by manual_seed. Both advance identically in every configuration.
    data_gen = torch.Generator(device=dev)
    data_gen.manual_seed(args.seed + 1)

    def step(i):
        seq = SEQ_CYCLE[i % len(SEQ_CYCLE)]
        x = torch.randn(args.batch, seq, args.d_model, device=dev, generator=data_gen)
        target = torch.randn(args.batch, seq, args.d_model, device=dev, generator=data_gen)
        loss = F.mse_loss(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync():
        if on_cuda:
            torch.cuda.synchronize(dev)

    t_start = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    record["warmup_s"] = round(time.perf_counter() - t_start, 3)

    sampler.begin_timed()
    t0 = time.perf_counter()
    loss = None
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(i)
    sync()
    elapsed = time.perf_counter() - t0
    sampler.end_timed()

    last_loss = float(loss.item())
    record.update({
        "rate": round(args.steps / elapsed, 4),
        "rate_unit": "steps/s",
        "elapsed_s": round(elapsed, 4),
        "last_loss": last_loss,
        "result": last_loss,
        "result_name": "last_loss",
        "last_seq_len": SEQ_CYCLE[(args.warmup + args.steps - 1) % len(SEQ_CYCLE)],
    })
    record_torch_memory(torch, dev, record)


def main(argv=None):
    args = parse_args(argv)
    record = {
        "workload": "torch_transformer",
        "config": args.config,
        "pid": os.getpid(),
        "warmup": args.warmup,
        "steps": args.steps,
        "shape": {"layers": args.layers, "d_model": args.d_model, "heads": args.heads, "ff": args.ff,
                  "batch": args.batch, "seq_cycle": list(SEQ_CYCLE), "dropout": args.dropout},
        "env": recorded_env(ENV_RECORDED),
    }
    return run_and_print_record(run, args, record)


if __name__ == "__main__":
    sys.exit(main())
