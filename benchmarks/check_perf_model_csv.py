#!/usr/bin/env python3
"""Checks a perf_model.py --csv file: its exact columns, rows for both devices and every op, whole launch
counts, positive floors, and no modelled time below its byte floor (a model faster than the bytes allow
is wrong). Exit status 1 with one line per problem.

    python3 benchmarks/check_perf_model_csv.py FILE
"""
import csv
import sys

COLUMNS = ["device", "preset", "batch", "layout", "dtype", "op", "launches", "floor_us", "model_us"]


def problems_of(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if header != COLUMNS:
        return [f"columns are {header}, expected {COLUMNS}"]
    problems = []
    seen = set()
    for number, row in enumerate(rows, start=2):
        if len(row) != len(COLUMNS):
            problems.append(f"line {number}: {len(row)} fields, expected {len(COLUMNS)}")
            continue
        r = dict(zip(COLUMNS, row))
        seen.add((r["device"], r["op"]))
        try:
            launches, batch = int(r["launches"]), int(r["batch"])
            floor, model = float(r["floor_us"]), float(r["model_us"])
        except ValueError as error:
            problems.append(f"line {number}: {error}")
            continue
        if r["device"] not in ("H100", "H200") or r["op"] not in ("fwd_train", "fwd_infer", "bwd"):
            problems.append(f"line {number}: unknown device or op in {row}")
        if r["layout"] not in ("nchw", "nhwc") or r["dtype"] not in ("f32", "f16", "bf16"):
            problems.append(f"line {number}: unknown layout or dtype in {row}")
        if launches < 1 or batch < 1 or not floor > 0:
            problems.append(f"line {number}: launches {launches}, batch {batch}, floor {floor}: expected >= 1, >= 1, > 0")
        if not model >= floor:
            problems.append(f"line {number}: model {model} us is below its floor {floor} us")
    wanted = {(d, op) for d in ("H100", "H200") for op in ("fwd_train", "fwd_infer", "bwd")}
    if not wanted <= seen:
        problems.append(f"no rows for {sorted(wanted - seen)}")
    return problems


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    problems = problems_of(sys.argv[1])
    for problem in problems:
        print(f"{sys.argv[1]}: {problem}")
    if not problems:
        print(f"{sys.argv[1]}: schema and floors OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
