/* Synchronized batch normalization: the split-statistics calls, usable with any communication library, and
 * their composition over NCCL. docs/distributed.md explains the design and the bytes on the wire. */
#include <inttypes.h>

#include "host/internal.h"

#ifdef BNK_WITH_NCCL
#include <nccl.h>
#endif

static size_t partials_bytes(int64_t c) { return (size_t)c * BNK_PARTIALS_PER_CHANNEL * sizeof(double); }
static size_t sums_bytes(int64_t c) { return (size_t)BNK_BACKWARD_SUMS(c) * sizeof(float); }

bnk_status bnk_batch_stats_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, size_t *bytes) {
  return bnk_forward_training_workspace_size(ctx, desc, bytes);
}

/* The local statistics into `partials`; a zero-filled triple for an empty share. */
static bnk_status launch_local_stats(const bnk_context *ctx, const bnk_tensor_desc *desc, const bnk_view *view,
                                     const void *x, double *partials, void *workspace) {
  if (bnk__view_per_channel(view) == 0)
    return bnk__check_cuda(cudaMemsetAsync(partials, 0, partials_bytes(view->c), ctx->stream),
                           "cudaMemsetAsync(partials)");
  const void *pointers[1] = {x};
  const bnk_reduce_plan plan = bnk__reduce_plan_of(ctx, BNK_FAMILY_STATS, 0, view, bnk__choose_vec(view, pointers, 1));
  BNK__TRY(bnk__require_grid(&plan));
  bnk__range_push("batch_stats", desc);
  const bnk_stats_workspace ws = bnk__stats_workspace_carve(workspace, view, plan.parts);
  const bnk_running_update untracked = {NULL, NULL, NULL, 0.0f, 0};
  const bnk_status status =
      bnk__check_cuda(bnk__launch_batch_stats(view, &plan, x, ws, 0.0f, untracked, NULL, NULL, partials,
                                              bnk__merge_counters_of(ctx, view, &plan), ctx->stream),
                      "bnk_batch_stats: statistics kernels");
  bnk__range_pop();
  return status;
}

bnk_status bnk_batch_stats(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, double *partials,
                           void *workspace, size_t workspace_bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_pointer(partials, "partials"));
  const bnk_view view = bnk__view_of(desc);
  if (bnk__view_per_channel(&view) > 0) {
    size_t needed = 0;
    BNK__TRY(bnk__require_pointer(x, "x"));
    BNK__TRY(bnk_forward_training_workspace_size(ctx, desc, &needed));
    BNK__TRY(bnk__require_workspace(workspace, workspace_bytes, needed, "bnk_batch_stats_workspace_size"));
  }
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const bnk_status status = launch_local_stats(ctx, desc, &view, x, partials, workspace);
  bnk__device_leave(&guard);
  return status;
}

static bnk_status launch_merge(const bnk_context *ctx, int64_t c, int ranks, const double *gathered,
                               float *running_mean, float *running_var, int64_t *num_batches_tracked, double momentum,
                               double eps, float *mean, float *invstd) {
  bnk__range_push_rows("merge_stats", ranks, c);
  const bnk_running_update running = {running_mean, running_var, num_batches_tracked, (float)momentum,
                                      momentum == BNK_MOMENTUM_CUMULATIVE};
  const bnk_status status = bnk__check_cuda(
      bnk__launch_merge_ranks(c, ranks, gathered, bnk__eps_to_float(eps), running, mean, invstd, ctx->stream),
      "bnk_merge_stats: merge kernel");
  bnk__range_pop();
  return status;
}

static bnk_status check_merge(int64_t c, int ranks, double eps, const float *running_mean, const float *running_var,
                              const int64_t *num_batches_tracked, double momentum) {
  BNK__TRY(bnk__require_positive(c, "C"));
  if (ranks < 1) return bnk__fail(BNK_ERROR_INVALID_VALUE, "ranks must be >= 1, got %d", ranks);
  BNK__TRY(bnk__require_eps(eps));
  return bnk__require_running(running_mean, running_var, num_batches_tracked, momentum);
}

