#!/usr/bin/env python3
"""Static performance contract of bnk's kernels, read from their sm_90 machine code.

No GPU is available to time kernels in CI, so this checks what can be read off the SASS instead: per
kernel, registers, local memory (spills), static shared memory, the theoretical occupancy on an H100, the
number of 128-bit versus narrower global loads and stores, read-only (.CONSTANT) loads, and for every
streaming kernel its hot loop's instructions and MUFU operations per element and the issue demand they
put on an SM at full memory bandwidth. A budget file states the limits; the exit status is 1 when a kernel
breaks its budget, a budget names no kernel, or a known-offender list is out of date.

    python3 benchmarks/sass_report.py build/libbnk.so [--budget benchmarks/sass_budget.json] [--json FILE]

--json writes every kernel's figures (resources, hot loop, demand) for benchmarks/perf_model.py.

cuobjdump and nvdisasm come from PyPI (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) and are installed
into a folder next to the library on first use, since the compile-only toolkit here ships neither.

How the hot loop is found and measured (docs/performance.md, "Issue demand"):
- a loop is a backward branch (BRA to a lower address); its body is the address range from the target to
  the branch. The hot loop is the loop with the most tensor-data loads (global loads of exactly
  V x sizeof(T) bytes, V and T from the kernel's template arguments), the innermost one on a tie, among
  the loops before the first ATOMG.E.ADD (the in-kernel merge's, whose partials are 4-byte loads too);
- vectors per iteration = those loads / the tensors the kernel reads per element (the budget's
  `streaming` table), elements per iteration = vectors x V. A scalar fp32 loop's 4-byte data loads cannot
  be told from its 4-byte per-channel parameter loads, so it takes the vectors per iteration of its
  16-byte sibling (the same template with V = 16 / sizeof(T)), which runs the same loop;
- instructions per element = the loop body's instructions / elements per iteration. The body is counted
  statically: it includes the few instructions that jump around rare slow paths (the IEEE division's
  CALL), so the figure is a slight upper bound of what a full iteration issues;
- demand = instructions per element x (bandwidth / bytes moved per element) / (SMs x 4 schedulers x 32
  lanes x clock): the fraction of the GPU's issue slots the loop needs to keep pace with memory. Bytes per
  element are those of the kernel's leanest configuration (no optional outputs), the highest demand.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

# H100 / H200 (sm_90) per-SM limits.
SM_REGISTERS = 65536
SM_THREADS = 2048
SM_BLOCKS = 32
SM_SHARED = 233472          # bytes, of which each block also reserves 1 KiB
BLOCK_RESERVED_SHARED = 1024
REGISTER_UNIT = 256         # registers are allocated per warp in units of 256
WARP = 32

DTYPE_BYTES = {"float": 4, "__half": 2, "__nv_bfloat16": 2}
# Width suffix of a global load in SASS -> bytes (no suffix: 32 bits).
LOAD_WIDTH = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


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


def template_arguments(name):
    """"normalize_channels_first<__half, 8, false, 2>" -> ["__half", "8", "false", "2"] (flat templates only)."""
    m = re.search(r"<(.*)>$", name)
    return [a.strip() for a in m.group(1).split(",")] if m else []


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


def disassemble(cuobjdump, library):
    text = subprocess.run([cuobjdump, "-arch", "sm_90", "-sass", library], capture_output=True, text=True,
                          check=True).stdout
    return parse_sass(text)


def parse_sass(text):
    """Every function's instructions in address order, as (address, text without its guard, guarded)."""
    functions = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([^;]*?)\s*;", line)
        if m and current is not None:
            guarded = m.group(2) is not None and m.group(2).strip() not in ("@PT", "@UPT")
            current.append((int(m.group(1), 16), m.group(3), guarded))
    return functions


