/* PyTorch's zero-variance rule: with eps = 0, a channel of variance 0 has invstd = 0, so y = beta, dx = 0
 * and dgamma = 0 there, instead of inf and NaN. Every call that derives invstd (training forward and
 * backward, inference forward and backward, folding, the SyncBN merge), in every layout and dtype, on every
 * schedule with bitwise-identical results; the other channels of the same tensors against the reference. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"
#include "tests/reference.h"

#define C 4
/* Channels 0 and 2 are constant in x (and have running_var 0); 1 and 3 are random. */
static int is_constant(int64_t c) { return c % 2 == 0; }
static const double constant_value[C] = {1.5, 0.0, -3.25, 0.0};

/* The forward's tolerances for y (tests/test_forward.c): 1e-5 at unit scale for float32; 1 ulp plus the fp32
 * result's 1e-6 for 16-bit storage. The backward's (tests/test_backward.c) for sums, 1e-5 (|reference| +
 * sqrt(sum of squares)), and for dx. */
#define Y_TOLERANCE 1e-5
#define Y_FP32_FLOOR 1e-6
#define SUM_TOLERANCE 1e-5
#define INVSTD_TOLERANCE 1e-6
#define DX_TOLERANCE 1e-5
#define DX_FP32_ERROR 2e-6

typedef struct zv_case {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n;
  int spatial_dims;
  int64_t spatial[2];
} zv_case;

static const zv_case cases[] = {
    {BNK_FLOAT32, BNK_NCHW, 4, 2, {3, 5}},  {BNK_FLOAT32, BNK_NHWC, 4, 2, {3, 5}},
    {BNK_FLOAT16, BNK_NCHW, 4, 2, {3, 5}},  {BNK_FLOAT16, BNK_NHWC, 4, 2, {3, 5}},
    {BNK_BFLOAT16, BNK_NCHW, 4, 2, {3, 5}}, {BNK_BFLOAT16, BNK_NHWC, 4, 2, {3, 5}},
    {BNK_FLOAT32, BNK_NCHW, 12, 0, {1, 1}}, {BNK_FLOAT16, BNK_NHWC, 12, 0, {1, 1}},
    {BNK_BFLOAT16, BNK_NCHW, 6, 1, {7, 1}},
};

/* The tensors of one case: x with constant channels, a random dy, per-channel parameters. */
typedef struct zv_data {
  bnk_tensor_desc desc;
  int64_t elements;
  char label[96];
  double *x, *dy;
  double gamma[C], beta[C], running_mean[C], running_var[C];
  void *x_dev, *dy_dev, *y_dev, *dx_dev;
  float *gamma_dev, *beta_dev, *running_mean_dev, *running_var_dev;
} zv_data;

static void *upload_storage(bnk_dtype dtype, const double *values, int64_t count) {
  const size_t bytes = (size_t)count * dtype_size(dtype);
  void *host = malloc(bytes), *device = dev_alloc(bytes);
  to_storage(dtype, values, host, count);
  dev_upload(device, host, bytes);
  free(host);
  return device;
}

static void read_storage(bnk_dtype dtype, const void *device, double *out, int64_t count) {
  const size_t bytes = (size_t)count * dtype_size(dtype);
  void *host = malloc(bytes);
  dev_download(host, device, bytes);
  from_storage(dtype, host, out, count);
  free(host);
}

