"""A PyTorch program that runs out of GPU memory and goes on: what a training job does when a batch is
too large. It knows nothing of gpushim; tests/gpu/run_oom_check.py runs it under gpushim's memory cap
(GPUSHIM_LIMIT) and fault injection (GPUSHIM_FAIL) and checks what gpushim and the program report.

  torch_oom_app.py fill   holds 256 MiB "weights" and 32 MiB "activations" until torch raises
                          torch.cuda.OutOfMemoryError, catches it, frees half and computes on
  torch_oom_app.py big    allocates 64 MiB, then asks for one 1 GiB tensor, catches the
                          OutOfMemoryError if one comes, and computes on

Prints RESULT lines (RESULT <key> <value>); exit 77 where torch or a GPU is missing.
"""
import sys

SKIP = 77
MiB = 1 << 20

try:
    import torch
except Exception as error:  # ImportError, or a broken install
    print(f"torch not importable: skipped ({error})")
    sys.exit(SKIP)
if not torch.cuda.is_available():
    print("no GPU: skipped (torch.cuda.is_available() is False)")
    sys.exit(SKIP)


def hold_weights(held):
    held.append(torch.ones(256 * MiB, dtype=torch.uint8, device="cuda"))


def hold_activations(held):
    held.append(torch.ones(32 * MiB, dtype=torch.uint8, device="cuda"))


def fill():
    held = []
    raised = False
    try:
        for step in range(100000):
            if step % 3 == 0:
                hold_weights(held)
            else:
                hold_activations(held)
    except torch.cuda.OutOfMemoryError as error:
        raised = True
        print(f"RESULT message {str(error).splitlines()[0][:160]!r}")
    print(f"RESULT raised {raised}")
    print(f"RESULT held_mib {sum(t.numel() for t in held) // MiB}")
    del held[len(held) // 2:]
    torch.cuda.empty_cache()
    x = torch.ones(16 * MiB, device="cuda")
    print(f"RESULT continued {float(x.sum()) == 16 * MiB}")


def big():
    small = torch.ones(64 * MiB, dtype=torch.uint8, device="cuda")
    raised = False
    try:
        huge = torch.empty(1024 * MiB, dtype=torch.uint8, device="cuda")
        del huge
    except torch.cuda.OutOfMemoryError as error:
        raised = True
        print(f"RESULT message {str(error).splitlines()[0][:160]!r}")
    print(f"RESULT raised {raised}")
    after = torch.ones(MiB, device="cuda")
    print(f"RESULT continued {int(small.sum()) == 64 * MiB and float(after.sum()) == MiB}")


if __name__ == "__main__":
    {"fill": fill, "big": big}[sys.argv[1]]()
