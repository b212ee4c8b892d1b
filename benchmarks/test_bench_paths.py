#!/usr/bin/env python3
"""bnk-bench-emu's rows for bnk's two training paths (bnk-persistent, bnk-two-pass), read from its table: on a
shape that fits the co-resident grid both rows pass validation and the traffic meter shows the persistent
forward as one launch moving fewer bytes than the two-pass one; on an emulated device of one SM, a
channels-first shape of more channels than co-resident blocks still runs both persistent ops in one launch (the
team kernels).

    BNK_BENCH_EMU=build/benchmarks/bnk-bench-emu python3 benchmarks/test_bench_paths.py
"""
import os
import re
import subprocess
import unittest

BENCH_EMU = os.environ.get("BNK_BENCH_EMU", "")
TRAFFIC = re.compile(r"moved ([0-9.]+) MB = [0-9.]+% of the run shape's floor, ([0-9]+) launch(?:es)?$")


def run_bench(arguments, sms=None):
    """The rows of the table, keyed by (op, layout, dtype, impl): (check, the rest of the line)."""
    env = dict(os.environ)
    if sms is not None:
        env["BNK_EMU_SMS"] = str(sms)
    result = subprocess.run([BENCH_EMU, "--impl", "bnk-persistent,bnk-two-pass", "--op", "fwd_train,bwd"] + arguments,
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise AssertionError(f"bnk-bench-emu exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    rows = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) > 7 and fields[0] in ("fwd_train", "bwd") and fields[5] in ("bnk-persistent", "bnk-two-pass"):
            rows[(fields[0], fields[1], fields[2], fields[5])] = (fields[6], line)
    return rows


def traffic(line):
    match = TRAFFIC.search(line)
    if match is None:
        raise AssertionError(f"no traffic column in: {line}")
    return float(match.group(1)), int(match.group(2))


class BenchPaths(unittest.TestCase):
    def test_both_rows_for_a_fitting_shape(self):
        rows = run_bench(["--shape", "2,8,6,6", "--shape", "64,24", "--dtype", "f32,f16"])
        for layout in ("nchw", "nhwc"):
            for dtype in ("f32", "f16"):
                for op in ("fwd_train", "bwd"):
                    for impl in ("bnk-persistent", "bnk-two-pass"):
                        key = (op, layout, dtype, impl)
                        self.assertIn(key, rows, f"no row {key}")
                        self.assertEqual(rows[key][0], "PASS", rows[key][1])
                persistent = traffic(rows[("fwd_train", layout, dtype, "bnk-persistent")][1])
                two_pass = traffic(rows[("fwd_train", layout, dtype, "bnk-two-pass")][1])
                self.assertEqual(persistent[1], 1, f"persistent forward {layout} {dtype}: {persistent[1]} launches")
                self.assertGreater(two_pass[1], 1, f"two-pass forward {layout} {dtype}: {two_pass[1]} launch")
                self.assertLess(persistent[0], two_pass[0], f"{layout} {dtype}: persistent moved no fewer bytes")

    def test_many_channels_on_one_sm_take_the_team_kernels(self):
        # 16 channels-first channels on an emulated device of one SM: more channels than the SM holds blocks, but
        # each channel (2 x 8 x 8 elements) fits one warp's cache, so both persistent ops run, in one launch each.
        # (No channels-first shape within the emulation's run-shape caps, at most 2 x 8^3 elements a channel, is
        # too long for a block's cache any more; tests/test_persistent.c checks the NOT_SUPPORTED rejection.)
        rows = run_bench(["--shape", "2,16,8,8", "--layout", "nchw", "--dtype", "f32"], sms=1)
        for op in ("fwd_train", "bwd"):
            check, line = rows[(op, "nchw", "f32", "bnk-persistent")]
            self.assertEqual(check, "PASS", line)
            self.assertEqual(traffic(line)[1], 1, line)
            self.assertEqual(rows[(op, "nchw", "f32", "bnk-two-pass")][0], "PASS")

if __name__ == "__main__":
    unittest.main()
