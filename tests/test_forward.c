/* Forward training and inference against the float64 reference, on every schedule, for a sweep of
 * layouts, ranks, sizes, alignments and data that defeats naive variance formulas. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"
#include "tests/reference.h"

typedef struct forward_case {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n, c;
  int spatial_dims;
  int64_t spatial[3];
  double offset; /* common offset of every channel's mean */
  double spread; /* standard deviation of the data; 0 makes every channel constant */
  int misalign;  /* x and y start one element past a 256-byte boundary */
  int affine;
  double eps;
  double momentum;
} forward_case;

/* Tolerances against the float64 reference, for float32 statistics:
 *  - mean: |error| <= 1e-6 (|mean| + std). The channel is accumulated relative to one of its samples, so
 *    the error scales with the spread, plus one rounding of the result.
 *  - invstd: relative 1e-6, i.e. variance to about 2e-6 relative; shifted Welford reaches ~2e-7.
 *  - y: absolute 1e-5 at unit scale for float32 (a few roundings of values of magnitude ~5); for 16-bit
 *    storage, 1 ulp of the storage type (the fp32 result rounded once) plus the fp32 result's own error
 *    (1e-6 at unit scale): that floor only shows where y cancels to near zero, where an f16/bf16 ulp is
 *    finer than fp32 arithmetic on O(1) terms can be.
 *  - running statistics: relative 2e-6 plus 1e-7 absolute (two roundings in the update). */
#define MEAN_TOLERANCE 1e-6
#define INVSTD_TOLERANCE 1e-6
#define Y_TOLERANCE 1e-5
#define Y_FP32_FLOOR 1e-6
#define RUNNING_TOLERANCE 2e-6

static void describe(const forward_case *fc, char *out, size_t size) {
  char shape[96];
  format_shape(shape, sizeof shape, fc->layout, fc->dtype, fc->n, fc->c, fc->spatial_dims, fc->spatial);
  snprintf(out, size, "%s offset %g spread %g%s eps %g", shape, fc->offset, fc->spread,
           fc->misalign ? " misaligned" : "", fc->eps);
}

typedef struct forward_data {
  bnk_tensor_desc desc;
  int64_t elements;
  size_t bytes; /* of one tensor, x or y */
  double *x;    /* the stored values, as doubles */
  double *gamma, *beta;
  double *running_mean, *running_var;
  void *x_storage; /* host copy in the storage type */
  unsigned char *x_base, *y_base;
  void *x_dev, *y_dev;
} forward_data;

