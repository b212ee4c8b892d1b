/* The merge of a group's pieces inside the reduction kernels (kernels/reduce.cuh) against the separate merge
 * kernel it replaces, which still runs when a call's groups exceed the context's counters: on both sides of
 * that limit the training forward and the backward give bitwise the same outputs, under every schedule, both
 * against the float64 reference; each side launches what it should (2 and 3 kernels, on the emulation's
 * traffic meter), and every call leaves the counters at zero. Channels-last tiles merge in two levels (bands of
 * pieces, then the tile: kernels/launchers.h), and the cases cover one band, full bands, and a short last band
 * in one tile and in two. The limit is moved with the internal bnk__context_limit_merge_counters, so this
 * suite runs on bnk_emu only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/gradient_check.h"
#include "tests/harness.h"
#include "tests/reference.h"

#ifdef BNK_TEST_EMULATION
#include <bnk_emu/control.h>
#include <cuda_runtime_api.h>

#include "host/internal.h"

/* The tolerances of tests/test_forward.c and tests/test_backward.c, which explain them (the backward's are in
 * tests/gradient_check.h). */
#define EPS 1e-5
#define MEAN_TOLERANCE 1e-6
#define INVSTD_TOLERANCE 1e-6
#define RUNNING_TOLERANCE 2e-6
#define Y_TOLERANCE 1e-5
#define Y_FP32_FLOOR 1e-6
/* Batches counted before the call: the cumulative weight of this one is 1 / (TRACKED + 1). */
#define TRACKED 4

typedef struct merge_case {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n, c, h, w;
  int short_band; /* channels-last: the plan has several bands of pieces, the last of them short */
} merge_case;

/* Several pieces per channel (channels-first, one channel a group); channels-last, a tensor of one piece, tiles
 * of 200 channels (13 pieces, a band each) and of 1100 (five tiles, two pieces), and tiles whose pieces fill
 * several bands but the last: 19 pieces in bands of 2, and two tiles of 61 pieces in bands of 4 (element-wide
 * accesses, as C = 300 is not a multiple of 8). */
static const merge_case cases[] = {
    {BNK_FLOAT32, BNK_NCHW, 8, 3, 40, 40, 0},   {BNK_FLOAT16, BNK_NHWC, 4, 8, 10, 10, 0},
    {BNK_FLOAT16, BNK_NHWC, 4, 200, 10, 10, 0}, {BNK_FLOAT32, BNK_NHWC, 2, 1100, 4, 4, 0},
    {BNK_FLOAT32, BNK_NHWC, 19, 16, 16, 16, 1}, {BNK_FLOAT16, BNK_NHWC, 19, 300, 4, 4, 1},
    {BNK_BFLOAT16, BNK_NCHW, 16, 5, 7, 7, 0},
};

/* Everything a training step writes, as bytes, for bitwise comparison. */
typedef struct step_outputs {
  unsigned char *y, *dx;
  float *save_mean, *save_invstd, *running_mean, *running_var, *dgamma, *dbeta;
  int64_t tracked;
  unsigned long long forward_launches, backward_launches;
} step_outputs;

typedef struct step_data {
  bnk_tensor_desc desc;
  int64_t elements;
  size_t tensor_bytes, channel_bytes;
  double *x, *dy, *gamma, *beta, *running_mean, *running_var;
  void *x_dev, *dy_dev, *y_dev, *dx_dev, *forward_workspace, *backward_workspace;
  size_t forward_workspace_bytes, backward_workspace_bytes;
  float *gamma_dev, *beta_dev, *running_mean_dev, *running_var_dev, *save_mean_dev, *save_invstd_dev;
  float *dgamma_dev, *dbeta_dev;
  int64_t *tracked_dev;
} step_data;

