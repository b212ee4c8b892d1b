/* The backward, training and inference, against the float64 reference on every schedule, for the shapes
 * and data of the forward sweep; a finite-difference check of the reference itself; optional outputs, in
 * place, empty batches and the argument rules. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/gradient_check.h"
#include "tests/harness.h"
#include "tests/reference.h"

typedef struct backward_case {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n, c;
  int spatial_dims;
  int64_t spatial[3];
  double offset; /* common offset of every channel's mean of x */
  double spread; /* standard deviation of x; 0 makes every channel constant */
  int misalign;  /* x, dy and dx start one element past a 256-byte boundary */
  int affine;    /* gamma given; otherwise NULL (1) */
} backward_case;

/* The eps of the forward whose statistics the training backward takes, and of the inference backward. */
#define EPS 1e-5

/* Tolerances against the float64 reference, which takes the same float32 statistics as the kernels:
 *  - dbeta, dgamma: |error| <= 1e-5 (|reference| + sqrt(sum of squared terms)). That is relative 1e-5 where
 *    the sum is large. The terms (dy, dy xhat) have random signs, so a channel's sum can land near zero by
 *    chance, where a relative bound means nothing; sqrt(sum t^2) = sqrt(M) rms(t) is the size such a sum
 *    has, and the scale of the fp32 rounding errors made while summing those terms.
 *  - dx, float32: |error| <= 1e-5 |gamma| invstd, i.e. 1e-5 at unit scale (dx is gamma invstd times terms of
 *    magnitude up to ~5, each rounded a few times in fp32), scaled by the factor dx carries (316 for a
 *    constant channel with eps 1e-5).
 *  - dx, 16-bit: 1 ulp of the rounded reference, plus the error of the fp32 result before its rounding
 *    (2e-6 |gamma| invstd). The ulp alone would fail only where |dx| < ~1e-3 (f16) or ~1e-4 (bf16): an
 *    ulp there is finer than fp32 arithmetic on O(1) terms can be.
 *  - inference dx = dy gamma invstd: relative 1e-6 for float32 (three roundings and the fp32 square root);
 *    1 ulp of the rounded reference for 16-bit (no cancellation, so no floor is needed).
 * tests/gradient_check.h holds them (SUM_TOLERANCE, DX_TOLERANCE, DX_FP32_ERROR, INFERENCE_DX_TOLERANCE). */

static void describe(const backward_case *bc, char *out, size_t size) {
  char shape[96];
  format_shape(shape, sizeof shape, bc->layout, bc->dtype, bc->n, bc->c, bc->spatial_dims, bc->spatial);
  snprintf(out, size, "%s offset %g spread %g%s%s", shape, bc->offset, bc->spread, bc->misalign ? " misaligned" : "",
           bc->affine ? "" : " no gamma");
}

typedef struct backward_data {
  bnk_tensor_desc desc;
  int64_t elements;
  size_t bytes;          /* of one tensor */
  double *x, *dy;        /* the stored values, as doubles */
  double *gamma;         /* NULL without affine */
  double *mean, *invstd; /* the float32 statistics of the training forward, as doubles */
  double *running_mean, *running_var;
  void *dy_storage; /* host copy of dy, to restore it after an in-place call */
  unsigned char *x_base, *dy_base, *dx_base;
  void *x_dev, *dy_dev, *dx_dev;
} backward_data;

/* Rounds values to the storage type in place and uploads them to a new buffer, skew bytes into it. */
static void *upload_stored(bnk_dtype dtype, double *values, int64_t count, size_t skew, unsigned char **base,
                           void **host_copy) {
  const size_t es = dtype_size(dtype);
  void *host = malloc((size_t)(count + 1) * es);
  to_storage(dtype, values, host, count);
  from_storage(dtype, host, values, count);
  *base = dev_alloc((size_t)count * es + es + 1);
  dev_upload(*base + skew, host, (size_t)count * es);
  if (host_copy != NULL) *host_copy = host;
  else free(host);
  return *base + skew;
}

