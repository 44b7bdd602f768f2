"""CPU checks of bench/torch_spill.py's driver: the limits it derives from the uncapped run, the checks
it makes and the exit status, over a fake training run (no GPU, no torch). The fake prints what the
real worker and gpushim print, steered by the environment the driver gives each run.
Run: python3 bench/test_torch_spill.py  (stdlib unittest)."""

import contextlib
import io
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_spill  # noqa: E402

GIB = 1 << 30
FAKE_WORKER = r'''
import json, os, sys
limit = int(os.environ.get("GPUSHIM_LIMIT", "0"))
spill = os.environ.get("GPUSHIM_SPILL") == "host"
mode = os.environ.get("FAKE_MODE", "good")
peak = 4.0  # GiB live at the peak
losses = ["0x1.0p+0", "0x1.8p-1"]
if limit and not spill:
    sys.stderr.write("gpushim: out of memory on device 0 (backend tiered): requested 64.00 MiB\n")
    print(json.dumps({"config": "x", "error": "OutOfMemoryError: CUDA out of memory"}))
    sys.exit(1)
if spill and mode == "differ":
    losses = ["0x1.0p+0", "0x1.9p-1"]
context = 0.5
nvml = (limit / 2**30 if limit else peak) + context
if mode == "over" and spill:
    nvml += 1.0
print(json.dumps({"config": "x", "steps_per_s": 2.0 if spill else 4.0, "losses": losses,
                  "peak_nvml_process_gib_whole_run": nvml}))
sys.stderr.write("gpushim: device backend       allocs      frees     failed  bytes_allocated   peak_live  peak_reserved\n")
reserved = min(peak, limit / 2**30) if limit else peak
sys.stderr.write("gpushim:      0 tiered         100        100          0      9.00 GiB    %.2f GiB       %.2f GiB\n" % (peak, reserved))
if spill:
    sys.stderr.write("gpushim: device 0 spilled to host: 12 blocks, peak live 1.00 GiB, peak mapped 1.06 GiB, cap 6.00 GiB\n")
'''


class Driver(unittest.TestCase):
    def run_driver(self, mode):
        with tempfile.TemporaryDirectory() as tmp:
            worker = os.path.join(tmp, "fake_worker.py")
            with open(worker, "w") as f:
                f.write(FAKE_WORKER)
            lib = os.path.join(tmp, "libgpushim.so")
            open(lib, "w").close()
            os.environ["FAKE_MODE"] = mode
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = torch_spill.main(["--lib", lib, "--worker-script", worker, "--out", tmp])
            return rc, out.getvalue()

    def test_a_good_run_passes_and_prints_the_table(self):
        rc, out = self.run_driver("good")
        self.assertEqual(rc, 0, out)
        self.assertIn("| spill+25% | 3.20 |", out)  # 4 GiB / 1.25
        self.assertIn("| spill+50% | 2.67 |", out)  # 4 GiB / 1.5
        self.assertIn("| 0.50x |", out)
        self.assertIn("identical", out)
        self.assertIn("failed: out of memory", out)  # the control run
        self.assertIn("torch_spill: passed", out)

    def test_different_losses_fail(self):
        rc, out = self.run_driver("differ")
        self.assertEqual(rc, 1)
        self.assertIn("FAIL  peak 25% over the limit: losses identical to uncapped", out)
        self.assertIn("DIFFER", out)

    def test_device_memory_over_the_limit_fails(self):
        rc, out = self.run_driver("over")
        self.assertEqual(rc, 1)
        self.assertIn("FAIL  peak 50% over the limit: NVML peak", out)


if __name__ == "__main__":
    unittest.main()
