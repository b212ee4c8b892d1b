/* Fused epilogues (BN + ReLU, BN + add + ReLU, the ReLU mask) and the folded inference form (inference
 * parameters + scale-shift), against the float64 reference composition, on every schedule, for both
 * layouts, every dtype, ranks 1-D to 3-D and misaligned pointers; the backward through the epilogue from y
 * and from the mask (the same bits); the argument rules. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/gradient_check.h"
#include "tests/harness.h"
#include "tests/reference.h"

/* Tolerances, as in test_forward.c and test_backward.c:
 *  - y: 1e-5 absolute at unit scale for float32; 1 ulp of the storage type plus 1e-6 (the fp32 result's own
 *    error, which only shows where y is near zero) for 16-bit. The ReLU moves no error: near 0 both sides
 *    are within that bound of 0.
 *  - dx: 1e-5 |gamma| invstd for float32; 1 ulp plus 2e-6 |gamma| invstd for 16-bit.
 *  - dgamma, dbeta: 1e-5 (|reference| + sqrt(sum of squared terms)).
 * The backward's are tests/gradient_check.h's. */
#define Y_TOLERANCE 1e-5
#define Y_FP32_FLOOR 1e-6
#define EPS 1e-5

typedef struct epilogue_case {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n, c;
  int spatial_dims;
  int64_t spatial[3];
  int misalign; /* every tensor starts one element past a 256-byte boundary */
} epilogue_case;

/* Both layouts, ranks 0 to 3, every dtype with and without the 16-byte path, misaligned tensors, C = 3 and 5
 * (mask bytes that span rows of a channels-last tensor), and a channel cut into two pieces. */
static const epilogue_case cases[] = {
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(5, 7), 0},
    {BNK_FLOAT32, BNK_NHWC, 2, 3, S2(5, 7), 0},
    {BNK_FLOAT32, BNK_NCHW, 3, 4, S1(33), 1},
    {BNK_FLOAT32, BNK_NHWC, 2, 8, S3(2, 3, 4), 0},
    {BNK_FLOAT32, BNK_NHWC, 37, 5, S0, 0},
    {BNK_FLOAT32, BNK_NCHW, 4, 4, S2(8, 8), 0},
    {BNK_FLOAT32, BNK_NCHW, 8, 2, S2(32, 32), 0},
    {BNK_FLOAT16, BNK_NCHW, 2, 3, S2(8, 8), 0},
    {BNK_FLOAT16, BNK_NHWC, 2, 16, S2(3, 5), 0},
    {BNK_FLOAT16, BNK_NHWC, 2, 16, S2(3, 5), 1},
    {BNK_FLOAT16, BNK_NHWC, 5, 3, S1(7), 0},
    {BNK_BFLOAT16, BNK_NCHW, 2, 5, S3(3, 3, 3), 0},
    {BNK_BFLOAT16, BNK_NHWC, 3, 24, S1(9), 0},
    {BNK_BFLOAT16, BNK_NCHW, 4, 3, S2(16, 16), 1},
    /* Mask words built in the warp: channels-first vectors straddling runs (7x7, S = 3 < a vector) and a
     * tensor that ends mid-word; channels-last rows of whole words, 16-byte and (misaligned) scalar. */
    {BNK_FLOAT16, BNK_NCHW, 3, 5, S2(7, 7), 0},
    {BNK_FLOAT32, BNK_NCHW, 5, 3, S1(3), 0},
    {BNK_BFLOAT16, BNK_NCHW, 2, 3, S2(14, 14), 1},
    {BNK_FLOAT16, BNK_NHWC, 3, 64, S2(3, 3), 0},
    {BNK_FLOAT32, BNK_NHWC, 5, 96, S1(3), 1},
    /* Channels-first C x S whole vectors but not S: the backward sums read dy, y and the mask of each run's head
     * and tail element by element. */
    {BNK_FLOAT16, BNK_NCHW, 3, 8, S2(7, 7), 0},
    {BNK_FLOAT32, BNK_NCHW, 2, 12, S1(13), 0},
};

static void describe(const epilogue_case *ec, char *out, size_t size) {
  char shape[96];
  format_shape(shape, sizeof shape, ec->layout, ec->dtype, ec->n, ec->c, ec->spatial_dims, ec->spatial);
  snprintf(out, size, "%s%s", shape, ec->misalign ? " misaligned" : "");
}

/* A device tensor of the case's descriptor and its stored values as doubles. */
typedef struct tensor {
  unsigned char *base;
  void *dev;
  double *values;
} tensor;

typedef struct problem {
  bnk_tensor_desc desc;
  int64_t elements;
  size_t bytes, mask_bytes, skew;
  double *gamma, *beta, *running_mean, *running_var; /* float32 values, as doubles */
  float *gamma_dev, *beta_dev, *running_mean_dev, *running_var_dev;
} problem;

