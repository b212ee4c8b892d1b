#include <inttypes.h>
#include <math.h>

#include "host/internal.h"

static size_t training_workspace_bytes(const bnk_context *ctx, const bnk_view *view) {
  if (bnk_view_per_channel(view) == 0) return 0;
  return bnk_stats_workspace_bytes(view, bnk_plan_parts_bound(view, ctx->sm_count));
}

bnk_status bnk_forward_training_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, size_t *bytes) {
  bnk_clear_error();
  bnk_status status = bnk_require_query(ctx, desc, bytes);
  if (status != BNK_SUCCESS) return status;
  const bnk_view view = bnk_view_of(desc);
  *bytes = training_workspace_bytes(ctx, &view);
  return BNK_SUCCESS;
}

bnk_status bnk_require_running(const float *running_mean, const float *running_var,
                               const int64_t *num_batches_tracked, double momentum) {
  if ((running_mean == NULL) != (running_var == NULL))
    return bnk_fail(BNK_ERROR_INVALID_VALUE,
                    "running_mean and running_var must both be given or both be NULL, got running_mean=%p "
                    "and running_var=%p",
                    (const void *)running_mean, (const void *)running_var);
  if (momentum == BNK_MOMENTUM_CUMULATIVE) {
    if (running_mean != NULL && num_batches_tracked == NULL)
      return bnk_fail(BNK_ERROR_INVALID_VALUE,
                      "num_batches_tracked must not be NULL when momentum is BNK_MOMENTUM_CUMULATIVE");
    return BNK_SUCCESS;
  }
  if (!(momentum >= 0.0 && momentum <= 1.0))
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "momentum must be in [0, 1] or BNK_MOMENTUM_CUMULATIVE, got %g",
                    momentum);
  return BNK_SUCCESS;
}

bnk_status bnk_forward_training(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                const float *gamma, const float *beta, float *running_mean, float *running_var,
                                int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                float *save_invstd, void *workspace, size_t workspace_bytes) {
  return bnk_forward_training_ex(ctx, desc, x, y, gamma, beta, running_mean, running_var, num_batches_tracked,
                                 momentum, eps, save_mean, save_invstd, workspace, workspace_bytes, NULL);
}

bnk_status bnk_forward_training_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                   const float *gamma, const float *beta, float *running_mean, float *running_var,
                                   int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                   float *save_invstd, void *workspace, size_t workspace_bytes,
                                   const bnk_epilogue *epilogue) {
  bnk_clear_error();
  bnk_status status = bnk_require_context(ctx);
  if (status == BNK_SUCCESS) status = bnk_tensor_desc_check(desc);
  if (status == BNK_SUCCESS) status = bnk_require_running(running_mean, running_var, num_batches_tracked, momentum);
  if (status == BNK_SUCCESS) status = bnk_require_eps(eps);
  if (status != BNK_SUCCESS) return status;
  const bnk_view view = bnk_view_of(desc);
  const int64_t per_channel = bnk_view_per_channel(&view);
  if (per_channel == 0) return BNK_SUCCESS;
  if (per_channel == 1)
    return bnk_fail(BNK_ERROR_INVALID_VALUE,
                    "expected more than 1 value per channel when training, got N=%" PRId64
                    " with spatial size 1 (C=%" PRId64 ")",
                    desc->n, desc->c);
  status = bnk_require_pointer(x, "x");
  if (status == BNK_SUCCESS) status = bnk_require_pointer(y, "y");
  bnk_epilogue_args fused;
  if (status == BNK_SUCCESS) status = bnk_epilogue_args_of(epilogue, desc, x, y, &fused);
  if (status != BNK_SUCCESS) return status;
  status = bnk_require_workspace(workspace, workspace_bytes, training_workspace_bytes(ctx, &view),
                                 "bnk_forward_training_workspace_size");
  if (status != BNK_SUCCESS) return status;

  const void *stats_pointers[1] = {x};
  const bnk_reduce_plan plan = bnk_plan_reduce(&view, bnk_choose_vec(&view, stats_pointers, 1), ctx->sm_count);
  const void *normalize_pointers[3] = {x, y, fused.z};
  const bnk_elementwise_plan normalize_plan = bnk_elementwise_plan_of(ctx, &view, normalize_pointers, 3);
  status = bnk_require_grid(&plan);
  if (status == BNK_SUCCESS) status = bnk_require_elementwise_grid(&normalize_plan);
  if (status != BNK_SUCCESS) return status;

  bnk_device_guard guard;
  status = bnk_device_enter(ctx, &guard);
  if (status != BNK_SUCCESS) return status;
  bnk_range_push("fwd_train", desc);
  const bnk_stats_workspace ws = bnk_stats_workspace_carve(workspace, &view, plan.parts);
  const bnk_running_update running = {running_mean, running_var, num_batches_tracked, (float)momentum,
                                      momentum == BNK_MOMENTUM_CUMULATIVE};
  status = bnk_check_cuda(bnk_launch_batch_stats(&view, &plan, x, ws, (float)eps, running, save_mean, save_invstd,
                                                 NULL, ctx->stream),
                          "bnk_forward_training: statistics kernels");
  if (status == BNK_SUCCESS) {
    const bnk_normalize_params params = {ws.shift, ws.dmean, ws.invstd, NULL, (float)eps, gamma, beta};
    status = bnk_check_cuda(bnk_launch_normalize_ex(&view, &normalize_plan, x, y, params, &fused, ctx->stream),
                            "bnk_forward_training: normalize kernel");
  }
  bnk_range_pop();
  bnk_device_leave(&guard);
  return status;
}

