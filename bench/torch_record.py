"""What every PyTorch macro workload adds to its JSON line about the device and PyTorch's own allocator
(bench/torch_transformer.py, bench/torch_decode.py, bench/torch_cnn.py). torch is passed in, so this file
imports without it.
"""

import os

from nvml_sampler import GIB
from workload_record import first_line


def caching_allocator_on():
    return os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "") in ("", "0")


def describe_cuda_device(torch, dev, record):
    """Device name, PyTorch's allocator backend, and the device's UUID as CUDA sees it: the report checks
    it against the GPU the NVML sampler watched (bench/run_macro.sh --gpus pins each process to one)."""
    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    torch.cuda.init()
    record["device"] = torch.cuda.get_device_name(dev)
    try:
        record["allocator_backend"] = torch.cuda.memory.get_allocator_backend()
    except Exception:  # older torch: no such query
        record["allocator_backend"] = None
    try:
        uuid = str(torch.cuda.get_device_properties(dev).uuid)
        record["cuda_device_uuid"] = uuid if uuid.startswith("GPU-") else "GPU-" + uuid
    except Exception:  # older torch: no uuid property
        record["cuda_device_uuid"] = None


def record_torch_memory(torch, dev, record):
    """PyTorch's own peaks; with the cache off they say nothing of the device, so they stay None."""
    record["torch_max_reserved_gib"] = None
    record["torch_max_allocated_gib"] = None
    if dev.type == "cuda" and caching_allocator_on():
        try:
            record["torch_max_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / GIB, 4)
            record["torch_max_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / GIB, 4)
        except RuntimeError as exc:  # a backend without these counters
            record["torch_stats_error"] = first_line(exc)
