/* bnk's compute calls allocate nothing and never synchronize the host, so a training step can be
 * captured in a CUDA graph: one step (forward training, then backward) captured once and replayed on five
 * batches equals five direct steps bit for bit, the running statistics and num_batches_tracked included. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "tests/harness.h"

#define STEPS 5
#define MOMENTUM 0.1
#define EPS 1e-5

typedef struct step_buffers {
  bnk_tensor_desc desc;
  int64_t elements, c;
  size_t tensor_bytes;
  void *x, *dy, *y, *dx;
  float *gamma, *beta, *running_mean, *running_var, *save_mean, *save_invstd, *dgamma, *dbeta;
  int64_t *num_batches_tracked;
  void *forward_workspace, *backward_workspace;
  size_t forward_bytes, backward_bytes;
} step_buffers;

/* What one step leaves behind, read back for the bitwise comparison. */
typedef struct step_outputs {
  unsigned char *y, *dx;
  float *dgamma, *dbeta, *running_mean, *running_var;
  int64_t num_batches_tracked;
} step_outputs;

static void step_init(step_buffers *b, bnk_context *ctx, bnk_dtype dtype, bnk_layout layout, test_rng *rng) {
  const int64_t spatial[2] = {5, 7};
  cr_assert_eq(bnk_tensor_desc_init(&b->desc, dtype, layout, 4, 6, 2, spatial), BNK_SUCCESS);
  b->elements = bnk_tensor_desc_elements(&b->desc);
  b->c = b->desc.c;
  b->tensor_bytes = (size_t)b->elements * dtype_size(dtype);
  b->x = dev_alloc(b->tensor_bytes);
  b->dy = dev_alloc(b->tensor_bytes);
  b->y = dev_alloc(b->tensor_bytes);
  b->dx = dev_alloc(b->tensor_bytes);
  double *values = malloc((size_t)b->c * sizeof(double));
  for (int64_t k = 0; k < b->c; ++k) values[k] = rng_uniform(rng, 0.5, 1.5);
  b->gamma = dev_floats(values, b->c);
  for (int64_t k = 0; k < b->c; ++k) values[k] = rng_uniform(rng, -0.5, 0.5);
  b->beta = dev_floats(values, b->c);
  free(values);
  const size_t channel_bytes = (size_t)b->c * sizeof(float);
  b->running_mean = dev_alloc(channel_bytes);
  b->running_var = dev_alloc(channel_bytes);
  b->save_mean = dev_alloc(channel_bytes);
  b->save_invstd = dev_alloc(channel_bytes);
  b->dgamma = dev_alloc(channel_bytes);
  b->dbeta = dev_alloc(channel_bytes);
  b->num_batches_tracked = dev_alloc(sizeof(int64_t));
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &b->desc, &b->forward_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &b->desc, &b->backward_bytes), BNK_SUCCESS);
  b->forward_workspace = b->forward_bytes ? dev_alloc(b->forward_bytes) : NULL;
  b->backward_workspace = b->backward_bytes ? dev_alloc(b->backward_bytes) : NULL;
}

static void step_free(step_buffers *b) {
  void *all[] = {b->x,
                 b->dy,
                 b->y,
                 b->dx,
                 b->gamma,
                 b->beta,
                 b->running_mean,
                 b->running_var,
                 b->save_mean,
                 b->save_invstd,
                 b->dgamma,
                 b->dbeta,
                 b->num_batches_tracked,
                 b->forward_workspace,
                 b->backward_workspace};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) dev_free(all[i]);
}

/* Running statistics as PyTorch initialises them, and every output poisoned. */
static void step_reset(step_buffers *b) {
  float *ones = malloc((size_t)b->c * sizeof(float));
  for (int64_t k = 0; k < b->c; ++k) ones[k] = 1.0f;
  dev_upload(b->running_var, ones, (size_t)b->c * sizeof(float));
  free(ones);
  cr_assert_eq(cudaMemset(b->running_mean, 0, (size_t)b->c * sizeof(float)), cudaSuccess);
  cr_assert_eq(cudaMemset(b->num_batches_tracked, 0, sizeof(int64_t)), cudaSuccess);
  dev_poison(b->y, b->tensor_bytes);
  dev_poison(b->dx, b->tensor_bytes);
  dev_poison(b->dgamma, (size_t)b->c * sizeof(float));
  dev_poison(b->dbeta, (size_t)b->c * sizeof(float));
}

