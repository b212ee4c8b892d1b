#!/usr/bin/env python3
"""Unit tests of sass_report.py's reading of SASS, on hand-written listings whose counts are known by
construction (no GPU build needed): loops, the full-iteration path, elements per iteration, demand."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sass_report  # noqa: E402


def listing(name, body):
    """A cuobjdump-style function from 'instruction' lines, addresses 0x10 apart from 0."""
    lines = [f"\t\tFunction : {name}"]
    for i, text in enumerate(body):
        lines.append(f"        /*{i * 16:04x}*/                   {text} ;   /* 0x0000000000000000 */")
        lines.append("                                                 /* 0x000fe20000000800 */")
    return "\n".join(lines)


def address(i):
    return f"0x{i * 16:x}"


class HotLoop(unittest.TestCase):
    def test_straight_loop_counts_its_body(self):
        body = ["MOV R1, c[0x0][0x28]",                          # 0: before the loop
                "LDG.E.128 R4, desc[UR4][R2.64]",                 # 1: loop head
                "LDG.E.128 R8, desc[UR4][R2.64+0x10]",
                "FADD R4, R4, R5", "FADD R6, R6, R7",
                "ISETP.GE.AND P0, PT, R0, R9, PT",
                f"@!P0 BRA {address(1)}",                         # 6: back edge
                "EXIT"]
        code = sass_report.parse_sass(listing("k", body))["k"]
        loop = sass_report.hot_loop(code, 16)
        self.assertEqual(loop["data_loads"], 2)
        self.assertEqual(loop["instructions"], 6)
        self.assertEqual(loop["address"], 0x10)

    def test_longest_path_with_all_loads_and_inner_diamond(self):
        body = ["LDG.E.128 R4, desc[UR4][R2.64]",                 # 0: head
                f"@P1 BRA {address(5)}",                          # 1: skips the second load (a tail iteration)
                "LDG.E.128 R8, desc[UR4][R2.64+0x10]",            # 2
                f"@P2 BRA {address(5)}",                          # 3: fast side: skips one instruction
                "MUFU.RCP R3, R3",                                # 4: slow side
                "FADD R4, R4, R8",                                # 5
                f"@!P0 BRA {address(0)}",                         # 6: back edge
                "EXIT"]
        code = sass_report.parse_sass(listing("k", body))["k"]
        loop = sass_report.hot_loop(code, 16)
        # The path 0-1-2-3-4-5-6 loads both vectors and is the longest among those that do.
        self.assertEqual((loop["data_loads"], loop["instructions"], loop["mufu"]), (2, 7, 1))

    def test_loops_after_the_merge_counter_are_not_the_hot_loop(self):
        body = ["LDG.E R4, desc[UR4][R2.64]",                     # 0: the data loop of a scalar fp32 kernel
                "FADD R6, R6, R4",
                f"@!P0 BRA {address(0)}",
                "ATOMG.E.ADD.STRONG.GPU PT, R8, desc[UR4][R10.64], R9",  # 3: the group's counter
                "LDG.E R4, desc[UR4][R2.64]",                     # 4: the merge's loop, more 4-byte loads
                "LDG.E R5, desc[UR4][R2.64+0x4]",
                "LDG.E R7, desc[UR4][R2.64+0x8]",
                f"@!P1 BRA {address(4)}",
                "EXIT"]
        code = sass_report.parse_sass(listing("k", body))["k"]
        loop = sass_report.hot_loop(code, 4)
        self.assertEqual((loop["address"], loop["data_loads"]), (0x0, 1))

    def test_only_loads_of_the_data_width_count(self):
        body = ["LDG.E.U16 R4, desc[UR4][R2.64]",                 # 0: a 16-bit element: data when V = 1, fp16
                "LDG.E R5, desc[UR4][R6.64]",                     # 1: a 32-bit parameter
                f"@!P0 BRA {address(0)}",
                "EXIT"]
        code = sass_report.parse_sass(listing("k", body))["k"]
        self.assertEqual(sass_report.hot_loop(code, 2)["data_loads"], 1)
        self.assertEqual(sass_report.hot_loop(code, 16), None)

    def test_unconditional_back_branch_and_guarded_exit(self):
        body = ["LDG.E.64 R4, desc[UR4][R2.64]",                 # 0: head
                "@P0 EXIT",                                       # 1: may leave, may go on
                "IADD3 R2, R2, 0x8, RZ",
                f"BRA {address(0)}"]
        code = sass_report.parse_sass(listing("k", body))["k"]
        loop = sass_report.hot_loop(code, 8)
        self.assertEqual((loop["data_loads"], loop["instructions"]), (1, 4))


class Figures(unittest.TestCase):
    MODEL = {"sms": 132, "schedulers_per_sm": 4, "lanes": 32, "clock_hz": 1.755e9,
             "bandwidth": {"H100": 3.0e12, "H200": 4.8e12}}

    def test_demand_formula(self):
        # 10 instructions per element at 2 bytes per element on 4.8 TB/s: 2.4e12 elements/s x 10 against
        # 132 x 4 x 32 x 1.755e9 = 2.965e13 issue slots per second.
        demand = sass_report.issue_demand(10.0, 2.0, 4.8e12, self.MODEL)
        self.assertAlmostEqual(demand, 2.4e13 / (132 * 4 * 32 * 1.755e9), places=12)

    def test_elements_per_iteration_and_the_scalar_fp32_sibling(self):
        loops = {"stats_channels_first<float, 4>": {"instructions": 64, "data_loads": 4, "mufu": 2},
                 # the scalar loop's 4-byte loads include per-channel parameters: 12 of them, 4 of data
                 "stats_channels_first<float, 1>": {"instructions": 60, "data_loads": 12, "mufu": 4},
                 "stats_channels_first<__half, 1>": {"instructions": 40, "data_loads": 4, "mufu": 4}}
        stream = {"reads": 1, "writes": 0}
        wide = sass_report.streaming_figures("stats_channels_first<float, 4>", stream, loops, self.MODEL)
        self.assertEqual(wide["elements_per_iteration"], 16)
        self.assertAlmostEqual(wide["instructions_per_element"], 4.0)
        self.assertAlmostEqual(wide["mufu_per_element"], 0.125)
        self.assertAlmostEqual(wide["demand"]["H100"], 4.0 * 0.75e12 / (132 * 4 * 32 * 1.755e9))
        scalar = sass_report.streaming_figures("stats_channels_first<float, 1>", stream, loops, self.MODEL)
        self.assertEqual((scalar["elements_per_iteration"], scalar["elements_source"]), (4, "16-byte sibling"))
        self.assertAlmostEqual(scalar["instructions_per_element"], 15.0)
        half = sass_report.streaming_figures("stats_channels_first<__half, 1>", stream, loops, self.MODEL)
        self.assertEqual((half["elements_per_iteration"], half["elements_source"]), (4, "own loads"))
        two = sass_report.streaming_figures("stats_channels_first<float, 4>", {"reads": 2, "writes": 1}, loops,
                                            self.MODEL)
        self.assertEqual((two["elements_per_iteration"], two["bytes_per_element"]), (8, 12))

    def test_read_only_loads_are_counted(self):
        code = sass_report.parse_sass(listing("k", ["LDG.E.128.CONSTANT R4, desc[UR4][R2.64]",
                                                    "@P0 LDG.E.CONSTANT R5, desc[UR4][R6.64]",
                                                    "LDG.E.128 R8, desc[UR4][R2.64]", "STG.E.128 desc[UR4][R2.64], R8",
                                                    "EXIT"]))["k"]
        counts = sass_report.memory_counts(code)
        self.assertEqual((counts["ldg128"], counts["ldg_narrow"], counts["stg128"], counts["ldg_constant"]),
                         (2, 1, 1, 2))


class KnownOffenders(unittest.TestCase):
    def test_fixed_renamed_and_worse_entries_fail_the_rest_pass(self):
        known = {"a": 1.0, "fixed": 0.9, "b": 2.0}
        failures = []
        sass_report.check_known(known, {"a": 1.01, "b": 2.5}, "demand", failures)
        self.assertEqual(len(failures), 2)
        self.assertIn("'fixed'", failures[0])
        self.assertIn("b is at 2.5", failures[1])


if __name__ == "__main__":
    unittest.main()
