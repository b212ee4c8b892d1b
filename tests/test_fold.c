/* Folding batch normalization into the layer before it: a float64 direct convolution with the folded weight
 * and bias must equal the batch norm of the original convolution (both weight orders, with and without a
 * convolution bias), and likewise for a linear layer; 1-D and 3-D kernels, 16-bit weights, in place, the
 * argument rules; and bnk_linear_bn, which runs on a GPU only (the emulation has no cuBLAS). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"

#define EPS 1e-5
/* A folded float32 output is a sum of C_in R S products of float32 values (each weight rounded once when
 * scaled) plus the bias (rounded once): its error is a few 2^-24 of the sum of the terms' magnitudes. */
#define FOLD_TOLERANCE 1e-6

typedef struct frozen_bn {
  double *gamma, *beta, *mean, *var; /* float32 values, as doubles */
  float *gamma_dev, *beta_dev, *mean_dev, *var_dev;
} frozen_bn;

static frozen_bn make_bn(int64_t k, test_rng *rng) {
  frozen_bn bn;
  const size_t bytes = (size_t)k * sizeof(double);
  bn.gamma = malloc(bytes);
  bn.beta = malloc(bytes);
  bn.mean = malloc(bytes);
  bn.var = malloc(bytes);
  for (int64_t i = 0; i < k; ++i) {
    bn.gamma[i] = (float)rng_uniform(rng, 0.5, 1.5);
    bn.beta[i] = (float)rng_uniform(rng, -0.5, 0.5);
    bn.mean[i] = (float)rng_uniform(rng, -1.0, 1.0);
    bn.var[i] = (float)rng_uniform(rng, 0.5, 2.0);
  }
  bn.gamma_dev = dev_floats(bn.gamma, k);
  bn.beta_dev = dev_floats(bn.beta, k);
  bn.mean_dev = dev_floats(bn.mean, k);
  bn.var_dev = dev_floats(bn.var, k);
  return bn;
}

static void free_bn(frozen_bn *bn) {
  free(bn->gamma);
  free(bn->beta);
  free(bn->mean);
  free(bn->var);
  dev_free(bn->gamma_dev);
  dev_free(bn->beta_dev);
  dev_free(bn->mean_dev);
  dev_free(bn->var_dev);
}

static double bn_scale(const frozen_bn *bn, int64_t k) { return bn->gamma[k] / sqrt(bn->var[k] + EPS); }

/* Random values rounded to the storage type: `values` receives the stored values, the return is a device copy. */
static void *upload_random(bnk_dtype dtype, double *values, int64_t count, test_rng *rng) {
  for (int64_t i = 0; i < count; ++i) values[i] = rng_normal(rng) * 0.5;
  void *host = malloc((size_t)count * dtype_size(dtype));
  to_storage(dtype, values, host, count);
  from_storage(dtype, host, values, count);
  void *device = dev_alloc((size_t)count * dtype_size(dtype));
  dev_upload(device, host, (size_t)count * dtype_size(dtype));
  free(host);
  return device;
}

static void read_stored(bnk_dtype dtype, const void *device, double *values, int64_t count) {
  void *host = malloc((size_t)count * dtype_size(dtype));
  dev_download(host, device, (size_t)count * dtype_size(dtype));
  from_storage(dtype, host, values, count);
  free(host);
}

/* ---- a float64 direct 2-D convolution: NCHW input, stride 1, no padding ---- */

typedef struct conv_shape {
  int64_t n, c, h, w, k, r, s;
} conv_shape;

static double weight_at(const double *w, bnk_weight_layout layout, const conv_shape *sh, int64_t k, int64_t c,
                        int64_t r, int64_t s) {
  if (layout == BNK_WEIGHTS_KCRS) return w[((k * sh->c + c) * sh->r + r) * sh->s + s];
  return w[((k * sh->r + r) * sh->s + s) * sh->c + c];
}