bnk_status bnk_merge_stats(bnk_context *ctx, int64_t c, int ranks, const double *gathered, float *running_mean,
                           float *running_var, int64_t *num_batches_tracked, double momentum, double eps,
                           float *save_mean, float *save_invstd) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(check_merge(c, ranks, eps, running_mean, running_var, num_batches_tracked, momentum));
  BNK__TRY(bnk__require_pointer(gathered, "gathered"));
  BNK__TRY(bnk__require_pointer(save_mean, "save_mean"));
  BNK__TRY(bnk__require_pointer(save_invstd, "save_invstd"));
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const bnk_status status = launch_merge(ctx, c, ranks, gathered, running_mean, running_var, num_batches_tracked,
                                         momentum, eps, save_mean, save_invstd);
  bnk__device_leave(&guard);
  return status;
}

/* The plain normalize pass with given statistics. */
static bnk_status launch_normalize(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                   const float *gamma, const float *beta, const float *mean, const float *invstd) {
  const bnk_normalize_params params = {mean, NULL, invstd, NULL, 0.0f, gamma, beta};
  const bnk_epilogue_args plain = {BNK_EPILOGUE_NONE, NULL, NULL};
  return bnk__launch_elementwise(ctx, desc, x, y, params, &plain, "normalize", "bnk_normalize: normalize kernel");
}

bnk_status bnk_normalize(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                         const float *beta, const float *mean, const float *invstd) {
  bnk__clear_error();
  BNK__TRY(bnk__require_channel_arrays(ctx, desc, mean, "mean", invstd, "invstd"));
  if (bnk__is_empty(desc)) return BNK_SUCCESS;
  bnk_epilogue_args plain;
  BNK__TRY(bnk__require_forward_tensors(desc, x, y, NULL, &plain));
  return launch_normalize(ctx, desc, x, y, gamma, beta, mean, invstd);
}

/* The checks shared by the backward calls: statistics, and x and dy for a non-empty share. */
static bnk_status check_backward_share(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x,
                                       const void *dy, const float *save_mean, const float *save_invstd,
                                       bnk_view *view) {
  BNK__TRY(bnk__require_channel_arrays(ctx, desc, save_mean, "save_mean", save_invstd, "save_invstd"));
  *view = bnk__view_of(desc);
  if (bnk__view_per_channel(view) == 0) return BNK_SUCCESS;
  BNK__TRY(bnk__require_pointer(x, "x"));
  return bnk__require_pointer(dy, "dy");
}

static bnk_status check_backward_workspace(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *workspace,
                                           size_t workspace_bytes) {
  size_t needed = 0;
  BNK__TRY(bnk_backward_workspace_size(ctx, desc, &needed));
  return bnk__require_workspace(workspace, workspace_bytes, needed, "bnk_backward_workspace_size");
}

static bnk_status launch_local_sums(const bnk_context *ctx, const bnk_tensor_desc *desc, const bnk_view *view,
                                    const void *x, const void *dy, const float *save_mean, const float *save_invstd,
                                    float *sums, void *workspace) {
  const int64_t m = bnk__view_per_channel(view);
  if (m == 0)
    return bnk__check_cuda(cudaMemsetAsync(sums, 0, sums_bytes(view->c), ctx->stream), "cudaMemsetAsync(sums)");
  const void *pointers[2] = {x, dy};
  const bnk_reduce_plan plan =
      bnk__reduce_plan_of(ctx, BNK_FAMILY_BACKWARD_SUMS, BNK_GRAD_PLAIN, view, bnk__choose_vec(view, pointers, 2));
  BNK__TRY(bnk__require_grid(&plan));
  bnk__range_push("backward_local_sums", desc);
  const bnk_backward_workspace ws = bnk__backward_workspace_carve(workspace, view, plan.parts);
  const bnk_backward_stats stats = {save_mean, save_invstd, NULL, 0.0f, NULL};
  /* The merge writes sum(dy) as "dbeta" and sum(dy * xhat) as "dgamma": exactly the two sums wanted. */
  bnk_status status =
      bnk__check_cuda(bnk__launch_backward_reduce(view, &plan, x, dy, stats, ws, sums + view->c, sums,
                                                  bnk__merge_counters_of(ctx, view, &plan), ctx->stream),
                      "bnk_backward_local_sums: reduction kernels");
  if (status == BNK_SUCCESS)
    status = bnk__check_cuda(bnk__launch_store_value(sums + 2 * view->c, (float)m, ctx->stream),
                             "bnk_backward_local_sums: count");
  bnk__range_pop();
  return status;
}