static forward_data make_data(const forward_case *fc, test_rng *rng) {
  forward_data d;
  memset(&d, 0, sizeof d);
  cr_assert_eq(bnk_tensor_desc_init(&d.desc, fc->dtype, fc->layout, fc->n, fc->c, fc->spatial_dims, fc->spatial),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  d.elements = bnk_tensor_desc_elements(&d.desc);
  const size_t es = dtype_size(fc->dtype);
  d.x = malloc((size_t)(d.elements + 1) * sizeof(double));
  double *channel_mean = malloc((size_t)fc->c * sizeof(double));
  for (int64_t c = 0; c < fc->c; ++c) channel_mean[c] = fc->offset + rng_uniform(rng, -2.0, 2.0);
  const int64_t spatial = ref_spatial(&d.desc);
  for (int64_t n = 0; n < fc->n; ++n)
    for (int64_t c = 0; c < fc->c; ++c)
      for (int64_t s = 0; s < spatial; ++s)
        d.x[ref_offset(&d.desc, n, c, s)] = channel_mean[c] + fc->spread * rng_normal(rng);
  free(channel_mean);
  d.x_storage = malloc((size_t)(d.elements + 1) * es);
  to_storage(fc->dtype, d.x, d.x_storage, d.elements);
  from_storage(fc->dtype, d.x_storage, d.x, d.elements);
  d.gamma = malloc((size_t)fc->c * sizeof(double));
  d.beta = malloc((size_t)fc->c * sizeof(double));
  d.running_mean = malloc((size_t)fc->c * sizeof(double));
  d.running_var = malloc((size_t)fc->c * sizeof(double));
  for (int64_t c = 0; c < fc->c; ++c) {
    d.gamma[c] = (double)(float)rng_uniform(rng, 0.5, 1.5);
    d.beta[c] = (double)(float)rng_uniform(rng, -0.5, 0.5);
    d.running_mean[c] = (double)(float)(fc->offset + rng_uniform(rng, -1.0, 1.0));
    d.running_var[c] = (double)(float)rng_uniform(rng, 0.5, 2.0);
  }
  d.bytes = (size_t)d.elements * es;
  const size_t skew = fc->misalign ? es : 0;
  d.x_base = dev_alloc(d.bytes + es + 1);
  d.y_base = dev_alloc(d.bytes + es + 1);
  d.x_dev = d.x_base + skew;
  d.y_dev = d.y_base + skew;
  dev_upload(d.x_dev, d.x_storage, d.bytes);
  return d;
}

static void free_data(forward_data *d) {
  free(d->x);
  free(d->x_storage);
  free(d->gamma);
  free(d->beta);
  free(d->running_mean);
  free(d->running_var);
  dev_free(d->x_base);
  dev_free(d->y_base);
}

static void check_y(const forward_case *fc, const char *label, const double *got, const double *want, int64_t count) {
  char what[200];
  snprintf(what, sizeof what, "%s: y", label);
  if (fc->dtype == BNK_FLOAT32) expect_close(what, got, want, count, Y_TOLERANCE, 0.0);
  else expect_within_ulps(what, fc->dtype, got, want, count, 1.0, Y_FP32_FLOOR);
}

static void run_training_case(const forward_case *fc, bnk_context *ctx, test_rng *rng) {
  char label[160];
  describe(fc, label, sizeof label);
  forward_data d = make_data(fc, rng);
  const int64_t c = fc->c;

  double *mean = malloc((size_t)c * sizeof(double)), *var = malloc((size_t)c * sizeof(double));
  double *var_unbiased = malloc((size_t)c * sizeof(double)), *invstd = malloc((size_t)c * sizeof(double));
  double *y_ref = malloc((size_t)(d.elements + 1) * sizeof(double));
  ref_channel_stats(&d.desc, d.x, mean, var, var_unbiased);
  for (int64_t i = 0; i < c; ++i) invstd[i] = 1.0 / sqrt(var[i] + fc->eps);
  ref_normalize(&d.desc, d.x, mean, var, fc->eps, fc->affine ? d.gamma : NULL, fc->affine ? d.beta : NULL, y_ref);
  double *rm_ref = malloc((size_t)c * sizeof(double)), *rv_ref = malloc((size_t)c * sizeof(double));
  memcpy(rm_ref, d.running_mean, (size_t)c * sizeof(double));
  memcpy(rv_ref, d.running_var, (size_t)c * sizeof(double));
  ref_running_update(c, fc->momentum, mean, var_unbiased, rm_ref, rv_ref);

  float *gamma = fc->affine ? dev_floats(d.gamma, c) : NULL;
  float *beta = fc->affine ? dev_floats(d.beta, c) : NULL;
  float *running_mean = dev_alloc((size_t)c * 4), *running_var = dev_alloc((size_t)c * 4);
  float *save_mean = dev_alloc((size_t)c * 4), *save_invstd = dev_alloc((size_t)c * 4);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &d.desc, &ws_bytes), BNK_SUCCESS);
  void *workspace = dev_alloc(ws_bytes);

  double *got = malloc((size_t)(d.elements + 1) * sizeof(double));
  double *got_c = malloc((size_t)c * sizeof(double));
  void *y_first = malloc(d.bytes + 1), *y_now = malloc(d.bytes + 1);
  float *stats_first = malloc((size_t)c * 4 * 4), *stats_now = malloc((size_t)c * 4 * 4);
  char what[200];
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    float *initial_mean = malloc((size_t)c * 4), *initial_var = malloc((size_t)c * 4);
    for (int64_t i = 0; i < c; ++i) {
      initial_mean[i] = (float)d.running_mean[i];
      initial_var[i] = (float)d.running_var[i];
    }
    dev_upload(running_mean, initial_mean, (size_t)c * 4);
    dev_upload(running_var, initial_var, (size_t)c * 4);
    free(initial_mean);
    free(initial_var);
    dev_poison(d.y_dev, d.bytes);
    dev_poison(save_mean, (size_t)c * 4);
    dev_poison(save_invstd, (size_t)c * 4);
    dev_poison(workspace, ws_bytes);
    const bnk_status status =
        bnk_forward_training(ctx, &d.desc, d.x_dev, d.y_dev, gamma, beta, running_mean, running_var, NULL, fc->momentum,
                             fc->eps, save_mean, save_invstd, workspace, ws_bytes);
    cr_assert_eq(status, BNK_SUCCESS, "%s [%s]: %s: %s", label, schedule_name(schedule), bnk_status_name(status),
                 bnk_last_error_message());

    dev_download(y_now, d.y_dev, d.bytes);
    from_storage(fc->dtype, y_now, got, d.elements);
    snprintf(what, sizeof what, "%s [%s]", label, schedule_name(schedule));
    check_y(fc, what, got, y_ref, d.elements);

    dev_read_floats(save_mean, got_c, c);
    for (int64_t i = 0; i < c; ++i) {
      const double allowed = MEAN_TOLERANCE * (fabs(mean[i]) + sqrt(var[i]));
      cr_expect(fabs(got_c[i] - mean[i]) <= allowed, "%s: save_mean[%lld] = %.9g, reference %.9g", what, (long long)i,
                got_c[i], mean[i]);
    }
    snprintf(what, sizeof what, "%s [%s]: save_invstd", label, schedule_name(schedule));
    dev_read_floats(save_invstd, got_c, c);
    expect_close(what, got_c, invstd, c, 0.0, INVSTD_TOLERANCE);
    snprintf(what, sizeof what, "%s [%s]: running_mean", label, schedule_name(schedule));
    dev_read_floats(running_mean, got_c, c);
    expect_close(what, got_c, rm_ref, c, 1e-7 + 1e-7 * fabs(fc->offset), RUNNING_TOLERANCE);
    /* With momentum 1 the running variance is the batch's unbiased variance: hold it to 1e-6. */
    snprintf(what, sizeof what, "%s [%s]: running_var", label, schedule_name(schedule));
    dev_read_floats(running_var, got_c, c);
    expect_close(what, got_c, rv_ref, c, 1e-7, fc->momentum == 1.0 ? 1e-6 : RUNNING_TOLERANCE);

    dev_download(stats_now, save_mean, (size_t)c * 4);
    dev_download(stats_now + c, save_invstd, (size_t)c * 4);
    dev_download(stats_now + 2 * c, running_mean, (size_t)c * 4);
    dev_download(stats_now + 3 * c, running_var, (size_t)c * 4);
    if (schedule == 0) {
      memcpy(y_first, y_now, d.bytes);
      memcpy(stats_first, stats_now, (size_t)c * 16);
    } else {
      expect_bitwise_equal("training y", y_first, y_now, d.bytes);
      expect_bitwise_equal("training statistics", stats_first, stats_now, (size_t)c * 16);
    }
  }
  free(got);
  free(got_c);
  free(y_first);
  free(y_now);
  free(stats_first);
  free(stats_now);
  free(mean);
  free(var);
  free(var_unbiased);
  free(invstd);
  free(y_ref);
  free(rm_ref);
  free(rv_ref);
  dev_free(gamma);
  dev_free(beta);
  dev_free(running_mean);
  dev_free(running_var);
  dev_free(save_mean);
  dev_free(save_invstd);
  dev_free(workspace);
  free_data(&d);
}