static backward_data make_data(const backward_case *bc, test_rng *rng) {
  backward_data d;
  memset(&d, 0, sizeof d);
  cr_assert_eq(bnk_tensor_desc_init(&d.desc, bc->dtype, bc->layout, bc->n, bc->c, bc->spatial_dims, bc->spatial),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  const int64_t c = bc->c;
  d.elements = bnk_tensor_desc_elements(&d.desc);
  d.bytes = (size_t)d.elements * dtype_size(bc->dtype);
  d.x = malloc((size_t)(d.elements + 1) * sizeof(double));
  d.dy = malloc((size_t)(d.elements + 1) * sizeof(double));
  double *x_center = malloc((size_t)c * sizeof(double)), *dy_center = malloc((size_t)c * sizeof(double));
  for (int64_t i = 0; i < c; ++i) {
    x_center[i] = bc->offset + rng_uniform(rng, -2.0, 2.0);
    dy_center[i] = rng_uniform(rng, -1.0, 1.0); /* so that dbeta is not always near zero */
  }
  const int64_t spatial = ref_spatial(&d.desc);
  for (int64_t n = 0; n < bc->n; ++n)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t at = ref_offset(&d.desc, n, i, s);
        d.x[at] = x_center[i] + bc->spread * rng_normal(rng);
        d.dy[at] = dy_center[i] + rng_normal(rng);
      }
  free(x_center);
  free(dy_center);
  const size_t skew = bc->misalign ? dtype_size(bc->dtype) : 0;
  d.x_dev = upload_stored(bc->dtype, d.x, d.elements, skew, &d.x_base, NULL);
  d.dy_dev = upload_stored(bc->dtype, d.dy, d.elements, skew, &d.dy_base, &d.dy_storage);
  d.dx_base = dev_alloc(d.bytes + dtype_size(bc->dtype) + 1);
  d.dx_dev = d.dx_base + skew;

  d.mean = malloc((size_t)c * sizeof(double));
  d.invstd = malloc((size_t)c * sizeof(double));
  d.running_mean = malloc((size_t)c * sizeof(double));
  d.running_var = malloc((size_t)c * sizeof(double));
  double *var = malloc((size_t)c * sizeof(double));
  ref_channel_stats(&d.desc, d.x, d.mean, var, NULL);
  for (int64_t i = 0; i < c; ++i) {
    d.mean[i] = (float)d.mean[i];
    d.invstd[i] = (float)(1.0 / sqrt(var[i] + EPS));
    d.running_mean[i] = (float)(bc->offset + rng_uniform(rng, -1.0, 1.0));
    d.running_var[i] = (float)rng_uniform(rng, 0.5, 2.0);
  }
  free(var);
  if (bc->affine) {
    d.gamma = malloc((size_t)c * sizeof(double));
    for (int64_t i = 0; i < c; ++i) d.gamma[i] = (float)rng_uniform(rng, 0.5, 1.5);
  }
  return d;
}

static void free_data(backward_data *d) {
  free(d->x);
  free(d->dy);
  free(d->gamma);
  free(d->mean);
  free(d->invstd);
  free(d->running_mean);
  free(d->running_var);
  free(d->dy_storage);
  dev_free(d->x_base);
  dev_free(d->dy_base);
  dev_free(d->dx_base);
}

typedef struct device_params {
  float *gamma, *save_mean, *save_invstd, *running_mean, *running_var, *dgamma, *dbeta;
  void *workspace;
  size_t workspace_bytes;
} device_params;

static device_params upload_params(const backward_data *d, bnk_context *ctx) {
  const int64_t c = d->desc.c;
  device_params p;
  p.gamma = dev_floats(d->gamma, c);
  p.save_mean = dev_floats(d->mean, c);
  p.save_invstd = dev_floats(d->invstd, c);
  p.running_mean = dev_floats(d->running_mean, c);
  p.running_var = dev_floats(d->running_var, c);
  p.dgamma = dev_alloc((size_t)c * 4);
  p.dbeta = dev_alloc((size_t)c * 4);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &d->desc, &p.workspace_bytes), BNK_SUCCESS, "%s",
               bnk_last_error_message());
  p.workspace = dev_alloc(p.workspace_bytes);
  return p;
}

static void free_params(device_params *p) {
  dev_free(p->gamma);
  dev_free(p->save_mean);
  dev_free(p->save_invstd);
  dev_free(p->running_mean);
  dev_free(p->running_var);
  dev_free(p->dgamma);
  dev_free(p->dbeta);
  dev_free(p->workspace);
}

static void poison_outputs(const backward_data *d, const device_params *p) {
  dev_poison(d->dx_dev, d->bytes);
  dev_poison(p->dgamma, (size_t)d->desc.c * 4);
  dev_poison(p->dbeta, (size_t)d->desc.c * 4);
  dev_poison(p->workspace, p->workspace_bytes);
}

/* Outputs of one call as bytes: dx, then dgamma and dbeta. */
typedef struct output_bytes {
  unsigned char *dx, *params;
} output_bytes;

static output_bytes read_outputs(const backward_data *d, const device_params *p) {
  const size_t c_bytes = (size_t)d->desc.c * 4;
  output_bytes o = {malloc(d->bytes + 1), malloc(2 * c_bytes)};
  dev_download(o.dx, d->dx_dev, d->bytes);
  dev_download(o.params, p->dgamma, c_bytes);
  dev_download(o.params + c_bytes, p->dbeta, c_bytes);
  return o;
}

static void free_outputs(output_bytes *o) {
  free(o->dx);
  free(o->params);
}

static void float_bytes_to_doubles(const unsigned char *bytes, double *out, int64_t count) {
  from_storage(BNK_FLOAT32, bytes, out, count);
}

