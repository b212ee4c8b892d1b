/* Synchronized batch norm. On the emulation: one batch split into R ranks' shares (uneven, some empty),
 * local statistics per share, a merge of the gathered partials, normalize and backward per share; the
 * result must match the single-batch float64 reference. With two or more GPUs: the same over NCCL. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"
#include "tests/reference.h"

#ifdef BNK_TEST_NCCL
#include <pthread.h>

#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

/* Tolerances are the single-device forward's and backward's (tests/test_forward.c, test_backward.c): the
 * merge in double adds nothing measurable. y and dx: 1e-5 absolute at unit scale; mean 1e-6 (|mean| + std);
 * invstd 1e-6 relative; dgamma and dbeta 1e-5 relative to the sum of the magnitudes of their terms. */
#define Y_TOLERANCE 1e-5
#define STAT_TOLERANCE 1e-6
#define GRAD_TOLERANCE 1e-5

typedef struct split_case {
  bnk_layout layout;
  int64_t n, c;
  int spatial_dims;
  int64_t spatial[3];
  int ranks;
  int64_t shares[8]; /* N of each rank; they add up to n */
} split_case;

static const split_case cases[] = {
    {BNK_NCHW, 6, 3, 2, {5, 7, 1}, 1, {6}},
    {BNK_NHWC, 6, 3, 2, {5, 7, 1}, 2, {2, 4}},
    {BNK_NCHW, 7, 4, 1, {9, 1, 1}, 3, {3, 0, 4}},
    {BNK_NHWC, 13, 8, 2, {4, 4, 1}, 8, {3, 0, 2, 1, 4, 0, 2, 1}},
    {BNK_NCHW, 13, 5, 3, {2, 3, 2}, 8, {1, 1, 1, 1, 1, 1, 1, 6}},
    {BNK_NHWC, 40, 6, 0, {1, 1, 1}, 3, {17, 0, 23}},
};

static double sum_magnitudes(const bnk_tensor_desc *desc, const double *a, const double *b, int64_t c) {
  double total = 0.0;
  const int64_t spatial = ref_spatial(desc);
  for (int64_t n = 0; n < desc->n; ++n)
    for (int64_t s = 0; s < spatial; ++s) {
      const int64_t i = ref_offset(desc, n, c, s);
      total += fabs(a[i]) * (b != NULL ? fabs(b[i]) : 1.0);
    }
  return total;
}

