"""When gpushim gives back memory a program stopped using: a phase of large blocks, then only small ones.

The program takes --blocks blocks of --block-mib MiB (cudaMalloc through PyTorch with its caching off, so
every tensor is one allocation of the allocator under test), frees them all, then for --seconds allocates
and frees 4 KiB tensors, as a program's next phase might. Every --every seconds it reads the memory the
process holds on the GPU as NVML sees it (bench/nvml_sampler.py): under gpushim, memory above
GPUSHIM_VMM_RELEASE_THRESHOLD (8 GiB) goes back once it stayed idle for GPUSHIM_VMM_RELEASE_DELAY (1 s);
the small frees never reach the arena, so it is the router's periodic ask (Allocator::release_idle) that
gives it back. Without gpushim and with PyTorch's caching off, cudaFree gives it back at once.
With --phase synchronize the next phase allocates nothing and only calls torch.cuda.synchronize() every
10 ms, as a program that waits on its GPU does: gpushim's idle checks then run at those context
synchronizations (router::after_context_synchronize), never at a stream's or an event's
(docs/perf-notes.md, thirty-second and thirty-third sessions).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD=build-gpu/lib/libgpushim.so python3 bench/idle_release.py

Prints one line: the label, then "seconds since the free: GiB held" pairs.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nvml_sampler import NvmlPeakSampler  # noqa: E402

GIB = float(1 << 30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default=os.environ.get("GPUSHIM_VMM_RELEASE_DELAY", "default"))
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--block-mib", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--every", type=float, default=0.25)
    parser.add_argument("--phase", choices=("small", "synchronize"), default="small",
                        help="after the free: 4 KiB tensors, or only synchronizations")
    args = parser.parse_args()
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
        print("idle_release.py: set PYTORCH_NO_CUDA_MEMORY_CACHING=1 (each tensor must be one cudaMalloc)",
              file=sys.stderr)
        return 2
    import torch

    nvml = NvmlPeakSampler()
    if not nvml.available:
        print("idle_release.py: NVML unavailable: %s" % nvml.error, file=sys.stderr)
        return 1
    torch.cuda.init()
    big = [torch.empty(args.block_mib << 20, dtype=torch.uint8, device="cuda") for _ in range(args.blocks)]
    torch.cuda.synchronize()
    held = nvml.process_used_bytes()
    del big
    freed_at = time.perf_counter()
    readings = [(0.0, nvml.process_used_bytes())]
    next_reading = args.every
    while True:
        elapsed = time.perf_counter() - freed_at
        if elapsed >= next_reading:
            readings.append((elapsed, nvml.process_used_bytes()))
            next_reading += args.every
            if elapsed >= args.seconds:
                break
        if args.phase == "synchronize":
            torch.cuda.synchronize()
            time.sleep(0.01)
            continue
        for _ in range(100):
            small = torch.empty(4096, dtype=torch.uint8, device="cuda")
            del small
    print("%-10s held %.1f GiB with the blocks; after the free: %s" % (
        args.label, held / GIB, ", ".join("%.2f s: %.1f" % (t, b / GIB) for t, b in readings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
