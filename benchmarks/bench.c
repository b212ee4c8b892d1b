/* bnk-bench: runs each batch-normalization op once, validates the result against the float64 reference of
 * tests/reference.c, and only then times it on the GPU, side by side with the alternatives on the same
 * tensors: cuDNN's legacy batch-norm API (SPATIAL and SPATIAL_PERSISTENT, and the *Ex calls), a cuBLAS
 * baseline for the reductions, and a naive two-kernel baseline (benchmarks/alternatives.h). A bnk case that
 * fails validation is reported, not timed, and fails the run, because the speed of a wrong kernel means
 * nothing; an alternative that fails validation is reported with its error and still timed, since it is only
 * there to be compared with.
 *
 * bnk's fused epilogues (BN + ReLU, BN + add + ReLU, their backward from y or from the ReLU mask), its folded
 * inference form (precomputed scale and shift) and Linear + BatchNorm1d + ReLU in one cuBLASLt matmul are
 * measured the same way against the unfused sequence each replaces: bnk's plain op, then a separate elementwise
 * pass (baselines.cu), or a GEMM by cuBLAS, bnk's inference forward and a ReLU pass. Each row then also gives
 * its bytes against the unfused sequence's, and on a GPU its speed against it.
 *
 * The same sources (benchmarks/bench.h lists them) build twice. bnk-bench links bnk (nvcc, the real CUDA
 * runtime); when it finds no device it replaces itself with bnk-bench-emu from its own directory.
 * bnk-bench-emu (BNK_BENCH_EMULATION) links bnk_emu, the kernels on a host emulation of CUDA: it validates
 * small versions of the shapes and contains no timing code at all (timing.c is not in it), so that nothing it
 * prints can be mistaken for a GPU measurement. docs/benchmarks.md describes the method and the byte counts. */
#define _POSIX_C_SOURCE 200809L /* readlink and execv, for the fallback to the emulation build */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "benchmarks/bench.h"
#include "tests/storage.h"

#ifndef BNK_BENCH_EMULATION
/* No device: hand over to the emulation build next to this executable, with the same arguments. */
static void run_emulation_instead(char **argv, const char *reason) {
  printf(PROGRAM ": no CUDA device (%s).\n" PROGRAM ": running " EMULATION_PROGRAM
                 " instead: the kernels on the host emulation, validated, not timed.\n\n",
         reason);
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

#endif

static void print_banner(const bench_env *env, const bench_options *options) {
  printf("bnk-bench: bnk %s, storage", bnk_version_string());
  for (int dtype = 0; dtype < 3; ++dtype)
    if (options->run_dtype[dtype]) printf(" %s", storage_name((bnk_dtype)dtype));
  printf("\nimplementations: bnk; naive (benchmarks/baselines.cu: sums of x and x^2, then elementwise); ");
  printf("cuDNN legacy BN API, SPATIAL and SPATIAL_PERSISTENT, and its *Ex calls in SPATIAL_PERSISTENT on NHWC "
         "(%s); ",
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
    row->validated_channels =
        op == OP_LINEAR_BN ? (data->linear != NULL ? data->linear->row_count : 0) : data->channel_count;
    row->bytes = op_bytes(op, impl, shape, data->dtype);
    row->run_bytes = op_bytes(op, impl, run_shape, data->dtype);
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
      /* A library that declines a case has not failed: cuDNN's NOT_SUPPORTED is a fact about cuDNN, and bnk's
       * for the forced persistent path says that the shape does not fit the co-resident grid. */
      row->status = call.not_supported && (!is_bnk(impl) || impl == IMPL_BNK_PERSISTENT) ? ROW_NOT_RUN : ROW_ERROR;
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

  rng_state rng = {options.seed};
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

  const int bnk_failures = print_summary(rows, row_count);
  free(rows);
  if (bnk_failures > 0) {
    fprintf(stderr, PROGRAM ": %d bnk case(s) failed (and were not timed)\n", bnk_failures);
    return EXIT_FAILURE;
  }
  printf("\nevery bnk case that ran passed validation%s; failures of the alternatives, if any, are reported above "
         "and do not change the exit status\n",
         env.emulation ? " (host emulation: nothing was timed)" : "");
  return EXIT_SUCCESS;
}
