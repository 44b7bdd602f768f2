"""Macro benchmark: LLM-style greedy decoding whose KV cache grows by torch.cat every token.

A decoder-only model in fp16: 8 layers of width 2048, 16 heads, feed-forward 4 x width, vocabulary 32000 with
a tied embedding, pre-norm layers without affine parameters; weights drawn on the device from a seeded
generator (random, so the tokens mean nothing; the memory traffic is a real model's). Requests of varying
batch (1..32), prompt length and generation length come from a seeded schedule. Every layer keeps its K and
V caches as (batch, length, heads, head_dim) tensors grown by torch.cat each token, never preallocated: each
token asks for a block slightly larger than one it frees a moment later, for every layer, at every batch.
Nothing synchronizes per token (the greedy token stays on the device), so the CPU runs ahead of the GPU by
up to the launch queue; one torch.cuda.synchronize() ends each request.

Attention is torch.nn.functional.scaled_dot_product_attention, the backend chosen per phase with
torch.nn.attention.sdpa_kernel. A probe at start-up runs each phase's shape with one backend allowed at a
time: the prompt (prefill) takes cuDNN attention when cuDNN accepts the shapes and dtype, else the first of
flash, efficient, math that does, and the JSON line says which ran and why another was refused. The generated
tokens (query length 1) take --decode-attention, flash by default: PyTorch caches cuDNN's attention plans by
exact shape, so under cuDNN every new key length (every token) builds a plan on the CPU, which would measure
cuDNN's planner instead of the allocator; `--decode-attention cudnn` measures that anyway. cuDNN's handle is
made in any case (cuDNN creates a non-blocking stream with it, which is what this workload exists to cover):
if no attention phase runs on cuDNN, one small cuDNN convolution makes it, and the JSON line says so.

The allocator under test is chosen from outside, by the environment (see bench/run_macro.sh); this program
only names the configuration (--config) and measures. Prints ONE JSON line on stdout (also on failure, with
"error"). Rate: generated tokens per second over the measured requests, after the warm-up. Every
configuration computes the same thing from the same seeds, so `result` (the sum of the log-probabilities of
the chosen tokens) must agree across them.
"""

import collections
import os
import random
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_record import describe_cuda_device, record_torch_memory  # noqa: E402
from workload_record import (apply_sizes, first_line, recorded_env, run_and_print_record,  # noqa: E402
                             sized_argument_parser)

ENV_RECORDED = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
                "LD_PRELOAD", "GPUSHIM_BACKEND", "GPUSHIM_FREE_FENCE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                "TORCH_CUDNN_SDPA_AVOID_RECOMPILE")
# Batches a request may have: each cycle of the schedule visits every one (those <= --max-batch) once, in a
# seeded order, so a short schedule still has the small and the large batches.
BATCH_CYCLE = (1, 2, 4, 8, 12, 16, 24, 32)
# Backends in the order a refused phase falls back to them; names as torch.nn.attention.SDPBackend has them.
SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}
FALLBACK_ORDER = ("flash", "efficient", "math")

Request = collections.namedtuple("Request", "batch prompt gen")

# A full run is sized for ~15-25 s per process on an H100 or H200 including Python and CUDA start-up; --quick
# for a smoke test. Explicit options override either set.
FULL = {"requests": 24, "warmup": 2, "prompt_min": 64, "prompt_max": 512, "gen_min": 32, "gen_max": 256}
QUICK = {"requests": 4, "warmup": 1, "prompt_min": 32, "prompt_max": 128, "gen_min": 16, "gen_max": 48}


