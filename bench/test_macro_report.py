"""CPU checks of the macro report: the GPUSHIM_STATS parser, the flags a row gets, the rows of runs
with several passes (run_macro.sh --repeat N), the free-safety table, and run_macro.sh's GPU rotation
(--gpus N, read from --dry-run).
Run: python3 bench/test_macro_report.py  (stdlib unittest; no GPU, torch or cupy needed)."""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macro_report  # noqa: E402

STATS = """some program output
gpushim: device backend       allocs      frees     failed  bytes_allocated   peak_live  peak_reserved
gpushim:      0 vmm             1234       1230          0        1.50 GiB    1.20 GiB       1.50 GiB
gpushim: warn: something else entirely
"""


class StatsParser(unittest.TestCase):
    def test_reads_the_documented_format(self):
        rows = macro_report.parse_gpushim_stats(STATS)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["backend"], "vmm")
        self.assertEqual(rows[0]["allocs"], 1234)
        self.assertEqual(rows[0]["frees"], 1230)
        self.assertAlmostEqual(rows[0]["peak_reserved_gib"], 1.5)
        self.assertAlmostEqual(rows[0]["peak_live_gib"], 1.2)

    def test_mib_converts_to_gib(self):
        rows = macro_report.parse_gpushim_stats(
            "gpushim:      1 slab 5 5 0 512.00 MiB 256.00 MiB 512.00 MiB\n")
        self.assertEqual(rows[0]["device"], 1)
        self.assertAlmostEqual(rows[0]["peak_reserved_gib"], 0.5)


class RowFlags(unittest.TestCase):
    base = {"config": "default", "rate": 8.0, "result": 1.0, "nvml_source": "process"}

    def test_clean_row_has_no_flags(self):
        rec = {"config": "gpushim-vmm", "rate": 8.0, "result": 1.0 + 1e-6, "nvml_source": "process",
               "gpushim_backend_requested": "vmm", "gpushim_stats": macro_report.parse_gpushim_stats(STATS)}
        self.assertEqual(macro_report.checks(rec, self.base, 1e-4), [])

    def test_loss_mismatch_and_nan_are_flagged(self):
        for value in (1.01, float("nan")):
            flags = macro_report.checks(dict(self.base, config="x", result=value), self.base, 1e-4)
            self.assertTrue(any("RESULT DIFFERS" in f for f in flags), flags)

    def test_preload_that_served_nothing_is_flagged(self):
        rec = dict(self.base, config="gpushim-tiered", gpushim_backend_requested="tiered", gpushim_stats=[])
        self.assertIn("no GPUSHIM_STATS table (gpushim not loaded?)", macro_report.checks(rec, self.base, 1e-4))
        rec["gpushim_stats"] = macro_report.parse_gpushim_stats(STATS.replace("1234", "0"))
        flags = macro_report.checks(rec, self.base, 1e-4)
        self.assertTrue(any("NOT INTERCEPTED" in f for f in flags), flags)
        self.assertTrue(any("vmm served, tiered requested" in f for f in flags), flags)


class Folder(unittest.TestCase):
    def test_missing_json_becomes_an_error_row(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "torch-plan.tsv"), "w") as f:
                f.write("default\tPyTorch caching allocator\ngpushim-tiered\tpreloaded\n")
            with open(os.path.join(d, "torch-default.json"), "w") as f:
                f.write(json.dumps(dict(self.base_record(), config="default")) + "\n")
            with open(os.path.join(d, "torch-default.status"), "w") as f:
                f.write("0 20.5\n")
            with open(os.path.join(d, "torch-gpushim-tiered.status"), "w") as f:
                f.write("124 240.0\n")
            records = macro_report.load_workload(d, "torch")
            self.assertEqual([r["config"] for r in records], ["default", "gpushim-tiered"])
            self.assertEqual(records[0]["wall_s"], 20.5)
            self.assertIn("timed out", records[1]["error"])
            self.assertEqual(macro_report.main([d]), 0)
            self.assertTrue(os.path.exists(os.path.join(d, "torch.jsonl")))

    @staticmethod
    def base_record():
        return {"rate": 8.0, "result": 1.0, "peak_nvml_gib": 9.0, "nvml_source": "process"}


