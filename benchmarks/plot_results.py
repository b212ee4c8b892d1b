#!/usr/bin/env python3
"""Turns bnk-bench results files (--csv or --json) into one PNG chart.

GPU results: for every op, the speed of each implementation relative to cuDNN per case (cuDNN's median over
the implementation's median, so above 1 is faster than cuDNN), and each implementation's rate as a
percentage of the copy bandwidth measured in the same run. bnk's epilogue ops (fused BN + ReLU and the like)
are drawn relative to the unfused sequence they replace instead of cuDNN, which has no such op.

Emulation results have no timings, and the chart does not invent any: it shows the byte floors a GPU run
would be held to (an H100 at 3.0 TB/s, not measured) and the validation error of every implementation that
ran, and says in its title that no GPU timings exist.

    python3 benchmarks/plot_results.py results.csv -o results.png
    python3 benchmarks/plot_results.py results.json torch.json -o results.png   # with the PyTorch peer's rows

Several files are drawn as one: the first one's header (device, mode, floor) titles the chart, and every file's
rows join it, case by case (benchmarks/torch_peer.py writes rows of the same schema, implementation "torch").

Needs matplotlib (Debian: python3-matplotlib, which ./dev installs).
"""
import argparse
import csv
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display: the bench runs on headless machines
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

PLAIN_OPS = ["fwd_train", "fwd_infer", "bwd", "bwd_infer"]
# Compared with the unfused sequence (bnk+separate, or bnk-fwd-infer for scale_shift), not with cuDNN.
EPILOGUE_OPS = ["fwd_infer_relu", "fwd_infer_add_relu", "fwd_train_add_relu", "bwd_add_relu", "scale_shift",
                "linear_bn"]
OPS = PLAIN_OPS + EPILOGUE_OPS
IMPLEMENTATIONS = ["bnk", "bnk-persistent", "bnk-two-pass", "cudnn", "cudnn-persistent", "cudnn-persistent-ex", "torch",
                   "cublas", "naive", "bnk-fused", "bnk-mask", "bnk-from-y", "bnk-scale-shift", "bnk+separate", "bnk-fwd-infer"]
COLORS = {"bnk": "#1f77b4", "bnk-persistent": "#17becf", "bnk-two-pass": "#9edae5", "cudnn": "#d62728",
          "cudnn-persistent": "#ff9896", "cudnn-persistent-ex": "#8c564b",
          "torch": "#9467bd", "cublas": "#2ca02c",
          "naive": "#7f7f7f", "bnk-fused": "#1f77b4", "bnk-mask": "#1f77b4", "bnk-from-y": "#aec7e8",
          "bnk-scale-shift": "#1f77b4", "bnk+separate": "#ff7f0e", "bnk-fwd-infer": "#ff7f0e"}
NUMERIC = ["max_error", "channel_error", "median_us", "min_us", "p10_us", "p90_us", "bytes",
           "bytes_ratio_to_unfused", "gb_per_s", "percent_of_copy", "ratio_to_cudnn", "ratio_to_unfused", "floor_us",
           "floor_bandwidth_gb_per_s"]
# Errors are drawn on a log axis; an exact result (error 0) sits on this floor instead of vanishing.
ERROR_FLOOR = 1e-12


def number(value):
    """A field as a float, or None when empty / null; "inf" (a NaN in the output) stays infinite."""
    if value is None or value == "":
        return None
    return float(value)


def read_results(path):
    """Returns (header, rows): header holds the file-level facts, rows are dicts with numbers parsed."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("{"):
        document = json.loads(text)
        rows = document["rows"]
        header = {key: value for key, value in document.items() if key != "rows"}
    else:
        rows = list(csv.DictReader(text.splitlines()))
        header = {}
        if rows:
            header = {"mode": rows[0]["mode"], "device": rows[0]["device"],
                      "floor_bandwidth_gb_per_s": rows[0]["floor_bandwidth_gb_per_s"],
                      "floor_basis": rows[0]["floor_basis"]}
    for row in rows:
        for key in NUMERIC:
            row[key] = number(row.get(key))
    return header, rows


def case_label(row):
    return "{} {} {}".format(row["shape"], row["layout"], row["dtype"])


def cases_of(rows, op):
    """The op's cases in the order the bench ran them."""
    seen = []
    for row in rows:
        if row["op"] == op and case_label(row) not in seen:
            seen.append(case_label(row))
    return seen


def grouped_bars(axis, rows, op, cases, value_of, implementations, labels=None):
    """One bar per (case, implementation); rows that failed validation are hatched. Returns the drawn impls."""
    drawn = []
    labels = labels or {}
    width = 0.8 / max(1, len(implementations))
    for index, implementation in enumerate(implementations):
        xs, heights, hatches = [], [], []
        for row in rows:
            if row["op"] != op or row["implementation"] != implementation:
                continue
            value = value_of(row)
            if value is None:
                continue
            xs.append(cases.index(case_label(row)) - 0.4 + width * (index + 0.5))
            heights.append(value)
            hatches.append("//" if row["check"] == "FAIL" else "")
        if not xs:
            continue
        bars = axis.bar(xs, heights, width, color=COLORS.get(implementation, "black"),
                        label=labels.get(implementation, implementation))
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        drawn.append(implementation)
    axis.set_xticks(range(len(cases)))
    axis.set_xticklabels(cases, rotation=90, fontsize=7)
    axis.set_xlim(-0.6, len(cases) - 0.4)
    axis.grid(axis="y", alpha=0.3)
    return drawn


