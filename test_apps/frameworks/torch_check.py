"""PyTorch with its caching allocator off: every tensor is a cuMemAlloc/cuMemFree, so under gpushim every
one goes through the backend. A few seeded training steps of a small MLP plus a large matrix product;
the results must be identical with and without gpushim (tests/gpu/run_framework_check.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checksum import emit, skip  # noqa: E402

# Before torch initialises CUDA: no caching (each tensor is its own driver allocation) and cuBLAS in its
# deterministic configuration.
os.environ["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

try:
    import torch
    import torch.nn.functional as F
except Exception as error:  # ImportError, or a broken install
    skip(f"torch not importable: skipped ({error})")
if not torch.cuda.is_available():
    skip("no GPU: skipped (torch.cuda.is_available() is False)")

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.use_deterministic_algorithms(True)
torch.manual_seed(1234)

device = torch.device("cuda")
# Inputs come from a CPU generator, so they do not depend on the device's random state.
generator = torch.Generator(device="cpu").manual_seed(2024)

model = torch.nn.Sequential(
    torch.nn.Linear(256, 1024), torch.nn.ReLU(),
    torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
    torch.nn.Linear(1024, 10),
).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

losses = []
for step in range(20):
    batch = 32 + 16 * (step % 5)  # varying shapes: varying allocation sizes
    x = torch.randn(batch, 256, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)  # gradients freed and reallocated every step
    loss.backward()
    optimizer.step()
    losses.append(loss.detach())

losses_cpu = torch.stack(losses).double().cpu()
emit("losses", losses_cpu.sum().item(), losses_cpu.numpy().tobytes())

params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
emit("parameters", params.double().sum().item(), params.numpy().tobytes())

# 64 MiB operands: large blocks too.
a = torch.randn(4096, 4096, generator=generator).to(device)
b = torch.randn(4096, 4096, generator=generator).to(device)
c = torch.relu(a @ b) @ a.T
row_sums = c.sum(dim=1).cpu()
emit("matmul", row_sums.double().sum().item(), row_sums.numpy().tobytes())
torch.cuda.synchronize()
print("torch_check: done", flush=True)