/* out[n][k][p][q] = bias[k] + sum x[n][c][p + r][q + s] w[k][c][r][s]; magnitude[...] = |bias| + sum |terms|. */
static void ref_conv(const conv_shape *sh, const double *x, const double *w, bnk_weight_layout layout,
                     const double *bias, double *out, double *magnitude) {
  const int64_t ho = sh->h - sh->r + 1, wo = sh->w - sh->s + 1;
  for (int64_t n = 0; n < sh->n; ++n)
    for (int64_t k = 0; k < sh->k; ++k)
      for (int64_t p = 0; p < ho; ++p)
        for (int64_t q = 0; q < wo; ++q) {
          double sum = bias != NULL ? bias[k] : 0.0, size = bias != NULL ? fabs(bias[k]) : 0.0;
          for (int64_t c = 0; c < sh->c; ++c)
            for (int64_t r = 0; r < sh->r; ++r)
              for (int64_t s = 0; s < sh->s; ++s) {
                const double term =
                    x[((n * sh->c + c) * sh->h + p + r) * sh->w + q + s] * weight_at(w, layout, sh, k, c, r, s);
                sum += term;
                size += fabs(term);
              }
          const int64_t at = ((n * sh->k + k) * ho + p) * wo + q;
          out[at] = sum;
          if (magnitude != NULL) magnitude[at] = size;
        }
}