static zv_data make_data(const zv_case *zc, test_rng *rng) {
  zv_data d;
  memset(&d, 0, sizeof d);
  cr_assert_eq(bnk_tensor_desc_init(&d.desc, zc->dtype, zc->layout, zc->n, C, zc->spatial_dims, zc->spatial),
               BNK_SUCCESS);
  format_shape(d.label, sizeof d.label, zc->layout, zc->dtype, zc->n, C, zc->spatial_dims, zc->spatial);
  d.elements = bnk_tensor_desc_elements(&d.desc);
  d.x = malloc((size_t)d.elements * sizeof(double));
  d.dy = malloc((size_t)d.elements * sizeof(double));
  const int64_t spatial = ref_spatial(&d.desc);
  for (int64_t n = 0; n < d.desc.n; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&d.desc, n, c, s);
        d.x[i] = is_constant(c) ? constant_value[c] : round_to_storage(zc->dtype, 1.0 + 2.0 * rng_normal(rng));
        d.dy[i] = round_to_storage(zc->dtype, rng_normal(rng));
      }
  for (int c = 0; c < C; ++c) {
    d.gamma[c] = (double)(float)rng_uniform(rng, 0.5, 1.5);
    d.beta[c] = (double)(float)rng_uniform(rng, -0.5, 0.5);
    d.running_mean[c] = (double)(float)rng_uniform(rng, -1.0, 1.0);
    d.running_var[c] = is_constant(c) ? 0.0 : (double)(float)rng_uniform(rng, 0.5, 2.0);
  }
  d.x_dev = upload_storage(zc->dtype, d.x, d.elements);
  d.dy_dev = upload_storage(zc->dtype, d.dy, d.elements);
  d.y_dev = dev_alloc((size_t)d.elements * dtype_size(zc->dtype));
  d.dx_dev = dev_alloc((size_t)d.elements * dtype_size(zc->dtype));
  d.gamma_dev = dev_floats(d.gamma, C);
  d.beta_dev = dev_floats(d.beta, C);
  d.running_mean_dev = dev_floats(d.running_mean, C);
  d.running_var_dev = dev_floats(d.running_var, C);
  return d;
}

static void free_data(zv_data *d) {
  free(d->x);
  free(d->dy);
  dev_free(d->x_dev);
  dev_free(d->dy_dev);
  dev_free(d->y_dev);
  dev_free(d->dx_dev);
  dev_free(d->gamma_dev);
  dev_free(d->beta_dev);
  dev_free(d->running_mean_dev);
  dev_free(d->running_var_dev);
}

/* y against the reference everywhere, and exactly beta (rounded to the storage type) on constant channels. */
static void expect_y(const zv_data *d, const char *what, const double *got, const double *want) {
  char name[160];
  snprintf(name, sizeof name, "%s: %s", d->label, what);
  if (d->desc.dtype == BNK_FLOAT32) expect_close(name, got, want, d->elements, Y_TOLERANCE, 0.0);
  else expect_within_ulps(name, d->desc.dtype, got, want, d->elements, 1.0, Y_FP32_FLOOR);
  const int64_t spatial = ref_spatial(&d->desc);
  for (int64_t n = 0; n < d->desc.n; ++n)
    for (int64_t c = 0; c < C; c += 2)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&d->desc, n, c, s);
        const double beta = round_to_storage(d->desc.dtype, d->beta[c]);
        cr_expect(got[i] == beta, "%s[%lld] = %.9g, not beta %.9g (channel %lld)", name, (long long)i, got[i], beta,
                  (long long)c);
      }
}

/* dx is exactly 0 on the constant channels (any sign of zero), and within the backward's tolerance of the
 * reference on the others: 1e-5 |gamma| invstd for float32, 1 ulp plus 2e-6 |gamma| invstd for 16-bit. */
static void expect_dx(const zv_data *d, const char *what, const double *dx, const double *want, const double *invstd) {
  const int64_t spatial = ref_spatial(&d->desc);
  for (int64_t n = 0; n < d->desc.n; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&d->desc, n, c, s);
        const double scale = fabs(d->gamma[c]) * invstd[c];
        const double allowed = d->desc.dtype == BNK_FLOAT32
                                   ? DX_TOLERANCE * scale
                                   : storage_ulp(d->desc.dtype, want[i]) + DX_FP32_ERROR * scale;
        if (is_constant(c))
          cr_expect(dx[i] == 0.0, "%s: %s[%lld] = %.9g, not 0 (constant channel %lld)", d->label, what, (long long)i,
                    dx[i], (long long)c);
        else
          cr_expect(fabs(dx[i] - want[i]) <= allowed, "%s: %s[%lld] = %.9g, reference %.9g", d->label, what,
                    (long long)i, dx[i], want[i]);
      }
}

/* sums within SUM_TOLERANCE of the reference (terms t: dy for dbeta, dy xhat for dgamma), and dgamma
 * exactly 0 on the constant channels. */
