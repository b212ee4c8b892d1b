#include <stdio.h>

#include "host/internal.h"

static size_t backward_workspace_bytes(const bnk_context *ctx, const bnk_view *view) {
  if (bnk__view_per_channel(view) == 0) return 0;
  return bnk__backward_workspace_bytes(view, bnk__backward_parts_bound(ctx, view));
}

bnk_status bnk_backward_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, size_t *bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_query(ctx, desc, bytes));
  const bnk_view view = bnk__view_of(desc);
  *bytes = backward_workspace_bytes(ctx, &view);
  return BNK_SUCCESS;
}

static bnk_status require_workspace(const bnk_context *ctx, const bnk_view *view, const void *workspace,
                                    size_t workspace_bytes) {
  return bnk__require_workspace(workspace, workspace_bytes, backward_workspace_bytes(ctx, view),
                                "bnk_backward_workspace_size");
}

/* An empty batch: dgamma and dbeta are sums over no elements. */
static bnk_status zero_parameter_gradients(const bnk_context *ctx, const bnk_view *view, float *dgamma, float *dbeta) {
  if (dgamma == NULL && dbeta == NULL) return BNK_SUCCESS;
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const size_t bytes = (size_t)view->c * sizeof(float);
  bnk_status status = BNK_SUCCESS;
  if (dgamma != NULL)
    status = bnk__check_cuda(cudaMemsetAsync(dgamma, 0, bytes, ctx->stream), "cudaMemsetAsync(dgamma)");
  if (status == BNK_SUCCESS && dbeta != NULL)
    status = bnk__check_cuda(cudaMemsetAsync(dbeta, 0, bytes, ctx->stream), "cudaMemsetAsync(dbeta)");
  bnk__device_leave(&guard);
  return status;
}

/* The reduction over (x, dy), when any of its results is wanted, then the dx pass. Frozen statistics need
 * the sums for dgamma and dbeta only, read x only for dgamma, and never read it for dx.
 * Through an epilogue, the first pass writes dz; when that is the reduction, the dx pass reads dz (the gated
 * dy already) as a plain dy, and when there is no reduction, the dx pass gates dy itself and writes dz. */
static bnk_status launch_backward(const bnk_context *ctx, const bnk_tensor_desc *desc, const bnk_view *view,
                                  const void *x, const void *dy, void *dx, bnk_backward_stats stats, int frozen,
                                  float *dgamma, float *dbeta, void *workspace, const bnk_grad_epilogue_args *fused,
                                  const char *caller) {
  const int sums_wanted = dgamma != NULL || dbeta != NULL || (dx != NULL && !frozen);
  const int dx_pass_wanted = dx != NULL || (fused->dz != NULL && !sums_wanted);
  const int coefficients = sums_wanted && !frozen;
  const int dz_first = sums_wanted && fused->dz != NULL;
  const bnk_grad_epilogue_args plain = {BNK_GRAD_PLAIN, NULL, NULL, NULL};
  const bnk_grad_epilogue_args *dx_fused = dz_first ? &plain : fused;
  const void *dx_dy = dz_first ? fused->dz : dy;
  const void *sums_x = frozen && dgamma == NULL ? NULL : x;
  int persistent = 0;
  if (sums_wanted)
    BNK__TRY(bnk__persistent_backward(ctx, desc, view, sums_x, dy, dx, stats, frozen, dgamma, dbeta, workspace, fused,
                                      caller, &persistent));
  if (persistent) return BNK_SUCCESS;
  const void *dx_x = coefficients ? x : NULL;
  const void *sums_pointers[4] = {sums_x, dy, fused->y, fused->dz};
  const bnk_reduce_plan sums_plan =
      bnk__reduce_plan_of(ctx, BNK_FAMILY_BACKWARD_SUMS, fused->source, view, bnk__choose_vec(view, sums_pointers, 4));
  const void *dx_pointers[5] = {dx_x, dx_dy, dx, dx_fused->y, dx_fused->dz};
  const bnk_elementwise_plan dx_plan =
      bnk__elementwise_plan_of(ctx, view, dx_pointers, 5, BNK_FAMILY_DX, dx_fused->source);
  if (sums_wanted) BNK__TRY(bnk__require_grid(&sums_plan));
  if (dx_pass_wanted) BNK__TRY(bnk__require_elementwise_grid(&dx_plan));

  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push(frozen ? "bwd_infer" : "bwd", desc);
  bnk_status status = BNK_SUCCESS;
  char what[64];
  bnk_backward_workspace ws = {0};
  if (sums_wanted) {
    ws = bnk__backward_workspace_carve(workspace, view, sums_plan.parts);
    snprintf(what, sizeof what, "%s: reduction kernels", caller);
    status =
        bnk__check_cuda(bnk__launch_backward_reduce_ex(view, &sums_plan, sums_x, dy, stats, ws, dgamma, dbeta, fused,
                                                       bnk__merge_counters_of(ctx, view, &sums_plan), ctx->stream),
                        what);
  }
  if (status == BNK_SUCCESS && dx_pass_wanted) {
    snprintf(what, sizeof what, "%s: dx kernel", caller);
    status = bnk__check_cuda(bnk__launch_backward_dx_ex(view, &dx_plan, dx_x, dx_dy, dx, stats,
                                                        coefficients ? &ws : NULL, dx_fused, ctx->stream),
                             what);
  }
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
}

