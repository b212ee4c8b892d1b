/* bnk-bench: runs each batch-normalization op once, validates the result against the float64 reference of
 * tests/reference.c, and only then times it on the GPU, side by side with the alternatives on the same
 * tensors: cuDNN's legacy batch-norm API (SPATIAL and SPATIAL_PERSISTENT), a cuBLAS baseline for the
 * reductions, and a naive two-kernel baseline (benchmarks/alternatives.h). A bnk case that fails validation
 * is reported, not timed, and fails the run, because the speed of a wrong kernel means nothing; an
 * alternative that fails validation is reported with its error and still timed, since it is only there to
 * be compared with.
 *
 * bnk's fused epilogues (BN + ReLU, BN + add + ReLU, their backward from y or from the ReLU mask), its folded
 * inference form (precomputed scale and shift) and Linear + BatchNorm1d + ReLU in one cuBLASLt matmul are
 * measured the same way against the unfused sequence each replaces: bnk's plain op, then a separate elementwise
 * pass (baselines.cu), or a GEMM by cuBLAS, bnk's inference forward and a ReLU pass. Each row then also gives
 * its bytes against the unfused sequence's, and on a GPU its speed against it.
 *
 * The same source builds twice. bnk-bench links bnk (nvcc, the real CUDA runtime); when it finds no device it
 * replaces itself with bnk-bench-emu from its own directory. bnk-bench-emu (BNK_BENCH_EMULATION) links
 * bnk_emu, the kernels on a host emulation of CUDA: it validates small versions of the shapes and contains no
 * timing code at all, so that nothing it prints can be mistaken for a GPU measurement. docs/benchmarks.md
 * describes the method and the byte counts. */
#define _POSIX_C_SOURCE 200809L /* readlink and execv, for the fallback to the emulation build */

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "bnk.h"
#include "benchmarks/alternatives.h"
#include "benchmarks/baselines.h"
#include "tests/storage.h"
#include "tests/reference.h"

#ifdef BNK_BENCH_EMULATION
#define PROGRAM "bnk-bench-emu"
#else
#define PROGRAM "bnk-bench"
#define EMULATION_PROGRAM "bnk-bench-emu"
#endif

#define EXIT_USAGE 2
#define MAX_SHAPES 128
#define MAX_BATCHES 16
#define DEFAULT_RUNS 100
#define DEFAULT_WARMUP 10
#define DEFAULT_SEED 20240601u

/* Channels validated per case on the GPU: the reference runs on the CPU and would take longer than the
 * benchmark for the large ResNet-50 layers. Channel 0 and C - 1 are always among them (the edges of the
 * channel range are where indexing goes wrong), the rest are drawn at random. */
#define VALIDATED_CHANNELS 16

/* The op parameters: PyTorch's defaults. */
#define EPS 1e-5
#define MOMENTUM 0.1

/* Tolerances against the float64 reference (docs/benchmarks.md explains each).
 *  - y and dx in float32: absolute, at the unit scale the data are drawn at.
 *  - y and dx in float16/bfloat16: one unit in the last place of the storage type (the float32 result is
 *    rounded once) plus a small absolute slack for results that land next to a rounding boundary.
 *  - per-channel outputs: relative to the quantity's natural scale (see check_channels). */
#define F32_ELEMENT_TOLERANCE 1e-5
#define SIXTEEN_BIT_ULPS 1.0
#define SIXTEEN_BIT_SLACK 1e-5
#define CHANNEL_TOLERANCE 1e-5
/* linear_bn: the float32 accumulation of in_features products, relative to the sum of their magnitudes (as
 * tests/test_fold.c allows bnk_linear_bn). */
#define LINEAR_ACCUMULATION_TOLERANCE 1e-5

/* Emulation shrinks every shape to at most these extents (same layout and rank). An (N, C) tensor reduces
 * over N alone, so it keeps more rows than a tensor that also reduces over its spatial positions. */
#define EMULATION_MAX_N 2
#define EMULATION_MAX_N_WITHOUT_SPATIAL 64
#define EMULATION_MAX_C 16
#define EMULATION_MAX_SPATIAL 8
/* The bandwidth the emulation's byte floors assume: an H100 SXM's device-to-device copy rate, roughly. It is
 * a reference point for reading the floors, not a measurement. */
#define H100_COPY_BYTES_PER_SECOND 3.0e12

#define COPY_BUFFER_BYTES ((size_t)1 << 30)
#define COPY_RUNS 20

/* Input rotation: the timed runs cycle through this many copies of x, dy (and z), when they fit in the budget, so
 * that no run finds its inputs where the previous one left them (on top of the L2 flush, which cannot evict
 * what a larger cache level or the TLBs kept). */
#define MAX_ROTATION 8
#define ROTATION_BUDGET_BYTES ((size_t)2 << 30)

/* ------------------------------------------------------------------------------------------------------
 * Errors: every failure of a bnk or CUDA call ends the program with the call and the reason.
 * ---------------------------------------------------------------------------------------------------- */

static void die(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, PROGRAM ": ");
  vfprintf(stderr, format, args);
  fprintf(stderr, "\n");
  va_end(args);
  exit(EXIT_FAILURE);
}

static void check_bnk(bnk_status status, const char *call) {
  if (status == BNK_SUCCESS) return;
  die("%s failed: %s: %s", call, bnk_status_name(status), bnk_last_error_message());
}

static void check_cuda(cudaError_t error, const char *call) {
  if (error == cudaSuccess) return;
  die("%s failed: %s: %s", call, cudaGetErrorName(error), cudaGetErrorString(error));
}

static void *host_alloc(size_t bytes) {
  void *pointer = malloc(bytes > 0 ? bytes : 1);
  if (pointer == NULL) die("out of host memory allocating %zu bytes", bytes);
  return pointer;
}

/* Zeroed float64 arrays: per-channel scratch that loops fill, which the compiler then need not suspect of
 * being read before it is written. */
static double *host_zeros(int64_t count) {
  double *pointer = calloc(count > 0 ? (size_t)count : 1, sizeof(double));
  if (pointer == NULL) die("out of host memory allocating %" PRId64 " doubles", count);
  return pointer;
}

static void *device_alloc(size_t bytes) {
  void *pointer = NULL;
  if (bytes == 0) return NULL;
  check_cuda(cudaMalloc(&pointer, bytes), "cudaMalloc");
  return pointer;
}

static void device_free(void *pointer) {
  if (pointer != NULL) check_cuda(cudaFree(pointer), "cudaFree");
}

/* Every output is overwritten with all-ones bits (NaN in every float type) before the run that is
 * validated, so that a kernel that skips an element cannot pass on a previous op's result. */
static void device_poison(void *pointer, size_t bytes) {
  if (bytes > 0) check_cuda(cudaMemset(pointer, 0xff, bytes), "cudaMemset");
}

static void upload(void *device, const void *host, size_t bytes) {
  if (bytes > 0) check_cuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
}

static void download(void *host, const void *device, size_t bytes) {
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  if (bytes > 0) check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to the host");
}

static void download_floats(double *host, const float *device, int64_t count) {
  float *floats = host_alloc((size_t)count * sizeof(float));
  download(floats, device, (size_t)count * sizeof(float));
  for (int64_t i = 0; i < count; ++i) host[i] = floats[i];
  free(floats);
}

/* ------------------------------------------------------------------------------------------------------
 * Random data: a fixed seed by default, so that two runs validate the same values.
 * ---------------------------------------------------------------------------------------------------- */

typedef struct bench_rng {
  uint64_t state;
} bench_rng;

static uint64_t rng_next(bench_rng *rng) {
  uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull); /* splitmix64 */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double rng_uniform(bench_rng *rng, double lo, double hi) {
  return lo + (hi - lo) * ((double)(rng_next(rng) >> 11) * 0x1.0p-53);
}

/* Zero mean, unit variance, bounded by +-2 sqrt(3): the sum of four uniforms from one 64-bit draw. The
 * largest default shapes hold 25.7 million elements, and a Box-Muller normal per element would make
 * generating the data slower than benchmarking it. */
static float rng_noise(bench_rng *rng) {
  const uint64_t bits = rng_next(rng);
  double sum = 0.0;
  for (int part = 0; part < 4; ++part) sum += (double)((bits >> (16 * part)) & 0xffffu) * (1.0 / 65536.0);
  return (float)((sum - 2.0) * 1.7320508075688772);
}

/* ------------------------------------------------------------------------------------------------------
 * Options
 * ---------------------------------------------------------------------------------------------------- */

static const char *const op_names[OP_COUNT] = {
    "fwd_train",          "fwd_infer",   "bwd",      "bwd_infer", "fwd_infer_relu", "fwd_infer_add_relu",
    "fwd_train_add_relu", "bwd_add_relu", "scale_shift", "linear_bn"};

/* The four batch-normalization ops that bnk is compared with other libraries on. */
static int is_plain_op(bench_op op) { return op <= OP_BWD_INFER; }
/* The forward ops whose output goes through a ReLU, and those of them that add the residual z first. */
static int has_relu(bench_op op) {
  return op == OP_FWD_INFER_RELU || op == OP_FWD_INFER_ADD_RELU || op == OP_FWD_TRAIN_ADD_RELU;
}
static int adds_residual(bench_op op) {
  return op == OP_FWD_INFER_ADD_RELU || op == OP_FWD_TRAIN_ADD_RELU || op == OP_BWD_ADD_RELU;
}
/* Ops on batch statistics, which need more than one value per channel. */
static int trains(bench_op op) {
  return op == OP_FWD_TRAIN || op == OP_BWD || op == OP_FWD_TRAIN_ADD_RELU || op == OP_BWD_ADD_RELU;
}

/* What runs each op. The rows of an op are printed in this order: the plain ops' bnk and alternatives, then
 * the variants of bnk's epilogue ops, the unfused sequence last. */
typedef enum bench_impl {
  IMPL_BNK,
  IMPL_CUDNN,
  IMPL_CUDNN_PERSISTENT,
  IMPL_CUBLAS,
  IMPL_NAIVE,
  IMPL_BNK_FUSED,       /* the epilogue in bnk's pass; bnk_linear_bn for linear_bn */
  IMPL_BNK_MASK,        /* bwd_add_relu deciding from the forward's 1-bit mask */
  IMPL_BNK_FROM_Y,      /* bwd_add_relu deciding from the forward's y */
  IMPL_BNK_SCALE_SHIFT, /* bnk_scale_shift with parameters precomputed by bnk_inference_params */
  IMPL_BNK_SEPARATE,    /* bnk's plain op and a separate elementwise pass (a GEMM first for linear_bn) */
  IMPL_BNK_FWD_INFER,   /* bnk_forward_inference, what scale_shift replaces */
  IMPL_COUNT
} bench_impl;

static const char *const impl_names[IMPL_COUNT] = {
    "bnk",        "cudnn",           "cudnn-persistent", "cublas",       "naive",        "bnk-fused",
    "bnk-mask",   "bnk-from-y",      "bnk-scale-shift",  "bnk+separate", "bnk-fwd-infer"};

/* Whether the implementation has the op at all; only these pairs get a row. cuDNN has no frozen-statistics
 * backward, its persistent mode exists for training and its backward only, and inference has no reduction
 * for cuBLAS to do. The epilogue ops compare bnk with itself. */
static int impl_has_op(bench_impl impl, bench_op op) {
  switch (impl) {
    case IMPL_BNK:
    case IMPL_NAIVE: return is_plain_op(op);
    case IMPL_CUDNN: return op == OP_FWD_TRAIN || op == OP_FWD_INFER || op == OP_BWD;
    case IMPL_CUDNN_PERSISTENT: return op == OP_FWD_TRAIN || op == OP_BWD;
    case IMPL_CUBLAS: return op == OP_FWD_TRAIN || op == OP_BWD || op == OP_BWD_INFER;
    case IMPL_BNK_FUSED: return has_relu(op) || op == OP_LINEAR_BN;
    case IMPL_BNK_MASK:
    case IMPL_BNK_FROM_Y: return op == OP_BWD_ADD_RELU;
    case IMPL_BNK_SCALE_SHIFT:
    case IMPL_BNK_FWD_INFER: return op == OP_SCALE_SHIFT;
    case IMPL_BNK_SEPARATE: return has_relu(op) || op == OP_BWD_ADD_RELU || op == OP_LINEAR_BN;
    case IMPL_COUNT: break;
  }
  return 0;
}

/* The row an epilogue op's variants are compared with (bytes and speed): the sequence the fused form
 * replaces. IMPL_COUNT for the plain ops. */
static bench_impl unfused_impl(bench_op op) {
  if (op == OP_SCALE_SHIFT) return IMPL_BNK_FWD_INFER;
  return is_plain_op(op) ? IMPL_COUNT : IMPL_BNK_SEPARATE;
}

static int is_cudnn(bench_impl impl) { return impl == IMPL_CUDNN || impl == IMPL_CUDNN_PERSISTENT; }
/* bnk in any form decides the exit status; the other libraries and the naive baseline never do. */
static int is_bnk(bench_impl impl) { return !is_cudnn(impl) && impl != IMPL_CUBLAS && impl != IMPL_NAIVE; }

/* A tensor (N, C, spatial...), or for linear_bn the Linear layer batch x in_features -> out_features, held as
 * n = batch, c = out_features (the BatchNorm1d's channels) and in_features > 0. */
typedef struct bench_shape {
  int64_t n, c;
  int spatial_dims;
  int64_t spatial[BNK_MAX_SPATIAL_DIMS];
  int64_t in_features; /* 0 for a tensor */
} bench_shape;

typedef struct bench_options {
  int run_op[OP_COUNT];
  int run_impl[IMPL_COUNT];
  int run_layout[2]; /* indexed by bnk_layout */
  int run_dtype[3];  /* indexed by bnk_dtype */
  bench_shape shapes[MAX_SHAPES];
  int shape_count;
  bench_shape linear_shapes[MAX_SHAPES];
  int linear_count;
  int preset_resnet50, preset_bn1d, preset_tiny_spatial;
  int64_t batches[MAX_BATCHES];
  int batch_count;
  int runs, warmup;
  uint64_t seed;
  const char *csv_path, *json_path;
} bench_options;

/* The distinct batch-normalization layers of ResNet-50 as (C, H, W), at every batch of --batch. */
static const int64_t resnet50_layers[][3] = {
    {64, 112, 112}, {64, 56, 56},   {256, 56, 56}, {128, 56, 56}, {128, 28, 28}, {512, 28, 28},
    {256, 28, 28},  {256, 14, 14},  {1024, 14, 14}, {512, 14, 14}, {512, 7, 7},  {2048, 7, 7},
};
#define DEFAULT_BATCH 32

/* BatchNorm1d, (N, C): N from 1 (inference only: training needs more than one value per channel) to a
 * million rows, across 65535 and 65536, where a grid dimension bound to N runs out. */
static const int64_t bn1d_shapes[][2] = {
    {1, 256}, {32, 256}, {256, 4096}, {4096, 1024}, {65535, 256}, {65536, 256}, {1000000, 128},
};