static void check_conv_fold(bnk_context *ctx, bnk_weight_layout layout, int with_bias, test_rng *rng) {
  const conv_shape sh = {2, 3, 6, 7, 4, 3, 2};
  const int64_t x_count = sh.n * sh.c * sh.h * sh.w, w_count = sh.k * sh.c * sh.r * sh.s;
  const int64_t out_count = sh.n * sh.k * (sh.h - sh.r + 1) * (sh.w - sh.s + 1);
  const int64_t per_k = out_count / (sh.n * sh.k);
  double *x = malloc((size_t)x_count * 8), *w = malloc((size_t)w_count * 8), *bias = malloc((size_t)sh.k * 8);
  for (int64_t i = 0; i < x_count; ++i) x[i] = rng_normal(rng);
  void *w_dev = upload_random(BNK_FLOAT32, w, w_count, rng);
  for (int64_t i = 0; i < sh.k; ++i) bias[i] = (float)rng_uniform(rng, -1.0, 1.0);
  float *bias_dev = with_bias ? dev_floats(bias, sh.k) : NULL;
  frozen_bn bn = make_bn(sh.k, rng);
  void *folded_dev = dev_alloc((size_t)w_count * 4);
  float *folded_bias_dev = dev_alloc((size_t)sh.k * 4);
  const int64_t kernel_size[2] = {sh.r, sh.s};
  cr_assert_eq(bnk_fold_conv(ctx, sh.k, sh.c, 2, kernel_size, layout, BNK_FLOAT32, w_dev, bias_dev, bn.gamma_dev,
                             bn.beta_dev, bn.mean_dev, bn.var_dev, EPS, folded_dev, folded_bias_dev),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  double *folded = malloc((size_t)w_count * 8), *folded_bias = malloc((size_t)sh.k * 8);
  read_stored(BNK_FLOAT32, folded_dev, folded, w_count);
  dev_read_floats(folded_bias_dev, folded_bias, sh.k);

  /* bn(conv(x, W) + b) against conv(x, W') + b'. */
  double *want = malloc((size_t)out_count * 8), *got = malloc((size_t)out_count * 8);
  double *magnitude = malloc((size_t)out_count * 8);
  ref_conv(&sh, x, w, layout, with_bias ? bias : NULL, want, NULL);
  ref_conv(&sh, x, folded, layout, folded_bias, got, magnitude);
  for (int64_t i = 0; i < out_count; ++i) {
    const int64_t k = (i / per_k) % sh.k;
    want[i] = (want[i] - bn.mean[k]) * bn_scale(&bn, k) + bn.beta[k];
    const double allowed = FOLD_TOLERANCE * (magnitude[i] + fabs(bn.mean[k] * bn_scale(&bn, k)) + fabs(bn.beta[k]));
    if (!(fabs(got[i] - want[i]) <= allowed)) {
      cr_expect(0, "%s%s: conv output %lld = %.9g, bn of the original %.9g (error %.3g > %.3g)",
                layout == BNK_WEIGHTS_KCRS ? "KCRS" : "KRSC", with_bias ? " with bias" : "", (long long)i, got[i],
                want[i], fabs(got[i] - want[i]), allowed);
      break;
    }
  }

  /* In place gives the same bits. */
  if (with_bias) {
    cr_assert_eq(bnk_fold_conv(ctx, sh.k, sh.c, 2, kernel_size, layout, BNK_FLOAT32, w_dev, bias_dev, bn.gamma_dev,
                               bn.beta_dev, bn.mean_dev, bn.var_dev, EPS, w_dev, bias_dev),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    void *in_place = dev_snapshot(w_dev, (size_t)w_count * 4);
    void *out_of_place = dev_snapshot(folded_dev, (size_t)w_count * 4);
    expect_bitwise_equal("weight folded in place", out_of_place, in_place, (size_t)w_count * 4);
    free(in_place);
    free(out_of_place);
    in_place = dev_snapshot(bias_dev, (size_t)sh.k * 4);
    out_of_place = dev_snapshot(folded_bias_dev, (size_t)sh.k * 4);
    expect_bitwise_equal("bias folded in place", out_of_place, in_place, (size_t)sh.k * 4);
    free(in_place);
    free(out_of_place);
  }
  free(x);
  free(w);
  free(bias);
  free(folded);
  free(folded_bias);
  free(want);
  free(got);
  free(magnitude);
  dev_free(w_dev);
  dev_free(bias_dev);
  dev_free(folded_dev);
  dev_free(folded_bias_dev);
  free_bn(&bn);
}

Test(fold, conv_matches_batch_norm_of_conv) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (int with_bias = 0; with_bias < 2; ++with_bias) {
    check_conv_fold(ctx, BNK_WEIGHTS_KCRS, with_bias, &rng);
    check_conv_fold(ctx, BNK_WEIGHTS_KRSC, with_bias, &rng);
  }
  bnk_context_destroy(ctx);
}

/* 1-D and 3-D kernels and 16-bit weights: every weight is W * scale of its output channel, rounded once from
 * fp32 (so within 1 ulp of the storage type of the exact product), and the bias (b - mean) scale + beta. */
Test(fold, kernel_ranks_and_16_bit_weights) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const int64_t sizes[2][3] = {{5, 1, 1}, {2, 3, 3}};
  const int dims[2] = {1, 3};
  const bnk_dtype dtypes[3] = {BNK_FLOAT32, BNK_FLOAT16, BNK_BFLOAT16};
  for (int rank = 0; rank < 2; ++rank)
    for (int t = 0; t < 3; ++t) {
      const int64_t k = 6, c_in = 5;
      int64_t per_k = c_in;
      for (int d = 0; d < dims[rank]; ++d) per_k *= sizes[rank][d];
      const int64_t count = k * per_k;
      double *w = malloc((size_t)count * 8), *got = malloc((size_t)count * 8), *want = malloc((size_t)count * 8);
      double *bias = malloc((size_t)k * 8), *bias_got = malloc((size_t)k * 8), *bias_want = malloc((size_t)k * 8);
      void *w_dev = upload_random(dtypes[t], w, count, &rng);
      for (int64_t i = 0; i < k; ++i) bias[i] = (float)rng_uniform(&rng, -1.0, 1.0);
      float *bias_dev = dev_floats(bias, k), *bias_out = dev_alloc((size_t)k * 4);
      void *w_out = dev_alloc((size_t)count * dtype_size(dtypes[t]));
      frozen_bn bn = make_bn(k, &rng);
      cr_assert_eq(bnk_fold_conv(ctx, k, c_in, dims[rank], sizes[rank], BNK_WEIGHTS_KRSC, dtypes[t], w_dev, bias_dev,
                                 bn.gamma_dev, bn.beta_dev, bn.mean_dev, bn.var_dev, EPS, w_out, bias_out),
                   BNK_SUCCESS, "%s", bnk_last_error_message());
      read_stored(dtypes[t], w_out, got, count);
      dev_read_floats(bias_out, bias_got, k);
      for (int64_t i = 0; i < count; ++i) want[i] = round_to_storage(dtypes[t], w[i] * bn_scale(&bn, i / per_k));
      for (int64_t i = 0; i < k; ++i) bias_want[i] = (bias[i] - bn.mean[i]) * bn_scale(&bn, i) + bn.beta[i];
      char what[80];
      snprintf(what, sizeof what, "%d-D kernel, %s weight", dims[rank], dtype_name(dtypes[t]));
      if (dtypes[t] == BNK_FLOAT32) expect_close(what, got, want, count, 0.0, 3e-7);
      else expect_within_ulps(what, dtypes[t], got, want, count, 1.0, 0.0);
      expect_close("folded bias", bias_got, bias_want, k, 1e-6, 1e-6);
      free(w);
      free(got);
      free(want);
      free(bias);
      free(bias_got);
      free(bias_want);
      dev_free(w_dev);
      dev_free(w_out);
      dev_free(bias_dev);
      dev_free(bias_out);
      free_bn(&bn);
    }
  bnk_context_destroy(ctx);
}