bnk_status bnk_backward(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                        const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                        const float *save_invstd, void *workspace, size_t workspace_bytes) {
  return bnk_backward_ex(ctx, desc, x, dy, dx, gamma, dgamma, dbeta, save_mean, save_invstd, workspace, workspace_bytes,
                         NULL);
}

bnk_status bnk_backward_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                           const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                           const float *save_invstd, void *workspace, size_t workspace_bytes,
                           const bnk_epilogue_grad *epilogue) {
  bnk__clear_error();
  BNK__TRY(bnk__require_channel_arrays(ctx, desc, save_mean, "save_mean", save_invstd, "save_invstd"));
  const bnk_view view = bnk__view_of(desc);
  if (bnk__view_per_channel(&view) == 0) return zero_parameter_gradients(ctx, &view, dgamma, dbeta);
  BNK__TRY(bnk__require_pointer(x, "x"));
  BNK__TRY(bnk__require_pointer(dy, "dy"));
  bnk_grad_epilogue_args fused;
  BNK__TRY(bnk__grad_epilogue_args_of(epilogue, desc, x, dy, dx, &fused));
  BNK__TRY(require_workspace(ctx, &view, workspace, workspace_bytes));
  const bnk_backward_stats stats = {save_mean, save_invstd, NULL, 0.0f, gamma};
  return launch_backward(ctx, desc, &view, x, dy, dx, stats, 0, dgamma, dbeta, workspace, &fused, "bnk_backward");
}

bnk_status bnk_backward_inference(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                  void *dx, const float *gamma, float *dgamma, float *dbeta, const float *running_mean,
                                  const float *running_var, double eps, void *workspace, size_t workspace_bytes) {
  return bnk_backward_inference_ex(ctx, desc, x, dy, dx, gamma, dgamma, dbeta, running_mean, running_var, eps,
                                   workspace, workspace_bytes, NULL);
}

bnk_status bnk_backward_inference_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                     void *dx, const float *gamma, float *dgamma, float *dbeta,
                                     const float *running_mean, const float *running_var, double eps, void *workspace,
                                     size_t workspace_bytes, const bnk_epilogue_grad *epilogue) {
  bnk__clear_error();
  BNK__TRY(bnk__require_channel_arrays(ctx, desc, running_mean, "running_mean", running_var, "running_var"));
  BNK__TRY(bnk__require_eps(eps));
  const bnk_view view = bnk__view_of(desc);
  if (bnk__view_per_channel(&view) == 0) return zero_parameter_gradients(ctx, &view, dgamma, dbeta);
  BNK__TRY(bnk__require_pointer(dy, "dy"));
  if (dgamma != NULL && x == NULL)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "x must not be NULL when dgamma is wanted");
  bnk_grad_epilogue_args fused;
  BNK__TRY(bnk__grad_epilogue_args_of(epilogue, desc, x, dy, dx, &fused));
  if (dgamma != NULL || dbeta != NULL) BNK__TRY(require_workspace(ctx, &view, workspace, workspace_bytes));
  const bnk_backward_stats stats = {running_mean, NULL, running_var, bnk__eps_to_float(eps), gamma};
  return launch_backward(ctx, desc, &view, x, dy, dx, stats, 1, dgamma, dbeta, workspace, &fused,
                         "bnk_backward_inference");
}