def write(folder, name, text):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def make_folder(folder, workload, configs, repeat=None):
    """A results folder as run_macro.sh leaves it. configs: [(name, how, [pass, ...])], a pass being
    (status line, JSON record or None, stderr); pass k > 1 goes to W-<name>.r<k>.*."""
    meta = {"device": "FakeGPU driver 1", "date": "2026-01-01 00:00 UTC", "commit": "abc1234", "command": "x"}
    if repeat is not None:
        meta["repeat"] = repeat
    write(folder, "meta.json", json.dumps(meta) + "\n")
    plan = ""
    for name, how, passes in configs:
        plan += "%s\t%s\n" % (name, how)
        for k, (status, record, stderr) in enumerate(passes, 1):
            base = "%s-%s%s" % (workload, name, "" if k == 1 else ".r%d" % k)
            write(folder, base + ".status", status + "\n")
            write(folder, base + ".json", "" if record is None else json.dumps(record) + "\n")
            write(folder, base + ".stderr", stderr)
    write(folder, workload + "-plan.tsv", plan)


def clean(rate, peak, result=1.0, stats=None, **extra):
    """A pass that finished: exit 0 and a JSON line; stats=(backend, peak reserved GiB) adds a stats table."""
    record = dict({"rate": rate, "result": result, "peak_nvml_gib": peak, "nvml_source": "process"}, **extra)
    stderr = "gpushim:      0 %s 36386 36386 0 100.00 GiB 9.00 GiB %.2f GiB\n" % stats if stats else ""
    return ("0 10.0", record, stderr)


CRASHED = ("1 3.0", None, "Traceback (most recent call last):\nRuntimeError: boom\n")


def report(folder):
    """main()'s printed tables."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = macro_report.main([folder])
    assert code == 0
    return buf.getvalue()


def row(text, config):
    """The cells of a config's table row."""
    line = next(l for l in text.splitlines() if l.startswith("| %s |" % config))
    return [c.strip() for c in line.strip("|").split("|")]


# The tables of a one-pass run, as macro_report.py printed them before --repeat existed (its HEAD version
# on the folder of OnePass below): a run without --repeat must read exactly the same. The one addition since:
# the torch workload's free-safety table after its target lines.
ONE_PASS_EXPECTED = """## Macro benchmarks

device: FakeGPU driver 1; date: 2026-01-01 00:00 UTC; commit: abc1234
command: `x`

### PyTorch transformer training (bench/torch_transformer.py)

| config | steps/s | ratio to default | peak GiB (NVML) | framework reserved GiB | gpushim allocs | gpushim peak reserved GiB | last loss | check |
|---|---:|---:|---:|---:|---:|---:|---:|---|
| default | 8.50 | 1.000 | 13.40 | 12.70 | - | - | 1.98 | ok |
| expandable | 8.40 | 0.988 | 10.60 | - | - | - | 1.98 | ok |
| gpushim-tiered | 8.60 | 1.012 | 10.50 | - | 36386 | 9.95 | 1.98 | ok |
| gpushim-vmm | - | - | - | - | - | - | - | ERROR: timed out, no JSON line: RuntimeError: stuck |

- `default`: PyTorch caching allocator
- `expandable`: expandable_segments:True
- `gpushim-tiered`: preloaded tiered
- `gpushim-vmm`: preloaded vmm

- speed: gpushim-tiered / default = 1.012 (target >= 1.00): MET
- memory: gpushim-tiered peak 10.50 GiB vs expandable 10.60 GiB (target <=): MET

Free-safety targets (peers: default, expandable, mallocasync):

| config | steps/s (median) | min-max | passes | peak GiB (NVML, max) | vs fastest peer | targets | check |
|---|---:|---:|---:|---:|---:|---|---|
| default | 8.50 | 8.50-8.50 | 1 | 13.40 | 1.000 | - | ok |
| expandable | 8.40 | 8.40-8.40 | 1 | 10.60 | 0.988 | - | ok |
| gpushim-tiered | 8.60 | 8.60-8.60 | 1 | 10.50 | 1.012 | mem MET, speed MET | ok |
| gpushim-vmm | - | - | 0 of 1 | - | - | - | ERROR: timed out, no JSON line: RuntimeError: stuck |

fastest peer: default, 8.50 steps/s. targets (gpushim rows): peak <= expandable's, rate >= 0.98x the fastest peer's.

### CuPy FFT + matmul loop (bench/cupy_loop.py)

| config | ops/s | ratio to pool | peak GiB (NVML) | framework reserved GiB | gpushim allocs | gpushim peak reserved GiB | checksum | check |
|---|---:|---:|---:|---:|---:|---:|---:|---|
| pool | 1000.00 | 1.000 | 5.00 | 4.20 | - | - | 123.5 | ok |
| gpushim-tiered | 950.00 | 0.950 | 4.50 | - | 36386 | 4.00 | 123.5 | ok |

- `pool`: CuPy pool
- `gpushim-tiered`: preloaded tiered

- speed: gpushim-tiered / pool = 0.950 (target >= 1.00): MISSED by 5.0%
- memory: gpushim-tiered peak 4.50 GiB vs pool 5.00 GiB (target <=): MET

"""