static void step_run(bnk_context *ctx, step_buffers *b) {
  bnk_status s = bnk_forward_training(ctx, &b->desc, b->x, b->y, b->gamma, b->beta, b->running_mean, b->running_var,
                                      b->num_batches_tracked, MOMENTUM, EPS, b->save_mean, b->save_invstd,
                                      b->forward_workspace, b->forward_bytes);
  cr_assert_eq(s, BNK_SUCCESS, "bnk_forward_training: %s: %s", bnk_status_name(s), bnk_last_error_message());
  s = bnk_backward(ctx, &b->desc, b->x, b->dy, b->dx, b->gamma, b->dgamma, b->dbeta, b->save_mean, b->save_invstd,
                   b->backward_workspace, b->backward_bytes);
  cr_assert_eq(s, BNK_SUCCESS, "bnk_backward: %s: %s", bnk_status_name(s), bnk_last_error_message());
}

static step_outputs step_read(const step_buffers *b) {
  step_outputs o;
  const size_t channel_bytes = (size_t)b->c * sizeof(float);
  o.y = dev_snapshot(b->y, b->tensor_bytes);
  o.dx = dev_snapshot(b->dx, b->tensor_bytes);
  o.dgamma = dev_snapshot(b->dgamma, channel_bytes);
  o.dbeta = dev_snapshot(b->dbeta, channel_bytes);
  o.running_mean = dev_snapshot(b->running_mean, channel_bytes);
  o.running_var = dev_snapshot(b->running_var, channel_bytes);
  dev_download(&o.num_batches_tracked, b->num_batches_tracked, sizeof(int64_t));
  return o;
}

static void outputs_free(step_outputs *o) {
  free(o->y);
  free(o->dx);
  free(o->dgamma);
  free(o->dbeta);
  free(o->running_mean);
  free(o->running_var);
}

static void expect_same_step(const char *label, int step, const step_buffers *b, const step_outputs *direct,
                             const step_outputs *replayed) {
  char what[160];
  const size_t channel_bytes = (size_t)b->c * sizeof(float);
  const struct {
    const char *name;
    const void *a, *r;
    size_t bytes;
  } fields[] = {{"y", direct->y, replayed->y, b->tensor_bytes},
                {"dx", direct->dx, replayed->dx, b->tensor_bytes},
                {"dgamma", direct->dgamma, replayed->dgamma, channel_bytes},
                {"dbeta", direct->dbeta, replayed->dbeta, channel_bytes},
                {"running_mean", direct->running_mean, replayed->running_mean, channel_bytes},
                {"running_var", direct->running_var, replayed->running_var, channel_bytes}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; ++i) {
    snprintf(what, sizeof what, "%s, step %d: %s of the replayed graph", label, step + 1, fields[i].name);
    expect_bitwise_equal(what, fields[i].a, fields[i].r, fields[i].bytes);
  }
  cr_assert_eq(replayed->num_batches_tracked, direct->num_batches_tracked, "%s, step %d: num_batches_tracked", label,
               step + 1);
  cr_assert_eq(direct->num_batches_tracked, step + 1, "%s, step %d: num_batches_tracked", label, step + 1);
}