static problem make_problem(const epilogue_case *ec, test_rng *rng) {
  problem p;
  memset(&p, 0, sizeof p);
  cr_assert_eq(bnk_tensor_desc_init(&p.desc, ec->dtype, ec->layout, ec->n, ec->c, ec->spatial_dims, ec->spatial),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  p.elements = bnk_tensor_desc_elements(&p.desc);
  p.bytes = (size_t)p.elements * dtype_size(ec->dtype);
  cr_assert_eq(bnk_epilogue_mask_size(&p.desc, &p.mask_bytes), BNK_SUCCESS);
  p.skew = ec->misalign ? dtype_size(ec->dtype) : 0;
  const size_t c_bytes = (size_t)ec->c * sizeof(double);
  p.gamma = malloc(c_bytes);
  p.beta = malloc(c_bytes);
  p.running_mean = malloc(c_bytes);
  p.running_var = malloc(c_bytes);
  for (int64_t i = 0; i < ec->c; ++i) {
    p.gamma[i] = (float)rng_uniform(rng, 0.5, 1.5);
    p.beta[i] = (float)rng_uniform(rng, -0.5, 0.5);
    p.running_mean[i] = (float)rng_uniform(rng, -1.0, 1.0);
    p.running_var[i] = (float)rng_uniform(rng, 0.5, 2.0);
  }
  p.gamma_dev = dev_floats(p.gamma, ec->c);
  p.beta_dev = dev_floats(p.beta, ec->c);
  p.running_mean_dev = dev_floats(p.running_mean, ec->c);
  p.running_var_dev = dev_floats(p.running_var, ec->c);
  return p;
}

static void free_problem(problem *p) {
  free(p->gamma);
  free(p->beta);
  free(p->running_mean);
  free(p->running_var);
  dev_free(p->gamma_dev);
  dev_free(p->beta_dev);
  dev_free(p->running_mean_dev);
  dev_free(p->running_var_dev);
}

/* Normal values around a per-channel center in [-1, 1], rounded to the storage type and uploaded. */
static tensor random_tensor(const problem *p, test_rng *rng) {
  tensor t;
  t.values = malloc((size_t)(p->elements + 1) * sizeof(double));
  const int64_t spatial = ref_spatial(&p->desc);
  for (int64_t c = 0; c < p->desc.c; ++c) {
    const double center = rng_uniform(rng, -1.0, 1.0);
    for (int64_t n = 0; n < p->desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s) t.values[ref_offset(&p->desc, n, c, s)] = center + rng_normal(rng);
  }
  void *host = malloc(p->bytes + 1);
  to_storage(p->desc.dtype, t.values, host, p->elements);
  from_storage(p->desc.dtype, host, t.values, p->elements);
  t.base = dev_alloc(p->bytes + p->skew + 1);
  t.dev = t.base + p->skew;
  dev_upload(t.dev, host, p->bytes);
  free(host);
  return t;
}

static tensor output_tensor(const problem *p) {
  tensor t;
  t.values = malloc((size_t)(p->elements + 1) * sizeof(double));
  t.base = dev_alloc(p->bytes + p->skew + 1);
  t.dev = t.base + p->skew;
  return t;
}

static void free_tensor(tensor *t) {
  free(t->values);
  dev_free(t->base);
}

/* Downloads t into its values; returns the raw bytes (the caller frees them). */
static void *read_tensor(const problem *p, tensor *t) {
  void *raw = malloc(p->bytes + 1);
  dev_download(raw, t->dev, p->bytes);
  from_storage(p->desc.dtype, raw, t->values, p->elements);
  return raw;
}

static void check_y(const problem *p, const char *what, const double *got, const double *want) {
  if (p->desc.dtype == BNK_FLOAT32) expect_close(what, got, want, p->elements, Y_TOLERANCE, 0.0);
  else expect_within_ulps(what, p->desc.dtype, got, want, p->elements, 1.0, Y_FP32_FLOOR);
}

/* The mask must be exactly the bits y > 0 of the stored y, in memory order, and zero past the last element. */
static void check_mask(const problem *p, const char *what, const unsigned char *mask, const double *y) {
  for (int64_t i = 0; i < (int64_t)p->mask_bytes * 8; ++i) {
    const int want = i < p->elements && y[i] > 0.0;
    const int got = (mask[i / 8] >> (i % 8)) & 1;
    if (got != want) {
      cr_expect(0, "%s: mask bit %lld is %d, y = %.9g", what, (long long)i, got, i < p->elements ? y[i] : 0.0);
      return;
    }
  }
}

/* relu(bn + z) of the reference, z NULL for RELU alone. */
static void reference_epilogue(const problem *p, double *y, const double *z) {
  for (int64_t i = 0; i < p->elements; ++i) {
    const double v = y[i] + (z != NULL ? z[i] : 0.0);
    y[i] = v < 0.0 ? 0.0 : v;
  }
}

/* One forward with an epilogue: the inference forward, the training forward or scale-shift. */
typedef enum forward_call { INFERENCE, TRAINING, SCALE_SHIFT } forward_call;

typedef struct forward_run {
  bnk_context *ctx;
  const problem *p;
  forward_call call;
  const tensor *x;
  void *y;
  const bnk_epilogue *epilogue;
  const float *scale, *shift; /* SCALE_SHIFT */
  void *workspace;            /* TRAINING */
  size_t workspace_bytes;
} forward_run;

static bnk_status run_forward(const forward_run *r) {
  const problem *p = r->p;
  switch (r->call) {
  case INFERENCE:
    return bnk_forward_inference_ex(r->ctx, &p->desc, r->x->dev, r->y, p->gamma_dev, p->beta_dev, p->running_mean_dev,
                                    p->running_var_dev, EPS, r->epilogue);
  case TRAINING:
    return bnk_forward_training_ex(r->ctx, &p->desc, r->x->dev, r->y, p->gamma_dev, p->beta_dev, NULL, NULL, NULL, 0.1,
                                   EPS, NULL, NULL, r->workspace, r->workspace_bytes, r->epilogue);
  default:
    return bnk_scale_shift(r->ctx, &p->desc, r->x->dev, r->y, r->scale, r->shift, r->epilogue);
  }
}

/* Runs r on every schedule (y and the mask poisoned first), checks y against want and the mask against y, and
 * requires the same bits on every schedule. Leaves y's stored values in `stored`. */
static void check_forward(const forward_run *r, tensor *y, const double *want, const char *label, double *stored) {
  const problem *p = r->p;
  void *mask = r->epilogue != NULL ? r->epilogue->mask : NULL;
  void *first_y = NULL, *first_mask = NULL;
  char what[240];
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(y->dev, p->bytes);
    if (mask != NULL) dev_poison(mask, p->mask_bytes);
    const bnk_status status = run_forward(r);
    cr_assert_eq(status, BNK_SUCCESS, "%s [%s]: %s: %s", label, schedule_name(schedule), bnk_status_name(status),
                 bnk_last_error_message());
    snprintf(what, sizeof what, "%s [%s]: y", label, schedule_name(schedule));
    void *raw = read_tensor(p, y);
    check_y(p, what, y->values, want);
    unsigned char *mask_now = mask != NULL ? dev_snapshot(mask, p->mask_bytes) : NULL;
    if (mask_now != NULL) check_mask(p, what, mask_now, y->values);
    if (schedule == 0) {
      first_y = raw;
      first_mask = mask_now;
    } else {
      expect_bitwise_equal("y across schedules", first_y, raw, p->bytes);
      if (mask_now != NULL) expect_bitwise_equal("mask across schedules", first_mask, mask_now, p->mask_bytes);
      free(raw);
      free(mask_now);
    }
  }
  if (stored != NULL) memcpy(stored, y->values, (size_t)p->elements * sizeof(double));
  free(first_y);
  free(first_mask);
}