static void run_inference_case(const forward_case *fc, bnk_context *ctx, test_rng *rng) {
  char label[160];
  describe(fc, label, sizeof label);
  forward_data d = make_data(fc, rng);
  const int64_t c = fc->c;
  double *y_ref = malloc((size_t)(d.elements + 1) * sizeof(double));
  ref_normalize(&d.desc, d.x, d.running_mean, d.running_var, fc->eps, fc->affine ? d.gamma : NULL,
                fc->affine ? d.beta : NULL, y_ref);
  float *gamma = fc->affine ? dev_floats(d.gamma, c) : NULL;
  float *beta = fc->affine ? dev_floats(d.beta, c) : NULL;
  float *running_mean = dev_floats(d.running_mean, c), *running_var = dev_floats(d.running_var, c);
  double *got = malloc((size_t)(d.elements + 1) * sizeof(double));
  void *y_first = malloc(d.bytes + 1), *y_now = malloc(d.bytes + 1);
  char what[200];
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(d.y_dev, d.bytes);
    const bnk_status status =
        bnk_forward_inference(ctx, &d.desc, d.x_dev, d.y_dev, gamma, beta, running_mean, running_var, fc->eps);
    cr_assert_eq(status, BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
    dev_download(y_now, d.y_dev, d.bytes);
    from_storage(fc->dtype, y_now, got, d.elements);
    snprintf(what, sizeof what, "inference %s [%s]", label, schedule_name(schedule));
    check_y(fc, what, got, y_ref, d.elements);
    if (schedule == 0) memcpy(y_first, y_now, d.bytes);
    else expect_bitwise_equal("inference y", y_first, y_now, d.bytes);
  }
  free(got);
  free(y_first);
  free(y_now);
  free(y_ref);
  dev_free(gamma);
  dev_free(beta);
  dev_free(running_mean);
  dev_free(running_var);
  free_data(&d);
}

