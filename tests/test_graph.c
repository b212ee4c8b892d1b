/* bnk's compute calls allocate nothing and never synchronize the host, so whole steps can be captured in a
 * CUDA graph. Each step below (a training step with momentum or cumulative momentum, the fused epilogues with
 * their mask, the SyncBN split calls, inference with bnk_scale_shift, the persistent training forward) is
 * captured once and replayed on five batches; the replays must equal five direct steps bit for bit: every
 * output, the running statistics and num_batches_tracked. A call that allocates or synchronizes during the
 * capture invalidates it (docs/emulation.md, "Stream capture and graphs"), so the capture must end with
 * cudaSuccess. The direct steps are checked against the float64 reference and are bitwise the same on every
 * schedule. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#ifdef BNK_TEST_EMULATION
#include <bnk_emu/control.h>
#endif

#include "tests/harness.h"
#include "tests/reference.h"

#define STEPS 5
#define MAX_BUFFERS 24
#define MOMENTUM 0.1
#define EPS 1e-5
#define RANKS 2
/* test_forward.c's tolerances for y and the running statistics (its comment gives their reasons). */
#define Y_TOLERANCE 1e-5
#define Y_FP32_FLOOR 1e-6
#define RUNNING_ATOL 1e-6
#define RUNNING_RTOL 1e-5
/* SMs of the emulated device in the persistent step: a co-resident grid of a few blocks. */
#define EMULATED_SMS 4

typedef enum buffer_role {
  ROLE_INPUT,  /* new random data before every step (x, dy, z) */
  ROLE_PARAM,  /* set once (gamma, beta, the frozen statistics of inference) */
  ROLE_STATE,  /* set before the first step and carried across steps: running statistics, num_batches_tracked */
  ROLE_OUTPUT, /* poisoned before the first step, written by every step */
  ROLE_SCRATCH /* workspaces, whose contents mean nothing */
} buffer_role;

typedef struct buffer {
  const char *name;
  buffer_role role;
  void *dev;
  size_t bytes;
  unsigned char *host[STEPS]; /* inputs: each step's data; parameters and state: host[0], their value */
} buffer;

typedef struct step step;
/* One step's bnk calls, each asserted to succeed. */
typedef void (*step_calls)(bnk_context *ctx, const step *st);
/* Checks the results of the direct steps (read back after each) against the float64 reference. */
typedef void (*step_reference)(const step *st, unsigned char *results[STEPS][MAX_BUFFERS], const char *label);

struct step {
  bnk_tensor_desc desc;
  size_t tensor_bytes, channel_bytes;
  double momentum;
  bnk_epilogue_kind epilogue;
  int backward_from_mask; /* the backward through the epilogue decides from the mask, else from y */
  step_calls calls;
  step_reference reference;
  int buffer_count;
  buffer buffers[MAX_BUFFERS];
  /* What the calls take, each also in buffers[] (or NULL where the step has none). */
  void *x, *dy, *z, *y, *y_folded, *dx, *dz, *mask;
  float *gamma, *beta, *running_mean, *running_var, *save_mean, *save_invstd, *dgamma, *dbeta, *scale, *shift;
  float *sums;
  double *partials;
  int64_t *num_batches_tracked;
  void *forward_workspace, *backward_workspace;
  size_t forward_bytes, backward_bytes, mask_bytes;
  bnk_tensor_desc share; /* the SyncBN split step: each of RANKS ranks holds an equal share of the batch */
};

/* ---- the buffers of a step ---- */

static buffer *add_buffer(step *st, const char *name, buffer_role role, size_t bytes) {
  cr_assert_lt(st->buffer_count, MAX_BUFFERS);
  buffer *b = &st->buffers[st->buffer_count++];
  memset(b, 0, sizeof *b);
  b->name = name;
  b->role = role;
  b->bytes = bytes;
  b->dev = dev_alloc(bytes);
  return b;
}

/* A tensor of the step's dtype with new random data for every step: offset + N(0, 1), the offset drawn per
 * step. */
static void *add_input(step *st, const char *name, test_rng *rng, double offset_range) {
  buffer *b = add_buffer(st, name, ROLE_INPUT, st->tensor_bytes);
  const int64_t elements = bnk_tensor_desc_elements(&st->desc);
  double *values = malloc((size_t)elements * sizeof(double));
  for (int k = 0; k < STEPS; ++k) {
    const double offset = rng_uniform(rng, -offset_range, offset_range);
    for (int64_t i = 0; i < elements; ++i) values[i] = offset + rng_normal(rng);
    b->host[k] = malloc(st->tensor_bytes);
    to_storage(st->desc.dtype, values, b->host[k], elements);
  }
  free(values);
  return b->dev;
}