static void run_split(const split_case *sc, bnk_context *ctx, test_rng *rng) {
  char label[96];
  snprintf(label, sizeof label, "%s N=%lld C=%lld over %d ranks", sc->layout == BNK_NCHW ? "NCHW" : "NHWC",
           (long long)sc->n, (long long)sc->c, sc->ranks);
  const int64_t c = sc->c;
  bnk_tensor_desc whole;
  cr_assert_eq(bnk_tensor_desc_init(&whole, BNK_FLOAT32, sc->layout, sc->n, c, sc->spatial_dims, sc->spatial),
               BNK_SUCCESS);
  const int64_t elements = bnk_tensor_desc_elements(&whole);
  const int64_t per_sample = elements / sc->n;

  double *x = malloc((size_t)elements * sizeof(double)), *dy = malloc((size_t)elements * sizeof(double));
  for (int64_t i = 0; i < elements; ++i) {
    x[i] = (double)(float)(3.0 + 2.0 * rng_normal(rng));
    dy[i] = (double)(float)rng_normal(rng);
  }
  double gamma[8], beta[8], rm[8], rv[8], mean[8], var[8], var_unbiased[8], invstd[8];
  for (int64_t k = 0; k < c; ++k) {
    gamma[k] = (double)(float)rng_uniform(rng, 0.5, 1.5);
    beta[k] = (double)(float)rng_uniform(rng, -0.5, 0.5);
    rm[k] = 0.0;
    rv[k] = 1.0;
  }
  ref_channel_stats(&whole, x, mean, var, var_unbiased);
  for (int64_t k = 0; k < c; ++k) invstd[k] = 1.0 / sqrt(var[k] + 1e-5);
  double *y_ref = malloc((size_t)elements * sizeof(double));
  ref_normalize(&whole, x, mean, var, 1e-5, gamma, beta, y_ref);
  ref_running_update(c, 0.1, mean, var_unbiased, rm, rv);

  float *x_dev = dev_floats(x, elements), *dy_dev = dev_floats(dy, elements);
  float *y_dev = dev_alloc((size_t)elements * 4), *dx_dev = dev_alloc((size_t)elements * 4);
  double zeros[8] = {0}, ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  float *gamma_dev = dev_floats(gamma, c), *beta_dev = dev_floats(beta, c);
  float *running_mean = dev_floats(zeros, c), *running_var = dev_floats(ones, c);
  float *save_mean = dev_alloc((size_t)c * 4), *save_invstd = dev_alloc((size_t)c * 4);
  float *again_mean = dev_alloc((size_t)c * 4), *again_invstd = dev_alloc((size_t)c * 4);
  double *gathered = dev_alloc((size_t)sc->ranks * BNK_PARTIALS_PER_CHANNEL * (size_t)c * sizeof(double));
  float *sums = dev_alloc((size_t)sc->ranks * BNK_BACKWARD_SUMS(c) * sizeof(float));
  float *total_sums = dev_alloc((size_t)BNK_BACKWARD_SUMS(c) * sizeof(float));
  float *dgamma = dev_alloc((size_t)sc->ranks * c * 4), *dbeta = dev_alloc((size_t)sc->ranks * c * 4);
  size_t ws_bytes = 0, bytes = 0;
  cr_assert_eq(bnk_batch_stats_workspace_size(ctx, &whole, &ws_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &whole, &bytes), BNK_SUCCESS);
  if (bytes > ws_bytes) ws_bytes = bytes;
  void *workspace = dev_alloc(ws_bytes);
  int64_t *tracked = dev_alloc(8);
  const int64_t no_batches = 0;
  dev_upload(tracked, &no_batches, 8);

  /* Forward: each rank's local statistics straight into its slot of the gathered buffer, one merge. */
  bnk_tensor_desc share[8];
  int64_t first[8];
  for (int r = 0, start = 0; r < sc->ranks; start += (int)sc->shares[r], ++r) {
    share[r] = whole;
    share[r].n = sc->shares[r];
    first[r] = start * per_sample;
    cr_assert_eq(
        bnk_batch_stats(ctx, &share[r], x_dev + first[r], gathered + (size_t)r * 3 * (size_t)c, workspace, ws_bytes),
        BNK_SUCCESS, "%s: rank %d: %s", label, r, bnk_last_error_message());
  }
  cr_assert_eq(bnk_merge_stats(ctx, c, sc->ranks, gathered, running_mean, running_var, tracked, 0.1, 1e-5, save_mean,
                               save_invstd),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  cr_assert_eq(bnk_merge_stats(ctx, c, sc->ranks, gathered, NULL, NULL, NULL, 0.1, 1e-5, again_mean, again_invstd),
               BNK_SUCCESS);
  for (int r = 0; r < sc->ranks; ++r)
    cr_assert_eq(
        bnk_normalize(ctx, &share[r], x_dev + first[r], y_dev + first[r], gamma_dev, beta_dev, save_mean, save_invstd),
        BNK_SUCCESS, "%s", bnk_last_error_message());

  char what[160];
  double *got = malloc((size_t)elements * sizeof(double)), got_c[8];
  dev_read_floats(y_dev, got, elements);
  snprintf(what, sizeof what, "%s: y", label);
  expect_close(what, got, y_ref, elements, Y_TOLERANCE, 0.0);
  dev_read_floats(save_mean, got_c, c);
  for (int64_t k = 0; k < c; ++k)
    cr_expect(fabs(got_c[k] - mean[k]) <= STAT_TOLERANCE * (fabs(mean[k]) + sqrt(var[k])),
              "%s: mean[%lld] = %.9g, reference %.9g", label, (long long)k, got_c[k], mean[k]);
  snprintf(what, sizeof what, "%s: invstd", label);
  dev_read_floats(save_invstd, got_c, c);
  expect_close(what, got_c, invstd, c, 0.0, STAT_TOLERANCE);
  snprintf(what, sizeof what, "%s: running_mean (unbiased with the whole batch's M)", label);
  dev_read_floats(running_mean, got_c, c);
  expect_close(what, got_c, rm, c, 1e-7, 2e-6);
  snprintf(what, sizeof what, "%s: running_var", label);
  dev_read_floats(running_var, got_c, c);
  expect_close(what, got_c, rv, c, 1e-7, 2e-6);
  int64_t batches = 0;
  dev_download(&batches, tracked, 8);
  cr_expect_eq(batches, 1, "%s: num_batches_tracked = %lld after one merge", label, (long long)batches);
  float first_merge[16], second_merge[16];
  dev_download(first_merge, save_mean, (size_t)c * 4);
  dev_download(first_merge + c, save_invstd, (size_t)c * 4);
  dev_download(second_merge, again_mean, (size_t)c * 4);
  dev_download(second_merge + c, again_invstd, (size_t)c * 4);
  expect_bitwise_equal("two merges of the same partials", first_merge, second_merge, (size_t)c * 8);

  /* Backward: local sums per rank, added up in rank order (what an all-reduce does), applied per rank. */
  for (int r = 0; r < sc->ranks; ++r)
    cr_assert_eq(bnk_backward_local_sums(ctx, &share[r], x_dev + first[r], dy_dev + first[r], save_mean, save_invstd,
                                         sums + (size_t)r * BNK_BACKWARD_SUMS(c), workspace, ws_bytes),
                 BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
  float rank_sums[8 * 17], added[17] = {0};
  dev_download(rank_sums, sums, (size_t)sc->ranks * BNK_BACKWARD_SUMS(c) * sizeof(float));
  for (int r = 0; r < sc->ranks; ++r)
    for (int64_t k = 0; k < BNK_BACKWARD_SUMS(c); ++k) added[k] += rank_sums[r * BNK_BACKWARD_SUMS(c) + k];
  cr_expect_eq(added[2 * c], (float)(elements / c), "%s: the counts add up to %g, not M", label, added[2 * c]);
  dev_upload(total_sums, added, (size_t)BNK_BACKWARD_SUMS(c) * sizeof(float));
  for (int r = 0; r < sc->ranks; ++r)
    cr_assert_eq(bnk_backward_apply(ctx, &share[r], x_dev + first[r], dy_dev + first[r], dx_dev + first[r], gamma_dev,
                                    dgamma + r * c, dbeta + r * c, save_mean, save_invstd, total_sums, workspace,
                                    ws_bytes),
                 BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());

  double saved_mean[8], saved_invstd[8], dx_ref[4096], dgamma_ref[8], dbeta_ref[8];
  cr_assert_leq(elements, 4096);
  dev_read_floats(save_mean, saved_mean, c);
  dev_read_floats(save_invstd, saved_invstd, c);
  ref_backward(&whole, x, dy, saved_mean, saved_invstd, gamma, dx_ref, dgamma_ref, dbeta_ref);
  dev_read_floats(dx_dev, got, elements);
  snprintf(what, sizeof what, "%s: dx", label);
  expect_close(what, got, dx_ref, elements, Y_TOLERANCE, 0.0);
  for (int r = 0; r < sc->ranks; ++r) {
    double rank_dgamma[8], rank_dbeta[8];
    dev_read_floats(dgamma + r * c, rank_dgamma, c);
    dev_read_floats(dbeta + r * c, rank_dbeta, c);
    for (int64_t k = 0; k < c; ++k) {
      double *xhat = malloc((size_t)elements * sizeof(double));
      for (int64_t i = 0; i < elements; ++i) xhat[i] = (x[i] - saved_mean[k]) * saved_invstd[k];
      const double scale_gamma = sum_magnitudes(&whole, dy, xhat, k), scale_beta = sum_magnitudes(&whole, dy, NULL, k);
      free(xhat);
      cr_expect(fabs(rank_dgamma[k] - dgamma_ref[k]) <= GRAD_TOLERANCE * scale_gamma,
                "%s: rank %d dgamma[%lld] = %.9g, reference %.9g", label, r, (long long)k, rank_dgamma[k],
                dgamma_ref[k]);
      cr_expect(fabs(rank_dbeta[k] - dbeta_ref[k]) <= GRAD_TOLERANCE * scale_beta,
                "%s: rank %d dbeta[%lld] = %.9g, reference %.9g", label, r, (long long)k, rank_dbeta[k], dbeta_ref[k]);
    }
  }
  float rank0[16], other[16];
  dev_download(rank0, dgamma, (size_t)c * 4);
  for (int r = 1; r < sc->ranks; ++r) {
    dev_download(other, dgamma + r * c, (size_t)c * 4);
    expect_bitwise_equal("dgamma on every rank", rank0, other, (size_t)c * 4);
  }

  free(x);
  free(dy);
  free(y_ref);
  free(got);
  void *buffers[] = {x_dev,       dy_dev,    y_dev,       dx_dev,     gamma_dev,    beta_dev, running_mean,
                     running_var, save_mean, save_invstd, again_mean, again_invstd, gathered, sums,
                     total_sums,  dgamma,    dbeta,       workspace,  tracked};
  for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; ++i) dev_free(buffers[i]);
}

Test(distributed, split_statistics_match_one_device, .timeout = 300) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) run_split(&cases[i], ctx, &rng);
  }
  bnk_context_destroy(ctx);
}