/* ---- linear layers ---- */

/* y[b][o] = bias[o] + sum x[b][i] w[o][i]; magnitude as in ref_conv. */
static void ref_linear(int64_t batch, int64_t in, int64_t out, const double *x, const double *w, const double *bias,
                       double *y, double *magnitude) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t o = 0; o < out; ++o) {
      double sum = bias != NULL ? bias[o] : 0.0, size = bias != NULL ? fabs(bias[o]) : 0.0;
      for (int64_t i = 0; i < in; ++i) {
        sum += x[b * in + i] * w[o * in + i];
        size += fabs(x[b * in + i] * w[o * in + i]);
      }
      y[b * out + o] = sum;
      if (magnitude != NULL) magnitude[b * out + o] = size;
    }
}

Test(fold, linear_matches_batch_norm_of_linear) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  enum { BATCH = 5, IN = 24, OUT = 7 };
  for (int with_bias = 0; with_bias < 2; ++with_bias) {
    double x[BATCH * IN], w[OUT * IN], bias[OUT], folded[OUT * IN], folded_bias[OUT];
    double want[BATCH * OUT], got[BATCH * OUT], magnitude[BATCH * OUT];
    for (int i = 0; i < BATCH * IN; ++i) x[i] = rng_normal(&rng);
    void *w_dev = upload_random(BNK_FLOAT32, w, OUT * IN, &rng);
    for (int i = 0; i < OUT; ++i) bias[i] = (float)rng_uniform(&rng, -1.0, 1.0);
    float *bias_dev = with_bias ? dev_floats(bias, OUT) : NULL, *bias_out = dev_alloc(OUT * 4);
    frozen_bn bn = make_bn(OUT, &rng);
    cr_assert_eq(bnk_fold_linear(ctx, OUT, IN, BNK_FLOAT32, w_dev, bias_dev, bn.gamma_dev, bn.beta_dev, bn.mean_dev,
                                 bn.var_dev, EPS, w_dev, bias_out, BNK_FLOAT32),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    read_stored(BNK_FLOAT32, w_dev, folded, OUT * IN);
    dev_read_floats(bias_out, folded_bias, OUT);
    ref_linear(BATCH, IN, OUT, x, w, with_bias ? bias : NULL, want, NULL);
    ref_linear(BATCH, IN, OUT, x, folded, folded_bias, got, magnitude);
    for (int i = 0; i < BATCH * OUT; ++i) {
      const int o = i % OUT;
      want[i] = (want[i] - bn.mean[o]) * bn_scale(&bn, o) + bn.beta[o];
      const double allowed = FOLD_TOLERANCE * (magnitude[i] + fabs(bn.mean[o] * bn_scale(&bn, o)) + fabs(bn.beta[o]));
      cr_expect(fabs(got[i] - want[i]) <= allowed, "linear%s: y[%d] = %.9g, bn of the original %.9g",
                with_bias ? " with bias" : "", i, got[i], want[i]);
    }
    dev_free(w_dev);
    dev_free(bias_dev);
    dev_free(bias_out);
    free_bn(&bn);
  }
  bnk_context_destroy(ctx);
}

/* ---- argument rules ---- */

Test(fold, rejections_write_nothing) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  frozen_bn bn = make_bn(4, &rng);
  double w[4 * 3 * 9];
  void *w_dev = upload_random(BNK_FLOAT32, w, 4 * 3 * 9, &rng), *w_out = dev_alloc(sizeof w / 2);
  float *b_out = dev_alloc(16);
  void *w_before = dev_snapshot(w_out, sizeof w / 2), *b_before = dev_snapshot(b_out, 16);
  const int64_t ks[3] = {3, 3, 1}, bad_ks[2] = {3, 0};
  const bnk_status invalid = BNK_ERROR_INVALID_VALUE;
