#!/usr/bin/env python3
"""The parts of torch_peer.py that need no PyTorch: the cases it reads from bnk-bench's JSON, the schema of its
rows against what bnk-bench itself writes, and its checks against the float64 reference of tests/reference.c
(through libbnk_reference.so). PyTorch is not installed on the machines CI runs on (PyPI has no CPU-only
Linux wheel, and the CUDA one is gigabytes), so the PyTorch calls are exercised on a GPU machine by
benchmarks/gpu-run; when torch is importable here, the last test also runs the script on CPU tensors.

    BNK_BENCH_EMU=build/benchmarks/bnk-bench-emu BNK_REFERENCE=build/benchmarks/libbnk_reference.so \\
        python3 benchmarks/test_torch_peer.py
"""
import csv
import ctypes
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_peer  # noqa: E402  (found next to this file)

BENCH_EMU = os.environ.get("BNK_BENCH_EMU", "")
REFERENCE = os.environ.get("BNK_REFERENCE", "")


class BenchOutput:
    """bnk-bench-emu's CSV and JSON on a small NCHW and NHWC image, written once for every test."""
    directory = None

    @classmethod
    def paths(cls):
        if cls.directory is None:
            cls.directory = tempfile.mkdtemp(prefix="bnk-torch-peer-")
            subprocess.run([BENCH_EMU, "--shape", "3,5,4,4", "--shape", "6,3", "--op",
                            "fwd_train,fwd_infer,bwd,bwd_infer", "--dtype", "f32,f16", "--csv", os.path.join(cls.directory, "bench.csv"), "--json",
                            os.path.join(cls.directory, "bench.json")], check=True, stdout=subprocess.DEVNULL)
        return os.path.join(cls.directory, "bench.csv"), os.path.join(cls.directory, "bench.json")


class Schema(unittest.TestCase):
    def test_csv_columns_are_bnk_bench_columns(self):
        csv_path, _ = BenchOutput.paths()
        with open(csv_path, encoding="utf-8") as handle:
            header = next(csv.reader(handle))
        self.assertEqual(header, torch_peer.CSV_FIELDS)

    def test_json_row_fields_are_bnk_bench_fields(self):
        _, json_path = BenchOutput.paths()
        with open(json_path, encoding="utf-8") as handle:
            rows = json.load(handle)["rows"]
        self.assertEqual(list(rows[0].keys()), torch_peer.JSON_ROW_FIELDS)

    def test_written_rows_read_back(self):
        header, cases = torch_peer.read_cases(BenchOutput.paths()[1])
        header["copy_bandwidth_gb_per_s"] = 1000.0
        case = cases[0]
        case.cudnn_us = 30.0
        validation = torch_peer.Validation(4)
        validation.max_error, validation.channel_error = 1e-7, 2e-8
        row = torch_peer.make_row(header, case, "gpu", "test device", validation, [10.0, 40.0, 20.0, 30.0])
        self.assertEqual(row["check"], "PASS")
        self.assertAlmostEqual(row["median_us"], 25.0)
        self.assertAlmostEqual(row["p10_us"], 13.0)
        self.assertAlmostEqual(row["ratio_to_cudnn"], 30.0 / 25.0)
        self.assertAlmostEqual(row["percent_of_copy"], 100.0 * case.bytes_moved / 25e-6 / 1e12)
        failed = torch_peer.make_row(header, cases[1], "gpu", "test device", torch_peer.Validation(4), None)
        failed_validation = torch_peer.Validation(4)
        failed_validation.failure = "y at checked element 3 is 1, reference 2"
        failed = torch_peer.make_row(header, cases[1], "gpu", "test device", failed_validation, None)
        self.assertEqual(failed["check"], "FAIL")
        self.assertIsNone(failed["median_us"])
        with tempfile.TemporaryDirectory() as directory:
            csv_path, json_path = os.path.join(directory, "t.csv"), os.path.join(directory, "t.json")
            torch_peer.write_csv(csv_path, [row, failed])
            torch_peer.write_json(json_path, {"mode": "gpu"}, [row, failed])
            with open(csv_path, encoding="utf-8") as handle:
                read = list(csv.DictReader(handle))
            self.assertEqual(read[0]["implementation"], "torch")
            self.assertAlmostEqual(float(read[0]["median_us"]), 25.0)
            self.assertEqual(read[1]["median_us"], "")
            self.assertEqual(read[1]["error"], failed_validation.failure)
            with open(json_path, encoding="utf-8") as handle:
                document = json.load(handle)
            self.assertEqual(document["rows"][1]["check"], "FAIL")
            self.assertIsNone(document["rows"][1]["median_us"])