static const char *kind_name(bnk_epilogue_kind kind) {
  return kind == BNK_EPILOGUE_RELU ? "relu" : kind == BNK_EPILOGUE_ADD_RELU ? "add+relu" : "none";
}

/* Inference and training forwards with each epilogue, the mask recorded; ADD_RELU also in place over z. */
static void run_forward_case(const epilogue_case *ec, bnk_context *ctx, test_rng *rng) {
  char label[200], base[120];
  describe(ec, base, sizeof base);
  problem p = make_problem(ec, rng);
  tensor x = random_tensor(&p, rng), z = random_tensor(&p, rng), y = output_tensor(&p);
  void *mask = dev_alloc(p.mask_bytes);
  size_t workspace_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &p.desc, &workspace_bytes), BNK_SUCCESS);
  void *workspace = dev_alloc(workspace_bytes);
  double *want = malloc((size_t)(p.elements + 1) * sizeof(double));
  double *separate = malloc((size_t)(p.elements + 1) * sizeof(double));
  double *mean = malloc((size_t)ec->c * sizeof(double)), *var = malloc((size_t)ec->c * sizeof(double));
  ref_channel_stats(&p.desc, x.values, mean, var, NULL);

  const bnk_epilogue_kind kinds[2] = {BNK_EPILOGUE_RELU, BNK_EPILOGUE_ADD_RELU};
  for (int k = 0; k < 2; ++k) {
    const double *zv = kinds[k] == BNK_EPILOGUE_ADD_RELU ? z.values : NULL;
    const bnk_epilogue epilogue = {kinds[k], zv != NULL ? z.dev : NULL, mask, p.mask_bytes};
    forward_run run = {ctx, &p, INFERENCE, &x, y.dev, &epilogue, NULL, NULL, workspace, workspace_bytes};

    snprintf(label, sizeof label, "inference %s %s", kind_name(kinds[k]), base);
    ref_normalize(&p.desc, x.values, p.running_mean, p.running_var, EPS, p.gamma, p.beta, want);
    reference_epilogue(&p, want, zv);
    check_forward(&run, &y, want, label, separate);

    snprintf(label, sizeof label, "training %s %s", kind_name(kinds[k]), base);
    run.call = TRAINING;
    ref_normalize(&p.desc, x.values, mean, var, EPS, p.gamma, p.beta, want);
    reference_epilogue(&p, want, zv);
    check_forward(&run, &y, want, label, NULL);
  }

  /* y written over z: the same bits as into a separate y. */
  snprintf(label, sizeof label, "inference add+relu in place over z %s", base);
  tensor z_copy = random_tensor(&p, rng);
  free(z_copy.values);
  z_copy.values = malloc((size_t)(p.elements + 1) * sizeof(double));
  void *z_bytes = read_tensor(&p, &z);
  dev_upload(z_copy.dev, z_bytes, p.bytes);
  free(z_bytes);
  const bnk_epilogue in_place = {BNK_EPILOGUE_ADD_RELU, z_copy.dev, NULL, 0};
  cr_assert_eq(bnk_forward_inference_ex(ctx, &p.desc, x.dev, z_copy.dev, p.gamma_dev, p.beta_dev, p.running_mean_dev,
                                        p.running_var_dev, EPS, &in_place),
               BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
  free(read_tensor(&p, &z_copy));
  expect_close(label, z_copy.values, separate, p.elements, 0.0, 0.0);

  free(want);
  free(separate);
  free(mean);
  free(var);
  free_tensor(&x);
  free_tensor(&z);
  free_tensor(&y);
  free_tensor(&z_copy);
  dev_free(mask);
  dev_free(workspace);
  free_problem(&p);
}

Test(epilogue, forward_sweep, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) run_forward_case(&cases[i], ctx, &rng);
  bnk_context_destroy(ctx);
}

/* bnk_inference_params against float64, then bnk_scale_shift (plain, ReLU, add + ReLU) against
 * x * scale + shift of those float32 parameters. */