def parse_args(argv=None):
    p = sized_argument_parser(__doc__, QUICK)
    p.add_argument("--requests", type=int, help="measured requests (default %d)" % FULL["requests"])
    p.add_argument("--warmup", type=int, help="untimed requests first (default %d)" % FULL["warmup"])
    p.add_argument("--prompt-min", type=int, help="shortest prompt (default %d)" % FULL["prompt_min"])
    p.add_argument("--prompt-max", type=int, help="longest prompt (default %d)" % FULL["prompt_max"])
    p.add_argument("--gen-min", type=int, help="fewest generated tokens (default %d)" % FULL["gen_min"])
    p.add_argument("--gen-max", type=int, help="most generated tokens (default %d)" % FULL["gen_max"])
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (default 32)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=2048, help="model width (default 2048)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prefill-attention", choices=sorted(SDPA_BACKENDS), default="cudnn",
                   help="backend wanted for the prompt; refused shapes fall back (default cudnn)")
    p.add_argument("--decode-attention", choices=sorted(SDPA_BACKENDS), default="flash",
                   help="backend wanted for generated tokens; refused shapes fall back (default flash)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", choices=("default", "side"), default="default",
                   help="where the work runs: the default (legacy) stream, or one side stream made for it, as "
                        "under `with torch.cuda.stream(s)` (default: default)")
    args = p.parse_args(argv)
    apply_sizes(args, FULL, QUICK)
    if args.requests < 1 or args.warmup < 0:
        p.error("--requests must be >= 1 and --warmup >= 0")
    if not (1 <= args.prompt_min <= args.prompt_max) or not (1 <= args.gen_min <= args.gen_max):
        p.error("need 1 <= --prompt-min <= --prompt-max and 1 <= --gen-min <= --gen-max")
    if args.prompt_min < 2:
        p.error("--prompt-min must be >= 2 (cuDNN attention refuses a key length of 1)")
    if args.max_batch < 1 or args.width % args.heads or (args.width // args.heads) % 8:
        p.error("need --max-batch >= 1 and a head size (--width / --heads) that is a multiple of 8")
    return args


def make_schedule(count, seed, max_batch, prompt_range, gen_range):
    """count requests, the same for the same arguments. Batches: cycles over BATCH_CYCLE (up to max_batch;
    max_batch itself when it is smaller than all of them), each cycle in a seeded order; prompt and generation
    lengths uniform in their inclusive ranges."""
    rng = random.Random(seed)
    batches = [b for b in BATCH_CYCLE if b <= max_batch] or [max_batch]
    out, cycle = [], []
    while len(out) < count:
        if not cycle:
            cycle = list(batches)
            rng.shuffle(cycle)
        out.append(Request(cycle.pop(), rng.randint(*prompt_range), rng.randint(*gen_range)))
    return out


def schedules(args):
    """(warm-up requests, measured requests): two different draws from the same ranges."""
    ranges = ((args.prompt_min, args.prompt_max), (args.gen_min, args.gen_max))
    warm = make_schedule(args.warmup, args.seed + 1000, args.max_batch, *ranges)
    measured = make_schedule(args.requests, args.seed, args.max_batch, *ranges)
    return warm, measured


def probe_attention(torch, F, wanted, q, k, v, causal):
    """The backend this phase runs with: `wanted` if it accepts these tensors, else the first of
    FALLBACK_ORDER that does. Returns (name, {refused name: why}); runs each candidate once."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    refused = {}
    for name in (wanted,) + tuple(n for n in FALLBACK_ORDER if n != wanted):
        backend = getattr(SDPBackend, SDPA_BACKENDS[name], None)
        if backend is None:
            refused[name] = "this torch has no SDPBackend.%s" % SDPA_BACKENDS[name]
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # PyTorch says why a backend is refused as warnings
            try:
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                torch.cuda.synchronize()
                return name, refused
            except RuntimeError as exc:
                # Every backend's reasons come out, the disabled ones' too: keep the lines that say
                # something about this one.
                said = [line.strip() for w in caught for line in str(w.message).splitlines()
                        if line.strip() and "disabled" not in line and not line.strip().endswith("because:")]
                refused[name] = (" | ".join(said) or first_line(exc))[:400]
    raise RuntimeError("no attention backend accepts these shapes: %s" % refused)


class Decoder:
    """The model and one request's forward passes. Weights live on the device in fp16."""

    def __init__(self, torch, args, dev):
        self.torch = torch
        self.F = torch.nn.functional
        self.dev = dev
        self.width, self.heads, self.head_dim = args.width, args.heads, args.width // args.heads
        gen = torch.Generator(device=dev)
        gen.manual_seed(args.seed)
        std = 0.02
        out_std = std / (2 * args.layers) ** 0.5  # residual branches scaled down, as GPT-2 does

        def weight(rows, cols, scale):
            return torch.empty(rows, cols, device=dev, dtype=torch.float16).normal_(0.0, scale, generator=gen)

        w, ff = args.width, 4 * args.width
        self.layers = [{"qkv": weight(3 * w, w, std), "out": weight(w, w, out_std),
                        "up": weight(ff, w, std), "down": weight(w, ff, out_std)} for _ in range(args.layers)]
        self.embed = weight(args.vocab, w, std)
        self.parameters = sum(t.numel() for layer in self.layers for t in layer.values()) + self.embed.numel()

    def forward(self, tokens, caches):
        """tokens: (batch, length) on the device. caches: one (K, V) per layer, or None before the prompt;
        replaced in place by the grown caches (the old ones are freed right there)."""
        F, torch = self.F, self.torch
        x = F.embedding(tokens, self.embed)
        b, s, _ = x.shape
        prefill = caches[0] is None
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, (self.width,))
            q, k, v = F.linear(h, layer["qkv"]).view(b, s, 3, self.heads, self.head_dim).unbind(2)
            if prefill:
                keys, values = k.contiguous(), v.contiguous()
            else:
                keys = torch.cat((caches[i][0], k), dim=1)
                values = torch.cat((caches[i][1], v), dim=1)
            caches[i] = (keys, values)
            # (b, s, heads, head_dim) tensors seen as (b, heads, s, head_dim): the layout cuDNN takes.
            a = F.scaled_dot_product_attention(q.contiguous().transpose(1, 2), keys.transpose(1, 2),
                                               values.transpose(1, 2), is_causal=prefill)
            x = x + F.linear(a.transpose(1, 2).reshape(b, s, self.width), layer["out"])
            h = F.layer_norm(x, (self.width,))
            x = x + F.linear(F.gelu(F.linear(h, layer["up"])), layer["down"])
        return x[:, -1]

    def pick(self, last):
        """Greedy next token (batch, 1) and the sum of its log-probabilities, both left on the device."""
        F = self.F
        logits = F.linear(F.layer_norm(last, (self.width,)), self.embed).float()
        token = logits.argmax(dim=-1, keepdim=True)
        logprob = F.log_softmax(logits, dim=-1).gather(1, token).sum(dtype=self.torch.float64)
        return token, logprob


