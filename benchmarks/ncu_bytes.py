#!/usr/bin/env python3
"""Nsight Compute's DRAM byte counts of bnk's kernels against the bytes bnk-bench documents for each op.

    python3 benchmarks/ncu_bytes.py ncu-raw.csv ncu-bench.json --csv ncu-bytes.csv --markdown ncu-bytes.md

ncu-raw.csv is `ncu --csv --page raw --print-units base --print-nvtx-rename kernel` over bnk-bench's timed runs
(benchmarks/gpu-run runs it with --runs 1, so that each row's range holds one call of the op), with the metrics
dram__bytes_read.sum, dram__bytes_write.sum, gpu__time_duration.sum,
sm__warps_active.avg.pct_of_peak_sustained_active and dram__throughput.avg.pct_of_peak_sustained_elapsed.
Each kernel is named by its NVTX range: bnk-bench's "bnk-bench bnk <op> <layout> <dtype> <shape>" around the
timed runs, or bnk's own "bnk.<op> <LAYOUT> <dtype> <shape>". ncu-bench.json is that bnk-bench run's --json,
whose bnk rows give the documented bytes of each case (benchmarks/bytes.c, the model of docs/performance.md).

Per case: the kernels, DRAM bytes read and written (summed over them), the documented bytes and the ratio
measured / documented, the summed duration, and achieved occupancy and DRAM throughput (% of peak) averaged
over the kernels weighted by their duration. A ratio near 1 says the op moves the bytes the model says; above
1, it moves more (a second pass the model does not count, or cache lines it wastes). The exit status is 1 when
no kernel could be matched with a case (the kernels were not named by the ranges).
"""
import argparse
import csv
import json
import re
import sys

READ, WRITE = "dram__bytes_read.sum", "dram__bytes_write.sum"
DURATION = "gpu__time_duration.sum"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
DRAM_PEAK = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
METRICS = (READ, WRITE, DURATION, OCCUPANCY, DRAM_PEAK)
NAME_COLUMNS = ("Kernel Name", "Function Name", "Demangled Name", "Name")
# bnk-bench's range around the timed runs, or bnk's own range around the call.
CASE_NAME = re.compile(r"(?:bnk-bench bnk |bnk\.)([a-z_]+) (nchw|nhwc) (f32|f16|bf16) ([0-9]+(?:x[0-9]+)*)",
                       re.IGNORECASE)
COLUMNS = ["op", "layout", "dtype", "shape", "kernels", "measured_read_bytes", "measured_write_bytes",
           "measured_bytes", "documented_bytes", "measured_over_documented", "duration_us", "achieved_occupancy_pct",
           "dram_throughput_pct_of_peak"]


def number(text):
    """A metric value as ncu prints it: maybe quoted, maybe with thousands separators."""
    text = text.strip().replace(",", "")
    return float(text) if text not in ("", "n/a") else None


def read_ncu(path):
    """The kernels of ncu's raw CSV, as dicts with the metrics parsed; ncu's own messages are skipped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        sys.exit("ncu_bytes: no CSV header (a line starting with \"ID\") in {}".format(path))
    rows = list(csv.reader(lines[start:]))
    header = rows[0]
    name_column = next((column for column in NAME_COLUMNS if column in header), None)
    missing = [metric for metric in METRICS if metric not in header]
    if name_column is None or missing:
        sys.exit("ncu_bytes: {} lacks {}".format(path, ", ".join(missing or ["a kernel name column"])))
    kernels = []
    for row in rows[1:]:
        record = dict(zip(header, row))
        if not record.get("ID", "").strip().isdigit():  # the units row, and ncu's messages after the table
            continue
        kernel = {"name": record[name_column]}
        for metric in METRICS:
            kernel[metric] = number(record.get(metric, ""))
        kernels.append(kernel)
    return kernels


def documented_bytes(path):
    """(op, layout, dtype, shape) -> bytes, from the bnk rows of bnk-bench's JSON."""
    with open(path, encoding="utf-8") as handle:
        rows = json.load(handle)["rows"]
    return {(row["op"], row["layout"], row["dtype"], row["shape"]): row["bytes"] for row in rows
            if row["implementation"] == "bnk"}