static void run_scale_shift_case(const epilogue_case *ec, bnk_context *ctx, test_rng *rng) {
  char label[200], base[120];
  describe(ec, base, sizeof base);
  problem p = make_problem(ec, rng);
  const int64_t c = ec->c;
  float *scale = dev_alloc((size_t)c * 4), *shift = dev_alloc((size_t)c * 4);
  cr_assert_eq(
      bnk_inference_params(ctx, c, p.gamma_dev, p.beta_dev, p.running_mean_dev, p.running_var_dev, EPS, scale, shift),
      BNK_SUCCESS, "%s", bnk_last_error_message());
  double *scale_got = malloc((size_t)c * 8), *shift_got = malloc((size_t)c * 8);
  double *scale_want = malloc((size_t)c * 8), *shift_want = malloc((size_t)c * 8);
  dev_read_floats(scale, scale_got, c);
  dev_read_floats(shift, shift_got, c);
  for (int64_t i = 0; i < c; ++i) {
    scale_want[i] = p.gamma[i] / sqrt(p.running_var[i] + EPS);
    shift_want[i] = p.beta[i] - p.running_mean[i] * scale_want[i];
  }
  expect_close("inference_params scale", scale_got, scale_want, c, 0.0, 1e-6);
  expect_close("inference_params shift", shift_got, shift_want, c, 1e-6, 1e-6);

  tensor x = random_tensor(&p, rng), z = random_tensor(&p, rng), y = output_tensor(&p);
  void *mask = dev_alloc(p.mask_bytes);
  double *want = malloc((size_t)(p.elements + 1) * sizeof(double));
  const int64_t spatial = ref_spatial(&p.desc);
  const bnk_epilogue_kind kinds[3] = {BNK_EPILOGUE_NONE, BNK_EPILOGUE_RELU, BNK_EPILOGUE_ADD_RELU};
  for (int k = 0; k < 3; ++k) {
    for (int64_t n = 0; n < ec->n; ++n)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t s = 0; s < spatial; ++s) {
          const int64_t i = ref_offset(&p.desc, n, ch, s);
          want[i] = x.values[i] * scale_got[ch] + shift_got[ch];
        }
    if (kinds[k] != BNK_EPILOGUE_NONE)
      reference_epilogue(&p, want, kinds[k] == BNK_EPILOGUE_ADD_RELU ? z.values : NULL);
    const bnk_epilogue epilogue = {kinds[k], kinds[k] == BNK_EPILOGUE_ADD_RELU ? z.dev : NULL,
                                   kinds[k] == BNK_EPILOGUE_NONE ? NULL : mask, p.mask_bytes};
    const forward_run run = {ctx, &p, SCALE_SHIFT, &x, y.dev, &epilogue, scale, shift, NULL, 0};
    snprintf(label, sizeof label, "scale_shift %s %s", kind_name(kinds[k]), base);
    check_forward(&run, &y, want, label, NULL);
  }
  free(scale_got);
  free(shift_got);
  free(scale_want);
  free(shift_want);
  free(want);
  free_tensor(&x);
  free_tensor(&z);
  free_tensor(&y);
  dev_free(mask);
  dev_free(scale);
  dev_free(shift);
  free_problem(&p);
}

Test(epilogue, inference_params_and_scale_shift, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i += 2) run_scale_shift_case(&cases[i], ctx, &rng);
  bnk_context_destroy(ctx);
}

/* The mask is y > 0 of y as stored, not of the fp32 value before its rounding: per channel a value t at the
 * edges of the 16-bit types (positive values that round to +0, the ties to 0, the least values that round up to
 * the smallest subnormal, subnormals, values that round to infinity), as y = x * t with x = 1 almost everywhere;
 * at random elements x is -1 (ReLU to 0) or NaN (let through, bit 0). Both layouts, 32 channels so that
 * channels-last rows are whole mask words, 16-byte vectors. */
static void run_mask_edges(bnk_context *ctx, bnk_dtype dtype, bnk_layout layout, test_rng *rng) {
  const double half_tie = ldexp(1.0, -25), bf16_tie = ldexp(1.0, -134);
  const double f16_edges[8] = {
      ldexp(1.0, -26), half_tie, nextafterf((float)half_tie, 1.0f), ldexp(1.0, -20), 65520.0, 1e-30, 3.0,
      ldexp(1.0, -24)};
  const double bf16_edges[8] = {
      ldexp(1.0, -135), bf16_tie, nextafterf((float)bf16_tie, 1.0f), ldexp(1.0, -130), FLT_MAX, 1e-30, 3.0,
      ldexp(1.0, -133)};
  const double *edges = dtype == BNK_FLOAT16 ? f16_edges : bf16_edges;
  const epilogue_case ec = {dtype, layout, 2, 32, S2(4, 4), 0};
  char base[120];
  describe(&ec, base, sizeof base);
  problem p = make_problem(&ec, rng);
  double *scale = malloc(32 * sizeof(double)), *shift = calloc(32, sizeof(double));
  for (int ch = 0; ch < 32; ++ch) scale[ch] = edges[ch % 8];
  float *scale_dev = dev_floats(scale, 32), *shift_dev = dev_floats(shift, 32);
  double *x = malloc((size_t)p.elements * sizeof(double)), *want = malloc((size_t)p.elements * sizeof(double));
  const int64_t spatial = ref_spatial(&p.desc);
  for (int64_t n = 0; n < ec.n; ++n)
    for (int64_t ch = 0; ch < ec.c; ++ch)
      for (int64_t sp = 0; sp < spatial; ++sp) {
        const int64_t i = ref_offset(&p.desc, n, ch, sp);
        const double draw = rng_uniform(rng, 0.0, 1.0);
        x[i] = draw < 0.1 ? NAN : draw < 0.3 ? -1.0 : 1.0;
        const float t = (float)(x[i] * (double)(float)scale[ch]);
        want[i] = round_to_storage(dtype, t < 0.0f ? 0.0f : t);
      }
  void *x_dev = dev_alloc(p.bytes), *y_dev = dev_alloc(p.bytes), *mask = dev_alloc(p.mask_bytes);
  void *x_stored = malloc(p.bytes);
  to_storage(dtype, x, x_stored, p.elements);
  dev_upload(x_dev, x_stored, p.bytes);
  const bnk_epilogue epilogue = {BNK_EPILOGUE_RELU, NULL, mask, p.mask_bytes};
  double *y = malloc((size_t)p.elements * sizeof(double));
  void *y_stored = malloc(p.bytes);
  for (int sched = 0; sched < schedule_count(); ++sched) {
    schedule_use(sched);
    dev_poison(y_dev, p.bytes);
    dev_poison(mask, p.mask_bytes);
    cr_assert_eq(bnk_scale_shift(ctx, &p.desc, x_dev, y_dev, scale_dev, shift_dev, &epilogue), BNK_SUCCESS, "%s: %s",
                 base, bnk_last_error_message());
    dev_download(y_stored, y_dev, p.bytes);
    from_storage(dtype, y_stored, y, p.elements);
    for (int64_t i = 0; i < p.elements; ++i) {
      const int same = isnan(want[i]) ? isnan(y[i]) : y[i] == want[i] && signbit(y[i]) == signbit(want[i]);
      if (!same) {
        cr_expect(0, "mask edges %s [%s]: y[%lld] = %.9g, want %.9g", base, schedule_name(sched), (long long)i, y[i],
                  want[i]);
        break;
      }
    }
    unsigned char *mask_now = dev_snapshot(mask, p.mask_bytes);
    char what[200];
    snprintf(what, sizeof what, "mask edges %s [%s]", base, schedule_name(sched));
    check_mask(&p, what, mask_now, want);
    free(mask_now);
  }
  free(y);
  free(y_stored);
  free(x_stored);
  free(x);
  free(want);
  free(scale);
  free(shift);
  dev_free(x_dev);
  dev_free(y_dev);
  dev_free(mask);
  dev_free(scale_dev);
  dev_free(shift_dev);
  free_problem(&p);
}