def run(args, record, sampler):
    """Runs the workload on the stream --stream names. PyTorch makes its side streams non-blocking, so the
    side stream and cuDNN's handle stream are all that carries work (gpushim's solo, docs/free-safety.md)."""
    import contextlib
    import torch
    record["stream"] = args.stream
    on_stream = torch.cuda.stream(torch.cuda.Stream(torch.device("cuda"))) if args.stream == "side" \
        else contextlib.nullcontext()
    with on_stream:
        run_on_current_stream(args, record, sampler)


def run_on_current_stream(args, record, sampler):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    record["torch_version"] = torch.__version__
    dev = torch.device("cuda")
    describe_cuda_device(torch, dev, record)
    torch.backends.cudnn.enabled = True
    record["cudnn_version"] = torch.backends.cudnn.version()

    model = Decoder(torch, args, dev)
    record["parameters"] = model.parameters
    data_gen = torch.Generator(device=dev)
    data_gen.manual_seed(args.seed + 1)
    warm, measured = schedules(args)

    # The probe's shapes: a small batch, the shortest prompt, a cache one token longer for a decode step; the
    # layouts are those of Decoder.forward.
    hd, heads = model.head_dim, model.heads
    with torch.inference_mode():
        def bshd(length):
            return torch.zeros(2, length, heads, hd, device=dev, dtype=torch.float16).transpose(1, 2)
        prefill_name, prefill_refused = probe_attention(
            torch, F, args.prefill_attention, bshd(args.prompt_min), bshd(args.prompt_min),
            bshd(args.prompt_min), True)
        decode_name, decode_refused = probe_attention(
            torch, F, args.decode_attention, bshd(1), bshd(args.prompt_min + 1), bshd(args.prompt_min + 1), False)
        record["sdpa_backend_prefill"] = prefill_name
        record["sdpa_backend_decode"] = decode_name
        record["sdpa_refused"] = {"prefill": prefill_refused, "decode": decode_refused}
        if "cudnn" in (prefill_name, decode_name):
            record["cudnn_handle_made_by"] = "cuDNN attention (%s)" % (
                "prefill" if prefill_name == "cudnn" else "decode")
        else:
            # No attention phase on cuDNN: a convolution makes the handle, so the program still has cuDNN's
            # non-blocking stream.
            F.conv2d(torch.zeros(1, 8, 8, 8, device=dev), torch.zeros(8, 8, 3, 3, device=dev))
            torch.cuda.synchronize()
            record["cudnn_handle_made_by"] = "a 3x3 convolution (no attention phase on cuDNN)"
    prefill_backend = [getattr(SDPBackend, SDPA_BACKENDS[prefill_name])]
    decode_backend = [getattr(SDPBackend, SDPA_BACKENDS[decode_name])]

    def serve(req, totals):
        """One request: the prompt, then gen - 1 more tokens, nothing synchronized. totals: (logprob sum,
        token-id sum) device tensors, added to."""
        prompt = torch.randint(0, args.vocab, (req.batch, req.prompt), device=dev, generator=data_gen)
        caches = [None] * len(model.layers)
        with sdpa_kernel(prefill_backend):
            token, logprob = model.pick(model.forward(prompt, caches))
        totals[0].add_(logprob)
        totals[1].add_(token.sum())
        with sdpa_kernel(decode_backend):
            for _ in range(req.gen - 1):
                token, logprob = model.pick(model.forward(token, caches))
                totals[0].add_(logprob)
                totals[1].add_(token.sum())

    with torch.inference_mode():
        totals = [torch.zeros((), device=dev, dtype=torch.float64), torch.zeros((), device=dev, dtype=torch.int64)]
        t_start = time.perf_counter()
        # Every prompt shape of the measured requests once: cuDNN plans its attention per exact shape, and
        # a plan is built once per process; the measured requests then run with their plans made.
        for batch, length in sorted({(r.batch, r.prompt) for r in measured}):
            with sdpa_kernel(prefill_backend):
                model.forward(torch.zeros(batch, length, device=dev, dtype=torch.long), [None] * len(model.layers))
        for req in warm:
            serve(req, totals)
        torch.cuda.synchronize(dev)
        record["warmup_s"] = round(time.perf_counter() - t_start, 3)

        totals = [torch.zeros((), device=dev, dtype=torch.float64), torch.zeros((), device=dev, dtype=torch.int64)]
        request_s = []
        sampler.begin_timed()
        t0 = time.perf_counter()
        for req in measured:
            t_req = time.perf_counter()
            serve(req, totals)
            torch.cuda.synchronize(dev)
            request_s.append(round(time.perf_counter() - t_req, 4))
        elapsed = time.perf_counter() - t0
        sampler.end_timed()

    tokens = sum(r.batch * r.gen for r in measured)
    logprob_sum = float(totals[0].item())
    record.update({
        "rate": round(tokens / elapsed, 2),
        "rate_unit": "tokens/s",
        "elapsed_s": round(elapsed, 4),
        "generated_tokens": tokens,
        "prompt_tokens": sum(r.batch * r.prompt for r in measured),
        "request_s": request_s,
        "result": logprob_sum,
        "result_name": "sum of the chosen tokens' log-probabilities",
        "token_id_sum": int(totals[1].item()),
    })
    record_torch_memory(torch, dev, record)


def base_record(args):
    """What the JSON line says before anything runs: the configuration, the schedule, the model's shape."""
    warm, measured = schedules(args)
    return {
        "workload": "torch_decode",
        "config": args.config,
        "pid": os.getpid(),
        "warmup_requests": [list(r) for r in warm],
        "requests": [list(r) for r in measured],
        "shape": {"layers": args.layers, "width": args.width, "heads": args.heads, "ff": 4 * args.width,
                  "vocab": args.vocab, "dtype": "float16", "max_batch": args.max_batch},
        "attention_wanted": {"prefill": args.prefill_attention, "decode": args.decode_attention},
        "env": recorded_env(ENV_RECORDED),
    }


def main(argv=None):
    args = parse_args(argv)
    return run_and_print_record(run, args, base_record(args))


if __name__ == "__main__":
    sys.exit(main())