def global_access(instruction):
    """("LDG" | "STG", bytes, read_only) of a global access, else None."""
    m = re.match(r"(LDG|STG)\.E((?:\.[A-Z0-9]+)*)", instruction)
    if not m:
        return None
    suffixes = m.group(2).split(".")[1:]
    width = next((LOAD_WIDTH[s] for s in suffixes if s in LOAD_WIDTH), 4)
    return m.group(1), width, "CONSTANT" in suffixes


def memory_counts(instructions):
    counts = {"ldg128": 0, "ldg_narrow": 0, "stg128": 0, "stg_narrow": 0, "ldg_constant": 0}
    for _, text, _ in instructions:
        access = global_access(text)
        if access is None:
            continue
        kind, width, read_only = access
        counts[kind.lower() + ("128" if width == 16 else "_narrow")] += 1
        counts["ldg_constant"] += read_only
    return counts


BRANCH = re.compile(r"(BRA(?:\.\w+)*)\s+(?:!?U?P\w+\s*,\s*)?(0x[0-9a-f]+)")


def successors(instructions, i, index_of):
    """Indices that may run after instruction i (a guarded instruction may also fall through)."""
    _, text, guarded = instructions[i]
    following = [i + 1] if i + 1 < len(instructions) else []
    m = BRANCH.match(text)
    if m:
        target = index_of.get(int(m.group(2), 16))
        taken = [target] if target is not None else []
        conditional = guarded or m.group(1) != "BRA"
        return taken + following if conditional else taken
    if re.match(r"(EXIT|RET|BRX|JMX)\b", text):
        return following if guarded else []
    return following


def loops(instructions):
    """(head, [latches]) of every loop: a backward branch's target and the branches that go back to it."""
    index_of = {address: i for i, (address, _, _) in enumerate(instructions)}
    heads = {}
    for i, (address, text, _) in enumerate(instructions):
        m = BRANCH.match(text)
        if m:
            target = int(m.group(2), 16)
            if target <= address and target in index_of:
                heads.setdefault(index_of[target], []).append(i)
    return sorted(heads.items())


def data_load(text, data_bytes):
    access = global_access(text)
    return access is not None and access[0] == "LDG" and access[1] == data_bytes


def full_iteration(instructions, head, latches, data_bytes, counted):
    """The largest count of `counted` instructions on a path from the loop head back to it among the paths
    that load the most data, and those data loads: an upper bound of what a steady-state iteration runs
    (every guarded load in bounds). The bound is path-insensitive: it takes the larger side of every test,
    including tests that a real iteration decides the same way twice (a fast all-in-bounds copy of the body
    and its guarded copy, a division's fast and slow path), so the true count can only be lower. Branches
    inside the body that go backward (inner loops) are taken as not taken, so an inner loop counts once."""
    index_of = {address: i for i, (address, _, _) in enumerate(instructions)}
    last = max(latches)
    best = {}  # index -> (data loads, counted instructions) of the best path from there to the back edge
    for i in range(last, head - 1, -1):
        options = []
        for j in successors(instructions, i, index_of):
            if j == head and i in latches:
                options.append((0, 0))
            elif i < j <= last and j in best:
                options.append(best[j])
        if options:
            tail = max(options)
            text = instructions[i][1]
            best[i] = (tail[0] + int(data_load(text, data_bytes)), tail[1] + int(counted(text)))
    return best.get(head)


def hot_loop(instructions, data_bytes):
    """The loop whose full iteration loads the most data (the innermost, shortest, on a tie), with its figures.
    Loops after the first ATOMG.E.ADD are left out: a reduction's in-kernel merge runs there (bnk_last_of_group's
    counter), and its loops read the pieces' partials, which a 4-byte data load cannot be told from."""
    merge_start = next((i for i, (_, text, _) in enumerate(instructions) if text.startswith("ATOMG.E.ADD")),
                       len(instructions))
    best = None
    for head, latches in loops(instructions):
        if head >= merge_start:
            continue
        path = full_iteration(instructions, head, latches, data_bytes, lambda text: True)
        if path is None or path[0] == 0:
            continue
        mufu = full_iteration(instructions, head, latches, data_bytes, lambda text: text.startswith("MUFU."))
        candidate = {"instructions": path[1], "data_loads": path[0], "mufu": mufu[1],
                     "address": instructions[head][0], "body_instructions": max(latches) - head + 1}
        if best is None or (path[0], -path[1]) > (best["data_loads"], -best["instructions"]):
            best = candidate
    return best