/* (N, C) at 7 x 7: few positions per channel, many channels, up to C past 65535. */
static const int64_t tiny_spatial_shapes[][2] = {
    {1, 2048}, {32, 2048}, {256, 2048}, {32, 8192}, {8, 65536}, {2, 131072},
};

/* linear_bn's default (batch, in_features, out_features): ResNet-50's head (2048 features, 1000 classes) at
 * batch 32 and 256, and a single request. */
static const int64_t default_linear_shapes[][3] = {{32, 2048, 1000}, {256, 2048, 1000}, {1, 2048, 1000}};

static void print_usage(FILE *out) {
  fprintf(out,
          "usage: " PROGRAM " [options]\n"
          "\n"
          "Validates each batch-normalization op against a float64 reference, then times it on the GPU next to\n"
          "cuDNN's legacy BN API, a cuBLAS baseline and a naive two-kernel baseline, on the same tensors.\n"
          "Without a CUDA device, bnk-bench runs bnk-bench-emu instead: bnk and the naive baseline on the host\n"
          "emulation, validated on shrunk shapes and not timed.\n"
          "\n"
          "  --preset LIST    comma-separated, repeatable: resnet50 (the 12 distinct BN layers of ResNet-50),\n"
          "                   bn1d (N x C, N from 1 to 1,000,000), tiny-spatial (7x7, C up to 131072), all\n"
          "                   (default: resnet50 when no --shape is given)\n"
          "  --batch LIST     batch sizes of the resnet50 preset, e.g. 1,32,256 (default: %d)\n"
          "  --shape S        N,C or N,C,L or N,C,H,W or N,C,D,H,W; repeatable, added to the presets\n"
          "  --op LIST        fwd_train, fwd_infer, bwd, bwd_infer; bnk's epilogue ops, each against the\n"
          "                   unfused sequence: fwd_infer_relu, fwd_infer_add_relu, fwd_train_add_relu,\n"
          "                   bwd_add_relu, scale_shift, linear_bn (GPU only); or all (default: all)\n"
          "  --impl LIST      bnk, cudnn, cudnn-persistent, cublas, naive, and the variants of the epilogue ops:\n"
          "                   bnk-fused, bnk-mask, bnk-from-y, bnk-scale-shift, bnk+separate, bnk-fwd-infer\n"
          "                   (default: all)\n"
          "  --linear B,I,O   linear_bn's batch, in_features, out_features; repeatable (default: 32,2048,1000\n"
          "                   256,2048,1000 and 1,2048,1000)\n"
          "  --layout L       nchw, nhwc or both (default: both)\n"
          "  --dtype LIST     storage type of x, y, dy and dx: f32, f16, bf16 or all (default: f32)\n"
          "  --runs K         timed runs per case, each after an L2 flush (default: %d)\n"
          "  --warmup K       untimed runs before them (default: %d)\n"
          "  --seed S         seed of the random data (default: %u)\n"
          "  --csv FILE       also write the results as CSV\n"
          "  --json FILE      also write the results as JSON\n"
          "  --help           print this and exit\n",
          DEFAULT_BATCH, DEFAULT_RUNS, DEFAULT_WARMUP, DEFAULT_SEED);
}

static void usage_error(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, PROGRAM ": ");
  vfprintf(stderr, format, args);
  fprintf(stderr, "\n(" PROGRAM " --help lists the options)\n");
  va_end(args);
  exit(EXIT_USAGE);
}

static int64_t parse_integer(const char *text, const char *option, int64_t min, int64_t max) {
  char *end = NULL;
  errno = 0;
  const long long value = strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || value < min || value > max)
    usage_error("%s expects an integer in [%" PRId64 ", %" PRId64 "], got '%s'", option, min, max, text);
  return (int64_t)value;
}

/* Copies the next comma-separated item of *cursor into item and advances past it; 0 at the end. */
static int next_item(const char **cursor, char *item, size_t size, const char *option) {
  if (*cursor == NULL) return 0;
  const char *comma = strchr(*cursor, ',');
  const size_t length = comma ? (size_t)(comma - *cursor) : strlen(*cursor);
  if (length == 0 || length >= size) usage_error("%s: bad list item in '%s'", option, *cursor);
  memcpy(item, *cursor, length);
  item[length] = '\0';
  *cursor = comma ? comma + 1 : NULL;
  return 1;
}

/* Sets flags[i] for every item of the list that names names[i]; any other item is a usage error. */
static void parse_name_list(const char *text, const char *option, const char *const *names, int count, int *flags,
                            const char *all_name) {
  memset(flags, 0, (size_t)count * sizeof flags[0]);
  char item[64];
  for (const char *cursor = text; next_item(&cursor, item, sizeof item, option);) {
    int found = 0;
    for (int i = 0; i < count; ++i) {
      if (strcmp(item, names[i]) == 0 || (all_name != NULL && strcmp(item, all_name) == 0)) {
        flags[i] = 1;
        found = 1;
      }
    }
    if (!found) {
      char known[256] = "";
      for (int i = 0; i < count; ++i)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", names[i]);
      usage_error("%s: unknown value '%s' (known: %s%s%s)", option, item, known, all_name ? ", " : "",
                  all_name ? all_name : "");
    }
  }
}

static bench_shape parse_shape(const char *text) {
  int64_t extents[2 + BNK_MAX_SPATIAL_DIMS];
  int count = 0;
  const char *start = text;
  for (;;) {
    if (count == 2 + BNK_MAX_SPATIAL_DIMS)
      usage_error("--shape takes at most %d extents (N,C,D,H,W), got '%s'", 2 + BNK_MAX_SPATIAL_DIMS, text);
    char *end = NULL;
    errno = 0;
    const long long value = strtoll(start, &end, 10);
    if (end == start || (*end != ',' && *end != '\0') || errno == ERANGE || value < 1)
      usage_error("--shape expects positive integers separated by commas (N,C,H,W), got '%s'", text);
    extents[count++] = value;
    if (*end == '\0') break;
    start = end + 1;
  }
  if (count < 2) usage_error("--shape needs at least N and C, got '%s'", text);
  /* One value per channel (N x spatial = 1) is accepted: inference runs, training is reported as n/a. */
  bench_shape shape = {.n = extents[0], .c = extents[1], .spatial_dims = count - 2};
  for (int d = 0; d < BNK_MAX_SPATIAL_DIMS; ++d) shape.spatial[d] = d < shape.spatial_dims ? extents[2 + d] : 1;
  return shape;
}

/* --linear B,IN,OUT */
static bench_shape parse_linear(const char *text) {
  const bench_shape extents = parse_shape(text);
  if (extents.spatial_dims != 1)
    usage_error("--linear expects batch,in_features,out_features (three positive integers), got '%s'", text);
  bench_shape shape = {.n = extents.n, .c = extents.spatial[0], .spatial_dims = 0, .spatial = {1, 1, 1},
                       .in_features = extents.c};
  return shape;
}

static void add_linear_shape(bench_options *options, bench_shape shape) {
  if (options->linear_count == MAX_SHAPES) usage_error("at most %d --linear shapes", MAX_SHAPES);
  options->linear_shapes[options->linear_count++] = shape;
}

static void add_shape(bench_options *options, bench_shape shape) {
  if (options->shape_count == MAX_SHAPES) usage_error("at most %d shapes (presets and --shape together)", MAX_SHAPES);
  options->shapes[options->shape_count++] = shape;
}

static bench_shape image_shape(int64_t n, int64_t c, int64_t h, int64_t w) {
  bench_shape shape = {.n = n, .c = c, .spatial_dims = 2, .spatial = {h, w, 1}};
  return shape;
}

static void add_presets(bench_options *options) {
  if (options->preset_resnet50)
    for (int b = 0; b < options->batch_count; ++b)
      for (size_t i = 0; i < sizeof resnet50_layers / sizeof resnet50_layers[0]; ++i)
        add_shape(options, image_shape(options->batches[b], resnet50_layers[i][0], resnet50_layers[i][1],
                                       resnet50_layers[i][2]));
  if (options->preset_bn1d)
    for (size_t i = 0; i < sizeof bn1d_shapes / sizeof bn1d_shapes[0]; ++i) {
      bench_shape shape = {.n = bn1d_shapes[i][0], .c = bn1d_shapes[i][1], .spatial_dims = 0, .spatial = {1, 1, 1}};
      add_shape(options, shape);
    }
  if (options->preset_tiny_spatial)
    for (size_t i = 0; i < sizeof tiny_spatial_shapes / sizeof tiny_spatial_shapes[0]; ++i)
      add_shape(options, image_shape(tiny_spatial_shapes[i][0], tiny_spatial_shapes[i][1], 7, 7));
}

/* Accepts "--name value" and "--name=value"; returns the value, or NULL when argv[*index] is another option. */
static const char *option_value(int argc, char **argv, int *index, const char *name) {
  const char *arg = argv[*index];
  const size_t length = strlen(name);
  if (strncmp(arg, name, length) != 0) return NULL;
  if (arg[length] == '=') return arg + length + 1;
  if (arg[length] != '\0') return NULL;
  if (*index + 1 >= argc) usage_error("%s needs a value", name);
  return argv[++*index];
}

static bench_options parse_options(int argc, char **argv) {
  static const char *const preset_names[] = {"resnet50", "bn1d", "tiny-spatial"};
  static const char *const dtype_names[] = {"f32", "f16", "bf16"}; /* indexed by bnk_dtype */
  static const char *const layout_names[] = {"nchw", "nhwc"};
  bench_options options;
  memset(&options, 0, sizeof options);
  for (int op = 0; op < OP_COUNT; ++op) options.run_op[op] = 1;
  for (int impl = 0; impl < IMPL_COUNT; ++impl) options.run_impl[impl] = 1;
  options.run_layout[BNK_NCHW] = options.run_layout[BNK_NHWC] = 1;
  options.run_dtype[BNK_FLOAT32] = 1;
  options.runs = DEFAULT_RUNS;
  options.warmup = DEFAULT_WARMUP;
  options.seed = DEFAULT_SEED;
  int any_preset = 0;
  for (int i = 1; i < argc; ++i) {
    const char *value;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      print_usage(stdout);
      exit(EXIT_SUCCESS);
    } else if ((value = option_value(argc, argv, &i, "--op")) != NULL) {
      parse_name_list(value, "--op", op_names, OP_COUNT, options.run_op, "all");
    } else if ((value = option_value(argc, argv, &i, "--impl")) != NULL) {
      parse_name_list(value, "--impl", impl_names, IMPL_COUNT, options.run_impl, NULL);
    } else if ((value = option_value(argc, argv, &i, "--layout")) != NULL) {
      parse_name_list(value, "--layout", layout_names, 2, options.run_layout, "both");
    } else if ((value = option_value(argc, argv, &i, "--dtype")) != NULL) {
      parse_name_list(value, "--dtype", dtype_names, 3, options.run_dtype, "all");
    } else if ((value = option_value(argc, argv, &i, "--preset")) != NULL) {
      int chosen[3];
      parse_name_list(value, "--preset", preset_names, 3, chosen, "all");
      options.preset_resnet50 |= chosen[0];
      options.preset_bn1d |= chosen[1];
      options.preset_tiny_spatial |= chosen[2];
      any_preset = 1;
    } else if ((value = option_value(argc, argv, &i, "--batch")) != NULL) {
      char item[32];
      options.batch_count = 0;
      for (const char *cursor = value; next_item(&cursor, item, sizeof item, "--batch");) {
        if (options.batch_count == MAX_BATCHES) usage_error("--batch takes at most %d sizes", MAX_BATCHES);
        options.batches[options.batch_count++] = parse_integer(item, "--batch", 1, INT32_MAX);
      }
    } else if ((value = option_value(argc, argv, &i, "--shape")) != NULL) {
      add_shape(&options, parse_shape(value));
    } else if ((value = option_value(argc, argv, &i, "--linear")) != NULL) {
      add_linear_shape(&options, parse_linear(value));
    } else if ((value = option_value(argc, argv, &i, "--runs")) != NULL) {
      options.runs = (int)parse_integer(value, "--runs", 1, 1000000);
    } else if ((value = option_value(argc, argv, &i, "--warmup")) != NULL) {
      options.warmup = (int)parse_integer(value, "--warmup", 0, 1000000);
    } else if ((value = option_value(argc, argv, &i, "--seed")) != NULL) {
      options.seed = (uint64_t)parse_integer(value, "--seed", 0, INT64_MAX);
    } else if ((value = option_value(argc, argv, &i, "--csv")) != NULL) {
      options.csv_path = value;
    } else if ((value = option_value(argc, argv, &i, "--json")) != NULL) {
      options.json_path = value;
    } else {
      usage_error("unknown argument '%s'", argv[i]);
    }
  }
  if (options.batch_count == 0) options.batches[options.batch_count++] = DEFAULT_BATCH;
  if (!any_preset && options.shape_count == 0) options.preset_resnet50 = 1;
  add_presets(&options);
  if (options.linear_count == 0)
    for (size_t i = 0; i < sizeof default_linear_shapes / sizeof default_linear_shapes[0]; ++i) {
      bench_shape shape = {.n = default_linear_shapes[i][0], .c = default_linear_shapes[i][2], .spatial_dims = 0,
                           .spatial = {1, 1, 1}, .in_features = default_linear_shapes[i][1]};
      add_linear_shape(&options, shape);
    }
  return options;
}

static void format_shape(const bench_shape *shape, char *out, size_t size) {
  if (shape->in_features > 0) {
    snprintf(out, size, "%" PRId64 "x%" PRId64 "->%" PRId64, shape->n, shape->in_features, shape->c);
    return;
  }
  int written = snprintf(out, size, "%" PRId64 "x%" PRId64, shape->n, shape->c);
  for (int d = 0; d < shape->spatial_dims && written > 0 && (size_t)written < size; ++d)
    written += snprintf(out + written, size - (size_t)written, "x%" PRId64, shape->spatial[d]);
}

static int64_t shape_elements(const bench_shape *shape) {
  int64_t elements = shape->n * shape->c;
  for (int d = 0; d < shape->spatial_dims; ++d) elements *= shape->spatial[d];
  return elements;
}

static bench_shape emulation_shape(const bench_shape *shape) {
  bench_shape small = *shape;
  const int64_t max_n = shape->spatial_dims == 0 ? EMULATION_MAX_N_WITHOUT_SPATIAL : EMULATION_MAX_N;
  if (small.n > max_n) small.n = max_n;
  if (small.c > EMULATION_MAX_C) small.c = EMULATION_MAX_C;
  for (int d = 0; d < shape->spatial_dims; ++d)
    if (small.spatial[d] > EMULATION_MAX_SPATIAL) small.spatial[d] = EMULATION_MAX_SPATIAL;
  return small;
}

/* The elements each channel's statistics are taken over, N x spatial. */
static int64_t values_per_channel(const bench_shape *shape) { return shape_elements(shape) / shape->c; }

/* ------------------------------------------------------------------------------------------------------
 * Bytes each op must move: the tensor passes of the current design plus every per-channel array it reads
 * or writes (float32, C each). The workspace is scratch of the implementation, not a requirement of the op,
 * and is not counted. The plain ops credit every implementation with bnk's passes; the epilogue ops count
 * each variant's own (docs/performance.md, "Fused epilogues"). docs/benchmarks.md lists the passes.
 * ---------------------------------------------------------------------------------------------------- */