static void run_training_case(const backward_case *bc, bnk_context *ctx, test_rng *rng) {
  char label[160], what[200];
  describe(bc, label, sizeof label);
  backward_data d = make_data(bc, rng);
  const int64_t c = bc->c;
  double *dx_ref = malloc((size_t)(d.elements + 1) * sizeof(double)), *got = malloc((size_t)(d.elements + 1) * 8);
  double *dgamma_ref = malloc((size_t)c * 8), *dbeta_ref = malloc((size_t)c * 8), *got_c = malloc((size_t)c * 16);
  ref_backward(&d.desc, d.x, d.dy, d.mean, d.invstd, d.gamma, dx_ref, dgamma_ref, dbeta_ref);
  double *scale = malloc((size_t)c * sizeof(double));
  for (int64_t i = 0; i < c; ++i) scale[i] = (d.gamma ? fabs(d.gamma[i]) : 1.0) * d.invstd[i];

  device_params p = upload_params(&d, ctx);
  output_bytes first = {NULL, NULL};
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    poison_outputs(&d, &p);
    const bnk_status status = bnk_backward(ctx, &d.desc, d.x_dev, d.dy_dev, d.dx_dev, p.gamma, p.dgamma, p.dbeta,
                                           p.save_mean, p.save_invstd, p.workspace, p.workspace_bytes);
    cr_assert_eq(status, BNK_SUCCESS, "%s [%s]: %s: %s", label, schedule_name(schedule), bnk_status_name(status),
                 bnk_last_error_message());
    output_bytes now = read_outputs(&d, &p);
    snprintf(what, sizeof what, "%s [%s]", label, schedule_name(schedule));
    from_storage(bc->dtype, now.dx, got, d.elements);
    check_training_dx(what, &d.desc, got, dx_ref, scale);
    float_bytes_to_doubles(now.params, got_c, 2 * c);
    check_gradient_sums(what, &d.desc, got_c, got_c + c, d.dy, d.x, d.mean, d.invstd, dgamma_ref, dbeta_ref);
    if (schedule == 0) {
      first = now;
    } else {
      expect_bitwise_equal("training dx", first.dx, now.dx, d.bytes);
      expect_bitwise_equal("dgamma and dbeta", first.params, now.params, (size_t)c * 8);
      free_outputs(&now);
    }
  }
  free_outputs(&first);
  free_params(&p);
  free(dx_ref);
  free(got);
  free(dgamma_ref);
  free(dbeta_ref);
  free(got_c);
  free(scale);
  free_data(&d);
}

/* The inference backward with all outputs, then its two cheaper modes, which must agree bit for bit: only
 * the elementwise pass (no x, no workspace), and dbeta alone (no x). */
static void run_inference_case(const backward_case *bc, bnk_context *ctx, test_rng *rng) {
  char label[160], what[200];
  describe(bc, label, sizeof label);
  backward_data d = make_data(bc, rng);
  const int64_t c = bc->c;
  const size_t c_bytes = (size_t)c * 4;
  double *dx_ref = malloc((size_t)(d.elements + 1) * sizeof(double)), *got = malloc((size_t)(d.elements + 1) * 8);
  double *dgamma_ref = malloc((size_t)c * 8), *dbeta_ref = malloc((size_t)c * 8), *got_c = malloc((size_t)c * 16);
  ref_backward_inference(&d.desc, d.x, d.dy, d.running_mean, d.running_var, EPS, d.gamma, dx_ref, dgamma_ref,
                         dbeta_ref);
  double *invstd = malloc((size_t)c * sizeof(double));
  for (int64_t i = 0; i < c; ++i) invstd[i] = 1.0 / sqrt(d.running_var[i] + EPS);
  /* 16-bit: 1 ulp of the rounded reference (check_inference_dx takes the ulp of the value it is given). */
  if (bc->dtype != BNK_FLOAT32)
    for (int64_t i = 0; i < d.elements; ++i) dx_ref[i] = round_to_storage(bc->dtype, dx_ref[i]);

  device_params p = upload_params(&d, ctx);
  output_bytes first = {NULL, NULL};
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    snprintf(what, sizeof what, "inference %s [%s]", label, schedule_name(schedule));
    poison_outputs(&d, &p);
    bnk_status status = bnk_backward_inference(ctx, &d.desc, d.x_dev, d.dy_dev, d.dx_dev, p.gamma, p.dgamma, p.dbeta,
                                               p.running_mean, p.running_var, EPS, p.workspace, p.workspace_bytes);
    cr_assert_eq(status, BNK_SUCCESS, "%s: %s", what, bnk_last_error_message());
    output_bytes now = read_outputs(&d, &p);
    from_storage(bc->dtype, now.dx, got, d.elements);
    check_inference_dx(what, &d.desc, got, dx_ref);
    float_bytes_to_doubles(now.params, got_c, 2 * c);
    check_gradient_sums(what, &d.desc, got_c, got_c + c, d.dy, d.x, d.running_mean, invstd, dgamma_ref, dbeta_ref);

    dev_poison(d.dx_dev, d.bytes);
    status = bnk_backward_inference(ctx, &d.desc, NULL, d.dy_dev, d.dx_dev, p.gamma, NULL, NULL, p.running_mean,
                                    p.running_var, EPS, NULL, 0);
    cr_assert_eq(status, BNK_SUCCESS, "%s, dx only: %s", what, bnk_last_error_message());
    output_bytes dx_only = read_outputs(&d, &p);
    expect_bitwise_equal("inference dx without dgamma and dbeta", now.dx, dx_only.dx, d.bytes);
    free_outputs(&dx_only);

    dev_poison(p.dbeta, c_bytes);
    status = bnk_backward_inference(ctx, &d.desc, NULL, d.dy_dev, NULL, p.gamma, NULL, p.dbeta, p.running_mean,
                                    p.running_var, EPS, p.workspace, p.workspace_bytes);
    cr_assert_eq(status, BNK_SUCCESS, "%s, dbeta only: %s", what, bnk_last_error_message());
    output_bytes dbeta_only = read_outputs(&d, &p);
    expect_bitwise_equal("inference dbeta without x", now.params + c_bytes, dbeta_only.params + c_bytes, c_bytes);
    free_outputs(&dbeta_only);

    if (schedule == 0) {
      first = now;
    } else {
      expect_bitwise_equal("inference dx", first.dx, now.dx, d.bytes);
      expect_bitwise_equal("inference dgamma and dbeta", first.params, now.params, 2 * c_bytes);
      free_outputs(&now);
    }
  }
  free_outputs(&first);
  free_params(&p);
  free(dx_ref);
  free(got);
  free(dgamma_ref);
  free(dbeta_ref);
  free(got_c);
  free(invstd);
  free_data(&d);
}

