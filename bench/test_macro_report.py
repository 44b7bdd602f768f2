"""CPU checks of the macro report: the GPUSHIM_STATS parser and the flags a row gets.
Run: python3 bench/test_macro_report.py  (stdlib unittest; no GPU, torch or cupy needed)."""

import json
import os
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


if __name__ == "__main__":
    unittest.main()