/* linear_bn: the GEMM reads x and the weight and writes y; the fused form also reads the folded bias (of the
 * storage type), the unfused one then reads and writes y for the BN (with its 4 per-channel arrays) and
 * again for the ReLU. */
static double linear_bytes(bench_impl impl, const bench_shape *shape, bnk_dtype dtype) {
  const double element = (double)storage_element_bytes(dtype);
  const double x = (double)(shape->n * shape->in_features) * element;
  const double weight = (double)(shape->c * shape->in_features) * element;
  const double y = (double)(shape->n * shape->c) * element;
  const double channel_array = (double)shape->c * sizeof(float);
  if (impl == IMPL_BNK_SEPARATE) return x + weight + y + (2.0 * y + 4.0 * channel_array) + 2.0 * y;
  return x + weight + (double)shape->c * element + y;
}

static double op_bytes(bench_op op, bench_impl impl, const bench_shape *shape, bnk_dtype dtype) {
  const double tensor = (double)shape_elements(shape) * (double)storage_element_bytes(dtype);
  const double channel_array = (double)shape->c * sizeof(float);
  const double mask = (double)shape_elements(shape) / 8.0;
  const int separate = impl == IMPL_BNK_SEPARATE;
  switch (op) {
    case OP_FWD_TRAIN: /* x for statistics, x again to normalize, y; gamma, beta, running mean and var read and
                          written, saved mean and invstd */
      return 3.0 * tensor + 8.0 * channel_array;
    case OP_FWD_INFER: /* x, y; gamma, beta, running mean and var */
      return 2.0 * tensor + 4.0 * channel_array;
    case OP_BWD: /* x and dy for the sums, x and dy again for dx, dx; gamma, saved mean and invstd, dgamma,
                    dbeta */
      return 5.0 * tensor + 5.0 * channel_array;
    case OP_BWD_INFER: /* x and dy for the sums, dy again for dx, dx; gamma, running mean and var, dgamma, dbeta */
      return 4.0 * tensor + 5.0 * channel_array;
    case OP_FWD_INFER_RELU: /* fwd_infer; unfused, the ReLU pass reads and writes y again */
      return (separate ? 4.0 : 2.0) * tensor + 4.0 * channel_array;
    case OP_FWD_INFER_ADD_RELU: /* fwd_infer and z read; unfused, the add + ReLU pass reads y and z, writes y */
      return (separate ? 5.0 : 3.0) * tensor + 4.0 * channel_array;
    case OP_FWD_TRAIN_ADD_RELU: /* fwd_train and z read; unfused, the same add + ReLU pass after it */
      return (separate ? 6.0 : 4.0) * tensor + 8.0 * channel_array;
    case OP_BWD_ADD_RELU:
      /* The sums pass reads x, dy and y (or the mask) and writes dz = g; the dx pass reads x and dz. Unfused:
       * the ReLU backward reads dy and y and writes g = dz, then bwd on it. Per-channel arrays as bwd. */
      if (impl == IMPL_BNK_MASK) return 6.0 * tensor + mask + 5.0 * channel_array;
      return (separate ? 8.0 : 7.0) * tensor + 5.0 * channel_array;
    case OP_SCALE_SHIFT: /* x, y; scale and shift, against fwd_infer's 4 arrays */
      return 2.0 * tensor + (impl == IMPL_BNK_SCALE_SHIFT ? 2.0 : 4.0) * channel_array;
    case OP_LINEAR_BN: return linear_bytes(impl, shape, dtype);
    case OP_COUNT: break;
  }
  return 0.0;
}

/* This variant's bytes over those of the op's unfused sequence; NAN for the plain ops. */
static double bytes_ratio_to_unfused(bench_op op, bench_impl impl, const bench_shape *shape, bnk_dtype dtype) {
  const bench_impl unfused = unfused_impl(op);
  if (unfused == IMPL_COUNT) return NAN;
  return op_bytes(op, impl, shape, dtype) / op_bytes(op, unfused, shape, dtype);
}

/* ------------------------------------------------------------------------------------------------------
 * The run's environment and each case's data
 * ---------------------------------------------------------------------------------------------------- */

typedef struct bench_env {
  int emulation;
  char device_name[256];
  bnk_context *ctx;
  cudaStream_t stream;
  double copy_bytes_per_second; /* measured on the GPU; the H100 reference point in emulation */
  size_t copy_buffer_bytes;
  void *flush_buffer;
  size_t flush_bytes;
  int l2_bytes;
  /* The alternatives: a handle each when they can run, else why not (printed in their rows). */
  char cudnn_version[64], cublas_version[64];
  char cudnn_unavailable[200], cublas_unavailable[200];
#ifdef BNK_BENCH_WITH_CUDNN
  cudnn_bench *cudnn;
#endif
#ifdef BNK_BENCH_WITH_CUBLAS
  cublas_bench *cublas;
#endif
} bench_env;

/* linear_bn's own data; the case's desc is then the BatchNorm1d's (batch, out_features) tensor, out its y and
 * the per-channel arrays the BN's. */
typedef struct linear_data {
  int64_t in_features;
  void *x_host, *weight_host;          /* storage type: x (batch x in), weight (out x in), row-major */
  void *x, *weight;                    /* device: the unfused GEMM's */
  void *folded_weight, *folded_bias;   /* device: bnk_fold_linear's, storage type both, for bnk_linear_bn */
  void *workspace;                     /* bnk_linear_bn's */
  size_t workspace_bytes;
  char fused_unavailable[200];         /* why bnk_linear_bn cannot run in this build, or "" */
  int64_t *rows;                       /* the validated rows of y */
  int64_t row_count;
} linear_data;

typedef struct case_data {
  bnk_dtype dtype;
  bnk_tensor_desc desc;
  int64_t elements;
  size_t tensor_bytes;
  /* Host copies in the storage type, and the per-channel inputs as the float32 the device gets. z_host is the
   * residual, made only when an add + ReLU op runs. */
  void *x_host, *dy_host, *z_host, *out_host;
  float *gamma_host, *beta_host, *running_mean_host, *running_var_host;
  /* Device buffers; out receives y in the forward ops and dx in the backward ops. x, dy and z are
   * x_copies[0], dy_copies[0] and z_copies[0]: the timed runs cycle through `rotation` identical copies. */
  void *x, *dy, *z, *out;
  void *x_copies[MAX_ROTATION], *dy_copies[MAX_ROTATION], *z_copies[MAX_ROTATION];
  int rotation;
  /* bwd_add_relu: the forward's y and ReLU mask (made once per validation, read by every variant), and dz. */
  void *forward_y, *mask, *dz;
  size_t mask_bytes;
  /* scale_shift: bnk_inference_params' output. */
  float *scale, *shift;
  linear_data *linear; /* linear_bn only */
  /* Whether the cuBLAS baseline's scratch for this case could be set up, and if not why. */
  call_result cublas_setup;
  float *gamma, *beta, *running_mean, *running_var, *save_mean, *save_invstd, *dgamma, *dbeta;
  void *workspace;
  size_t workspace_bytes;
  /* The validated channels, and x and dy restricted to them: a tensor of the same layout with C = count. */
  int64_t *channels;
  int64_t channel_count;
  bnk_tensor_desc sample_desc;
  int64_t sample_elements;
  double *x_sample, *dy_sample, *z_sample;
} case_data;

/* Up to VALIDATED_CHANNELS of `total` indices in increasing order (all of them when validate_all): the first
 * and the last (the edges of a range are where indexing goes wrong), the rest drawn at random. */
static int64_t *choose_indices(int64_t total, bench_rng *rng, int validate_all, int64_t *count_out) {
  const int64_t count = validate_all || total <= VALIDATED_CHANNELS ? total : VALIDATED_CHANNELS;
  int64_t *indices = host_alloc((size_t)count * sizeof(int64_t));
  *count_out = count;
  if (count == total) {
    for (int64_t i = 0; i < total; ++i) indices[i] = i;
    return indices;
  }
  unsigned char *chosen = calloc((size_t)total, 1);
  if (chosen == NULL) die("out of host memory choosing the validated indices");
  chosen[0] = chosen[total - 1] = 1;
  for (int64_t picked = 2; picked < count;) {
    const int64_t index = (int64_t)(rng_next(rng) % (uint64_t)total);
    if (!chosen[index]) {
      chosen[index] = 1;
      ++picked;
    }
  }
  int64_t next = 0;
  for (int64_t i = 0; i < total; ++i)
    if (chosen[i]) indices[next++] = i;
  free(chosen);
  return indices;
}

/* Copies the validated channels of a storage-type tensor into a float64 tensor of the sample layout. */
static void gather_sample(const case_data *data, const void *storage, double *sample) {
  const int64_t spatial = ref_spatial(&data->desc);
  for (int64_t j = 0; j < data->channel_count; ++j)
    for (int64_t n = 0; n < data->desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s)
        sample[ref_offset(&data->sample_desc, n, j, s)] =
            storage_load(data->dtype, storage, ref_offset(&data->desc, n, data->channels[j], s));
}

/* Per-channel values at the validated channels, from a full length-C array. */
static double *sample_channels(const case_data *data, const double *full) {
  double *sample = host_alloc((size_t)data->channel_count * sizeof(double));
  for (int64_t j = 0; j < data->channel_count; ++j) sample[j] = full[data->channels[j]];
  return sample;
}

static double *sample_floats(const case_data *data, const float *full) {
  double *sample = host_alloc((size_t)data->channel_count * sizeof(double));
  for (int64_t j = 0; j < data->channel_count; ++j) sample[j] = full[data->channels[j]];
  return sample;
}

static float *device_floats(const float *host, int64_t count) {
  float *device = device_alloc((size_t)count * sizeof(float));
  upload(device, host, (size_t)count * sizeof(float));
  return device;
}

/* Whether any selected op reads the residual z, and whether bwd_add_relu runs (it needs the forward's y, its
 * mask and dz): the buffers are made only then. */
static int needs_residual(const bench_options *options) {
  for (int op = 0; op < OP_COUNT; ++op)
    if (options->run_op[op] && adds_residual((bench_op)op)) return 1;
  return 0;
}

static case_data make_case(const bench_env *env, const bench_options *options, const bench_shape *shape,
                           bnk_layout layout, bnk_dtype dtype, bench_rng *rng) {
  case_data data;
  memset(&data, 0, sizeof data);
  data.dtype = dtype;
  check_bnk(bnk_tensor_desc_init(&data.desc, dtype, layout, shape->n, shape->c, shape->spatial_dims, shape->spatial),
            "bnk_tensor_desc_init");
  data.elements = bnk_tensor_desc_elements(&data.desc);
  data.tensor_bytes = (size_t)data.elements * storage_element_bytes(dtype);
  const int64_t c = shape->c;
  const size_t channel_bytes = (size_t)c * sizeof(float);

  /* Activations after a convolution: each channel has its own mean (around 1, in [-1, 3]) and spread (in
   * [0.5, 2]), so that a kernel that mixes channels or drops the mean shows. dy is centred with unit spread. */
  data.gamma_host = host_alloc(channel_bytes);
  data.beta_host = host_alloc(channel_bytes);
  data.running_mean_host = host_alloc(channel_bytes);
  data.running_var_host = host_alloc(channel_bytes);
  float *channel_mean = host_alloc(channel_bytes), *channel_spread = host_alloc(channel_bytes);
  float *gradient_mean = host_alloc(channel_bytes);
  for (int64_t i = 0; i < c; ++i) {
    channel_mean[i] = (float)rng_uniform(rng, -1.0, 3.0);
    channel_spread[i] = (float)rng_uniform(rng, 0.5, 2.0);
    gradient_mean[i] = (float)rng_uniform(rng, -0.2, 0.2);
    data.gamma_host[i] = (float)rng_uniform(rng, 0.5, 1.5);
    data.beta_host[i] = (float)rng_uniform(rng, -0.5, 0.5);
    data.running_mean_host[i] = channel_mean[i] + (float)rng_uniform(rng, -0.5, 0.5);
    data.running_var_host[i] = channel_spread[i] * channel_spread[i] * (float)rng_uniform(rng, 0.5, 1.5);
  }
  const int residual = needs_residual(options);
  data.x_host = host_alloc(data.tensor_bytes);
  data.dy_host = host_alloc(data.tensor_bytes);
  data.z_host = residual ? host_alloc(data.tensor_bytes) : NULL;
  data.out_host = host_alloc(data.tensor_bytes);
  const int64_t spatial = ref_spatial(&data.desc);
  for (int64_t n = 0; n < shape->n; ++n)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t offset = ref_offset(&data.desc, n, i, s);
        storage_store(dtype, data.x_host, offset, channel_mean[i] + channel_spread[i] * rng_noise(rng));
        storage_store(dtype, data.dy_host, offset, gradient_mean[i] + rng_noise(rng));
        /* The residual: centred, unit spread, like bn(x), so that relu(bn(x) + z) cuts about half the values. */
        if (residual) storage_store(dtype, data.z_host, offset, rng_noise(rng));
      }
  free(channel_mean);
  free(channel_spread);
  free(gradient_mean);

  /* The inputs the timed runs rotate through: x and dy, and z when made. */
  void *const hosts[] = {data.x_host, data.dy_host, data.z_host};
  void **const copies[] = {data.x_copies, data.dy_copies, data.z_copies};
  const int inputs = residual ? 3 : 2;
  for (int k = 0; k < inputs; ++k) {
    copies[k][0] = device_alloc(data.tensor_bytes);
    upload(copies[k][0], hosts[k], data.tensor_bytes);
  }
  data.x = data.x_copies[0];
  data.dy = data.dy_copies[0];
  data.z = data.z_copies[0];
  data.out = device_alloc(data.tensor_bytes);
  data.rotation = 1;
  if (!env->emulation && data.tensor_bytes > 0) {
    /* As many copies as fit in the rotation budget and leave three quarters of the free memory alone. */
    size_t free_bytes = 0, total_bytes = 0;
    check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    size_t budget = free_bytes / 4 < ROTATION_BUDGET_BYTES ? free_bytes / 4 : ROTATION_BUDGET_BYTES;
    while (data.rotation < MAX_ROTATION &&
           (size_t)(data.rotation + 1) * (size_t)inputs * data.tensor_bytes <= budget) {
      for (int k = 0; k < inputs; ++k) {
        copies[k][data.rotation] = device_alloc(data.tensor_bytes);
        check_cuda(cudaMemcpy(copies[k][data.rotation], copies[k][0], data.tensor_bytes, cudaMemcpyDeviceToDevice),
                   "cudaMemcpy (input rotation)");
      }
      ++data.rotation;
    }
  }
  if (options->run_op[OP_BWD_ADD_RELU]) {
    check_bnk(bnk_epilogue_mask_size(&data.desc, &data.mask_bytes), "bnk_epilogue_mask_size");
    data.forward_y = device_alloc(data.tensor_bytes);
    data.dz = device_alloc(data.tensor_bytes);
    data.mask = device_alloc(data.mask_bytes);
  }
  data.gamma = device_floats(data.gamma_host, c);
  data.beta = device_floats(data.beta_host, c);
  data.running_mean = device_alloc(channel_bytes);
  data.running_var = device_alloc(channel_bytes);
  data.save_mean = device_alloc(channel_bytes);
  data.save_invstd = device_alloc(channel_bytes);
  data.dgamma = device_alloc(channel_bytes);
  data.dbeta = device_alloc(channel_bytes);
  data.scale = device_alloc(channel_bytes);
  data.shift = device_alloc(channel_bytes);
  size_t forward_bytes = 0, backward_bytes = 0;
  check_bnk(bnk_forward_training_workspace_size(env->ctx, &data.desc, &forward_bytes),
            "bnk_forward_training_workspace_size");
  check_bnk(bnk_backward_workspace_size(env->ctx, &data.desc, &backward_bytes), "bnk_backward_workspace_size");
  data.workspace_bytes = forward_bytes > backward_bytes ? forward_bytes : backward_bytes;
  data.workspace = device_alloc(data.workspace_bytes);

  data.channels = choose_indices(c, rng, env->emulation, &data.channel_count);
  check_bnk(bnk_tensor_desc_init(&data.sample_desc, BNK_FLOAT32, layout, shape->n, data.channel_count,
                                 shape->spatial_dims, shape->spatial),
            "bnk_tensor_desc_init");
  data.sample_elements = bnk_tensor_desc_elements(&data.sample_desc);
  data.x_sample = host_alloc((size_t)data.sample_elements * sizeof(double));
  data.dy_sample = host_alloc((size_t)data.sample_elements * sizeof(double));
  gather_sample(&data, data.x_host, data.x_sample);
  gather_sample(&data, data.dy_host, data.dy_sample);
  if (residual) {
    data.z_sample = host_alloc((size_t)data.sample_elements * sizeof(double));
    gather_sample(&data, data.z_host, data.z_sample);
  }
  return data;
}