/* The sweep: both layouts, ranks 1-D to 3-D, odd and prime sizes, C = 1, S = 1, N = 1, vectorizable and
 * not, misaligned pointers, sizes that need several pieces per channel, C > 65535. It runs for every
 * storage type (the dtype field is replaced); vector widths differ per type (4 floats, 8 halves), so the
 * same shapes exercise both the 16-byte and the scalar paths differently. */
static const forward_case sweep[] = {
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(5, 7), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 2, 3, S2(5, 7), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 4, 16, S2(8, 8), 0.5, 2.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 4, 16, S2(8, 8), -0.5, 0.5, 0, 1, 1e-5, 0.3},
    {BNK_FLOAT32, BNK_NCHW, 37, 5, S0, 0.0, 1.0, 0, 1, 1e-3, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 1000, 1, S0, 3.0, 1.0, 0, 1, 1e-5, 1.0},
    {BNK_FLOAT32, BNK_NCHW, 3, 4, S1(33), 0.0, 1.0, 0, 0, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 3, 4, S1(33), 0.0, 1.0, 0, 1, 1e-5, 0.0},
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S3(4, 5, 6), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 2, 3, S3(4, 5, 6), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 7, 1, S2(9, 9), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 64, 13, S2(1, 1), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 1, 5, S2(17, 3), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 1, 5, S2(17, 3), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 3, 7, S2(11, 13), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(16, 16), 0.0, 1.0, 1, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 2, 8, S2(4, 4), 0.0, 1.0, 1, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 8, 3, S2(64, 64), 1.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 16, 3, S2(64, 64), 1.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 3, 2048, S2(7, 7), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 3, 64, S2(7, 7), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 2, 65537, S0, 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 2, 65537, S1(3), 0.0, 1.0, 0, 1, 1e-5, 0.1},
};

static void run_sweep(bnk_dtype dtype, int training) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof sweep / sizeof sweep[0]; ++i) {
    forward_case fc = sweep[i];
    fc.dtype = dtype;
    if (training) run_training_case(&fc, ctx, &rng);
    else run_inference_case(&fc, ctx, &rng);
  }
  bnk_context_destroy(ctx);
}

Test(forward, training_sweep_f32, .timeout = 600) { run_sweep(BNK_FLOAT32, 1); }
Test(forward, training_sweep_f16, .timeout = 600) { run_sweep(BNK_FLOAT16, 1); }
Test(forward, training_sweep_bf16, .timeout = 600) { run_sweep(BNK_BFLOAT16, 1); }
Test(forward, inference_sweep_f32, .timeout = 600) { run_sweep(BNK_FLOAT32, 0); }
Test(forward, inference_sweep_f16, .timeout = 600) { run_sweep(BNK_FLOAT16, 0); }
Test(forward, inference_sweep_bf16, .timeout = 600) { run_sweep(BNK_BFLOAT16, 0); }

/* Data where E[x^2] - E[x]^2 fails in fp32 (mean 1e4, unit variance), constant channels (variance exactly 0:
 * y must be exactly beta), and eps = 0. */
