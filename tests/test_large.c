/* Tensors past 2^31 elements, where 32-bit indexing would wrap: one channel of 2^31 + 2^20 + 3 values, and
 * a channels-last tensor of the same size, in fp16 (4.3 GB each for x and y). The data is periodic with
 * exactly known statistics (no float64 copy of the tensor is needed), and a wrong index anywhere shows as a
 * value from the wrong phase of the period. One schedule: what is tested here is addressing, not
 * synchronization, which the other suites cover under three schedules. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"

#define PERIOD 7
#define ELEMENTS ((INT64_C(1) << 31) + (INT64_C(1) << 20) + 3)

/* x[i] = (i mod 7) - 3, exact in fp16. For a channel that sees positions first, first + step, ...: */
static double value_at(int64_t i) { return (double)(i % PERIOD) - 3.0; }

static void channel_moments(int64_t first, int64_t step, int64_t count, double *mean, double *var) {
  /* Positions first + k step cycle through PERIOD phases (step < PERIOD here): count each phase. */
  int64_t hits[PERIOD] = {0};
  const int64_t full = count / PERIOD, rest = count % PERIOD;
  for (int64_t k = 0; k < PERIOD; ++k) hits[(first + k * step) % PERIOD] += full + (k < rest ? 1 : 0);
  double sum = 0.0, squares = 0.0;
  for (int p = 0; p < PERIOD; ++p) sum += (double)hits[p] * ((double)p - 3.0);
  *mean = sum / (double)count;
  for (int p = 0; p < PERIOD; ++p) squares += (double)hits[p] * ((double)p - 3.0 - *mean) * ((double)p - 3.0 - *mean);
  *var = squares / (double)count;
}

static void run_large(bnk_layout layout, int64_t c) {
  bnk_context *ctx = test_context();
  schedule_use(0);
  const int64_t spatial[1] = {ELEMENTS / c};
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT16, layout, 1, c, 1, spatial), BNK_SUCCESS);
  const int64_t elements = bnk_tensor_desc_elements(&desc);
  cr_assert_gt(elements, INT64_C(1) << 31);
  const size_t bytes = (size_t)elements * 2;
  uint16_t *host = malloc(bytes);
  cr_assert_not_null(host, "the test needs %zu bytes of host memory", bytes);
  static const double phase_values[PERIOD] = {-3, -2, -1, 0, 1, 2, 3};
  uint16_t phase_bits[PERIOD];
  to_storage(BNK_FLOAT16, phase_values, phase_bits, PERIOD);
  for (int64_t i = 0; i < elements; ++i) host[i] = phase_bits[i % PERIOD];
  void *x = dev_alloc(bytes);
  dev_upload(x, host, bytes);
  free(host);
  void *y = dev_alloc(bytes);
  float *save_mean = dev_alloc((size_t)c * 4), *save_invstd = dev_alloc((size_t)c * 4);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &desc, &ws_bytes), BNK_SUCCESS);
  void *ws = dev_alloc(ws_bytes);
  cr_assert_eq(bnk_forward_training(ctx, &desc, x, y, NULL, NULL, NULL, NULL, NULL, 0.1, 1e-5, save_mean, save_invstd,
                                    ws, ws_bytes),
               BNK_SUCCESS, "%s", bnk_last_error_message());

  double got_mean[2], got_invstd[2];
  dev_read_floats(save_mean, got_mean, c);
  dev_read_floats(save_invstd, got_invstd, c);
  double mean[2], invstd[2];
  for (int64_t k = 0; k < c; ++k) {
    double var;
    /* Channel k sees elements k, k + c, ... in channels-last order, or one contiguous run when c is 1. */
    channel_moments(k, c, elements / c, &mean[k], &var);
    invstd[k] = 1.0 / sqrt(var + 1e-5);
    cr_expect(fabs(got_mean[k] - mean[k]) <= 1e-6 * (fabs(mean[k]) + sqrt(var)), "mean[%lld] = %.9g, exactly %.9g",
              (long long)k, got_mean[k], mean[k]);
    cr_expect(fabs(got_invstd[k] - invstd[k]) <= 1e-6 * invstd[k], "invstd[%lld] = %.9g, exactly %.9g", (long long)k,
              got_invstd[k], invstd[k]);
  }
  /* y around index 2^31 and at the ends, where a wrapped 32-bit index would land elsewhere. */
  const int64_t probes[] = {0, 1, (INT64_C(1) << 31) - 2, INT64_C(1) << 31, (INT64_C(1) << 31) + 7, elements - 9};
  for (size_t p = 0; p < sizeof probes / sizeof probes[0]; ++p) {
    uint16_t stored[9];
    double got[9], want[9];
    dev_download(stored, (uint16_t *)y + probes[p], sizeof stored);
    from_storage(BNK_FLOAT16, stored, got, 9);
    for (int j = 0; j < 9; ++j) {
      const int64_t i = probes[p] + j;
      const int64_t k = layout == BNK_NHWC ? i % c : 0;
      want[j] = (value_at(i) - mean[k]) * invstd[k];
    }
    expect_within_ulps("y near 2^31", BNK_FLOAT16, got, want, 9, 1.0, 1e-6);
  }
  dev_free(x);
  dev_free(y);
  dev_free(save_mean);
  dev_free(save_invstd);
  dev_free(ws);
  bnk_context_destroy(ctx);
}

Test(large, channels_first_channel_past_2_31, .timeout = 900) { run_large(BNK_NCHW, 1); }
Test(large, channels_last_past_2_31, .timeout = 900) { run_large(BNK_NHWC, 2); }