static void free_case(case_data *data) {
  void *host_buffers[] = {data->x_host,         data->dy_host,         data->z_host,    data->out_host,
                          data->gamma_host,     data->beta_host,       data->running_mean_host,
                          data->running_var_host, data->channels,      data->x_sample,  data->dy_sample,
                          data->z_sample};
  for (size_t i = 0; i < sizeof host_buffers / sizeof host_buffers[0]; ++i) free(host_buffers[i]);
  void *device_buffers[] = {data->out,       data->gamma,  data->beta,   data->running_mean, data->running_var,
                            data->save_mean, data->save_invstd, data->dgamma, data->dbeta, data->workspace,
                            data->forward_y, data->mask,   data->dz,     data->scale,        data->shift};
  for (size_t i = 0; i < sizeof device_buffers / sizeof device_buffers[0]; ++i) device_free(device_buffers[i]);
  for (int i = 0; i < data->rotation; ++i) {
    device_free(data->x_copies[i]);
    device_free(data->dy_copies[i]);
    device_free(data->z_copies[i]);
  }
  linear_data *linear = data->linear;
  if (linear != NULL) {
    free(linear->x_host);
    free(linear->weight_host);
    free(linear->rows);
    void *linear_buffers[] = {linear->x, linear->weight, linear->folded_weight, linear->folded_bias,
                              linear->workspace};
    for (size_t i = 0; i < sizeof linear_buffers / sizeof linear_buffers[0]; ++i) device_free(linear_buffers[i]);
    free(linear);
  }
  memset(data, 0, sizeof *data);
}

/* linear_bn's case: a Linear layer without bias (the BN's shift absorbs one) followed by BatchNorm1d with frozen
 * statistics. x and the weight are drawn so that x W^T has about unit spread, as bn(x) needs nothing special
 * there; the BN's parameters spread its output around 0, so that the ReLU cuts. The fold into the weight and
 * bias is bnk_fold_linear's work at load time: done here, once, not timed. The emulation has no cuBLAS, so it
 * makes nothing but the descriptor (the rows say n/a). */
static case_data make_linear_case(const bench_env *env, const bench_shape *shape, bnk_dtype dtype, bench_rng *rng) {
  case_data data;
  memset(&data, 0, sizeof data);
  data.dtype = dtype;
  check_bnk(bnk_tensor_desc_init(&data.desc, dtype, BNK_NCHW, shape->n, shape->c, 0, NULL), "bnk_tensor_desc_init");
  data.rotation = 1; /* the timed runs reuse one x: the L2 flush before each leaves nothing of it on chip */
  if (env->emulation) return data;
  data.elements = bnk_tensor_desc_elements(&data.desc);
  data.tensor_bytes = (size_t)data.elements * storage_element_bytes(dtype);
  const int64_t c = shape->c, in = shape->in_features;
  const size_t channel_bytes = (size_t)c * sizeof(float), element = storage_element_bytes(dtype);
  data.gamma_host = host_alloc(channel_bytes);
  data.beta_host = host_alloc(channel_bytes);
  data.running_mean_host = host_alloc(channel_bytes);
  data.running_var_host = host_alloc(channel_bytes);
  for (int64_t i = 0; i < c; ++i) {
    data.gamma_host[i] = (float)rng_uniform(rng, 0.5, 1.5);
    data.beta_host[i] = (float)rng_uniform(rng, -0.5, 0.5);
    data.running_mean_host[i] = (float)rng_uniform(rng, -0.5, 0.5);
    data.running_var_host[i] = (float)rng_uniform(rng, 0.5, 1.5);
  }
  linear_data *linear = calloc(1, sizeof *linear);
  if (linear == NULL) die("out of host memory");
  data.linear = linear;
  linear->in_features = in;
  linear->x_host = host_alloc((size_t)(shape->n * in) * element);
  linear->weight_host = host_alloc((size_t)(c * in) * element);
  for (int64_t i = 0; i < shape->n * in; ++i) storage_store(dtype, linear->x_host, i, rng_noise(rng));
  const float weight_spread = (float)(1.0 / sqrt((double)in));
  for (int64_t i = 0; i < c * in; ++i) storage_store(dtype, linear->weight_host, i, weight_spread * rng_noise(rng));
  linear->x = device_alloc((size_t)(shape->n * in) * element);
  linear->weight = device_alloc((size_t)(c * in) * element);
  linear->folded_weight = device_alloc((size_t)(c * in) * element);
  linear->folded_bias = device_alloc((size_t)c * element);
  upload(linear->x, linear->x_host, (size_t)(shape->n * in) * element);
  upload(linear->weight, linear->weight_host, (size_t)(c * in) * element);
  data.out = device_alloc(data.tensor_bytes);
  data.out_host = host_alloc(data.tensor_bytes);
  data.gamma = device_floats(data.gamma_host, c);
  data.beta = device_floats(data.beta_host, c);
  data.running_mean = device_floats(data.running_mean_host, c);
  data.running_var = device_floats(data.running_var_host, c);
  check_bnk(bnk_fold_linear(env->ctx, c, in, dtype, linear->weight, NULL, data.gamma, data.beta, data.running_mean,
                            data.running_var, EPS, linear->folded_weight, linear->folded_bias, dtype),
            "bnk_fold_linear");
  const bnk_status available = bnk_linear_bn_workspace_size(env->ctx, &linear->workspace_bytes);
  if (available == BNK_ERROR_NOT_SUPPORTED)
    snprintf(linear->fused_unavailable, sizeof linear->fused_unavailable, "%s", bnk_last_error_message());
  else check_bnk(available, "bnk_linear_bn_workspace_size");
  linear->workspace = available == BNK_SUCCESS ? device_alloc(linear->workspace_bytes) : NULL;
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize (after the fold)");
  linear->rows = choose_indices(shape->n, rng, 0, &linear->row_count);
  return data;
}

/* ------------------------------------------------------------------------------------------------------
 * The implementations: one function queues exactly what is timed, so that validation and timing see the
 * same call. `slot` picks the copy of x and dy (0 for validation).
 * ---------------------------------------------------------------------------------------------------- */

static call_result call_ok(void) {
  call_result result;
  memset(&result, 0, sizeof result);
  return result;
}

static call_result bnk_result(bnk_status status, const char *call) {
  call_result result = call_ok();
  if (status != BNK_SUCCESS) {
    result.failed = 1;
    result.not_supported = status == BNK_ERROR_NOT_SUPPORTED;
    snprintf(result.message, sizeof result.message, "%s: %s: %s", call, bnk_status_name(status),
             bnk_last_error_message());
  }
  return result;
}

static call_result cuda_call_result(cudaError_t error, const char *call) {
  call_result result = call_ok();
  if (error != cudaSuccess) {
    result.failed = 1;
    snprintf(result.message, sizeof result.message, "%s: %s: %s", call, cudaGetErrorName(error),
             cudaGetErrorString(error));
  }
  return result;
}

static call_result run_bnk(const bench_env *env, case_data *data, const op_arguments *a, bench_op op) {
  switch (op) {
    case OP_FWD_TRAIN:
      return bnk_result(bnk_forward_training(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                             a->running_var, NULL, a->momentum, a->eps, a->save_mean, a->save_invstd,
                                             data->workspace, data->workspace_bytes),
                        "bnk_forward_training");
    case OP_FWD_INFER:
      return bnk_result(bnk_forward_inference(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                              a->running_var, a->eps),
                        "bnk_forward_inference");
    case OP_BWD:
      return bnk_result(bnk_backward(env->ctx, a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                     a->save_mean, a->save_invstd, data->workspace, data->workspace_bytes),
                        "bnk_backward");
    case OP_BWD_INFER:
      return bnk_result(bnk_backward_inference(env->ctx, a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                               a->running_mean, a->running_var, a->eps, data->workspace,
                                               data->workspace_bytes),
                        "bnk_backward_inference");
    default: break;
  }
  die("internal error: %s is not a plain op", op_names[op]);
  return call_ok();
}

/* The epilogue ops: each variant queues either bnk's fused call or the unfused sequence it replaces (bnk's
 * plain op, then the bench's separate elementwise pass); the forwards write y to out, the backward dx. */
static call_result run_bnk_variant(const bench_env *env, case_data *data, const op_arguments *a, bench_impl impl,
                                   bench_op op) {
  const int fused = impl != IMPL_BNK_SEPARATE;
  switch (op) {
    case OP_FWD_INFER_RELU:
    case OP_FWD_INFER_ADD_RELU:
    case OP_FWD_TRAIN_ADD_RELU: {
      const int training = op == OP_FWD_TRAIN_ADD_RELU;
      const void *z = adds_residual(op) ? a->z : NULL;
      if (!fused) {
        const call_result plain = run_bnk(env, data, a, training ? OP_FWD_TRAIN : OP_FWD_INFER);
        if (plain.failed) return plain;
        return cuda_call_result(baseline_add_relu(a->desc, a->out, z, a->stream), "baseline_add_relu");
      }
      const bnk_epilogue epilogue = {z != NULL ? BNK_EPILOGUE_ADD_RELU : BNK_EPILOGUE_RELU, z, NULL, 0};
      if (training)
        return bnk_result(bnk_forward_training_ex(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                  a->running_var, NULL, a->momentum, a->eps, a->save_mean,
                                                  a->save_invstd, data->workspace, data->workspace_bytes, &epilogue),
                          "bnk_forward_training_ex");
      return bnk_result(bnk_forward_inference_ex(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                 a->running_var, a->eps, &epilogue),
                        "bnk_forward_inference_ex");
    }
    case OP_BWD_ADD_RELU: {
      if (!fused) {
        /* The ReLU's backward writes g, which is dz; the BN's backward then takes it as its dy. */
        const call_result relu = cuda_call_result(baseline_relu_backward(a->desc, a->y, a->dy, a->dz, a->stream),
                                                  "baseline_relu_backward");
        if (relu.failed) return relu;
        op_arguments through_relu = *a;
        through_relu.dy = a->dz;
        return run_bnk(env, data, &through_relu, OP_BWD);
      }
      const int from_mask = impl == IMPL_BNK_MASK;
      const bnk_epilogue_grad epilogue = {BNK_EPILOGUE_ADD_RELU, from_mask ? NULL : a->y, from_mask ? a->mask : NULL,
                                          from_mask ? a->mask_bytes : 0, a->dz};
      return bnk_result(bnk_backward_ex(env->ctx, a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                        a->save_mean, a->save_invstd, data->workspace, data->workspace_bytes,
                                        &epilogue),
                        "bnk_backward_ex");
    }
    case OP_SCALE_SHIFT:
      if (impl == IMPL_BNK_FWD_INFER) return run_bnk(env, data, a, OP_FWD_INFER);
      return bnk_result(bnk_scale_shift(env->ctx, a->desc, a->x, a->out, a->scale, a->shift, NULL), "bnk_scale_shift");
    default: break;
  }
  die("internal error: %s has no variant %s", op_names[op], impl_names[impl]);
  return call_ok();
}

/* linear_bn: bnk_linear_bn on the folded weight and bias (one cublasLtMatmul with the RELU_BIAS epilogue), or
 * the unfused sequence: the GEMM by cuBLAS, bnk's inference forward in place over its output, the ReLU pass. */
static call_result run_linear(const bench_env *env, case_data *data, bench_impl impl) {
  const linear_data *linear = data->linear;
  const int64_t batch = data->desc.n, out_features = data->desc.c;
  if (impl == IMPL_BNK_FUSED)
    return bnk_result(bnk_linear_bn(env->ctx, data->dtype, batch, linear->in_features, out_features, linear->x,
                                    linear->folded_weight, linear->folded_bias, BNK_EPILOGUE_RELU, data->out,
                                    linear->workspace, linear->workspace_bytes),
                      "bnk_linear_bn");
#ifdef BNK_BENCH_WITH_CUBLAS
  call_result result = cublas_bench_linear(env->cublas, data->dtype, batch, linear->in_features, out_features,
                                           linear->x, linear->weight, data->out);
  if (!result.failed)
    result = bnk_result(bnk_forward_inference(env->ctx, &data->desc, data->out, data->out, data->gamma, data->beta,
                                              data->running_mean, data->running_var, EPS),
                        "bnk_forward_inference (over the GEMM's output)");
  if (!result.failed)
    result = cuda_call_result(baseline_add_relu(&data->desc, data->out, NULL, env->stream), "baseline_add_relu");
  return result;
#else
  die("internal error: %s cannot run linear_bn in this build", impl_names[impl]);
  return call_ok();
#endif
}

static call_result run_naive(const op_arguments *a, bench_op op) {
  /* Only the plain ops reach here (impl_has_op). */
  switch (op) {
    case OP_FWD_TRAIN:
      return cuda_call_result(naive_forward_training(a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                     a->running_var, a->momentum, a->eps, a->save_mean,
                                                     a->save_invstd, a->stream),
                              "naive_forward_training");
    case OP_FWD_INFER:
      return cuda_call_result(naive_forward_inference(a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                      a->running_var, a->eps, a->stream),
                              "naive_forward_inference");
    case OP_BWD:
      return cuda_call_result(naive_backward(a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                             a->save_mean, a->save_invstd, a->stream),
                              "naive_backward");
    case OP_BWD_INFER:
      return cuda_call_result(naive_backward_inference(a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                                       a->running_mean, a->running_var, a->eps, a->stream),
                              "naive_backward_inference");
    default: break;
  }
  die("internal error: unknown op %d", (int)op);
  return call_ok();
}

