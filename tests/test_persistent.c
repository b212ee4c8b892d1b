/* The persistent training forward (one cooperative launch, x read once) against the float64 reference, on
 * every schedule and worker count, for both layouts, every dtype, ranks 0-3 and every epilogue; the same data
 * through each forced path and the automatic choice; the capacity boundary on both sides; the SM limit; a
 * persistent forward captured into a graph. The emulated device has few SMs, so a full co-resident grid is a
 * few blocks, and the context's SM limit makes it smaller still. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#ifdef BNK_TEST_EMULATION
#include <bnk_emu/control.h>

#include "host/internal.h" /* bnk__plan_persistent_op: which depth of the second cache level a plan takes */
#endif

#include "tests/harness.h"
#include "tests/gradient_check.h"
#include "tests/reference.h"

/* Tolerances of test_forward.c (its comment gives their reasons): the persistent path is held to them too. */
#define MEAN_TOLERANCE 1e-6
#define INVSTD_TOLERANCE 1e-6
#define Y_TOLERANCE 1e-5
#define Y_FP32_FLOOR 1e-6
#define RUNNING_TOLERANCE 2e-6
#define EPS 1e-5
/* The cumulative average after three batches already counted weighs this batch 1/4. */
#define BATCHES_BEFORE 3

/* SMs of the emulated device, and the SM limit of most tests: a grid of a few blocks. */
#define EMULATED_SMS 4
#define TEST_SM_LIMIT EMULATED_SMS

static void set_path(bnk_context *ctx, bnk_training_path path) {
  cr_assert_eq(bnk_context_set_training_path(ctx, path), BNK_SUCCESS, "%s", bnk_last_error_message());
}

static bnk_context *persistent_context(int sm_limit) {
#ifdef BNK_TEST_EMULATION
  bnk_emu_set_sm_count(EMULATED_SMS);
#endif
  bnk_context *ctx = test_context();
  cr_assert_eq(bnk_context_set_sm_limit(ctx, sm_limit), BNK_SUCCESS, "%s", bnk_last_error_message());
  set_path(ctx, BNK_TRAINING_PATH_AUTO); /* test_context keeps the emulation's other suites on two passes */
  return ctx;
}

typedef struct shape {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n, c;
  int spatial_dims;
  int64_t spatial[3];
  int misalign; /* every tensor one element past a 256-byte boundary */
} shape;

/* One case's tensors and per-channel arrays, with the reference's results. */
typedef struct problem {
  shape sh;
  bnk_tensor_desc desc;
  int64_t elements;
  size_t bytes, mask_bytes, skew, workspace_bytes;
  double *x, *z, *gamma, *beta, *running_mean, *running_var;
  unsigned char *x_base, *z_base, *y_base;
  void *x_dev, *z_dev, *y_dev, *mask_dev, *workspace;
  float *gamma_dev, *beta_dev, *running_mean_dev, *running_var_dev, *save_mean_dev, *save_invstd_dev;
  int64_t *batches_dev;
  double momentum; /* BNK_MOMENTUM_CUMULATIVE, or the same weight as a momentum: 1 / (BATCHES_BEFORE + 1) */
  /* reference */
  double *mean, *var, *invstd, *y_plain, *rm_ref, *rv_ref;
} problem;

static double *doubles(int64_t count) { return malloc((size_t)(count + 1) * sizeof(double)); }

/* Normal values around per-channel centers, stored in the dtype and uploaded one element past base + skew. */
static double *random_tensor(problem *p, test_rng *rng, unsigned char **base, void **dev) {
  double *values = doubles(p->elements);
  const int64_t spatial = ref_spatial(&p->desc);
  for (int64_t c = 0; c < p->desc.c; ++c) {
    const double center = rng_uniform(rng, -2.0, 2.0);
    for (int64_t n = 0; n < p->desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s) values[ref_offset(&p->desc, n, c, s)] = center + rng_normal(rng);
  }
  void *host = malloc(p->bytes + 1);
  to_storage(p->desc.dtype, values, host, p->elements);
  from_storage(p->desc.dtype, host, values, p->elements);
  *base = dev_alloc(p->bytes + p->skew + 1);
  *dev = *base + p->skew;
  dev_upload(*dev, host, p->bytes);
  free(host);
  return values;
}