bnk_status bnk_backward_local_sums(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                   const float *save_mean, const float *save_invstd, float *sums, void *workspace,
                                   size_t workspace_bytes) {
  bnk__clear_error();
  bnk_view view;
  BNK__TRY(check_backward_share(ctx, desc, x, dy, save_mean, save_invstd, &view));
  BNK__TRY(check_backward_workspace(ctx, desc, workspace, workspace_bytes));
  BNK__TRY(bnk__require_pointer(sums, "sums"));
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const bnk_status status = launch_local_sums(ctx, desc, &view, x, dy, save_mean, save_invstd, sums, workspace);
  bnk__device_leave(&guard);
  return status;
}

static bnk_status launch_apply(const bnk_context *ctx, const bnk_tensor_desc *desc, const bnk_view *view, const void *x,
                               const void *dy, void *dx, const float *gamma, float *dgamma, float *dbeta,
                               const float *save_mean, const float *save_invstd, const float *sums, void *workspace) {
  const size_t channel_bytes = (size_t)view->c * sizeof(float);
  bnk_status status = BNK_SUCCESS;
  if (bnk__view_per_channel(view) == 0) {
    /* No dx to compute here, but the gradients of gamma and beta are the whole batch's. */
    if (dbeta != NULL)
      status = bnk__check_cuda(cudaMemcpyAsync(dbeta, sums, channel_bytes, cudaMemcpyDeviceToDevice, ctx->stream),
                               "cudaMemcpyAsync(dbeta)");
    if (status == BNK_SUCCESS && dgamma != NULL)
      status =
          bnk__check_cuda(cudaMemcpyAsync(dgamma, sums + view->c, channel_bytes, cudaMemcpyDeviceToDevice, ctx->stream),
                          "cudaMemcpyAsync(dgamma)");
    return status;
  }
  const void *pointers[3] = {x, dy, dx};
  const bnk_reduce_plan plan =
      bnk__reduce_plan_of(ctx, BNK_FAMILY_BACKWARD_SUMS, BNK_GRAD_PLAIN, view, bnk__choose_vec(view, pointers, 3));
  const bnk_elementwise_plan dx_plan = bnk__elementwise_plan_of(ctx, view, pointers, 3, BNK_FAMILY_DX, BNK_GRAD_PLAIN);
  BNK__TRY(bnk__require_grid(&plan));
  if (dx != NULL) BNK__TRY(bnk__require_elementwise_grid(&dx_plan));
  bnk__range_push("backward_apply", desc);
  /* Only the per-channel coefficient arrays are used, which sit first whatever the number of pieces. */
  const bnk_backward_workspace ws = bnk__backward_workspace_carve(workspace, view, plan.parts);
  const bnk_backward_stats stats = {save_mean, save_invstd, NULL, 0.0f, gamma};
  status =
      bnk__check_cuda(bnk__launch_backward_gradients_from_sums(view->c, sums, stats, ws, dgamma, dbeta, ctx->stream),
                      "bnk_backward_apply: gradients kernel");
  if (status == BNK_SUCCESS && dx != NULL)
    status = bnk__check_cuda(bnk__launch_backward_dx(view, &dx_plan, x, dy, dx, stats, &ws, ctx->stream),
                             "bnk_backward_apply: dx kernel");
  bnk__range_pop();
  return status;
}