static call_result run_impl(const bench_env *env, case_data *data, bench_impl impl, bench_op op, int slot) {
  const op_arguments arguments = {
      .desc = &data->desc,
      .x = data->x_copies[slot],
      .dy = data->dy_copies[slot],
      .out = data->out,
      .gamma = data->gamma,
      .beta = data->beta,
      .running_mean = data->running_mean,
      .running_var = data->running_var,
      .save_mean = data->save_mean,
      .save_invstd = data->save_invstd,
      .dgamma = data->dgamma,
      .dbeta = data->dbeta,
      .momentum = MOMENTUM,
      .eps = EPS,
      .stream = env->stream,
      .z = data->z_copies[slot],
      .y = data->forward_y,
      .mask = data->mask,
      .mask_bytes = data->mask_bytes,
      .dz = data->dz,
      .scale = data->scale,
      .shift = data->shift,
  };
  if (op == OP_LINEAR_BN) return run_linear(env, data, impl);
  switch (impl) {
    case IMPL_BNK: return run_bnk(env, data, &arguments, op);
    case IMPL_NAIVE: return run_naive(&arguments, op);
    case IMPL_BNK_FUSED:
    case IMPL_BNK_MASK:
    case IMPL_BNK_FROM_Y:
    case IMPL_BNK_SCALE_SHIFT:
    case IMPL_BNK_SEPARATE:
    case IMPL_BNK_FWD_INFER: return run_bnk_variant(env, data, &arguments, impl, op);
#ifdef BNK_BENCH_WITH_CUDNN
    case IMPL_CUDNN: return cudnn_bench_run(env->cudnn, 0, op, &arguments);
    case IMPL_CUDNN_PERSISTENT: return cudnn_bench_run(env->cudnn, 1, op, &arguments);
#endif
#ifdef BNK_BENCH_WITH_CUBLAS
    case IMPL_CUBLAS: return cublas_bench_run(env->cublas, op, &arguments);
#endif
    default: break;
  }
  die("internal error: %s cannot run in this build", impl_names[impl]);
  return call_ok();
}

/* Why the implementation cannot run the op on this case, or NULL when it can. */
static const char *unavailable_reason(const bench_env *env, const case_data *data, bench_impl impl, bench_op op,
                                      const bench_shape *run_shape) {
  if (op == OP_LINEAR_BN) {
    /* Both variants need cuBLAS: bnk_linear_bn is a cuBLASLt matmul, the unfused GEMM a cuBLAS one. */
    if (env->emulation) return "needs a GPU (cuBLASLt)";
    if (impl == IMPL_BNK_FUSED && data->linear->fused_unavailable[0] != '\0') return data->linear->fused_unavailable;
    if (impl == IMPL_BNK_SEPARATE && env->cublas_unavailable[0] != '\0') return env->cublas_unavailable;
    return NULL;
  }
  if (trains(op) && values_per_channel(run_shape) < 2)
    return "training needs more than one value per channel (N x spatial = 1), as in PyTorch";
  if (is_cudnn(impl) && env->cudnn_unavailable[0] != '\0') return env->cudnn_unavailable;
  if (impl == IMPL_CUBLAS && env->cublas_unavailable[0] != '\0') return env->cublas_unavailable;
  if (impl == IMPL_CUBLAS && data->cublas_setup.failed) return data->cublas_setup.message;
  return NULL;
}


/* Puts the case in the state the op starts from: the initial running statistics (an earlier op's timed runs
 * moved them), poisoned outputs, for bwd the saved statistics of a training forward of this x, for
 * bwd_add_relu also that forward's relu(bn(x) + z) and ReLU mask, and for scale_shift the precomputed
 * parameters (bnk_inference_params, once, not timed). */
static void prepare_op(const bench_env *env, case_data *data, bench_op op) {
  const size_t channel_bytes = (size_t)data->desc.c * sizeof(float);
  upload(data->running_mean, data->running_mean_host, channel_bytes);
  upload(data->running_var, data->running_var_host, channel_bytes);
  if (op == OP_BWD) {
    check_bnk(bnk_forward_training(env->ctx, &data->desc, data->x, data->out, data->gamma, data->beta, NULL, NULL,
                                   NULL, MOMENTUM, EPS, data->save_mean, data->save_invstd, data->workspace,
                                   data->workspace_bytes),
              "bnk_forward_training (the statistics bnk_backward starts from)");
  } else if (op == OP_BWD_ADD_RELU) {
    const bnk_epilogue epilogue = {BNK_EPILOGUE_ADD_RELU, data->z, data->mask, data->mask_bytes};
    check_bnk(bnk_forward_training_ex(env->ctx, &data->desc, data->x, data->forward_y, data->gamma, data->beta, NULL,
                                      NULL, NULL, MOMENTUM, EPS, data->save_mean, data->save_invstd, data->workspace,
                                      data->workspace_bytes, &epilogue),
              "bnk_forward_training_ex (the y, mask and statistics bnk_backward_ex starts from)");
    device_poison(data->dz, data->tensor_bytes);
  } else {
    device_poison(data->save_mean, channel_bytes);
    device_poison(data->save_invstd, channel_bytes);
  }
  if (op == OP_SCALE_SHIFT)
    check_bnk(bnk_inference_params(env->ctx, data->desc.c, data->gamma, data->beta, data->running_mean,
                                   data->running_var, EPS, data->scale, data->shift),
              "bnk_inference_params");
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  device_poison(data->out, data->tensor_bytes);
  device_poison(data->dgamma, channel_bytes);
  device_poison(data->dbeta, channel_bytes);
}

/* ------------------------------------------------------------------------------------------------------
 * Validation
 * ---------------------------------------------------------------------------------------------------- */

typedef struct validation {
  int passed;
  double max_error;         /* largest |y - reference| or |dx - reference| over the validated elements */
  double worst_channel_error; /* largest error / scale over the per-channel outputs; -1 if the op has none */
  char failure[400];        /* the first quantity out of tolerance, with both values */
} validation;

static void record_failure(validation *result, const char *format, ...) {
  if (!result->passed) return; /* the first failure is the one worth reading */
  result->passed = 0;
  va_list args;
  va_start(args, format);
  vsnprintf(result->failure, sizeof result->failure, format, args);
  va_end(args);
}

/* Elements of the sample: float32 to an absolute tolerance, 16-bit storage to one unit in its last place.
 * rounded_before, when given, holds values that the implementation rounded to the storage type on the way
 * (bn(x), which the unfused sequence stores before adding z): 16-bit storage is then allowed half a unit in
 * the last place of each such value on top. */
static void check_elements(validation *result, const case_data *data, const char *what, const double *got,
                           const double *want, const double *rounded_before) {
  const int64_t spatial = ref_spatial(&data->sample_desc);
  for (int64_t i = 0; i < data->sample_elements; ++i) {
    const double error = fabs(got[i] - want[i]);
    double allowed = data->dtype == BNK_FLOAT32
                         ? F32_ELEMENT_TOLERANCE
                         : SIXTEEN_BIT_ULPS * storage_ulp(data->dtype, want[i]) + SIXTEEN_BIT_SLACK;
    if (rounded_before != NULL && data->dtype != BNK_FLOAT32)
      allowed += 0.5 * storage_ulp(data->dtype, rounded_before[i]);
    if (isnan(error) || error > result->max_error) result->max_error = isnan(error) ? INFINITY : error;
    if (error <= allowed) continue;
    /* Name the element by (n, c, spatial index) of the full tensor, not its place in the sample. */
    const int64_t k = data->channel_count;
    const int channels_last = data->sample_desc.layout == BNK_NHWC;
    const int64_t j = channels_last ? i % k : (i / spatial) % k;
    const int64_t s = channels_last ? (i / k) % spatial : i % spatial;
    const int64_t n = i / (k * spatial);
    record_failure(result,
                   "%s at n=%" PRId64 " c=%" PRId64 " spatial=%" PRId64
                   " is %.9g, reference %.9g (error %.3g > %.3g allowed)",
                   what, n, data->channels[j], s, got[i], want[i], error, allowed);
  }
}

/* Per-channel outputs, at the validated channels: |got - want| <= CHANNEL_TOLERANCE * scale. The scale is
 * what the error of the quantity is proportional to: |want| for invstd and variances, |mean| + std for
 * means (the mean of a centred channel is near 0 but its error scales with the spread), and the sum of the
 * absolute terms for dgamma and dbeta (a sum that cancels to near 0 has no meaningful relative error; its
 * rounding error is a fraction of what was added up). */
static void check_channels(validation *result, const case_data *data, const char *what, const double *got_full,
                           const double *want, const double *scale) {
  for (int64_t j = 0; j < data->channel_count; ++j) {
    const double got = got_full[data->channels[j]];
    const double relative = fabs(got - want[j]) / scale[j];
    if (isnan(relative) || relative > result->worst_channel_error)
      result->worst_channel_error = isnan(relative) ? INFINITY : relative;
    if (!(relative <= CHANNEL_TOLERANCE))
      record_failure(result, "%s[%" PRId64 "] is %.9g, reference %.9g (relative error %.3g > %.3g)", what,
                     data->channels[j], got, want[j], relative, CHANNEL_TOLERANCE);
  }
}

/* A device tensor of the case's descriptor at the validated channels, as float64 (the caller frees it). */
static double *download_sample(case_data *data, const void *device) {
  download(data->out_host, device, data->tensor_bytes); /* out_host is the download scratch */
  double *sample = host_alloc((size_t)data->sample_elements * sizeof(double));
  gather_sample(data, data->out_host, sample);
  return sample;
}

/* An output tensor (y, dx or dz), at the validated channels; rounded_before as in check_elements. */
static void check_tensor(validation *result, case_data *data, const char *what, const void *device,
                         const double *want, const double *rounded_before) {
  double *got = download_sample(data, device);
  check_elements(result, data, what, got, want, rounded_before);
  free(got);
}

/* y of a forward op: want holds bn(x) on entry and becomes the op's epilogue of it, relu(bn(x) + z) or
 * relu(bn(x)) (relu keeps NaN). The unfused add + ReLU stores bn(x) before adding z, one more rounding. */
static void check_forward_output(validation *result, case_data *data, bench_impl impl, bench_op op, double *want) {
  double *rounded_bn = NULL;
  if (impl == IMPL_BNK_SEPARATE && adds_residual(op)) {
    rounded_bn = host_alloc((size_t)data->sample_elements * sizeof(double));
    memcpy(rounded_bn, want, (size_t)data->sample_elements * sizeof(double));
  }
  if (has_relu(op))
    for (int64_t i = 0; i < data->sample_elements; ++i) {
      const double v = want[i] + (adds_residual(op) ? data->z_sample[i] : 0.0);
      want[i] = v < 0.0 ? 0.0 : v;
    }
  check_tensor(result, data, "y", data->out, want, rounded_bn);
  free(rounded_bn);
}

static double *download_channel_array(const case_data *data, const float *device) {
  double *values = host_alloc((size_t)data->desc.c * sizeof(double));
  download_floats(values, device, data->desc.c);
  return values;
}

static void check_channel_output(validation *result, const case_data *data, const char *what, const float *device,
                                 const double *want, const double *scale) {
  double *got = download_channel_array(data, device);
  check_channels(result, data, what, got, want, scale);
  free(got);
}

/* The scales of dbeta = sum dy and dgamma = sum dy xhat: the sums of the absolute terms. */
static void gradient_sum_scales(const case_data *data, const double *dy, const double *mean, const double *invstd,
                                double *dbeta_scale, double *dgamma_scale) {
  const int64_t spatial = ref_spatial(&data->sample_desc);
  for (int64_t j = 0; j < data->channel_count; ++j) {
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < data->sample_desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&data->sample_desc, n, j, s);
        sum_dy += fabs(dy[i]);
        sum_dy_xhat += fabs(dy[i] * (data->x_sample[i] - mean[j]) * invstd[j]);
      }
    /* An all-zero channel of dy has scale 0; any nonzero result is then wrong, which DBL_MIN still says. */
    dbeta_scale[j] = sum_dy > 0.0 ? sum_dy : 0x1p-1022;
    dgamma_scale[j] = sum_dy_xhat > 0.0 ? sum_dy_xhat : 0x1p-1022;
  }
}

/* scale_shift: bnk_inference_params' scale and shift against float64 (scale = gamma / sqrt(running_var + eps),
 * relative; shift = beta - running_mean scale, relative to the size of its terms), then want = x scale + shift
 * in float64 from the parameters as the device stored them: the pass is validated on its own, and the
 * digits the folded form loses to cancellation (docs/semantics.md) are not charged to it. */
static void check_scale_shift(validation *result, case_data *data, const double *gamma, const double *beta,
                              const double *running_mean, const double *running_var, double *want) {
  const int64_t k = data->channel_count;
  double *scale_want = host_alloc((size_t)k * sizeof(double)), *shift_want = host_alloc((size_t)k * sizeof(double));
  double *scale_size = host_alloc((size_t)k * sizeof(double)), *shift_size = host_alloc((size_t)k * sizeof(double));
  for (int64_t j = 0; j < k; ++j) {
    scale_want[j] = gamma[j] / sqrt(running_var[j] + EPS);
    shift_want[j] = beta[j] - running_mean[j] * scale_want[j];
    scale_size[j] = fabs(scale_want[j]);
    shift_size[j] = fabs(beta[j]) + fabs(running_mean[j] * scale_want[j]);
  }
  double *scale_got = download_channel_array(data, data->scale), *shift_got = download_channel_array(data, data->shift);
  check_channels(result, data, "scale", scale_got, scale_want, scale_size);
  check_channels(result, data, "shift", shift_got, shift_want, shift_size);
  const int64_t spatial = ref_spatial(&data->sample_desc);
  for (int64_t n = 0; n < data->sample_desc.n; ++n)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&data->sample_desc, n, j, s);
        want[i] = data->x_sample[i] * scale_got[data->channels[j]] + shift_got[data->channels[j]];
      }
  double *to_free[] = {scale_want, shift_want, scale_size, shift_size, scale_got, shift_got};
  for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; ++i) free(to_free[i]);
}

/* Storage-type values as float64. */
static double *load_all(bnk_dtype dtype, const void *storage, int64_t count) {
  double *values = host_alloc((size_t)count * sizeof(double));
  for (int64_t i = 0; i < count; ++i) values[i] = storage_load(dtype, storage, i);
  return values;
}

/* linear_bn against float64: y = relu((x W^T - running_mean) gamma / sqrt(running_var + eps) + beta) from the
 * stored x and the original weight, on the validated rows (every output feature of each). Both variants round
 * on the way, the fused one the folded weight and bias to the storage type, the unfused one the GEMM's output:
 * each is allowed the storage type's unit roundoff, plus LINEAR_ACCUMULATION_TOLERANCE, of the size of the
 * terms (scale times the sum of |x w|, plus |scale running_mean| and |beta|), and in 16-bit storage one unit
 * in the last place of the result. */
