"""JAX with XLA's platform allocator (no BFC pool, no preallocation): every buffer is a cuMemAlloc. Seeded
matrix products and a reduction in full float32 precision, autotuning off so the same kernels are
chosen in every run; results must match with and without gpushim."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checksum import emit, skip  # noqa: E402

os.environ["XLA_PYTHON_CLIENT_ALLOCATOR"] = "platform"
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
# Autotuning times candidate kernels and may pick a different (numerically different) one in each run.
if "xla_gpu_autotune_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0").strip()

try:
    import numpy as np
    import jax
    import jax.numpy as jnp
except Exception as error:
    skip(f"jax not importable: skipped ({error})")
try:
    gpus = jax.devices("gpu")
except RuntimeError as error:
    skip(f"no GPU: skipped (jax: {error})")
if not gpus:
    skip("no GPU: skipped (jax sees no GPU)")

jax.config.update("jax_default_matmul_precision", "highest")  # float32, not TF32


@jax.jit
def step(a, b):
    c = jnp.maximum(a @ b, 0.0) @ a.T
    return c.sum(axis=1), jnp.tanh(c).mean()


rng = np.random.RandomState(11)
sums = []
for n in (256, 768, 2048):
    a = jax.device_put(rng.standard_normal((n, n)).astype(np.float32), gpus[0])
    b = jax.device_put(rng.standard_normal((n, n)).astype(np.float32), gpus[0])
    row_sums, mean = step(a, b)
    sums.append(np.asarray(row_sums, dtype=np.float64))
    sums.append(np.asarray([mean], dtype=np.float64))

stacked = np.concatenate(sums)
emit("matmul", float(stacked.sum()), stacked.tobytes())

big = jax.device_put(rng.standard_normal(16 << 20).astype(np.float32), gpus[0])  # 64 MiB
reduced = np.asarray(jnp.stack([big.sum(), (big * big).sum(), big.max()]), dtype=np.float64)
emit("reduction", float(reduced.sum()), reduced.tobytes())
print("jax_check: done", flush=True)