/* The merged statistics do not depend on the schedule: bitwise the same partials give bitwise the same
 * statistics, as on every rank. */
Test(distributed, merge_is_deterministic_across_schedules) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  enum { C = 37, RANKS = 5 };
  double host[RANKS * 3 * C];
  for (int r = 0; r < RANKS; ++r)
    for (int k = 0; k < C; ++k) {
      host[(r * 3 + 0) * C + k] = r == 2 ? 0.0 : (double)(1 + (int)rng_uniform(&rng, 0.0, 1000.0));
      host[(r * 3 + 1) * C + k] = r == 2 ? 0.0 : rng_uniform(&rng, -5.0, 5.0);
      host[(r * 3 + 2) * C + k] = r == 2 ? 0.0 : rng_uniform(&rng, 0.0, 100.0);
    }
  double *gathered = dev_alloc(sizeof host);
  dev_upload(gathered, host, sizeof host);
  float *mean = dev_alloc(C * 4), *invstd = dev_alloc(C * 4);
  float first[2 * C], now[2 * C];
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(mean, C * 4);
    cr_assert_eq(bnk_merge_stats(ctx, C, RANKS, gathered, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd), BNK_SUCCESS);
    dev_download(now, mean, C * 4);
    dev_download(now + C, invstd, C * 4);
    if (schedule == 0) memcpy(first, now, sizeof now);
    else expect_bitwise_equal("merged statistics", first, now, sizeof now);
  }
  /* Against the float64 merge of the same triples. */
  for (int k = 0; k < C; ++k) {
    double count = 0.0, sum = 0.0, m2 = 0.0;
    for (int r = 0; r < RANKS; ++r) {
      count += host[(r * 3 + 0) * C + k];
      sum += host[(r * 3 + 0) * C + k] * host[(r * 3 + 1) * C + k];
    }
    const double mu = sum / count;
    for (int r = 0; r < RANKS; ++r) {
      const double d = host[(r * 3 + 1) * C + k] - mu;
      m2 += host[(r * 3 + 2) * C + k] + host[(r * 3 + 0) * C + k] * d * d;
    }
    cr_expect(fabs(now[k] - mu) <= 1e-6 * (fabs(mu) + sqrt(m2 / count)), "mean[%d] = %.9g, reference %.9g", k, now[k],
              mu);
    const double want_invstd = 1.0 / sqrt(m2 / count + 1e-5);
    cr_expect(fabs(now[C + k] - want_invstd) <= 1e-6 * want_invstd, "invstd[%d] = %.9g, reference %.9g", k, now[C + k],
              want_invstd);
  }
  dev_free(gathered);
  dev_free(mean);
  dev_free(invstd);
  bnk_context_destroy(ctx);
}