static validation validate_linear(const bench_env *env, case_data *data, bench_impl impl, call_result *call) {
  validation result = {.passed = 1, .worst_channel_error = -1.0};
  device_poison(data->out, data->tensor_bytes);
  *call = run_impl(env, data, impl, OP_LINEAR_BN, 0);
  if (!call->failed)
    *call = cuda_call_result(cudaDeviceSynchronize(), "the kernels of the validated run (cudaDeviceSynchronize)");
  if (call->failed) {
    cudaGetLastError();
    result.passed = 0;
    return result;
  }
  download(data->out_host, data->out, data->tensor_bytes);
  const linear_data *linear = data->linear;
  const bnk_dtype dtype = data->dtype;
  const int64_t in = linear->in_features, out_features = data->desc.c;
  const double roundoff = 0.5 * storage_ulp(dtype, 1.0);
  double *weight = load_all(dtype, linear->weight_host, out_features * in);
  for (int64_t r = 0; r < linear->row_count; ++r) {
    const int64_t row = linear->rows[r];
    double *x = load_all(dtype, (const char *)linear->x_host + (size_t)(row * in) * storage_element_bytes(dtype), in);
    for (int64_t o = 0; o < out_features; ++o) {
      double sum = 0.0, size = 0.0;
      for (int64_t i = 0; i < in; ++i) {
        const double product = x[i] * weight[o * in + i];
        sum += product;
        size += fabs(product);
      }
      const double mean = data->running_mean_host[o], beta = data->beta_host[o];
      const double scale = data->gamma_host[o] / sqrt((double)data->running_var_host[o] + EPS);
      const double normalized = (sum - mean) * scale + beta;
      const double want = normalized < 0.0 ? 0.0 : normalized;
      double allowed = (roundoff + LINEAR_ACCUMULATION_TOLERANCE) * (scale * size + fabs(scale * mean) + fabs(beta));
      if (dtype != BNK_FLOAT32) allowed += SIXTEEN_BIT_ULPS * storage_ulp(dtype, want);
      const double got = storage_load(dtype, data->out_host, row * out_features + o);
      const double error = fabs(got - want);
      if (isnan(error) || error > result.max_error) result.max_error = isnan(error) ? INFINITY : error;
      if (!(error <= allowed))
        record_failure(&result,
                       "y at row=%" PRId64 " feature=%" PRId64 " is %.9g, reference %.9g (error %.3g > %.3g allowed)",
                       row, o, got, want, error, allowed);
    }
    free(x);
  }
  free(weight);
  return result;
}

/* Runs the implementation once on poisoned outputs and checks what it wrote. *call says whether the call
 * itself failed (a status, or a kernel fault found by the synchronization); the checks run only if not. */
static validation validate_op(const bench_env *env, case_data *data, bench_impl impl, bench_op op,
                              call_result *call) {
  validation result = {.passed = 1, .worst_channel_error = -1.0};
  prepare_op(env, data, op);
  *call = run_impl(env, data, impl, op, 0);
  if (!call->failed)
    *call = cuda_call_result(cudaDeviceSynchronize(), "the kernels of the validated run (cudaDeviceSynchronize)");
  if (call->failed) {
    cudaGetLastError(); /* a launch error is not sticky: clear it so that the next implementation starts clean */
    result.passed = 0;
    return result;
  }

  const int64_t k = data->channel_count;
  double *gamma = sample_floats(data, data->gamma_host), *beta = sample_floats(data, data->beta_host);
  double *running_mean = sample_floats(data, data->running_mean_host);
  double *running_var = sample_floats(data, data->running_var_host);
  double *want = host_alloc((size_t)data->sample_elements * sizeof(double));
  double *mean = host_zeros(k), *var = host_zeros(k), *var_unbiased = host_zeros(k), *invstd = host_zeros(k);
  double *scale = host_zeros(k), *second_scale = host_zeros(k), *dgamma = host_zeros(k), *dbeta = host_zeros(k);

  switch (op) {
    case OP_FWD_TRAIN:
    case OP_FWD_TRAIN_ADD_RELU: {
      ref_channel_stats(&data->sample_desc, data->x_sample, mean, var, var_unbiased);
      ref_normalize(&data->sample_desc, data->x_sample, mean, var, EPS, gamma, beta, want);
      check_forward_output(&result, data, impl, op, want);
      for (int64_t j = 0; j < k; ++j) {
        invstd[j] = 1.0 / sqrt(var[j] + EPS);
        scale[j] = fabs(mean[j]) + sqrt(var[j]);
      }
      check_channel_output(&result, data, "save_mean", data->save_mean, mean, scale);
      check_channel_output(&result, data, "save_invstd", data->save_invstd, invstd, invstd);
      ref_running_update(k, MOMENTUM, mean, var_unbiased, running_mean, running_var);
      for (int64_t j = 0; j < k; ++j) scale[j] = fabs(running_mean[j]) + sqrt(var[j]);
      check_channel_output(&result, data, "running_mean", data->running_mean, running_mean, scale);
      check_channel_output(&result, data, "running_var", data->running_var, running_var, running_var);
      break;
    }
    case OP_FWD_INFER:
    case OP_FWD_INFER_RELU:
    case OP_FWD_INFER_ADD_RELU:
      ref_normalize(&data->sample_desc, data->x_sample, running_mean, running_var, EPS, gamma, beta, want);
      check_forward_output(&result, data, impl, op, want);
      break;
    case OP_SCALE_SHIFT:
      if (impl == IMPL_BNK_SCALE_SHIFT) check_scale_shift(&result, data, gamma, beta, running_mean, running_var, want);
      else ref_normalize(&data->sample_desc, data->x_sample, running_mean, running_var, EPS, gamma, beta, want);
      check_tensor(&result, data, "y", data->out, want, NULL);
      break;
    case OP_BWD:
    case OP_BWD_ADD_RELU: {
      /* From the statistics the device saved, as bnk_backward gets them: this validates the backward on its
       * own, whatever small error the forward's statistics carry. Through the ReLU, the gradient that reaches
       * the BN is g = dy where the forward's stored y > 0 (else 0), which is also dz. */
      double *g = op == OP_BWD_ADD_RELU ? download_sample(data, data->forward_y) : NULL;
      for (int64_t i = 0; g != NULL && i < data->sample_elements; ++i) g[i] = g[i] > 0.0 ? data->dy_sample[i] : 0.0;
      const double *dy = g != NULL ? g : data->dy_sample;
      double *saved_mean = download_channel_array(data, data->save_mean);
      double *saved_invstd = download_channel_array(data, data->save_invstd);
      double *sample_mean = sample_channels(data, saved_mean), *sample_invstd = sample_channels(data, saved_invstd);
      ref_backward(&data->sample_desc, data->x_sample, dy, sample_mean, sample_invstd, gamma, want, dgamma, dbeta);
      check_tensor(&result, data, "dx", data->out, want, NULL);
      if (g != NULL) check_tensor(&result, data, "dz", data->dz, g, NULL);
      gradient_sum_scales(data, dy, sample_mean, sample_invstd, scale, second_scale);
      check_channel_output(&result, data, "dbeta", data->dbeta, dbeta, scale);
      check_channel_output(&result, data, "dgamma", data->dgamma, dgamma, second_scale);
      free(g);
      free(saved_mean);
      free(saved_invstd);
      free(sample_mean);
      free(sample_invstd);
      break;
    }
    case OP_BWD_INFER: {
      /* The frozen-statistics gradients from the shared reference: dgamma and dbeta are ref_backward's sums
       * with the running mean and invstd in place of the batch's, and dx = dy gamma invstd is
       * ref_normalize of dy with mean 0 and the running variance. */
      double *zeros = host_zeros(k);
      for (int64_t j = 0; j < k; ++j) invstd[j] = 1.0 / sqrt(running_var[j] + EPS);
      ref_backward(&data->sample_desc, data->x_sample, data->dy_sample, running_mean, invstd, gamma, NULL, dgamma,
                   dbeta);
      ref_normalize(&data->sample_desc, data->dy_sample, zeros, running_var, EPS, gamma, NULL, want);
      check_tensor(&result, data, "dx", data->out, want, NULL);
      gradient_sum_scales(data, data->dy_sample, running_mean, invstd, scale, second_scale);
      check_channel_output(&result, data, "dbeta", data->dbeta, dbeta, scale);
      check_channel_output(&result, data, "dgamma", data->dgamma, dgamma, second_scale);
      free(zeros);
      break;
    }
    case OP_LINEAR_BN: /* validate_linear's */
    case OP_COUNT: break;
  }

  double *to_free[] = {gamma, beta, running_mean, running_var, want, mean, var, var_unbiased, invstd, scale,
                       second_scale, dgamma, dbeta};
  for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; ++i) free(to_free[i]);
  return result;
}

/* ------------------------------------------------------------------------------------------------------
 * Results
 * ---------------------------------------------------------------------------------------------------- */

/* PASS and FAIL: the implementation ran and was validated; n/a: it could not run this case (no GPU for
 * cuDNN/cuBLAS, a library built without, training with one value per channel, or the library refused the
 * case as not supported); ERROR: a call or its kernels failed. */
typedef enum row_status { ROW_PASS, ROW_FAIL, ROW_NOT_RUN, ROW_ERROR } row_status;

static const char *const status_names[] = {"PASS", "FAIL", "n/a", "ERROR"};

typedef struct bench_row {
  bench_impl impl;
  bench_op op;
  bnk_layout layout;
  bnk_dtype dtype;
  bench_shape shape, run_shape; /* run_shape differs from shape only in emulation */
  int64_t validated_channels;
  row_status status;
  validation check;
  char note[400]; /* why n/a, the failed call, or the first value out of tolerance */
  int timed;
  double median_us, min_us, p10_us, p90_us;
  double bytes;    /* what the op must move for `shape`: the same for every implementation of a plain op, each
                    * variant's own for the epilogue ops */
  double bytes_ratio_to_unfused; /* bytes / the unfused sequence's bytes; NAN for the plain ops */
  double floor_us; /* bytes at the copy bandwidth: measured on the GPU, the H100 reference in emulation */
  double gigabytes_per_second, percent_of_copy;
  double ratio_to_cudnn;   /* the fastest validated cuDNN mode's median / this median; NAN without one */
  double ratio_to_unfused; /* the validated unfused sequence's median / this median; NAN without one */
} bench_row;

/* linear_bn's matrices have no layout. */
static const char *row_layout_name(const bench_row *row) {
  if (row->op == OP_LINEAR_BN) return "-";
  return row->layout == BNK_NCHW ? "nchw" : "nhwc";
}

/* The rows of one op on one case, once every implementation ran. x cuDNN: against the fastest cuDNN mode that
 * passed validation, so that a ratio never flatters bnk by comparing with cuDNN's slower mode. x unfused:
 * against the op's unfused sequence, when it passed validation. */
static void set_ratios(bench_row *rows, int count) {
  double cudnn = NAN, unfused = NAN;
  for (int i = 0; i < count; ++i) {
    if (!rows[i].timed || rows[i].status != ROW_PASS) continue;
    if (is_cudnn(rows[i].impl) && (isnan(cudnn) || rows[i].median_us < cudnn)) cudnn = rows[i].median_us;
    if (rows[i].impl == unfused_impl(rows[i].op)) unfused = rows[i].median_us;
  }
  for (int i = 0; i < count; ++i) {
    rows[i].ratio_to_cudnn = rows[i].timed ? cudnn / rows[i].median_us : NAN;
    rows[i].ratio_to_unfused = rows[i].timed ? unfused / rows[i].median_us : NAN;
  }
}

/* The bytes columns, in both modes: the op's bytes in MB (10^6) and, for the epilogue ops, the ratio to the
 * unfused sequence's bytes ("B/unfused"). */
#define BYTES_HEADER_FORMAT "%10s %9s"

static void print_table_header(const bench_env *env) {
  if (env->emulation) {
    printf("%-18s %-6s %-5s %-18s %-14s %-16s %-5s %9s %9s " BYTES_HEADER_FORMAT " %14s  %s\n", "op", "layout",
           "dtype", "shape", "run shape", "impl", "check", "max err", "chan err", "MB", "B/unfused", "H100 floor us",
           "time (the floor: at 3.0 TB/s, not measured)");
  } else {
    printf("%-18s %-6s %-5s %-18s %-16s %-5s %9s %9s %10s %19s %9s %8s %7s %9s " BYTES_HEADER_FORMAT " %9s %8s\n",
           "op", "layout", "dtype", "shape", "impl", "check", "max err", "chan err", "median us", "p10-p90 us",
           "min us", "GB/s", "% copy", "floor us", "MB", "B/unfused", "x unfused", "x cuDNN");
  }
}

/* An error for the table: "-" when the op has no such output or did not run, "inf" for a NaN output. */
static void format_error(const bench_row *row, double error, char *out, size_t size) {
  if (error < 0.0 || row->status == ROW_NOT_RUN || row->status == ROW_ERROR) snprintf(out, size, "-");
  else snprintf(out, size, "%.2e", error);
}

/* A ratio for the table, "-" when there is none. */
static void format_ratio(double ratio, char *out, size_t size) {
  if (isnan(ratio)) snprintf(out, size, "-");
  else snprintf(out, size, "%.2f", ratio);
}

static void print_row(const bench_env *env, const bench_row *row) {
  char shape[64], run_shape[64], max_error[16], channel_error[16], megabytes[24], bytes_ratio[16];
  format_shape(&row->shape, shape, sizeof shape);
  format_shape(&row->run_shape, run_shape, sizeof run_shape);
  format_error(row, row->check.max_error, max_error, sizeof max_error);
  format_error(row, row->check.worst_channel_error, channel_error, sizeof channel_error);
  snprintf(megabytes, sizeof megabytes, "%.3f", row->bytes / 1e6);
  format_ratio(row->bytes_ratio_to_unfused, bytes_ratio, sizeof bytes_ratio);
  const char *check = status_names[row->status];
  const char *impl = impl_names[row->impl];
  const char *layout = row_layout_name(row);
  if (env->emulation) {
    /* No time in emulation; a row that did not run says why in its place ("n/a: needs a GPU"). */
    printf("%-18s %-6s %-5s %-18s %-14s %-16s %-5s %9s %9s " BYTES_HEADER_FORMAT " %14.3f  %s%s\n", op_names[row->op],
           layout, storage_name(row->dtype), shape, run_shape, impl, check, max_error, channel_error, megabytes,
           bytes_ratio, row->floor_us, row->status == ROW_NOT_RUN ? "n/a: " : "n/a (emulation)",
           row->status == ROW_NOT_RUN ? row->note : "");
  } else if (row->timed) {
    char spread[32], cudnn_ratio[16], unfused_ratio[16];
    snprintf(spread, sizeof spread, "%.1f-%.1f", row->p10_us, row->p90_us);
    format_ratio(row->ratio_to_cudnn, cudnn_ratio, sizeof cudnn_ratio);
    format_ratio(row->ratio_to_unfused, unfused_ratio, sizeof unfused_ratio);
    printf("%-18s %-6s %-5s %-18s %-16s %-5s %9s %9s %10.1f %19s %9.1f %8.1f %6.1f%% %9.3f " BYTES_HEADER_FORMAT
           " %9s %8s\n",
           op_names[row->op], layout, storage_name(row->dtype), shape, impl, check, max_error, channel_error,
           row->median_us, spread, row->min_us, row->gigabytes_per_second, row->percent_of_copy, row->floor_us,
           megabytes, bytes_ratio, unfused_ratio, cudnn_ratio);
  } else {
    printf("%-18s %-6s %-5s %-18s %-16s %-5s %9s %9s %10s %19s %9s %8s %7s %9.3f " BYTES_HEADER_FORMAT " %9s %8s\n",
           op_names[row->op], layout, storage_name(row->dtype), shape, impl, check, max_error, channel_error,
           row->status == ROW_NOT_RUN ? "n/a" : "not timed", "", "", "", "", row->floor_us, megabytes, bytes_ratio,
           "-", "-");
  }
  if (row->status == ROW_NOT_RUN && !env->emulation)
    printf("    n/a %s %s %s %s: %s\n", impl, op_names[row->op], layout, shape, row->note);
  if (row->status == ROW_FAIL || row->status == ROW_ERROR)
    printf("    %s %s %s %s %s: %s%s\n", check, impl, op_names[row->op], layout, shape, row->note,
           !is_bnk(row->impl) && row->status == ROW_FAIL && row->timed ? " (timed anyway: a baseline)" : "");
  fflush(stdout);
}