static problem make_problem(bnk_context *ctx, const shape *sh, test_rng *rng) {
  problem p;
  memset(&p, 0, sizeof p);
  p.sh = *sh;
  p.momentum = BNK_MOMENTUM_CUMULATIVE;
  cr_assert_eq(bnk_tensor_desc_init(&p.desc, sh->dtype, sh->layout, sh->n, sh->c, sh->spatial_dims, sh->spatial),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  p.elements = bnk_tensor_desc_elements(&p.desc);
  p.bytes = (size_t)p.elements * dtype_size(sh->dtype);
  p.skew = sh->misalign ? dtype_size(sh->dtype) : 0;
  cr_assert_eq(bnk_epilogue_mask_size(&p.desc, &p.mask_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &p.desc, &p.workspace_bytes), BNK_SUCCESS);
  p.x = random_tensor(&p, rng, &p.x_base, &p.x_dev);
  p.z = random_tensor(&p, rng, &p.z_base, &p.z_dev);
  p.y_base = dev_alloc(p.bytes + p.skew + 1);
  p.y_dev = p.y_base + p.skew;
  p.mask_dev = dev_alloc(p.mask_bytes);
  p.workspace = dev_alloc(p.workspace_bytes);
  const int64_t c = sh->c;
  p.gamma = doubles(c);
  p.beta = doubles(c);
  p.running_mean = doubles(c);
  p.running_var = doubles(c);
  for (int64_t i = 0; i < c; ++i) {
    p.gamma[i] = (float)rng_uniform(rng, 0.5, 1.5);
    p.beta[i] = (float)rng_uniform(rng, -0.5, 0.5);
    p.running_mean[i] = (float)rng_uniform(rng, -1.0, 1.0);
    p.running_var[i] = (float)rng_uniform(rng, 0.5, 2.0);
  }
  p.gamma_dev = dev_floats(p.gamma, c);
  p.beta_dev = dev_floats(p.beta, c);
  p.running_mean_dev = dev_alloc((size_t)c * 4);
  p.running_var_dev = dev_alloc((size_t)c * 4);
  p.save_mean_dev = dev_alloc((size_t)c * 4);
  p.save_invstd_dev = dev_alloc((size_t)c * 4);
  p.batches_dev = dev_alloc(sizeof(int64_t));

  p.mean = doubles(c);
  p.var = doubles(c);
  p.invstd = doubles(c);
  double *var_unbiased = doubles(c);
  ref_channel_stats(&p.desc, p.x, p.mean, p.var, var_unbiased);
  for (int64_t i = 0; i < c; ++i) p.invstd[i] = ref_invstd(p.var[i], EPS);
  p.y_plain = doubles(p.elements);
  ref_normalize(&p.desc, p.x, p.mean, p.var, EPS, p.gamma, p.beta, p.y_plain);
  p.rm_ref = doubles(c);
  p.rv_ref = doubles(c);
  memcpy(p.rm_ref, p.running_mean, (size_t)c * sizeof(double));
  memcpy(p.rv_ref, p.running_var, (size_t)c * sizeof(double));
  ref_running_update(c, 1.0 / (BATCHES_BEFORE + 1), p.mean, var_unbiased, p.rm_ref, p.rv_ref);
  free(var_unbiased);
  return p;
}

static void free_problem(problem *p) {
  double *host[] = {p->x,    p->z,   p->gamma,  p->beta,    p->running_mean, p->running_var,
                    p->mean, p->var, p->invstd, p->y_plain, p->rm_ref,       p->rv_ref};
  for (size_t i = 0; i < sizeof host / sizeof host[0]; ++i) free(host[i]);
  void *dev[] = {p->x_base,          p->z_base,        p->y_base,          p->mask_dev,
                 p->workspace,       p->gamma_dev,     p->beta_dev,        p->running_mean_dev,
                 p->running_var_dev, p->save_mean_dev, p->save_invstd_dev, p->batches_dev};
  for (size_t i = 0; i < sizeof dev / sizeof dev[0]; ++i) dev_free(dev[i]);
}

static void describe(const problem *p, bnk_epilogue_kind kind, char *out, size_t size) {
  char text[96];
  format_shape(text, sizeof text, p->sh.layout, p->sh.dtype, p->sh.n, p->sh.c, p->sh.spatial_dims, p->sh.spatial);
  static const char *kinds[] = {"plain", "relu", "add+relu"};
  snprintf(out, size, "%s%s %s", text, p->sh.misalign ? " misaligned" : "", kinds[kind]);
}

/* The epilogue of a case: the mask recorded for the ReLU kinds. */
static bnk_epilogue epilogue_of(const problem *p, bnk_epilogue_kind kind) {
  bnk_epilogue e = {kind, kind == BNK_EPILOGUE_ADD_RELU ? p->z_dev : NULL,
                    kind != BNK_EPILOGUE_NONE ? p->mask_dev : NULL, p->mask_bytes};
  return e;
}

/* Poisons every output and restores the running statistics and the batch count. */
static void prepare_outputs(problem *p) {
  const int64_t c = p->sh.c;
  float *initial = malloc((size_t)c * 8);
  for (int64_t i = 0; i < c; ++i) {
    initial[i] = (float)p->running_mean[i];
    initial[c + i] = (float)p->running_var[i];
  }
  dev_upload(p->running_mean_dev, initial, (size_t)c * 4);
  dev_upload(p->running_var_dev, initial + c, (size_t)c * 4);
  free(initial);
  const int64_t batches = BATCHES_BEFORE;
  dev_upload(p->batches_dev, &batches, sizeof batches);
  dev_poison(p->y_dev, p->bytes);
  dev_poison(p->mask_dev, p->mask_bytes);
  dev_poison(p->workspace, p->workspace_bytes);
  dev_poison(p->save_mean_dev, (size_t)c * 4);
  dev_poison(p->save_invstd_dev, (size_t)c * 4);
}

static bnk_status call_forward(bnk_context *ctx, problem *p, bnk_epilogue_kind kind) {
  const bnk_epilogue e = epilogue_of(p, kind);
  return bnk_forward_training_ex(ctx, &p->desc, p->x_dev, p->y_dev, p->gamma_dev, p->beta_dev, p->running_mean_dev,
                                 p->running_var_dev, p->batches_dev, p->momentum, EPS, p->save_mean_dev,
                                 p->save_invstd_dev, p->workspace, p->workspace_bytes, &e);
}

/* Every output of the last run against the reference. Returns the bytes of y, the mask and the per-channel
 * outputs (the caller frees them) for bitwise comparisons. */
/* The per-channel floats follow y and the mask, 4-byte aligned (16-bit y of an odd count leaves them unaligned). */
static size_t channels_offset(const problem *p) { return (p->bytes + p->mask_bytes + 3) & ~(size_t)3; }

static unsigned char *check_outputs(const problem *p, bnk_epilogue_kind kind, const char *label) {
  const int64_t c = p->sh.c;
  const size_t channel_bytes = (size_t)c * 4 * 4;
  unsigned char *raw = calloc(channels_offset(p) + channel_bytes + sizeof(int64_t), 1);
  unsigned char *mask = raw + p->bytes;
  float *channels = (float *)(raw + channels_offset(p));
  dev_download(raw, p->y_dev, p->bytes);
  dev_download(mask, p->mask_dev, p->mask_bytes);
  dev_download(channels, p->save_mean_dev, (size_t)c * 4);
  dev_download(channels + c, p->save_invstd_dev, (size_t)c * 4);
  dev_download(channels + 2 * c, p->running_mean_dev, (size_t)c * 4);
  dev_download(channels + 3 * c, p->running_var_dev, (size_t)c * 4);
  int64_t batches = 0;
  dev_download(&batches, p->batches_dev, sizeof batches);
  cr_expect_eq(batches, BATCHES_BEFORE + 1, "%s: num_batches_tracked is %lld", label, (long long)batches);

  char what[240];
  double *want = doubles(p->elements), *got = doubles(p->elements);
  for (int64_t i = 0; i < p->elements; ++i) {
    const double v = p->y_plain[i] + (kind == BNK_EPILOGUE_ADD_RELU ? p->z[i] : 0.0);
    want[i] = kind == BNK_EPILOGUE_NONE ? v : v < 0.0 ? 0.0 : v;
  }
  from_storage(p->sh.dtype, raw, got, p->elements);
  snprintf(what, sizeof what, "%s: y", label);
  if (p->sh.dtype == BNK_FLOAT32) expect_close(what, got, want, p->elements, Y_TOLERANCE, 0.0);
  else expect_within_ulps(what, p->sh.dtype, got, want, p->elements, 1.0, Y_FP32_FLOOR);
  if (kind != BNK_EPILOGUE_NONE)
    for (int64_t i = 0; i < (int64_t)p->mask_bytes * 8; ++i) {
      const int bit = (mask[i / 8] >> (i % 8)) & 1;
      if (bit != (i < p->elements && got[i] > 0.0)) {
        cr_expect(0, "%s: mask bit %lld is %d", label, (long long)i, bit);
        break;
      }
    }

  for (int64_t i = 0; i < c; ++i) {
    const double allowed = MEAN_TOLERANCE * (fabs(p->mean[i]) + sqrt(p->var[i]));
    cr_expect(fabs(channels[i] - p->mean[i]) <= allowed, "%s: save_mean[%lld] = %.9g, reference %.9g", label,
              (long long)i, channels[i], p->mean[i]);
  }
  double *per_channel = doubles(c);
  const struct {
    const char *name;
    const double *want;
    double atol, rtol;
  } checks[] = {{"save_invstd", p->invstd, 0.0, INVSTD_TOLERANCE},
                {"running_mean", p->rm_ref, 1e-7, RUNNING_TOLERANCE},
                {"running_var", p->rv_ref, 1e-7, RUNNING_TOLERANCE}};
  for (int k = 0; k < 3; ++k) {
    for (int64_t i = 0; i < c; ++i) per_channel[i] = channels[(k + 1) * c + i];
    snprintf(what, sizeof what, "%s: %s", label, checks[k].name);
    expect_close(what, per_channel, checks[k].want, c, checks[k].atol, checks[k].rtol);
  }
  free(per_channel);
  free(want);
  free(got);
  return raw;
}

static size_t output_bytes(const problem *p) { return channels_offset(p) + (size_t)p->sh.c * 16; }

static void expect_path(bnk_context *ctx, const problem *p, bnk_epilogue_kind kind, bnk_training_path want,
                        const char *label) {
  const bnk_epilogue e = epilogue_of(p, kind);
  bnk_training_path got = BNK_TRAINING_PATH_AUTO;
  cr_assert_eq(bnk_forward_training_path(ctx, &p->desc, p->x_dev, p->y_dev, &e, &got), BNK_SUCCESS, "%s: %s", label,
               bnk_last_error_message());
  cr_expect_eq(got, want, "%s: the plan takes path %d, expected %d", label, (int)got, (int)want);
}

/* Worker counts of the emulation: results must not depend on them. */
static int worker_setting_count(void) {
#ifdef BNK_TEST_EMULATION
  return 2;
#else
  return 1;
#endif
}

static void use_workers(int index) {
#ifdef BNK_TEST_EMULATION
  bnk_emu_set_workers(index == 0 ? 0 : 1);
#else
  (void)index;
#endif
}

/* Whether every byte of an output still has the poison's bits (a NULL output, one a capture made, is never
 * written). */
static void expect_poisoned(const char *what, const unsigned char *bytes, size_t count) {
  for (size_t i = 0; i < count; ++i)
    if (bytes[i] != 0xff) {
      cr_expect(0, "%s: byte %zu was written", what, i);
      return;
    }
}

/* ---- the checks the forward's and the backward's tests share, each on one op ---- */

/* The forward with one epilogue, or a backward with one variant, on one case: `prepare` poisons the outputs
 * (and restores what the op updates), `call` makes the call, `check` compares every output with the reference
 * and returns them as `bytes` bytes (the caller frees them), `expect_path` asks the op's path query. */
typedef struct persistent_op persistent_op;
struct persistent_op {
  bnk_context *ctx;
  void *problem;          /* a problem (forward) or a grad_problem (backward) */
  const problem *forward; /* the forward's problem: the case's x and its shape */
  int variant;            /* the forward's bnk_epilogue_kind, or the backward's index into grad_variants */
  int frozen;             /* the backward: the frozen (inference) backward */
  size_t bytes;
  void (*prepare)(const persistent_op *op);
  bnk_status (*call)(const persistent_op *op);
  unsigned char *(*check)(const persistent_op *op, const char *what);
  void (*expect_path)(const persistent_op *op, bnk_training_path want, const char *what);
};

static bnk_status op_run(const persistent_op *op) {
  op->prepare(op);
  return op->call(op);
}

/* The op on the forced persistent path, under every schedule and worker count: each run against the
 * reference, all runs bitwise identical. */
static void check_every_schedule_and_worker_count(const persistent_op *op, const char *label) {
  char what[260];
  op->expect_path(op, BNK_TRAINING_PATH_PERSISTENT, label);
  unsigned char *first = NULL;
  for (int w = 0; w < worker_setting_count(); ++w) {
    use_workers(w);
    for (int schedule = 0; schedule < schedule_count(); ++schedule) {
      schedule_use(schedule);
      snprintf(what, sizeof what, "%s [%s, workers setting %d]", label, schedule_name(schedule), w);
      const bnk_status status = op_run(op);
      cr_assert_eq(status, BNK_SUCCESS, "%s: %s: %s", what, bnk_status_name(status), bnk_last_error_message());
      unsigned char *now = op->check(op, what);
      if (first == NULL) first = now;
      else {
        expect_bitwise_equal(what, first, now, op->bytes);
        free(now);
      }
    }
  }
  use_workers(0);
  free(first);
}

/* The op through the forced two-pass path, the forced persistent path and the automatic choice (persistent for
 * a case that fits): each against the reference, the automatic run bitwise the persistent one. */
static void check_each_path(const persistent_op *op, const char *label) {
  const bnk_training_path paths[] = {BNK_TRAINING_PATH_TWO_PASS, BNK_TRAINING_PATH_PERSISTENT, BNK_TRAINING_PATH_AUTO};
  unsigned char *persistent = NULL;
  for (int k = 0; k < 3; ++k) {
    set_path(op->ctx, paths[k]);
    char what[240];
    snprintf(what, sizeof what, "%s, path setting %d", label, (int)paths[k]);
    op->expect_path(
        op, paths[k] == BNK_TRAINING_PATH_TWO_PASS ? BNK_TRAINING_PATH_TWO_PASS : BNK_TRAINING_PATH_PERSISTENT, what);
    cr_assert_eq(op_run(op), BNK_SUCCESS, "%s: %s", what, bnk_last_error_message());
    unsigned char *now = op->check(op, what);
    if (paths[k] == BNK_TRAINING_PATH_PERSISTENT) persistent = now;
    else if (paths[k] == BNK_TRAINING_PATH_AUTO) {
      expect_bitwise_equal(what, persistent, now, op->bytes);
      free(now);
    } else {
      free(now);
    }
  }
  free(persistent);
}

/* The automatic choice on one side of the capacity boundary (side 0: the last batch that fits, side 1: the
 * first that does not): the persistent path, then the two-pass path, each against the reference. */
static void check_automatic_path_at_boundary(const persistent_op *op, int side, const char *label) {
  set_path(op->ctx, BNK_TRAINING_PATH_AUTO);
  op->expect_path(op, side == 0 ? BNK_TRAINING_PATH_PERSISTENT : BNK_TRAINING_PATH_TWO_PASS, label);
  cr_assert_eq(op_run(op), BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
  free(op->check(op, label));
}

/* The op captured into a CUDA graph on a non-blocking stream, then replayed: the capture runs nothing (the
 * output at `watched`, `watched_bytes` long, keeps its poison), the replay writes what a direct call writes. */
static void check_capture_and_replay(const persistent_op *op, const void *watched, size_t watched_bytes,
                                     const char *watched_name) {
  cr_assert_eq(op_run(op), BNK_SUCCESS, "%s", bnk_last_error_message());
  unsigned char *direct = op->check(op, "direct");

  cudaStream_t stream;
  cr_assert_eq(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cr_assert_eq(bnk_context_set_stream(op->ctx, (bnk_stream)stream), BNK_SUCCESS);
  op->prepare(op);
  cr_assert_eq(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const bnk_status status = op->call(op);
  cudaGraph_t graph;
  cr_assert_eq(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cr_assert_eq(status, BNK_SUCCESS, "captured: %s", bnk_last_error_message());
  unsigned char *poisoned = malloc(watched_bytes);
  dev_download(poisoned, watched, watched_bytes);
  char what[64];
  snprintf(what, sizeof what, "the capture: %s", watched_name);
  expect_poisoned(what, poisoned, watched_bytes);
  free(poisoned);
  cudaGraphExec_t exec;
  cr_assert_eq(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  cr_assert_eq(cudaGraphLaunch(exec, stream), cudaSuccess);
  cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
  unsigned char *replayed = op->check(op, "replayed");
  expect_bitwise_equal("replayed graph", direct, replayed, op->bytes);
  free(direct);
  free(replayed);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cr_assert_eq(bnk_context_set_stream(op->ctx, NULL), BNK_SUCCESS);
  cudaStreamDestroy(stream);
}

/* ---- the persistent forward ---- */

static void forward_prepare(const persistent_op *op) { prepare_outputs(op->problem); }

static bnk_status forward_call(const persistent_op *op) {
  return call_forward(op->ctx, op->problem, (bnk_epilogue_kind)op->variant);
}

static unsigned char *forward_check(const persistent_op *op, const char *what) {
  return check_outputs(op->problem, (bnk_epilogue_kind)op->variant, what);
}

static void forward_expect_path(const persistent_op *op, bnk_training_path want, const char *what) {
  expect_path(op->ctx, op->problem, (bnk_epilogue_kind)op->variant, want, what);
}

static persistent_op forward_op(bnk_context *ctx, problem *p, bnk_epilogue_kind kind) {
  const persistent_op op = {.ctx = ctx,
                            .problem = p,
                            .forward = p,
                            .variant = (int)kind,
                            .bytes = output_bytes(p),
                            .prepare = forward_prepare,
                            .call = forward_call,
                            .check = forward_check,
                            .expect_path = forward_expect_path};
  return op;
}

/* Every epilogue of a shape, on the forced persistent path. */
static void check_persistent_shape(bnk_context *ctx, const shape *sh, test_rng *rng) {
  problem p = make_problem(ctx, sh, rng);
  for (int k = BNK_EPILOGUE_NONE; k <= BNK_EPILOGUE_ADD_RELU; ++k) {
    char label[200];
    describe(&p, (bnk_epilogue_kind)k, label, sizeof label);
    const persistent_op op = forward_op(ctx, &p, (bnk_epilogue_kind)k);
    check_every_schedule_and_worker_count(&op, label);
  }
  free_problem(&p);
}

/* Both layouts, ranks 0-3, every dtype with and without the 16-byte path, misaligned tensors, channels cut into
 * several pieces (NCHW: more than a block's team holds, 256 x 8 16-byte vectors or 256 x 32 elements per channel,
 * fp32 3 x 60 x 64 and misaligned bf16 2 x 75 x 60; NHWC: more than tile_y x 8 rows). The NHWC merge
 * gives a channel 8 to 256 threads of a block (for_each_block_channel): the (7, 4, 25, 40) shape has no more
 * channels than blocks, so each of its 4 (forward) or 7 (backward) pieces is merged by a warp of its own; the
 * (3, 64, 100) one has more channels than warps, 8 (forward) or 16 (backward) threads sharing 3 or 5 pieces. */
static const shape fitting_shapes[] = {
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(5, 7), 0},    {BNK_FLOAT32, BNK_NCHW, 3, 2, S2(60, 64), 0},
    {BNK_FLOAT32, BNK_NHWC, 2, 3, S2(5, 7), 1},    {BNK_FLOAT32, BNK_NHWC, 2, 8, S2(30, 30), 0},
    {BNK_FLOAT32, BNK_NHWC, 37, 5, S0, 0},         {BNK_FLOAT16, BNK_NCHW, 2, 3, S2(8, 8), 0},
    {BNK_FLOAT16, BNK_NCHW, 3, 4, S1(33), 1},      {BNK_FLOAT16, BNK_NHWC, 2, 16, S2(3, 5), 0},
    {BNK_FLOAT16, BNK_NHWC, 4, 8, S2(32, 36), 0},  {BNK_BFLOAT16, BNK_NCHW, 2, 5, S3(3, 3, 3), 0},
    {BNK_BFLOAT16, BNK_NHWC, 3, 24, S1(9), 0},     {BNK_BFLOAT16, BNK_NHWC, 2, 5, S3(2, 3, 4), 1},
    {BNK_FLOAT32, BNK_NHWC, 7, 4, S2(25, 40), 0},  {BNK_FLOAT32, BNK_NHWC, 3, 64, S1(100), 0},
    {BNK_BFLOAT16, BNK_NCHW, 2, 1, S2(75, 60), 1},
};

/* Channels-first shapes whose every channel fits one team's cache (bnk_persistent_team), so any C fits: a
 * warp's (batch 1 at S = 49, C = 1, 3 and ResNet-50's last stage, 2048, in every dtype; ranks 1 and 3) or the
 * block's (batch 32 at S = 49; 16-bit vectors; misaligned); and S = 1 at ranks 0 and 1, which both layouts store
 * alike, so that the channels-last kernels take them. */
static const shape team_shapes[] = {
    {BNK_FLOAT32, BNK_NCHW, 1, 1, S2(7, 7), 0},     {BNK_FLOAT32, BNK_NCHW, 1, 3, S2(7, 7), 0},
    {BNK_FLOAT32, BNK_NCHW, 1, 2048, S2(7, 7), 0},  {BNK_FLOAT16, BNK_NCHW, 1, 2048, S2(7, 7), 0},
    {BNK_BFLOAT16, BNK_NCHW, 1, 2048, S2(7, 7), 0}, {BNK_FLOAT16, BNK_NCHW, 1, 3, S1(49), 0},
    {BNK_BFLOAT16, BNK_NCHW, 1, 1, S3(7, 7, 1), 0}, {BNK_FLOAT32, BNK_NCHW, 32, 3, S2(7, 7), 0},
    {BNK_FLOAT16, BNK_NCHW, 2, 3, S2(40, 40), 0},   {BNK_BFLOAT16, BNK_NCHW, 4, 2, S2(24, 24), 0},
    {BNK_FLOAT32, BNK_NCHW, 2, 3, S2(24, 24), 1},   {BNK_FLOAT32, BNK_NCHW, 4, 1, S0, 0},
    {BNK_FLOAT16, BNK_NCHW, 3, 3, S1(1), 0},        {BNK_BFLOAT16, BNK_NCHW, 2, 2048, S0, 0},
};
#define TEAM_SHAPES (sizeof team_shapes / sizeof team_shapes[0])

/* Two of them, channels-last 16-bit and channels-first float32: the tests that make a few calls per shape. */
static const shape two_fitting_shapes[] = {{BNK_FLOAT16, BNK_NHWC, 4, 8, S2(32, 36), 0},
                                           {BNK_FLOAT32, BNK_NCHW, 3, 2, S2(60, 64), 0}};
#define TWO_FITTING_SHAPES (sizeof two_fitting_shapes / sizeof two_fitting_shapes[0])

Test(persistent, matches_reference_on_every_schedule_layout_dtype_and_epilogue, .timeout = 1200) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof fitting_shapes / sizeof fitting_shapes[0]; ++i)
    check_persistent_shape(ctx, &fitting_shapes[i], &rng);
  bnk_context_destroy(ctx);
}

/* The team shapes, every epilogue, with cumulative running statistics (the team kernel's one grid barrier) and,
 * for the first ones, the same weight as a momentum (no barrier). */
Test(persistent, teams_match_reference_on_every_schedule_dtype_and_epilogue, .timeout = 1800) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < TEAM_SHAPES; ++i) {
    problem p = make_problem(ctx, &team_shapes[i], &rng);
    for (int momentum = 0; momentum < (i < 3 ? 2 : 1); ++momentum) {
      p.momentum = momentum ? 1.0 / (BATCHES_BEFORE + 1) : BNK_MOMENTUM_CUMULATIVE;
      for (int k = BNK_EPILOGUE_NONE; k <= BNK_EPILOGUE_ADD_RELU; ++k) {
        char label[200], what[240];
        describe(&p, (bnk_epilogue_kind)k, label, sizeof label);
        snprintf(what, sizeof what, "%s, %s", label, momentum ? "momentum" : "cumulative");
        const persistent_op op = forward_op(ctx, &p, (bnk_epilogue_kind)k);
        check_every_schedule_and_worker_count(&op, what);
      }
    }
    free_problem(&p);
  }
  bnk_context_destroy(ctx);
}

/* The same data through the forced two-pass path, the forced persistent path and the automatic choice (which
 * is persistent for a shape that fits): all within the reference's tolerances, the automatic run bitwise the
 * persistent one. */
static void check_forward_each_path(bnk_context *ctx, const shape *sh, test_rng *rng) {
  problem p = make_problem(ctx, sh, rng);
  char label[200];
  describe(&p, BNK_EPILOGUE_ADD_RELU, label, sizeof label);
  const persistent_op op = forward_op(ctx, &p, BNK_EPILOGUE_ADD_RELU);
  check_each_path(&op, label);
  free_problem(&p);
}

Test(persistent, same_data_through_each_path, .timeout = 600) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < TWO_FITTING_SHAPES; ++i) check_forward_each_path(ctx, &two_fitting_shapes[i], &rng);
  bnk_context_destroy(ctx);
}