Test(distributed, rejections_write_nothing) {
  bnk_context *ctx = test_context();
  float *mean = dev_alloc(12), *invstd = dev_alloc(12);
  double *gathered = dev_alloc(9 * 8);
  void *before_mean = dev_snapshot(mean, 12), *before_invstd = dev_snapshot(invstd, 12);
  struct {
    bnk_status status;
    const char *needle;
  } calls[] = {
      {bnk_merge_stats(ctx, 0, 1, gathered, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd), "C must be > 0, got 0"},
      {bnk_merge_stats(ctx, 3, 0, gathered, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd), "ranks must be >= 1, got 0"},
      {bnk_merge_stats(ctx, 3, 1, NULL, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd), "gathered must not be NULL"},
      {bnk_merge_stats(ctx, 3, 1, gathered, NULL, NULL, NULL, 0.1, 1e-5, NULL, invstd), "save_mean must not be NULL"},
      {bnk_merge_stats(ctx, 3, 1, gathered, NULL, NULL, NULL, 0.1, -1.0, mean, invstd), "eps must be finite"},
      {bnk_merge_stats(ctx, 3, 1, gathered, mean, NULL, NULL, 0.1, 1e-5, mean, invstd), "running_mean and running_var"},
      {bnk_merge_stats(ctx, 3, 1, gathered, mean, invstd, NULL, 2.0, 1e-5, mean, invstd), "momentum must be in [0, 1]"},
  };
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; ++i) {
    cr_expect_eq(calls[i].status, BNK_ERROR_INVALID_VALUE, "call %zu: %s", i, bnk_status_name(calls[i].status));
  }
  /* Each message, re-created call by call (the message is the last call's). */
  cr_expect_eq(bnk_merge_stats(ctx, 0, 1, gathered, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd),
               BNK_ERROR_INVALID_VALUE);
  cr_expect(strstr(bnk_last_error_message(), calls[0].needle) != NULL, "%s", bnk_last_error_message());
  cr_expect_eq(bnk_merge_stats(ctx, 3, 0, gathered, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd),
               BNK_ERROR_INVALID_VALUE);
  cr_expect(strstr(bnk_last_error_message(), calls[1].needle) != NULL, "%s", bnk_last_error_message());
  const int64_t spatial[1] = {4};
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 3, 1, spatial), BNK_SUCCESS);
  cr_expect_eq(bnk_batch_stats(ctx, &desc, mean, NULL, NULL, 0), BNK_ERROR_INVALID_VALUE);
  cr_expect(strstr(bnk_last_error_message(), "partials must not be NULL") != NULL, "%s", bnk_last_error_message());
  cr_expect_eq(bnk_normalize(ctx, &desc, mean, mean, NULL, NULL, NULL, invstd), BNK_ERROR_INVALID_VALUE);
  cr_expect(strstr(bnk_last_error_message(), "mean must not be NULL") != NULL, "%s", bnk_last_error_message());
  size_t bytes = 0;
  cr_expect_eq(bnk_sync_workspace_size(ctx, &desc, 0, &bytes), BNK_ERROR_INVALID_VALUE);
  expect_unchanged("save_mean", mean, before_mean, 12);
  expect_unchanged("save_invstd", invstd, before_invstd, 12);
  /* Without running statistics the merge ignores momentum, whatever its value (the header's rule). */
  const double no_partials[9] = {0};
  dev_upload(gathered, no_partials, sizeof no_partials);
  cr_expect_eq(bnk_merge_stats(ctx, 3, 1, gathered, NULL, NULL, NULL, NAN, 1e-5, mean, invstd), BNK_SUCCESS, "%s",
               bnk_last_error_message());
  cr_expect_eq(bnk_merge_stats(ctx, 3, 1, gathered, NULL, NULL, NULL, -1.0000001, 1e-5, mean, invstd), BNK_SUCCESS,
               "%s", bnk_last_error_message());
  free(before_mean);
  free(before_invstd);
  dev_free(mean);
  dev_free(invstd);
  dev_free(gathered);
  bnk_context_destroy(ctx);
}