/* Free text in CSV: quoted, with quotes doubled. */
static void csv_text(FILE *file, const char *text) {
  fputc('"', file);
  for (const char *p = text; *p; ++p) {
    if (*p == '"') fputc('"', file);
    fputc(*p, file);
  }
  fputc('"', file);
}

/* A number, or an empty field when absent (JSON's null). */
static void csv_number(FILE *file, const char *format, double value, int present) {
  if (present && isfinite(value)) fprintf(file, format, value);
  fputc(',', file);
}

static int row_ran(const bench_row *row) { return row->status == ROW_PASS || row->status == ROW_FAIL; }

static const char *floor_basis(const bench_env *env) {
  return env->emulation ? "H100 at 3.0 TB/s (not measured)" : "copy bandwidth measured in this run";
}

static void write_csv(const char *path, const bench_env *env, const bench_row *rows, int count) {
  FILE *file = fopen(path, "w");
  if (file == NULL) die("cannot open %s for writing: %s", path, strerror(errno));
  fprintf(file, "mode,device,implementation,op,layout,dtype,shape,run_shape,validated_channels,check,max_error,"
                "channel_error,median_us,min_us,p10_us,p90_us,bytes,bytes_ratio_to_unfused,gb_per_s,percent_of_copy,"
                "ratio_to_cudnn,ratio_to_unfused,floor_us,floor_bandwidth_gb_per_s,floor_basis,error\n");
  for (int i = 0; i < count; ++i) {
    const bench_row *row = &rows[i];
    char shape[64], run_shape[64];
    format_shape(&row->shape, shape, sizeof shape);
    format_shape(&row->run_shape, run_shape, sizeof run_shape);
    fprintf(file, "%s,", env->emulation ? "emulation" : "gpu");
    csv_text(file, env->device_name);
    fprintf(file, ",%s,%s,%s,%s,%s,%s,%" PRId64 ",%s,", impl_names[row->impl], op_names[row->op],
            row_layout_name(row), storage_name(row->dtype), shape, run_shape, row->validated_channels,
            status_names[row->status]);
    /* A NaN in the output makes the error infinite: written as "inf", which every CSV reader takes. */
    if (row_ran(row)) fprintf(file, isinf(row->check.max_error) ? "inf," : "%.3e,", row->check.max_error);
    else fputc(',', file);
    csv_number(file, "%.3e", row->check.worst_channel_error, row_ran(row) && row->check.worst_channel_error >= 0.0);
    csv_number(file, "%.3f", row->median_us, row->timed);
    csv_number(file, "%.3f", row->min_us, row->timed);
    csv_number(file, "%.3f", row->p10_us, row->timed);
    csv_number(file, "%.3f", row->p90_us, row->timed);
    fprintf(file, "%.0f,", row->bytes);
    csv_number(file, "%.4f", row->bytes_ratio_to_unfused, 1);
    csv_number(file, "%.1f", row->gigabytes_per_second, row->timed);
    csv_number(file, "%.2f", row->percent_of_copy, row->timed);
    csv_number(file, "%.4f", row->ratio_to_cudnn, row->timed);
    csv_number(file, "%.4f", row->ratio_to_unfused, row->timed);
    fprintf(file, "%.3f,%.1f,%s,", row->floor_us, env->copy_bytes_per_second / 1e9, floor_basis(env));
    csv_text(file, row->status == ROW_PASS ? "" : row->note);
    fputc('\n', file);
  }
  if (fclose(file) != 0) die("writing %s failed: %s", path, strerror(errno));
}

static void json_string(FILE *file, const char *text) {
  fputc('"', file);
  for (const char *p = text; *p; ++p) {
    if (*p == '"' || *p == '\\') fprintf(file, "\\%c", *p);
    else if ((unsigned char)*p < 0x20) fprintf(file, "\\u%04x", (unsigned)(unsigned char)*p);
    else fputc(*p, file);
  }
  fputc('"', file);
}

/* JSON has no infinity or NaN: a non-finite value, or one that is absent, is written as null. */
static void json_number(FILE *file, const char *format, double value, int present) {
  if (present && isfinite(value)) fprintf(file, format, value);
  else fprintf(file, "null");
}

static void write_json(const char *path, const bench_env *env, const bench_row *rows, int count) {
  FILE *file = fopen(path, "w");
  if (file == NULL) die("cannot open %s for writing: %s", path, strerror(errno));
  const char *mode = env->emulation ? "emulation" : "gpu";
  fprintf(file, "{\n  \"bnk_version\": \"%s\",\n  \"mode\": \"%s\",\n  \"device\": ", bnk_version_string(), mode);
  json_string(file, env->device_name);
  fprintf(file, ",\n  \"cudnn\": ");
  json_string(file, env->cudnn_unavailable[0] ? env->cudnn_unavailable : env->cudnn_version);
  fprintf(file, ",\n  \"cublas\": ");
  json_string(file, env->cublas_unavailable[0] ? env->cublas_unavailable : env->cublas_version);
  fprintf(file, ",\n  \"copy_bandwidth_gb_per_s\": ");
  json_number(file, "%.1f", env->copy_bytes_per_second / 1e9, !env->emulation);
  fprintf(file, ",\n  \"floor_bandwidth_gb_per_s\": %.1f,\n  \"floor_basis\": \"%s\",\n  \"rows\": [\n",
          env->copy_bytes_per_second / 1e9, floor_basis(env));
  for (int i = 0; i < count; ++i) {
    const bench_row *row = &rows[i];
    char shape[64], run_shape[64];
    format_shape(&row->shape, shape, sizeof shape);
    format_shape(&row->run_shape, run_shape, sizeof run_shape);
    fprintf(file,
            "    {\"mode\": \"%s\", \"implementation\": \"%s\", \"op\": \"%s\", \"layout\": \"%s\", \"dtype\": \"%s\", "
            "\"shape\": \"%s\", \"run_shape\": \"%s\", \"validated_channels\": %" PRId64 ", \"check\": \"%s\", "
            "\"max_error\": ",
            mode, impl_names[row->impl], op_names[row->op], row_layout_name(row), storage_name(row->dtype), shape,
            run_shape, row->validated_channels, status_names[row->status]);
    json_number(file, "%.3e", row->check.max_error, row_ran(row));
    fprintf(file, ", \"channel_error\": ");
    json_number(file, "%.3e", row->check.worst_channel_error, row_ran(row) && row->check.worst_channel_error >= 0.0);
    const char *names[] = {"median_us",       "min_us",         "p10_us",          "p90_us",
                           "gb_per_s",        "percent_of_copy", "ratio_to_cudnn", "ratio_to_unfused"};
    const double values[] = {row->median_us,           row->min_us,          row->p10_us,         row->p90_us,
                             row->gigabytes_per_second, row->percent_of_copy, row->ratio_to_cudnn, row->ratio_to_unfused};
    for (size_t k = 0; k < sizeof values / sizeof values[0]; ++k) {
      fprintf(file, ", \"%s\": ", names[k]);
      json_number(file, "%.4f", values[k], row->timed);
    }
    fprintf(file, ", \"bytes\": %.0f, \"bytes_ratio_to_unfused\": ", row->bytes);
    json_number(file, "%.4f", row->bytes_ratio_to_unfused, 1);
    fprintf(file, ", \"floor_us\": %.3f, \"error\": ", row->floor_us);
    if (row->status == ROW_PASS) fprintf(file, "null");
    else json_string(file, row->note);
    fprintf(file, "}%s\n", i + 1 < count ? "," : "");
  }
  fprintf(file, "  ]\n}\n");
  if (fclose(file) != 0) die("writing %s failed: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------------------------------------
 * Timing, on the GPU build only: the emulation binary has no code that could print a time.
 * ---------------------------------------------------------------------------------------------------- */

#ifndef BNK_BENCH_EMULATION

static int compare_doubles(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Linear interpolation between the closest ranks of sorted values. */
static double percentile(const double *sorted, int count, double fraction) {
  const double position = fraction * (double)(count - 1);
  const int below = (int)floor(position);
  const int above = below + 1 < count ? below + 1 : below;
  return sorted[below] + (sorted[above] - sorted[below]) * (position - (double)below);
}

/* Device-to-device copy of as large a buffer as fits (up to 1 GiB), median of COPY_RUNS, counting the bytes
 * read and written: the practical bandwidth ceiling that the ops' rates are compared with. */
static void measure_copy_bandwidth(bench_env *env) {
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  size_t bytes = COPY_BUFFER_BYTES;
  while (bytes > ((size_t)1 << 24) && 2 * bytes > free_bytes / 10 * 9) bytes /= 2;
  void *source = device_alloc(bytes), *destination = device_alloc(bytes);
  check_cuda(cudaMemsetAsync(source, 0x3c, bytes, env->stream), "cudaMemsetAsync");
  cudaEvent_t starts[COPY_RUNS], stops[COPY_RUNS];
  for (int i = 0; i < COPY_RUNS; ++i) {
    check_cuda(cudaEventCreate(&starts[i]), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stops[i]), "cudaEventCreate");
  }
  for (int i = 0; i < 3; ++i) /* warm-up: the first copies pay for clocks ramping up */
    check_cuda(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, env->stream), "cudaMemcpyAsync");
  for (int i = 0; i < COPY_RUNS; ++i) {
    check_cuda(cudaEventRecord(starts[i], env->stream), "cudaEventRecord");
    check_cuda(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, env->stream), "cudaMemcpyAsync");
    check_cuda(cudaEventRecord(stops[i], env->stream), "cudaEventRecord");
  }
  check_cuda(cudaStreamSynchronize(env->stream), "cudaStreamSynchronize after the copy runs");
  double seconds[COPY_RUNS];
  for (int i = 0; i < COPY_RUNS; ++i) {
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, starts[i], stops[i]), "cudaEventElapsedTime");
    seconds[i] = ms * 1e-3;
    check_cuda(cudaEventDestroy(starts[i]), "cudaEventDestroy");
    check_cuda(cudaEventDestroy(stops[i]), "cudaEventDestroy");
  }
  qsort(seconds, COPY_RUNS, sizeof seconds[0], compare_doubles);
  env->copy_buffer_bytes = bytes;
  env->copy_bytes_per_second = 2.0 * (double)bytes / percentile(seconds, COPY_RUNS, 0.5);
  device_free(source);
  device_free(destination);
}

/* Each timed run starts with L2 holding none of the op's data, as in a network where the layers between
 * two batch norms evict it: a memset of twice the L2 size goes first, outside the events. The runs cycle
 * through the case's copies of x and dy. A call that fails here (it passed validation, so this is rare)
 * makes the row an ERROR without timings. */
static void time_op(const bench_env *env, case_data *data, bench_impl impl, bench_op op, int runs, int warmup,
                    bench_row *row) {
  call_result call = call_ok();
  for (int i = 0; i < warmup && !call.failed; ++i) call = run_impl(env, data, impl, op, i % data->rotation);
  cudaEvent_t *starts = host_alloc((size_t)runs * sizeof(cudaEvent_t));
  cudaEvent_t *stops = host_alloc((size_t)runs * sizeof(cudaEvent_t));
  for (int i = 0; i < runs; ++i) {
    check_cuda(cudaEventCreate(&starts[i]), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stops[i]), "cudaEventCreate");
  }
  /* All runs are queued before any is read back, so that the GPU never waits for the host between them. */
  for (int i = 0; i < runs && !call.failed; ++i) {
    check_cuda(cudaMemsetAsync(env->flush_buffer, i & 0xff, env->flush_bytes, env->stream),
               "cudaMemsetAsync (L2 flush)");
    check_cuda(cudaEventRecord(starts[i], env->stream), "cudaEventRecord");
    call = run_impl(env, data, impl, op, i % data->rotation);
    check_cuda(cudaEventRecord(stops[i], env->stream), "cudaEventRecord");
  }
  if (!call.failed) call = cuda_call_result(cudaStreamSynchronize(env->stream), "the timed runs");
  if (call.failed) {
    cudaGetLastError();
    cudaStreamSynchronize(env->stream);
    for (int i = 0; i < runs; ++i) {
      cudaEventDestroy(starts[i]);
      cudaEventDestroy(stops[i]);
    }
    free(starts);
    free(stops);
    row->status = ROW_ERROR;
    snprintf(row->note, sizeof row->note, "during the timed runs: %s", call.message);
    return;
  }
  double *microseconds = host_alloc((size_t)runs * sizeof(double));
  for (int i = 0; i < runs; ++i) {
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, starts[i], stops[i]), "cudaEventElapsedTime");
    microseconds[i] = ms * 1e3;
    check_cuda(cudaEventDestroy(starts[i]), "cudaEventDestroy");
    check_cuda(cudaEventDestroy(stops[i]), "cudaEventDestroy");
  }
  qsort(microseconds, (size_t)runs, sizeof microseconds[0], compare_doubles);
  row->timed = 1;
  row->median_us = percentile(microseconds, runs, 0.5);
  row->min_us = microseconds[0];
  row->p10_us = percentile(microseconds, runs, 0.1);
  row->p90_us = percentile(microseconds, runs, 0.9);
  row->gigabytes_per_second = row->bytes / (row->median_us * 1e-6) / 1e9;
  row->percent_of_copy = 100.0 * row->bytes / (row->median_us * 1e-6) / env->copy_bytes_per_second;
  free(microseconds);
  free(starts);
  free(stops);
}