bnk_status bnk_backward_apply(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                              const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                              const float *save_invstd, const float *sums, void *workspace, size_t workspace_bytes) {
  bnk__clear_error();
  bnk_view view;
  BNK__TRY(check_backward_share(ctx, desc, x, dy, save_mean, save_invstd, &view));
  BNK__TRY(check_backward_workspace(ctx, desc, workspace, workspace_bytes));
  BNK__TRY(bnk__require_pointer(sums, "sums"));
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const bnk_status status =
      launch_apply(ctx, desc, &view, x, dy, dx, gamma, dgamma, dbeta, save_mean, save_invstd, sums, workspace);
  bnk__device_leave(&guard);
  return status;
}

/* ---- over NCCL ---- */

/* The sync workspace: the largest of the forward's and the backward's own workspaces, then the gathered
 * partials of every rank, the merged statistics (when the caller saves none) and the backward's sums. */
typedef struct sync_workspace {
  void *local;
  double *gathered;
  float *mean;
  float *invstd;
  float *sums;
} sync_workspace;

static bnk_status sync_layout(const bnk_context *ctx, const bnk_tensor_desc *desc, int ranks, void *base,
                              sync_workspace *ws, size_t *bytes) {
  size_t forward = 0, backward = 0;
  BNK__TRY(bnk_forward_training_workspace_size(ctx, desc, &forward));
  BNK__TRY(bnk_backward_workspace_size(ctx, desc, &backward));
  bnk_workspace_layout layout = {(uintptr_t)base, 0};
  ws->local = bnk__layout_take(&layout, forward > backward ? forward : backward);
  ws->gathered = bnk__layout_take(&layout, (size_t)ranks * partials_bytes(desc->c));
  ws->mean = bnk__layout_take(&layout, (size_t)desc->c * sizeof(float));
  ws->invstd = bnk__layout_take(&layout, (size_t)desc->c * sizeof(float));
  ws->sums = bnk__layout_take(&layout, sums_bytes(desc->c));
  *bytes = layout.bytes;
  return BNK_SUCCESS;
}

bnk_status bnk_sync_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, int ranks, size_t *bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_query(ctx, desc, bytes));
  if (ranks < 1) return bnk__fail(BNK_ERROR_INVALID_VALUE, "ranks must be >= 1, got %d", ranks);
  sync_workspace ws;
  return sync_layout(ctx, desc, ranks, NULL, &ws, bytes);
}

#ifdef BNK_WITH_NCCL
static bnk_status check_nccl(ncclResult_t result, const char *what) {
  if (result == ncclSuccess) return BNK_SUCCESS;
  return bnk__fail(BNK_ERROR_NCCL, "%s: %s", what, ncclGetErrorString(result));
}

/* The communicator's size and this rank, and the workspace laid out for them. */
static bnk_status sync_prepare(const bnk_context *ctx, const bnk_tensor_desc *desc, bnk_nccl_comm comm, void *workspace,
                               size_t workspace_bytes, int *ranks, int *rank, sync_workspace *ws) {
  BNK__TRY(bnk__require_pointer(comm, "comm"));
  BNK__TRY(check_nccl(ncclCommCount(comm, ranks), "ncclCommCount"));
  BNK__TRY(check_nccl(ncclCommUserRank(comm, rank), "ncclCommUserRank"));
  size_t needed = 0;
  BNK__TRY(sync_layout(ctx, desc, *ranks, workspace, ws, &needed));
  return bnk__require_workspace(workspace, workspace_bytes, needed, "bnk_sync_workspace_size");
}

