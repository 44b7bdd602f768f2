"""CuPy with its memory pool off (set_allocator(None)): every array is a cudaMalloc/cudaFree. Seeded
matrix products, FFTs and a reduction on varying shapes; results must match with and without gpushim."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checksum import emit, skip  # noqa: E402

try:
    import numpy as np
    import cupy
except Exception as error:
    skip(f"cupy not importable: skipped ({error})")
try:
    if cupy.cuda.runtime.getDeviceCount() == 0:
        skip("no GPU: skipped (cupy sees no device)")
except cupy.cuda.runtime.CUDARuntimeError as error:
    skip(f"no GPU: skipped ({error})")

cupy.cuda.set_allocator(None)  # no pool: straight to the driver's allocation entry points

rng = np.random.RandomState(7)
results = []
for n in (128, 384, 1024, 2048):
    a = cupy.asarray(rng.standard_normal((n, n)).astype(np.float32))
    b = cupy.asarray(rng.standard_normal((n, n)).astype(np.float32))
    c = a @ b
    spectrum = cupy.fft.rfft(c, axis=1)  # cuFFT plan workspace comes from the same allocator
    results.append(cupy.abs(spectrum).sum(axis=0).astype(cupy.float64))
    results.append(c.sum(axis=1).astype(cupy.float64))
    del a, b, c, spectrum

stacked = cupy.concatenate(results).get()
emit("matmul_fft", float(stacked.sum()), stacked.tobytes())

big = cupy.asarray(rng.standard_normal(16 << 20).astype(np.float32))  # 64 MiB
reduced = cupy.asarray([big.sum(), (big * big).sum(), big.max()]).astype(cupy.float64).get()
emit("reduction", float(reduced.sum()), reduced.tobytes())
cupy.cuda.Device().synchronize()
print("cupy_check: done", flush=True)