/* A per-channel float32 array of the given role whose value is uniform in [lo, hi]. */
static float *add_channels(step *st, const char *name, buffer_role role, test_rng *rng, double lo, double hi) {
  buffer *b = add_buffer(st, name, role, st->channel_bytes);
  float *values = malloc(st->channel_bytes);
  for (int64_t k = 0; k < st->desc.c; ++k) values[k] = (float)rng_uniform(rng, lo, hi);
  b->host[0] = (unsigned char *)values;
  if (role == ROLE_PARAM) dev_upload(b->dev, values, b->bytes);
  return b->dev;
}

static void *add_output(step *st, const char *name, size_t bytes) {
  return add_buffer(st, name, ROLE_OUTPUT, bytes)->dev;
}

static void *add_scratch(step *st, const char *name, size_t bytes) {
  return bytes ? add_buffer(st, name, ROLE_SCRATCH, bytes)->dev : NULL;
}

static const buffer *find_buffer(const step *st, const void *dev) {
  for (int i = 0; i < st->buffer_count; ++i)
    if (st->buffers[i].dev == dev) return &st->buffers[i];
  cr_assert_fail("no buffer at %p", dev);
  return NULL;
}

static void step_start(step *st, bnk_dtype dtype, bnk_layout layout, int64_t n, int64_t c, int spatial_dims,
                       const int64_t *spatial) {
  memset(st, 0, sizeof *st);
  cr_assert_eq(bnk_tensor_desc_init(&st->desc, dtype, layout, n, c, spatial_dims, spatial), BNK_SUCCESS);
  st->tensor_bytes = (size_t)bnk_tensor_desc_elements(&st->desc) * dtype_size(dtype);
  st->channel_bytes = (size_t)c * sizeof(float);
  st->epilogue = BNK_EPILOGUE_NONE;
}

/* A training step's tensors: the forward's and the backward's, with running statistics as PyTorch initialises
 * them (mean 0, variance 1, no batch tracked). */
static void add_training_buffers(step *st, bnk_context *ctx, test_rng *rng) {
  st->x = add_input(st, "x", rng, 2.0);
  st->dy = add_input(st, "dy", rng, 0.0);
  st->gamma = add_channels(st, "gamma", ROLE_PARAM, rng, 0.5, 1.5);
  st->beta = add_channels(st, "beta", ROLE_PARAM, rng, -0.5, 0.5);
  st->running_mean = add_channels(st, "running_mean", ROLE_STATE, rng, 0.0, 0.0);
  st->running_var = add_channels(st, "running_var", ROLE_STATE, rng, 1.0, 1.0);
  buffer *tracked = add_buffer(st, "num_batches_tracked", ROLE_STATE, sizeof(int64_t));
  int64_t *untracked = calloc(1, sizeof *untracked);
  tracked->host[0] = (unsigned char *)untracked;
  st->num_batches_tracked = tracked->dev;
  st->y = add_output(st, "y", st->tensor_bytes);
  st->dx = add_output(st, "dx", st->tensor_bytes);
  st->save_mean = add_output(st, "save_mean", st->channel_bytes);
  st->save_invstd = add_output(st, "save_invstd", st->channel_bytes);
  st->dgamma = add_output(st, "dgamma", st->channel_bytes);
  st->dbeta = add_output(st, "dbeta", st->channel_bytes);
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &st->desc, &st->forward_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &st->desc, &st->backward_bytes), BNK_SUCCESS);
  st->forward_workspace = add_scratch(st, "forward workspace", st->forward_bytes);
  st->backward_workspace = add_scratch(st, "backward workspace", st->backward_bytes);
}

static void step_free(step *st) {
  for (int i = 0; i < st->buffer_count; ++i) {
    dev_free(st->buffers[i].dev);
    for (int k = 0; k < STEPS; ++k) free(st->buffers[i].host[k]);
  }
}

/* ---- the calls of each step ---- */

static void expect_success(bnk_status status, const char *call) {
  cr_assert_eq(status, BNK_SUCCESS, "%s: %s: %s", call, bnk_status_name(status), bnk_last_error_message());
}

