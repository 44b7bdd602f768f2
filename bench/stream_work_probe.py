"""Which streams carry work in a PyTorch program that uses cuDNN (convolutions and cuDNN attention)?

Run under gpushim with GPUSHIM_LOG=debug GPUSHIM_STATS=1: the debug line "first work on a ... stream"
names the library that first queued work on a stream other than the legacy one (if any did), and the
statistics say how many frees waited for a fence. docs/free-safety.md records what this showed.
"""
import torch
import torch.nn.functional as F

torch.manual_seed(0)
dev = "cuda"
conv = torch.nn.Conv2d(16, 32, 3, padding=1).to(dev)
x = torch.randn(8, 16, 64, 64, device=dev, requires_grad=True)
for _ in range(5):  # cuDNN convolution, forward and backward
    y = conv(x).relu().sum()
    y.backward()
q = torch.randn(4, 16, 256, 64, device=dev, dtype=torch.float16)
backend = "default"
try:
    from torch.nn.attention import sdpa_kernel, SDPBackend
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for _ in range(5):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    backend = "cudnn"
except Exception as exc:  # the cuDNN backend may refuse these shapes
    backend = "refused: %s" % str(exc).splitlines()[0][:80]
torch.cuda.synchronize()
print("stream_work_probe: conv ok, sdpa %s, torch %s, cudnn %s" % (backend, torch.__version__,
                                                                   torch.backends.cudnn.version()))