/* The smallest batch N of an (N, 4) fp32 tensor that the automatic plan sends to the two-pass path. One thread
 * of the forward caches 8 rows of its 4 channels in registers and at most 23 more in shared memory, and a block
 * has 256 threads, so the persistent forward holds whole multiples of 256 x 31 rows; the backward caches 4 rows
 * (of g and of x - mean) in registers and 11 in shared memory, 256 x 15 rows a block. */
#define ROWS_PER_BLOCK (256 * (8 + 23))
#define BACKWARD_ROWS_PER_BLOCK (256 * (4 + 11))

/* Aligned stand-ins for the path queries, which read only the pointers' alignment. */
static void *const aligned_x = (void *)(uintptr_t)0x10000;
static void *const aligned_y = (void *)(uintptr_t)0x20000;
static void *const aligned_dx = (void *)(uintptr_t)0x30000;

/* The path of an op on a tensor of aligned stand-ins: the forward's or the backward's query. */
typedef bnk_status (*path_query)(bnk_context *ctx, const bnk_tensor_desc *desc, bnk_training_path *path);

static bnk_status forward_path(bnk_context *ctx, const bnk_tensor_desc *desc, bnk_training_path *path) {
  return bnk_forward_training_path(ctx, desc, aligned_x, aligned_y, NULL, path);
}

static bnk_status backward_path(bnk_context *ctx, const bnk_tensor_desc *desc, bnk_training_path *path) {
  return bnk_backward_training_path(ctx, desc, aligned_x, aligned_y, aligned_dx, NULL, path);
}

