#!/usr/bin/env python3
"""PyTorch as a peer of bnk-bench: torch.nn.functional.batch_norm on the cases bnk-bench ran.

    python3 benchmarks/torch_peer.py --cases-from results.json --csv torch.csv --json torch.json
                                     [--reference build/benchmarks/libbnk_reference.so] [--runs 20]
                                     [--warmup 5] [--device cuda|cpu]

The cases are those of bnk's rows in bnk-bench's JSON (fwd_train, fwd_infer and bwd; their layout, storage
type and shape), so that PyTorch is measured on exactly the shapes of the run it is drawn beside. PyTorch
picks its own kernels (cuDNN or its native ones); NCHW is a contiguous tensor, NHWC a channels_last one; the
parameters and statistics are float32, as bnk's are. Training forward and inference are F.batch_norm with
training True and False; the backward is autograd's through a training forward, timed alone (the forward runs
once per input copy, outside the events, and each timed run is backward(retain_graph=True)).

Each case is validated once, then timed as bnk-bench times (benchmarks/timing.c): warm-up runs, then timed
runs each after an L2 flush (a fill of twice the L2 size, outside the events), cycling through up to 8 copies
of the inputs within 2 GiB, CUDA events around the call, median and percentiles. The check is the bench's:
the float64 reference of tests/reference.c (loaded through ctypes from libbnk_reference.so) on up to 16
channels (the first, the last, the rest at random), the tolerances of benchmarks/tolerances.h, per-channel
outputs relative to their scale. Comparing elements here is pure Python, so at most MAX_CHECKED_ELEMENTS
elements of the validated channels are compared (the first, the last, the rest at random); the reference
itself is computed over every element of them.

The rows have bnk-bench's CSV and JSON schema with implementation "torch": bytes and floor from bnk's row of
the case, % of copy against the copy bandwidth bnk-bench measured, x cuDNN against the fastest cuDNN mode that
passed in bnk-bench's run. plot_results.py draws them beside bnk and cuDNN. A torch row that fails validation
is reported and timed anyway, as bnk-bench does with its alternatives; it does not change the exit status.
With --device cpu nothing is timed (the rows say so): that mode checks the script on a machine without a GPU.

Exit status: 0 when it ran, 2 for bad arguments, 3 when torch (or, with --device cuda, a CUDA device) is
missing. The parts that need no torch (cases, schema, reference checks) are tested by test_torch_peer.py.
"""
import argparse
import csv
import ctypes
import json
import math
import os
import random
import re
import sys

PLAIN_OPS = ("fwd_train", "fwd_infer", "bwd")
DTYPE_CODES = {"f32": 0, "f16": 1, "bf16": 2}  # bnk_dtype
LAYOUT_CODES = {"nchw": 0, "nhwc": 1}          # bnk_layout
EPS = 1e-5        # bnk-bench's op parameters: PyTorch's defaults
MOMENTUM = 0.1
VALIDATED_CHANNELS = 16
MAX_CHECKED_ELEMENTS = 65536
MAX_ROTATION = 8
ROTATION_BUDGET_BYTES = 2 << 30
SEED = 20240601
EXIT_USAGE = 2
EXIT_NO_TORCH = 3
# bnk-bench's CSV columns, in its order (benchmarks/report.c); test_torch_peer.py checks them against it.
CSV_FIELDS = ["mode", "device", "implementation", "op", "layout", "dtype", "shape", "run_shape",
              "validated_channels", "check", "max_error", "channel_error", "median_us", "min_us", "p10_us", "p90_us",
              "bytes", "bytes_ratio_to_unfused", "gb_per_s", "percent_of_copy", "ratio_to_cudnn", "ratio_to_unfused",
              "floor_us", "floor_bandwidth_gb_per_s", "floor_basis", "error"]
# The fields of each row in bnk-bench's JSON, in its order (the run's device and floor basis are in its header).
JSON_ROW_FIELDS = ["mode", "implementation", "op", "layout", "dtype", "shape", "run_shape", "validated_channels",
                   "check", "max_error", "channel_error", "median_us", "min_us", "p10_us", "p90_us", "gb_per_s",
                   "percent_of_copy", "ratio_to_cudnn", "ratio_to_unfused", "bytes", "bytes_ratio_to_unfused",
                   "floor_us", "error"]
HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the cases, from bnk-bench's JSON ---------------------------------------------------------------------