/* Forward training then backward; through the step's epilogue when it has one. */
static void training_calls(bnk_context *ctx, const step *st) {
  if (st->epilogue == BNK_EPILOGUE_NONE) {
    expect_success(bnk_forward_training(ctx, &st->desc, st->x, st->y, st->gamma, st->beta, st->running_mean,
                                        st->running_var, st->num_batches_tracked, st->momentum, EPS, st->save_mean,
                                        st->save_invstd, st->forward_workspace, st->forward_bytes),
                   "bnk_forward_training");
    expect_success(bnk_backward(ctx, &st->desc, st->x, st->dy, st->dx, st->gamma, st->dgamma, st->dbeta, st->save_mean,
                                st->save_invstd, st->backward_workspace, st->backward_bytes),
                   "bnk_backward");
    return;
  }
  const bnk_epilogue epilogue = {st->epilogue, st->z, st->mask, st->mask_bytes};
  expect_success(bnk_forward_training_ex(ctx, &st->desc, st->x, st->y, st->gamma, st->beta, st->running_mean,
                                         st->running_var, st->num_batches_tracked, st->momentum, EPS, st->save_mean,
                                         st->save_invstd, st->forward_workspace, st->forward_bytes, &epilogue),
                 "bnk_forward_training_ex");
  const bnk_epilogue_grad grad = {st->epilogue, st->backward_from_mask ? NULL : st->y,
                                  st->backward_from_mask ? st->mask : NULL, st->backward_from_mask ? st->mask_bytes : 0,
                                  st->dz};
  expect_success(bnk_backward_ex(ctx, &st->desc, st->x, st->dy, st->dx, st->gamma, st->dgamma, st->dbeta, st->save_mean,
                                 st->save_invstd, st->backward_workspace, st->backward_bytes, &grad),
                 "bnk_backward_ex");
}

/* The SyncBN split calls of RANKS ranks, each holding one share of the batch (shares are consecutive in memory,
 * N being outermost in both layouts). The all-gather of the partials is their placement side by side; the
 * all-reduce of the backward's sums is one call of bnk_backward_local_sums over the whole batch, which is what
 * a sum over the ranks' sums gives (up to rounding), since a one-process graph holds no collective. */
static void split_calls(bnk_context *ctx, const step *st) {
  const int64_t c = st->desc.c;
  const size_t share_bytes = st->tensor_bytes / RANKS;
  const unsigned char *x = st->x, *dy = st->dy;
  unsigned char *y = st->y, *dx = st->dx;
  for (int r = 0; r < RANKS; ++r)
    expect_success(bnk_batch_stats(ctx, &st->share, x + r * share_bytes,
                                   st->partials + (size_t)r * BNK_PARTIALS_PER_CHANNEL * (size_t)c,
                                   st->forward_workspace, st->forward_bytes),
                   "bnk_batch_stats");
  expect_success(bnk_merge_stats(ctx, c, RANKS, st->partials, st->running_mean, st->running_var,
                                 st->num_batches_tracked, st->momentum, EPS, st->save_mean, st->save_invstd),
                 "bnk_merge_stats");
  for (int r = 0; r < RANKS; ++r)
    expect_success(bnk_normalize(ctx, &st->share, x + r * share_bytes, y + r * share_bytes, st->gamma, st->beta,
                                 st->save_mean, st->save_invstd),
                   "bnk_normalize");
  expect_success(bnk_backward_local_sums(ctx, &st->desc, st->x, st->dy, st->save_mean, st->save_invstd, st->sums,
                                         st->backward_workspace, st->backward_bytes),
                 "bnk_backward_local_sums");
  for (int r = 0; r < RANKS; ++r)
    expect_success(bnk_backward_apply(ctx, &st->share, x + r * share_bytes, dy + r * share_bytes, dx + r * share_bytes,
                                      st->gamma, st->dgamma, st->dbeta, st->save_mean, st->save_invstd, st->sums,
                                      st->backward_workspace, st->backward_bytes),
                   "bnk_backward_apply");
}

/* Inference from the frozen statistics, and its folded form: the parameters folded, then bnk_scale_shift. */
static void inference_calls(bnk_context *ctx, const step *st) {
  expect_success(
      bnk_forward_inference(ctx, &st->desc, st->x, st->y, st->gamma, st->beta, st->running_mean, st->running_var, EPS),
      "bnk_forward_inference");
  expect_success(bnk_inference_params(ctx, st->desc.c, st->gamma, st->beta, st->running_mean, st->running_var, EPS,
                                      st->scale, st->shift),
                 "bnk_inference_params");
  expect_success(bnk_scale_shift(ctx, &st->desc, st->x, st->y_folded, st->scale, st->shift, NULL), "bnk_scale_shift");
}