static void expect_parameter_gradients(const zv_data *d, const char *what, const double *dgamma, const double *dbeta,
                                       const double *dgamma_want, const double *dbeta_want, const double *mean,
                                       const double *invstd) {
  const int64_t spatial = ref_spatial(&d->desc);
  for (int64_t c = 0; c < C; ++c) {
    double beta_squares = 0.0, gamma_squares = 0.0;
    for (int64_t n = 0; n < d->desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&d->desc, n, c, s);
        const double t = d->dy[i] * (d->x[i] - mean[c]) * invstd[c];
        beta_squares += d->dy[i] * d->dy[i];
        gamma_squares += t * t;
      }
    cr_expect(fabs(dbeta[c] - dbeta_want[c]) <= SUM_TOLERANCE * (fabs(dbeta_want[c]) + sqrt(beta_squares)),
              "%s: %s dbeta[%lld] = %.9g, reference %.9g", d->label, what, (long long)c, dbeta[c], dbeta_want[c]);
    cr_expect(fabs(dgamma[c] - dgamma_want[c]) <= SUM_TOLERANCE * (fabs(dgamma_want[c]) + sqrt(gamma_squares)),
              "%s: %s dgamma[%lld] = %.9g, reference %.9g", d->label, what, (long long)c, dgamma[c], dgamma_want[c]);
    if (is_constant(c))
      cr_expect(dgamma[c] == 0.0, "%s: %s dgamma[%lld] = %.9g, not 0", d->label, what, (long long)c, dgamma[c]);
  }
}

/* Everything a schedule produced, as bytes, for the bitwise comparison across schedules. */
typedef struct zv_outputs {
  unsigned char *bytes;
  size_t size;
} zv_outputs;

static void append(zv_outputs *o, const void *device, size_t bytes) {
  o->bytes = realloc(o->bytes, o->size + bytes);
  dev_download(o->bytes + o->size, device, bytes);
  o->size += bytes;
}

static void expect_same_as_first(const zv_data *d, zv_outputs *first, zv_outputs *now, int schedule) {
  if (schedule == 0) {
    *first = *now;
    return;
  }
  cr_expect_eq(now->size, first->size);
  char what[160];
  snprintf(what, sizeof what, "%s: outputs under schedule %s", d->label, schedule_name(schedule));
  expect_bitwise_equal(what, first->bytes, now->bytes, now->size);
  free(now->bytes);
}

