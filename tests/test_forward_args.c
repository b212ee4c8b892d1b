/* The forward's argument rules: rejections write nothing; optional pointers; running statistics over
 * several steps in both momentum modes; in-place and empty batches. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"
#include "tests/reference.h"

#define C 5
#define N 6
#define HW 7
#define ELEMENTS (N * C * HW)

typedef struct setup {
  bnk_context *ctx;
  bnk_tensor_desc desc;
  double x[ELEMENTS];
  float *x_dev, *y_dev, *gamma, *beta, *running_mean, *running_var, *save_mean, *save_invstd;
  int64_t *num_batches_tracked;
  void *workspace;
  size_t workspace_bytes;
} setup;

static void make_setup(setup *s, bnk_layout layout) {
  memset(s, 0, sizeof *s);
  s->ctx = test_context();
  const int64_t spatial[1] = {HW};
  cr_assert_eq(bnk_tensor_desc_init(&s->desc, BNK_FLOAT32, layout, N, C, 1, spatial), BNK_SUCCESS);
  test_rng rng = rng_fresh();
  float host[ELEMENTS];
  for (int i = 0; i < ELEMENTS; ++i) {
    host[i] = (float)(rng_normal(&rng) * 2.0 + 1.0);
    s->x[i] = host[i];
  }
  s->x_dev = dev_alloc(sizeof host);
  dev_upload(s->x_dev, host, sizeof host);
  s->y_dev = dev_alloc(sizeof host);
  double params[C];
  for (int c = 0; c < C; ++c) params[c] = rng_uniform(&rng, 0.5, 1.5);
  s->gamma = dev_floats(params, C);
  for (int c = 0; c < C; ++c) params[c] = rng_uniform(&rng, -0.5, 0.5);
  s->beta = dev_floats(params, C);
  for (int c = 0; c < C; ++c) params[c] = 0.0;
  s->running_mean = dev_floats(params, C);
  for (int c = 0; c < C; ++c) params[c] = 1.0;
  s->running_var = dev_floats(params, C);
  s->save_mean = dev_alloc(C * 4);
  s->save_invstd = dev_alloc(C * 4);
  s->num_batches_tracked = dev_alloc(8);
  const int64_t zero = 0;
  dev_upload(s->num_batches_tracked, &zero, 8);
  cr_assert_eq(bnk_forward_training_workspace_size(s->ctx, &s->desc, &s->workspace_bytes), BNK_SUCCESS);
  cr_assert_gt(s->workspace_bytes, 0);
  s->workspace = dev_alloc(s->workspace_bytes);
}

static void free_setup(setup *s) {
  dev_free(s->x_dev);
  dev_free(s->y_dev);
  dev_free(s->gamma);
  dev_free(s->beta);
  dev_free(s->running_mean);
  dev_free(s->running_var);
  dev_free(s->save_mean);
  dev_free(s->save_invstd);
  dev_free(s->num_batches_tracked);
  dev_free(s->workspace);
  bnk_context_destroy(s->ctx);
}

/* Every output of the forward, as bytes, to prove a rejected call wrote nothing. */
typedef struct outputs {
  void *y, *running_mean, *running_var, *save_mean, *save_invstd, *num_batches_tracked;
} outputs;

static outputs snapshot(const setup *s) {
  outputs o = {dev_snapshot(s->y_dev, ELEMENTS * 4), dev_snapshot(s->running_mean, C * 4),
               dev_snapshot(s->running_var, C * 4),  dev_snapshot(s->save_mean, C * 4),
               dev_snapshot(s->save_invstd, C * 4),  dev_snapshot(s->num_batches_tracked, 8)};
  return o;
}

static void expect_nothing_written(const setup *s, const outputs *o) {
  expect_unchanged("y", s->y_dev, o->y, ELEMENTS * 4);
  expect_unchanged("running_mean", s->running_mean, o->running_mean, C * 4);
  expect_unchanged("running_var", s->running_var, o->running_var, C * 4);
  expect_unchanged("save_mean", s->save_mean, o->save_mean, C * 4);
  expect_unchanged("save_invstd", s->save_invstd, o->save_invstd, C * 4);
  expect_unchanged("num_batches_tracked", s->num_batches_tracked, o->num_batches_tracked, 8);
}

static void free_outputs(outputs *o) {
  free(o->y);
  free(o->running_mean);
  free(o->running_var);
  free(o->save_mean);
  free(o->save_invstd);
  free(o->num_batches_tracked);
}

#define TRAIN(s, ...) bnk_forward_training((s).ctx, __VA_ARGS__)