static int64_t first_two_pass_batch(bnk_context *ctx, path_query query) {
  int64_t lo = 2, hi = 1024;
  bnk_tensor_desc desc;
  bnk_training_path path = BNK_TRAINING_PATH_PERSISTENT;
  for (;;) { /* doubling until the two-pass path is taken */
    cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NHWC, hi, 4, 0, NULL), BNK_SUCCESS);
    cr_assert_eq(query(ctx, &desc, &path), BNK_SUCCESS, "%s", bnk_last_error_message());
    if (path == BNK_TRAINING_PATH_TWO_PASS) break;
    lo = hi;
    hi *= 2;
    cr_assert(hi < ((int64_t)1 << 40), "the persistent path never gives way");
  }
  while (hi - lo > 1) { /* lo persistent, hi two-pass */
    const int64_t mid = lo + (hi - lo) / 2;
    cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NHWC, mid, 4, 0, NULL), BNK_SUCCESS);
    cr_assert_eq(query(ctx, &desc, &path), BNK_SUCCESS);
    if (path == BNK_TRAINING_PATH_TWO_PASS) hi = mid;
    else lo = mid;
  }
  return hi;
}

/* The first batch the automatic plan sends to the two-pass path, one past whole blocks of `rows_per_block`. */
static int64_t capacity_boundary(bnk_context *ctx, path_query query, int64_t rows_per_block) {
  const int64_t boundary = first_two_pass_batch(ctx, query);
  cr_expect_eq((boundary - 1) % rows_per_block, 0, "the last batch that fits, %lld, is not whole blocks",
               (long long)(boundary - 1));
  return boundary;
}

/* The co-resident grid scales with the SMs bnk may use: twice the SMs, twice the rows that fit. */
static void expect_capacity_scales_with_sm_limit(bnk_context *ctx, path_query query) {
  const int64_t one = first_two_pass_batch(ctx, query) - 1;
  cr_assert_eq(bnk_context_set_sm_limit(ctx, 2), BNK_SUCCESS);
  const int64_t two = first_two_pass_batch(ctx, query) - 1;
  cr_expect_eq(two, 2 * one, "%lld rows fit on 2 SMs, %lld on 1", (long long)two, (long long)one);
}

Test(persistent, capacity_boundary_on_both_sides, .timeout = 900) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  const int64_t boundary = capacity_boundary(ctx, forward_path, ROWS_PER_BLOCK);
  test_rng rng = rng_fresh();
  for (int side = 0; side < 2; ++side) {
    const shape sh = {BNK_FLOAT32, BNK_NHWC, boundary - 1 + side, 4, S0, 0};
    problem p = make_problem(ctx, &sh, &rng);
    char label[200];
    describe(&p, BNK_EPILOGUE_RELU, label, sizeof label);
    const persistent_op op = forward_op(ctx, &p, BNK_EPILOGUE_RELU);
    check_automatic_path_at_boundary(&op, side, label);
    if (side == 1) {
      /* Forced onto a grid it does not fit: a clear rejection that writes nothing. */
      set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
      void *y_before = dev_snapshot(p.y_dev, p.bytes);
      const bnk_epilogue e = epilogue_of(&p, BNK_EPILOGUE_RELU);
      const bnk_status status =
          bnk_forward_training_ex(ctx, &p.desc, p.x_dev, p.y_dev, p.gamma_dev, p.beta_dev, NULL, NULL, NULL, 0.1, EPS,
                                  NULL, NULL, p.workspace, p.workspace_bytes, &e);
      expect_rejection(status, BNK_ERROR_NOT_SUPPORTED, "does not fit the co-resident grid");
      expect_unchanged("y", p.y_dev, y_before, p.bytes);
      free(y_before);
      bnk_training_path path;
      expect_rejection(bnk_forward_training_path(ctx, &p.desc, p.x_dev, p.y_dev, &e, &path), BNK_ERROR_NOT_SUPPORTED,
                       "BNK_TRAINING_PATH_PERSISTENT");
    }
    free_problem(&p);
  }
  bnk_context_destroy(ctx);
}

/* Batches of an fp32 NCHW tensor of S = 2 (one element a vector, of which a team's thread caches 4 x cache) on
 * both sides of the teams' capacities for a cache of `cache` vectors: the most a warp holds (32 x 4 x cache
 * elements), one more (the block's team), the most a block holds (256 x 4 x cache), and one more, which cuts
 * each channel into pieces over several blocks a channel, more than the test device's co-resident grid holds
 * for TEAM_TEST_C channels. */
#define TEAM_TEST_C 64
/* Vectors each thread caches: the forward's 8 (of x), the backward's 4 (of g and of x - mean), as above. */
#define FORWARD_CACHE 8
#define BACKWARD_CACHE 4
static void team_boundary_batches(int cache, int64_t batches[4]) {
  batches[0] = 16 * 4 * cache;
  batches[1] = 16 * 4 * cache + 1;
  batches[2] = 128 * 4 * cache;
  batches[3] = 128 * 4 * cache + 1;
}

/* The forward on both sides of each team boundary: the automatic path persistent up to the block's capacity
 * (whatever C), two-pass past it, each against the reference; forced persistent past it, a clear rejection. */
Test(persistent, team_capacity_on_both_sides, .timeout = 900) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  test_rng rng = rng_fresh();
  int64_t batches[4];
  team_boundary_batches(FORWARD_CACHE, batches);
  for (int b = 0; b < 4; ++b) {
    const shape sh = {BNK_FLOAT32, BNK_NCHW, batches[b], TEAM_TEST_C, S1(2), 0};
    problem p = make_problem(ctx, &sh, &rng);
    char label[200];
    describe(&p, BNK_EPILOGUE_RELU, label, sizeof label);
    const persistent_op op = forward_op(ctx, &p, BNK_EPILOGUE_RELU);
    check_automatic_path_at_boundary(&op, b == 3, label);
    if (b == 3) {
      set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
      const bnk_epilogue e = epilogue_of(&p, BNK_EPILOGUE_RELU);
      bnk_training_path path;
      expect_rejection(bnk_forward_training_path(ctx, &p.desc, p.x_dev, p.y_dev, &e, &path), BNK_ERROR_NOT_SUPPORTED,
                       "does not fit the co-resident grid");
    }
    free_problem(&p);
  }
  bnk_context_destroy(ctx);
}

/* ResNet-50's last stage, 2048 channels of 7 x 7 (read element by element), takes the persistent path on the 4
 * SMs of the test device, whatever the dtype: at batch 1 a warp per channel, at batch 32 (1568 elements a
 * channel) a block per channel, in both ops; at batch 256 (12544) the channels would be cut into pieces over
 * blocks, which the co-resident grid does not hold for 2048 channels. */
Test(persistent, resnet_last_stage_paths) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  const bnk_dtype dtypes[] = {BNK_FLOAT32, BNK_FLOAT16, BNK_BFLOAT16};
  const int64_t hw[2] = {7, 7};
  const int batches[3] = {1, 32, 256};
  for (int d = 0; d < 3; ++d)
    for (int b = 0; b < 3; ++b) {
      const int batch = batches[b];
      bnk_tensor_desc desc;
      cr_assert_eq(bnk_tensor_desc_init(&desc, dtypes[d], BNK_NCHW, batch, 2048, 2, hw), BNK_SUCCESS);
      bnk_training_path path = BNK_TRAINING_PATH_AUTO;
      cr_assert_eq(forward_path(ctx, &desc, &path), BNK_SUCCESS, "%s", bnk_last_error_message());
      const bnk_training_path want = batch <= 32 ? BNK_TRAINING_PATH_PERSISTENT : BNK_TRAINING_PATH_TWO_PASS;
      cr_expect_eq(path, want, "dtype %d, %dx2048x7x7: forward path %d", (int)dtypes[d], batch, (int)path);
      cr_assert_eq(backward_path(ctx, &desc, &path), BNK_SUCCESS, "%s", bnk_last_error_message());
      cr_expect_eq(path, want, "dtype %d, %dx2048x7x7: backward path %d", (int)dtypes[d], batch, (int)path);
    }
  bnk_context_destroy(ctx);
}

Test(persistent, sm_limit_sets_the_capacity) {
  bnk_context *ctx = persistent_context(1);
  expect_capacity_scales_with_sm_limit(ctx, forward_path);
  int limit = -1;
  cr_assert_eq(bnk_context_get_sm_limit(ctx, &limit), BNK_SUCCESS);
  cr_expect_eq(limit, 2);
  bnk_context_destroy(ctx);
}

Test(persistent, settings_reject_bad_values) {
  bnk_context *ctx = persistent_context(0);
  int sms = 0;
  cr_assert_eq(bnk_context_get_sm_count(ctx, &sms), BNK_SUCCESS);
  expect_rejection(bnk_context_set_sm_limit(ctx, -1), BNK_ERROR_INVALID_VALUE, "sm_limit must be 0");
  expect_rejection(bnk_context_set_sm_limit(ctx, sms + 1), BNK_ERROR_INVALID_VALUE, "got");
  expect_rejection(bnk_context_set_training_path(ctx, (bnk_training_path)7), BNK_ERROR_INVALID_VALUE, "got 7");
  bnk_training_path path = BNK_TRAINING_PATH_TWO_PASS;
  cr_assert_eq(bnk_context_get_training_path(ctx, &path), BNK_SUCCESS);
  cr_expect_eq(path, BNK_TRAINING_PATH_AUTO, "a new context chooses automatically");
  int limit = -1;
  cr_assert_eq(bnk_context_get_sm_limit(ctx, &limit), BNK_SUCCESS);
  cr_expect_eq(limit, 0, "a new context uses every SM");
  expect_rejection(bnk_context_get_sm_limit(ctx, NULL), BNK_ERROR_INVALID_VALUE, "sm_limit must not be NULL");
  /* An empty batch runs no persistent kernel, even when the path is forced. */
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  bnk_tensor_desc empty;
  cr_assert_eq(bnk_tensor_desc_init(&empty, BNK_FLOAT32, BNK_NCHW, 0, 3, 0, NULL), BNK_SUCCESS);
  path = BNK_TRAINING_PATH_PERSISTENT;
  cr_assert_eq(bnk_forward_training_path(ctx, &empty, NULL, NULL, NULL, &path), BNK_SUCCESS, "%s",
               bnk_last_error_message());
  cr_expect_eq(path, BNK_TRAINING_PATH_TWO_PASS);
  expect_rejection(bnk_forward_training_path(ctx, &empty, NULL, NULL, NULL, NULL), BNK_ERROR_INVALID_VALUE,
                   "path must not be NULL");
  bnk_context_destroy(ctx);
}