/* The shapes of the forward sweep: both layouts, ranks 1-D to 3-D, odd and prime sizes, C = 1, S = 1,
 * N = 1, vectorizable and not, misaligned pointers, several pieces per channel, C > 65535; and the same
 * for 16-bit storage, with and without the 16-byte path. */
static const backward_case sweep[] = {
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(5, 7), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 2, 3, S2(5, 7), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 4, 16, S2(8, 8), 0.5, 2.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 4, 16, S2(8, 8), -0.5, 0.5, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 37, 5, S0, 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 1000, 1, S0, 3.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 3, 4, S1(33), 0.0, 1.0, 0, 0},
    {BNK_FLOAT32, BNK_NHWC, 3, 4, S1(33), 0.0, 1.0, 0, 0},
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S3(4, 5, 6), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 2, 3, S3(4, 5, 6), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 7, 1, S2(9, 9), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 64, 13, S2(1, 1), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 1, 5, S2(17, 3), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 1, 5, S2(17, 3), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 3, 7, S2(11, 13), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(16, 16), 0.0, 1.0, 1, 1},
    {BNK_FLOAT32, BNK_NHWC, 2, 8, S2(4, 4), 0.0, 1.0, 1, 1},
    {BNK_FLOAT32, BNK_NCHW, 8, 3, S2(64, 64), 1.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 16, 3, S2(64, 64), 1.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 3, 2048, S2(7, 7), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 3, 64, S2(7, 7), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 2, 65537, S0, 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 2, 65537, S1(3), 0.0, 1.0, 0, 1},
    {BNK_FLOAT16, BNK_NCHW, 4, 3, S2(8, 8), 0.0, 1.0, 0, 1},
    {BNK_FLOAT16, BNK_NHWC, 4, 16, S2(5, 5), 0.0, 1.0, 0, 1},
    {BNK_FLOAT16, BNK_NCHW, 3, 5, S2(7, 9), 1.0, 2.0, 0, 0},
    {BNK_FLOAT16, BNK_NHWC, 2, 8, S2(4, 4), 0.0, 1.0, 1, 1},
    {BNK_FLOAT16, BNK_NCHW, 8, 2, S2(64, 64), 0.0, 1.0, 0, 1},
    {BNK_BFLOAT16, BNK_NCHW, 4, 3, S2(8, 8), 0.0, 1.0, 0, 1},
    {BNK_BFLOAT16, BNK_NHWC, 4, 24, S1(9), 0.0, 1.0, 0, 1},
    {BNK_BFLOAT16, BNK_NCHW, 2, 3, S3(3, 5, 7), 0.0, 1.0, 0, 1},
    {BNK_BFLOAT16, BNK_NCHW, 2, 3, S2(16, 16), 0.0, 1.0, 1, 1},
    {BNK_BFLOAT16, BNK_NHWC, 16, 8, S2(32, 32), 0.0, 1.0, 0, 0},
};

Test(backward, training_sweep, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof sweep / sizeof sweep[0]; ++i) run_training_case(&sweep[i], ctx, &rng);
  bnk_context_destroy(ctx);
}

Test(backward, inference_sweep, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof sweep / sizeof sweep[0]; ++i) run_inference_case(&sweep[i], ctx, &rng);
  bnk_context_destroy(ctx);
}

/* The channels-first dx walk (16-byte vectors whatever S is): S below and past a vector width, 7x7, 14x14,
 * a run longer than a tile, misaligned, and more tiles than the GPU holds blocks. Every dtype. */
static const backward_case walk_shapes[] = {
    {BNK_FLOAT32, BNK_NCHW, 3, 5, S1(3), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 5, 3, S1(9), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 3, 7, S2(7, 7), 0.5, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 2, 6, S2(14, 14), 0.0, 1.0, 0, 0},
    {BNK_FLOAT32, BNK_NCHW, 3, 5, S2(7, 7), 0.0, 1.0, 1, 1},
    {BNK_FLOAT32, BNK_NCHW, 1, 3, S1(4099), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 2, 16, S2(261, 261), 0.0, 1.0, 0, 1},
    /* C x S whole vectors but not S: the sums peel each run's head and tail. */
    {BNK_FLOAT32, BNK_NCHW, 5, 8, S1(9), 0.0, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 4, 24, S1(13), 0.3, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 3, 16, S2(7, 7), 0.0, 1.0, 1, 1},
};