/* ---- float64 references of the direct steps ---- */

static void host_tensor(const step *st, const void *dev, int k, double *out) {
  from_storage(st->desc.dtype, find_buffer(st, dev)->host[k], out, bnk_tensor_desc_elements(&st->desc));
}

static void float_results(const step *st, unsigned char *const results[MAX_BUFFERS], const void *dev, double *out,
                          int64_t count) {
  const float *values = (const float *)results[find_buffer(st, dev) - st->buffers];
  for (int64_t i = 0; i < count; ++i) out[i] = values[i];
}

/* The running statistics after every step, from x's batches, with the step's momentum (cumulative: weight 1/k on
 * the k-th batch), and num_batches_tracked counting the steps. */
static void reference_running_statistics(const step *st, unsigned char *results[STEPS][MAX_BUFFERS],
                                         const char *label) {
  const int64_t c = st->desc.c, elements = bnk_tensor_desc_elements(&st->desc);
  double *x = malloc((size_t)elements * sizeof(double));
  double *mean = malloc((size_t)c * sizeof(double)), *var = malloc((size_t)c * sizeof(double));
  double *running_mean = malloc((size_t)c * sizeof(double)), *running_var = malloc((size_t)c * sizeof(double));
  double *got = malloc((size_t)c * sizeof(double));
  for (int64_t k = 0; k < c; ++k) {
    running_mean[k] = 0.0;
    running_var[k] = 1.0;
  }
  char what[200];
  for (int k = 0; k < STEPS; ++k) {
    host_tensor(st, st->x, k, x);
    ref_channel_stats(&st->desc, x, mean, NULL, var);
    const double momentum = st->momentum == BNK_MOMENTUM_CUMULATIVE ? 1.0 / (k + 1) : st->momentum;
    ref_running_update(c, momentum, mean, var, running_mean, running_var);
    float_results(st, results[k], st->running_mean, got, c);
    snprintf(what, sizeof what, "%s, step %d: running_mean", label, k + 1);
    expect_close(what, got, running_mean, c, RUNNING_ATOL, RUNNING_RTOL);
    float_results(st, results[k], st->running_var, got, c);
    snprintf(what, sizeof what, "%s, step %d: running_var", label, k + 1);
    expect_close(what, got, running_var, c, RUNNING_ATOL, RUNNING_RTOL);
    int64_t tracked;
    memcpy(&tracked, results[k][find_buffer(st, st->num_batches_tracked) - st->buffers], sizeof tracked);
    cr_expect_eq(tracked, k + 1, "%s, step %d: num_batches_tracked = %lld", label, k + 1, (long long)tracked);
  }
  free(x);
  free(mean);
  free(var);
  free(running_mean);
  free(running_var);
  free(got);
}

/* y of every step against the normalization by the frozen statistics. */
static void reference_inference(const step *st, unsigned char *results[STEPS][MAX_BUFFERS], const char *label) {
  const int64_t c = st->desc.c, elements = bnk_tensor_desc_elements(&st->desc);
  double *x = malloc((size_t)elements * sizeof(double)), *want = malloc((size_t)elements * sizeof(double));
  double *got = malloc((size_t)elements * sizeof(double));
  double *params[4];
  const void *devs[4] = {st->running_mean, st->running_var, st->gamma, st->beta};
  for (int i = 0; i < 4; ++i) {
    params[i] = malloc((size_t)c * sizeof(double));
    const float *values = (const float *)find_buffer(st, devs[i])->host[0];
    for (int64_t k = 0; k < c; ++k) params[i][k] = values[k];
  }
  char what[200];
  for (int k = 0; k < STEPS; ++k) {
    host_tensor(st, st->x, k, x);
    ref_normalize(&st->desc, x, params[0], params[1], EPS, params[2], params[3], want);
    from_storage(st->desc.dtype, results[k][find_buffer(st, st->y) - st->buffers], got, elements);
    snprintf(what, sizeof what, "%s, step %d: y", label, k + 1);
    if (st->desc.dtype == BNK_FLOAT32) expect_close(what, got, want, elements, Y_TOLERANCE, 0.0);
    else expect_within_ulps(what, st->desc.dtype, got, want, elements, 1.0, Y_FP32_FLOOR);
  }
  for (int i = 0; i < 4; ++i) free(params[i]);
  free(x);
  free(want);
  free(got);
}

