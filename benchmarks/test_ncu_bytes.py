#!/usr/bin/env python3
"""ncu_bytes.py on a file in the form of ncu's raw CSV (messages around the table, a units row, thousands
separators) and on bnk-bench-emu's JSON: which kernels make up each case, the sums, the weighted means and the
ratio to the documented bytes. No GPU is needed: the kernels' numbers are made up here, the documented bytes
are the bench's.

    BNK_BENCH_EMU=build/benchmarks/bnk-bench-emu python3 benchmarks/test_ncu_bytes.py
"""
import csv
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ncu_bytes  # noqa: E402

BENCH_EMU = os.environ.get("BNK_BENCH_EMU", "")
HEADER = ['"ID"', '"Process ID"', '"Process Name"', '"Host Name"', '"Kernel Name"', '"Context"', '"Stream"',
          '"dram__bytes_read.sum"', '"dram__bytes_write.sum"', '"gpu__time_duration.sum"',
          '"sm__warps_active.avg.pct_of_peak_sustained_active"',
          '"dram__throughput.avg.pct_of_peak_sustained_elapsed"']


def kernel_line(index, name, read, write, nanoseconds, occupancy, dram):
    fields = [str(index), "4242", "bnk-bench", "host", name, "1", "13", read, write, nanoseconds, occupancy, dram]
    return ",".join('"{}"'.format(field) for field in fields)


class NcuBytes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="bnk-ncu-bytes-")
        cls.bench_json = os.path.join(cls.directory, "bench.json")
        subprocess.run([BENCH_EMU, "--shape", "32,64,56,56", "--op", "fwd_train,bwd", "--impl", "bnk", "--json",
                        cls.bench_json], check=True, stdout=subprocess.DEVNULL)
        with open(cls.bench_json, encoding="utf-8") as handle:
            rows = json.load(handle)["rows"]
        cls.documented = {(r["op"], r["layout"]): r["bytes"] for r in rows}
        train = cls.documented[("fwd_train", "nchw")]
        lines = ["==PROF== Connected to process 4242 (bnk-bench)", ",".join(HEADER),
                 ",".join('""' for _ in HEADER[:7]) + ',"byte","byte","nsecond","%","%"',
                 # fwd_train NCHW in two kernels (named by bnk-bench's range), 1.5x the documented bytes.
                 kernel_line(0, "bnk-bench bnk fwd_train nchw f32 32x64x56x56", "{:,.0f}".format(train / 2),
                             "{:,.0f}".format(train / 4), "1000", "50", "60"),
                 kernel_line(1, "bnk-bench bnk fwd_train nchw f32 32x64x56x56", "{:.0f}".format(train / 2),
                             "{:.0f}".format(train / 4), "3000", "90", "80"),
                 # bwd NHWC named by bnk's own range.
                 kernel_line(2, "bnk.bwd NHWC f32 32x64x56x56", str(cls.documented[("bwd", "nhwc")]), "0", "2000",
                             "70", "75"),
                 kernel_line(3, "some_other_kernel", "5", "5", "10", "1", "1"),
                 "==PROF== Disconnected from process 4242"]
        cls.ncu_csv = os.path.join(cls.directory, "ncu.csv")
        with open(cls.ncu_csv, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def test_cases_sums_and_weighted_means(self):
        table, unmatched = ncu_bytes.compare(ncu_bytes.read_ncu(self.ncu_csv),
                                             ncu_bytes.documented_bytes(self.bench_json))
        self.assertEqual(unmatched, ["some_other_kernel"])
        by_case = {(row["op"], row["layout"]): row for row in table}
        self.assertEqual(set(by_case), {("fwd_train", "nchw"), ("bwd", "nhwc")})
        train = by_case[("fwd_train", "nchw")]
        self.assertEqual(train["kernels"], 2)
        self.assertAlmostEqual(train["measured_over_documented"], 1.5, places=6)
        self.assertAlmostEqual(train["duration_us"], 4.0)
        self.assertAlmostEqual(train["achieved_occupancy_pct"], (50 * 1000 + 90 * 3000) / 4000)
        self.assertAlmostEqual(train["dram_throughput_pct_of_peak"], (60 * 1000 + 80 * 3000) / 4000)
        backward = by_case[("bwd", "nhwc")]
        self.assertEqual(backward["documented_bytes"], self.documented[("bwd", "nhwc")])
        self.assertAlmostEqual(backward["measured_over_documented"], 1.0)

    def test_outputs(self):
        out_csv, out_md = os.path.join(self.directory, "t.csv"), os.path.join(self.directory, "t.md")
        self.assertEqual(ncu_bytes.main([self.ncu_csv, self.bench_json, "--csv", out_csv, "--markdown", out_md]), 0)
        with open(out_csv, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        self.assertEqual(len(rows), 2)
        with open(out_md, encoding="utf-8") as handle:
            markdown = handle.read()
        self.assertIn("| fwd_train | nchw | f32 | 32x64x56x56 | 2 |", markdown)
        self.assertIn("1.50", markdown)
        self.assertIn("some_other_kernel", markdown)

    def test_unnamed_kernels_fail(self):
        unnamed = os.path.join(self.directory, "unnamed.csv")
        with open(unnamed, "w", encoding="utf-8") as handle:
            handle.write(",".join(HEADER) + "\n" + kernel_line(0, "bnk_stats_kernel", "1", "1", "1", "1", "1") + "\n")
        out_csv, out_md = os.path.join(self.directory, "u.csv"), os.path.join(self.directory, "u.md")
        self.assertEqual(ncu_bytes.main([unnamed, self.bench_json, "--csv", out_csv, "--markdown", out_md]), 1)


if __name__ == "__main__":
    if not os.path.exists(BENCH_EMU):
        sys.exit("test_ncu_bytes: set BNK_BENCH_EMU to bnk-bench-emu")
    unittest.main()