static void check_graph_replay(bnk_dtype dtype, bnk_layout layout) {
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  step_buffers b;
  step_init(&b, ctx, dtype, layout, &rng);
  cudaStream_t stream = NULL;
  cr_assert_eq(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cr_assert_eq(bnk_context_set_stream(ctx, stream), BNK_SUCCESS);
  char label[96];
  format_shape(label, sizeof label, layout, dtype, b.desc.n, b.desc.c, b.desc.spatial_dims, b.desc.spatial);

  /* Five batches of inputs and upstream gradients, stored in the tensor's dtype. */
  double *values = malloc((size_t)b.elements * sizeof(double));
  unsigned char *x_batches[STEPS], *dy_batches[STEPS];
  for (int k = 0; k < STEPS; ++k) {
    x_batches[k] = malloc(b.tensor_bytes);
    dy_batches[k] = malloc(b.tensor_bytes);
    const double offset = rng_uniform(&rng, -2.0, 2.0);
    for (int64_t i = 0; i < b.elements; ++i) values[i] = offset + rng_normal(&rng);
    to_storage(dtype, values, x_batches[k], b.elements);
    for (int64_t i = 0; i < b.elements; ++i) values[i] = rng_normal(&rng);
    to_storage(dtype, values, dy_batches[k], b.elements);
  }
  free(values);

  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    step_outputs direct[STEPS];
    step_reset(&b);
    for (int k = 0; k < STEPS; ++k) {
      dev_upload(b.x, x_batches[k], b.tensor_bytes);
      dev_upload(b.dy, dy_batches[k], b.tensor_bytes);
      step_run(ctx, &b);
      cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
      direct[k] = step_read(&b);
    }

    step_reset(&b);
    cr_assert_eq(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    step_run(ctx, &b);
    cudaGraph_t graph = NULL;
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    cr_assert_eq(ended, cudaSuccess, "%s: the captured step used a call a capture refuses: %s", label,
                 cudaGetErrorName(ended));
    cudaGraphExec_t exec = NULL;
    cr_assert_eq(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    /* Capturing ran nothing. */
    int64_t tracked = -1;
    dev_download(&tracked, b.num_batches_tracked, sizeof tracked);
    cr_assert_eq(tracked, 0, "%s: the capture ran the step", label);
    for (int k = 0; k < STEPS; ++k) {
      dev_upload(b.x, x_batches[k], b.tensor_bytes);
      dev_upload(b.dy, dy_batches[k], b.tensor_bytes);
      cr_assert_eq(cudaGraphLaunch(exec, stream), cudaSuccess);
      cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
      step_outputs replayed = step_read(&b);
      char what[128];
      snprintf(what, sizeof what, "%s [%s]", label, schedule_name(schedule));
      expect_same_step(what, k, &b, &direct[k], &replayed);
      outputs_free(&replayed);
    }
    cr_assert_eq(cudaGraphExecDestroy(exec), cudaSuccess);
    cr_assert_eq(cudaGraphDestroy(graph), cudaSuccess);

    /* The steps did real work: running_mean after five batches against float64. */
    double *x = malloc((size_t)b.elements * sizeof(double)), *want = malloc((size_t)b.c * sizeof(double));
    double *got = malloc((size_t)b.c * sizeof(double));
    for (int64_t ch = 0; ch < b.c; ++ch) want[ch] = 0.0;
    const int64_t per_channel = b.elements / b.c, spatial = per_channel / b.desc.n;
    for (int k = 0; k < STEPS; ++k) {
      from_storage(dtype, x_batches[k], x, b.elements);
      for (int64_t ch = 0; ch < b.c; ++ch) {
        double sum = 0.0;
        for (int64_t n = 0; n < b.desc.n; ++n)
          for (int64_t s = 0; s < spatial; ++s)
            sum += layout == BNK_NCHW ? x[(n * b.c + ch) * spatial + s] : x[(n * spatial + s) * b.c + ch];
        want[ch] = (1.0 - MOMENTUM) * want[ch] + MOMENTUM * sum / (double)per_channel;
      }
    }
    for (int64_t ch = 0; ch < b.c; ++ch) got[ch] = direct[STEPS - 1].running_mean[ch];
    char what[128];
    snprintf(what, sizeof what, "%s [%s]: running_mean after %d steps", label, schedule_name(schedule), STEPS);
    expect_close(what, got, want, b.c, 1e-6, 1e-5);
    free(x);
    free(want);
    free(got);
    for (int k = 0; k < STEPS; ++k) outputs_free(&direct[k]);
  }

  for (int k = 0; k < STEPS; ++k) {
    free(x_batches[k]);
    free(dy_batches[k]);
  }
  cr_assert_eq(bnk_context_set_stream(ctx, NULL), BNK_SUCCESS);
  cr_assert_eq(cudaStreamDestroy(stream), cudaSuccess);
  step_free(&b);
  bnk_context_destroy(ctx);
}

Test(graph, training_step_replayed_equals_direct_steps_f32_nchw) { check_graph_replay(BNK_FLOAT32, BNK_NCHW); }
Test(graph, training_step_replayed_equals_direct_steps_f16_nhwc) { check_graph_replay(BNK_FLOAT16, BNK_NHWC); }
Test(graph, training_step_replayed_equals_direct_steps_bf16_nchw) { check_graph_replay(BNK_BFLOAT16, BNK_NCHW); }