/* ---- the driver: direct steps, then one capture replayed ---- */

static void sync_device(void) { cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess); }

/* Before the first step: state set, outputs poisoned. */
static void step_reset(const step *st) {
  for (int i = 0; i < st->buffer_count; ++i) {
    const buffer *b = &st->buffers[i];
    if (b->role == ROLE_STATE) dev_upload(b->dev, b->host[0], b->bytes);
    if (b->role == ROLE_OUTPUT) dev_poison(b->dev, b->bytes);
  }
  sync_device();
}

static void load_inputs(const step *st, int k) {
  for (int i = 0; i < st->buffer_count; ++i)
    if (st->buffers[i].role == ROLE_INPUT) dev_upload(st->buffers[i].dev, st->buffers[i].host[k], st->buffers[i].bytes);
  sync_device();
}

static int compared(const buffer *b) { return b->role == ROLE_STATE || b->role == ROLE_OUTPUT; }

/* Host copies of the state and outputs (NULL for the other buffers). */
static void read_results(const step *st, unsigned char *results[MAX_BUFFERS]) {
  for (int i = 0; i < st->buffer_count; ++i)
    results[i] = compared(&st->buffers[i]) ? dev_snapshot(st->buffers[i].dev, st->buffers[i].bytes) : NULL;
}

static void free_results(const step *st, unsigned char *results[MAX_BUFFERS]) {
  for (int i = 0; i < st->buffer_count; ++i) free(results[i]);
}

static void expect_same_results(const step *st, const char *label, int k, unsigned char *const want[MAX_BUFFERS],
                                unsigned char *const got[MAX_BUFFERS]) {
  char what[240];
  for (int i = 0; i < st->buffer_count; ++i) {
    if (!compared(&st->buffers[i])) continue;
    snprintf(what, sizeof what, "%s, step %d: %s", label, k + 1, st->buffers[i].name);
    expect_bitwise_equal(what, want[i], got[i], st->buffers[i].bytes);
  }
}

/* Every output was written (none is still all poison). */
static void expect_written(const step *st, const char *label, int k, unsigned char *const results[MAX_BUFFERS]) {
  for (int i = 0; i < st->buffer_count; ++i) {
    if (st->buffers[i].role != ROLE_OUTPUT) continue;
    size_t j = 0;
    while (j < st->buffers[i].bytes && results[i][j] == 0xff) ++j;
    cr_expect(j < st->buffers[i].bytes, "%s, step %d: %s was not written", label, k + 1, st->buffers[i].name);
  }
}

/* Capturing ran nothing: the state is as set and the outputs are still poisoned. */
static void expect_as_reset(const step *st, const char *label) {
  unsigned char *results[MAX_BUFFERS];
  read_results(st, results);
  for (int i = 0; i < st->buffer_count; ++i) {
    const buffer *b = &st->buffers[i];
    if (b->role == ROLE_STATE)
      cr_expect(memcmp(results[i], b->host[0], b->bytes) == 0, "%s: the capture ran the step (%s)", label, b->name);
    if (b->role == ROLE_OUTPUT)
      for (size_t j = 0; j < b->bytes; ++j)
        if (results[i][j] != 0xff) {
          cr_expect(0, "%s: the capture ran the step (%s, byte %zu)", label, b->name, j);
          break;
        }
  }
  free_results(st, results);
}

