/* What the files of bnk-bench share: the constants, the types of a run (options, environment, case, row)
 * and, per file, the functions the others call. Each file is one concern:
 *   bench.c           main: the environment, the loop over cases, the fallback to the emulation build
 *   options.c         the command line and the shape presets
 *   ops.c             the ops and implementations, and which implementation has which op
 *   cases.c           shapes and each case's data (host and device), the validated channels
 *   bytes.c           the bytes each op must move (the model that the rows' rates and floors use)
 *   implementations.c the call each implementation queues, the same for validation and timing
 *   validation.c      the checks against the float64 reference of tests/reference.c
 *   timing.c          copy bandwidth and the timed runs (GPU build only: bnk-bench-emu has no timing code)
 *   report.c          the table, CSV and JSON, and the summary
 *   vendor_cudnn.c, vendor_cublas.c, baselines.cu: the alternatives (benchmarks/alternatives.h, baselines.h)
 * The PRNG (tests/random.h) and the spelling of extents (tests/shape_text.h) are the tests' own. */
#ifndef BNK_BENCHMARKS_BENCH_H
#define BNK_BENCHMARKS_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#include "bnk.h"
#include "benchmarks/alternatives.h"
#include "tests/random.h"

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

/* What runs each op. The rows of an op are printed in this order: the plain ops' bnk and alternatives, then
 * the variants of bnk's epilogue ops, the unfused sequence last. */
typedef enum bench_impl {
  IMPL_BNK,
  IMPL_BNK_PERSISTENT, /* bnk with the context's training path forced persistent (docs/performance.md) */
  IMPL_BNK_TWO_PASS,   /* bnk with the context's training path forced two-pass */
  IMPL_CUDNN,
  IMPL_CUDNN_PERSISTENT,
  IMPL_CUDNN_PERSISTENT_EX, /* the *Ex calls in SPATIAL_PERSISTENT, NHWC only (PyTorch's channels-last training) */
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

/* The run's environment: the device (or the emulation), the stream, the copy bandwidth and the L2 flush. */
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
  void *x_host, *weight_host;        /* storage type: x (batch x in), weight (out x in), row-major */
  void *x, *weight;                  /* device: the unfused GEMM's */
  void *folded_weight, *folded_bias; /* device: bnk_fold_linear's, storage type both, for bnk_linear_bn */
  void *workspace;                   /* bnk_linear_bn's */
  size_t workspace_bytes;
  char fused_unavailable[200]; /* why bnk_linear_bn cannot run in this build, or "" */
  int64_t *rows;               /* the validated rows of y */
  int64_t row_count;
} linear_data;

/* One (shape, layout, dtype) case: its data on the host and the device, shared by every op and implementation. */
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

/* The outcome of one validated run. */
typedef struct validation {
  int passed;
  double max_error;           /* largest |y - reference| or |dx - reference| over the validated elements */
  double worst_channel_error; /* largest error / scale over the per-channel outputs; -1 if the op has none */
  char failure[400];          /* the first quantity out of tolerance, with both values */
  /* Emulation only (the traffic meter, docs/emulation.md): what the validated call's kernels moved, as distinct
   * 32-byte sectors per launch, and its launches; -1 on the GPU. */
  double metered_bytes;
  long long launches;
} validation;

/* PASS and FAIL: the implementation ran and was validated; n/a: it could not run this case (no GPU for
 * cuDNN/cuBLAS, a library built without, training with one value per channel, or the library refused the
 * case as not supported); ERROR: a call or its kernels failed. */
typedef enum row_status { ROW_PASS, ROW_FAIL, ROW_NOT_RUN, ROW_ERROR } row_status;

/* One row of the table, the CSV and the JSON. A new measurement of a row (the emulation's traffic per launch, say)
 * is a field here, filled where the row is made (bench.c, run_op_rows) and printed by report.c. */
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
  double bytes; /* what the op must move for `shape`: the same for every implementation of a plain op, each
                 * variant's own for the epilogue ops */
  double bytes_ratio_to_unfused; /* bytes / the unfused sequence's bytes; NAN for the plain ops */
  double run_bytes; /* what the op must move for `run_shape` (the traffic meter's yardstick in emulation) */
  double floor_us;  /* bytes at the copy bandwidth: measured on the GPU, the H100 reference in emulation */
  double gigabytes_per_second, percent_of_copy;
  double ratio_to_cudnn;   /* the fastest validated cuDNN mode's median / this median; NAN without one */
  double ratio_to_unfused; /* the validated unfused sequence's median / this median; NAN without one */
} bench_row;