Test(epilogue, mask_follows_the_rounded_y) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const bnk_dtype dtypes[2] = {BNK_FLOAT16, BNK_BFLOAT16};
  const bnk_layout layouts[2] = {BNK_NCHW, BNK_NHWC};
  for (int d = 0; d < 2; ++d)
    for (int l = 0; l < 2; ++l) run_mask_edges(ctx, dtypes[d], layouts[l], &rng);
  bnk_context_destroy(ctx);
}

/* ---- the backward through the epilogue ---- */

/* What one backward wrote, as bytes: dx, dz, then dgamma and dbeta. */
typedef struct backward_outputs {
  void *dx, *dz, *params;
} backward_outputs;

static void free_outputs(backward_outputs *o) {
  free(o->dx);
  free(o->dz);
  free(o->params);
}

typedef struct backward_buffers {
  tensor dx, dz;
  float *dgamma, *dbeta;
  void *workspace;
  size_t workspace_bytes;
} backward_buffers;

static void poison_backward(const problem *p, backward_buffers *b) {
  dev_poison(b->dx.dev, p->bytes);
  dev_poison(b->dz.dev, p->bytes);
  dev_poison(b->dgamma, (size_t)p->desc.c * 4);
  dev_poison(b->dbeta, (size_t)p->desc.c * 4);
  dev_poison(b->workspace, b->workspace_bytes);
}

static backward_outputs read_backward(const problem *p, backward_buffers *b, int with_dz) {
  backward_outputs o;
  o.dx = read_tensor(p, &b->dx);
  o.dz = with_dz ? read_tensor(p, &b->dz) : NULL;
  o.params = malloc((size_t)p->desc.c * 8);
  dev_download(o.params, b->dgamma, (size_t)p->desc.c * 4);
  dev_download((char *)o.params + p->desc.c * 4, b->dbeta, (size_t)p->desc.c * 4);
  return o;
}

/* Requires later (schedule, source) runs to match the first bit for bit. */
static void compare_outputs(const problem *p, const char *what, backward_outputs *first, backward_outputs *now,
                            int with_params) {
  if (first->dx == NULL) {
    *first = *now;
    return;
  }
  char label[240];
  snprintf(label, sizeof label, "%s: dx", what);
  expect_bitwise_equal(label, first->dx, now->dx, p->bytes);
  if (now->dz != NULL) {
    snprintf(label, sizeof label, "%s: dz", what);
    expect_bitwise_equal(label, first->dz, now->dz, p->bytes);
  }
  if (with_params) {
    snprintf(label, sizeof label, "%s: dgamma and dbeta", what);
    expect_bitwise_equal(label, first->params, now->params, (size_t)p->desc.c * 8);
  }
  free_outputs(now);
}