/* No device: hand over to the emulation build next to this executable, with the same arguments. */
static void run_emulation_instead(char **argv, const char *reason) {
  printf(PROGRAM ": no CUDA device (%s).\n" PROGRAM ": running " EMULATION_PROGRAM
         " instead: the kernels on the host emulation, validated, not timed.\n\n", reason);
  fflush(stdout);
  char path[4096];
  const ssize_t length = readlink("/proc/self/exe", path, sizeof path - 1);
  if (length < 0) die("cannot locate " EMULATION_PROGRAM ": readlink /proc/self/exe: %s", strerror(errno));
  path[length] = '\0';
  char *slash = strrchr(path, '/');
  const size_t directory_length = slash ? (size_t)(slash - path) + 1 : 0;
  if (directory_length + sizeof EMULATION_PROGRAM > sizeof path)
    die("cannot locate " EMULATION_PROGRAM ": the path of this executable is too long");
  memcpy(path + directory_length, EMULATION_PROGRAM, sizeof EMULATION_PROGRAM);
  argv[0] = path;
  execv(path, argv);
  die("cannot run %s (%s); build it with the target " EMULATION_PROGRAM " (BNK_BUILD_EMULATION=ON)", path,
      strerror(errno));
}

#endif /* BNK_BENCH_EMULATION */

/* ------------------------------------------------------------------------------------------------------
 * Main
 * ---------------------------------------------------------------------------------------------------- */

static void print_banner(const bench_env *env, const bench_options *options) {
  printf("bnk-bench: bnk %s, storage", bnk_version_string());
  for (int dtype = 0; dtype < 3; ++dtype)
    if (options->run_dtype[dtype]) printf(" %s", storage_name((bnk_dtype)dtype));
  printf("\nimplementations: bnk; naive (benchmarks/baselines.cu: sums of x and x^2, then elementwise); ");
  printf("cuDNN legacy BN API, SPATIAL and SPATIAL_PERSISTENT (%s); ",
         env->cudnn_unavailable[0] ? env->cudnn_unavailable : env->cudnn_version);
  printf("cuBLAS sums by GEMV, then the naive elementwise kernels (%s)\n",
         env->cublas_unavailable[0] ? env->cublas_unavailable : env->cublas_version);
  printf("epilogue ops, each against the unfused sequence it replaces: bnk-fused (one pass) vs bnk+separate (bnk's "
         "plain op, then a separate add+ReLU pass); bwd_add_relu from the mask, from y, and bnk+separate (a ReLU "
         "backward pass, then bwd); scale_shift vs bnk-fwd-infer; linear_bn (GPU only): bnk_linear_bn vs "
         "bnk+separate (cuBLAS GEMM, bnk_forward_inference, ReLU pass). 'B/unfused': the row's bytes over the unfused "
         "sequence's%s\n",
         env->emulation ? "" : "; 'x unfused': the unfused sequence's median over this median (> 1: faster)");
  if (env->emulation) {
    printf("*** HOST EMULATION (bnk_emu): the kernels run on the CPU. Nothing is timed; no figure below is a GPU "
           "measurement. ***\n"
           "bnk and the naive baseline run on the emulation and are validated; cuDNN and cuBLAS cannot, and their rows "
           "say 'n/a: needs a GPU'.\n"
           "Shapes are shrunk to N <= %d (%d without spatial dims), C <= %d and each spatial extent <= %d, keeping "
           "layout and rank ('run shape').\n"
           "Every channel of the run shape is validated against the float64 reference.\n"
           "'H100 floor' is the time an H100 would need to move the bytes of the ORIGINAL shape at 3.0 TB/s: "
           "a bound to read GPU results against, not measured.\n"
           "(--runs and --warmup do not apply.)\n\n",
           EMULATION_MAX_N, EMULATION_MAX_N_WITHOUT_SPATIAL, EMULATION_MAX_C, EMULATION_MAX_SPATIAL);
  } else {
    printf("device: %s (L2 %.0f MiB)\n", env->device_name, env->l2_bytes / 1048576.0);
    printf("copy bandwidth: %.1f GB/s (cudaMemcpyAsync device to device of %.0f MiB, median of %d, read + write)\n",
           env->copy_bytes_per_second / 1e9, env->copy_buffer_bytes / 1048576.0, COPY_RUNS);
    printf("each case: every implementation validated on up to %d channels against the float64 reference, then %d "
           "warm-up and %d timed runs, each after an L2 flush (%.0f MiB memset), cycling through up to %d copies of "
           "x and dy (within %.0f GiB); times are per run, from CUDA events around the call.\n"
           "'floor us' is the op's bytes at the measured copy bandwidth; '%% copy' is the op's rate against it; "
           "'x cuDNN' is the fastest validated cuDNN mode's median over this median (> 1: faster than cuDNN).\n\n",
           VALIDATED_CHANNELS, options->warmup, options->runs, env->flush_bytes / 1048576.0, MAX_ROTATION,
           ROTATION_BUDGET_BYTES / 1073741824.0);
  }
}

/* cuDNN and cuBLAS: a handle each on the bench's stream, or the reason they cannot run in this binary. */
static void setup_alternatives(bench_env *env) {
#ifdef BNK_BENCH_EMULATION
  snprintf(env->cudnn_unavailable, sizeof env->cudnn_unavailable, "needs a GPU");
  snprintf(env->cublas_unavailable, sizeof env->cublas_unavailable, "needs a GPU");
#else
#ifdef BNK_BENCH_WITH_CUDNN
  cudnn_bench_version(env->cudnn_version, sizeof env->cudnn_version);
  env->cudnn = cudnn_bench_create(env->stream, env->cudnn_unavailable, sizeof env->cudnn_unavailable);
#else
  snprintf(env->cudnn_unavailable, sizeof env->cudnn_unavailable,
           "this bnk-bench was built without cuDNN (cudnn.h or libcudnn not found at configure time)");
#endif
#ifdef BNK_BENCH_WITH_CUBLAS
  cublas_bench_version(env->cublas_version, sizeof env->cublas_version);
  env->cublas = cublas_bench_create(env->stream, env->cublas_unavailable, sizeof env->cublas_unavailable);
#else
  snprintf(env->cublas_unavailable, sizeof env->cublas_unavailable,
           "this bnk-bench was built without cuBLAS (CUDA::cublas not found at configure time)");
#endif
#endif
}

static void setup_environment(bench_env *env, char **argv) {
  memset(env, 0, sizeof *env);
#ifdef BNK_BENCH_EMULATION
  (void)argv;
  env->emulation = 1;
  snprintf(env->device_name, sizeof env->device_name, "host emulation");
  env->copy_bytes_per_second = H100_COPY_BYTES_PER_SECOND;
  check_bnk(bnk_context_create(&env->ctx, -1), "bnk_context_create");
#else
  int device_count = 0;
  const cudaError_t error = cudaGetDeviceCount(&device_count);
  if (error != cudaSuccess || device_count == 0) {
    cudaGetLastError(); /* the failed query is not sticky; leave the runtime clean */
    run_emulation_instead(argv, error != cudaSuccess ? cudaGetErrorString(error) : "the device count is 0");
  }
  check_bnk(bnk_context_create(&env->ctx, -1), "bnk_context_create");
  int device = 0;
  check_bnk(bnk_context_get_device(env->ctx, &device), "bnk_context_get_device");
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  struct cudaDeviceProp properties;
  check_cuda(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  snprintf(env->device_name, sizeof env->device_name, "%s", properties.name);
  /* A blocking stream: the uploads and poisoning (cudaMemcpy, cudaMemset on the legacy default stream) are
   * then ordered before the ops queued on it, without an explicit synchronization after each. */
  check_cuda(cudaStreamCreate(&env->stream), "cudaStreamCreate");
  check_bnk(bnk_context_set_stream(env->ctx, (bnk_stream)env->stream), "bnk_context_set_stream");
  check_cuda(cudaDeviceGetAttribute(&env->l2_bytes, cudaDevAttrL2CacheSize, device),
             "cudaDeviceGetAttribute(cudaDevAttrL2CacheSize)");
  env->flush_bytes = 2 * (size_t)(env->l2_bytes > 0 ? env->l2_bytes : 1 << 20);
  env->flush_buffer = device_alloc(env->flush_bytes);
  measure_copy_bandwidth(env);
#endif
  setup_alternatives(env);
}

static void teardown_environment(bench_env *env) {
#ifdef BNK_BENCH_WITH_CUDNN
  cudnn_bench_destroy(env->cudnn);
#endif
#ifdef BNK_BENCH_WITH_CUBLAS
  cublas_bench_destroy(env->cublas);
#endif
  device_free(env->flush_buffer);
  bnk_context_destroy(env->ctx);
#ifndef BNK_BENCH_EMULATION
  check_cuda(cudaStreamDestroy(env->stream), "cudaStreamDestroy");
#endif
}

/* Every implementation that has the op, on one case: validated, then timed (GPU), each in a row. */
static int run_op_rows(const bench_env *env, const bench_options *options, case_data *data, bench_op op,
                       const bench_shape *shape, const bench_shape *run_shape, bench_row *rows) {
  int count = 0;
  for (int impl_index = 0; impl_index < IMPL_COUNT; ++impl_index) {
    const bench_impl impl = (bench_impl)impl_index;
    if (!options->run_impl[impl] || !impl_has_op(impl, op)) continue;
    bench_row *row = &rows[count++];
    memset(row, 0, sizeof *row);
    row->impl = impl;
    row->op = op;
    row->layout = data->desc.layout;
    row->dtype = data->dtype;
    row->shape = *shape;
    row->run_shape = *run_shape;
    row->validated_channels = op == OP_LINEAR_BN ? (data->linear != NULL ? data->linear->row_count : 0)
                                                 : data->channel_count;
    row->bytes = op_bytes(op, impl, shape, data->dtype);
    row->bytes_ratio_to_unfused = bytes_ratio_to_unfused(op, impl, shape, data->dtype);
    row->floor_us = row->bytes / env->copy_bytes_per_second * 1e6;
    row->check.worst_channel_error = -1.0;
    row->ratio_to_cudnn = NAN;
    row->ratio_to_unfused = NAN;
    const char *reason = unavailable_reason(env, data, impl, op, run_shape);
    if (reason != NULL) {
      row->status = ROW_NOT_RUN;
      snprintf(row->note, sizeof row->note, "%s", reason);
      continue;
    }
    call_result call;
    row->check = op == OP_LINEAR_BN ? validate_linear(env, data, impl, &call) : validate_op(env, data, impl, op, &call);
    if (call.failed) {
      /* A library that declines a case has not failed: cuDNN's NOT_SUPPORTED is a fact about cuDNN. */
      row->status = call.not_supported && !is_bnk(impl) ? ROW_NOT_RUN : ROW_ERROR;
      snprintf(row->note, sizeof row->note, "%s", call.message);
      continue;
    }
    row->status = row->check.passed ? ROW_PASS : ROW_FAIL;
    if (!row->check.passed) snprintf(row->note, sizeof row->note, "%s", row->check.failure);
#ifndef BNK_BENCH_EMULATION
    /* bnk is timed only when right; an alternative is timed either way, its row saying FAIL with the error. */
    if (row->check.passed || !is_bnk(impl)) time_op(env, data, impl, op, options->runs, options->warmup, row);
#endif
  }
  set_ratios(rows, count);
  for (int i = 0; i < count; ++i) print_row(env, &rows[i]);
  return count;
}

int main(int argc, char **argv) {
  const bench_options options = parse_options(argc, argv);
  bench_env env;
  setup_environment(&env, argv);
  print_banner(&env, &options);
  print_table_header(&env);

  bench_rng rng = {options.seed};
  const size_t capacity =
      (size_t)3 * ((size_t)options.shape_count * 2 * OP_COUNT + (size_t)options.linear_count) * IMPL_COUNT;
  bench_row *rows = host_alloc(capacity * sizeof(bench_row));
  int row_count = 0;
  int any_tensor_op = 0; /* an op on the --shape / --preset tensors, i.e. other than linear_bn */
  for (int op = 0; op < OP_COUNT; ++op) any_tensor_op |= options.run_op[op] && op != OP_LINEAR_BN;
  for (int dtype = 0; dtype < 3; ++dtype) {
    if (!options.run_dtype[dtype]) continue;
    for (int shape_index = 0; shape_index < options.shape_count && any_tensor_op; ++shape_index) {
      const bench_shape *shape = &options.shapes[shape_index];
      const bench_shape run_shape = env.emulation ? emulation_shape(shape) : *shape;
      for (int layout = BNK_NCHW; layout <= BNK_NHWC; ++layout) {
        if (!options.run_layout[layout]) continue;
        /* Without spatial dims both layouts are the same (N, C) matrix: running it twice measures nothing new. */
        if (layout == BNK_NHWC && shape->spatial_dims == 0 && options.run_layout[BNK_NCHW]) continue;
        case_data data = make_case(&env, &options, &run_shape, (bnk_layout)layout, (bnk_dtype)dtype, &rng);
        data.cublas_setup = call_ok();
#ifdef BNK_BENCH_WITH_CUBLAS
        if (env.cublas != NULL && options.run_impl[IMPL_CUBLAS])
          data.cublas_setup = cublas_bench_prepare(env.cublas, &data.desc);
#endif
        for (int op = 0; op < OP_COUNT; ++op)
          if (options.run_op[op] && op != OP_LINEAR_BN)
            row_count += run_op_rows(&env, &options, &data, (bench_op)op, shape, &run_shape, &rows[row_count]);
        free_case(&data);
      }
    }
    /* linear_bn has shapes of its own (--linear): a Linear layer, not a BN tensor. */
    for (int i = 0; i < options.linear_count && options.run_op[OP_LINEAR_BN]; ++i) {
      const bench_shape *shape = &options.linear_shapes[i];
      case_data data = make_linear_case(&env, shape, (bnk_dtype)dtype, &rng);
      row_count += run_op_rows(&env, &options, &data, OP_LINEAR_BN, shape, shape, &rows[row_count]);
      free_case(&data);
    }
  }

  if (options.csv_path != NULL) write_csv(options.csv_path, &env, rows, row_count);
  if (options.json_path != NULL) write_json(options.json_path, &env, rows, row_count);
  teardown_environment(&env);

  /* Only bnk decides the exit status: a baseline that fails validation is a finding about the baseline. */
  int counts[IMPL_COUNT][4];
  memset(counts, 0, sizeof counts);
  for (int i = 0; i < row_count; ++i) ++counts[rows[i].impl][rows[i].status];
  free(rows);
  printf("\n%-17s %6s %6s %6s %6s\n", "implementation", "PASS", "FAIL", "n/a", "ERROR");
  int bnk_failures = 0;
  for (int impl = 0; impl < IMPL_COUNT; ++impl) {
    const int *mine = counts[impl];
    if (mine[ROW_PASS] + mine[ROW_FAIL] + mine[ROW_NOT_RUN] + mine[ROW_ERROR] == 0) continue; /* no op of its ran */
    printf("%-17s %6d %6d %6d %6d\n", impl_names[impl], mine[ROW_PASS], mine[ROW_FAIL], mine[ROW_NOT_RUN],
           mine[ROW_ERROR]);
    if (is_bnk((bench_impl)impl)) bnk_failures += mine[ROW_FAIL] + mine[ROW_ERROR];
  }
  if (bnk_failures > 0) {
    fprintf(stderr, PROGRAM ": %d bnk case(s) failed (and were not timed)\n", bnk_failures);
    return EXIT_FAILURE;
  }
  printf("\nevery bnk case that ran passed validation%s; failures of the alternatives, if any, are reported above "
         "and do not change the exit status\n",
         env.emulation ? " (host emulation: nothing was timed)" : "");
  return EXIT_SUCCESS;
}