Test(backward, walk_shapes, .timeout = 900) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const bnk_dtype dtypes[] = {BNK_FLOAT32, BNK_FLOAT16, BNK_BFLOAT16};
  for (size_t t = 0; t < 3; ++t)
    for (size_t i = 0; i < sizeof walk_shapes / sizeof walk_shapes[0]; ++i) {
      backward_case bc = walk_shapes[i];
      bc.dtype = dtypes[t];
      run_training_case(&bc, ctx, &rng);
      run_inference_case(&bc, ctx, &rng);
    }
  bnk_context_destroy(ctx);
}

/* Mean offset 1e4 with unit variance (x - mean must not lose the digits) and constant channels (xhat is
 * exactly 0, invstd is 1 / sqrt(eps) ~ 316). */
static const backward_case hard_data[] = {
    {BNK_FLOAT32, BNK_NCHW, 4, 3, S2(32, 32), 1e4, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 4, 3, S2(32, 32), 1e4, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 300, 8, S0, -1e4, 1.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 3, 4, S2(5, 5), 7.0, 0.0, 0, 1},
    {BNK_FLOAT32, BNK_NHWC, 3, 4, S2(5, 5), -3.0, 0.0, 0, 1},
    {BNK_FLOAT16, BNK_NHWC, 3, 8, S2(5, 5), 2.0, 0.0, 0, 1},
    {BNK_FLOAT32, BNK_NCHW, 4, 8, S2(7, 7), 1e4, 1.0, 0, 1},
};

Test(backward, hard_data, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof hard_data / sizeof hard_data[0]; ++i) {
    run_training_case(&hard_data[i], ctx, &rng);
    run_inference_case(&hard_data[i], ctx, &rng);
  }
  bnk_context_destroy(ctx);
}

/* Long channels at mean offset 1e4: dgamma sums ~10^6 products. */
Test(backward, long_channel_at_offset, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const backward_case cases[] = {
      {BNK_FLOAT32, BNK_NCHW, 2, 1, S2(700, 700), 1e4, 1.0, 0, 1},
      {BNK_FLOAT32, BNK_NHWC, 1000000, 1, S0, 1e4, 1.0, 0, 1},
  };
  for (size_t i = 0; i < 2; ++i) run_training_case(&cases[i], ctx, &rng);
  bnk_context_destroy(ctx);
}

/* The backward with the statistics that bnk_forward_training saved (not the test's own), as a user runs it. */
Test(backward, after_forward_training) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const backward_case cases[] = {
      {BNK_FLOAT32, BNK_NCHW, 4, 5, S2(9, 7), 1e4, 1.0, 0, 1},
      {BNK_FLOAT16, BNK_NHWC, 4, 16, S2(6, 6), 0.0, 1.0, 0, 1},
  };
  for (size_t k = 0; k < 2; ++k) {
    backward_data d = make_data(&cases[k], &rng);
    const int64_t c = d.desc.c;
    device_params p = upload_params(&d, ctx);
    size_t forward_bytes = 0;
    cr_assert_eq(bnk_forward_training_workspace_size(ctx, &d.desc, &forward_bytes), BNK_SUCCESS);
    void *forward_workspace = dev_alloc(forward_bytes);
    dev_poison(p.save_mean, (size_t)c * 4);
    dev_poison(p.save_invstd, (size_t)c * 4);
    cr_assert_eq(bnk_forward_training(ctx, &d.desc, d.x_dev, d.dx_dev, p.gamma, NULL, NULL, NULL, NULL, 0.1, EPS,
                                      p.save_mean, p.save_invstd, forward_workspace, forward_bytes),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    dev_read_floats(p.save_mean, d.mean, c);
    dev_read_floats(p.save_invstd, d.invstd, c);
    poison_outputs(&d, &p);
    cr_assert_eq(bnk_backward(ctx, &d.desc, d.x_dev, d.dy_dev, d.dx_dev, p.gamma, p.dgamma, p.dbeta, p.save_mean,
                              p.save_invstd, p.workspace, p.workspace_bytes),
                 BNK_SUCCESS, "%s", bnk_last_error_message());

    double *dx_ref = malloc((size_t)d.elements * 8), *got = malloc((size_t)d.elements * 8);
    double *dgamma_ref = malloc((size_t)c * 8), *dbeta_ref = malloc((size_t)c * 8), *got_c = malloc((size_t)c * 16);
    double *scale = malloc((size_t)c * 8);
    ref_backward(&d.desc, d.x, d.dy, d.mean, d.invstd, d.gamma, dx_ref, dgamma_ref, dbeta_ref);
    for (int64_t i = 0; i < c; ++i) scale[i] = d.gamma[i] * d.invstd[i];
    output_bytes now = read_outputs(&d, &p);
    from_storage(d.desc.dtype, now.dx, got, d.elements);
    check_training_dx("after forward", &d.desc, got, dx_ref, scale);
    float_bytes_to_doubles(now.params, got_c, 2 * c);
    check_gradient_sums("after forward", &d.desc, got_c, got_c + c, d.dy, d.x, d.mean, d.invstd, dgamma_ref, dbeta_ref);
    free_outputs(&now);
    free(dx_ref);
    free(got);
    free(dgamma_ref);
    free(dbeta_ref);
    free(got_c);
    free(scale);
    dev_free(forward_workspace);
    free_params(&p);
    free_data(&d);
  }
  bnk_context_destroy(ctx);
}

/* ---- the reference's own gradients against central differences of the float64 forward ---- */