def case_of(name):
    match = CASE_NAME.search(name)
    if match is None:
        return None
    op, layout, dtype, shape = match.groups()
    return (op.lower(), layout.lower(), dtype.lower(), shape)


def weighted(kernels, metric):
    """The metric's mean over the kernels, weighted by their duration (None without durations)."""
    pairs = [(k[metric], k[DURATION]) for k in kernels if k[metric] is not None and k[DURATION]]
    total = sum(duration for _, duration in pairs)
    return sum(value * duration for value, duration in pairs) / total if total else None


def compare(kernels, documented):
    """The per-case table rows, in the order the cases ran, and the names of kernels no case matched."""
    grouped, unmatched = {}, []
    for kernel in kernels:
        case = case_of(kernel["name"])
        if case is None:
            unmatched.append(kernel["name"])
        else:
            grouped.setdefault(case, []).append(kernel)
    table = []
    for case, mine in grouped.items():
        read = sum(k[READ] or 0.0 for k in mine)
        write = sum(k[WRITE] or 0.0 for k in mine)
        expected = documented.get(case)
        table.append(dict(zip(COLUMNS[:4], case), kernels=len(mine), measured_read_bytes=read,
                          measured_write_bytes=write, measured_bytes=read + write, documented_bytes=expected,
                          measured_over_documented=(read + write) / expected if expected else None,
                          duration_us=sum(k[DURATION] or 0.0 for k in mine) / 1e3,
                          achieved_occupancy_pct=weighted(mine, OCCUPANCY),
                          dram_throughput_pct_of_peak=weighted(mine, DRAM_PEAK)))
    return table, unmatched


def text(value, digits=3):
    if value is None:
        return "-"
    return "{:.{}f}".format(value, digits) if isinstance(value, float) else str(value)


def write_csv(path, table):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for row in table:
            writer.writerow({name: "" if row[name] is None else row[name] for name in COLUMNS})


def write_markdown(path, table, unmatched):
    lines = ["| op | layout | dtype | shape | kernels | measured MB (read + write) | documented MB | measured / "
             "documented | duration us | occupancy % | DRAM % of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        documented = row["documented_bytes"]
        lines.append("| {} | {} | {} | {} | {} | {} ({} + {}) | {} | {} | {} | {} | {} |".format(
            row["op"], row["layout"], row["dtype"], row["shape"], row["kernels"], text(row["measured_bytes"] / 1e6),
            text(row["measured_read_bytes"] / 1e6), text(row["measured_write_bytes"] / 1e6),
            text(documented / 1e6 if documented else None), text(row["measured_over_documented"], 2),
            text(row["duration_us"], 1), text(row["achieved_occupancy_pct"], 1),
            text(row["dram_throughput_pct_of_peak"], 1)))
    if unmatched:
        lines.append("")
        lines.append("{} kernels named by no case: {}".format(len(unmatched), ", ".join(sorted(set(unmatched))[:10])))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ncu_csv")
    parser.add_argument("bench_json")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--markdown", required=True)
    arguments = parser.parse_args(argv)
    table, unmatched = compare(read_ncu(arguments.ncu_csv), documented_bytes(arguments.bench_json))
    write_csv(arguments.csv, table)
    write_markdown(arguments.markdown, table, unmatched)
    print("ncu_bytes: {} cases, {} kernels matched, {} not".format(len(table), sum(r["kernels"] for r in table),
                                                                  len(unmatched)))
    if not table:
        print("ncu_bytes: no kernel is named by a bnk-bench or bnk NVTX range (was ncu run with --nvtx "
              "--print-nvtx-rename kernel?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