/* ---- buffers.c: every failure of a bnk or CUDA call ends the program with the call and the reason ---- */
void die(const char *format, ...);
void check_bnk(bnk_status status, const char *call);
void check_cuda(cudaError_t error, const char *call);
void *host_alloc(size_t bytes);
double *host_zeros(int64_t count);
void *device_alloc(size_t bytes);
void device_free(void *pointer);
void device_poison(void *pointer, size_t bytes);
void upload(void *device, const void *host, size_t bytes);
void download(void *host, const void *device, size_t bytes);
void download_floats(double *host, const float *device, int64_t count);

/* ---- options.c ---- */
bench_options parse_options(int argc, char **argv);

/* ---- ops.c ---- */
extern const char *const op_names[OP_COUNT];
extern const char *const impl_names[IMPL_COUNT];
int has_relu(bench_op op);
int adds_residual(bench_op op);
int trains(bench_op op);
int impl_has_op(bench_impl impl, bench_op op);
bench_impl unfused_impl(bench_op op);
int is_cudnn(bench_impl impl);
int is_bnk(bench_impl impl);

/* ---- cases.c ---- */
void format_shape(const bench_shape *shape, char *out, size_t size);
int64_t shape_elements(const bench_shape *shape);
bench_shape emulation_shape(const bench_shape *shape);
int64_t values_per_channel(const bench_shape *shape);
void gather_sample(const case_data *data, const void *storage, double *sample);
double *sample_channels(const case_data *data, const double *full);
double *sample_floats(const case_data *data, const float *full);
case_data make_case(const bench_env *env, const bench_options *options, const bench_shape *shape, bnk_layout layout,
                    bnk_dtype dtype, rng_state *rng);
void free_case(case_data *data);
case_data make_linear_case(const bench_env *env, const bench_shape *shape, bnk_dtype dtype, rng_state *rng);

/* ---- bytes.c ---- */
double op_bytes(bench_op op, bench_impl impl, const bench_shape *shape, bnk_dtype dtype);
double bytes_ratio_to_unfused(bench_op op, bench_impl impl, const bench_shape *shape, bnk_dtype dtype);

/* ---- implementations.c ---- */
call_result call_ok(void);
call_result cuda_call_result(cudaError_t error, const char *call);
call_result run_impl(const bench_env *env, case_data *data, bench_impl impl, bench_op op, int slot);
const char *unavailable_reason(const bench_env *env, const case_data *data, bench_impl impl, bench_op op,
                               const bench_shape *run_shape);
void prepare_op(const bench_env *env, case_data *data, bench_op op);
/* An error the implementation reports only when asked after its work completed (cuDNN's persistent mode:
 * cudnnQueryRuntimeError); blocking, so validation asks, the timed runs never do. */
call_result runtime_error(const bench_env *env, bench_impl impl);

/* ---- validation.c ---- */
validation validate_linear(const bench_env *env, case_data *data, bench_impl impl, call_result *call);
validation validate_op(const bench_env *env, case_data *data, bench_impl impl, bench_op op, call_result *call);

/* ---- report.c ---- */
void set_ratios(bench_row *rows, int count);
void print_table_header(const bench_env *env);
void print_row(const bench_env *env, const bench_row *row);
void write_csv(const char *path, const bench_env *env, const bench_row *rows, int count);
void write_json(const char *path, const bench_env *env, const bench_row *rows, int count);
int print_summary(const bench_row *rows, int count);

/* ---- timing.c (GPU build only) ---- */
#ifndef BNK_BENCH_EMULATION
void measure_copy_bandwidth(bench_env *env);
void time_op(const bench_env *env, case_data *data, bench_impl impl, bench_op op, int runs, int warmup, bench_row *row);
#endif

#endif