class Case:
    """One (op, layout, dtype, shape) of bnk-bench's run, with what its bnk row says about it."""

    def __init__(self, op, layout, dtype, shape, run_shape, bytes_moved, floor_us, cudnn_us):
        self.op, self.layout, self.dtype = op, layout, dtype
        self.shape, self.run_shape = shape, run_shape
        self.extents = [int(extent) for extent in run_shape.split("x")]
        self.bytes_moved, self.floor_us, self.cudnn_us = bytes_moved, floor_us, cudnn_us

    def label(self):
        return "{} {} {} {}".format(self.op, self.layout, self.dtype, self.shape)


def read_cases(path):
    """Returns (bnk-bench's header, the cases of its bnk rows of the plain ops, in its order)."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    rows = document["rows"]

    def key(row):
        return (row["op"], row["layout"], row["dtype"], row["shape"])

    fastest_cudnn = {}
    for row in rows:
        if row["implementation"].startswith("cudnn") and row["check"] == "PASS" and row.get("median_us"):
            best = fastest_cudnn.get(key(row))
            fastest_cudnn[key(row)] = row["median_us"] if best is None else min(best, row["median_us"])
    cases, seen = [], set()
    for row in rows:
        if row["implementation"] != "bnk" or row["op"] not in PLAIN_OPS or key(row) in seen:
            continue
        seen.add(key(row))
        cases.append(Case(row["op"], row["layout"], row["dtype"], row["shape"], row["run_shape"], row["bytes"],
                          row["floor_us"], fastest_cudnn.get(key(row))))
    header = {name: value for name, value in document.items() if name != "rows"}
    return header, cases


# ---- the shared reference and tolerances ------------------------------------------------------------------

def read_tolerances(path=os.path.join(HERE, "tolerances.h")):
    """The #defines of benchmarks/tolerances.h, as floats."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"#define\s+([A-Z0-9_]+)\s+([0-9.eE+-]+)\s*$", line)
            if match:
                values[match.group(1)] = float(match.group(2))
    return values


class TensorDesc(ctypes.Structure):
    """bnk_tensor_desc (include/bnk.h)."""
    _fields_ = [("dtype", ctypes.c_int), ("layout", ctypes.c_int), ("spatial_dims", ctypes.c_int),
                ("n", ctypes.c_int64), ("c", ctypes.c_int64), ("spatial", ctypes.c_int64 * 3)]


def sample_desc(n, c, spatial):
    """The float64 NCHW tensor of the validated channels that the reference works on."""
    extents = list(spatial) + [1] * (3 - len(spatial))
    return TensorDesc(DTYPE_CODES["f32"], LAYOUT_CODES["nchw"], len(spatial), n, c, (ctypes.c_int64 * 3)(*extents))