/* The persistent forward captured into a CUDA graph and replayed. */
Test(persistent, cooperative_launch_is_capturable, .timeout = 600) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  const shape sh = {BNK_FLOAT16, BNK_NCHW, 3, 4, S1(33), 0};
  problem p = make_problem(ctx, &sh, &rng);
  const persistent_op op = forward_op(ctx, &p, BNK_EPILOGUE_ADD_RELU);
  check_capture_and_replay(&op, p.y_dev, p.bytes, "y");
  free_problem(&p);
  bnk_context_destroy(ctx);
}

/* ---- the persistent backward: x and dy read once, dx written once, in one cooperative launch ---- */

/* How a backward case takes the forward's epilogue. */
typedef struct grad_variant {
  bnk_epilogue_kind kind;
  int from_mask; /* gate from the mask instead of y */
  int with_dz;   /* ADD_RELU: write dz */
  const char *name;
} grad_variant;

static const grad_variant grad_variants[] = {
    {BNK_EPILOGUE_NONE, 0, 0, "plain"},
    {BNK_EPILOGUE_RELU, 0, 0, "relu from y"},
    {BNK_EPILOGUE_RELU, 1, 0, "relu from mask"},
    {BNK_EPILOGUE_ADD_RELU, 0, 1, "add+relu from y, dz"},
    {BNK_EPILOGUE_ADD_RELU, 1, 1, "add+relu from mask, dz"},
};
#define GRAD_VARIANTS (sizeof grad_variants / sizeof grad_variants[0])

/* One backward case: the forward problem's x, gamma and statistics, with dy and a forward output y of both
 * signs (its mask beside it) to gate from. */
typedef struct grad_problem {
  problem f;
  double *dy, *y;
  double *mean, *invstd; /* the saved float32 statistics, as doubles */
  unsigned char *dy_base, *yg_base, *dx_base, *dz_base;
  void *dy_dev, *yg_dev, *dx_dev, *dz_dev, *workspace;
  size_t workspace_bytes;
  float *dgamma_dev, *dbeta_dev;
} grad_problem;

static grad_problem make_grad_problem(bnk_context *ctx, const shape *sh, test_rng *rng) {
  grad_problem p;
  memset(&p, 0, sizeof p);
  p.f = make_problem(ctx, sh, rng);
  problem *f = &p.f;
  const int64_t c = sh->c;
  p.dy = random_tensor(f, rng, &p.dy_base, &p.dy_dev);
  p.y = random_tensor(f, rng, &p.yg_base, &p.yg_dev);
  unsigned char *mask = calloc(f->mask_bytes, 1);
  for (int64_t i = 0; i < f->elements; ++i)
    if (p.y[i] > 0.0) mask[i / 8] |= (unsigned char)(1u << (i % 8));
  dev_upload(f->mask_dev, mask, f->mask_bytes);
  free(mask);
  p.dx_base = dev_alloc(f->bytes + f->skew + 1);
  p.dx_dev = p.dx_base + f->skew;
  p.dz_base = dev_alloc(f->bytes + f->skew + 1);
  p.dz_dev = p.dz_base + f->skew;
  cr_assert_eq(bnk_backward_workspace_size(ctx, &f->desc, &p.workspace_bytes), BNK_SUCCESS);
  p.workspace = dev_alloc(p.workspace_bytes);
  p.dgamma_dev = dev_alloc((size_t)c * 4);
  p.dbeta_dev = dev_alloc((size_t)c * 4);

  /* The forward's saved statistics (float32) and its running statistics for the frozen backward. */
  p.mean = doubles(c);
  p.invstd = doubles(c);
  float *stats = malloc((size_t)c * 16);
  for (int64_t i = 0; i < c; ++i) {
    stats[i] = (float)f->mean[i];
    stats[c + i] = (float)f->invstd[i];
    stats[2 * c + i] = (float)f->running_mean[i];
    stats[3 * c + i] = (float)f->running_var[i];
    p.mean[i] = stats[i];
    p.invstd[i] = stats[c + i];
  }
  dev_upload(f->save_mean_dev, stats, (size_t)c * 4);
  dev_upload(f->save_invstd_dev, stats + c, (size_t)c * 4);
  dev_upload(f->running_mean_dev, stats + 2 * c, (size_t)c * 4);
  dev_upload(f->running_var_dev, stats + 3 * c, (size_t)c * 4);
  free(stats);
  return p;
}

static void free_grad_problem(grad_problem *p) {
  free(p->dy);
  free(p->y);
  free(p->mean);
  free(p->invstd);
  void *dev[] = {p->dy_base, p->yg_base, p->dx_base, p->dz_base, p->workspace, p->dgamma_dev, p->dbeta_dev};
  for (size_t i = 0; i < sizeof dev / sizeof dev[0]; ++i) dev_free(dev[i]);
  free_problem(&p->f);
}

static bnk_epilogue_grad grad_epilogue_of(const grad_problem *p, const grad_variant *v) {
  bnk_epilogue_grad e = {v->kind, NULL, NULL, 0, NULL};
  if (v->kind == BNK_EPILOGUE_NONE) return e;
  if (v->from_mask) {
    e.mask = p->f.mask_dev;
    e.mask_bytes = p->f.mask_bytes;
  } else {
    e.y = p->yg_dev;
  }
  if (v->with_dz) e.dz = p->dz_dev;
  return e;
}

static void describe_grad(const grad_problem *p, const grad_variant *v, int frozen, char *out, size_t size) {
  char text[96];
  format_shape(text, sizeof text, p->f.sh.layout, p->f.sh.dtype, p->f.sh.n, p->f.sh.c, p->f.sh.spatial_dims,
               p->f.sh.spatial);
  snprintf(out, size, "%s%s %s %s", text, p->f.sh.misalign ? " misaligned" : "",
           frozen ? "frozen backward" : "backward", v->name);
}

static void poison_backward(grad_problem *p) {
  const problem *f = &p->f;
  dev_poison(p->dx_dev, f->bytes);
  dev_poison(p->dz_dev, f->bytes);
  dev_poison(p->workspace, p->workspace_bytes);
  dev_poison(p->dgamma_dev, (size_t)f->sh.c * 4);
  dev_poison(p->dbeta_dev, (size_t)f->sh.c * 4);
}

/* Which of a backward's outputs a call asks for, and where its dy and x are. */
typedef struct grad_outputs {
  int dx, dgamma, dbeta;
  int in_place; /* dy is the dx buffer */
  int no_x;     /* x NULL (the frozen backward without dgamma does not read it) */
} grad_outputs;

static const grad_outputs every_output = {1, 1, 1, 0, 0};

/* bnk_backward_ex (training) or bnk_backward_inference_ex (frozen) asking for `want`. */
static bnk_status call_backward(bnk_context *ctx, grad_problem *p, const grad_variant *v, int frozen,
                                grad_outputs want) {
  const problem *f = &p->f;
  const bnk_epilogue_grad e = grad_epilogue_of(p, v);
  void *dx = want.dx ? p->dx_dev : NULL;
  const void *dy = want.in_place ? p->dx_dev : p->dy_dev;
  const void *x = want.no_x ? NULL : f->x_dev;
  float *dgamma = want.dgamma ? p->dgamma_dev : NULL, *dbeta = want.dbeta ? p->dbeta_dev : NULL;
  if (frozen)
    return bnk_backward_inference_ex(ctx, &f->desc, x, dy, dx, f->gamma_dev, dgamma, dbeta, f->running_mean_dev,
                                     f->running_var_dev, EPS, p->workspace, p->workspace_bytes, &e);
  return bnk_backward_ex(ctx, &f->desc, x, dy, dx, f->gamma_dev, dgamma, dbeta, f->save_mean_dev, f->save_invstd_dev,
                         p->workspace, p->workspace_bytes, &e);
}

/* Every output poisoned, then the full backward. */
static bnk_status run_backward(bnk_context *ctx, grad_problem *p, const grad_variant *v, int frozen) {
  poison_backward(p);
  return call_backward(ctx, p, v, frozen, every_output);
}

static size_t grad_output_bytes(const grad_problem *p) { return 2 * p->f.bytes + (size_t)p->f.sh.c * 8; }

/* Every output of the last backward against the reference; returns dx, dz, dgamma and dbeta as bytes (the
 * caller frees them) for bitwise comparisons. */
static unsigned char *check_backward(const grad_problem *p, const grad_variant *v, int frozen, const char *label) {
  const problem *f = &p->f;
  const int64_t c = f->sh.c, e = f->elements;
  unsigned char *raw = malloc(grad_output_bytes(p));
  float *channels = (float *)(raw + 2 * f->bytes);
  dev_download(raw, p->dx_dev, f->bytes);
  dev_download(raw + f->bytes, p->dz_dev, f->bytes);
  dev_download(channels, p->dgamma_dev, (size_t)c * 4);
  dev_download(channels + c, p->dbeta_dev, (size_t)c * 4);

  double *g = doubles(e), *dx_ref = doubles(e), *got = doubles(e);
  double *dgamma_ref = doubles(c), *dbeta_ref = doubles(c), *got_c = doubles(2 * c), *scale = doubles(c);
  double *frozen_invstd = doubles(c);
  for (int64_t i = 0; i < e; ++i) g[i] = v->kind == BNK_EPILOGUE_NONE || p->y[i] > 0.0 ? p->dy[i] : 0.0;
  for (int64_t i = 0; i < c; ++i) frozen_invstd[i] = ref_invstd(f->running_var[i], EPS);
  if (frozen)
    ref_backward_inference(&f->desc, f->x, g, f->running_mean, f->running_var, EPS, f->gamma, dx_ref, dgamma_ref,
                           dbeta_ref);
  else ref_backward(&f->desc, f->x, g, p->mean, p->invstd, f->gamma, dx_ref, dgamma_ref, dbeta_ref);
  for (int64_t i = 0; i < c; ++i) scale[i] = fabs(f->gamma[i]) * p->invstd[i];
  for (int64_t i = 0; i < 2 * c; ++i) got_c[i] = channels[i];

  char what[260];
  snprintf(what, sizeof what, "%s: dx", label);
  from_storage(f->sh.dtype, raw, got, e);
  if (frozen) check_inference_dx(what, &f->desc, got, dx_ref);
  else check_training_dx(what, &f->desc, got, dx_ref, scale);
  check_gradient_sums(label, &f->desc, got_c, got_c + c, g, f->x, frozen ? f->running_mean : p->mean,
                      frozen ? frozen_invstd : p->invstd, dgamma_ref, dbeta_ref);
  if (v->with_dz) {
    from_storage(f->sh.dtype, raw + f->bytes, got, e);
    for (int64_t i = 0; i < e; ++i)
      if (got[i] != g[i]) {
        cr_expect(0, "%s: dz[%lld] = %.9g, expected the gated gradient %.9g", label, (long long)i, got[i], g[i]);
        break;
      }
  } else {
    memset(raw + f->bytes, 0, f->bytes); /* not written: left out of the bitwise comparisons */
  }
  double *host[] = {g, dx_ref, got, dgamma_ref, dbeta_ref, got_c, scale, frozen_invstd};
  for (size_t i = 0; i < sizeof host / sizeof host[0]; ++i) free(host[i]);
  return raw;
}