class OnePass(unittest.TestCase):
    def make(self, folder, repeat):
        make_folder(folder, "torch", [
            ("default", "PyTorch caching allocator", [clean(8.5, 13.4, 1.98, torch_max_reserved_gib=12.7)]),
            ("expandable", "expandable_segments:True", [clean(8.4, 10.6, 1.98)]),
            ("gpushim-tiered", "preloaded tiered", [clean(8.6, 10.5, 1.98, stats=("tiered", 9.95))]),
            ("gpushim-vmm", "preloaded vmm", [("124 240.0", None, "Traceback\nRuntimeError: stuck\n")]),
        ], repeat)
        make_folder(folder, "cupy", [
            ("pool", "CuPy pool", [clean(1000.0, 5.0, 123.5, cupy_pool_total_gib=4.2)]),
            ("gpushim-tiered", "preloaded tiered", [clean(950.0, 4.5, 123.5, stats=("tiered", 4.0))]),
        ], repeat)

    def test_output_is_unchanged_without_repeat(self):
        for repeat in (None, 1):  # a folder from before --repeat, and one from --repeat 1
            with tempfile.TemporaryDirectory() as d:
                self.make(d, repeat)
                self.assertEqual(report(d), ONE_PASS_EXPECTED)
                with open(os.path.join(d, "cupy.jsonl")) as f:
                    first = json.loads(f.readline())
                self.assertNotIn("passes", first)
                self.assertEqual(first["rate"], 1000.0)