static void check_capture_and_replay(bnk_context *ctx, const step *st, const char *name) {
  cudaStream_t stream = NULL;
  cr_assert_eq(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  expect_success(bnk_context_set_stream(ctx, (bnk_stream)stream), "bnk_context_set_stream");
  char shape[96], label[200];
  format_shape(shape, sizeof shape, st->desc.layout, st->desc.dtype, st->desc.n, st->desc.c, st->desc.spatial_dims,
               st->desc.spatial);
  unsigned char *first[STEPS][MAX_BUFFERS] = {{NULL}}; /* the first schedule's direct steps */

  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    snprintf(label, sizeof label, "%s, %s [%s]", name, shape, schedule_name(schedule));
    unsigned char *direct[STEPS][MAX_BUFFERS];
    step_reset(st);
    for (int k = 0; k < STEPS; ++k) {
      load_inputs(st, k);
      st->calls(ctx, st);
      cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
      read_results(st, direct[k]);
      expect_written(st, label, k, direct[k]);
      if (schedule > 0) expect_same_results(st, label, k, first[k], direct[k]);
    }
    st->reference(st, direct, label);

    step_reset(st);
    cr_assert_eq(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    st->calls(ctx, st);
    cudaGraph_t graph = NULL;
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    cr_assert_eq(ended, cudaSuccess, "%s: the captured step made a call that a capture refuses: %s", label,
                 cudaGetErrorName(ended));
    cudaGraphExec_t exec = NULL;
    cr_assert_eq(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    expect_as_reset(st, label);
    for (int k = 0; k < STEPS; ++k) {
      load_inputs(st, k);
      cr_assert_eq(cudaGraphLaunch(exec, stream), cudaSuccess);
      cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
      unsigned char *replayed[MAX_BUFFERS];
      read_results(st, replayed);
      char what[240];
      snprintf(what, sizeof what, "%s: the replayed graph against the direct step", label);
      expect_same_results(st, what, k, direct[k], replayed);
      free_results(st, replayed);
    }
    cr_assert_eq(cudaGraphExecDestroy(exec), cudaSuccess);
    cr_assert_eq(cudaGraphDestroy(graph), cudaSuccess);

    for (int k = 0; k < STEPS; ++k) {
      if (schedule == 0) memcpy(first[k], direct[k], sizeof direct[k]);
      else free_results(st, direct[k]);
    }
  }
  for (int k = 0; k < STEPS; ++k) free_results(st, first[k]);
  expect_success(bnk_context_set_stream(ctx, NULL), "bnk_context_set_stream");
  cr_assert_eq(cudaStreamDestroy(stream), cudaSuccess);
}

/* ---- the steps ---- */

static const int64_t image[2] = {5, 7};

static void check_training_step(bnk_dtype dtype, bnk_layout layout, double momentum, bnk_epilogue_kind epilogue,
                                int backward_from_mask, const char *name) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  step st;
  step_start(&st, dtype, layout, 4, 6, 2, image);
  add_training_buffers(&st, ctx, &rng);
  st.momentum = momentum;
  st.epilogue = epilogue;
  st.backward_from_mask = backward_from_mask;
  if (epilogue != BNK_EPILOGUE_NONE) {
    cr_assert_eq(bnk_epilogue_mask_size(&st.desc, &st.mask_bytes), BNK_SUCCESS);
    st.mask = add_output(&st, "mask", st.mask_bytes);
  }
  if (epilogue == BNK_EPILOGUE_ADD_RELU) {
    st.z = add_input(&st, "z", &rng, 0.5);
    st.dz = add_output(&st, "dz", st.tensor_bytes);
  }
  st.calls = training_calls;
  st.reference = reference_running_statistics;
  check_capture_and_replay(ctx, &st, name);
  step_free(&st);
  bnk_context_destroy(ctx);
}

Test(graph, training_step_f32_nchw) {
  check_training_step(BNK_FLOAT32, BNK_NCHW, MOMENTUM, BNK_EPILOGUE_NONE, 0, "training step");
}
Test(graph, training_step_f16_nhwc) {
  check_training_step(BNK_FLOAT16, BNK_NHWC, MOMENTUM, BNK_EPILOGUE_NONE, 0, "training step");
}
Test(graph, training_step_bf16_nchw) {
  check_training_step(BNK_BFLOAT16, BNK_NCHW, MOMENTUM, BNK_EPILOGUE_NONE, 0, "training step");
}
Test(graph, training_step_cumulative_momentum_f32_nhwc) {
  check_training_step(BNK_FLOAT32, BNK_NHWC, BNK_MOMENTUM_CUMULATIVE, BNK_EPILOGUE_NONE, 0,
                      "training step, cumulative momentum");
}
Test(graph, relu_step_backward_from_mask_f16_nchw) {
  check_training_step(BNK_FLOAT16, BNK_NCHW, MOMENTUM, BNK_EPILOGUE_RELU, 1, "ReLU step, backward from the mask");
}
Test(graph, add_relu_step_backward_from_y_and_dz_bf16_nhwc) {
  check_training_step(BNK_BFLOAT16, BNK_NHWC, MOMENTUM, BNK_EPILOGUE_ADD_RELU, 0, "add+ReLU step, backward from y, dz");
}
Test(graph, add_relu_step_backward_from_mask_and_dz_f32_nchw) {
  check_training_step(BNK_FLOAT32, BNK_NCHW, MOMENTUM, BNK_EPILOGUE_ADD_RELU, 1,
                      "add+ReLU step, backward from the mask, dz");
}

Test(graph, syncbn_split_step_f32_nhwc) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  step st;
  step_start(&st, BNK_FLOAT32, BNK_NHWC, 4, 6, 2, image);
  add_training_buffers(&st, ctx, &rng);
  st.momentum = MOMENTUM;
  cr_assert_eq(bnk_tensor_desc_init(&st.share, st.desc.dtype, st.desc.layout, st.desc.n / RANKS, st.desc.c,
                                    st.desc.spatial_dims, st.desc.spatial),
               BNK_SUCCESS);
  size_t share_forward = 0, share_backward = 0;
  cr_assert_eq(bnk_batch_stats_workspace_size(ctx, &st.share, &share_forward), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &st.share, &share_backward), BNK_SUCCESS);
  /* The training buffers' workspaces serve the share's calls too when they are large enough. */
  cr_assert_leq(share_forward, st.forward_bytes);
  cr_assert_leq(share_backward, st.backward_bytes);
  st.partials =
      add_output(&st, "partials", (size_t)RANKS * BNK_PARTIALS_PER_CHANNEL * (size_t)st.desc.c * sizeof(double));
  st.sums = add_output(&st, "sums", (size_t)BNK_BACKWARD_SUMS(st.desc.c) * sizeof(float));
  st.calls = split_calls;
  st.reference = reference_running_statistics;
  check_capture_and_replay(ctx, &st, "SyncBN split step");
  step_free(&st);
  bnk_context_destroy(ctx);
}