static const forward_case hard_data[] = {
    {BNK_FLOAT32, BNK_NCHW, 4, 3, S2(32, 32), 1e4, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 4, 3, S2(32, 32), 1e4, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 300, 8, S0, -1e4, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 3, 4, S2(5, 5), 7.0, 0.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 3, 4, S2(5, 5), -3.0, 0.0, 0, 1, 1e-3, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 5, 6, S2(7, 3), 0.0, 1.0, 0, 1, 0.0, 0.1},
    {BNK_FLOAT32, BNK_NHWC, 5, 6, S2(7, 3), 0.0, 1.0, 0, 1, 0.0, 0.1},
    /* Near fp16's range limit: squares (~1e9) overflow fp16 but not the fp32 statistics. */
    {BNK_FLOAT16, BNK_NCHW, 4, 3, S2(8, 8), 3e4, 1e3, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT16, BNK_NHWC, 4, 16, S2(8, 8), -3e4, 1e3, 0, 1, 1e-5, 0.1},
    {BNK_BFLOAT16, BNK_NHWC, 4, 16, S2(8, 8), 1e4, 10.0, 0, 1, 1e-5, 0.1},
    {BNK_BFLOAT16, BNK_NCHW, 3, 4, S2(5, 5), 2.0, 0.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT16, BNK_NHWC, 3, 8, S2(5, 5), -2.0, 0.0, 0, 1, 1e-5, 0.1},
    /* The same through the peeled channels-first reductions (C x S whole vectors, S not). */
    {BNK_FLOAT32, BNK_NCHW, 4, 8, S2(7, 7), 1e4, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT16, BNK_NCHW, 4, 8, S2(7, 7), 3e4, 1e3, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT16, BNK_NCHW, 3, 8, S2(5, 5), -2.0, 0.0, 0, 1, 1e-5, 0.1},
};

Test(forward, hard_data, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof hard_data / sizeof hard_data[0]; ++i) {
    run_training_case(&hard_data[i], ctx, &rng);
    run_inference_case(&hard_data[i], ctx, &rng);
  }
  bnk_context_destroy(ctx);
}

/* The channels-first elementwise walk (16-byte vectors whatever S is): S below, at and just past a vector
 * width, 7x7 and 14x14, a run longer than a tile (2048 halves), a tensor whose size is not a multiple of a
 * vector or of 32, misaligned pointers, and a tensor of more tiles than the GPU holds blocks, so that a
 * block walks several tiles and its run table holds many runs. Every dtype; training and inference. */
static const forward_case walk_shapes[] = {
    {BNK_FLOAT32, BNK_NCHW, 3, 5, S1(3), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 37, 3, S1(2), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 5, 3, S1(9), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 3, 7, S2(7, 7), 0.5, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 2, 6, S2(14, 14), 0.0, 1.0, 0, 0, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 3, 5, S2(7, 7), 0.0, 1.0, 1, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 1, 3, S1(4099), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 2, 16, S2(261, 261), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    /* C x S whole vectors but not S (the reductions peel each run's head and tail): S just past a vector (some
     * channels without a whole vector), 13, 7x7. */
    {BNK_FLOAT32, BNK_NCHW, 5, 8, S1(9), 0.0, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 4, 24, S1(13), 0.3, 1.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 3, 16, S2(7, 7), 0.0, 2.0, 0, 1, 1e-5, 0.1},
    {BNK_FLOAT32, BNK_NCHW, 3, 16, S2(7, 7), 0.0, 1.0, 1, 1, 1e-5, 0.1},
};

/* y written over x: each element is read by the thread that then writes it, so in place gives the same
 * bits as out of place, on every schedule. */
static void run_inference_in_place(const forward_case *fc, bnk_context *ctx, test_rng *rng) {
  char label[160];
  describe(fc, label, sizeof label);
  forward_data d = make_data(fc, rng);
  const int64_t c = fc->c;
  float *gamma = dev_floats(d.gamma, c), *beta = dev_floats(d.beta, c);
  float *running_mean = dev_floats(d.running_mean, c), *running_var = dev_floats(d.running_var, c);
  dev_poison(d.y_dev, d.bytes);
  cr_assert_eq(bnk_forward_inference(ctx, &d.desc, d.x_dev, d.y_dev, gamma, beta, running_mean, running_var, fc->eps),
               BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
  void *out_of_place = dev_snapshot(d.y_dev, d.bytes);
  char what[200];
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_upload(d.x_dev, d.x_storage, d.bytes);
    cr_assert_eq(bnk_forward_inference(ctx, &d.desc, d.x_dev, d.x_dev, gamma, beta, running_mean, running_var, fc->eps),
                 BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
    void *in_place = dev_snapshot(d.x_dev, d.bytes);
    snprintf(what, sizeof what, "inference in place %s [%s]", label, schedule_name(schedule));
    expect_bitwise_equal(what, out_of_place, in_place, d.bytes);
    free(in_place);
  }
  free(out_of_place);
  dev_free(gamma);
  dev_free(beta);
  dev_free(running_mean);
  dev_free(running_var);
  free_data(&d);
}

static void run_walk_shapes(bnk_dtype dtype) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof walk_shapes / sizeof walk_shapes[0]; ++i) {
    forward_case fc = walk_shapes[i];
    fc.dtype = dtype;
    run_training_case(&fc, ctx, &rng);
    run_inference_case(&fc, ctx, &rng);
    run_inference_in_place(&fc, ctx, &rng);
  }
  bnk_context_destroy(ctx);
}