def first_match(rules, name):
    for index, rule in enumerate(rules):
        if re.search(rule["match"], name):
            return index, rule
    return None, None


def occupancy_blocks(registers, shared, threads):
    """Resident blocks per SM of a kernel (sm_90), limited by registers, shared memory and threads."""
    warps = (threads + WARP - 1) // WARP
    per_warp = -(-registers * WARP // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = SM_REGISTERS // (per_warp * warps) if registers else SM_BLOCKS
    by_shared = SM_SHARED // (shared + BLOCK_RESERVED_SHARED)
    by_threads = SM_THREADS // (warps * WARP)
    return min(by_registers, by_shared, by_threads, SM_BLOCKS)


def occupancy(registers, shared, threads):
    warps = (threads + WARP - 1) // WARP
    return occupancy_blocks(registers, shared, threads) * warps / (SM_THREADS // WARP)


def issue_demand(instructions_per_element, bytes_per_element, bandwidth, model):
    elements_per_second = bandwidth / bytes_per_element
    issue_per_second = model["sms"] * model["schedulers_per_sm"] * model["lanes"] * model["clock_hz"]
    return instructions_per_element * elements_per_second / issue_per_second


def streaming_figures(name, stream, loops_by_name, model):
    """Hot-loop figures of a streaming kernel, or None when its loop has no data load."""
    arguments = template_arguments(name)
    dtype_bytes = DTYPE_BYTES[arguments[0]]
    vec = int(arguments[1])
    loop = loops_by_name[name]
    if loop is None:
        return None
    vectors = loop["data_loads"] / stream["reads"]
    source = "own loads"
    if vec == 1 and dtype_bytes == 4:
        sibling = name.replace(f"<{arguments[0]}, 1", f"<{arguments[0]}, {16 // dtype_bytes}", 1)
        if loops_by_name.get(sibling):
            vectors = loops_by_name[sibling]["data_loads"] / stream["reads"]
            source = "16-byte sibling"
    elements = vectors * vec
    per_element = loop["instructions"] / elements
    bytes_per_element = (stream["reads"] + stream["writes"]) * dtype_bytes + stream.get("extra_bytes", 0.0)
    demand = {device: issue_demand(per_element, bytes_per_element, bandwidth, model)
              for device, bandwidth in model["bandwidth"].items()}
    return {"vec": vec, "vector_bytes": vec * dtype_bytes, "elements_per_iteration": elements,
            "elements_source": source, "loop_instructions": loop["instructions"], "data_loads": loop["data_loads"],
            "reads": stream["reads"],
            "instructions_per_element": per_element, "mufu_per_element": loop["mufu"] / elements,
            "bytes_per_element": bytes_per_element, "demand": demand}


def write_figures(path, library, model, figures):
    """JSON with one line per kernel, so that a kernel's change is one line of a diff."""
    with open(path, "w") as f:
        f.write(f'{{"library": {json.dumps(library)}, "issue_model": {json.dumps(model, sort_keys=True)},'
                ' "kernels": {\n')
        f.write(",\n".join(f"{json.dumps(name)}: {json.dumps(figures[name], sort_keys=True)}"
                            for name in sorted(figures)))
        f.write("\n}}\n")


def check_known(known, current, what, failures):
    """A known offender that no longer offends, or that names no kernel, makes the list out of date; one that
    got worse than its recorded figure is a regression."""
    for name, recorded in known.items():
        if name not in current:
            failures.append(f"{what}: '{name}' is not a kernel that offends (fixed or renamed): remove it")
        elif current[name] > recorded * 1.02 + 1e-9:
            failures.append(f"{what}: {name} is at {current[name]:.3g}, worse than the recorded {recorded:.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="libbnk.so (or any object with sm_90 code)")
    parser.add_argument("--budget", default=os.path.join(os.path.dirname(__file__), "sass_budget.json"))
    parser.add_argument("--tools-dir", default=None, help="where to install cuobjdump/nvdisasm")
    parser.add_argument("--json", default=None, help="write every kernel's figures to this file")
    parser.add_argument("--record-known", action="store_true",
                        help="rewrite the budget file's known_over_budget lists with today's offenders (after a"
                             " kernel change; review the diff: an entry that grew is a regression)")
    args = parser.parse_args()

    tools_dir = args.tools_dir or os.path.join(os.path.dirname(os.path.abspath(args.library)), ".sass-tools")
    cuobjdump = ensure_tools(tools_dir)
    usage = resource_usage(cuobjdump, args.library)
    code = disassemble(cuobjdump, args.library)
    names = demangle(sorted(usage))
    with open(args.budget) as f:
        budget = json.load(f)
    model = budget["issue_model"]
    budget_device = model["budget_device"]

    streams = {}
    loops_by_name = {}
    for mangled, name in names.items():
        _, stream = first_match(budget["streaming"], name)
        if stream is not None:
            streams[name] = stream
            data_bytes = int(template_arguments(name)[1]) * DTYPE_BYTES[template_arguments(name)[0]]
            loops_by_name[name] = hot_loop(code.get(mangled, []), data_bytes)

    rows, failures, figures = [], [], {}
    over_demand, constant_offenders = {}, {}
    matched_rules = set()
    for mangled in sorted(usage, key=lambda k: names[k]):
        name = names[mangled]
        index, rule = first_match(budget["kernels"], name)
        if rule is None:
            failures.append(f"{name}: no budget entry matches this kernel")
            continue
        matched_rules.add(index)
        limits = dict(budget["defaults"], **rule)
        u = usage[mangled]
        m = memory_counts(code.get(mangled, []))
        occ = occupancy(u["registers"], u["shared"], limits["threads"])
        stream = None
        if name in streams:
            stream = streaming_figures(name, streams[name], loops_by_name, model)
            if stream is None:
                failures.append(f"{name}: streaming kernel without a loop that loads its data")
        figures[name] = dict(u, threads=limits["threads"], occupancy=occ,
                             blocks_per_sm=occupancy_blocks(u["registers"], u["shared"], limits["threads"]),
                             memory=m, hot_loop=stream)
        rows.append((name, u, occ, m, stream))
        if u["local"] > limits["max_local_bytes"] or u["stack"] > limits["max_local_bytes"]:
            failures.append(f"{name}: {u['local']} bytes of local memory (spills) and a {u['stack']}-byte stack frame,"
                            f" budget {limits['max_local_bytes']}")
        if occ < limits["min_occupancy"]:
            failures.append(f"{name}: occupancy {occ:.2f} below {limits['min_occupancy']:.2f}")
        if limits.get("wide_loads") and m["ldg128"] == 0:
            failures.append(f"{name}: vectorized path has no 128-bit global load (LDG.E.128)")
        if limits.get("wide_stores") and m["stg128"] == 0:
            failures.append(f"{name}: vectorized path has no 128-bit global store (STG.E.128)")
        if stream is not None and stream["vector_bytes"] == 16 and stream["demand"][budget_device] > model["max_demand"]:
            over_demand[name] = round(stream["demand"][budget_device], 3)
        if re.search(budget["in_place_match"], name) and m["ldg_constant"] > 0:
            constant_offenders[name] = m["ldg_constant"]
    for index, rule in enumerate(budget["kernels"]):
        if index not in matched_rules:
            failures.append(f"budget entry '{rule['match']}' matches no kernel")
    for index, rule in enumerate(budget["streaming"]):
        if not any(first_match(budget["streaming"], n)[0] == index for n in streams):
            failures.append(f"streaming entry '{rule['match']}' matches no kernel")

    if args.record_known:
        budget["known_over_budget"] = {"demand": dict(sorted(over_demand.items())),
                                       "constant_loads": dict(sorted(constant_offenders.items()))}
        with open(args.budget, "w") as f:
            json.dump(budget, f, indent=2, ensure_ascii=False)
            f.write("\n")
    known_demand = budget["known_over_budget"]["demand"]
    known_constant = budget["known_over_budget"]["constant_loads"]
    for name, demand in over_demand.items():
        if name not in known_demand:
            failures.append(f"{name}: issue demand {demand:.2f} on the {budget_device}, budget {model['max_demand']}")
    for name, count in constant_offenders.items():
        if name not in known_constant:
            failures.append(f"{name}: {count} read-only (.CONSTANT) global loads in a kernel that may work in place")
    check_known(known_demand, over_demand, "known_over_budget.demand", failures)
    check_known(known_constant, constant_offenders, "known_over_budget.constant_loads", failures)

    devices = list(model["bandwidth"])
    width = max(len(r[0]) for r in rows) if rows else 10
    header = (f"{'kernel':<{width}}  regs  spill  smem   occ   LDG128 LDGnarrow STG128 STGnarrow CONST"
              f"  elem/it instr/el MUFU/el " + " ".join(f"{'dem ' + d:>8}" for d in devices))
    print(header)
    print("-" * len(header))
    for name, u, occ, m, stream in rows:
        line = (f"{name:<{width}}  {u['registers']:>4}  {u['local']:>5}  {u['shared']:>5}  {occ:>4.2f}  "
                f"{m['ldg128']:>6} {m['ldg_narrow']:>9} {m['stg128']:>6} {m['stg_narrow']:>9} {m['ldg_constant']:>5}")
        if stream is not None:
            line += (f"  {stream['elements_per_iteration']:>7g} {stream['instructions_per_element']:>8.2f}"
                     f" {stream['mufu_per_element']:>7.3f} "
                     + " ".join(f"{stream['demand'][d]:>8.2f}" for d in devices))
        print(line)
    print(f"\n{len(rows)} kernels, sm_90; occupancy = resident warps / 64 at the budget's block size; CONST ="
          f" read-only (.CONSTANT) global loads; elem/it, instr/el, MUFU/el: the hot loop of each streaming kernel;"
          f" dem = issue demand at full bandwidth ({', '.join(f'{d} {b / 1e12:g} TB/s' for d, b in model['bandwidth'].items())};"
          f" {model['sms']} SMs x {model['schedulers_per_sm']} x {model['lanes']} lanes x {model['clock_hz'] / 1e9:g} GHz),"
          f" budget <= {model['max_demand']} on the {budget_device} for 16-byte loops")
    if known_demand or known_constant:
        print(f"\nKNOWN OVER BUDGET (sass_budget.json known_over_budget; remove each entry as its kernel is fixed):")
        print(f"  issue demand on the {budget_device} above {model['max_demand']}: {len(known_demand)} kernels")
        for name in sorted(known_demand):
            now = over_demand.get(name)
            print(f"    {name}: recorded {known_demand[name]:.2f}, now " + (f"{now:.2f}" if now else "within budget"))
        print(f"  read-only loads in kernels that may work in place: {len(known_constant)} kernels")
        for name in sorted(known_constant):
            now = constant_offenders.get(name)
            print(f"    {name}: recorded {known_constant[name]}, now " + (f"{now}" if now else "none"))
    if args.json:
        write_figures(args.json, os.path.basename(args.library), model, figures)
    if failures:
        print("\nBUDGET FAILURES:")
        for failure in failures:
            print("  " + failure)
        return 1
    print("every kernel meets its budget" + (" (apart from the known offenders above)" if known_demand or
                                             known_constant else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