Test(graph, inference_and_scale_shift_step_f16_nhwc) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  step st;
  step_start(&st, BNK_FLOAT16, BNK_NHWC, 4, 6, 2, image);
  st.x = add_input(&st, "x", &rng, 2.0);
  st.gamma = add_channels(&st, "gamma", ROLE_PARAM, &rng, 0.5, 1.5);
  st.beta = add_channels(&st, "beta", ROLE_PARAM, &rng, -0.5, 0.5);
  st.running_mean = add_channels(&st, "running_mean", ROLE_PARAM, &rng, -1.0, 1.0);
  st.running_var = add_channels(&st, "running_var", ROLE_PARAM, &rng, 0.5, 2.0);
  st.y = add_output(&st, "y", st.tensor_bytes);
  st.scale = add_output(&st, "scale", st.channel_bytes);
  st.shift = add_output(&st, "shift", st.channel_bytes);
  st.y_folded = add_output(&st, "y of bnk_scale_shift", st.tensor_bytes);
  st.calls = inference_calls;
  st.reference = reference_inference;
  check_capture_and_replay(ctx, &st, "inference step");
  step_free(&st);
  bnk_context_destroy(ctx);
}

/* The persistent forward (a cooperative launch) in a training step. The emulation's suites keep the two-pass
 * path (tests/harness.c), and a co-resident grid of the default device's SMs is too large for it, so this step
 * runs on a device of a few SMs with the path forced: a step that does not fit fails rather than fall back. */
Test(graph, persistent_training_step_f16_nchw, .timeout = 600) {
#ifdef BNK_TEST_EMULATION
  bnk_emu_set_sm_count(EMULATED_SMS);
#endif
  bnk_context *ctx = test_context();
  expect_success(bnk_context_set_training_path(ctx, BNK_TRAINING_PATH_PERSISTENT), "bnk_context_set_training_path");
  test_rng rng = rng_fresh();
  step st;
  const int64_t length[1] = {33};
  step_start(&st, BNK_FLOAT16, BNK_NCHW, 3, 4, 1, length);
  add_training_buffers(&st, ctx, &rng);
  st.momentum = MOMENTUM;
  bnk_training_path path = BNK_TRAINING_PATH_AUTO;
  expect_success(bnk_forward_training_path(ctx, &st.desc, st.x, st.y, NULL, &path), "bnk_forward_training_path");
  cr_assert_eq(path, BNK_TRAINING_PATH_PERSISTENT);
  st.calls = training_calls;
  st.reference = reference_running_statistics;
  check_capture_and_replay(ctx, &st, "persistent training step");
  step_free(&st);
  bnk_context_destroy(ctx);
}