class ThreePasses(unittest.TestCase):
    def make(self, folder):
        make_folder(folder, "cupy", [
            ("pool", "CuPy pool", [clean(757.0, 5.0, 123.5), clean(1271.0, 5.3, 123.5),
                                   clean(1000.0, 4.9, 123.5)]),
            ("gpushim-tiered", "preloaded tiered", [clean(1110.0, 4.5, 123.5, stats=("tiered", 4.0)),
                                                    clean(822.0, 4.8, 123.5, stats=("tiered", 4.2)),
                                                    clean(1050.0, 4.6, 123.5, stats=("tiered", 4.1))]),
            ("gpushim-vmm", "preloaded vmm", [clean(900.0, 4.0, 123.5, stats=("vmm", 3.0)), CRASHED,
                                              clean(1300.0, 9.0, 123.5, stats=("vmm", 3.5))]),
        ], repeat=3)

    def test_median_range_and_passes(self):
        with tempfile.TemporaryDirectory() as d:
            self.make(d)
            text = report(d)
            self.assertIn("| config | ops/s (median) | range of passes | passes | ratio to pool |", text)
            # config, median, range, passes, ratio, peak (max), reserved, allocs, shim peak (max), result, check
            self.assertEqual(row(text, "pool")[:6], ["pool", "1000.00", "757.00-1271.00", "3", "1.000", "5.30"])
            self.assertEqual(row(text, "pool")[-1], "ok")
            tiered = row(text, "gpushim-tiered")
            self.assertEqual(tiered[:6], ["gpushim-tiered", "1050.00", "822.00-1110.00", "3", "1.050", "4.80"])
            self.assertEqual(tiered[7:9], ["36386", "4.20"])
            self.assertEqual(tiered[-1], "ok")
            self.assertIn("max over passes", text)
            # the target line from the medians, saying so
            self.assertIn("- speed: gpushim-tiered / pool = 1.050 (median of 3 passes, pass ranges overlap, "
                          "target >= 1.00): MET", text)
            self.assertIn("- memory: gpushim-tiered peak 4.80 GiB vs pool 5.30 GiB (max over passes, "
                          "target <=): MET", text)

    def test_failed_pass_is_excluded_and_flagged(self):
        with tempfile.TemporaryDirectory() as d:
            self.make(d)
            vmm = row(report(d), "gpushim-vmm")
            # median of 900 and 1300 (the crashed pass 2 left out), not of three values
            self.assertEqual(vmm[:6], ["gpushim-vmm", "1100.00", "900.00-1300.00", "2 of 3", "1.100", "9.00"])
            self.assertIn("pass 2 EXCLUDED from median: ERROR: exit 1, no JSON line: RuntimeError: boom", vmm[-1])
            records = macro_report.load_workload(d, "cupy")
            self.assertEqual(records[2]["pass_rates"], [900.0, None, 1300.0])
            self.assertEqual(len(records[2]["passes"]), 3)

    def test_pass_with_rate_but_bad_exit_is_excluded(self):
        with tempfile.TemporaryDirectory() as d:
            status, record, stderr = clean(5000.0, 4.0, 123.5)
            make_folder(d, "cupy", [("pool", "CuPy pool", [clean(1000.0, 5.0, 123.5), ("1 3.0", record, stderr),
                                                           clean(1200.0, 5.0, 123.5)])], repeat=3)
            pool = row(report(d), "pool")
            self.assertEqual(pool[1:4], ["1100.00", "1000.00-1200.00", "2 of 3"])
            self.assertIn("pass 2 EXCLUDED from median: exit code 1", pool[-1])

    def test_flag_of_one_pass_names_the_pass(self):
        with tempfile.TemporaryDirectory() as d:
            make_folder(d, "cupy", [
                ("pool", "CuPy pool", [clean(1000.0, 5.0, 123.5)] * 3),
                ("gpushim-tiered", "t", [clean(1000.0, 5.0, 123.5, stats=("tiered", 4.0)),
                                         clean(1000.0, 5.0, 124.0, stats=("tiered", 4.0)),
                                         clean(1000.0, 5.0, 123.5, stats=("vmm", 4.0))]),
            ], repeat=3)
            check = row(report(d), "gpushim-tiered")[-1]
            self.assertIn("RESULT DIFFERS from pool (rel 4.0e-03) (pass 2)", check)
            self.assertIn("backend vmm served, tiered requested (pass 3)", check)

    def test_missing_pass_files_count_as_not_run(self):
        # meta.json asked for 3 passes; the run stopped after pass 2 of this config
        with tempfile.TemporaryDirectory() as d:
            make_folder(d, "cupy", [("pool", "CuPy pool", [clean(1000.0, 5.0), clean(1200.0, 5.0)])], repeat=3)
            pool = row(report(d), "pool")
            self.assertEqual(pool[1:4], ["1100.00", "1000.00-1200.00", "2 of 3"])
            self.assertIn("pass 3 EXCLUDED from median: ERROR: not run (no status file)", pool[-1])

    def test_passes_found_without_meta_repeat(self):
        # a folder whose meta.json lacks "repeat": the .rK files alone say how many passes ran
        with tempfile.TemporaryDirectory() as d:
            make_folder(d, "cupy", [("pool", "CuPy pool", [clean(1.0, 5.0), clean(3.0, 5.0), clean(2.0, 5.0)])])
            self.assertEqual(row(report(d), "pool")[1:4], ["2.00", "1.00-3.00", "3"])