class Cases(unittest.TestCase):
    def test_cases_are_bnk_plain_op_rows_once_each(self):
        _, json_path = BenchOutput.paths()
        _, cases = torch_peer.read_cases(json_path)
        labels = [case.label() for case in cases]
        self.assertEqual(len(labels), len(set(labels)))
        # 2 dtypes x (the image in 2 layouts + the (N, C) matrix once) x 3 plain ops that PyTorch has.
        self.assertEqual(len(cases), 2 * 3 * 3)
        self.assertEqual({case.op for case in cases}, set(torch_peer.PLAIN_OPS))
        with open(json_path, encoding="utf-8") as handle:
            rows = json.load(handle)["rows"]
        bnk = {(r["op"], r["layout"], r["dtype"], r["shape"]): r for r in rows if r["implementation"] == "bnk"}
        for case in cases:
            row = bnk[(case.op, case.layout, case.dtype, case.shape)]
            self.assertEqual(case.bytes_moved, row["bytes"])
            self.assertEqual(case.extents, [int(e) for e in row["run_shape"].split("x")])
            self.assertIsNone(case.cudnn_us)  # the emulation has no cuDNN timings

    def test_choose_indices_keeps_both_ends(self):
        rng = random.Random(7)
        chosen = torch_peer.choose_indices(1000, 16, rng)
        self.assertEqual(len(chosen), 16)
        self.assertEqual(chosen, sorted(set(chosen)))
        self.assertEqual((chosen[0], chosen[-1]), (0, 999))
        self.assertEqual(torch_peer.choose_indices(5, 16, rng), [0, 1, 2, 3, 4])