#ifndef BNK_TEST_NCCL
/* Without NCCL (the emulation has none) the NCCL calls say so, and write nothing. */
Test(distributed, nccl_calls_report_not_supported) {
  bnk_context *ctx = test_context();
  const int64_t spatial[1] = {4};
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 3, 1, spatial), BNK_SUCCESS);
  float *buffer = dev_alloc(24 * 4);
  cr_expect_eq(bnk_forward_training_sync(ctx, &desc, buffer, buffer, NULL, NULL, NULL, NULL, NULL, 0.1, 1e-5, NULL,
                                         NULL, NULL, NULL, 0),
               BNK_ERROR_NOT_SUPPORTED);
  cr_expect(strstr(bnk_last_error_message(), "without NCCL") != NULL, "%s", bnk_last_error_message());
  cr_expect_eq(bnk_backward_sync(ctx, &desc, buffer, buffer, buffer, NULL, NULL, NULL, buffer, buffer, NULL, NULL, 0),
               BNK_ERROR_NOT_SUPPORTED);
  dev_free(buffer);
  bnk_context_destroy(ctx);
}
#else
/* Two or more GPUs: one thread per device, each with its share, over one NCCL clique. */
enum { NCCL_MAX = 8, NCCL_C = 6, NCCL_HW = 25 };