#define FOLD(k, c, dims, sizes, layout, dtype, in, out, bias_out, eps)                                               \
  bnk_fold_conv(ctx, k, c, dims, sizes, layout, dtype, in, NULL, bn.gamma_dev, bn.beta_dev, bn.mean_dev, bn.var_dev, \
                eps, out, bias_out)
  expect_rejection(FOLD(0, 3, 2, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, b_out, EPS), invalid,
                   "K must be > 0, got 0");
  expect_rejection(FOLD(4, -1, 2, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, b_out, EPS), invalid,
                   "C_in must be > 0, got -1");
  expect_rejection(FOLD(4, 3, 4, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, b_out, EPS), invalid,
                   "kernel_dims must be in [1, 3], got 4");
  expect_rejection(FOLD(4, 3, 2, NULL, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, b_out, EPS), invalid,
                   "kernel_size must not be NULL");
  expect_rejection(FOLD(4, 3, 2, bad_ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, b_out, EPS), invalid,
                   "kernel_size[1] must be > 0, got 0");
  expect_rejection(FOLD(4, 3, 2, ks, (bnk_weight_layout)5, BNK_FLOAT32, w_dev, w_out, b_out, EPS), invalid,
                   "layout must be BNK_WEIGHTS_KCRS or BNK_WEIGHTS_KRSC, got 5");
  expect_rejection(FOLD(4, 3, 2, ks, BNK_WEIGHTS_KCRS, (bnk_dtype)9, w_dev, w_out, b_out, EPS), invalid,
                   "dtype must be BNK_FLOAT32, BNK_FLOAT16 or BNK_BFLOAT16, got 9");
  expect_rejection(FOLD(4, 3, 2, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, NULL, w_out, b_out, EPS), invalid,
                   "weight_in must not be NULL");
  expect_rejection(FOLD(4, 3, 2, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, NULL, EPS), invalid,
                   "bias_out must not be NULL");
  expect_rejection(FOLD(4, 3, 2, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, w_out, b_out, NAN), invalid,
                   "eps must be finite and >= 0, got nan");
  expect_rejection(FOLD(4, 3, 2, ks, BNK_WEIGHTS_KCRS, BNK_FLOAT32, w_dev, (char *)w_dev + 4, b_out, EPS), invalid,
                   "weight_out must be weight_in or not overlap it");
#undef FOLD
  expect_rejection(bnk_fold_linear(ctx, 4, 27, BNK_FLOAT16, w_dev, NULL, NULL, NULL, bn.mean_dev, bn.var_dev, EPS,
                                   w_out, b_out, BNK_BFLOAT16),
                   invalid, "bias_dtype must be BNK_FLOAT32 or dtype (1), got 2");
  expect_rejection(bnk_fold_linear(ctx, 4, 0, BNK_FLOAT32, w_dev, NULL, NULL, NULL, bn.mean_dev, bn.var_dev, EPS, w_out,
                                   b_out, BNK_FLOAT32),
                   invalid, "in_features must be > 0, got 0");
  expect_rejection(bnk_fold_linear(ctx, 4, 27, BNK_FLOAT32, w_dev, NULL, NULL, NULL, bn.mean_dev, NULL, EPS, w_out,
                                   b_out, BNK_FLOAT32),
                   invalid, "running_var must not be NULL");
  expect_unchanged("weight_out", w_out, w_before, sizeof w / 2);
  expect_unchanged("bias_out", b_out, b_before, 16);
  free(w_before);
  free(b_before);
  dev_free(w_dev);
  dev_free(w_out);
  dev_free(b_out);
  free_bn(&bn);
  bnk_context_destroy(ctx);
}

/* ---- bnk_linear_bn: one cuBLASLt matmul; the emulation has no cuBLAS ---- */