Test(forward_args, rejections_write_nothing) {
  setup s;
  make_setup(&s, BNK_NCHW);
  outputs before = snapshot(&s);
  const bnk_status invalid = BNK_ERROR_INVALID_VALUE;
  float *rm = s.running_mean, *rv = s.running_var, *sm = s.save_mean, *si = s.save_invstd;
  void *ws = s.workspace;
  const size_t wb = s.workspace_bytes;
  const bnk_tensor_desc *d = &s.desc;

  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, -1e-5, sm, si, ws, wb), invalid,
                   "eps must be finite and >= 0, got -1e-05");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, NAN, sm, si, ws, wb), invalid,
                   "eps must be finite and >= 0, got nan");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, INFINITY, sm, si, ws, wb), invalid,
                   "eps must be finite");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 1.5, 1e-5, sm, si, ws, wb), invalid,
                   "momentum must be in [0, 1] or BNK_MOMENTUM_CUMULATIVE, got 1.5");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, -0.5, 1e-5, sm, si, ws, wb), invalid,
                   "got -0.5");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, NAN, 1e-5, sm, si, ws, wb), invalid,
                   "momentum must be");
  /* Printed so that they read back exactly: neither reads as BNK_MOMENTUM_CUMULATIVE or as 1. */
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, -1.0000001, 1e-5, sm, si, ws, wb),
                   invalid, "got -1.0000001");
  expect_rejection(
      TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 1.0000000000000002, 1e-5, sm, si, ws, wb), invalid,
      "got 1.0000000000000002");
  expect_rejection(
      TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, -4.9406564584124654e-324, sm, si, ws, wb),
      invalid, "eps must be finite and >= 0, got -5e-324");
  expect_rejection(
      TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, BNK_MOMENTUM_CUMULATIVE, 1e-5, sm, si, ws, wb),
      invalid, "num_batches_tracked must not be NULL");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, NULL, NULL, 0.1, 1e-5, sm, si, ws, wb), invalid,
                   "running_mean and running_var must both be given or both be NULL");
  expect_rejection(TRAIN(s, d, NULL, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb), invalid,
                   "x must not be NULL");
  expect_rejection(TRAIN(s, d, s.x_dev, NULL, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb), invalid,
                   "y must not be NULL");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb - 1),
                   BNK_ERROR_WORKSPACE_TOO_SMALL, "workspace_bytes must be >=");
  expect_rejection(TRAIN(s, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, NULL, wb), invalid,
                   "workspace must not be NULL");
  expect_rejection(TRAIN(s, NULL, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb), invalid,
                   "desc must not be NULL");
  expect_rejection(
      bnk_forward_training(NULL, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb),
      invalid, "ctx must not be NULL");
  bnk_tensor_desc bad = s.desc;
  bad.c = 0;
  expect_rejection(TRAIN(s, &bad, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb), invalid,
                   "C must be > 0, got 0");
  /* One value per channel cannot be normalized in training (PyTorch raises the same). */
  bnk_tensor_desc single;
  cr_assert_eq(bnk_tensor_desc_init(&single, BNK_FLOAT32, BNK_NCHW, 1, C, 0, NULL), BNK_SUCCESS);
  expect_rejection(TRAIN(s, &single, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, NULL, 0.1, 1e-5, sm, si, ws, wb),
                   invalid, "expected more than 1 value per channel when training");

  const bnk_status inference_eps = bnk_forward_inference(s.ctx, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, rv, -1.0);
  expect_rejection(inference_eps, invalid, "eps must be finite and >= 0, got -1");
  expect_rejection(bnk_forward_inference(s.ctx, d, s.x_dev, s.y_dev, s.gamma, s.beta, NULL, rv, 1e-5), invalid,
                   "running_mean must not be NULL");
  expect_rejection(bnk_forward_inference(s.ctx, d, s.x_dev, s.y_dev, s.gamma, s.beta, rm, NULL, 1e-5), invalid,
                   "running_var must not be NULL");
  expect_rejection(bnk_forward_inference(s.ctx, d, s.x_dev, NULL, s.gamma, s.beta, rm, rv, 1e-5), invalid,
                   "y must not be NULL");
  size_t bytes;
  expect_rejection(bnk_forward_training_workspace_size(s.ctx, d, NULL), invalid, "bytes must not be NULL");
  expect_rejection(bnk_forward_training_workspace_size(NULL, d, &bytes), invalid, "ctx must not be NULL");

  expect_nothing_written(&s, &before);
  free_outputs(&before);
  free_setup(&s);
}