static double *stored_normal(bnk_dtype dtype, int64_t count, double offset, test_rng *rng, void **device) {
  double *values = malloc((size_t)count * sizeof(double));
  for (int64_t i = 0; i < count; ++i) values[i] = offset + rng_normal(rng);
  void *host = malloc((size_t)count * dtype_size(dtype));
  to_storage(dtype, values, host, count);
  from_storage(dtype, host, values, count);
  *device = dev_alloc((size_t)count * dtype_size(dtype));
  dev_upload(*device, host, (size_t)count * dtype_size(dtype));
  free(host);
  return values;
}

static double *uniform_channels(int64_t c, double lo, double hi, test_rng *rng) {
  double *values = malloc((size_t)c * sizeof(double));
  for (int64_t i = 0; i < c; ++i) values[i] = (double)(float)rng_uniform(rng, lo, hi);
  return values;
}

static step_data make_data(bnk_context *ctx, const merge_case *mc, test_rng *rng) {
  step_data d;
  memset(&d, 0, sizeof d);
  const int64_t spatial[2] = {mc->h, mc->w};
  cr_assert_eq(bnk_tensor_desc_init(&d.desc, mc->dtype, mc->layout, mc->n, mc->c, 2, spatial), BNK_SUCCESS);
  d.elements = bnk_tensor_desc_elements(&d.desc);
  d.tensor_bytes = (size_t)d.elements * dtype_size(mc->dtype);
  d.channel_bytes = (size_t)mc->c * sizeof(float);
  d.x = stored_normal(mc->dtype, d.elements, rng_uniform(rng, -3.0, 3.0), rng, &d.x_dev);
  d.dy = stored_normal(mc->dtype, d.elements, 0.0, rng, &d.dy_dev);
  d.gamma = uniform_channels(mc->c, 0.5, 1.5, rng);
  d.beta = uniform_channels(mc->c, -0.5, 0.5, rng);
  d.running_mean = uniform_channels(mc->c, -1.0, 1.0, rng);
  d.running_var = uniform_channels(mc->c, 0.5, 2.0, rng);
  d.gamma_dev = dev_floats(d.gamma, mc->c);
  d.beta_dev = dev_floats(d.beta, mc->c);
  d.running_mean_dev = dev_alloc(d.channel_bytes);
  d.running_var_dev = dev_alloc(d.channel_bytes);
  d.save_mean_dev = dev_alloc(d.channel_bytes);
  d.save_invstd_dev = dev_alloc(d.channel_bytes);
  d.dgamma_dev = dev_alloc(d.channel_bytes);
  d.dbeta_dev = dev_alloc(d.channel_bytes);
  d.tracked_dev = dev_alloc(sizeof(int64_t));
  d.y_dev = dev_alloc(d.tensor_bytes);
  d.dx_dev = dev_alloc(d.tensor_bytes);
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &d.desc, &d.forward_workspace_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &d.desc, &d.backward_workspace_bytes), BNK_SUCCESS);
  d.forward_workspace = dev_alloc(d.forward_workspace_bytes);
  d.backward_workspace = dev_alloc(d.backward_workspace_bytes);
  return d;
}

static void free_data(step_data *d) {
  free(d->x);
  free(d->dy);
  free(d->gamma);
  free(d->beta);
  free(d->running_mean);
  free(d->running_var);
  void *device[] = {d->x_dev,
                    d->dy_dev,
                    d->y_dev,
                    d->dx_dev,
                    d->forward_workspace,
                    d->backward_workspace,
                    d->gamma_dev,
                    d->beta_dev,
                    d->running_mean_dev,
                    d->running_var_dev,
                    d->save_mean_dev,
                    d->save_invstd_dev,
                    d->dgamma_dev,
                    d->dbeta_dev,
                    d->tracked_dev};
  for (size_t i = 0; i < sizeof device / sizeof device[0]; ++i) dev_free(device[i]);
}

