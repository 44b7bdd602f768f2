"""torch.multiprocessing shares a CUDA tensor between two processes (CUDA IPC underneath:
cudaIpcGetMemHandle in the parent, cudaIpcOpenMemHandle in the child), with PyTorch's cache on (torch
shares only tensors of its own allocator); each of its segments is a cudaMalloc block, under gpushim a
gpushim block. The child checks the parent's
values, writes new ones in place, and the parent must see them. Also a view at an offset into the
storage, which torch sends as (handle of the storage, offset). Exit 0 pass, 1 fail, 77 skipped.
Run it with and without gpushim: tests/gpu_ecosystem.cmake."""
import os
import sys

# PyTorch's caching allocator stays on: torch can only share tensors it allocated through it
# (with PYTORCH_NO_CUDA_MEMORY_CACHING=1 it refuses: "invalid device pointer", seen on the H100). Its
# segments are cudaMalloc blocks, so under gpushim each segment is a gpushim block, exported by gpushim.
os.environ.pop("PYTORCH_NO_CUDA_MEMORY_CACHING", None)

try:
    import torch
    import torch.multiprocessing as mp
except Exception as error:  # ImportError, or a broken install
    print(f"torch not importable: skipped ({error})")
    sys.exit(77)

ELEMENTS = 1 << 20  # 4 MiB of float32: spans more than one 2 MiB granule


def child(queue, done):
    tensor, view = queue.get(timeout=60)
    expected = torch.arange(ELEMENTS, dtype=torch.float32, device=tensor.device)
    ok = torch.equal(tensor, expected) and torch.equal(view, expected[1000:3000])
    tensor.mul_(-1)  # in place, in the parent's memory
    torch.cuda.synchronize()
    done.put(bool(ok))
    del tensor, view


def main():
    if not torch.cuda.is_available():
        print("no GPU: skipped (torch.cuda.is_available() is False)")
        return 77
    ctx = mp.get_context("spawn")  # CUDA cannot survive fork
    queue, done = ctx.Queue(), ctx.Queue()
    process = ctx.Process(target=child, args=(queue, done))
    process.start()
    padding = torch.empty(1000, dtype=torch.uint8, device="cuda")  # the shared block starts mid-chunk
    tensor = torch.arange(ELEMENTS, dtype=torch.float32, device="cuda")
    view = tensor[1000:3000]
    torch.cuda.synchronize()
    # Pickle here first: Queue.put pickles in a feeder thread, where an error is only printed and the
    # child then waits forever (seen on the H100, with and without gpushim).
    from multiprocessing.reduction import ForkingPickler
    try:
        ForkingPickler.dumps((tensor, view))
    except Exception as error:
        print(f"torch_ipc_check: torch cannot share this CUDA tensor: {error!r}")
        process.kill()
        return 1
    queue.put((tensor, view))
    try:
        child_ok = done.get(timeout=90)
    except Exception:
        child_ok = False
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
    torch.cuda.synchronize()
    parent_ok = torch.equal(tensor, -torch.arange(ELEMENTS, dtype=torch.float32, device="cuda"))
    del padding
    print(f"torch_ipc_check: child saw the parent's values: {child_ok}; parent sees the child's writes: {parent_ok}; "
          f"child exit code {process.exitcode}")
    ok = child_ok and parent_ok and process.exitcode == 0
    print("torch_ipc_check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