/* loss = sum(y * w) with y the training forward of x in float64. */
enum { FD_C = 4, FD_ELEMENTS = 3 * FD_C * 6 };

static double reference_loss(const bnk_tensor_desc *desc, const double *x, const double *gamma, const double *beta,
                             const double *w, double eps, double *y) {
  double mean[FD_C], var[FD_C];
  ref_channel_stats(desc, x, mean, var, NULL);
  ref_normalize(desc, x, mean, var, eps, gamma, beta, y);
  double loss = 0.0;
  for (int64_t i = 0; i < bnk_tensor_desc_elements(desc); ++i) loss += y[i] * w[i];
  return loss;
}

/* Central difference of the loss in *value. The step is 1e-6 of values of order 1: truncation error
 * ~1e-12 times the third derivative, cancellation ~1e-16 |loss| / 1e-6 ~ 1e-9; both far below the 1e-7
 * the comparison allows. */
#define FD_STEP 1e-6
#define FD_TOLERANCE 1e-7

static double central_difference(const bnk_tensor_desc *desc, double *x, double *gamma, double *beta, const double *w,
                                 double eps, double *value, double *y) {
  const double saved = *value;
  *value = saved + FD_STEP;
  const double up = reference_loss(desc, x, gamma, beta, w, eps, y);
  *value = saved - FD_STEP;
  const double down = reference_loss(desc, x, gamma, beta, w, eps, y);
  *value = saved;
  return (up - down) / (2.0 * FD_STEP);
}

Test(backward, reference_matches_finite_differences) {
  test_rng rng = rng_fresh();
  const int64_t spatial[2] = {2, 3};
  const bnk_layout layouts[2] = {BNK_NCHW, BNK_NHWC};
  for (int l = 0; l < 2; ++l) {
    bnk_tensor_desc desc;
    cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, layouts[l], 3, FD_C, 2, spatial), BNK_SUCCESS);
    const double eps = 1e-3; /* large enough to matter in invstd */
    double x[FD_ELEMENTS], w[FD_ELEMENTS], y[FD_ELEMENTS], dx[FD_ELEMENTS];
    double gamma[FD_C], beta[FD_C], dgamma[FD_C], dbeta[FD_C], mean[FD_C], var[FD_C], invstd[FD_C];
    for (int i = 0; i < FD_ELEMENTS; ++i) {
      x[i] = 1.0 + 2.0 * rng_normal(&rng);
      w[i] = rng_normal(&rng);
    }
    for (int c = 0; c < FD_C; ++c) {
      gamma[c] = rng_uniform(&rng, 0.5, 1.5);
      beta[c] = rng_uniform(&rng, -0.5, 0.5);
    }
    ref_channel_stats(&desc, x, mean, var, NULL);
    for (int c = 0; c < FD_C; ++c) invstd[c] = 1.0 / sqrt(var[c] + eps);
    ref_backward(&desc, x, w, mean, invstd, gamma, dx, dgamma, dbeta); /* dloss/dy = w */
    for (int i = 0; i < FD_ELEMENTS; ++i) {
      const double fd = central_difference(&desc, x, gamma, beta, w, eps, &x[i], y);
      cr_expect(fabs(fd - dx[i]) <= FD_TOLERANCE, "layout %d: dx[%d] = %.12g, finite difference %.12g", l, i, dx[i],
                fd);
    }
    for (int c = 0; c < FD_C; ++c) {
      const double fd_gamma = central_difference(&desc, x, gamma, beta, w, eps, &gamma[c], y);
      const double fd_beta = central_difference(&desc, x, gamma, beta, w, eps, &beta[c], y);
      cr_expect(fabs(fd_gamma - dgamma[c]) <= FD_TOLERANCE, "layout %d: dgamma[%d] = %.12g, finite difference %.12g", l,
                c, dgamma[c], fd_gamma);
      cr_expect(fabs(fd_beta - dbeta[c]) <= FD_TOLERANCE, "layout %d: dbeta[%d] = %.12g, finite difference %.12g", l, c,
                dbeta[c], fd_beta);
    }
  }
}

/* ---- optional outputs, in place ---- */

