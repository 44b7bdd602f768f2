"""CPU checks of the PyTorch workloads' parts that need no torch: argument parsing, the seeded schedules of
bench/torch_decode.py and bench/torch_cnn.py, and which GPU the NVML sampler watches.
Run: python3 bench/test_workload_schedules.py  (stdlib unittest; no GPU, torch or NVML needed)."""

import contextlib
import io
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvml_sampler  # noqa: E402
import torch_cnn  # noqa: E402
import torch_decode  # noqa: E402


def refused(parse, argv):
    """parse(argv) exits with argparse's usage error; returns its message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), unittest.TestCase().assertRaises(SystemExit) as cm:
        parse(argv)
    assert cm.exception.code == 2, cm.exception.code
    return err.getvalue()


class DecodeSchedule(unittest.TestCase):
    def test_same_seed_same_requests_other_seed_others(self):
        a = torch_decode.make_schedule(24, 0, 32, (64, 512), (32, 256))
        self.assertEqual(a, torch_decode.make_schedule(24, 0, 32, (64, 512), (32, 256)))
        self.assertNotEqual(a, torch_decode.make_schedule(24, 1, 32, (64, 512), (32, 256)))

    def test_every_cycle_has_every_batch_and_lengths_stay_in_range(self):
        reqs = torch_decode.make_schedule(24, 7, 32, (64, 512), (32, 256))
        n = len(torch_decode.BATCH_CYCLE)
        for start in range(0, 24, n):
            self.assertEqual(sorted(r.batch for r in reqs[start:start + n]), list(torch_decode.BATCH_CYCLE))
        self.assertTrue(all(64 <= r.prompt <= 512 and 32 <= r.gen <= 256 for r in reqs))
        self.assertGreater(len({r.prompt for r in reqs}), 12)  # lengths vary, not one repeated value
        self.assertGreater(len({r.gen for r in reqs}), 12)

    def test_max_batch_caps_the_batches(self):
        reqs = torch_decode.make_schedule(10, 0, 8, (2, 4), (1, 1))
        self.assertEqual({r.batch for r in reqs}, {1, 2, 4, 8})
        self.assertEqual({r.batch for r in torch_decode.make_schedule(3, 0, 3, (2, 4), (1, 1))}, {1, 2})

    def test_defaults_quick_and_overrides(self):
        full = torch_decode.parse_args([])
        self.assertEqual((full.requests, full.warmup, full.gen_max), (24, 2, 256))
        self.assertEqual((full.layers, full.width, full.heads, full.max_batch), (8, 2048, 16, 32))
        self.assertEqual((full.prefill_attention, full.decode_attention), ("cudnn", "flash"))
        quick = torch_decode.parse_args(["--quick", "--requests", "2"])
        self.assertEqual((quick.requests, quick.warmup, quick.gen_max), (2, 1, 48))
        warm, measured = torch_decode.schedules(full)
        self.assertEqual((len(warm), len(measured)), (2, 24))
        self.assertNotEqual(warm, measured[:2])  # the warm-up is its own draw

    def test_bad_sizes_are_refused(self):
        for argv in (["--requests", "0"], ["--prompt-min", "600"], ["--prompt-min", "1"],
                     ["--gen-min", "0"], ["--width", "2000"], ["--decode-attention", "fast"]):
            self.assertIn("error:", refused(torch_decode.parse_args, argv), argv)

    def test_record_names_the_schedule(self):
        args = torch_decode.parse_args(["--quick", "--config", "probe"])
        record = torch_decode.base_record(args)
        self.assertEqual(record["config"], "probe")
        self.assertEqual(record["requests"], [list(r) for r in torch_decode.schedules(args)[1]])
        self.assertEqual(record["attention_wanted"], {"prefill": "cudnn", "decode": "flash"})


class CnnSchedule(unittest.TestCase):
    def test_shapes_include_the_largest_and_cycles_visit_all(self):
        shapes, order = torch_cnn.make_schedule(40, 8, 0, 128, 224)
        self.assertEqual(len(shapes), 8)
        self.assertEqual(len(set(shapes)), 8)
        self.assertIn(torch_cnn.Shape(128, 224), shapes)
        for start in range(0, 40, 8):
            self.assertEqual(sorted(order[start:start + 8]), shapes)
        self.assertEqual((shapes, order), torch_cnn.make_schedule(40, 8, 0, 128, 224))
        self.assertNotEqual(order, torch_cnn.make_schedule(40, 8, 1, 128, 224)[1])

    def test_batch_and_size_both_vary(self):
        shapes, order = torch_cnn.make_schedule(16, 8, 3, 128, 224)
        self.assertGreater(len({s.batch for s in order}), 1)
        self.assertGreater(len({s.image for s in order}), 1)
        self.assertTrue(all(s.batch in torch_cnn.BATCHES and s.image in torch_cnn.IMAGE_SIZES for s in shapes))

    def test_maxima_limit_the_grid(self):
        shapes, _ = torch_cnn.make_schedule(5, 4, 0, 64, 128)
        self.assertEqual(sorted(shapes), torch_cnn.shape_grid(64, 128))
        self.assertTrue(all(s.batch <= 64 and s.image <= 128 for s in shapes))

    def test_defaults_quick_and_refusals(self):
        full = torch_cnn.parse_args([])
        self.assertEqual((full.steps, full.shapes, full.amp, full.nondeterministic), (240, 8, False, False))
        quick = torch_cnn.parse_args(["--quick"])
        self.assertEqual((quick.steps, quick.shapes, quick.max_batch, quick.max_image), (12, 3, 64, 128))
        for argv in (["--steps", "0"], ["--shapes", "21"], ["--max-batch", "16"], ["--max-image", "64"]):
            self.assertIn("error:", refused(torch_cnn.parse_args, argv), argv)


class NvmlDevice(unittest.TestCase):
    def test_uuid_in_cuda_visible_devices_is_followed(self):
        self.assertEqual(nvml_sampler.nvml_device_choice({"CUDA_VISIBLE_DEVICES": "GPU-1234-abcd,GPU-9"}),
                         ("uuid", "GPU-1234-abcd"))

    def test_index_unset_and_override(self):
        self.assertEqual(nvml_sampler.nvml_device_choice({}), ("index", 0))
        self.assertEqual(nvml_sampler.nvml_device_choice({"CUDA_VISIBLE_DEVICES": "3,1"}), ("index", 3))
        self.assertEqual(nvml_sampler.nvml_device_choice({"CUDA_VISIBLE_DEVICES": "GPU-x",
                                                          "BENCH_NVML_INDEX": "2"}), ("index", 2))

    def test_sampler_without_nvml_says_so(self):
        sampler = nvml_sampler.NvmlPeakSampler(interval_s=0.05)
        try:
            result = sampler.result(window="all")
            self.assertIn("nvml_device", result)
            if not sampler.available:
                self.assertIsNotNone(result["nvml_error"])
                self.assertEqual(result["nvml_source"], "unavailable")
        finally:
            sampler.stop()


if __name__ == "__main__":
    unittest.main()