static void expect_backward_path(bnk_context *ctx, const grad_problem *p, const grad_variant *v, bnk_training_path want,
                                 const char *label) {
  const bnk_epilogue_grad e = grad_epilogue_of(p, v);
  bnk_training_path got = BNK_TRAINING_PATH_AUTO;
  cr_assert_eq(bnk_backward_training_path(ctx, &p->f.desc, p->f.x_dev, p->dy_dev, p->dx_dev, &e, &got), BNK_SUCCESS,
               "%s: %s", label, bnk_last_error_message());
  cr_expect_eq(got, want, "%s: the backward takes path %d, expected %d", label, (int)got, (int)want);
}

static void backward_prepare(const persistent_op *op) { poison_backward(op->problem); }

static bnk_status backward_call(const persistent_op *op) {
  return call_backward(op->ctx, op->problem, &grad_variants[op->variant], op->frozen, every_output);
}

static unsigned char *backward_check(const persistent_op *op, const char *what) {
  return check_backward(op->problem, &grad_variants[op->variant], op->frozen, what);
}

static void backward_expect_path(const persistent_op *op, bnk_training_path want, const char *what) {
  expect_backward_path(op->ctx, op->problem, &grad_variants[op->variant], want, what);
}

/* The backward (frozen: the inference backward) with grad_variants[variant]. */
static persistent_op backward_op(bnk_context *ctx, grad_problem *p, size_t variant, int frozen) {
  const persistent_op op = {.ctx = ctx,
                            .problem = p,
                            .forward = &p->f,
                            .variant = (int)variant,
                            .frozen = frozen,
                            .bytes = grad_output_bytes(p),
                            .prepare = backward_prepare,
                            .call = backward_call,
                            .check = backward_check,
                            .expect_path = backward_expect_path};
  return op;
}

/* Every variant of a shape through the training backward and the frozen backward, on the forced persistent
 * path. */
static void check_persistent_backward_shape(bnk_context *ctx, const shape *sh, test_rng *rng) {
  grad_problem p = make_grad_problem(ctx, sh, rng);
  for (int frozen = 0; frozen < 2; ++frozen)
    for (size_t k = 0; k < GRAD_VARIANTS; ++k) {
      char label[200];
      describe_grad(&p, &grad_variants[k], frozen, label, sizeof label);
      const persistent_op op = backward_op(ctx, &p, k, frozen);
      check_every_schedule_and_worker_count(&op, label);
    }
  free_grad_problem(&p);
}

Test(persistent_backward, matches_reference_on_every_schedule_layout_dtype_and_epilogue, .timeout = 1800) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < sizeof fitting_shapes / sizeof fitting_shapes[0]; ++i)
    check_persistent_backward_shape(ctx, &fitting_shapes[i], &rng);
  bnk_context_destroy(ctx);
}

/* The same data through the forced two-pass path, the forced persistent path and the automatic choice (persistent
 * for a shape that fits): all within the reference's tolerances, the automatic run bitwise the persistent one. */
/* The team shapes through every variant of the training backward and the frozen backward. */
Test(persistent_backward, teams_match_reference_on_every_schedule_dtype_and_epilogue, .timeout = 2400) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < TEAM_SHAPES; ++i) check_persistent_backward_shape(ctx, &team_shapes[i], &rng);
  bnk_context_destroy(ctx);
}

static void check_backward_each_path(bnk_context *ctx, const shape *sh, test_rng *rng) {
  grad_problem p = make_grad_problem(ctx, sh, rng);
  char label[200];
  describe_grad(&p, &grad_variants[GRAD_VARIANTS - 1], 0, label, sizeof label);
  const persistent_op op = backward_op(ctx, &p, GRAD_VARIANTS - 1, 0);
  check_each_path(&op, label);
  free_grad_problem(&p);
}

Test(persistent_backward, same_data_through_each_path, .timeout = 600) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < TWO_FITTING_SHAPES; ++i) check_backward_each_path(ctx, &two_fitting_shapes[i], &rng);
  bnk_context_destroy(ctx);
}

Test(persistent_backward, capacity_boundary_on_both_sides, .timeout = 900) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  const int64_t boundary = capacity_boundary(ctx, backward_path, BACKWARD_ROWS_PER_BLOCK);
  test_rng rng = rng_fresh();
  const grad_variant *v = &grad_variants[2]; /* ReLU from the mask */
  for (int side = 0; side < 2; ++side) {
    const shape sh = {BNK_FLOAT32, BNK_NHWC, boundary - 1 + side, 4, S0, 0};
    grad_problem p = make_grad_problem(ctx, &sh, &rng);
    char label[200];
    describe_grad(&p, v, 0, label, sizeof label);
    const persistent_op op = backward_op(ctx, &p, 2, 0);
    check_automatic_path_at_boundary(&op, side, label);
    if (side == 1) {
      /* Forced onto a grid it does not fit: a clear rejection that writes nothing. */
      set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
      dev_poison(p.dx_dev, p.f.bytes);
      void *dx_before = dev_snapshot(p.dx_dev, p.f.bytes);
      const bnk_epilogue_grad e = grad_epilogue_of(&p, v);
      const bnk_status status =
          bnk_backward_ex(ctx, &p.f.desc, p.f.x_dev, p.dy_dev, p.dx_dev, p.f.gamma_dev, p.dgamma_dev, p.dbeta_dev,
                          p.f.save_mean_dev, p.f.save_invstd_dev, p.workspace, p.workspace_bytes, &e);
      expect_rejection(status, BNK_ERROR_NOT_SUPPORTED, "does not fit the co-resident grid");
      expect_unchanged("dx", p.dx_dev, dx_before, p.f.bytes);
      free(dx_before);
      bnk_training_path path;
      expect_rejection(bnk_backward_training_path(ctx, &p.f.desc, p.f.x_dev, p.dy_dev, p.dx_dev, &e, &path),
                       BNK_ERROR_NOT_SUPPORTED, "BNK_TRAINING_PATH_PERSISTENT");
    }
    free_grad_problem(&p);
  }
  bnk_context_destroy(ctx);
}

/* The backward on both sides of each team boundary (team_boundary_batches), as the forward's test. */
Test(persistent_backward, team_capacity_on_both_sides, .timeout = 900) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  test_rng rng = rng_fresh();
  int64_t batches[4];
  team_boundary_batches(BACKWARD_CACHE, batches);
  for (int b = 0; b < 4; ++b) {
    const shape sh = {BNK_FLOAT32, BNK_NCHW, batches[b], TEAM_TEST_C, S1(2), 0};
    grad_problem p = make_grad_problem(ctx, &sh, &rng);
    char label[200];
    describe_grad(&p, &grad_variants[2], 0, label, sizeof label);
    const persistent_op op = backward_op(ctx, &p, 2, 0);
    check_automatic_path_at_boundary(&op, b == 3, label);
    free_grad_problem(&p);
  }
  bnk_context_destroy(ctx);
}

Test(persistent_backward, sm_limit_sets_the_capacity) {
  bnk_context *ctx = persistent_context(1);
  expect_capacity_scales_with_sm_limit(ctx, backward_path);
  bnk_context_destroy(ctx);
}

Test(persistent_backward, path_query_rejects_bad_arguments) {
  bnk_context *ctx = persistent_context(0);
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 3, 0, NULL), BNK_SUCCESS);
  bnk_training_path path;
  expect_rejection(bnk_backward_training_path(NULL, &desc, aligned_x, aligned_y, aligned_dx, NULL, &path),
                   BNK_ERROR_INVALID_VALUE, "ctx must not be NULL");
  expect_rejection(bnk_backward_training_path(ctx, &desc, aligned_x, aligned_y, aligned_dx, NULL, NULL),
                   BNK_ERROR_INVALID_VALUE, "path must not be NULL");
  const bnk_epilogue_grad both = {BNK_EPILOGUE_RELU, aligned_y, aligned_dx, 4, NULL};
  expect_rejection(bnk_backward_training_path(ctx, &desc, aligned_x, aligned_y, aligned_dx, &both, &path),
                   BNK_ERROR_INVALID_VALUE, "only one of epilogue->y and epilogue->mask");
  /* An empty batch runs no kernel of either path, even when the path is forced. */
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  bnk_tensor_desc empty;
  cr_assert_eq(bnk_tensor_desc_init(&empty, BNK_FLOAT32, BNK_NCHW, 0, 3, 0, NULL), BNK_SUCCESS);
  path = BNK_TRAINING_PATH_PERSISTENT;
  cr_assert_eq(bnk_backward_training_path(ctx, &empty, NULL, NULL, NULL, NULL, &path), BNK_SUCCESS, "%s",
               bnk_last_error_message());
  cr_expect_eq(path, BNK_TRAINING_PATH_TWO_PASS);
  bnk_context_destroy(ctx);
}

/* The persistent backward captured into a CUDA graph and replayed. */
Test(persistent_backward, cooperative_launch_is_capturable, .timeout = 600) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  const shape sh = {BNK_BFLOAT16, BNK_NCHW, 2, 5, S3(3, 3, 3), 0};
  grad_problem p = make_grad_problem(ctx, &sh, &rng);
  const persistent_op op = backward_op(ctx, &p, GRAD_VARIANTS - 1, 0);
  check_capture_and_replay(&op, p.dx_dev, p.f.bytes, "dx");
  free_grad_problem(&p);
  bnk_context_destroy(ctx);
}