bnk_status bnk_forward_training_sync(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                     const float *gamma, const float *beta, float *running_mean, float *running_var,
                                     int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                     float *save_invstd, bnk_nccl_comm comm, void *workspace, size_t workspace_bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_running(running_mean, running_var, num_batches_tracked, momentum));
  BNK__TRY(bnk__require_eps(eps));
  const bnk_view view = bnk__view_of(desc);
  const int empty = bnk__view_per_channel(&view) == 0;
  if (!empty) {
    bnk_epilogue_args plain;
    BNK__TRY(bnk__require_forward_tensors(desc, x, y, NULL, &plain));
  }
  int ranks = 0, rank = 0;
  sync_workspace ws;
  BNK__TRY(sync_prepare(ctx, desc, comm, workspace, workspace_bytes, &ranks, &rank, &ws));
  float *mean = save_mean != NULL ? save_mean : ws.mean;
  float *invstd = save_invstd != NULL ? save_invstd : ws.invstd;
  const size_t count = (size_t)view.c * BNK_PARTIALS_PER_CHANNEL;
  double *mine = ws.gathered + (size_t)rank * count;

  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push("fwd_train_sync", desc);
  bnk_status status = launch_local_stats(ctx, desc, &view, x, mine, ws.local);
  if (status == BNK_SUCCESS)
    status = check_nccl(ncclAllGather(mine, ws.gathered, count, ncclDouble, comm, ctx->stream), "ncclAllGather");
  if (status == BNK_SUCCESS)
    status = launch_merge(ctx, view.c, ranks, ws.gathered, running_mean, running_var, num_batches_tracked, momentum,
                          eps, mean, invstd);
  if (status == BNK_SUCCESS && !empty) status = launch_normalize(ctx, desc, x, y, gamma, beta, mean, invstd);
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
}

bnk_status bnk_backward_sync(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                             const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                             const float *save_invstd, bnk_nccl_comm comm, void *workspace, size_t workspace_bytes) {
  bnk__clear_error();
  bnk_view view;
  int ranks = 0, rank = 0;
  sync_workspace ws;
  BNK__TRY(check_backward_share(ctx, desc, x, dy, save_mean, save_invstd, &view));
  BNK__TRY(sync_prepare(ctx, desc, comm, workspace, workspace_bytes, &ranks, &rank, &ws));
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push("bwd_sync", desc);
  bnk_status status = launch_local_sums(ctx, desc, &view, x, dy, save_mean, save_invstd, ws.sums, ws.local);
  if (status == BNK_SUCCESS)
    status = check_nccl(
        ncclAllReduce(ws.sums, ws.sums, (size_t)BNK_BACKWARD_SUMS(view.c), ncclFloat, ncclSum, comm, ctx->stream),
        "ncclAllReduce");
  if (status == BNK_SUCCESS)
    status = launch_apply(ctx, desc, &view, x, dy, dx, gamma, dgamma, dbeta, save_mean, save_invstd, ws.sums, ws.local);
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
}
#else
static bnk_status no_nccl(void) {
  return bnk__fail(BNK_ERROR_NOT_SUPPORTED, "bnk was built without NCCL: use the split-statistics calls "
                                            "(bnk_batch_stats, bnk_merge_stats, ...) with your own communication");
}

bnk_status bnk_forward_training_sync(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                     const float *gamma, const float *beta, float *running_mean, float *running_var,
                                     int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                     float *save_invstd, bnk_nccl_comm comm, void *workspace, size_t workspace_bytes) {
  (void)ctx, (void)desc, (void)x, (void)y, (void)gamma, (void)beta, (void)running_mean, (void)running_var;
  (void)num_batches_tracked, (void)momentum, (void)eps, (void)save_mean, (void)save_invstd, (void)comm;
  (void)workspace, (void)workspace_bytes;
  bnk__clear_error();
  return no_nccl();
}

bnk_status bnk_backward_sync(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                             const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                             const float *save_invstd, bnk_nccl_comm comm, void *workspace, size_t workspace_bytes) {
  (void)ctx, (void)desc, (void)x, (void)dy, (void)dx, (void)gamma, (void)dgamma, (void)dbeta, (void)save_mean;
  (void)save_invstd, (void)comm, (void)workspace, (void)workspace_bytes;
  bnk__clear_error();
  return no_nccl();
}
#endif