typedef struct nccl_rank {
  int device;
  ncclComm_t comm;
  int64_t n, first;
  const float *x_host, *dy_host;
  float y[64 * NCCL_C * NCCL_HW], dx[64 * NCCL_C * NCCL_HW], mean[NCCL_C], invstd[NCCL_C], dgamma[NCCL_C];
  bnk_status status;
  char message[256];
} nccl_rank;

static void *nccl_rank_main(void *argument) {
  nccl_rank *r = argument;
  cudaSetDevice(r->device);
  bnk_context *ctx = NULL;
  r->status = bnk_context_create(&ctx, r->device);
  const int64_t spatial[1] = {NCCL_HW};
  bnk_tensor_desc desc;
  if (r->status == BNK_SUCCESS)
    r->status = bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, r->n, NCCL_C, 1, spatial);
  const size_t bytes = (size_t)(r->n * NCCL_C * NCCL_HW) * 4 + 4;
  float *x, *dy, *y, *dx, *mean, *invstd, *dgamma;
  void *ws;
  size_t ws_bytes = 0;
  int ranks = 0;
  ncclCommCount(r->comm, &ranks);
  cudaMalloc((void **)&x, bytes), cudaMalloc((void **)&dy, bytes), cudaMalloc((void **)&y, bytes);
  cudaMalloc((void **)&dx, bytes), cudaMalloc((void **)&mean, 64), cudaMalloc((void **)&invstd, 64);
  cudaMalloc((void **)&dgamma, 64);
  cudaMemcpy(x, r->x_host + r->first, bytes - 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dy, r->dy_host + r->first, bytes - 4, cudaMemcpyHostToDevice);
  if (r->status == BNK_SUCCESS) r->status = bnk_sync_workspace_size(ctx, &desc, ranks, &ws_bytes);
  cudaMalloc(&ws, ws_bytes);
  if (r->status == BNK_SUCCESS)
    r->status = bnk_forward_training_sync(ctx, &desc, x, y, NULL, NULL, NULL, NULL, NULL, 0.1, 1e-5, mean, invstd,
                                          (bnk_nccl_comm)r->comm, ws, ws_bytes);
  if (r->status == BNK_SUCCESS)
    r->status = bnk_backward_sync(ctx, &desc, x, dy, dx, NULL, dgamma, NULL, mean, invstd, (bnk_nccl_comm)r->comm, ws,
                                  ws_bytes);
  snprintf(r->message, sizeof r->message, "%s", bnk_last_error_message());
  cudaDeviceSynchronize();
  cudaMemcpy(r->y, y, bytes - 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(r->dx, dx, bytes - 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(r->mean, mean, sizeof r->mean, cudaMemcpyDeviceToHost);
  cudaMemcpy(r->invstd, invstd, sizeof r->invstd, cudaMemcpyDeviceToHost);
  cudaMemcpy(r->dgamma, dgamma, sizeof r->dgamma, cudaMemcpyDeviceToHost);
  cudaFree(x), cudaFree(dy), cudaFree(y), cudaFree(dx), cudaFree(mean), cudaFree(invstd), cudaFree(dgamma);
  cudaFree(ws);
  bnk_context_destroy(ctx);
  return NULL;
}

Test(distributed, nccl_forward_and_backward_match_one_device, .timeout = 300) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2)
    cr_skip_test("needs at least two CUDA devices for NCCL (found %d)", devices);
  const int ranks = devices < NCCL_MAX ? devices : NCCL_MAX;
  int ids[NCCL_MAX];
  ncclComm_t comms[NCCL_MAX];
  for (int i = 0; i < ranks; ++i) ids[i] = i;
  cr_assert_eq(ncclCommInitAll(comms, ranks, ids), ncclSuccess);
  /* Uneven shares, one of them empty when there are three ranks or more. */
  const int64_t n_total = 3 * ranks + 2;
  test_rng rng = rng_fresh();
  const int64_t elements = n_total * NCCL_C * NCCL_HW;
  float *x = malloc((size_t)elements * 4), *dy = malloc((size_t)elements * 4);
  double *xd = malloc((size_t)elements * 8), *dyd = malloc((size_t)elements * 8);
  for (int64_t i = 0; i < elements; ++i) {
    x[i] = (float)(1.0 + rng_normal(&rng));
    dy[i] = (float)rng_normal(&rng);
    xd[i] = x[i];
    dyd[i] = dy[i];
  }
  static nccl_rank rank[NCCL_MAX];
  pthread_t threads[NCCL_MAX];
  int64_t start = 0;
  for (int i = 0; i < ranks; ++i) {
    const int64_t n = i == ranks - 1 ? n_total - start : (i == 1 && ranks > 2 ? 0 : 3 + (i % 2));
    rank[i] = (nccl_rank){
        .device = i, .comm = comms[i], .n = n, .first = start * NCCL_C * NCCL_HW, .x_host = x, .dy_host = dy};
    start += n;
    pthread_create(&threads[i], NULL, nccl_rank_main, &rank[i]);
  }
  for (int i = 0; i < ranks; ++i) pthread_join(threads[i], NULL);
  const int64_t spatial[1] = {NCCL_HW};
  bnk_tensor_desc whole;
  cr_assert_eq(bnk_tensor_desc_init(&whole, BNK_FLOAT32, BNK_NCHW, n_total, NCCL_C, 1, spatial), BNK_SUCCESS);
  double mean[NCCL_C], var[NCCL_C], saved_mean[NCCL_C], saved_invstd[NCCL_C];
  double *y_ref = malloc((size_t)elements * 8), *dx_ref = malloc((size_t)elements * 8), dgamma_ref[NCCL_C];
  ref_channel_stats(&whole, xd, mean, var, NULL);
  for (int k = 0; k < NCCL_C; ++k) {
    saved_mean[k] = rank[0].mean[k];
    saved_invstd[k] = rank[0].invstd[k];
  }
  ref_normalize(&whole, xd, mean, var, 1e-5, NULL, NULL, y_ref);
  ref_backward(&whole, xd, dyd, saved_mean, saved_invstd, NULL, dx_ref, dgamma_ref, NULL);
  for (int i = 0; i < ranks; ++i) {
    cr_expect_eq(rank[i].status, BNK_SUCCESS, "rank %d: %s: %s", i, bnk_status_name(rank[i].status), rank[i].message);
    cr_expect(memcmp(rank[i].mean, rank[0].mean, sizeof rank[0].mean) == 0, "rank %d merged other bits", i);
    double got[64 * NCCL_C * NCCL_HW];
    const int64_t count = rank[i].n * NCCL_C * NCCL_HW;
    for (int64_t e = 0; e < count; ++e) got[e] = rank[i].y[e];
    expect_close("y", got, y_ref + rank[i].first, count, Y_TOLERANCE, 0.0);
    for (int64_t e = 0; e < count; ++e) got[e] = rank[i].dx[e];
    expect_close("dx", got, dx_ref + rank[i].first, count, Y_TOLERANCE, 0.0);
    for (int k = 0; k < NCCL_C; ++k)
      cr_expect(fabs(rank[i].dgamma[k] - dgamma_ref[k]) <= GRAD_TOLERANCE * (1.0 + fabs(dgamma_ref[k])) * 10.0,
                "rank %d dgamma[%d] = %g, reference %g", i, k, rank[i].dgamma[k], dgamma_ref[k]);
  }
  for (int i = 0; i < ranks; ++i) ncclCommDestroy(comms[i]);
  free(x), free(dy), free(xd), free(dyd), free(y_ref), free(dx_ref);
}
#endif