/* Running statistics over several batches: momentum 0.1 and the cumulative average. */
static void run_steps(bnk_layout layout, double momentum) {
  setup s;
  make_setup(&s, layout);
  double rm[C], rv[C], mean[C], var_unbiased[C], x[ELEMENTS];
  for (int c = 0; c < C; ++c) {
    rm[c] = 0.0;
    rv[c] = 1.0;
  }
  test_rng rng = rng_fresh();
  for (int step = 1; step <= 4; ++step) {
    float host[ELEMENTS];
    for (int i = 0; i < ELEMENTS; ++i) {
      host[i] = (float)(rng_normal(&rng) * step + 0.5 * step);
      x[i] = host[i];
    }
    dev_upload(s.x_dev, host, sizeof host);
    cr_assert_eq(bnk_forward_training(s.ctx, &s.desc, s.x_dev, s.y_dev, NULL, NULL, s.running_mean, s.running_var,
                                      s.num_batches_tracked, momentum, 1e-5, NULL, NULL, s.workspace,
                                      s.workspace_bytes),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    ref_channel_stats(&s.desc, x, mean, NULL, var_unbiased);
    ref_running_update(C, momentum == BNK_MOMENTUM_CUMULATIVE ? 1.0 / step : momentum, mean, var_unbiased, rm, rv);
    double got[C];
    dev_read_floats(s.running_mean, got, C);
    expect_close("running_mean", got, rm, C, 1e-6, 2e-6);
    dev_read_floats(s.running_var, got, C);
    expect_close("running_var", got, rv, C, 1e-6, 2e-6);
    int64_t tracked = 0;
    dev_download(&tracked, s.num_batches_tracked, 8);
    cr_expect_eq(tracked, step, "num_batches_tracked = %lld after %d steps", (long long)tracked, step);
  }
  free_setup(&s);
}

Test(forward_args, running_statistics_momentum) { run_steps(BNK_NCHW, 0.1); }
Test(forward_args, running_statistics_cumulative) { run_steps(BNK_NHWC, BNK_MOMENTUM_CUMULATIVE); }

/* No affine, no running statistics, no saved statistics, in place (y == x). */
Test(forward_args, optional_pointers_and_in_place) {
  setup s;
  make_setup(&s, BNK_NHWC);
  double mean[C], var[C], y_ref[ELEMENTS], got[ELEMENTS];
  ref_channel_stats(&s.desc, s.x, mean, var, NULL);
  ref_normalize(&s.desc, s.x, mean, var, 1e-5, NULL, NULL, y_ref);
  outputs before = snapshot(&s);
  cr_assert_eq(bnk_forward_training(s.ctx, &s.desc, s.x_dev, s.x_dev, NULL, NULL, NULL, NULL, NULL, 0.1, 1e-5, NULL,
                                    NULL, s.workspace, s.workspace_bytes),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  dev_read_floats(s.x_dev, got, ELEMENTS);
  expect_close("in-place y", got, y_ref, ELEMENTS, 1e-5, 0.0);
  expect_nothing_written(&s, &before); /* every optional output was NULL */
  free_outputs(&before);
  free_setup(&s);
}

/* An empty batch normalizes nothing and leaves the running statistics as they are, but counts in
 * num_batches_tracked, as nn.BatchNorm does: the next cumulative batch then has weight 1/2. */
Test(forward_args, empty_batch_counts_and_writes_nothing_else) {
  setup s;
  make_setup(&s, BNK_NCHW);
  outputs before = snapshot(&s);
  const int64_t spatial[2] = {0, 3};
  bnk_tensor_desc empty;
  cr_assert_eq(bnk_tensor_desc_init(&empty, BNK_FLOAT32, BNK_NCHW, 4, C, 2, spatial), BNK_SUCCESS);
  size_t bytes = 99;
  cr_expect_eq(bnk_forward_training_workspace_size(s.ctx, &empty, &bytes), BNK_SUCCESS);
  cr_expect_eq(bytes, 0);
  cr_expect_eq(bnk_forward_training(s.ctx, &empty, NULL, NULL, s.gamma, s.beta, s.running_mean, s.running_var,
                                    s.num_batches_tracked, BNK_MOMENTUM_CUMULATIVE, 1e-5, s.save_mean, s.save_invstd,
                                    NULL, 0),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  int64_t tracked = 0;
  dev_download(&tracked, s.num_batches_tracked, 8);
  cr_expect_eq(tracked, 1, "num_batches_tracked = %lld after an empty batch, not 1", (long long)tracked);
  /* Without a counter an empty batch is a no-op; so is inference. */
  cr_expect_eq(bnk_forward_training(s.ctx, &empty, NULL, NULL, s.gamma, s.beta, s.running_mean, s.running_var, NULL,
                                    0.1, 1e-5, s.save_mean, s.save_invstd, NULL, 0),
               BNK_SUCCESS);
  cr_expect_eq(bnk_forward_inference(s.ctx, &empty, NULL, NULL, s.gamma, s.beta, s.running_mean, s.running_var, 1e-5),
               BNK_SUCCESS);
  expect_unchanged("y", s.y_dev, before.y, ELEMENTS * 4);
  expect_unchanged("running_mean", s.running_mean, before.running_mean, C * 4);
  expect_unchanged("running_var", s.running_var, before.running_var, C * 4);
  expect_unchanged("save_mean", s.save_mean, before.save_mean, C * 4);
  expect_unchanged("save_invstd", s.save_invstd, before.save_invstd, C * 4);

  cr_assert_eq(bnk_forward_training(s.ctx, &s.desc, s.x_dev, s.y_dev, NULL, NULL, s.running_mean, s.running_var,
                                    s.num_batches_tracked, BNK_MOMENTUM_CUMULATIVE, 1e-5, NULL, NULL, s.workspace,
                                    s.workspace_bytes),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  double rm[C], rv[C], mean[C], var_unbiased[C], got[C];
  for (int c = 0; c < C; ++c) {
    rm[c] = 0.0;
    rv[c] = 1.0;
  }
  ref_channel_stats(&s.desc, s.x, mean, NULL, var_unbiased);
  ref_running_update(C, 0.5, mean, var_unbiased, rm, rv);
  dev_read_floats(s.running_mean, got, C);
  expect_close("running_mean after an empty and a full batch", got, rm, C, 1e-6, 2e-6);
  dev_read_floats(s.running_var, got, C);
  expect_close("running_var after an empty and a full batch", got, rv, C, 1e-6, 2e-6);
  dev_download(&tracked, s.num_batches_tracked, 8);
  cr_expect_eq(tracked, 2, "num_batches_tracked = %lld, not 2", (long long)tracked);
  free_outputs(&before);
  free_setup(&s);
}

/* A counter the caller left at INT64_MAX wraps to INT64_MIN, as PyTorch's int64 counter does in practice, on the
 * full path and on the empty batch's: never the signed overflow that UBSan (./dev sanitize) reports. */
Test(forward_args, num_batches_tracked_wraps_at_int64_max) {
  setup s;
  make_setup(&s, BNK_NCHW);
  const int64_t spatial[2] = {0, 3};
  bnk_tensor_desc empty;
  cr_assert_eq(bnk_tensor_desc_init(&empty, BNK_FLOAT32, BNK_NCHW, 4, C, 2, spatial), BNK_SUCCESS);
  for (int is_empty = 0; is_empty < 2; ++is_empty) {
    const int64_t last = INT64_MAX;
    dev_upload(s.num_batches_tracked, &last, 8);
    cr_assert_eq(bnk_forward_training(s.ctx, is_empty ? &empty : &s.desc, is_empty ? NULL : s.x_dev,
                                      is_empty ? NULL : s.y_dev, NULL, NULL, s.running_mean, s.running_var,
                                      s.num_batches_tracked, 0.1, 1e-5, NULL, NULL, is_empty ? NULL : s.workspace,
                                      is_empty ? 0 : s.workspace_bytes),
                 BNK_SUCCESS, "%s", bnk_last_error_message());
    int64_t tracked = 0;
    dev_download(&tracked, s.num_batches_tracked, 8);
    cr_expect_eq(tracked, INT64_MIN, "%s batch: num_batches_tracked = %lld after INT64_MAX",
                 is_empty ? "empty" : "full", (long long)tracked);
  }
  free_setup(&s);
}

/* Without running statistics momentum is ignored, whatever its value (the header's rule): the call succeeds
 * and gives the y of momentum 0.1 bit for bit. */
Test(forward_args, momentum_ignored_without_running_statistics) {
  setup s;
  make_setup(&s, BNK_NHWC);
  cr_assert_eq(bnk_forward_training(s.ctx, &s.desc, s.x_dev, s.y_dev, s.gamma, s.beta, NULL, NULL, NULL, 0.1, 1e-5,
                                    NULL, NULL, s.workspace, s.workspace_bytes),
               BNK_SUCCESS);
  void *want = dev_snapshot(s.y_dev, ELEMENTS * 4);
  const double ignored[] = {NAN, -INFINITY, 5.0, -1.0000001, 1e300};
  for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; ++i) {
    dev_poison(s.y_dev, ELEMENTS * 4);
    cr_expect_eq(bnk_forward_training(s.ctx, &s.desc, s.x_dev, s.y_dev, s.gamma, s.beta, NULL, NULL, NULL, ignored[i],
                                      1e-5, NULL, NULL, s.workspace, s.workspace_bytes),
                 BNK_SUCCESS, "momentum %g: %s", ignored[i], bnk_last_error_message());
    expect_unchanged("y", s.y_dev, want, ELEMENTS * 4);
  }
  free(want);
  free_setup(&s);
}
