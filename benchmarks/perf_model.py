#!/usr/bin/env python3
"""A MODEL of bnk's op times on an H100 and an H200, from the plan and the machine code. Not a measurement.

For every shape of the chosen presets and every op (fwd_train, fwd_infer, bwd), bnk-plan (plan_dump.c,
built against bnk_emu) prints the launches the library's own planning code picks: kernel, grid, block; for a
training op with a persistent path also that path's one launch and whether host/persistent.c's capacity rule
takes it. Each op is modelled on the path the library would take (the CSV's rows), and the persistent path is
set against the two-pass one on the ResNet-50 layers where it is chosen.
The kernels' resources (registers, shared memory -> resident blocks per SM) and hot-loop figures
(instructions per element, bytes in flight) come from `sass_report.py --json` (default: the committed
snapshot benchmarks/sass_figures.json). Each launch's time is then modelled as printed by --assumptions
(and at the top of every run), and each op's total is set against its byte floor (docs/performance.md).

    python3 benchmarks/perf_model.py --plan-tool build/benchmarks/bnk-plan [--preset all] [--batch 1,32,256]
                                     [--csv FILE] [--sass FILE]

Imports no GPU library and runs nothing on a GPU.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_report import occupancy_blocks  # noqa: E402  (the SASS report's own occupancy rule)

DEVICES = {  # SMs, clock, copy bandwidth
    "H100": {"sms": 132, "clock_hz": 1.755e9, "bandwidth": 3.0e12},
    "H200": {"sms": 132, "clock_hz": 1.755e9, "bandwidth": 4.8e12},
}
ISSUE_EFFICIENCY = 0.8       # of the 4 x 32 lanes x clock issue slots per SM that a streaming loop achieves
LAUNCH_US = 2.0              # per kernel launch, back to back on a stream
MEMORY_LATENCY_S = 0.6e-6    # DRAM latency, for the bytes in flight that a grid needs to reach the bandwidth
MERGE_STEP_S = 0.25e-6       # one step of a merge loop: an L2 load of a piece just written, then its merge
FOLD_S = 0.023e-6            # one fold of a piece into a thread's run (~40 dependent instructions at 1.755 GHz)
MERGE_LOAD_BATCH = 4         # loads a thread of the channels-last merge issues ahead of its folds (BNK_MERGE_BATCH)
GRID_SYNC_S = 1.0e-6         # one cooperative_groups grid barrier across 132 SMs (an assumption, not measured)
SCHEDULERS, LANES = 4, 32

# ResNet-50 v1.5's 53 BN layers as (C, H, W): count.
RESNET50_LAYERS = {
    (64, 112, 112): 1, (64, 56, 56): 6, (256, 56, 56): 4, (128, 56, 56): 1, (128, 28, 28): 7,
    (512, 28, 28): 5, (256, 28, 28): 1, (256, 14, 14): 11, (1024, 14, 14): 7, (512, 14, 14): 1,
    (512, 7, 7): 5, (2048, 7, 7): 4,
}
# benchmarks/bench.c's presets: bn1d (N, C) and tiny-spatial (N, C) at 7 x 7.
BN1D_SHAPES = [(1, 256), (32, 256), (256, 4096), (4096, 1024), (65535, 256), (65536, 256), (1000000, 128)]
TINY_SPATIAL_SHAPES = [(1, 2048), (32, 2048), (256, 2048), (32, 8192), (8, 65536), (2, 131072)]

OPS = ("fwd_train", "fwd_infer", "bwd")
FLOOR_PASSES = {"fwd_train": 3, "fwd_infer": 2, "bwd": 5}  # tensor-sized reads + writes (docs/performance.md)
# The persistent path's: each input read once (x; x and dy), the output written once.
PERSISTENT_READS = {"fwd_train": 1, "bwd": 2}
# Vectors (rows) a thread of a persistent kernel caches in registers (kernels/launchers.h); its second level's
# depth comes from bnk-plan ("shared_depth").
PERSISTENT_REGISTER_CACHE = {"fwd_train": 8, "bwd": 4}
# Shared memory bandwidth of an sm_90 SM: 32 banks x 4 bytes per clock.
SHARED_BYTES_PER_CLOCK = 128
PERSISTENT_TARGETS = {"fwd_train": 1.3, "bwd": 1.4}  # issue 13: speedup over two-pass where chosen, H100, batch 32
# Per-channel bytes of the finalize / merge kernel beyond the tensor passes, by pieces per channel P
# (docs/performance.md): (6 + 3 P) C 4 for the forward, (12 + 4 P) C 4 for the backward.
PER_CHANNEL_FLOATS = {"fwd_train": (6, 3), "bwd": (12, 4)}
TARGETS = {"fwd_train": 0.85, "fwd_infer": 0.90, "bwd": 0.88}  # fraction of the floor, ResNet-50 batch 32, H100
MAX_TRAINING_LAUNCHES = 2
DTYPES = {"f32": 4, "f16": 2, "bf16": 2}
CSV_COLUMNS = ["device", "preset", "batch", "layout", "dtype", "op", "launches", "floor_us", "model_us"]


def assumptions():
    lines = ["MODEL, not a measurement: every time below is computed from the plan and the SASS, no GPU ran.",
             "Assumptions:"]
    for name, d in DEVICES.items():
        lines.append(f"  {name}: {d['sms']} SMs, {d['clock_hz'] / 1e9:g} GHz, {d['bandwidth'] / 1e12:g} TB/s copy"
                     f" bandwidth, {SCHEDULERS} schedulers x {LANES} lanes per SM")
    lines += [
        f"  floor = tensor bytes / bandwidth: fwd_train 3 E b, fwd_infer 2 E b, bwd 5 E b (E elements of b bytes)"
        " on the two-pass path",
        f"  each launch costs {LAUNCH_US:g} us on top of its work",
        "  a streaming launch (statistics, normalize, backward sums, dx) moves its share of the tensor bytes;",
        "    its blocks run in waves of (blocks per SM from registers, shared memory, threads) x SMs; each wave",
        "    takes max(bytes / achieved bandwidth, elements x instructions per element / issue rate), where",
        f"    achieved bandwidth = min(bandwidth, bytes in flight / {MEMORY_LATENCY_S * 1e6:g} us) (Little's law:"
        " resident threads x one hot-loop iteration's loads)",
        f"    and issue rate = SMs in use x {SCHEDULERS} x {LANES} x clock x {ISSUE_EFFICIENCY:g};",
        "    instructions per element are the hot loop's upper bound from sass_report.py",
        "  a finalize / merge launch moves (6 + 3 P) C 4 (forward) or (12 + 4 P) C 4 (backward) bytes, P pieces per"
        f" channel,\n    and takes at least {MERGE_STEP_S * 1e6:g} us (an L2 load and a merge) per 32 pieces plus one"
        f" ({MEMORY_LATENCY_S * 1e6:g} us) DRAM latency: one warp per channel merges its pieces in order;",
        "    channels-last one thread per channel folds the P pieces in order: one DRAM latency, then"
        f" {MERGE_STEP_S * 1e6:g} us per {MERGE_LOAD_BATCH} loads\n    issued together plus"
        f" {FOLD_S * 1e6:g} us per fold",
        "  a reduction launch that merges inside (2-launch ops) adds the merge of its last-finishing block after its"
        f" waves:\n    channels-first one {MEMORY_LATENCY_S * 1e6:g} us counter round trip, then per round of"
        " (channels of the group / warps of the block) the merge above;",
        "    channels-last two levels of thread-per-channel folds as above (ceil(P / 16) pieces of a band, then the"
        " B bands),\n    after three DRAM latencies (the counter of the band, the band partials and counter of the"
        " tile, the outputs)",
        "  blocks of a launch carry equal work; launches do not overlap",
        "  the persistent path (where bnk-plan lists one) is chosen exactly when host/persistent.c's capacity rule"
        " takes it:",
        "    its blocks <= blocks per SM (the occupancy of its kernel's sm_90 resources) x SMs; then the op is one"
        " launch:",
        "    load phase max(input bytes / bandwidth, one DRAM latency, elements x the two-pass reduction's"
        " instructions",
        "    per element / issue rate of the SMs the grid occupies), then "
        f"{GRID_SYNC_S * 1e6:g} us per grid barrier, the merge as above",
        "    (in the kernel: no launch; channels-last: `group` threads of a block share a channel, group the most of"
        " its threads,",
        "    halving, that leaves a group for every channel; per round of (blocks x threads / group) channels"
        f" one DRAM latency,\n    {MERGE_STEP_S * 1e6:g} us per `group` pieces and, when group > 32,"
        f" {MERGE_STEP_S * 1e6:g} us for the combine in shared memory),",
        "    then the write phase max(output bytes / bandwidth, one DRAM latency, elements x",
        "    the two-pass elementwise pass's instructions per element / issue rate); floor = (inputs + 1) E b",
        "  a channels-first persistent kernel whose team (a warp or a block, bnk-plan's \"team\") owns whole channels"
        " has no",
        "    grid barrier and no merge of pieces: its teams take the channels in rounds of (blocks x teams per block),"
        " and",
        f"    each round adds one {MERGE_STEP_S * 1e6:g} us step (the team's own piece read back from L2 and derived)"
        " for the merge",
        "  a persistent kernel with a second cache level (bnk-plan's \"shared_depth\" d) keeps d / (k + d) of its"
        " values in shared memory",
        "    (k the registers' 8 vectors, backward 4), each stored once and loaded once: the forward's as stored"
        " (b bytes, 4 for",
        "    single elements), the backward's g and x as stored (2 b bytes); that traffic is added, not"
        f" overlapped, at {SHARED_BYTES_PER_CLOCK} bytes",
        "    per clock per SM in use",
    ]
    return "\n".join(lines)


def run_plan_tool(tool, shapes, sm_count):
    text = subprocess.run([tool, "--sm-count", str(sm_count)] + shapes, capture_output=True, text=True,
                          check=True).stdout
    return {entry["shape"]: entry for entry in json.loads(text)["shapes"]}


def kernel_figures(sass, name):
    kernel = sass["kernels"].get(name)
    if kernel is None:
        sys.exit(f"perf_model: the plan launches '{name}', which the SASS figures do not list"
                 " (regenerate them with sass_report.py --json, or adapt plan_of_op in plan_dump.c)")
    return kernel


def streaming_launch_seconds(launch, kernel, elements, device):
    loop = kernel["hot_loop"]
    dtype_bytes = loop["vector_bytes"] / loop["vec"]
    total_bytes = elements * loop["bytes_per_element"]
    blocks, threads = launch["blocks"], launch["threads"]
    per_sm = max(1, occupancy_blocks(kernel["registers"], kernel["shared"], threads))
    capacity = per_sm * device["sms"]
    in_flight_per_thread = loop["elements_per_iteration"] * loop["reads"] * dtype_bytes

    def wave(n):
        bandwidth = min(device["bandwidth"], n * threads * in_flight_per_thread / MEMORY_LATENCY_S)
        issue_rate = min(device["sms"], n) * SCHEDULERS * LANES * device["clock_hz"] * ISSUE_EFFICIENCY
        return max(n * total_bytes / blocks / bandwidth,
                   n * elements / blocks * loop["instructions_per_element"] / issue_rate)

    full, tail = divmod(blocks, capacity)
    seconds = full * wave(capacity) + (wave(tail) if tail else 0.0)
    return seconds, blocks / capacity, per_sm


def merge_launch_seconds(op, plan, channels, device, channels_last=False):
    """A merge kernel of its own: a warp per channel channels-first; channels-last a thread per channel, through
    the pieces in order (finalize_stats_channels_last, merge_backward_sums_channels_last)."""
    # A per-channel kernel in an op without a reduction (none today) reads and writes a few arrays of C floats.
    fixed, per_part = PER_CHANNEL_FLOATS.get(op, (4, 0))
    total_bytes = (fixed + per_part * plan["parts"]) * channels * 4
    if channels_last:
        latency = MEMORY_LATENCY_S + thread_fold_seconds(plan["parts"])
    else:
        latency = MEMORY_LATENCY_S + MERGE_STEP_S * math.ceil(plan["parts"] / 32)
    return max(total_bytes / device["bandwidth"], latency)


def persistent_merge_seconds(op, persistent, channels, device):
    """The merge between a persistent kernel's grid barriers. Channels-first: one warp per channel, as the merge
    launch. Channels-last: kernels/persistent.cuh's for_each_block_channel, whose `group` threads of one block
    share a channel's pieces (groups of several warps combine them in shared memory)."""
    if "channels_last" not in persistent["kernel"]:
        return merge_launch_seconds(op, persistent, channels, device)
    threads = persistent["threads"]
    group = threads
    while group > 1 and persistent["blocks"] * (threads // group) < channels:
        group //= 2
    rounds = math.ceil(channels / (persistent["blocks"] * (threads // group)))
    combine = MERGE_STEP_S if group > 32 else 0.0
    fixed, per_part = PER_CHANNEL_FLOATS[op]
    total_bytes = (fixed + per_part * persistent["parts"]) * channels * 4
    latency = rounds * (MEMORY_LATENCY_S + MERGE_STEP_S * math.ceil(persistent["parts"] / group) + combine)
    return max(total_bytes / device["bandwidth"], latency)


def thread_fold_seconds(pieces):
    """One thread folding `pieces` partials in order, their loads issued MERGE_LOAD_BATCH at a time."""
    return math.ceil(pieces / MERGE_LOAD_BATCH) * MERGE_STEP_S + pieces * FOLD_S


def in_kernel_merge_seconds(plan, launch):
    """The tail of a reduction whose last block of each group merges the group's pieces (bnk_last_of_group).
    Channels-first: a warp per channel, in rounds of the block's warps. Channels-last (bnk-plan's "merge_bands"
    B > 0): a thread per channel in two levels, the last block of a band of ceil(P / 16) pieces, then the last
    band of the tile over the B band partials, each level after a counter round trip."""
    bands = plan.get("merge_bands", 0)
    if bands > 0:
        band_pieces = math.ceil(plan["parts"] / bands)
        return 3 * MEMORY_LATENCY_S + thread_fold_seconds(band_pieces) + thread_fold_seconds(bands)
    rounds = math.ceil(plan["merged_channels"] / max(1, launch["threads"] // 32))
    return MEMORY_LATENCY_S + rounds * (MEMORY_LATENCY_S + MERGE_STEP_S * math.ceil(plan["parts"] / 32))


def two_pass_model(op, entry, sass, device):
    """(floor seconds, model seconds, launches, details) of the op's two-pass path on one shape."""
    plan = entry["ops"][op]
    elements = entry["elements"]
    dtype_bytes = DTYPES[entry["shape"].split(":")[1]]
    floor = FLOOR_PASSES[op] * elements * dtype_bytes / device["bandwidth"]
    seconds = 0.0
    details = []
    for launch in plan["launches"]:
        kernel = kernel_figures(sass, launch["kernel"])
        if kernel["hot_loop"] is not None:
            t, waves, per_sm = streaming_launch_seconds(launch, kernel, elements, device)
            merge = ""
            if launch is plan["launches"][0] and plan.get("merged_channels", 0) > 0:
                tail = in_kernel_merge_seconds(plan, launch)
                t += tail
                merge = f" (merge inside: {tail * 1e6:.2f} us)"
            details.append(f"{launch['kernel']} grid {launch['blocks']}x{launch['threads']}, {per_sm}/SM,"
                           f" {waves:.2f} waves, {t * 1e6:.2f} us{merge}")
        else:
            t = merge_launch_seconds(op, plan, entry["c"], device, "channels_last" in launch["kernel"])
            details.append(f"{launch['kernel']} grid {launch['blocks']}x{launch['threads']}, {t * 1e6:.2f} us")
        seconds += t + LAUNCH_US * 1e-6
    return floor, seconds, len(plan["launches"]), details


def phase_seconds(bytes_moved, elements, instructions_per_element, sms_in_use, device):
    issue_rate = sms_in_use * SCHEDULERS * LANES * device["clock_hz"] * ISSUE_EFFICIENCY
    return max(bytes_moved / device["bandwidth"], MEMORY_LATENCY_S, elements * instructions_per_element / issue_rate)


def persistent_model(op, entry, sass, device):
    """(floor seconds, model seconds, launches, details) of the op's persistent path on one shape: its kernel has
    no loop for sass_report.py to count, so each phase is charged the per-element instructions of the two-pass
    kernel that does the same work (the reduction's for the load phase, the elementwise pass's for the write)."""
    plan = entry["ops"][op]
    persistent = plan["persistent"]
    kernel_figures(sass, persistent["kernel"])  # the kernel must be one the SASS figures know
    elements = entry["elements"]
    dtype_bytes = DTYPES[entry["shape"].split(":")[1]]
    reads = PERSISTENT_READS[op]
    floor = (reads + 1) * elements * dtype_bytes / device["bandwidth"]
    streaming = [kernel_figures(sass, launch["kernel"])["hot_loop"] for launch in plan["launches"]]
    streaming = [loop for loop in streaming if loop is not None]
    sms_in_use = min(device["sms"], persistent["blocks"])
    load = phase_seconds(reads * elements * dtype_bytes, elements, streaming[0]["instructions_per_element"],
                         sms_in_use, device)
    if persistent.get("team", 0):
        merge = team_merge_seconds(persistent, entry["c"])
    else:
        merge = persistent_merge_seconds(op, persistent, entry["c"], device)
    write = phase_seconds(elements * dtype_bytes, elements, streaming[-1]["instructions_per_element"], sms_in_use,
                          device)
    deep = second_level_seconds(op, persistent, elements, dtype_bytes, sms_in_use, device)
    seconds = LAUNCH_US * 1e-6 + load + persistent["grid_syncs"] * GRID_SYNC_S + merge + write + deep
    details = [f"{persistent['kernel']} grid {persistent['blocks']}x{persistent['threads']},"
               f" {persistent['blocks_per_sm']}/SM, second level {persistent.get('shared_depth', 0)} deep:"
               f" load {load * 1e6:.2f} us, {persistent['grid_syncs']} barriers,"
               f" merge {merge * 1e6:.2f} us, write {write * 1e6:.2f} us, shared memory {deep * 1e6:.2f} us"]
    return floor, seconds, 1, details


def second_level_seconds(op, persistent, elements, dtype_bytes, sms_in_use, device):
    """The shared-memory traffic of a persistent kernel's second cache level: the share of the values it holds
    there, each stored once and loaded once."""
    depth = persistent.get("shared_depth", 0)
    if depth == 0:
        return 0.0
    share = depth / (PERSISTENT_REGISTER_CACHE[op] + depth)
    vec = int(persistent["kernel"].split("<")[1].split(",")[1])
    slot_bytes_per_element = 2 * dtype_bytes if op == "bwd" else (4 if vec == 1 else dtype_bytes)
    shared_bytes = 2 * share * elements * slot_bytes_per_element
    return shared_bytes / (sms_in_use * SHARED_BYTES_PER_CLOCK * device["clock_hz"])


def team_merge_seconds(persistent, channels):
    """The derivation of a team kernel (no pieces to merge, no barrier): each team derives its channels one after
    another from its own piece, one merge step a channel."""
    teams = persistent["blocks"] * (persistent["threads"] // persistent["team"])
    return math.ceil(channels / teams) * MERGE_STEP_S


def persistent_chosen(op, entry):
    persistent = entry["ops"][op].get("persistent")
    return persistent is not None and persistent["fits"]


def model_op(op, entry, sass, device):
    """The op as the library runs it on this shape: the persistent path where it is chosen, else two-pass."""
    if persistent_chosen(op, entry):
        return persistent_model(op, entry, sass, device)
    return two_pass_model(op, entry, sass, device)


def shape_key(layout, dtype, dims):
    return f"{layout}:{dtype}:" + ",".join(str(d) for d in dims)


def preset_cases(presets, batches):
    """(preset row name, batch, dims, count) for every shape; the ResNet-50 layers also add up into one row."""
    cases = []
    if "resnet50" in presets:
        for batch in batches:
            for (c, h, w), count in RESNET50_LAYERS.items():
                cases.append(("resnet50", batch, (batch, c, h, w), count))
    if "bn1d" in presets:
        cases += [("bn1d", n, (n, c), 1) for n, c in BN1D_SHAPES]
    if "tiny-spatial" in presets:
        cases += [("tiny-spatial", n, (n, c, 7, 7), 1) for n, c in TINY_SPATIAL_SHAPES]
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--plan-tool", required=True, help="the bnk-plan executable (benchmarks/plan_dump.c)")
    parser.add_argument("--sass", default=os.path.join(here, "sass_figures.json"),
                        help="kernel figures from sass_report.py --json")
    parser.add_argument("--preset", default="all", help="resnet50,bn1d,tiny-spatial or all")
    parser.add_argument("--batch", default="1,32,256", help="batch sizes of the resnet50 preset")
    parser.add_argument("--dtype", default="f32,f16,bf16")
    parser.add_argument("--layout", default="nchw,nhwc")
    parser.add_argument("--csv", default=None, help="write device,preset,batch,layout,dtype,op,launches,floor_us,"
                        "model_us rows: one per shape (preset:NxCx...) and the 53-layer ResNet-50 totals (preset resnet50);"
                        " launches is per call of the op")
    parser.add_argument("--detail", action="store_true", help="print every launch of every shape")
    args = parser.parse_args()

    presets = ["resnet50", "bn1d", "tiny-spatial"] if args.preset == "all" else args.preset.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    dtypes, layouts = args.dtype.split(","), args.layout.split(",")
    for name, allowed, values in (("--preset", ("resnet50", "bn1d", "tiny-spatial"), presets),
                                  ("--dtype", DTYPES, dtypes), ("--layout", ("nchw", "nhwc"), layouts)):
        for value in values:
            if value not in allowed:
                parser.error(f"{name}: unknown '{value}' (choose from {', '.join(allowed)})")
    with open(args.sass) as f:
        sass = json.load(f)

    print(assumptions())
    print(f"  kernel figures: {args.sass}\n")
    cases = preset_cases(presets, batches)
    shapes = sorted({shape_key(layout, dtype, dims) for _, _, dims, _ in cases for layout in layouts
                     for dtype in dtypes})
    sm_counts = {d["sms"] for d in DEVICES.values()}
    plans = {sms: run_plan_tool(args.plan_tool, shapes, sms) for sms in sm_counts}

    rows = []
    # (device, batch, layout, dtype, op) -> [floor, model, launches per call, launches over the 53 layers, the
    # two-pass path's floor (3 E b, 2 E b, 5 E b) whatever the path]
    totals = {}
    # (device, batch, layout, dtype, op) -> [two-pass model, persistent model, over the layers where persistent is
    # chosen; layers where it is chosen, layers]
    paths = {}
    offered = {op: False for op in PERSISTENT_READS}  # whether bnk-plan lists a persistent path for the op at all
    for device_name, device in DEVICES.items():
        for preset, batch, dims, count in cases:
            for layout in layouts:
                for dtype in dtypes:
                    entry = plans[device["sms"]][shape_key(layout, dtype, dims)]
                    for op in OPS:
                        if op != "fwd_infer" and entry["n"] * entry["s"] < 2:
                            continue  # training needs two values per channel (bench.c's bn1d N = 1)
                        floor, model, launches, details = model_op(op, entry, sass, device)
                        name = preset + ":" + "x".join(str(d) for d in dims)
                        rows.append([device_name, name, batch, layout, dtype, op, launches,
                                     f"{floor * 1e6:.6g}", f"{model * 1e6:.6g}"])
                        if args.detail:
                            print(f"{device_name} {name} {layout} {dtype} {op}: floor {floor * 1e6:.2f} us, model"
                                  f" {model * 1e6:.2f} us\n    " + "\n    ".join(details))
                        if preset == "resnet50":
                            key = (device_name, batch, layout, dtype, op)
                            total = totals.setdefault(key, [0.0, 0.0, 0, 0, 0.0])
                            total[0] += count * floor
                            total[4] += (count * FLOOR_PASSES[op] * entry["elements"] * DTYPES[dtype]
                                         / device["bandwidth"])
                            total[1] += count * model
                            total[2] = max(total[2], launches)
                            total[3] += count * launches
                            if op in PERSISTENT_READS:
                                offered[op] |= "persistent" in entry["ops"][op]
                                both = paths.setdefault(key, [0.0, 0.0, 0, 0])
                                both[3] += count
                                if persistent_chosen(op, entry):
                                    both[0] += count * two_pass_model(op, entry, sass, device)[1]
                                    both[1] += count * model
                                    both[2] += count
    for (device_name, batch, layout, dtype, op), (floor, model, launches, _, _) in totals.items():
        rows.append([device_name, "resnet50", batch, layout, dtype, op, launches, f"{floor * 1e6:.6g}",
                     f"{model * 1e6:.6g}"])

    if totals:
        print_resnet_summary(totals, batches, layouts, dtypes)
        print_paths_summary(paths, offered, batches, layouts, dtypes)
    for preset in ("bn1d", "tiny-spatial"):
        if preset in presets:
            print_preset(rows, preset, layouts, dtypes)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        print(f"\nwrote {len(rows)} rows to {args.csv}")
    return 0


def print_resnet_summary(totals, batches, layouts, dtypes):
    print("ResNet-50, 53 BN layers: fraction of the byte floor (floor / model time) per op, MODEL")
    for device_name in DEVICES:
        for batch in batches:
            print(f"\n  {device_name}, batch {batch}:   fwd_train  fwd_infer        bwd   (floor us / model us,"
                  " launches per call)")
            for layout in layouts:
                for dtype in dtypes:
                    cells = []
                    for op in OPS:
                        floor, model = totals[(device_name, batch, layout, dtype, op)][:2]
                        cells.append(f"{floor / model:>9.1%}")
                    detail = "  ".join(f"{op} {totals[(device_name, batch, layout, dtype, op)][0] * 1e6:.0f}/"
                                       f"{totals[(device_name, batch, layout, dtype, op)][1] * 1e6:.0f}"
                                       f" x{totals[(device_name, batch, layout, dtype, op)][2]}"
                                       for op in OPS)
                    print(f"    {layout} {dtype:<4}           " + "  ".join(cells) + f"   ({detail})")
    if 32 in batches and "H100" in DEVICES:
        print("\nIssue 12's targets (H100, batch 32): fwd_train >= 85% of the 3-pass floor, fwd_infer >= 90% of the"
              f" 2-pass floor, bwd >= 88% of the 5-pass floor, <= {MAX_TRAINING_LAUNCHES} launches per training op;"
              "\n  the floors are the two-pass path's, as the issue states them, whichever path a layer takes (in"
              " brackets: against\n  each layer's own path's floor, the table above)")
        for layout in layouts:
            for dtype in dtypes:
                verdicts = []
                for op in OPS:
                    floor, model, launches, _, two_pass_floor = totals[("H100", 32, layout, dtype, op)]
                    met = two_pass_floor / model >= TARGETS[op]
                    if op != "fwd_infer":
                        met = met and launches <= MAX_TRAINING_LAUNCHES
                    verdicts.append(f"{op} {'met' if met else 'NOT met'} ({two_pass_floor / model:.1%}"
                                    f" [{floor / model:.1%}], {launches} launches)")
                print(f"  {layout} {dtype:<4} " + ", ".join(verdicts))
        print(f"\nThe launch cost alone (H100, batch 32): floor / (floor + launches x {LAUNCH_US:g} us), the most any kernel"
              " could reach with the launches the plan takes (every kernel at its byte floor)")
        for layout in layouts:
            for dtype in dtypes:
                cells = []
                for op in OPS:
                    floor, _, _, launches_total, _ = totals[("H100", 32, layout, dtype, op)]
                    ceiling = floor / (floor + launches_total * LAUNCH_US * 1e-6)
                    cells.append(f"{op} {ceiling:.1%} ({launches_total} launches)")
                print(f"  {layout} {dtype:<4} " + ", ".join(cells))
    print()


def print_paths_summary(paths, offered, batches, layouts, dtypes):
    print("ResNet-50, 53 BN layers: the persistent path against the two-pass one where it is chosen, MODEL")
    for device_name in DEVICES:
        for batch in batches:
            print(f"\n  {device_name}, batch {batch}:   (layers on the persistent path of 53; two-pass us / persistent"
                  " us over them = speedup)")
            for layout in layouts:
                for dtype in dtypes:
                    cells = []
                    for op in PERSISTENT_READS:
                        two_pass, persistent, chosen, layers = paths[(device_name, batch, layout, dtype, op)]
                        if chosen:
                            cells.append(f"{op} {chosen}/{layers}: {two_pass * 1e6:.0f}/{persistent * 1e6:.0f} us ="
                                         f" {two_pass / persistent:.2f}x")
                        else:
                            cells.append(f"{op} 0/{layers}: no layer on the persistent path")
                    print(f"    {layout} {dtype:<4} " + "   ".join(f"{c:<44}" for c in cells))
    if 32 in batches:
        print("\nIssue 13's targets (H100, batch 32, f16 NHWC, over the layers where persistent is chosen):"
              " fwd_train >= 1.3x, bwd >= 1.4x")
        for layout, dtype in (("nhwc", "f16"),):
            if layout not in layouts or dtype not in dtypes:
                print(f"  {layout} {dtype}: not modelled in this run (add it to --layout and --dtype)")
                continue
            for op, target in PERSISTENT_TARGETS.items():
                two_pass, persistent, chosen, layers = paths[("H100", 32, layout, dtype, op)]
                if not chosen:
                    why = "none fits" if offered[op] else f"bnk-plan lists no persistent {op}"
                    print(f"  {op}: NOT met: no layer on the persistent path ({why})")
                else:
                    speedup = two_pass / persistent
                    print(f"  {op}: {'met' if speedup >= target else 'NOT met'} ({speedup:.2f}x over {chosen} of"
                          f" {layers} layers)")
    if 1 in batches:
        print("\nBatch 1: every training op of the 53 layers in one launch (H100)? (layers in one launch of 53)")
        for layout in layouts:
            for dtype in dtypes:
                cells = []
                for op in PERSISTENT_READS:
                    key = ("H100", 1, layout, dtype, op)
                    one = paths[key][2]
                    cells.append(f"{op} {'yes' if one == paths[key][3] else 'NO'} ({one}/{paths[key][3]})")
                print(f"  {layout} {dtype:<4} " + ", ".join(cells))
    print()


def print_preset(rows, preset, layouts, dtypes):
    print(f"{preset}: floor us / model us (fraction of the floor) per shape and op, MODEL")
    by_key = {(r[0], r[1], r[3], r[4], r[5]): r for r in rows if r[1].startswith(preset + ":")}
    names = sorted({r[1] for r in rows if r[1].startswith(preset + ":")},
                   key=lambda n: [int(x) for x in n.split(":")[1].split("x")])
    for device_name in DEVICES:
        for name in names:
            for layout in layouts:
                for dtype in dtypes:
                    cells = []
                    for op in OPS:
                        r = by_key.get((device_name, name, layout, dtype, op))
                        cells.append(f"{op} " + (f"{float(r[7]):.2f}/{float(r[8]):.2f} ({float(r[7]) / float(r[8]):.0%})"
                                                 if r else "-"))
                    print(f"  {device_name} {name:<26} {layout} {dtype:<4} " + "  ".join(f"{c:<30}" for c in cells))
    print()


if __name__ == "__main__":
    sys.exit(main())