bnk_status bnk_launch_elementwise(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                  bnk_normalize_params params, const bnk_epilogue_args *fused, const char *op,
                                  const char *what) {
  const bnk_view view = bnk_view_of(desc);
  const void *pointers[3] = {x, y, fused->z};
  const bnk_elementwise_plan plan = bnk_elementwise_plan_of(ctx, &view, pointers, 3);
  bnk_status status = bnk_require_elementwise_grid(&plan);
  if (status != BNK_SUCCESS) return status;

  bnk_device_guard guard;
  status = bnk_device_enter(ctx, &guard);
  if (status != BNK_SUCCESS) return status;
  bnk_range_push(op, desc);
  status = bnk_check_cuda(bnk_launch_normalize_ex(&view, &plan, x, y, params, fused, ctx->stream), what);
  bnk_range_pop();
  bnk_device_leave(&guard);
  return status;
}

bnk_status bnk_forward_inference(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                 const float *gamma, const float *beta, const float *running_mean,
                                 const float *running_var, double eps) {
  return bnk_forward_inference_ex(ctx, desc, x, y, gamma, beta, running_mean, running_var, eps, NULL);
}

bnk_status bnk_forward_inference_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                    const float *gamma, const float *beta, const float *running_mean,
                                    const float *running_var, double eps, const bnk_epilogue *epilogue) {
  bnk_clear_error();
  bnk_status status = bnk_require_context(ctx);
  if (status == BNK_SUCCESS) status = bnk_tensor_desc_check(desc);
  if (status == BNK_SUCCESS) status = bnk_require_pointer(running_mean, "running_mean");
  if (status == BNK_SUCCESS) status = bnk_require_pointer(running_var, "running_var");
  if (status == BNK_SUCCESS) status = bnk_require_eps(eps);
  if (status != BNK_SUCCESS) return status;
  const bnk_view view = bnk_view_of(desc);
  if (bnk_view_per_channel(&view) == 0) return BNK_SUCCESS;
  status = bnk_require_pointer(x, "x");
  if (status == BNK_SUCCESS) status = bnk_require_pointer(y, "y");
  bnk_epilogue_args fused;
  if (status == BNK_SUCCESS) status = bnk_epilogue_args_of(epilogue, desc, x, y, &fused);
  if (status != BNK_SUCCESS) return status;
  const bnk_normalize_params params = {running_mean, NULL, NULL, running_var, (float)eps, gamma, beta};
  return bnk_launch_elementwise(ctx, desc, x, y, params, &fused, "fwd_infer",
                                "bnk_forward_inference: normalize kernel");
}

bnk_status bnk_scale_shift(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y, const float *scale,
                           const float *shift, const bnk_epilogue *epilogue) {
  bnk_clear_error();
  bnk_status status = bnk_require_context(ctx);
  if (status == BNK_SUCCESS) status = bnk_tensor_desc_check(desc);
  if (status == BNK_SUCCESS) status = bnk_require_pointer(scale, "scale");
  if (status == BNK_SUCCESS) status = bnk_require_pointer(shift, "shift");
  if (status != BNK_SUCCESS) return status;
  const bnk_view view = bnk_view_of(desc);
  if (bnk_view_per_channel(&view) == 0) return BNK_SUCCESS;
  status = bnk_require_pointer(x, "x");
  if (status == BNK_SUCCESS) status = bnk_require_pointer(y, "y");
  bnk_epilogue_args fused;
  if (status == BNK_SUCCESS) status = bnk_epilogue_args_of(epilogue, desc, x, y, &fused);
  if (status != BNK_SUCCESS) return status;
  /* The normalize pass with nothing to subtract, scale as invstd and shift as beta: y = fma(x, scale, shift). */
  const bnk_normalize_params params = {NULL, NULL, scale, NULL, 0.0f, NULL, shift};
  return bnk_launch_elementwise(ctx, desc, x, y, params, &fused, "scale_shift", "bnk_scale_shift: normalize kernel");
}