class Reference:
    """tests/reference.c and tests/storage.c through ctypes. Arrays are passed as addresses of float64 data."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        pointer, desc = ctypes.c_void_p, ctypes.POINTER(TensorDesc)
        signatures = {
            "ref_channel_stats": [desc, pointer, pointer, pointer, pointer],
            "ref_normalize": [desc, pointer, pointer, pointer, ctypes.c_double, pointer, pointer, pointer],
            "ref_running_update": [ctypes.c_int64, ctypes.c_double, pointer, pointer, pointer, pointer],
            "ref_backward": [desc, pointer, pointer, pointer, pointer, pointer, pointer, pointer, pointer],
            "storage_ulp": [ctypes.c_int, ctypes.c_double],
        }
        for name, arguments in signatures.items():
            getattr(self.lib, name).argtypes = arguments
            getattr(self.lib, name).restype = None
        self.lib.storage_ulp.restype = ctypes.c_double

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def ulp(self, dtype, value):
        return self.lib.storage_ulp(DTYPE_CODES[dtype], value)


def doubles(values):
    """A ctypes float64 array of the values (for the tests and the per-channel arrays)."""
    return (ctypes.c_double * len(values))(*values)


def address(array):
    return ctypes.addressof(array)


# ---- the checks: bnk-bench's (benchmarks/validation.c), over Python sequences -----------------------------

def choose_indices(total, count, rng):
    """Up to count of range(total) in increasing order: the first and the last, the rest at random."""
    if total <= count:
        return list(range(total))
    chosen = {0, total - 1}
    while len(chosen) < count:
        chosen.add(rng.randrange(total))
    return sorted(chosen)


def check_elements(what, dtype, got, want, reference, tolerances):
    """(max error, first failure or None): float32 to an absolute tolerance, 16-bit storage to ulps + slack."""
    worst, failure = 0.0, None
    for index, (value, expected) in enumerate(zip(got, want)):
        error = abs(value - expected)
        if dtype == "f32":
            allowed = tolerances["F32_ELEMENT_TOLERANCE"]
        else:
            allowed = (tolerances["SIXTEEN_BIT_ULPS"] * reference.ulp(dtype, expected) +
                       tolerances["SIXTEEN_BIT_SLACK"])
        if math.isnan(error) or error > worst:
            worst = math.inf if math.isnan(error) else error
        if not error <= allowed and failure is None:
            failure = "{} at checked element {} is {:.9g}, reference {:.9g} (error {:.3g} > {:.3g} allowed)".format(
                what, index, value, expected, error, allowed)
    return worst, failure


def check_channels(what, channels, got, want, scale, tolerances):
    """(worst relative error, first failure or None): |got - want| <= CHANNEL_TOLERANCE * scale."""
    worst, failure = 0.0, None
    bound = tolerances["CHANNEL_TOLERANCE"]
    for channel, value, expected, size in zip(channels, got, want, scale):
        relative = abs(value - expected) / size
        if math.isnan(relative) or relative > worst:
            worst = math.inf if math.isnan(relative) else relative
        if not relative <= bound and failure is None:
            failure = "{}[{}] is {:.9g}, reference {:.9g} (relative error {:.3g} > {:.3g})".format(
                what, channel, value, expected, relative, bound)
    return worst, failure


class Validation:
    """The outcome of one validated run, as bnk-bench's: the largest errors and the first failure."""

    def __init__(self, validated_channels):
        self.validated_channels = validated_channels
        self.max_error, self.channel_error, self.failure = 0.0, None, None

    def elements(self, outcome):
        error, failure = outcome
        self.max_error = max(self.max_error, error)
        self.failure = self.failure or failure

    def channels(self, outcome):
        error, failure = outcome
        self.channel_error = error if self.channel_error is None else max(self.channel_error, error)
        self.failure = self.failure or failure


def percentile(ordered, fraction):
    """Linear interpolation between the closest ranks, as bnk-bench's."""
    position = fraction * (len(ordered) - 1)
    below = int(math.floor(position))
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


# ---- rows in bnk-bench's schema ---------------------------------------------------------------------------

def make_row(header, case, mode, device, validation=None, times_us=None, note=""):
    """A row of bnk-bench's schema for the case; check n/a when validation is None."""
    floor_bandwidth = header.get("floor_bandwidth_gb_per_s")
    row = {name: None for name in CSV_FIELDS}
    row.update(mode=mode, device=device, implementation="torch", op=case.op, layout=case.layout, dtype=case.dtype,
               shape=case.shape, run_shape=case.run_shape, validated_channels=0, check="n/a",
               bytes=case.bytes_moved, floor_us=case.floor_us, floor_bandwidth_gb_per_s=floor_bandwidth,
               floor_basis=header.get("floor_basis"), error=note or None)
    if validation is not None:
        row.update(validated_channels=validation.validated_channels, max_error=validation.max_error,
                   channel_error=validation.channel_error, check="FAIL" if validation.failure else "PASS",
                   error=validation.failure)
    if times_us:
        ordered = sorted(times_us)
        median = percentile(ordered, 0.5)
        row.update(median_us=median, min_us=ordered[0], p10_us=percentile(ordered, 0.1),
                   p90_us=percentile(ordered, 0.9), gb_per_s=case.bytes_moved / (median * 1e-6) / 1e9)
        copy = header.get("copy_bandwidth_gb_per_s")
        if copy:
            row["percent_of_copy"] = 100.0 * case.bytes_moved / (median * 1e-6) / (copy * 1e9)
        if case.cudnn_us:
            row["ratio_to_cudnn"] = case.cudnn_us / median
    return row


def csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    return str(value)


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            writer.writerow([csv_value(row[name]) for name in CSV_FIELDS])


def write_json(path, header, rows):
    def finite(value):  # JSON has no infinity or NaN: null, as bnk-bench writes them
        return None if isinstance(value, float) and not math.isfinite(value) else value

    document = dict(header)
    document["rows"] = [{name: finite(row[name]) for name in JSON_ROW_FIELDS} for row in rows]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")


# ---- PyTorch ----------------------------------------------------------------------------------------------

