#include <inttypes.h>

#include "host/internal.h"

static size_t training_workspace_bytes(const bnk_context *ctx, const bnk_view *view) {
  if (bnk__view_per_channel(view) == 0) return 0;
  return bnk__stats_workspace_bytes(view, bnk__training_parts_bound(ctx, view));
}

bnk_status bnk_forward_training_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, size_t *bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_query(ctx, desc, bytes));
  const bnk_view view = bnk__view_of(desc);
  *bytes = training_workspace_bytes(ctx, &view);
  return BNK_SUCCESS;
}

/* An empty batch normalizes nothing and leaves the running statistics as they are, but nn.BatchNorm still
 * counts it in num_batches_tracked, which weighs the next batch when momentum is cumulative. */
static bnk_status count_empty_batch(const bnk_context *ctx, int64_t *num_batches_tracked) {
  if (num_batches_tracked == NULL) return BNK_SUCCESS;
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const bnk_status status = bnk__check_cuda(bnk__launch_count_batch(num_batches_tracked, ctx->stream),
                                            "bnk_forward_training: counting an empty batch");
  bnk__device_leave(&guard);
  return status;
}

bnk_status bnk_forward_training(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                const float *gamma, const float *beta, float *running_mean, float *running_var,
                                int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                float *save_invstd, void *workspace, size_t workspace_bytes) {
  return bnk_forward_training_ex(ctx, desc, x, y, gamma, beta, running_mean, running_var, num_batches_tracked, momentum,
                                 eps, save_mean, save_invstd, workspace, workspace_bytes, NULL);
}

bnk_status bnk_forward_training_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                   const float *gamma, const float *beta, float *running_mean, float *running_var,
                                   int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                   float *save_invstd, void *workspace, size_t workspace_bytes,
                                   const bnk_epilogue *epilogue) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_running(running_mean, running_var, num_batches_tracked, momentum));
  BNK__TRY(bnk__require_eps(eps));
  const bnk_view view = bnk__view_of(desc);
  const int64_t per_channel = bnk__view_per_channel(&view);
  if (per_channel == 0) return count_empty_batch(ctx, num_batches_tracked);
  if (per_channel == 1)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "expected more than 1 value per channel when training, got N=%" PRId64
                     " with spatial size 1 (C=%" PRId64 ")",
                     desc->n, desc->c);
  bnk_epilogue_args fused;
  BNK__TRY(bnk__require_forward_tensors(desc, x, y, epilogue, &fused));
  BNK__TRY(bnk__require_workspace(workspace, workspace_bytes, training_workspace_bytes(ctx, &view),
                                  "bnk_forward_training_workspace_size"));

  bnk_training_plan path;
  BNK__TRY(bnk__plan_training_forward(ctx, &view, x, y, &fused, &path));
  const bnk_reduce_plan plan = path.reduce;
  const void *normalize_pointers[3] = {x, y, fused.z};
  const bnk_elementwise_plan normalize_plan = bnk__elementwise_plan_of(
      ctx, &view, normalize_pointers, 3, BNK_FAMILY_NORMALIZE, bnk_normalize_variant(fused.kind, 0));
  if (!path.persistent) BNK__TRY(bnk__require_elementwise_grid(&normalize_plan));

  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push("fwd_train", desc);
  const bnk_stats_workspace ws = bnk__stats_workspace_carve(workspace, &view, plan.parts);
  const bnk_running_update running = {running_mean, running_var, num_batches_tracked, (float)momentum,
                                      momentum == BNK_MOMENTUM_CUMULATIVE};
  bnk_status status;
  if (path.persistent)
    status = bnk__check_cuda(bnk__launch_persistent_forward(&view, &plan, x, y, ws, bnk__eps_to_float(eps), running,
                                                            save_mean, save_invstd, gamma, beta, &fused, ctx->stream),
                             "bnk_forward_training: persistent kernel");
  else
    status = bnk__check_cuda(bnk__launch_batch_stats(&view, &plan, x, ws, bnk__eps_to_float(eps), running, save_mean,
                                                     save_invstd, NULL, bnk__merge_counters_of(ctx, &view, &plan),
                                                     ctx->stream),
                             "bnk_forward_training: statistics kernels");
  if (status == BNK_SUCCESS && !path.persistent) {
    const bnk_normalize_params params = {ws.shift, ws.dmean, ws.invstd, NULL, bnk__eps_to_float(eps), gamma, beta};
    status = bnk__check_cuda(bnk__launch_normalize_ex(&view, &normalize_plan, x, y, params, &fused, ctx->stream),
                             "bnk_forward_training: normalize kernel");
  }
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
}

bnk_status bnk__launch_elementwise(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                   bnk_normalize_params params, const bnk_epilogue_args *fused, const char *op,
                                   const char *what) {
  const bnk_view view = bnk__view_of(desc);
  const void *pointers[3] = {x, y, fused->z};
  const bnk_elementwise_plan plan = bnk__elementwise_plan_of(
      ctx, &view, pointers, 3, BNK_FAMILY_NORMALIZE, bnk_normalize_variant(fused->kind, params.variance != NULL));
  BNK__TRY(bnk__require_elementwise_grid(&plan));

  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push(op, desc);
  const bnk_status status =
      bnk__check_cuda(bnk__launch_normalize_ex(&view, &plan, x, y, params, fused, ctx->stream), what);
  bnk__range_pop();
  bnk__device_leave(&guard);
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
  bnk__clear_error();
  BNK__TRY(bnk__require_channel_arrays(ctx, desc, running_mean, "running_mean", running_var, "running_var"));
  BNK__TRY(bnk__require_eps(eps));
  if (bnk__is_empty(desc)) return BNK_SUCCESS;
  bnk_epilogue_args fused;
  BNK__TRY(bnk__require_forward_tensors(desc, x, y, epilogue, &fused));
  const bnk_normalize_params params = {running_mean, NULL, NULL, running_var, bnk__eps_to_float(eps), gamma, beta};
  return bnk__launch_elementwise(ctx, desc, x, y, params, &fused, "fwd_infer",
                                 "bnk_forward_inference: normalize kernel");
}

bnk_status bnk_scale_shift(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y, const float *scale,
                           const float *shift, const bnk_epilogue *epilogue) {
  bnk__clear_error();
  BNK__TRY(bnk__require_channel_arrays(ctx, desc, scale, "scale", shift, "shift"));
  if (bnk__is_empty(desc)) return BNK_SUCCESS;
  bnk_epilogue_args fused;
  BNK__TRY(bnk__require_forward_tensors(desc, x, y, epilogue, &fused));
  /* The normalize pass with nothing to subtract, scale as invstd and shift as beta: y = fma(x, scale, shift). */
  const bnk_normalize_params params = {NULL, NULL, scale, NULL, 0.0f, NULL, shift};
  return bnk__launch_elementwise(ctx, desc, x, y, params, &fused, "scale_shift", "bnk_scale_shift: normalize kernel");
}