/* Leaving out dx, or dgamma and dbeta, or writing dx over dy must not change a bit of what is computed. */
Test(backward, optional_outputs_and_in_place) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const backward_case cases[] = {
      {BNK_FLOAT32, BNK_NCHW, 3, 5, S2(16, 16), 0.0, 1.0, 0, 1},
      {BNK_FLOAT32, BNK_NHWC, 5, 12, S2(3, 3), 0.0, 1.0, 1, 0},
      {BNK_FLOAT16, BNK_NHWC, 4, 16, S1(9), 0.0, 1.0, 0, 1},
      {BNK_BFLOAT16, BNK_NCHW, 2, 3, S2(8, 8), 0.0, 1.0, 0, 1},
      {BNK_FLOAT16, BNK_NCHW, 3, 5, S2(7, 7), 0.0, 1.0, 0, 1},
      {BNK_FLOAT32, BNK_NCHW, 4, 3, S1(3), 0.0, 1.0, 0, 1},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
    char label[160];
    describe(&cases[k], label, sizeof label);
    backward_data d = make_data(&cases[k], &rng);
    const size_t c_bytes = (size_t)d.desc.c * 4;
    device_params p = upload_params(&d, ctx);
#define BACKWARD(dx, dgamma, dbeta)                                                                                  \
  cr_assert_eq(bnk_backward(ctx, &d.desc, d.x_dev, d.dy_dev, dx, p.gamma, dgamma, dbeta, p.save_mean, p.save_invstd, \
                            p.workspace, p.workspace_bytes),                                                         \
               BNK_SUCCESS, "%s: %s", label, bnk_last_error_message())
    poison_outputs(&d, &p);
    BACKWARD(d.dx_dev, p.dgamma, p.dbeta);
    output_bytes full = read_outputs(&d, &p);

    poison_outputs(&d, &p);
    BACKWARD(NULL, p.dgamma, p.dbeta);
    output_bytes no_dx = read_outputs(&d, &p);
    expect_bitwise_equal("dgamma and dbeta without dx", full.params, no_dx.params, 2 * c_bytes);
    void *poisoned = malloc(d.bytes + 1);
    memset(poisoned, 0xff, d.bytes + 1);
    cr_expect(memcmp(no_dx.dx, poisoned, d.bytes) == 0, "%s: dx was written although it was NULL", label);

    poison_outputs(&d, &p);
    BACKWARD(d.dx_dev, NULL, NULL);
    output_bytes no_params = read_outputs(&d, &p);
    expect_bitwise_equal("dx without dgamma and dbeta", full.dx, no_params.dx, d.bytes);
    cr_expect(memcmp(no_params.params, poisoned, 2 * c_bytes) == 0, "%s: dgamma or dbeta written although NULL", label);

    poison_outputs(&d, &p);
    BACKWARD(d.dy_dev, p.dgamma, p.dbeta);
    void *in_place = dev_snapshot(d.dy_dev, d.bytes);
    output_bytes in_place_params = read_outputs(&d, &p);
    expect_bitwise_equal("dx written over dy", full.dx, in_place, d.bytes);
    expect_bitwise_equal("dgamma and dbeta in place", full.params, in_place_params.params, 2 * c_bytes);
#undef BACKWARD
    free(in_place);
    free(poisoned);
    free_outputs(&full);
    free_outputs(&no_dx);
    free_outputs(&no_params);
    free_outputs(&in_place_params);
    free_params(&p);
    free_data(&d);
  }
  bnk_context_destroy(ctx);
}

/* ---- argument rules ---- */

Test(backward, rejections_write_nothing) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const backward_case bc = {BNK_FLOAT32, BNK_NCHW, 6, 5, S1(7), 0.0, 1.0, 0, 1};
  backward_data d = make_data(&bc, &rng);
  device_params p = upload_params(&d, ctx);
  cr_assert_gt(p.workspace_bytes, 0);
  const size_t c_bytes = (size_t)bc.c * 4;
  void *dx_before = dev_snapshot(d.dx_dev, d.bytes), *dy_before = dev_snapshot(d.dy_dev, d.bytes);
  void *dgamma_before = dev_snapshot(p.dgamma, c_bytes), *dbeta_before = dev_snapshot(p.dbeta, c_bytes);
  const bnk_status invalid = BNK_ERROR_INVALID_VALUE;
  const bnk_tensor_desc *desc = &d.desc;
  void *x = d.x_dev, *dy = d.dy_dev, *dx = d.dx_dev, *ws = p.workspace;
  float *g = p.gamma, *dg = p.dgamma, *db = p.dbeta, *sm = p.save_mean, *si = p.save_invstd;
  float *rm = p.running_mean, *rv = p.running_var;
  const size_t wb = p.workspace_bytes;

  expect_rejection(bnk_backward(NULL, desc, x, dy, dx, g, dg, db, sm, si, ws, wb), invalid, "ctx must not be NULL");
  expect_rejection(bnk_backward(ctx, NULL, x, dy, dx, g, dg, db, sm, si, ws, wb), invalid, "desc must not be NULL");
  bnk_tensor_desc bad = d.desc;
  bad.c = 0;
  expect_rejection(bnk_backward(ctx, &bad, x, dy, dx, g, dg, db, sm, si, ws, wb), invalid, "C must be > 0, got 0");
  bad = d.desc;
  bad.dtype = (bnk_dtype)7;
  expect_rejection(bnk_backward(ctx, &bad, x, dy, dx, g, dg, db, sm, si, ws, wb), invalid, "got 7");
  expect_rejection(bnk_backward(ctx, desc, NULL, dy, dx, g, dg, db, sm, si, ws, wb), invalid, "x must not be NULL");
  expect_rejection(bnk_backward(ctx, desc, x, NULL, dx, g, dg, db, sm, si, ws, wb), invalid, "dy must not be NULL");
  expect_rejection(bnk_backward(ctx, desc, x, dy, dx, g, dg, db, NULL, si, ws, wb), invalid,
                   "save_mean must not be NULL");
  expect_rejection(bnk_backward(ctx, desc, x, dy, dx, g, dg, db, sm, NULL, ws, wb), invalid,
                   "save_invstd must not be NULL");
  expect_rejection(bnk_backward(ctx, desc, x, dy, dx, g, dg, db, sm, si, ws, wb - 1), BNK_ERROR_WORKSPACE_TOO_SMALL,
                   "workspace_bytes must be >=");
  expect_rejection(bnk_backward(ctx, desc, x, dy, NULL, g, dg, db, sm, si, ws, 0), BNK_ERROR_WORKSPACE_TOO_SMALL,
                   "got 0");
  expect_rejection(bnk_backward(ctx, desc, x, dy, dx, g, dg, db, sm, si, NULL, wb), invalid,
                   "workspace must not be NULL");

  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, dg, db, rm, rv, -1e-5, ws, wb), invalid,
                   "eps must be finite and >= 0, got -1e-05");
  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, dg, db, rm, rv, NAN, ws, wb), invalid,
                   "eps must be finite and >= 0, got nan");
  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, dg, db, rm, rv, INFINITY, ws, wb), invalid,
                   "eps must be finite");
  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, dg, db, NULL, rv, EPS, ws, wb), invalid,
                   "running_mean must not be NULL");
  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, dg, db, rm, NULL, EPS, ws, wb), invalid,
                   "running_var must not be NULL");
  expect_rejection(bnk_backward_inference(ctx, desc, x, NULL, dx, g, dg, db, rm, rv, EPS, ws, wb), invalid,
                   "dy must not be NULL");
  expect_rejection(bnk_backward_inference(ctx, desc, NULL, dy, dx, g, dg, db, rm, rv, EPS, ws, wb), invalid,
                   "x must not be NULL when dgamma is wanted");
  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, NULL, db, rm, rv, EPS, ws, 3),
                   BNK_ERROR_WORKSPACE_TOO_SMALL, "got 3");
  expect_rejection(bnk_backward_inference(ctx, desc, x, dy, dx, g, dg, NULL, rm, rv, EPS, NULL, wb), invalid,
                   "workspace must not be NULL");
  expect_rejection(bnk_backward_inference(NULL, desc, x, dy, dx, g, dg, db, rm, rv, EPS, ws, wb), invalid,
                   "ctx must not be NULL");

  size_t bytes;
  expect_rejection(bnk_backward_workspace_size(ctx, desc, NULL), invalid, "bytes must not be NULL");
  expect_rejection(bnk_backward_workspace_size(NULL, desc, &bytes), invalid, "ctx must not be NULL");
  expect_rejection(bnk_backward_workspace_size(ctx, &bad, &bytes), invalid, "dtype must be");

  expect_unchanged("dx", d.dx_dev, dx_before, d.bytes);
  expect_unchanged("dy", d.dy_dev, dy_before, d.bytes);
  expect_unchanged("dgamma", p.dgamma, dgamma_before, c_bytes);
  expect_unchanged("dbeta", p.dbeta, dbeta_before, c_bytes);
  free(dx_before);
  free(dy_before);
  free(dgamma_before);
  free(dbeta_before);
  free_params(&p);
  free_data(&d);
  bnk_context_destroy(ctx);
}