static void run_backward_case(const epilogue_case *ec, bnk_context *ctx, test_rng *rng) {
  char label[240], base[120];
  describe(ec, base, sizeof base);
  problem p = make_problem(ec, rng);
  const int64_t c = ec->c;
  tensor x = random_tensor(&p, rng), z = random_tensor(&p, rng), dy = random_tensor(&p, rng), y = output_tensor(&p);
  void *mask = dev_alloc(p.mask_bytes);
  float *save_mean = dev_alloc((size_t)c * 4), *save_invstd = dev_alloc((size_t)c * 4);
  size_t forward_bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &p.desc, &forward_bytes), BNK_SUCCESS);
  void *forward_workspace = dev_alloc(forward_bytes);
  const bnk_epilogue forward_epilogue = {BNK_EPILOGUE_ADD_RELU, z.dev, mask, p.mask_bytes};
  cr_assert_eq(bnk_forward_training_ex(ctx, &p.desc, x.dev, y.dev, p.gamma_dev, p.beta_dev, NULL, NULL, NULL, 0.1, EPS,
                                       save_mean, save_invstd, forward_workspace, forward_bytes, &forward_epilogue),
               BNK_SUCCESS, "%s: %s", base, bnk_last_error_message());
  free(read_tensor(&p, &y));
  double *mean = malloc((size_t)c * 8), *invstd = malloc((size_t)c * 8), *scale = malloc((size_t)c * 8);
  double *frozen_invstd = malloc((size_t)c * 8), *frozen_scale = malloc((size_t)c * 8);
  dev_read_floats(save_mean, mean, c);
  dev_read_floats(save_invstd, invstd, c);
  for (int64_t i = 0; i < c; ++i) {
    scale[i] = p.gamma[i] * invstd[i];
    frozen_invstd[i] = 1.0 / sqrt(p.running_var[i] + EPS);
    frozen_scale[i] = p.gamma[i] * frozen_invstd[i];
  }
  /* The gradient that reaches the BN: dy where the stored y > 0. */
  double *g = malloc((size_t)(p.elements + 1) * 8);
  for (int64_t i = 0; i < p.elements; ++i) g[i] = y.values[i] > 0.0 ? dy.values[i] : 0.0;
  double *dx_ref = malloc((size_t)(p.elements + 1) * 8), *dgamma_ref = malloc((size_t)c * 8);
  double *dbeta_ref = malloc((size_t)c * 8), *got_params = malloc((size_t)c * 16);

  backward_buffers b = {
      output_tensor(&p), output_tensor(&p), dev_alloc((size_t)c * 4), dev_alloc((size_t)c * 4), NULL, 0};
  cr_assert_eq(bnk_backward_workspace_size(ctx, &p.desc, &b.workspace_bytes), BNK_SUCCESS);
  b.workspace = dev_alloc(b.workspace_bytes);

  const bnk_epilogue_kind kinds[2] = {BNK_EPILOGUE_RELU, BNK_EPILOGUE_ADD_RELU};
  for (int k = 0; k < 2; ++k) {
    const int with_dz = kinds[k] == BNK_EPILOGUE_ADD_RELU;
    /* Training: the reduction gates dy (and writes dz), the dx pass reads dz or gates dy again. */
    ref_backward(&p.desc, x.values, g, mean, invstd, p.gamma, dx_ref, dgamma_ref, dbeta_ref);
    backward_outputs first = {NULL, NULL, NULL};
    for (int source = 0; source < 2; ++source) {
      const bnk_epilogue_grad epilogue = {kinds[k], source == 0 ? y.dev : NULL, source == 1 ? mask : NULL, p.mask_bytes,
                                          with_dz ? b.dz.dev : NULL};
      for (int schedule = 0; schedule < schedule_count(); ++schedule) {
        schedule_use(schedule);
        snprintf(label, sizeof label, "backward %s from %s %s [%s]", kind_name(kinds[k]), source == 0 ? "y" : "mask",
                 base, schedule_name(schedule));
        poison_backward(&p, &b);
        const bnk_status status = bnk_backward_ex(ctx, &p.desc, x.dev, dy.dev, b.dx.dev, p.gamma_dev, b.dgamma, b.dbeta,
                                                  save_mean, save_invstd, b.workspace, b.workspace_bytes, &epilogue);
        cr_assert_eq(status, BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
        backward_outputs now = read_backward(&p, &b, with_dz);
        check_training_dx(label, &p.desc, b.dx.values, dx_ref, scale);
        if (with_dz) expect_close(label, b.dz.values, g, p.elements, 0.0, 0.0);
        from_storage(BNK_FLOAT32, now.params, got_params, 2 * c);
        check_gradient_sums(label, &p.desc, got_params, got_params + p.desc.c, g, x.values, mean, invstd, dgamma_ref,
                            dbeta_ref);
        compare_outputs(&p, label, &first, &now, 1);
      }
    }
    free_outputs(&first);

    /* Frozen statistics: dx alone (the dx pass gates dy and writes dz), then with dgamma and dbeta (the
     * reduction writes dz, the dx pass reads it): the same dx and dz. */
    ref_backward_inference(&p.desc, x.values, g, p.running_mean, p.running_var, EPS, p.gamma, dx_ref, dgamma_ref,
                           dbeta_ref);
    backward_outputs frozen_first = {NULL, NULL, NULL};
    for (int source = 0; source < 2; ++source)
      for (int with_params = 0; with_params < 2; ++with_params) {
        const bnk_epilogue_grad epilogue = {kinds[k], source == 0 ? y.dev : NULL, source == 1 ? mask : NULL,
                                            p.mask_bytes, with_dz ? b.dz.dev : NULL};
        snprintf(label, sizeof label, "inference backward %s from %s%s %s", kind_name(kinds[k]),
                 source == 0 ? "y" : "mask", with_params ? " with dgamma, dbeta" : "", base);
        poison_backward(&p, &b);
        const bnk_status status = bnk_backward_inference_ex(
            ctx, &p.desc, with_params ? x.dev : NULL, dy.dev, b.dx.dev, p.gamma_dev, with_params ? b.dgamma : NULL,
            with_params ? b.dbeta : NULL, p.running_mean_dev, p.running_var_dev, EPS, with_params ? b.workspace : NULL,
            with_params ? b.workspace_bytes : 0, &epilogue);
        cr_assert_eq(status, BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
        backward_outputs now = read_backward(&p, &b, with_dz);
        check_training_dx(label, &p.desc, b.dx.values, dx_ref, frozen_scale);
        if (with_dz) expect_close(label, b.dz.values, g, p.elements, 0.0, 0.0);
        if (with_params) {
          from_storage(BNK_FLOAT32, now.params, got_params, 2 * c);
          check_gradient_sums(label, &p.desc, got_params, got_params + p.desc.c, g, x.values, p.running_mean,
                              frozen_invstd, dgamma_ref, dbeta_ref);
        }
        compare_outputs(&p, label, &frozen_first, &now, 0);
      }
    free_outputs(&frozen_first);
  }

  /* dz alone: the dx pass runs for dz and writes no dx. */
  const bnk_epilogue_grad dz_only = {BNK_EPILOGUE_ADD_RELU, NULL, mask, p.mask_bytes, b.dz.dev};
  poison_backward(&p, &b);
  void *dx_before = dev_snapshot(b.dx.dev, p.bytes);
  cr_assert_eq(bnk_backward_ex(ctx, &p.desc, x.dev, dy.dev, NULL, p.gamma_dev, NULL, NULL, save_mean, save_invstd,
                               b.workspace, b.workspace_bytes, &dz_only),
               BNK_SUCCESS, "dz only %s: %s", base, bnk_last_error_message());
  free(read_tensor(&p, &b.dz));
  expect_close("dz only", b.dz.values, g, p.elements, 0.0, 0.0);
  expect_unchanged("dx (NULL)", b.dx.dev, dx_before, p.bytes);
  free(dx_before);

  free(mean);
  free(invstd);
  free(scale);
  free(frozen_invstd);
  free(frozen_scale);
  free(g);
  free(dx_ref);
  free(dgamma_ref);
  free(dbeta_ref);
  free(got_params);
  free_tensor(&x);
  free_tensor(&z);
  free_tensor(&dy);
  free_tensor(&y);
  free_tensor(&b.dx);
  free_tensor(&b.dz);
  dev_free(b.dgamma);
  dev_free(b.dbeta);
  dev_free(b.workspace);
  dev_free(mask);
  dev_free(save_mean);
  dev_free(save_invstd);
  dev_free(forward_workspace);
  free_problem(&p);
}

Test(epilogue, backward_sweep, .timeout = 600) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) run_backward_case(&cases[i], ctx, &rng);
  bnk_context_destroy(ctx);
}