Test(forward, walk_shapes_f32, .timeout = 600) { run_walk_shapes(BNK_FLOAT32); }
Test(forward, walk_shapes_f16, .timeout = 600) { run_walk_shapes(BNK_FLOAT16); }
Test(forward, walk_shapes_bf16, .timeout = 600) { run_walk_shapes(BNK_BFLOAT16); }

/* Constant channels: the variance is exactly zero and y exactly beta, bit for bit. */
Test(forward, constant_channels_give_beta_exactly) {
  bnk_context *ctx = test_context();
  const int64_t spatial[2] = {3, 5};
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 4, 2, 2, spatial), BNK_SUCCESS);
  float x[120], y[120], beta_host[2] = {0.25f, -1.75f}, gamma_host[2] = {3.0f, 0.5f};
  for (int i = 0; i < 120; ++i) x[i] = (i / 15) % 2 == 0 ? 12345.678f : -0.001f;
  float *x_dev = dev_alloc(sizeof x), *y_dev = dev_alloc(sizeof y);
  float *beta = dev_alloc(8), *gamma = dev_alloc(8), *save_invstd = dev_alloc(8);
  dev_upload(x_dev, x, sizeof x);
  dev_upload(beta, beta_host, 8);
  dev_upload(gamma, gamma_host, 8);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &desc, &ws_bytes), BNK_SUCCESS);
  void *ws = dev_alloc(ws_bytes);
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(y_dev, sizeof y);
    cr_assert_eq(bnk_forward_training(ctx, &desc, x_dev, y_dev, gamma, beta, NULL, NULL, NULL, 0.1, 1e-5, NULL,
                                      save_invstd, ws, ws_bytes),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    dev_download(y, y_dev, sizeof y);
    for (int i = 0; i < 120; ++i) cr_expect(y[i] == beta_host[(i / 15) % 2], "y[%d] = %.9g, not beta", i, y[i]);
    float invstd[2];
    dev_download(invstd, save_invstd, 8);
    for (int c = 0; c < 2; ++c)
      cr_expect(invstd[c] == 1.0f / sqrtf(1e-5f), "invstd[%d] = %.9g: variance is not exactly 0", c, invstd[c]);
  }
  dev_free(x_dev);
  dev_free(y_dev);
  dev_free(beta);
  dev_free(gamma);
  dev_free(save_invstd);
  dev_free(ws);
  bnk_context_destroy(ctx);
}

/* One channel of 3 million values at mean offset 1e4: variance to 1e-6 relative. Plain fp32 Welford only
 * reaches ~1e-4 here. */
Test(forward, long_channel_at_offset, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const forward_case cases[] = {
      {BNK_FLOAT32, BNK_NCHW, 3, 1, S2(1000, 1000), 1e4, 1.0, 0, 1, 1e-5, 1.0},
      {BNK_FLOAT32, BNK_NHWC, 3000000, 1, S0, 1e4, 1.0, 0, 1, 1e-5, 1.0},
  };
  for (size_t i = 0; i < 2; ++i) run_training_case(&cases[i], ctx, &rng);
  bnk_context_destroy(ctx);
}