#ifdef BNK_TEST_EMULATION
Test(fold, linear_bn_is_not_supported_in_emulation) {
  bnk_context *ctx = test_context();
  float *buffer = dev_alloc(64 * 4);
  size_t bytes = 0;
  expect_rejection(bnk_linear_bn_workspace_size(ctx, &bytes), BNK_ERROR_NOT_SUPPORTED, "no cuBLAS");
  expect_rejection(bnk_linear_bn(ctx, BNK_FLOAT32, 2, 4, 3, buffer, buffer + 8, buffer + 32, BNK_EPILOGUE_RELU,
                                 buffer + 40, NULL, 0),
                   BNK_ERROR_NOT_SUPPORTED, "emulation");
  expect_rejection(bnk_linear_bn(ctx, BNK_FLOAT32, 2, 0, 3, buffer, buffer, buffer, BNK_EPILOGUE_RELU, buffer, NULL, 0),
                   BNK_ERROR_INVALID_VALUE, "in_features must be > 0, got 0");
  dev_free(buffer);
  bnk_context_destroy(ctx);
}
#else
/* Against relu?(x W'^T + b') in float64 from the folded parameters as stored: fp32 accumulation of products of
 * stored values, then one rounding (16-bit storage: 1 ulp), so 1e-5 of the terms' magnitudes plus 1 ulp. */
Test(fold, linear_bn_matches_reference) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  enum { BATCH = 9, IN = 40, OUT = 24 };
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_linear_bn_workspace_size(ctx, &ws_bytes), BNK_SUCCESS, "%s", bnk_last_error_message());
  void *workspace = dev_alloc(ws_bytes);
  const bnk_dtype dtypes[3] = {BNK_FLOAT32, BNK_FLOAT16, BNK_BFLOAT16};
  for (int t = 0; t < 3; ++t)
    for (int relu = 0; relu < 2; ++relu) {
      const bnk_dtype dtype = dtypes[t];
      double x[BATCH * IN], w[OUT * IN], bias[OUT], folded[OUT * IN], folded_bias[OUT];
      double want[BATCH * OUT], got[BATCH * OUT], magnitude[BATCH * OUT];
      void *x_dev = upload_random(dtype, x, BATCH * IN, &rng), *w_dev = upload_random(dtype, w, OUT * IN, &rng);
      for (int i = 0; i < OUT; ++i) bias[i] = (float)rng_uniform(&rng, -1.0, 1.0);
      float *bias_dev = dev_floats(bias, OUT);
      void *bias_out = dev_alloc(OUT * 4), *y_dev = dev_alloc(BATCH * OUT * 4);
      frozen_bn bn = make_bn(OUT, &rng);
      cr_assert_eq(bnk_fold_linear(ctx, OUT, IN, dtype, w_dev, bias_dev, bn.gamma_dev, bn.beta_dev, bn.mean_dev,
                                   bn.var_dev, EPS, w_dev, bias_out, dtype),
                   BNK_SUCCESS, "%s", bnk_last_error_message());
      cr_assert_eq(bnk_linear_bn(ctx, dtype, BATCH, IN, OUT, x_dev, w_dev, bias_out,
                                 relu ? BNK_EPILOGUE_RELU : BNK_EPILOGUE_NONE, y_dev, workspace, ws_bytes),
                   BNK_SUCCESS, "%s", bnk_last_error_message());
      read_stored(dtype, w_dev, folded, OUT * IN);
      read_stored(dtype, bias_out, folded_bias, OUT);
      read_stored(dtype, y_dev, got, BATCH * OUT);
      ref_linear(BATCH, IN, OUT, x, folded, folded_bias, want, magnitude);
      for (int i = 0; i < BATCH * OUT; ++i) {
        if (relu && want[i] < 0.0) want[i] = 0.0;
        const double expected = round_to_storage(dtype, want[i]);
        const double allowed = 1e-5 * magnitude[i] + (dtype == BNK_FLOAT32 ? 0.0 : storage_ulp(dtype, expected));
        cr_expect(fabs(got[i] - expected) <= allowed, "%s%s: y[%d] = %.9g, reference %.9g", dtype_name(dtype),
                  relu ? " relu" : "", i, got[i], expected);
      }
      dev_free(x_dev);
      dev_free(w_dev);
      dev_free(bias_dev);
      dev_free(bias_out);
      dev_free(y_dev);
      free_bn(&bn);
    }
  dev_free(workspace);
  bnk_context_destroy(ctx);
}
#endif