class Checks(unittest.TestCase):
    """The checks against the reference, on a channel computed by the reference itself."""

    @classmethod
    def setUpClass(cls):
        cls.reference = torch_peer.Reference(REFERENCE)
        cls.tolerances = torch_peer.read_tolerances()

    def normalized(self, values, n, spatial):
        """(want, mean, var) of one channel: tests/reference.c's normalization, gamma 1 and beta 0."""
        desc = torch_peer.sample_desc(n, 1, spatial)
        x = torch_peer.doubles(values)
        mean, var, unbiased = (torch_peer.doubles([0.0]) for _ in range(3))
        self.reference.ref_channel_stats(ctypes.byref(desc), torch_peer.address(x), torch_peer.address(mean),
                                         torch_peer.address(var), torch_peer.address(unbiased))
        y = torch_peer.doubles([0.0] * len(values))
        self.reference.ref_normalize(ctypes.byref(desc), torch_peer.address(x), torch_peer.address(mean),
                                     torch_peer.address(var), torch_peer.EPS, None, None, torch_peer.address(y))
        return list(y), mean[0], var[0]

    def test_tolerances_are_those_of_the_bench(self):
        for name in ("F32_ELEMENT_TOLERANCE", "SIXTEEN_BIT_ULPS", "SIXTEEN_BIT_SLACK", "CHANNEL_TOLERANCE"):
            self.assertGreater(self.tolerances[name], 0.0, name)

    def test_reference_statistics(self):
        rng = random.Random(11)
        values = [rng.uniform(-1.0, 3.0) for _ in range(24)]
        want, mean, var = self.normalized(values, 2, [3, 4])
        self.assertAlmostEqual(mean, sum(values) / 24, places=12)
        self.assertAlmostEqual(var, sum((v - mean) ** 2 for v in values) / 24, places=12)
        self.assertAlmostEqual(sum(want), 0.0, places=9)

    def test_float32_elements(self):
        rng = random.Random(12)
        want, _, _ = self.normalized([rng.uniform(-1.0, 3.0) for _ in range(30)], 3, [10])
        got = [w + 0.5e-5 for w in want]
        error, failure = torch_peer.check_elements("y", "f32", got, want, self.reference, self.tolerances)
        self.assertIsNone(failure)
        self.assertAlmostEqual(error, 0.5e-5, places=9)
        got[7] = want[7] + 3e-5
        error, failure = torch_peer.check_elements("y", "f32", got, want, self.reference, self.tolerances)
        self.assertIn("checked element 7", failure)
        got[7] = math.nan
        error, failure = torch_peer.check_elements("y", "f32", got, want, self.reference, self.tolerances)
        self.assertTrue(math.isinf(error))
        self.assertIsNotNone(failure)

    def test_sixteen_bit_elements_get_one_unit_in_the_last_place(self):
        want = [1.0, -0.75, 3.5]
        ulp = [self.reference.ulp("f16", w) for w in want]
        self.assertEqual(ulp[0], 2.0 ** -10)  # float16 at 1
        self.assertEqual(self.reference.ulp("bf16", 1.0), 2.0 ** -7)
        close = [w + u for w, u in zip(want, ulp)]
        self.assertIsNone(torch_peer.check_elements("dx", "f16", close, want, self.reference, self.tolerances)[1])
        far = [w + 2.0 * u for w, u in zip(want, ulp)]
        self.assertIsNotNone(torch_peer.check_elements("dx", "f16", far, want, self.reference, self.tolerances)[1])

    def test_channels_relative_to_their_scale(self):
        worst, failure = torch_peer.check_channels("running_var", [0, 5], [2.0 + 1e-6, 4.0], [2.0, 4.0], [2.0, 4.0],
                                                   self.tolerances)
        self.assertIsNone(failure)
        self.assertAlmostEqual(worst, 5e-7)
        worst, failure = torch_peer.check_channels("dbeta", [0, 5], [1.0, 4.1], [1.0, 4.0], [1.0, 4.0],
                                                   self.tolerances)
        self.assertIn("dbeta[5]", failure)

    def test_percentile_interpolates(self):
        self.assertEqual(torch_peer.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0)
        self.assertAlmostEqual(torch_peer.percentile([1.0, 2.0], 0.9), 1.9)


class Script(unittest.TestCase):
    def test_runs_on_cpu_tensors_or_says_torch_is_missing(self):
        _, json_path = BenchOutput.paths()
        with tempfile.TemporaryDirectory() as directory:
            out = os.path.join(directory, "torch.json")
            status = torch_peer.main(["--cases-from", json_path, "--reference", REFERENCE, "--device", "cpu",
                                      "--json", out])
            if importlib.util.find_spec("torch") is None:
                self.assertEqual(status, torch_peer.EXIT_NO_TORCH)
                return
            self.assertEqual(status, 0)
            with open(out, encoding="utf-8") as handle:
                rows = json.load(handle)["rows"]
            self.assertTrue(all(row["check"] in ("PASS", "n/a", "ERROR") for row in rows), rows)
            self.assertTrue(any(row["check"] == "PASS" for row in rows))


if __name__ == "__main__":
    if not (os.path.exists(BENCH_EMU) and os.path.exists(REFERENCE)):
        sys.exit("test_torch_peer: set BNK_BENCH_EMU and BNK_REFERENCE to bnk-bench-emu and libbnk_reference.so")
    unittest.main()
