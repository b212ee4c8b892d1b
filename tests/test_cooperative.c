/* A cooperative grid with grid barriers (tests/cooperative_kernels.cu), the same source on nvcc and on the
 * emulation: every block's grid total against float64, bitwise equal across schedules and launch calls,
 * and a grid one block past the co-resident limit refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "tests/harness.h"

#ifdef BNK_TEST_EMULATION
#include <bnk_emu/control.h>
#endif

cudaError_t test_cooperative_grid_size(int *blocks);
cudaError_t test_cooperative_total(const float *x, int64_t count, int blocks, int use_launch_ex, float *partial,
                                   float *out);

Test(cooperative, grid_total_with_grid_barriers) {
  bnk_context *ctx = test_context(); /* skips without a device */
#ifdef BNK_TEST_EMULATION
  bnk_emu_set_sm_count(2); /* a full co-resident grid of a few blocks */
#endif
  int blocks = 0;
  cr_assert_eq(test_cooperative_grid_size(&blocks), cudaSuccess);
  cr_assert_gt(blocks, 0);
  test_rng rng = rng_fresh();
  const int64_t count = 10007;
  double *values = malloc((size_t)count * sizeof(double));
  double want = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    values[i] = rng_uniform(&rng, -1.0, 1.0);
    want += (double)(float)values[i];
  }
  float *x = dev_floats(values, count);
  float *partial = dev_alloc((size_t)blocks * sizeof(float)), *out = dev_alloc((size_t)blocks * sizeof(float));
  double *got = malloc((size_t)blocks * sizeof(double)), *wants = malloc((size_t)blocks * sizeof(double));
  float *first = malloc((size_t)blocks * sizeof(float)), *now = malloc((size_t)blocks * sizeof(float));
  for (int b = 0; b < blocks; ++b) wants[b] = want;
  for (int use_launch_ex = 0; use_launch_ex < 2; ++use_launch_ex)
    for (int schedule = 0; schedule < schedule_count(); ++schedule) {
      schedule_use(schedule);
      dev_poison(out, (size_t)blocks * sizeof(float));
      const cudaError_t e = test_cooperative_total(x, count, blocks, use_launch_ex, partial, out);
      cr_assert_eq(e, cudaSuccess, "%s: %s", use_launch_ex ? "cudaLaunchKernelEx" : "cudaLaunchCooperativeKernel",
                   cudaGetErrorName(e));
      cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
      dev_read_floats(out, got, blocks);
      char what[96];
      snprintf(what, sizeof what, "grid total of %d blocks [%s]", blocks, schedule_name(schedule));
      expect_close(what, got, wants, blocks, 1e-4, 1e-5);
      dev_download(now, out, (size_t)blocks * sizeof(float));
      if (use_launch_ex == 0 && schedule == 0) memcpy(first, now, (size_t)blocks * sizeof(float));
      else expect_bitwise_equal(what, first, now, (size_t)blocks * sizeof(float));
    }
  cr_assert_eq(test_cooperative_total(x, count, blocks + 1, 0, partial, out), cudaErrorCooperativeLaunchTooLarge);
  cr_assert_eq(cudaGetLastError(), cudaErrorCooperativeLaunchTooLarge);
  free(values);
  free(got);
  free(wants);
  free(first);
  free(now);
  dev_free(x);
  dev_free(partial);
  dev_free(out);
  bnk_context_destroy(ctx);
}
