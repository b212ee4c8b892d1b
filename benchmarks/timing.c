/* Timing, in the GPU build only (bnk-bench): bnk-bench-emu is built without this file, so that it has no code
 * that could print a time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_profiler_api.h>
#include <nvtx3/nvToolsExt.h>

#include "benchmarks/bench.h"
#include "tests/storage.h"

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
void measure_copy_bandwidth(bench_env *env) {
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
void time_op(const bench_env *env, case_data *data, bench_impl impl, bench_op op, int runs, int warmup,
             bench_row *row) {
  call_result call = call_ok();
  for (int i = 0; i < warmup && !call.failed; ++i) call = run_impl(env, data, impl, op, i % data->rotation);
  cudaEvent_t *starts = host_alloc((size_t)runs * sizeof(cudaEvent_t));
  cudaEvent_t *stops = host_alloc((size_t)runs * sizeof(cudaEvent_t));
  for (int i = 0; i < runs; ++i) {
    check_cuda(cudaEventCreate(&starts[i]), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stops[i]), "cudaEventCreate");
  }
  /* For Nsight Compute (benchmarks/gpu-run): the profiler API brackets the timed runs, which are what ncu
   * profiles with --profile-from-start off, and an NVTX range named after the row names their kernels
   * (--print-nvtx-rename), so that their byte counts can be matched with the row's documented bytes
   * (benchmarks/ncu_bytes.py). Both are no-ops without a tool. */
  char shape[64], range[160];
  format_shape(&row->shape, shape, sizeof shape);
  snprintf(range, sizeof range, "bnk-bench %s %s %s %s %s", impl_names[impl], op_names[op],
           data->desc.layout == BNK_NHWC ? "nhwc" : "nchw", storage_name(data->dtype), shape);
  check_cuda(cudaProfilerStart(), "cudaProfilerStart");
  nvtxRangePushA(range);
  /* All runs are queued before any is read back, so that the GPU never waits for the host between them. */
  for (int i = 0; i < runs && !call.failed; ++i) {
    check_cuda(cudaMemsetAsync(env->flush_buffer, i & 0xff, env->flush_bytes, env->stream),
               "cudaMemsetAsync (L2 flush)");
    check_cuda(cudaEventRecord(starts[i], env->stream), "cudaEventRecord");
    call = run_impl(env, data, impl, op, i % data->rotation);
    check_cuda(cudaEventRecord(stops[i], env->stream), "cudaEventRecord");
  }
  if (!call.failed) call = cuda_call_result(cudaStreamSynchronize(env->stream), "the timed runs");
  nvtxRangePop();
  check_cuda(cudaProfilerStop(), "cudaProfilerStop");
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