/* The statistics' plan or the backward sums' plan of this call. */
static bnk_reduce_plan plan_of(const step_data *d, bnk_context *ctx, int backward) {
  const bnk_view view = bnk__view_of(&d->desc);
  const void *forward_pointers[1] = {d->x_dev};
  const void *backward_pointers[2] = {d->x_dev, d->dy_dev};
  const int vec = backward ? bnk__choose_vec(&view, backward_pointers, 2) : bnk__choose_vec(&view, forward_pointers, 1);
  return backward ? bnk__reduce_plan_of(ctx, BNK_FAMILY_BACKWARD_SUMS, BNK_GRAD_PLAIN, &view, vec)
                  : bnk__reduce_plan_of(ctx, BNK_FAMILY_STATS, 0, &view, vec);
}

/* The counters the call's merge inside the kernel takes after [0]; where the case asks for it, checks that the
 * plan's bands are several and the last of them short. */
static int64_t groups_of(const step_data *d, bnk_context *ctx, int backward, const merge_case *mc, const char *label) {
  const bnk_view view = bnk__view_of(&d->desc);
  const bnk_reduce_plan plan = plan_of(d, ctx, backward);
  if (mc->short_band) {
    const int64_t per_band = bnk_merge_band_pieces(plan.parts), bands = bnk_merge_bands(plan.parts);
    cr_assert(bands > 1 && plan.parts % per_band != 0,
              "%s (%s): %lld pieces in %lld bands of %lld, not several bands with a short last one", label,
              backward ? "backward" : "forward", (long long)plan.parts, (long long)bands, (long long)per_band);
  }
  return bnk_merge_groups(&view, &plan);
}

static float *read_channels(const float *device, size_t bytes) {
  float *host = malloc(bytes);
  dev_download(host, device, bytes);
  return host;
}

static void expect_counters_zero(bnk_context *ctx, const char *label) {
  unsigned *counters = malloc(BNK_MERGE_COUNTERS * sizeof(unsigned));
  dev_download(counters, ctx->merge_counters, BNK_MERGE_COUNTERS * sizeof(unsigned));
  for (int i = 0; i < BNK_MERGE_COUNTERS; ++i)
    if (counters[i] != 0) {
      cr_expect(0, "%s: merge counter %d is %u after the call, not 0", label, i, counters[i]);
      break;
    }
  free(counters);
}

/* After a call (the traffic meter reset before it): its status, the emulation's diagnostic, the counters back at
 * zero; returns the launches the meter counted. */
static unsigned long long finish_call(bnk_context *ctx, bnk_status status, const char *label) {
  cr_assert_eq(status, BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
  cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "%s: %s", label, bnk_emu_last_diagnostic());
  bnk_emu_traffic t;
  bnk_emu_traffic_total(&t);
  expect_counters_zero(ctx, label);
  return t.launches;
}

/* A training forward (cumulative momentum) then the backward with its saved statistics, outputs poisoned
 * first, with the context's usable counters set to `forward_limit` and `backward_limit`. */