class FreeSafetyTable(unittest.TestCase):
    """decode and cnn: the compact table is their only one; rate vs the fastest peer, targets per gpushim row."""

    def make(self, folder):
        decode = dict(sdpa_backend_prefill="cudnn", sdpa_backend_decode="flash",
                      cudnn_handle_made_by="cuDNN attention (prefill)")
        make_folder(folder, "decode", [
            ("default", "caching", [clean(1000.0, 4.1, -5.0, **decode), clean(1040.0, 4.0, -5.0, **decode),
                                    clean(980.0, 4.2, -5.0, **decode)]),
            ("expandable", "expandable", [clean(1010.0, 3.3, -5.0, **decode), clean(990.0, 3.4, -5.0, **decode),
                                          clean(1000.0, 3.3, -5.0, **decode)]),
            # the fastest peer: median 1050
            ("mallocasync", "async", [clean(1050.0, 3.5, -5.0, **decode), clean(1060.0, 3.4, -5.0, **decode),
                                      clean(1020.0, 3.5, -5.0, **decode)]),
            # median 1040 = 0.990 of 1050, peak max 3.30 <= expandable's max 3.40: both met
            ("gpushim-tiered", "t", [clean(1040.0, 3.2, -5.0, stats=("tiered", 3.0), **decode),
                                     clean(1045.0, 3.3, -5.0, stats=("tiered", 3.0), **decode),
                                     clean(1000.0, 3.1, -5.0, stats=("tiered", 3.0), **decode)]),
            # median of the two clean passes 1000 = 0.952, peak 3.50 > 3.40: both missed; pass 2 crashed
            ("gpushim-vmm", "v", [clean(990.0, 3.5, -5.0, stats=("vmm", 3.0), **decode), CRASHED,
                                  clean(1010.0, 3.45, -5.0, stats=("vmm", 3.0), **decode)]),
        ], repeat=3)

    def test_columns_and_targets(self):
        with tempfile.TemporaryDirectory() as d:
            self.make(d)
            text = report(d)
            self.assertIn("### PyTorch LLM decoding", text)
            self.assertIn("| config | tokens/s (median) | min-max | passes | peak GiB (NVML, max) | "
                          "vs fastest peer | targets | check |", text)
            self.assertEqual(row(text, "default")[:7], ["default", "1000.00", "980.00-1040.00", "3", "4.20",
                                                         "0.952", "-"])
            self.assertEqual(row(text, "mallocasync")[:6],
                             ["mallocasync", "1050.00", "1020.00-1060.00", "3", "3.50", "1.000"])
            self.assertEqual(row(text, "gpushim-tiered")[:8],
                             ["gpushim-tiered", "1040.00", "1000.00-1045.00", "3", "3.30", "0.990",
                              "mem MET, speed MET", "ok"])
            vmm = row(text, "gpushim-vmm")
            self.assertEqual(vmm[:7], ["gpushim-vmm", "1000.00", "990.00-1010.00", "2 of 3", "3.50", "0.952",
                                       "mem MISSED (+0.10 GiB), speed MISSED (0.952)"])
            self.assertIn("pass 2 EXCLUDED from median", vmm[7])
            self.assertIn("fastest peer: mallocasync, 1050.00 tokens/s", text)
            self.assertIn("attention: prefill cudnn, decode flash; cuDNN handle made by cuDNN attention (prefill)",
                          text)
            # the old-style table is not printed for decode
            self.assertNotIn("ratio to default", text)

    def test_speed_exactly_at_the_target_is_met(self):
        fastest = {"config": "default", "rate": 100.0}
        rec = {"config": "gpushim-tiered", "rate": 98.0, "peak_nvml_gib": 2.0}
        peer = {"config": "expandable", "rate": 90.0, "peak_nvml_gib": 2.0}
        self.assertEqual(macro_report.target_cell(rec, fastest, peer), "mem MET, speed MET")
        rec["rate"] = 97.9
        self.assertEqual(macro_report.target_cell(rec, fastest, peer), "mem MET, speed MISSED (0.979)")
        self.assertEqual(macro_report.target_cell(dict(rec, config="expandable"), fastest, peer), "-")
        self.assertEqual(macro_report.target_cell(rec, fastest, None), "mem ?, speed MISSED (0.979)")

    def test_result_disagreement_is_flagged_against_default(self):
        with tempfile.TemporaryDirectory() as d:
            make_folder(d, "cnn", [("default", "caching", [clean(500.0, 9.0, 4.6)]),
                                   ("gpushim-tiered", "t", [clean(500.0, 8.0, 4.7, stats=("tiered", 7.0))])])
            tiered = row(report(d), "gpushim-tiered")
            self.assertEqual(tiered[:3], ["gpushim-tiered", "500.00", "500.00-500.00"])
            self.assertIn("RESULT DIFFERS from default", tiered[-1])
            self.assertIn("mem ?", tiered[-2])  # no expandable row to compare with

    def test_gpu_mismatch_between_cuda_and_nvml_is_flagged(self):
        rec = {"config": "default", "rate": 1.0, "nvml_source": "process",
               "cuda_device_uuid": "GPU-aaaa", "nvml_device_uuid": "GPU-bbbb"}
        self.assertIn("NVML watched GPU-bbbb, CUDA ran on GPU-aaaa", macro_report.checks(rec, None, 1e-4))
        rec["nvml_device_uuid"] = "GPU-AAAA"
        self.assertEqual(macro_report.checks(rec, None, 1e-4), [])