/* An empty batch: dgamma and dbeta are sums over nothing (zeros); dx has no element to write. */
Test(backward, empty_batch_zeroes_parameter_gradients) {
  bnk_context *ctx = test_context();
  enum { C = 6 };
  const int64_t spatial[2] = {0, 3};
  const bnk_layout layouts[2] = {BNK_NCHW, BNK_NHWC};
  float *dgamma = dev_alloc(C * 4), *dbeta = dev_alloc(C * 4), *stats = dev_alloc(C * 4);
  float *dx = dev_alloc(64);
  for (int l = 0; l < 2; ++l) {
    bnk_tensor_desc empty;
    cr_assert_eq(bnk_tensor_desc_init(&empty, BNK_FLOAT16, layouts[l], 4, C, 2, spatial), BNK_SUCCESS);
    size_t bytes = 99;
    cr_expect_eq(bnk_backward_workspace_size(ctx, &empty, &bytes), BNK_SUCCESS);
    cr_expect_eq(bytes, 0);
    void *dx_before = dev_snapshot(dx, 64);
    for (int inference = 0; inference < 2; ++inference) {
      dev_poison(dgamma, C * 4);
      dev_poison(dbeta, C * 4);
      const bnk_status status =
          inference
              ? bnk_backward_inference(ctx, &empty, NULL, NULL, dx, NULL, dgamma, dbeta, stats, stats, EPS, NULL, 0)
              : bnk_backward(ctx, &empty, NULL, NULL, dx, NULL, dgamma, dbeta, stats, stats, NULL, 0);
      cr_expect_eq(status, BNK_SUCCESS, "%s", bnk_last_error_message());
      float got[2 * C];
      dev_download(got, dgamma, C * 4);
      dev_download(got + C, dbeta, C * 4);
      for (int i = 0; i < 2 * C; ++i)
        cr_expect(got[i] == 0.0f, "%s: %s[%d] = %g, not 0", inference ? "inference" : "training",
                  i < C ? "dgamma" : "dbeta", i % C, got[i]);
      expect_unchanged("dx", dx, dx_before, 64);
    }
    free(dx_before);
    cr_expect_eq(bnk_backward(ctx, &empty, NULL, NULL, NULL, NULL, NULL, NULL, stats, stats, NULL, 0), BNK_SUCCESS);
  }
  dev_free(dgamma);
  dev_free(dbeta);
  dev_free(stats);
  dev_free(dx);
  bnk_context_destroy(ctx);
}