/* ---- argument rules: each rejection names the field and writes nothing ---- */

Test(epilogue, rejections_write_nothing) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  const epilogue_case ec = {BNK_FLOAT32, BNK_NHWC, 3, 5, S1(7), 0};
  problem p = make_problem(&ec, &rng);
  tensor x = random_tensor(&p, &rng), z = random_tensor(&p, &rng), dy = random_tensor(&p, &rng);
  tensor y = random_tensor(&p, &rng), dx = random_tensor(&p, &rng), dz = random_tensor(&p, &rng);
  unsigned char *mask = dev_alloc(p.mask_bytes + 4);
  float *scale = dev_alloc(5 * 4), *shift = dev_alloc(5 * 4), *dgamma = dev_alloc(5 * 4);
  size_t ws_bytes = 0;
  cr_assert_eq(bnk_backward_workspace_size(ctx, &p.desc, &ws_bytes), BNK_SUCCESS);
  void *ws = dev_alloc(ws_bytes);
  void *before[6] = {dev_snapshot(y.dev, p.bytes),     dev_snapshot(dx.dev, p.bytes), dev_snapshot(dz.dev, p.bytes),
                     dev_snapshot(mask, p.mask_bytes), dev_snapshot(scale, 20),       dev_snapshot(dgamma, 20)};
  const bnk_status invalid = BNK_ERROR_INVALID_VALUE;
  const bnk_tensor_desc *d = &p.desc;
  const size_t mb = p.mask_bytes;
#define INFER(e) \
  bnk_forward_inference_ex(ctx, d, x.dev, y.dev, p.gamma_dev, p.beta_dev, p.running_mean_dev, p.running_var_dev, EPS, e)