/* Training forward (momentum 0.1) then its backward, with eps = 0. */
static void run_training(const zv_data *d, bnk_context *ctx) {
  double mean[C], var[C], var_unbiased[C], invstd[C], rm[C], rv[C];
  ref_channel_stats(&d->desc, d->x, mean, var, var_unbiased);
  for (int c = 0; c < C; ++c) {
    invstd[c] = ref_invstd(var[c], 0.0);
    rm[c] = d->running_mean[c];
    rv[c] = d->running_var[c];
  }
  ref_running_update(C, 0.1, mean, var_unbiased, rm, rv);
  double *y_want = malloc((size_t)d->elements * sizeof(double));
  ref_normalize(&d->desc, d->x, mean, var, 0.0, d->gamma, d->beta, y_want);

  size_t forward_bytes = 0, backward_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &d->desc, &forward_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &d->desc, &backward_bytes), BNK_SUCCESS);
  void *forward_ws = dev_alloc(forward_bytes), *backward_ws = dev_alloc(backward_bytes);
  float *save_mean = dev_alloc(C * 4), *save_invstd = dev_alloc(C * 4), *dgamma = dev_alloc(C * 4);
  float *dbeta = dev_alloc(C * 4), *running_mean = dev_alloc(C * 4), *running_var = dev_alloc(C * 4);
  double *got = malloc((size_t)d->elements * sizeof(double)), *dx_want = malloc((size_t)d->elements * sizeof(double));
  zv_outputs first = {NULL, 0};
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(d->y_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    dev_poison(d->dx_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    dev_poison(save_mean, C * 4);
    dev_poison(save_invstd, C * 4);
    dev_poison(dgamma, C * 4);
    dev_poison(dbeta, C * 4);
    dev_upload(running_mean,
               (float[C]){(float)d->running_mean[0], (float)d->running_mean[1], (float)d->running_mean[2],
                          (float)d->running_mean[3]},
               C * 4);
    dev_upload(running_var,
               (float[C]){(float)d->running_var[0], (float)d->running_var[1], (float)d->running_var[2],
                          (float)d->running_var[3]},
               C * 4);
    cr_assert_eq(bnk_forward_training(ctx, &d->desc, d->x_dev, d->y_dev, d->gamma_dev, d->beta_dev, running_mean,
                                      running_var, NULL, 0.1, 0.0, save_mean, save_invstd, forward_ws, forward_bytes),
                 BNK_SUCCESS, "%s: %s", d->label, bnk_last_error_message());
    cr_assert_eq(bnk_backward(ctx, &d->desc, d->x_dev, d->dy_dev, d->dx_dev, d->gamma_dev, dgamma, dbeta, save_mean,
                              save_invstd, backward_ws, backward_bytes),
                 BNK_SUCCESS, "%s: %s", d->label, bnk_last_error_message());

    read_storage(d->desc.dtype, d->y_dev, got, d->elements);
    expect_y(d, "training y", got, y_want);
    double got_mean[C], got_invstd[C], got_rm[C], got_rv[C], got_dgamma[C], got_dbeta[C];
    dev_read_floats(save_mean, got_mean, C);
    dev_read_floats(save_invstd, got_invstd, C);
    dev_read_floats(running_mean, got_rm, C);
    dev_read_floats(running_var, got_rv, C);
    for (int c = 0; c < C; ++c) {
      if (is_constant(c)) {
        cr_expect(got_invstd[c] == 0.0, "%s: save_invstd[%d] = %.9g, not 0", d->label, c, got_invstd[c]);
        cr_expect(got_mean[c] == constant_value[c], "%s: save_mean[%d] = %.9g", d->label, c, got_mean[c]);
      } else {
        cr_expect(fabs(got_invstd[c] - invstd[c]) <= INVSTD_TOLERANCE * invstd[c],
                  "%s: save_invstd[%d] = %.9g, reference %.9g", d->label, c, got_invstd[c], invstd[c]);
      }
    }
    expect_close("running_mean", got_rm, rm, C, 1e-6, 2e-6);
    expect_close("running_var", got_rv, rv, C, 1e-7, 2e-6);

    /* The backward's reference takes the statistics the forward saved, as the kernels do. */
    double dgamma_want[C], dbeta_want[C];
    ref_backward(&d->desc, d->x, d->dy, got_mean, got_invstd, d->gamma, dx_want, dgamma_want, dbeta_want);
    read_storage(d->desc.dtype, d->dx_dev, got, d->elements);
    expect_dx(d, "training dx", got, dx_want, got_invstd);
    dev_read_floats(dgamma, got_dgamma, C);
    dev_read_floats(dbeta, got_dbeta, C);
    expect_parameter_gradients(d, "training", got_dgamma, got_dbeta, dgamma_want, dbeta_want, got_mean, got_invstd);

    zv_outputs now = {NULL, 0};
    append(&now, d->y_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    append(&now, d->dx_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    append(&now, save_invstd, C * 4);
    append(&now, running_var, C * 4);
    append(&now, dgamma, C * 4);
    expect_same_as_first(d, &first, &now, schedule);
  }
  free(first.bytes);
  free(got);
  free(dx_want);
  free(y_want);
  dev_free(forward_ws);
  dev_free(backward_ws);
  dev_free(save_mean);
  dev_free(save_invstd);
  dev_free(dgamma);
  dev_free(dbeta);
  dev_free(running_mean);
  dev_free(running_var);
}

/* Inference forward and backward with running_var = 0 on the constant channels and eps = 0. */
static void run_inference(const zv_data *d, bnk_context *ctx) {
  double invstd[C];
  for (int c = 0; c < C; ++c) invstd[c] = ref_invstd(d->running_var[c], 0.0);
  double *y_want = malloc((size_t)d->elements * sizeof(double)), *got = malloc((size_t)d->elements * sizeof(double));
  ref_normalize(&d->desc, d->x, d->running_mean, d->running_var, 0.0, d->gamma, d->beta, y_want);
  double dgamma_want[C], dbeta_want[C];
  double *dx_want = malloc((size_t)d->elements * sizeof(double));
  ref_backward_inference(&d->desc, d->x, d->dy, d->running_mean, d->running_var, 0.0, d->gamma, dx_want, dgamma_want,
                         dbeta_want);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_backward_workspace_size(ctx, &d->desc, &ws_bytes), BNK_SUCCESS);
  void *ws = dev_alloc(ws_bytes);
  float *dgamma = dev_alloc(C * 4), *dbeta = dev_alloc(C * 4);
  zv_outputs first = {NULL, 0};
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(d->y_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    dev_poison(d->dx_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    dev_poison(dgamma, C * 4);
    dev_poison(dbeta, C * 4);
    cr_assert_eq(bnk_forward_inference(ctx, &d->desc, d->x_dev, d->y_dev, d->gamma_dev, d->beta_dev,
                                       d->running_mean_dev, d->running_var_dev, 0.0),
                 BNK_SUCCESS, "%s: %s", d->label, bnk_last_error_message());
    cr_assert_eq(bnk_backward_inference(ctx, &d->desc, d->x_dev, d->dy_dev, d->dx_dev, d->gamma_dev, dgamma, dbeta,
                                        d->running_mean_dev, d->running_var_dev, 0.0, ws, ws_bytes),
                 BNK_SUCCESS, "%s: %s", d->label, bnk_last_error_message());
    read_storage(d->desc.dtype, d->y_dev, got, d->elements);
    expect_y(d, "inference y", got, y_want);
    read_storage(d->desc.dtype, d->dx_dev, got, d->elements);
    expect_dx(d, "inference dx", got, dx_want, invstd);
    double got_dgamma[C], got_dbeta[C];
    dev_read_floats(dgamma, got_dgamma, C);
    dev_read_floats(dbeta, got_dbeta, C);
    expect_parameter_gradients(d, "inference", got_dgamma, got_dbeta, dgamma_want, dbeta_want, d->running_mean, invstd);
    zv_outputs now = {NULL, 0};
    append(&now, d->y_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    append(&now, d->dx_dev, (size_t)d->elements * dtype_size(d->desc.dtype));
    append(&now, dgamma, C * 4);
    expect_same_as_first(d, &first, &now, schedule);
  }
  free(first.bytes);
  free(y_want);
  free(dx_want);
  free(got);
  dev_free(ws);
  dev_free(dgamma);
  dev_free(dbeta);
}

/* SyncBN over two ranks holding halves of the batch: the merge gives invstd 0 on the constant channels, and
 * bnk_normalize with the merged statistics gives beta there. */
static void run_merge(const zv_data *d, bnk_context *ctx) {
  double mean[C], var[C];
  ref_channel_stats(&d->desc, d->x, mean, var, NULL);
  double *y_want = malloc((size_t)d->elements * sizeof(double)), *got = malloc((size_t)d->elements * sizeof(double));
  ref_normalize(&d->desc, d->x, mean, var, 0.0, d->gamma, d->beta, y_want);
  bnk_tensor_desc half = d->desc;
  half.n = d->desc.n / 2;
  const int64_t half_elements = bnk_tensor_desc_elements(&half);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_batch_stats_workspace_size(ctx, &half, &ws_bytes), BNK_SUCCESS);
  void *ws = dev_alloc(ws_bytes);
  double *gathered = dev_alloc(2 * BNK_PARTIALS_PER_CHANNEL * C * sizeof(double));
  float *merged_mean = dev_alloc(C * 4), *merged_invstd = dev_alloc(C * 4);
  const size_t element_bytes = dtype_size(d->desc.dtype);
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(d->y_dev, (size_t)d->elements * element_bytes);
    dev_poison(merged_invstd, C * 4);
    for (int r = 0; r < 2; ++r)
      cr_assert_eq(bnk_batch_stats(ctx, &half, (const char *)d->x_dev + (size_t)(r * half_elements) * element_bytes,
                                   gathered + r * BNK_PARTIALS_PER_CHANNEL * C, ws, ws_bytes),
                   BNK_SUCCESS, "%s", bnk_last_error_message());
    cr_assert_eq(bnk_merge_stats(ctx, C, 2, gathered, NULL, NULL, NULL, 0.1, 0.0, merged_mean, merged_invstd),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    for (int r = 0; r < 2; ++r) {
      const size_t offset = (size_t)(r * half_elements) * element_bytes;
      cr_assert_eq(bnk_normalize(ctx, &half, (const char *)d->x_dev + offset, (char *)d->y_dev + offset, d->gamma_dev,
                                 d->beta_dev, merged_mean, merged_invstd),
                   BNK_SUCCESS, "%s", bnk_last_error_message());
    }
    double invstd[C];
    dev_read_floats(merged_invstd, invstd, C);
    for (int c = 0; c < C; c += 2)
      cr_expect(invstd[c] == 0.0, "%s: merged invstd[%d] = %.9g, not 0", d->label, c, invstd[c]);
    for (int c = 1; c < C; c += 2)
      cr_expect(fabs(invstd[c] - ref_invstd(var[c], 0.0)) <= INVSTD_TOLERANCE * ref_invstd(var[c], 0.0),
                "%s: merged invstd[%d] = %.9g, reference %.9g", d->label, c, invstd[c], ref_invstd(var[c], 0.0));
    read_storage(d->desc.dtype, d->y_dev, got, d->elements);
    expect_y(d, "merged y", got, y_want);
  }
  free(y_want);
  free(got);
  dev_free(ws);
  dev_free(gathered);
  dev_free(merged_mean);
  dev_free(merged_invstd);
}

Test(zero_variance, training_inference_and_merge_in_every_layout_and_dtype, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    zv_data d = make_data(&cases[i], &rng);
    run_training(&d, ctx);
    run_inference(&d, ctx);
    run_merge(&d, ctx);
    free_data(&d);
  }
  bnk_context_destroy(ctx);
}

/* Folding takes the same rule: scale 0 and shift beta (bnk_inference_params); a zero weight row and bias beta
 * (bnk_fold_conv), for every weight dtype. */
Test(zero_variance, folding) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  double gamma[C], beta[C], mean[C], var[C], bias[C];
  for (int c = 0; c < C; ++c) {
    gamma[c] = (double)(float)rng_uniform(&rng, 0.5, 1.5);
    beta[c] = (double)(float)rng_uniform(&rng, -0.5, 0.5);
    mean[c] = (double)(float)rng_uniform(&rng, -1.0, 1.0);
    var[c] = is_constant(c) ? 0.0 : (double)(float)rng_uniform(&rng, 0.5, 2.0);
    bias[c] = (double)(float)rng_uniform(&rng, -1.0, 1.0);
  }
  float *gamma_dev = dev_floats(gamma, C), *beta_dev = dev_floats(beta, C), *mean_dev = dev_floats(mean, C);
  float *var_dev = dev_floats(var, C), *bias_dev = dev_floats(bias, C);
  float *scale = dev_alloc(C * 4), *shift = dev_alloc(C * 4), *bias_out = dev_alloc(C * 4);
  cr_assert_eq(bnk_inference_params(ctx, C, gamma_dev, beta_dev, mean_dev, var_dev, 0.0, scale, shift), BNK_SUCCESS,
               "%s", bnk_last_error_message());
  double got_scale[C], got_shift[C];
  dev_read_floats(scale, got_scale, C);
  dev_read_floats(shift, got_shift, C);
  for (int c = 0; c < C; ++c) {
    const double want = gamma[c] * ref_invstd(var[c], 0.0);
    cr_expect(fabs(got_scale[c] - want) <= 1e-6 * fabs(want), "scale[%d] = %.9g, reference %.9g", c, got_scale[c],
              want);
    if (is_constant(c))
      cr_expect(got_scale[c] == 0.0 && got_shift[c] == (float)beta[c], "scale[%d] = %.9g, shift %.9g, beta %.9g", c,
                got_scale[c], got_shift[c], beta[c]);
  }
  enum { C_IN = 3 };
  double weight[C * C_IN];
  for (int i = 0; i < C * C_IN; ++i) weight[i] = rng_uniform(&rng, -1.0, 1.0);
  const int64_t kernel[2] = {1, 1};
  for (int dtype = BNK_FLOAT32; dtype <= BNK_BFLOAT16; ++dtype) {
    void *weight_in = upload_storage((bnk_dtype)dtype, weight, C * C_IN);
    void *weight_out = dev_alloc(C * C_IN * dtype_size((bnk_dtype)dtype));
    dev_poison(bias_out, C * 4);
    cr_assert_eq(bnk_fold_conv(ctx, C, C_IN, 2, kernel, BNK_WEIGHTS_KCRS, (bnk_dtype)dtype, weight_in, bias_dev,
                               gamma_dev, beta_dev, mean_dev, var_dev, 0.0, weight_out, bias_out),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    double got_weight[C * C_IN], got_bias[C];
    read_storage((bnk_dtype)dtype, weight_out, got_weight, C * C_IN);
    dev_read_floats(bias_out, got_bias, C);
    for (int c = 0; c < C; c += 2) {
      cr_expect(got_bias[c] == (float)beta[c], "%s: bias_out[%d] = %.9g, not beta %.9g", dtype_name((bnk_dtype)dtype),
                c, got_bias[c], beta[c]);
      for (int i = 0; i < C_IN; ++i)
        cr_expect(got_weight[c * C_IN + i] == 0.0, "%s: weight_out[%d][%d] = %.9g, not 0", dtype_name((bnk_dtype)dtype),
                  c, i, got_weight[c * C_IN + i]);
    }
    dev_free(weight_in);
    dev_free(weight_out);
  }
  dev_free(gamma_dev);
  dev_free(beta_dev);
  dev_free(mean_dev);
  dev_free(var_dev);
  dev_free(bias_dev);
  dev_free(scale);
  dev_free(shift);
  dev_free(bias_out);
  bnk_context_destroy(ctx);
}

/* eps is rounded to float32, but a positive eps stays positive: 1e-50 becomes FLT_TRUE_MIN, so a constant
 * channel keeps a finite, non-zero invstd (y = beta all the same, as x - mean = 0); above FLT_MAX it is
 * rejected. */
Test(zero_variance, tiny_eps_stays_positive) {
  bnk_context *ctx = test_context();
  const int64_t spatial[1] = {6};
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 1, 1, spatial), BNK_SUCCESS);
  float x[12];
  for (int i = 0; i < 12; ++i) x[i] = 0.75f;
  float *x_dev = dev_alloc(sizeof x), *y_dev = dev_alloc(sizeof x), *save_invstd = dev_alloc(4);
  dev_upload(x_dev, x, sizeof x);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &desc, &ws_bytes), BNK_SUCCESS);
  void *ws = dev_alloc(ws_bytes);
  dev_poison(save_invstd, 4);
  cr_assert_eq(bnk_forward_training(ctx, &desc, x_dev, y_dev, NULL, NULL, NULL, NULL, NULL, 0.1, 1e-50, NULL,
                                    save_invstd, ws, ws_bytes),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  float invstd = 0.0f, y[12];
  dev_download(&invstd, save_invstd, 4);
  const double want = 1.0 / sqrt((double)FLT_TRUE_MIN); /* 2^74.5 */
  cr_expect(fabs(invstd - want) <= 1e-6 * want, "invstd = %.9g, want 1 / sqrt(FLT_TRUE_MIN) = %.9g", invstd, want);
  dev_download(y, y_dev, sizeof y);
  for (int i = 0; i < 12; ++i) cr_expect(y[i] == 0.0f, "y[%d] = %.9g, not 0 (beta)", i, y[i]);

  void *before = dev_snapshot(save_invstd, 4);
  expect_rejection(bnk_forward_training(ctx, &desc, x_dev, y_dev, NULL, NULL, NULL, NULL, NULL, 0.1, 1e300, NULL,
                                        save_invstd, ws, ws_bytes),
                   BNK_ERROR_INVALID_VALUE, "eps must be at most FLT_MAX (3.4028234663852886e+38), got 1e+300");
  expect_unchanged("save_invstd", save_invstd, before, 4);
  free(before);
  dev_free(x_dev);
  dev_free(y_dev);
  dev_free(save_invstd);
  dev_free(ws);
  bnk_context_destroy(ctx);
}
