"""Macro benchmark: a CuPy loop of matrix products and FFTs on shapes that change every iteration.

One iteration ("op"): draw two n x n float32 matrices, multiply them (cuBLAS), take a 2-D real FFT of the
product and back (cuFFT), a 1-D complex FFT of a vector whose length is not a power of two, a few small
element-wise temporaries, and fold reductions of all of it into a float64 checksum on the device. n and the
vector length cycle through fixed lists, so consecutive iterations free and request blocks of new sizes.

The allocator is chosen by --allocator:
  pool   CuPy's default MemoryPool (its own caching allocator; the peer to beat)
  async  cupy.cuda.MemoryAsyncPool (cudaMallocAsync on the device's default pool; another peer)
  none   cupy.cuda.set_allocator(None): every array is a cudaMalloc/cudaFree. Under
         LD_PRELOAD=libgpushim.so those reach gpushim; without it they reach the driver.
Everything is seeded, so the checksum must agree across allocators.

Prints ONE JSON line on stdout (also on failure, with "error").
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nvml_sampler import GIB  # noqa: E402
from workload_record import recorded_env, run_and_print_record  # noqa: E402

MATRIX_CYCLE = (512, 1536, 1024, 3072, 768, 2048, 1280, 2560)
VECTOR_CYCLE = (100003, 1000003, 30011, 524309, 250007, 2000003, 65537, 750019)  # primes: Bluestein plans
SMALL_CYCLE = (1000, 4099, 257, 65536, 12345, 777, 31000, 2048)
ENV_RECORDED = ("LD_PRELOAD", "GPUSHIM_BACKEND", "CUDA_VISIBLE_DEVICES", "CUPY_TF32")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.environ.get("BENCH_CONFIG", "unnamed"))
    p.add_argument("--allocator", choices=("pool", "async", "none"), default="pool")
    p.add_argument("--warmup", type=int, default=2 * len(MATRIX_CYCLE),
                   help="untimed iterations; at least one cycle so every FFT plan exists (default %(default)s)")
    p.add_argument("--iters", type=int, default=2000, help="timed iterations (default %(default)s)")
    p.add_argument("--windows", type=int, default=8,
                   help="the timed iterations are cut into this many windows, each timed to a device "
                        "synchronize; the rate is the median window's (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-ms", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or not 1 <= args.windows <= args.iters:
        p.error("--iters must be >= 1, --warmup >= 0 and 1 <= --windows <= --iters")
    return args


def select_allocator(cupy, name):
    if name == "none":
        cupy.cuda.set_allocator(None)
    elif name == "async":
        cupy.cuda.set_allocator(cupy.cuda.MemoryAsyncPool().malloc)
    # "pool": leave CuPy's default MemoryPool in place


def run(args, record, sampler):
    import cupy

    record["cupy_version"] = cupy.__version__
    select_allocator(cupy, args.allocator)
    dev = cupy.cuda.Device(0)
    dev.use()
    record["device"] = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode(errors="replace")
    # Keep every plan of the cycle cached: plan creation would otherwise be timed (the default holds 16).
    cupy.fft.config.get_plan_cache().set_size(4 * len(MATRIX_CYCLE))

    rs = cupy.random.RandomState(args.seed)
    checksum = cupy.zeros((), dtype=cupy.float64)

    def iteration(i):
        nonlocal checksum
        n = MATRIX_CYCLE[i % len(MATRIX_CYCLE)]
        a = rs.standard_normal((n, n), dtype=cupy.float32)
        b = rs.standard_normal((n, n), dtype=cupy.float32) * (1.0 / n ** 0.5)
        c = a @ b
        spectrum = cupy.fft.rfft2(c)
        spectrum *= 0.5
        back = cupy.fft.irfft2(spectrum, s=c.shape)
        v = rs.standard_normal(VECTOR_CYCLE[i % len(VECTOR_CYCLE)], dtype=cupy.float32)
        fv = cupy.fft.fft(v.astype(cupy.complex64))
        small = cupy.arange(SMALL_CYCLE[i % len(SMALL_CYCLE)], dtype=cupy.float32)
        small = cupy.sin(small) * cupy.cos(small * 0.5) + 1.0
        checksum += (cupy.abs(back).mean(dtype=cupy.float64)
                     + cupy.abs(fv).mean(dtype=cupy.float64) * 1e-3
                     + small.sum(dtype=cupy.float64) * 1e-6)

    t_start = time.perf_counter()
    for i in range(args.warmup):
        iteration(i)
    dev.synchronize()
    record["warmup_s"] = round(time.perf_counter() - t_start, 3)

    # One timing over a ~1 s loop moved by up to +-30% between identical runs on the H100 (a stall of the
    # Python thread, the NVML sampler, clocks): the rate is the median of windows, each ended by a
    # device synchronize, so a stall costs one window and not the figure.
    sampler.begin_timed()
    window_rates = []
    t0 = time.perf_counter()
    first = args.warmup
    for w in range(args.windows):
        last = args.warmup + (w + 1) * args.iters // args.windows
        t_window = time.perf_counter()
        for i in range(first, last):
            iteration(i)
        dev.synchronize()
        window_rates.append((last - first) / (time.perf_counter() - t_window))
        first = last
    elapsed = time.perf_counter() - t0
    sampler.end_timed()

    value = float(checksum.get())
    ordered = sorted(window_rates)
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    record.update({
        "rate": round(median, 3),
        "rate_unit": "ops/s",
        "rate_whole_loop": round(args.iters / elapsed, 3),
        "window_rates": [round(r, 1) for r in window_rates],
        "elapsed_s": round(elapsed, 4),
        "checksum": value,
        "result": value,
        "result_name": "checksum",
    })
    if args.allocator == "pool":
        record["cupy_pool_total_gib"] = round(cupy.get_default_memory_pool().total_bytes() / GIB, 4)


def main(argv=None):
    args = parse_args(argv)
    record = {
        "workload": "cupy_loop",
        "config": args.config,
        "allocator": args.allocator,
        "pid": os.getpid(),
        "warmup": args.warmup,
        "iters": args.iters,
        "windows": args.windows,
        "env": recorded_env(ENV_RECORDED),
    }
    return run_and_print_record(run, args, record)


if __name__ == "__main__":
    sys.exit(main())