#define BACKWARD(out, e)                                                                                            \
  bnk_backward_ex(ctx, d, x.dev, dy.dev, out, p.gamma_dev, dgamma, NULL, p.running_mean_dev, p.running_var_dev, ws, \
                  ws_bytes, e)

  bnk_epilogue e = {(bnk_epilogue_kind)7, NULL, NULL, 0};
  expect_rejection(INFER(&e), invalid,
                   "epilogue->kind must be BNK_EPILOGUE_NONE, BNK_EPILOGUE_RELU or "
                   "BNK_EPILOGUE_ADD_RELU, got 7");
  e = (bnk_epilogue){BNK_EPILOGUE_ADD_RELU, NULL, NULL, 0};
  expect_rejection(INFER(&e), invalid, "epilogue->z must not be NULL when epilogue->kind is BNK_EPILOGUE_ADD_RELU");
  e = (bnk_epilogue){BNK_EPILOGUE_RELU, z.dev, NULL, 0};
  expect_rejection(INFER(&e), invalid, "epilogue->z must be NULL unless epilogue->kind is BNK_EPILOGUE_ADD_RELU");
  e = (bnk_epilogue){BNK_EPILOGUE_ADD_RELU, (char *)y.dev + 4, NULL, 0};
  expect_rejection(INFER(&e), invalid, "epilogue->z must be y or not overlap it");
  e = (bnk_epilogue){BNK_EPILOGUE_NONE, NULL, mask, mb};
  expect_rejection(INFER(&e), invalid, "epilogue->mask must be NULL when epilogue->kind is BNK_EPILOGUE_NONE");
  e = (bnk_epilogue){BNK_EPILOGUE_RELU, NULL, mask, mb - 1};
  expect_rejection(INFER(&e), invalid, "epilogue->mask_bytes must be >= ");
  e = (bnk_epilogue){BNK_EPILOGUE_RELU, NULL, mask + 2, mb};
  expect_rejection(INFER(&e), invalid, "epilogue->mask must be 4-byte aligned");
  e = (bnk_epilogue){BNK_EPILOGUE_RELU, NULL, (char *)y.dev + 8, mb};
  expect_rejection(INFER(&e), invalid, "must not overlap x, y or z");
  e = (bnk_epilogue){BNK_EPILOGUE_ADD_RELU, NULL, NULL, 0};
  expect_rejection(bnk_scale_shift(ctx, d, x.dev, y.dev, scale, shift, &e), invalid, "epilogue->z must not be NULL");
  expect_rejection(bnk_forward_training_ex(ctx, d, x.dev, y.dev, NULL, NULL, NULL, NULL, NULL, 0.1, EPS, NULL, NULL, ws,
                                           ws_bytes, &e),
                   invalid, "epilogue->z must not be NULL");

  bnk_epilogue_grad g = {BNK_EPILOGUE_RELU, NULL, NULL, 0, NULL};
  expect_rejection(BACKWARD(dx.dev, &g), invalid, "epilogue->y or epilogue->mask must be given");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_RELU, y.dev, mask, mb, NULL};
  expect_rejection(BACKWARD(dx.dev, &g), invalid, "only one of epilogue->y and epilogue->mask");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_RELU, y.dev, NULL, 0, dz.dev};
  expect_rejection(BACKWARD(dx.dev, &g), invalid,
                   "epilogue->dz must be NULL unless epilogue->kind is "
                   "BNK_EPILOGUE_ADD_RELU");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_NONE, y.dev, NULL, 0, NULL};
  expect_rejection(BACKWARD(dx.dev, &g), invalid, "must be NULL when epilogue->kind is BNK_EPILOGUE_NONE");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_ADD_RELU, NULL, mask, 3, dz.dev};
  expect_rejection(BACKWARD(dx.dev, &g), invalid, "epilogue->mask_bytes must be >= ");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_ADD_RELU, NULL, mask, mb, dy.dev};
  expect_rejection(BACKWARD(dx.dev, &g), invalid, "epilogue->dz");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_ADD_RELU, NULL, mask, mb, dx.dev};
  expect_rejection(BACKWARD(dx.dev, &g), invalid, "must not overlap x, dy, dx");
  g = (bnk_epilogue_grad){BNK_EPILOGUE_RELU, y.dev, NULL, 0, NULL};
  expect_rejection(BACKWARD(y.dev, &g), invalid, "dx (");
  g = (bnk_epilogue_grad){(bnk_epilogue_kind)-1, y.dev, NULL, 0, NULL};
  expect_rejection(bnk_backward_inference_ex(ctx, d, NULL, dy.dev, dx.dev, NULL, NULL, NULL, p.running_mean_dev,
                                             p.running_var_dev, EPS, NULL, 0, &g),
                   invalid, "got -1");
#undef INFER
#undef BACKWARD

  expect_rejection(bnk_inference_params(ctx, 0, NULL, NULL, p.running_mean_dev, p.running_var_dev, EPS, scale, shift),
                   invalid, "C must be > 0, got 0");
  expect_rejection(bnk_inference_params(ctx, 5, NULL, NULL, NULL, p.running_var_dev, EPS, scale, shift), invalid,
                   "running_mean must not be NULL");
  expect_rejection(bnk_inference_params(ctx, 5, NULL, NULL, p.running_mean_dev, p.running_var_dev, -1.0, scale, shift),
                   invalid, "eps must be finite and >= 0, got -1");
  expect_rejection(bnk_inference_params(ctx, 5, NULL, NULL, p.running_mean_dev, p.running_var_dev, EPS, scale, NULL),
                   invalid, "shift must not be NULL");
  expect_rejection(bnk_inference_params(ctx, 5, NULL, NULL, p.running_mean_dev, p.running_var_dev, EPS, scale, scale),
                   invalid, "scale and shift must be different arrays");
  expect_rejection(bnk_scale_shift(ctx, d, x.dev, y.dev, NULL, shift, NULL), invalid, "scale must not be NULL");
  expect_rejection(bnk_scale_shift(ctx, d, x.dev, NULL, scale, shift, NULL), invalid, "y must not be NULL");
  size_t bytes;
  expect_rejection(bnk_epilogue_mask_size(d, NULL), invalid, "bytes must not be NULL");
  expect_rejection(bnk_epilogue_mask_size(NULL, &bytes), invalid, "desc must not be NULL");

  expect_unchanged("y", y.dev, before[0], p.bytes);
  expect_unchanged("dx", dx.dev, before[1], p.bytes);
  expect_unchanged("dz", dz.dev, before[2], p.bytes);
  expect_unchanged("mask", mask, before[3], p.mask_bytes);
  expect_unchanged("scale", scale, before[4], 20);
  expect_unchanged("dgamma", dgamma, before[5], 20);
  for (int i = 0; i < 6; ++i) free(before[i]);
  free_tensor(&x);
  free_tensor(&z);
  free_tensor(&dy);
  free_tensor(&y);
  free_tensor(&dx);
  free_tensor(&dz);
  dev_free(mask);
  dev_free(scale);
  dev_free(shift);
  dev_free(dgamma);
  dev_free(ws);
  free_problem(&p);
  bnk_context_destroy(ctx);
}

/* The mask holds one bit per element in whole 4-byte words. */
Test(epilogue, mask_size) {
  const int64_t spatial[2] = {3, 11};
  bnk_tensor_desc desc;
  size_t bytes = 0;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT16, BNK_NCHW, 2, 5, 2, spatial), BNK_SUCCESS);
  cr_expect_eq(bnk_epilogue_mask_size(&desc, &bytes), BNK_SUCCESS);
  cr_expect_eq(bytes, 44, "330 elements need 11 words, got %zu bytes", bytes);
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NHWC, 0, 5, 2, spatial), BNK_SUCCESS);
  cr_expect_eq(bnk_epilogue_mask_size(&desc, &bytes), BNK_SUCCESS);
  cr_expect_eq(bytes, 0);
}