static step_outputs run_step(bnk_context *ctx, step_data *d, int64_t forward_limit, int64_t backward_limit,
                             const char *label) {
  const int64_t tracked = TRACKED;
  dev_upload(d->tracked_dev, &tracked, sizeof tracked);
  float *running = malloc(d->channel_bytes);
  for (int64_t i = 0; i < d->desc.c; ++i) running[i] = (float)d->running_mean[i];
  dev_upload(d->running_mean_dev, running, d->channel_bytes);
  for (int64_t i = 0; i < d->desc.c; ++i) running[i] = (float)d->running_var[i];
  dev_upload(d->running_var_dev, running, d->channel_bytes);
  free(running);
  dev_poison(d->y_dev, d->tensor_bytes);
  dev_poison(d->dx_dev, d->tensor_bytes);
  float *channel_outputs[] = {d->save_mean_dev, d->save_invstd_dev, d->dgamma_dev, d->dbeta_dev};
  for (size_t i = 0; i < 4; ++i) dev_poison(channel_outputs[i], d->channel_bytes);
  dev_poison(d->forward_workspace, d->forward_workspace_bytes);
  dev_poison(d->backward_workspace, d->backward_workspace_bytes);

  step_outputs o;
  bnk__context_limit_merge_counters(ctx, forward_limit);
  bnk_emu_traffic_reset();
  bnk_status status =
      bnk_forward_training(ctx, &d->desc, d->x_dev, d->y_dev, d->gamma_dev, d->beta_dev, d->running_mean_dev,
                           d->running_var_dev, d->tracked_dev, BNK_MOMENTUM_CUMULATIVE, EPS, d->save_mean_dev,
                           d->save_invstd_dev, d->forward_workspace, d->forward_workspace_bytes);
  o.forward_launches = finish_call(ctx, status, label);

  bnk__context_limit_merge_counters(ctx, backward_limit);
  bnk_emu_traffic_reset();
  status = bnk_backward(ctx, &d->desc, d->x_dev, d->dy_dev, d->dx_dev, d->gamma_dev, d->dgamma_dev, d->dbeta_dev,
                        d->save_mean_dev, d->save_invstd_dev, d->backward_workspace, d->backward_workspace_bytes);
  o.backward_launches = finish_call(ctx, status, label);
  bnk__context_limit_merge_counters(ctx, BNK_MERGE_COUNTERS);

  o.y = malloc(d->tensor_bytes);
  o.dx = malloc(d->tensor_bytes);
  dev_download(o.y, d->y_dev, d->tensor_bytes);
  dev_download(o.dx, d->dx_dev, d->tensor_bytes);
  o.save_mean = read_channels(d->save_mean_dev, d->channel_bytes);
  o.save_invstd = read_channels(d->save_invstd_dev, d->channel_bytes);
  o.running_mean = read_channels(d->running_mean_dev, d->channel_bytes);
  o.running_var = read_channels(d->running_var_dev, d->channel_bytes);
  o.dgamma = read_channels(d->dgamma_dev, d->channel_bytes);
  o.dbeta = read_channels(d->dbeta_dev, d->channel_bytes);
  dev_download(&o.tracked, d->tracked_dev, sizeof o.tracked);
  return o;
}

static void free_outputs(step_outputs *o) {
  free(o->y);
  free(o->dx);
  free(o->save_mean);
  free(o->save_invstd);
  free(o->running_mean);
  free(o->running_var);
  free(o->dgamma);
  free(o->dbeta);
}

static void expect_same_outputs(const char *what, const step_data *d, const step_outputs *a, const step_outputs *b) {
  char name[200];
  const struct {
    const char *name;
    const void *a, *b;
    size_t bytes;
  } fields[] = {{"y", a->y, b->y, d->tensor_bytes},
                {"dx", a->dx, b->dx, d->tensor_bytes},
                {"save_mean", a->save_mean, b->save_mean, d->channel_bytes},
                {"save_invstd", a->save_invstd, b->save_invstd, d->channel_bytes},
                {"running_mean", a->running_mean, b->running_mean, d->channel_bytes},
                {"running_var", a->running_var, b->running_var, d->channel_bytes},
                {"dgamma", a->dgamma, b->dgamma, d->channel_bytes},
                {"dbeta", a->dbeta, b->dbeta, d->channel_bytes},
                {"num_batches_tracked", &a->tracked, &b->tracked, sizeof a->tracked}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; ++i) {
    snprintf(name, sizeof name, "%s: %s", what, fields[i].name);
    expect_bitwise_equal(name, fields[i].a, fields[i].b, fields[i].bytes);
  }
}

static void floats_to_doubles(const float *in, double *out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = in[i];
}

/* The outputs against the float64 reference: statistics of x, y from them, the running statistics after
 * the cumulative update, the count, and the backward from the statistics the forward saved. */