RUN_MACRO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_macro.sh")


def dry_run(*args):
    """run_macro.sh --dry-run's plan: [(pass, gpu, workload, config)], in queue order. A dry run asks
    nothing of the machine, so this reads the same with or without GPUs."""
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(["bash", RUN_MACRO, "--dry-run", "--lib", "/nonexistent/libgpushim.so"] + list(args),
                         env=env, capture_output=True, text=True, check=True).stdout
    plan = []
    for line in out.splitlines():
        words = line.split()
        assert words[0] == "pass" and words[2] == "gpu", line
        plan.append((int(words[1]), int(words[3]), words[4], words[5].rstrip(":")))
    return plan


class GpuRotation(unittest.TestCase):
    CONFIGS = "default expandable mallocasync gpushim-tiered gpushim-vmm"

    def test_lane_is_config_index_plus_pass_mod_gpus(self):
        plan = dry_run("--only", "decode", "--configs", self.CONFIGS, "--repeat", "3", "--gpus", "4")
        self.assertEqual(len(plan), 15)
        order = [c for k, _, _, c in plan if k == 1]
        self.assertEqual(order, ["default", "expandable", "mallocasync", "gpushim-vmm", "gpushim-tiered"])
        for k, gpu, workload, config in plan:
            self.assertEqual(workload, "decode")
            self.assertEqual(gpu, (order.index(config) + k - 1) % 4, (k, gpu, config))

    def test_each_config_visits_a_different_gpu_every_pass(self):
        plan = dry_run("--only", "cnn", "--configs", self.CONFIGS, "--repeat", "4", "--gpus", "4")
        for config in self.CONFIGS.split():
            self.assertEqual(sorted(g for _, g, _, c in plan if c == config), [0, 1, 2, 3], config)

    def test_one_gpu_keeps_the_old_order(self):
        plan = dry_run("--only", "torch,cupy", "--repeat", "2")
        self.assertEqual({g for _, g, _, _ in plan}, {0})
        self.assertEqual([w for _, _, w, _ in plan], ["torch"] * 20 + ["cupy"] * 18)
        self.assertEqual([k for k, _, w, _ in plan if w == "torch"], [1] * 10 + [2] * 10)

    def test_new_workloads_default_to_the_short_list(self):
        plan = dry_run("--only", "decode,cnn")
        for workload in ("decode", "cnn"):
            self.assertEqual([c for _, _, w, c in plan if w == workload],
                             ["default", "expandable", "mallocasync", "gpushim-vmm", "gpushim-tiered"])
        quick = dry_run("--only", "cnn", "--quick")
        self.assertEqual([c for _, _, _, c in quick], ["default", "expandable", "gpushim-tiered"])
        other = dry_run("--only", "decode", "--configs", "nocache-cudamalloc gpushim-slab")
        self.assertEqual([c for _, _, _, c in other], ["nocache-cudamalloc", "gpushim-slab"])

    def test_bad_arguments_are_refused(self):
        for args in (["--only", "nope"], ["--gpus", "0"], ["--gpus", "x"]):
            proc = subprocess.run(["bash", RUN_MACRO, "--dry-run"] + args, capture_output=True, text=True)
            self.assertEqual(proc.returncode, 2, args)
            self.assertIn("run_macro.sh:", proc.stderr)


if __name__ == "__main__":
    unittest.main()