/* What a call wrote, as the bytes check_backward returns: dx, dz, dgamma, dbeta. */
static unsigned char *read_backward(const grad_problem *p) {
  const problem *f = &p->f;
  unsigned char *raw = malloc(grad_output_bytes(p));
  dev_download(raw, p->dx_dev, f->bytes);
  dev_download(raw + f->bytes, p->dz_dev, f->bytes);
  dev_download(raw + 2 * f->bytes, p->dgamma_dev, (size_t)f->sh.c * 4);
  dev_download(raw + 2 * f->bytes + f->sh.c * 4, p->dbeta_dev, (size_t)f->sh.c * 4);
  return raw;
}

/* On the persistent path, dx, dgamma and dbeta are each optional, and dx may be dy, in the training and the
 * frozen backward: every output that is asked for equals the full call's bitwise, every other is left as it
 * was. */
Test(persistent_backward, optional_outputs_and_in_place, .timeout = 600) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  const shape shapes[] = {{BNK_FLOAT32, BNK_NHWC, 2, 8, S2(30, 30), 0}, {BNK_FLOAT16, BNK_NCHW, 3, 4, S1(33), 1}};
  const grad_variant *v = &grad_variants[GRAD_VARIANTS - 1];
  const struct {
    int frozen;
    grad_outputs want;
    const char *name;
  } calls[] = {{0, {0, 1, 1, 0, 0}, "dx NULL"},
               {0, {1, 0, 0, 0, 0}, "dgamma and dbeta NULL"},
               {0, {0, 0, 1, 0, 0}, "dbeta only"},
               {0, {1, 1, 1, 1, 0}, "dx in place over dy"},
               {1, {1, 0, 1, 0, 1}, "dbeta and dx, x NULL"},
               {1, {0, 1, 0, 0, 0}, "dgamma only"},
               {1, {1, 1, 1, 1, 0}, "dx in place over dy"}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; ++i) {
    grad_problem p = make_grad_problem(ctx, &shapes[i], &rng);
    const problem *f = &p.f;
    const size_t channel_bytes = (size_t)f->sh.c * 4;
    char label[200], what[260];
    unsigned char *full[2];
    for (int frozen = 0; frozen < 2; ++frozen) {
      describe_grad(&p, v, frozen, label, sizeof label);
      cr_assert_eq(run_backward(ctx, &p, v, frozen), BNK_SUCCESS, "%s: %s", label, bnk_last_error_message());
      full[frozen] = check_backward(&p, v, frozen, label);
    }
    for (size_t k = 0; k < sizeof calls / sizeof calls[0]; ++k) {
      const grad_outputs want = calls[k].want;
      const int frozen = calls[k].frozen;
      describe_grad(&p, v, frozen, label, sizeof label);
      snprintf(what, sizeof what, "%s, %s", label, calls[k].name);
      poison_backward(&p);
      if (want.in_place) cr_assert_eq(cudaMemcpy(p.dx_dev, p.dy_dev, f->bytes, cudaMemcpyDeviceToDevice), cudaSuccess);
      cr_assert_eq(call_backward(ctx, &p, v, frozen, want), BNK_SUCCESS, "%s: %s", what, bnk_last_error_message());
      unsigned char *now = read_backward(&p);
      const struct {
        int wanted;
        size_t offset, bytes;
        const char *name;
      } outputs[] = {{want.dx, 0, f->bytes, "dx"},
                     {1, f->bytes, f->bytes, "dz"},
                     {want.dgamma, 2 * f->bytes, channel_bytes, "dgamma"},
                     {want.dbeta, 2 * f->bytes + channel_bytes, channel_bytes, "dbeta"}};
      for (size_t o = 0; o < sizeof outputs / sizeof outputs[0]; ++o) {
        char name[300];
        snprintf(name, sizeof name, "%s: %s", what, outputs[o].name);
        if (outputs[o].wanted)
          expect_bitwise_equal(name, full[frozen] + outputs[o].offset, now + outputs[o].offset, outputs[o].bytes);
        else expect_poisoned(name, now + outputs[o].offset, outputs[o].bytes);
      }
      free(now);
    }
    free(full[0]);
    free(full[1]);
    free_grad_problem(&p);
  }
  bnk_context_destroy(ctx);
}

/* ---- the second cache level: shapes past the registers' capacity, cached partly in shared memory ---- */

/* On one SM (2 co-resident blocks of the 16-byte kernels, 4 of the element-wide channels-last forward), each
 * past what the registers' cache holds in both ops, and within what the second level adds: fp32 channels-last
 * (2 pieces of 2500 rows of 4 channels, 10 rows a thread) and channels-first (rank 2, 2 pieces of a 20000-element
 * channel); fp16 channels-first (2 pieces of a 60000-element channel: 15 16-byte vectors a thread, the
 * backward's deepest level); bf16 channels-last (8 channels, 15 rows a thread, the same); element by element,
 * fp32 channels-last (C = 5) and fp16 channels-first (S = 3001 is odd). */
#define DEEP_SM_LIMIT 1
static const shape deep_shapes[] = {
    {BNK_FLOAT32, BNK_NHWC, 5000, 4, S0, 0},     {BNK_FLOAT32, BNK_NCHW, 5, 1, S2(40, 100), 0},
    {BNK_FLOAT16, BNK_NCHW, 2, 1, S1(30000), 0}, {BNK_BFLOAT16, BNK_NHWC, 7500, 8, S0, 0},
    {BNK_FLOAT32, BNK_NHWC, 1500, 5, S0, 0},     {BNK_FLOAT16, BNK_NCHW, 3, 1, S1(3001), 0},
};
#define DEEP_SHAPES (sizeof deep_shapes / sizeof deep_shapes[0])

#ifdef BNK_TEST_EMULATION
/* The plan of the op (backward 0 or 1) on the aligned tensors of `desc` takes the second level, and the
 * shallowest depth that fits: one slot fewer does not fit (at these depths the kernels keep their blocks per SM,
 * so the capacity grows with the depth). */
static void expect_shallowest_shared_depth(const bnk_context *ctx, const bnk_tensor_desc *desc, int backward,
                                           const char *label) {
  const bnk_view view = bnk__view_of(desc);
  const void *pointers[3] = {aligned_x, aligned_y, aligned_dx};
  const int vec = bnk__choose_whole_run_vec(&view, pointers, 3);
  bnk_reduce_plan plan;
  int blocks_per_sm = 0, fits = 0;
  cr_assert_eq(bnk__plan_persistent_op(&view, vec, backward, 0, ctx->sm_count, ctx->persistent_occupancy, &plan,
                                       &blocks_per_sm, &fits),
               cudaSuccess);
  /* The context's cached occupancies give the plan that fresh queries give. */
  bnk_reduce_plan queried;
  int queried_blocks_per_sm = 0, queried_fits = 0;
  cr_assert_eq(bnk__plan_persistent_op(&view, vec, backward, 0, ctx->sm_count, NULL, &queried, &queried_blocks_per_sm,
                                       &queried_fits),
               cudaSuccess);
  cr_expect(queried.shared_depth == plan.shared_depth && queried.blocks == plan.blocks && queried.parts == plan.parts &&
                queried_blocks_per_sm == blocks_per_sm && queried_fits == fits,
            "%s: op %d: cached occupancies plan depth %d, %" PRId64 " blocks (%d per SM), fresh queries depth %d, "
            "%" PRId64 " blocks (%d per SM)",
            label, backward, plan.shared_depth, plan.blocks, blocks_per_sm, queried.shared_depth, queried.blocks,
            queried_blocks_per_sm);
  cr_expect(fits, "%s: op %d does not fit", label, backward);
  cr_expect(plan.shared_depth > 0, "%s: op %d took no second level", label, backward);
  cr_expect(plan.shared_depth <= bnk_persistent_max_shared_depth(backward, desc->dtype == BNK_FLOAT32 ? 4 : 2, vec),
            "%s: depth %d", label, plan.shared_depth);
  const int shallower = plan.shared_depth - 1;
  const int team = bnk_persistent_team(&view, vec, backward ? BNK_PERSISTENT_BACKWARD_CACHE : BNK_PERSISTENT_CACHE);
  cr_assert_eq(backward ? bnk__persistent_backward_occupancy(&view, vec, 0, team, shallower, &blocks_per_sm)
                        : bnk__persistent_forward_occupancy(&view, vec, 0, team, shallower, &blocks_per_sm),
               cudaSuccess);
  bnk_reduce_plan shallow;
  cr_expect(!bnk__plan_persistent(&view, vec, backward ? BNK_PERSISTENT_BACKWARD_CACHE : BNK_PERSISTENT_CACHE,
                                  shallower, ctx->sm_count, blocks_per_sm, &shallow),
            "%s: op %d fits at depth %d too, but took %d", label, backward, shallower, plan.shared_depth);
}
#endif

/* The second-level shapes on the automatic path (which takes the persistent kernels), every epilogue of the
 * forward and every variant of the training and the frozen backward, against the reference under every schedule
 * and worker count, bitwise alike. */
Test(persistent, second_level_matches_reference_on_every_schedule, .timeout = 1800) {
  bnk_context *ctx = persistent_context(DEEP_SM_LIMIT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < DEEP_SHAPES; ++i) {
#ifdef BNK_TEST_EMULATION
    bnk_tensor_desc desc;
    cr_assert_eq(bnk_tensor_desc_init(&desc, deep_shapes[i].dtype, deep_shapes[i].layout, deep_shapes[i].n,
                                      deep_shapes[i].c, deep_shapes[i].spatial_dims, deep_shapes[i].spatial),
                 BNK_SUCCESS);
    char label[64];
    snprintf(label, sizeof label, "second-level shape %zu", i);
    expect_shallowest_shared_depth(ctx, &desc, 0, label);
    expect_shallowest_shared_depth(ctx, &desc, 1, label);
#endif
    check_persistent_shape(ctx, &deep_shapes[i], &rng);
    check_persistent_backward_shape(ctx, &deep_shapes[i], &rng);
  }
  bnk_context_destroy(ctx);
}

#ifdef BNK_TEST_EMULATION
/* The occupancy queries of the path choice for the second-level shapes (a bisection over the depth each): some
 * the first time a context plans them, none the second, some again on a fresh context, with the same paths. */
static unsigned long long path_queries(bnk_context *ctx, bnk_training_path paths[DEEP_SHAPES][2]) {
  const unsigned long long before = bnk_emu_occupancy_queries();
  for (size_t i = 0; i < DEEP_SHAPES; ++i) {
    bnk_tensor_desc desc;
    cr_assert_eq(bnk_tensor_desc_init(&desc, deep_shapes[i].dtype, deep_shapes[i].layout, deep_shapes[i].n,
                                      deep_shapes[i].c, deep_shapes[i].spatial_dims, deep_shapes[i].spatial),
                 BNK_SUCCESS);
    cr_assert_eq(forward_path(ctx, &desc, &paths[i][0]), BNK_SUCCESS, "%s", bnk_last_error_message());
    cr_assert_eq(backward_path(ctx, &desc, &paths[i][1]), BNK_SUCCESS, "%s", bnk_last_error_message());
  }
  return bnk_emu_occupancy_queries() - before;
}