static void expect_reference(const char *label, const step_data *d, const step_outputs *o) {
  const bnk_tensor_desc *desc = &d->desc;
  const int64_t c = desc->c, count = d->elements;
  double *mean = malloc((size_t)c * sizeof(double)), *var = malloc((size_t)c * sizeof(double));
  double *var_unbiased = malloc((size_t)c * sizeof(double)), *got = malloc((size_t)count * sizeof(double));
  double *want = malloc((size_t)count * sizeof(double)), *scale = malloc((size_t)c * sizeof(double));
  double *saved_mean = malloc((size_t)c * sizeof(double)), *saved_invstd = malloc((size_t)c * sizeof(double));
  double *dgamma = malloc((size_t)c * sizeof(double)), *dbeta = malloc((size_t)c * sizeof(double));
  char what[200];
  ref_channel_stats(desc, d->x, mean, var, var_unbiased);
  floats_to_doubles(o->save_mean, saved_mean, c);
  floats_to_doubles(o->save_invstd, saved_invstd, c);
  for (int64_t i = 0; i < c; ++i) {
    const double invstd = ref_invstd(var[i], EPS);
    cr_expect(fabs(saved_mean[i] - mean[i]) <= MEAN_TOLERANCE * (fabs(mean[i]) + sqrt(var[i])),
              "%s: save_mean[%lld] = %.9g, reference %.9g", label, (long long)i, saved_mean[i], mean[i]);
    cr_expect(fabs(saved_invstd[i] - invstd) <= INVSTD_TOLERANCE * invstd,
              "%s: save_invstd[%lld] = %.9g, reference %.9g", label, (long long)i, saved_invstd[i], invstd);
  }
  ref_normalize(desc, d->x, mean, var, EPS, d->gamma, d->beta, want);
  from_storage(desc->dtype, o->y, got, count);
  snprintf(what, sizeof what, "%s: y", label);
  if (desc->dtype == BNK_FLOAT32) expect_close(what, got, want, count, Y_TOLERANCE, 0.0);
  else expect_within_ulps(what, desc->dtype, got, want, count, 1.0, Y_FP32_FLOOR);

  double *running_mean = malloc((size_t)c * sizeof(double)), *running_var = malloc((size_t)c * sizeof(double));
  memcpy(running_mean, d->running_mean, (size_t)c * sizeof(double));
  memcpy(running_var, d->running_var, (size_t)c * sizeof(double));
  ref_running_update(c, 1.0 / (TRACKED + 1), mean, var_unbiased, running_mean, running_var);
  double *got_c = malloc((size_t)c * sizeof(double));
  floats_to_doubles(o->running_mean, got_c, c);
  snprintf(what, sizeof what, "%s: running_mean", label);
  expect_close(what, got_c, running_mean, c, 1e-7, RUNNING_TOLERANCE);
  floats_to_doubles(o->running_var, got_c, c);
  snprintf(what, sizeof what, "%s: running_var", label);
  expect_close(what, got_c, running_var, c, 1e-7, RUNNING_TOLERANCE);
  cr_expect_eq(o->tracked, TRACKED + 1, "%s: num_batches_tracked %lld, expected %d", label, (long long)o->tracked,
               TRACKED + 1);

  ref_backward(desc, d->x, d->dy, saved_mean, saved_invstd, d->gamma, want, dgamma, dbeta);
  double *got_sums = malloc((size_t)c * 2 * sizeof(double));
  floats_to_doubles(o->dgamma, got_sums, c);
  floats_to_doubles(o->dbeta, got_sums + c, c);
  check_gradient_sums(label, desc, got_sums, got_sums + c, d->dy, d->x, saved_mean, saved_invstd, dgamma, dbeta);
  free(got_sums);
  for (int64_t ch = 0; ch < c; ++ch) scale[ch] = fabs(d->gamma[ch]) * saved_invstd[ch];
  from_storage(desc->dtype, o->dx, got, count);
  check_training_dx(label, desc, got, want, scale);
  free(mean);
  free(var);
  free(var_unbiased);
  free(got);
  free(want);
  free(scale);
  free(saved_mean);
  free(saved_invstd);
  free(dgamma);
  free(dbeta);
  free(running_mean);
  free(running_var);
  free(got_c);
}