class Peer:
    """One device's state: the flush buffer, the copy budget, the reference."""

    def __init__(self, torch, device, reference, tolerances, runs, warmup):
        self.torch, self.device, self.reference, self.tolerances = torch, device, reference, tolerances
        self.runs, self.warmup = runs, warmup
        self.gpu = device == "cuda"
        self.rng = random.Random(SEED)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(SEED)
        if self.gpu:
            l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or (1 << 20)
            self.flush = torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)

    def storage(self, dtype):
        return {"f32": self.torch.float32, "f16": self.torch.float16, "bf16": self.torch.bfloat16}[dtype]

    def uniform(self, count, low, high):
        torch = self.torch
        return torch.rand(count, generator=self.generator, device=self.device) * (high - low) + low

    def make_inputs(self, case):
        """x and dy as bnk-bench draws them (per-channel mean and spread, dy centred), in the case's layout."""
        torch = self.torch
        c, spatial = case.extents[1], case.extents[2:]
        view = [1, c] + [1] * len(spatial)
        mean, spread = self.uniform(c, -1.0, 3.0), self.uniform(c, 0.5, 2.0)
        noise = [torch.randn(case.extents, generator=self.generator, device=self.device) for _ in range(2)]
        x = noise[0] * spread.view(view) + mean.view(view)
        dy = noise[1] + self.uniform(c, -0.2, 0.2).view(view)
        parameters = {
            "gamma": self.uniform(c, 0.5, 1.5), "beta": self.uniform(c, -0.5, 0.5),
            "running_mean": mean + self.uniform(c, -0.5, 0.5),
            "running_var": spread * spread * self.uniform(c, 0.5, 1.5),
        }
        memory_format = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(case.extents))
        dtype = self.storage(case.dtype)
        x, dy = x.to(dtype), dy.to(dtype)
        if case.layout == "nhwc" and memory_format is not None:
            x, dy = x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)
        return x, dy, parameters

    def sample(self, tensor, channels):
        """The validated channels of a tensor as a contiguous float64 CPU NCHW tensor."""
        index = self.torch.tensor(channels, device=tensor.device)
        return tensor.index_select(1, index).double().contiguous().cpu()

    def compare(self, validation, what, dtype, got, want):
        positions = choose_indices(want.numel(), MAX_CHECKED_ELEMENTS, self.rng)
        index = self.torch.tensor(positions)
        validation.elements(check_elements(what, dtype, got.reshape(-1)[index].tolist(),
                                           want.reshape(-1)[index].tolist(), self.reference, self.tolerances))

    def validate(self, case, x, dy, parameters):
        """Runs the op once and checks it against the reference on the validated channels."""
        torch, ref = self.torch, self.reference
        F = torch.nn.functional
        n, c, spatial = case.extents[0], case.extents[1], case.extents[2:]
        channels = choose_indices(c, VALIDATED_CHANNELS, self.rng)
        k = len(channels)
        desc = sample_desc(n, k, spatial)
        xs = self.sample(x, channels)
        gamma = parameters["gamma"][channels].double().cpu()
        beta = parameters["beta"][channels].double().cpu()
        running_mean = parameters["running_mean"].clone()
        running_var = parameters["running_var"].clone()
        rm, rv = running_mean[channels].double().cpu(), running_var[channels].double().cpu()
        want = torch.empty_like(xs)
        mean, var, var_unbiased = (torch.zeros(k, dtype=torch.float64) for _ in range(3))
        validation = Validation(k)

        def pointer(tensor):
            return tensor.data_ptr()

        if case.op == "fwd_infer":
            y = F.batch_norm(x, running_mean, running_var, parameters["gamma"], parameters["beta"], training=False,
                             momentum=MOMENTUM, eps=EPS)
            ref.ref_normalize(ctypes.byref(desc), pointer(xs), pointer(rm), pointer(rv), EPS, pointer(gamma),
                              pointer(beta), pointer(want))
            self.compare(validation, "y", case.dtype, self.sample(y, channels), want)
        elif case.op == "fwd_train":
            y = F.batch_norm(x, running_mean, running_var, parameters["gamma"], parameters["beta"], training=True,
                             momentum=MOMENTUM, eps=EPS)
            ref.ref_channel_stats(ctypes.byref(desc), pointer(xs), pointer(mean), pointer(var), pointer(var_unbiased))
            ref.ref_normalize(ctypes.byref(desc), pointer(xs), pointer(mean), pointer(var), EPS, pointer(gamma),
                              pointer(beta), pointer(want))
            self.compare(validation, "y", case.dtype, self.sample(y, channels), want)
            ref.ref_running_update(k, MOMENTUM, pointer(mean), pointer(var_unbiased), pointer(rm), pointer(rv))
            scale = (rm.abs() + var.sqrt()).tolist()
            validation.channels(check_channels("running_mean", channels, running_mean[channels].tolist(), rm.tolist(),
                                               scale, self.tolerances))
            validation.channels(check_channels("running_var", channels, running_var[channels].tolist(), rv.tolist(),
                                               rv.abs().tolist(), self.tolerances))
        else:
            leaf = x.detach().requires_grad_()
            weight = parameters["gamma"].clone().requires_grad_()
            bias = parameters["beta"].clone().requires_grad_()
            y = F.batch_norm(leaf, running_mean, running_var, weight, bias, training=True, momentum=MOMENTUM, eps=EPS)
            y.backward(dy)
            dys = self.sample(dy, channels)
            ref.ref_channel_stats(ctypes.byref(desc), pointer(xs), pointer(mean), pointer(var), None)
            invstd = (var + EPS).rsqrt()
            dgamma, dbeta = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
            ref.ref_backward(ctypes.byref(desc), pointer(xs), pointer(dys), pointer(mean), pointer(invstd),
                             pointer(gamma), pointer(want), pointer(dgamma), pointer(dbeta))
            self.compare(validation, "dx", case.dtype, self.sample(leaf.grad, channels), want)
            # The scales of dbeta = sum dy and dgamma = sum dy xhat: the sums of the absolute terms.
            reduced = [0] + list(range(2, xs.dim()))
            view = [1, k] + [1] * len(spatial)
            xhat = (xs - mean.view(view)) * invstd.view(view)
            dbeta_scale = dys.abs().sum(reduced).clamp_min(2.0 ** -1022).tolist()
            dgamma_scale = (dys * xhat).abs().sum(reduced).clamp_min(2.0 ** -1022).tolist()
            validation.channels(check_channels("dbeta", channels, bias.grad[channels].tolist(), dbeta.tolist(),
                                               dbeta_scale, self.tolerances))
            validation.channels(check_channels("dgamma", channels, weight.grad[channels].tolist(), dgamma.tolist(),
                                               dgamma_scale, self.tolerances))
        return validation

    def copies(self, tensors):
        """Up to MAX_ROTATION copies of each input, within the rotation budget and a quarter of free memory."""
        torch = self.torch
        each = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
        free, _ = torch.cuda.mem_get_info()
        budget = min(free // 4, ROTATION_BUDGET_BYTES)
        count = max(1, min(MAX_ROTATION, budget // max(each, 1)))
        return [tensors] + [[tensor.clone() for tensor in tensors] for _ in range(count - 1)]

    def time(self, case, x, dy, parameters):
        """Microseconds of each timed run, as bnk-bench times (benchmarks/timing.c)."""
        torch = self.torch
        F = torch.nn.functional
        gamma, beta = parameters["gamma"], parameters["beta"]
        running_mean, running_var = parameters["running_mean"].clone(), parameters["running_var"].clone()
        if case.op == "bwd":
            graphs = []
            for copy_x, copy_dy in self.copies([x, dy]):
                leaf = copy_x.detach().requires_grad_()
                weight, bias = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
                y = F.batch_norm(leaf, running_mean, running_var, weight, bias, training=True, momentum=MOMENTUM,
                                 eps=EPS)
                graphs.append((leaf, weight, bias, y, copy_dy))

            def run(slot):
                leaf, weight, bias, y, gradient = graphs[slot % len(graphs)]
                leaf.grad = weight.grad = bias.grad = None
                y.backward(gradient, retain_graph=True)
        else:
            inputs = [copy[0] for copy in self.copies([x])]
            training = case.op == "fwd_train"

            def run(slot):
                F.batch_norm(inputs[slot % len(inputs)], running_mean, running_var, gamma, beta, training=training,
                             momentum=MOMENTUM, eps=EPS)
        for slot in range(self.warmup):
            run(slot)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        stops = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        # All runs are queued before any is read back, as in bnk-bench.
        for slot in range(self.runs):
            self.flush.fill_(slot & 0xff)
            starts[slot].record()
            run(slot)
            stops[slot].record()
        torch.cuda.synchronize()
        return [start.elapsed_time(stop) * 1e3 for start, stop in zip(starts, stops)]

    def run_case(self, header, case, mode, device_name):
        if case.layout == "nhwc" and len(case.extents) == 3:
            return make_row(header, case, mode, device_name,
                            note="PyTorch has no channels-last memory format for (N, C, L) tensors")
        if case.op != "fwd_infer" and math.prod(case.extents) // case.extents[1] < 2:
            return make_row(header, case, mode, device_name,
                            note="training needs more than one value per channel (N x spatial = 1)")
        # PyTorch refusing a case (a dtype on the CPU, memory for the copies) is a fact about it, in its row.
        try:
            x, dy, parameters = self.make_inputs(case)
            validation = self.validate(case, x, dy, parameters)
            times = self.time(case, x, dy, parameters) if self.gpu else None
        except RuntimeError as error:
            row = make_row(header, case, mode, device_name, note="{}: {}".format(type(error).__name__, error))
            row["check"] = "ERROR"
            return row
        return make_row(header, case, mode, device_name, validation, times,
                        "" if self.gpu else "not timed: --device cpu validates only")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases-from", required=True, help="bnk-bench's --json results")
    parser.add_argument("--reference", help="libbnk_reference.so (default: next to bnk-bench in the build)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--csv")
    parser.add_argument("--json")
    arguments = parser.parse_args(argv)
    if arguments.runs < 1 or arguments.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return arguments


def find_reference(arguments):
    if arguments.reference:
        return arguments.reference
    for build in ("build-gpu-run", "build"):
        candidate = os.path.join(HERE, "..", build, "benchmarks", "libbnk_reference.so")
        if os.path.exists(candidate):
            return candidate
    sys.exit("torch_peer: libbnk_reference.so not found: build the target bnk_reference, or pass --reference")


def main(argv):
    arguments = parse_arguments(argv)
    header, cases = read_cases(arguments.cases_from)
    reference = Reference(find_reference(arguments))
    try:
        import torch
    except ImportError as error:
        print("torch_peer: PyTorch is not installed ({})".format(error), file=sys.stderr)
        return EXIT_NO_TORCH
    if arguments.device == "cuda" and not torch.cuda.is_available():
        print("torch_peer: PyTorch sees no CUDA device (torch {})".format(torch.__version__), file=sys.stderr)
        return EXIT_NO_TORCH
    gpu = arguments.device == "cuda"
    device_name = torch.cuda.get_device_name(0) if gpu else "cpu"
    mode = "gpu" if gpu else "cpu"
    peer = Peer(torch, arguments.device, reference, read_tolerances(), arguments.runs, arguments.warmup)
    cudnn = torch.backends.cudnn.version() if gpu and torch.backends.cudnn.is_available() else None
    out_header = {"implementation": "torch", "torch_version": torch.__version__, "mode": mode, "device": device_name,
                  "cudnn_in_torch": cudnn, "cases_from": os.path.basename(arguments.cases_from),
                  "copy_bandwidth_gb_per_s": header.get("copy_bandwidth_gb_per_s"),
                  "floor_bandwidth_gb_per_s": header.get("floor_bandwidth_gb_per_s"),
                  "floor_basis": header.get("floor_basis")}
    print("torch_peer: torch {} on {} (cuDNN {}), {} cases of {}".format(torch.__version__, device_name, cudnn,
                                                                        len(cases), arguments.cases_from))
    rows = []
    for case in cases:
        row = peer.run_case(header, case, mode, device_name)
        rows.append(row)
        median = "{:.1f}".format(row["median_us"]) if row["median_us"] else "-"
        ratio = "{:.2f}".format(row["ratio_to_cudnn"]) if row["ratio_to_cudnn"] else "-"
        print("{:<40} {:<5} median {:>9} us  x cuDNN {:>6}  {}".format(case.label(), row["check"], median, ratio,
                                                                      row["error"] or ""))
        sys.stdout.flush()
    if arguments.csv:
        write_csv(arguments.csv, rows)
    if arguments.json:
        write_json(arguments.json, out_header, rows)
    counts = {status: sum(1 for row in rows if row["check"] == status) for status in ("PASS", "FAIL", "n/a", "ERROR")}
    print("torch_peer: " + ", ".join("{} {}".format(count, status) for status, count in counts.items()) +
          " (a failure of PyTorch is reported, not an error of this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
