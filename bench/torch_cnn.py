"""Macro benchmark: a convolutional network trained on images whose batch and size change every step.

A ResNet-18-like network written here (no torchvision, no download): a 3x3 stride-2 stem, four stages of two
basic blocks (3x3 convolutions, batch norm, ReLU, a 1x1 projection where the shape changes) of width 64,
128, 256, 512, global average pooling and a linear classifier over 100 classes; SGD with momentum, cross
entropy on synthetic images and labels from a seeded device generator. Convolutions go through cuDNN
(torch.backends.cudnn.enabled = True) with benchmark = False, so cuDNN's heuristics pick each algorithm
(the same one in every run), and deterministic = True, so every configuration computes the same loss
bit for bit (--nondeterministic lifts it). Precision: fp32 (PyTorch's default lets cuDNN convolutions
use TF32 on Hopper), or bf16 autocast with --amp.

Each step's (batch, image size) comes from a seeded schedule: --shapes distinct shapes drawn from
BATCHES x IMAGE_SIZES, visited in a new seeded order every cycle. The warm-up runs every shape once (cuDNN
picks its algorithms per shape, once a process), then the measured steps run. Every step frees and asks for
activation blocks of sizes the previous step did not use, and cuDNN's handle (made at the first convolution)
creates a non-blocking stream: the two things this workload exists to cover.

The allocator under test is chosen from outside, by the environment (see bench/run_macro.sh); this program
only names the configuration (--config) and measures. Prints ONE JSON line on stdout (also on failure, with
"error"). Rate: images per second over the measured steps (their wall time between two synchronizations).
"""

import collections
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_record import describe_cuda_device, record_torch_memory  # noqa: E402
from workload_record import (apply_sizes, recorded_env, run_and_print_record,  # noqa: E402
                             sized_argument_parser)

ENV_RECORDED = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
                "LD_PRELOAD", "GPUSHIM_BACKEND", "GPUSHIM_FREE_FENCE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
BATCHES = (32, 64, 96, 128)
IMAGE_SIZES = (96, 128, 160, 192, 224)
STAGE_WIDTHS = (64, 128, 256, 512)

Shape = collections.namedtuple("Shape", "batch image")

# A full run is sized for ~15-25 s per process on an H100 or H200 including Python and CUDA start-up; --quick
# for a smoke test. Explicit options override either set.
FULL = {"steps": 240, "shapes": 8, "max_batch": 128, "max_image": 224}
QUICK = {"steps": 12, "shapes": 3, "max_batch": 64, "max_image": 128}


def parse_args(argv=None):
    p = sized_argument_parser(__doc__, QUICK)
    p.add_argument("--steps", type=int, help="measured steps (default %d)" % FULL["steps"])
    p.add_argument("--shapes", type=int, help="distinct (batch, image size) shapes (default %d)" % FULL["shapes"])
    p.add_argument("--max-batch", type=int, help="largest batch of %s (default %d)" % (BATCHES, FULL["max_batch"]))
    p.add_argument("--max-image", type=int,
                   help="largest image side of %s (default %d)" % (IMAGE_SIZES, FULL["max_image"]))
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--amp", action="store_true", help="bf16 autocast instead of fp32")
    p.add_argument("--nondeterministic", action="store_true",
                   help="torch.backends.cudnn.deterministic = False (faster algorithms allowed, loss may differ)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a logic check without a GPU")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if not shape_grid(args.max_batch, args.max_image):
        p.error("--max-batch must be >= %d and --max-image >= %d" % (BATCHES[0], IMAGE_SIZES[0]))
    if not 1 <= args.shapes <= len(shape_grid(args.max_batch, args.max_image)):
        p.error("--shapes must be 1..%d with these maxima" % len(shape_grid(args.max_batch, args.max_image)))
    return args


def shape_grid(max_batch, max_image):
    return [Shape(b, s) for b in BATCHES if b <= max_batch for s in IMAGE_SIZES if s <= max_image]


def make_schedule(steps, shapes, seed, max_batch, max_image):
    """(the distinct shapes, sorted; the measured steps' shapes): `shapes` shapes drawn from the grid, always
    including the largest (so every run's memory peak has the same cause), then `steps` steps that visit them
    cycle after cycle, each cycle in a new seeded order. The same for the same arguments."""
    rng = random.Random(seed)
    grid = shape_grid(max_batch, max_image)
    largest = max(grid, key=lambda s: s.batch * s.image * s.image)
    chosen = [largest] + rng.sample([s for s in grid if s != largest], shapes - 1)
    order, cycle = [], []
    while len(order) < steps:
        if not cycle:
            cycle = list(chosen)
            rng.shuffle(cycle)
        order.append(cycle.pop())
    return sorted(chosen), order


def build_model(nn, classes):
    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True),
                                      *conv_bn(cout, cout, 3, 1))
            self.skip = (nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout
                         else nn.Identity())
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    layers = [*conv_bn(3, STAGE_WIDTHS[0], 3, 2), nn.ReLU(inplace=True)]
    cin = STAGE_WIDTHS[0]
    for i, width in enumerate(STAGE_WIDTHS):
        layers += [Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def run(args, record, sampler):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    record["torch_version"] = torch.__version__
    dev = torch.device(args.device)
    on_cuda = dev.type == "cuda"
    if on_cuda:
        describe_cuda_device(torch, dev, record)
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = not args.nondeterministic
    record["cudnn_version"] = torch.backends.cudnn.version() if on_cuda else None

    # Weights from the CPU generator: the same numbers whatever the GPU allocator.
    torch.manual_seed(args.seed)
    model = build_model(nn, args.classes).to(dev)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    data_gen = torch.Generator(device=dev)
    data_gen.manual_seed(args.seed + 1)
    shapes, order = make_schedule(args.steps, args.shapes, args.seed, args.max_batch, args.max_image)

    def step(shape):
        x = torch.randn(shape.batch, 3, shape.image, shape.image, device=dev, generator=data_gen)
        y = torch.randint(0, args.classes, (shape.batch,), device=dev, generator=data_gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync():
        if on_cuda:
            torch.cuda.synchronize(dev)

    t_start = time.perf_counter()
    for shape in shapes:
        step(shape)
    sync()
    record["warmup_s"] = round(time.perf_counter() - t_start, 3)

    sampler.begin_timed()
    t0 = time.perf_counter()
    loss = None
    for shape in order:
        loss = step(shape)
    sync()
    elapsed = time.perf_counter() - t0
    sampler.end_timed()

    images = sum(s.batch for s in order)
    last_loss = float(loss.item())
    record.update({
        "rate": round(images / elapsed, 2),
        "rate_unit": "images/s",
        "steps_per_s": round(len(order) / elapsed, 3),
        "elapsed_s": round(elapsed, 4),
        "images": images,
        "last_loss": last_loss,
        "result": last_loss,
        "result_name": "last_loss",
    })
    record_torch_memory(torch, dev, record)


def main(argv=None):
    args = parse_args(argv)
    shapes, _ = make_schedule(args.steps, args.shapes, args.seed, args.max_batch, args.max_image)
    record = {
        "workload": "torch_cnn",
        "config": args.config,
        "pid": os.getpid(),
        "steps": args.steps,
        "shapes": [list(s) for s in shapes],
        "precision": "bf16 autocast" if args.amp else "fp32 (cuDNN convolutions may use TF32)",
        "cudnn_deterministic": not args.nondeterministic,
        "env": recorded_env(ENV_RECORDED),
    }
    return run_and_print_record(run, args, record)


if __name__ == "__main__":
    sys.exit(main())