def not_run_note(rows, op):
    """'cudnn: n/a (needs a GPU)' for each implementation that never ran the op: its most frequent reason."""
    notes = []
    for implementation in IMPLEMENTATIONS:
        mine = [row for row in rows if row["op"] == op and row["implementation"] == implementation]
        if mine and all(row["check"] in ("n/a", "ERROR") for row in mine):
            reasons = [(row.get("error") or "?")[:60] for row in mine]
            notes.append("{}: {} ({})".format(implementation, mine[0]["check"], max(reasons, key=reasons.count)))
    return "\n".join(notes)


def plot(header, rows, output):
    ops = [op for op in OPS if any(row["op"] == op for row in rows)]
    if not ops:
        sys.exit("plot_results.py: the results file has no rows")
    timed = any(row["median_us"] is not None for row in rows)
    implementations = [name for name in IMPLEMENTATIONS if any(row["implementation"] == name for row in rows)]
    most_cases = max(len(cases_of(rows, op)) for op in ops)
    # Wide enough to label every case, within what a PNG viewer still opens comfortably.
    width = min(80.0, max(12.0, 0.35 * most_cases * 2))
    figure, axes = plt.subplots(len(ops), 2, figsize=(width, 4.5 * len(ops)), squeeze=False)
    device = header.get("device", "?")
    if timed:
        figure.suptitle("bnk-bench on {}\nleft: speed relative to cuDNN (> 1 is faster); right: % of the copy "
                        "bandwidth measured in the same run; hatched bars failed validation".format(device),
                        fontsize=12)
    else:
        figure.suptitle("bnk-bench in host emulation: NO GPU TIMINGS EXIST\nleft: byte floors at {} GB/s ({}); "
                        "right: validation error of each implementation that ran"
                        .format(header.get("floor_bandwidth_gb_per_s", "?"), header.get("floor_basis", "?")),
                        fontsize=12)
    for line, op in enumerate(ops):
        cases = cases_of(rows, op)
        left, right = axes[line][0], axes[line][1]
        epilogue = op in EPILOGUE_OPS
        if timed:
            reference = "unfused" if epilogue else "cuDNN"
            grouped_bars(left, rows, op, cases, lambda row: row["ratio_to_unfused" if epilogue else "ratio_to_cudnn"],
                         implementations)
            left.axhline(1.0, color="black", linewidth=0.8)
            left.set_yscale("log")
            left.set_ylabel("{} time / time".format(reference))
            left.set_title("{}: ratio to {} per shape".format(op, reference))
            grouped_bars(right, rows, op, cases, lambda row: row["percent_of_copy"], implementations)
            right.axhline(100.0, color="black", linewidth=0.8)
            right.set_ylabel("% of copy bandwidth")
            right.set_title("{}: % of the measured copy bandwidth".format(op))
        elif epilogue:
            # Each variant moves its own bytes: one floor per variant.
            grouped_bars(left, rows, op, cases, lambda row: row["floor_us"], implementations)
        else:
            # The floor depends on the op and the shape only: one bar per case.
            first = next(row["implementation"] for row in rows if row["op"] == op)
            grouped_bars(left, [row for row in rows if row["implementation"] == first], op, cases,
                         lambda row: row["floor_us"], [first], {first: "floor (the same for every implementation)"})
        if not timed:
            left.set_yscale("log")
            left.set_ylabel("floor (us), not measured")
            left.set_title("{}: time to move the op's bytes at the reference bandwidth".format(op))
            grouped_bars(right, rows, op, cases,
                         lambda row: None if row["max_error"] is None else max(row["max_error"], ERROR_FLOOR),
                         implementations)
            right.set_yscale("log")
            right.set_ylabel("max |error| of y / dx")
            right.set_title("{}: validation error against the float64 reference".format(op))
        for axis in (left, right):
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=8, loc="upper left")
        note = not_run_note(rows, op)
        if note:
            right.text(1.0, 1.0, note, transform=right.transAxes, fontsize=7, ha="right", va="top",
                       bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+",
                        help="results files written by bnk-bench (or torch_peer.py) with --csv or --json")
    parser.add_argument("-o", "--output", help="the PNG to write (default: the first results file's name, .png)")
    arguments = parser.parse_args()
    output = arguments.output or os.path.splitext(arguments.results[0])[0] + ".png"
    header, rows = read_results(arguments.results[0])
    for path in arguments.results[1:]:
        rows += read_results(path)[1]
    plot(header, rows, output)
    print("plot_results.py: wrote {}".format(output))


if __name__ == "__main__":
    main()