/* A step's launches: `want` kernels in its forward and `want` in its backward. */
static void expect_launches(const char *what, const step_outputs *o, unsigned long long want) {
  cr_expect_eq(o->forward_launches, want, "%s: forward: %llu launches, expected %llu", what, o->forward_launches, want);
  cr_expect_eq(o->backward_launches, want, "%s: backward: %llu launches, expected %llu", what, o->backward_launches,
               want);
}

Test(merge, in_kernel_merge_matches_the_merge_kernel_at_the_counter_limit, .timeout = 900) {
  bnk_context *ctx = test_context();
  cr_assert_eq(bnk_context_set_training_path(ctx, BNK_TRAINING_PATH_TWO_PASS), BNK_SUCCESS);
  test_rng rng = rng_fresh();
  bnk_emu_set_traffic(1);
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
    const merge_case *mc = &cases[k];
    step_data d = make_data(ctx, mc, &rng);
    char shape[96];
    format_shape(shape, sizeof shape, mc->layout, mc->dtype, mc->n, mc->c, 2, d.desc.spatial);
    /* A call needs 1 + groups counters: with exactly that many it merges in the kernel, with one fewer not. */
    const int64_t forward_need = 1 + groups_of(&d, ctx, 0, mc, shape);
    const int64_t backward_need = 1 + groups_of(&d, ctx, 1, mc, shape);
    step_outputs first = {0};
    for (int schedule = 0; schedule < schedule_count(); ++schedule) {
      schedule_use(schedule);
      char label[160];
      snprintf(label, sizeof label, "%s [%s]", shape, schedule_name(schedule));
      step_outputs fused = run_step(ctx, &d, forward_need, backward_need, label);
      step_outputs split = run_step(ctx, &d, forward_need - 1, backward_need - 1, label);
      char what[200];
      snprintf(what, sizeof what, "%s, within the counter limit", label);
      expect_launches(what, &fused, 2);
      snprintf(what, sizeof what, "%s, past the counter limit", label);
      expect_launches(what, &split, 3);
      snprintf(what, sizeof what, "%s, merge in the kernel vs merge kernel", label);
      expect_same_outputs(what, &d, &fused, &split);
      expect_reference(label, &d, &fused);
      free_outputs(&split);
      if (schedule == 0) {
        first = fused;
      } else {
        snprintf(what, sizeof what, "%s vs the %s schedule", label, schedule_name(0));
        expect_same_outputs(what, &d, &first, &fused);
        free_outputs(&fused);
      }
    }
    free_outputs(&first);
    free_data(&d);
  }
  bnk_emu_set_traffic(0);
  bnk_context_destroy(ctx);
}

/* Without the internal limit: a channels-first tensor with more channels than the pool has counters takes
 * the merge kernel, right, and a channel fewer than the pool the merge in the kernel. */
Test(merge, many_channels_take_the_merge_kernel, .timeout = 900) {
  bnk_context *ctx = test_context();
  cr_assert_eq(bnk_context_set_training_path(ctx, BNK_TRAINING_PATH_TWO_PASS), BNK_SUCCESS);
  test_rng rng = rng_fresh();
  bnk_emu_set_traffic(1);
  const merge_case sides[] = {{BNK_FLOAT32, BNK_NCHW, 2, BNK_MERGE_COUNTERS, 1, 2, 0},
                              {BNK_FLOAT32, BNK_NCHW, 2, BNK_MERGE_COUNTERS - 1, 1, 2, 0}};
  for (int side = 0; side < 2; ++side) {
    step_data d = make_data(ctx, &sides[side], &rng);
    const char *label = side == 0 ? "C = 16384" : "C = 16383";
    step_outputs o = run_step(ctx, &d, BNK_MERGE_COUNTERS, BNK_MERGE_COUNTERS, label);
    const unsigned long long want = side == 0 ? 3 : 2;
    expect_launches(label, &o, want);
    expect_reference(label, &d, &o);
    free_outputs(&o);
    free_data(&d);
  }
  bnk_emu_set_traffic(0);
  bnk_context_destroy(ctx);
}

#else

Test(merge, emulation_only) { cr_skip_test("the counter limit and the launch counts are the emulation's"); }

#endif