Test(persistent, occupancy_is_queried_once_per_context) {
  bnk_training_path first[DEEP_SHAPES][2], again[DEEP_SHAPES][2], fresh[DEEP_SHAPES][2];
  bnk_context *ctx = persistent_context(DEEP_SM_LIMIT);
  const unsigned long long first_queries = path_queries(ctx, first);
  const unsigned long long again_queries = path_queries(ctx, again);
  bnk_context_destroy(ctx);
  ctx = persistent_context(DEEP_SM_LIMIT);
  const unsigned long long fresh_queries = path_queries(ctx, fresh);
  bnk_context_destroy(ctx);
  /* Each shape takes the second level in both ops: at least the registers-only probe and the deepest. */
  cr_expect(first_queries >= 2 * 2 * DEEP_SHAPES, "%llu queries planning %zu shapes first", first_queries, DEEP_SHAPES);
  cr_expect_eq(again_queries, 0ull, "%llu queries planning the same shapes again", again_queries);
  cr_expect_eq(fresh_queries, first_queries, "%llu queries on a fresh context, %llu on the first", fresh_queries,
               first_queries);
  for (size_t i = 0; i < DEEP_SHAPES; ++i)
    for (int op = 0; op < 2; ++op) {
      cr_expect_eq(first[i][op], BNK_TRAINING_PATH_PERSISTENT, "shape %zu, op %d", i, op);
      cr_expect(again[i][op] == first[i][op] && fresh[i][op] == first[i][op], "shape %zu, op %d", i, op);
    }
}
#endif

/* The same data through each path (check_each_path) for a channels-first and a channels-last shape of the
 * second level, forward and backward. */
Test(persistent, second_level_same_data_through_each_path, .timeout = 900) {
  bnk_context *ctx = persistent_context(DEEP_SM_LIMIT);
  test_rng rng = rng_fresh();
  for (size_t i = 0; i < 4; i += 3) {
    check_forward_each_path(ctx, &deep_shapes[i], &rng);
    check_backward_each_path(ctx, &deep_shapes[i], &rng);
  }
  bnk_context_destroy(ctx);
}

/* A call of each op on the second level captured into a graph on a non-blocking stream and replayed
 * (check_capture_and_replay): the launch's dynamic shared memory goes into the graph with it. */
Test(persistent, second_level_is_capturable, .timeout = 600) {
  bnk_context *ctx = persistent_context(DEEP_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  problem f = make_problem(ctx, &deep_shapes[0], &rng);
  const persistent_op forward = forward_op(ctx, &f, BNK_EPILOGUE_ADD_RELU);
  check_capture_and_replay(&forward, f.y_dev, f.bytes, "y");
  free_problem(&f);
  grad_problem p = make_grad_problem(ctx, &deep_shapes[2], &rng);
  const persistent_op backward = backward_op(ctx, &p, GRAD_VARIANTS - 1, 0);
  check_capture_and_replay(&backward, p.dx_dev, p.f.bytes, "dx");
  free_grad_problem(&p);
  bnk_context_destroy(ctx);
}

#ifdef BNK_TEST_EMULATION
/* Bytes the traffic meter saw, counted as tests/test_traffic.c counts them: 32-byte sectors read and written by
 * the kernels (distinct within each launch), plus what cudaMemset and cudaMemcpy moved. */
static double metered_bytes(const bnk_emu_traffic *t) {
  return 32.0 * (double)(t->read_sectors + t->written_sectors) + (double)(t->copy_read_bytes + t->copy_written_bytes);
}

/* What one persistent op should move: tensors x E b + eighths x E / 8 bytes (the mask is E / 8 bytes), within
 * 3% (the per-channel arrays and partials are under 1% of it at these shapes), in one launch; less by at most
 * `skippable` bytes that the op need not read (gated_off_dy_bytes). */
static void expect_traffic(const char *what, const problem *f, double tensors, double eighths, double skippable) {
  cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "%s: %s", what, bnk_emu_last_diagnostic());
  bnk_emu_traffic t;
  bnk_emu_traffic_total(&t);
  const double e = (double)f->elements, want = tensors * e * (double)dtype_size(f->sh.dtype) + eighths * e / 8.0;
  const double got = metered_bytes(&t);
  cr_log_info("%s: %.0f bytes, expected %.0f (%.0f of it skippable); %llu launches", what, got, want, skippable,
              t.launches);
  cr_expect(got >= (want - skippable) * 0.97 && got <= want * 1.03,
            "%s: the kernels moved %.0f bytes, expected %.0f, less at most %.0f (%+.2f%%)", what, got, want, skippable,
            100.0 * (got - want) / want);
  cr_expect_eq(t.launches, 1ull, "%s: %llu launches, expected one", what, t.launches);
}

/* The traffic of one call of the op, its outputs prepared beforehand (off the meter). */
static void expect_op_traffic(const persistent_op *op, const char *what, double tensors, double eighths,
                              double skippable) {
  op->prepare(op);
  cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
  bnk_emu_traffic_reset();
  cr_assert_eq(op->call(op), BNK_SUCCESS, "%s: %s", what, bnk_last_error_message());
  expect_traffic(what, op->forward, tensors, eighths, skippable);
}

/* The bytes of dy that a backward gated by y (or by the mask, as the device holds it: the forward's ReLU calls
 * before it wrote their own) need not read: its 32-byte sectors whose every element the gate zeroes. The
 * emulation's g++ sinks the loads of dy whose values the gate discards into the gate's branches, so the meter
 * does not see those sectors read (nvcc's 16-byte loads read them); with a channel's values centred below 0,
 * that is up to a fifth of dy. */
static double gated_off_dy_bytes(const grad_problem *p, int from_mask) {
  const problem *f = &p->f;
  unsigned char *mask = NULL;
  if (from_mask) {
    mask = malloc(f->mask_bytes);
    dev_download(mask, f->mask_dev, f->mask_bytes);
  }
  const uintptr_t start = (uintptr_t)p->dy_dev;
  const size_t b = dtype_size(f->sh.dtype);
  int64_t sectors = 0;
  for (int64_t i = 0; i < f->elements;) {
    const uintptr_t sector = (start + (uintptr_t)i * b) / 32;
    int gated_off = 1;
    for (; i < f->elements && (start + (uintptr_t)i * b) / 32 == sector; ++i)
      if (from_mask ? (mask[i / 8] >> (i % 8)) & 1u : p->y[i] > 0.0) gated_off = 0;
    sectors += gated_off;
  }
  free(mask);
  return 32.0 * (double)sectors;
}

/* The traffic meter on one shape: the persistent forward moves 2 E b (+ E b of z for add + ReLU, + E / 8 of the
 * mask it writes), the backward 3 E b (+ E b of y or E / 8 of the mask it gates from, + E b of dz), the frozen
 * backward with dgamma the same, each in one launch. */
static void expect_documented_traffic(bnk_context *ctx, const shape *sh, test_rng *rng) {
  static const double forward_tensors[] = {2, 2, 3}, forward_eighths[] = {0, 1, 1};
  static const double backward_tensors[] = {3, 4, 3, 5, 4}, backward_eighths[] = {0, 0, 1, 0, 1};
  grad_problem p = make_grad_problem(ctx, sh, rng);
  char label[200], what[260];
  for (int k = BNK_EPILOGUE_NONE; k <= BNK_EPILOGUE_ADD_RELU; ++k) {
    describe(&p.f, (bnk_epilogue_kind)k, label, sizeof label);
    snprintf(what, sizeof what, "%s, forward", label);
    const persistent_op op = forward_op(ctx, &p.f, (bnk_epilogue_kind)k);
    expect_op_traffic(&op, what, forward_tensors[k], forward_eighths[k], 0.0);
  }
  /* Every training variant, then the frozen backward with dgamma and dbeta: plain, gated by the mask. */
  const struct {
    size_t variant;
    int frozen;
  } backward_calls[] = {{0, 0}, {1, 0}, {2, 0}, {3, 0}, {4, 0}, {0, 1}, {2, 1}};
  for (size_t i = 0; i < sizeof backward_calls / sizeof backward_calls[0]; ++i) {
    const size_t k = backward_calls[i].variant;
    describe_grad(&p, &grad_variants[k], backward_calls[i].frozen, what, sizeof what);
    const persistent_op op = backward_op(ctx, &p, k, backward_calls[i].frozen);
    const int gated = grad_variants[k].kind != BNK_EPILOGUE_NONE;
    const double skippable = gated ? gated_off_dy_bytes(&p, grad_variants[k].from_mask) : 0.0;
    expect_op_traffic(&op, what, backward_tensors[k], backward_eighths[k], skippable);
  }
  free_grad_problem(&p);
}

/* Shapes that fit: pieces over blocks, and channels-first teams: a warp's (fp16, 1024 elements), a block's (fp32,
 * 2048). */
Test(persistent_backward, one_launch_and_the_documented_bytes, .timeout = 600) {
  bnk_context *ctx = persistent_context(TEST_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  const shape shapes[] = {two_fitting_shapes[0],
                          two_fitting_shapes[1],
                          {BNK_FLOAT16, BNK_NCHW, 4, 8, S2(16, 16), 0},
                          {BNK_FLOAT32, BNK_NCHW, 8, 4, S2(16, 16), 0}};
  bnk_emu_set_traffic(1);
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; ++i) expect_documented_traffic(ctx, &shapes[i], &rng);
  bnk_emu_set_traffic(0);
  bnk_context_destroy(ctx);
}

/* The second level is on chip: its shapes move the documented bytes in one launch too. */
Test(persistent_backward, second_level_one_launch_and_the_documented_bytes, .timeout = 600) {
  bnk_context *ctx = persistent_context(DEEP_SM_LIMIT);
  set_path(ctx, BNK_TRAINING_PATH_PERSISTENT);
  test_rng rng = rng_fresh();
  bnk_emu_set_traffic(1);
  for (size_t i = 0; i < DEEP_SHAPES; ++i) expect_documented_traffic(ctx, &deep_shapes[i], &rng);
  bnk_emu_set_traffic(0);
  bnk_context_destroy(ctx);
}
#endif
