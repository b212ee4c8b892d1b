#!/usr/bin/env python3
"""Static performance contract of bnk's kernels, read from their sm_90 machine code.

No GPU is available to time kernels in CI, so this checks what can be read off the SASS instead: per
kernel, registers, local memory (spills), static shared memory, the theoretical occupancy on an H100, and
the number of 128-bit versus narrower global loads and stores. A budget file states each kernel's
limits; the exit status is 1 when a kernel breaks its budget (or a budget names no kernel).

    python3 benchmarks/sass_report.py build/libbnk.so [--budget benchmarks/sass_budget.json]

cuobjdump and nvdisasm come from PyPI (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) and are installed
into a folder next to the library on first use, since the compile-only toolkit here ships neither.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

# H100 (sm_90) per-SM limits.
SM_REGISTERS = 65536
SM_THREADS = 2048
SM_BLOCKS = 32
SM_SHARED = 233472          # bytes, of which each block also reserves 1 KiB
BLOCK_RESERVED_SHARED = 1024
REGISTER_UNIT = 256         # registers are allocated per warp in units of 256
WARP = 32


def find_tool(name, tools_dir):
    found = shutil.which(name)
    if found:
        return found
    for root, _, files in os.walk(tools_dir):
        if name in files:
            return os.path.join(root, name)
    return None


def ensure_tools(tools_dir):
    cuobjdump = find_tool("cuobjdump", tools_dir)
    if cuobjdump is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", tools_dir, "nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm"], check=True)
        cuobjdump = find_tool("cuobjdump", tools_dir)
    if cuobjdump is None:
        sys.exit("sass_report: cuobjdump not found after installing nvidia-cuda-cuobjdump")
    nvdisasm = find_tool("nvdisasm", tools_dir)
    if nvdisasm is not None:  # cuobjdump -sass runs nvdisasm from PATH
        os.environ["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", "")
    return cuobjdump


def demangle(names):
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    # "void stats_channels_first<float, 4>(float const*, ...)" -> "stats_channels_first<float, 4>"
    short = [re.sub(r"^void ", "", line.split("(")[0]) for line in out.splitlines()]
    return dict(zip(names, short))


def resource_usage(cuobjdump, library):
    text = subprocess.run([cuobjdump, "-arch", "sm_90", "-res-usage", library], capture_output=True, text=True,
                          check=True).stdout
    usage = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and current:
            usage[current] = {"registers": int(m.group(1)), "stack": int(m.group(2)),
                              "shared": int(m.group(3)), "local": int(m.group(4))}
            current = None
    return usage


def memory_instructions(cuobjdump, library):
    text = subprocess.run([cuobjdump, "-arch", "sm_90", "-sass", library], capture_output=True, text=True,
                          check=True).stdout
    counts = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = counts.setdefault(m.group(1), {"ldg128": 0, "ldg_narrow": 0, "stg128": 0, "stg_narrow": 0})
            continue
        m = re.search(r"\b(LDG|STG)\.E(\.\S+)?", line)
        if m and current is not None:
            wide = ".128" in (m.group(2) or "")
            key = ("ldg" if m.group(1) == "LDG" else "stg") + ("128" if wide else "_narrow")
            current[key] += 1
    return counts


def occupancy(registers, shared, threads):
    warps = (threads + WARP - 1) // WARP
    per_warp = -(-registers * WARP // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = SM_REGISTERS // (per_warp * warps) if registers else SM_BLOCKS
    by_shared = SM_SHARED // (shared + BLOCK_RESERVED_SHARED)
    by_threads = SM_THREADS // (warps * WARP)
    blocks = min(by_registers, by_shared, by_threads, SM_BLOCKS)
    return blocks * warps / (SM_THREADS // WARP)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="libbnk.so (or any object with sm_90 code)")
    parser.add_argument("--budget", default=os.path.join(os.path.dirname(__file__), "sass_budget.json"))
    parser.add_argument("--tools-dir", default=None, help="where to install cuobjdump/nvdisasm")
    args = parser.parse_args()

    tools_dir = args.tools_dir or os.path.join(os.path.dirname(os.path.abspath(args.library)), ".sass-tools")
    cuobjdump = ensure_tools(tools_dir)
    usage = resource_usage(cuobjdump, args.library)
    memory = memory_instructions(cuobjdump, args.library)
    names = demangle(sorted(usage))
    with open(args.budget) as f:
        budget = json.load(f)

    rows, failures = [], []
    matched_rules = set()
    for mangled in sorted(usage, key=lambda k: names[k]):
        name = names[mangled]
        rule = None
        for index, candidate in enumerate(budget["kernels"]):
            if re.search(candidate["match"], name):
                rule = candidate
                matched_rules.add(index)
                break
        if rule is None:
            failures.append(f"{name}: no budget entry matches this kernel")
            continue
        limits = dict(budget["defaults"], **rule)
        u, m = usage[mangled], memory.get(mangled, {"ldg128": 0, "ldg_narrow": 0, "stg128": 0, "stg_narrow": 0})
        occ = occupancy(u["registers"], u["shared"], limits["threads"])
        rows.append((name, u["registers"], u["local"], u["shared"], occ, m["ldg128"], m["ldg_narrow"],
                     m["stg128"], m["stg_narrow"]))
        if u["local"] > limits["max_local_bytes"] or u["stack"] > limits["max_local_bytes"]:
            failures.append(f"{name}: {u['local']} bytes of local memory (spills), budget {limits['max_local_bytes']}")
        if occ < limits["min_occupancy"]:
            failures.append(f"{name}: occupancy {occ:.2f} below {limits['min_occupancy']:.2f}")
        if limits.get("wide_loads") and m["ldg128"] == 0:
            failures.append(f"{name}: vectorized path has no 128-bit global load (LDG.E.128)")
        if limits.get("wide_stores") and m["stg128"] == 0:
            failures.append(f"{name}: vectorized path has no 128-bit global store (STG.E.128)")
    for index, rule in enumerate(budget["kernels"]):
        if index not in matched_rules:
            failures.append(f"budget entry '{rule['match']}' matches no kernel")

    width = max(len(r[0]) for r in rows) if rows else 10
    header = f"{'kernel':<{width}}  regs  spill  smem   occ   LDG128 LDGnarrow STG128 STGnarrow"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>4}  {r[2]:>5}  {r[3]:>5}  {r[4]:>4.2f}  {r[5]:>6} {r[6]:>9} {r[7]:>6} {r[8]:>9}")
    print(f"\n{len(rows)} kernels, sm_90, occupancy = resident warps / 64 on an H100 at the budget's block size")
    if failures:
        print("\nBUDGET FAILURES:")
        for f in failures:
            print("  " + f)
        return 1
    print("every kernel meets its budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
