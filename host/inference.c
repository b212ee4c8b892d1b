/* Folding frozen batch normalization at model load: per-channel scale and shift, or into the weight and bias
 * of the convolution or linear layer before it. Each is one small kernel on the context's stream. */
#include <inttypes.h>

#include "host/internal.h"

bnk_status bnk_inference_params(bnk_context *ctx, int64_t c, const float *gamma, const float *beta,
                                const float *running_mean, const float *running_var, double eps, float *scale,
                                float *shift) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_positive(c, "C"));
  BNK__TRY(bnk__require_statistics(running_mean, running_var, eps));
  BNK__TRY(bnk__require_pointer(scale, "scale"));
  BNK__TRY(bnk__require_pointer(shift, "shift"));
  if (scale == shift)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "scale and shift must be different arrays, got %p for both",
                     (void *)scale);
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push_rows("inference_params", 1, c);
  const bnk_frozen_bn bn = {gamma, beta, running_mean, running_var, bnk__eps_to_float(eps)};
  const bnk_status status =
      bnk__check_cuda(bnk__launch_inference_params(c, bn, scale, shift, ctx->stream), "bnk_inference_params: kernel");
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
}

/* What bnk_fold_conv and bnk_fold_linear share once their shapes are checked: rows output channels of
 * row_elements weights each. */
static bnk_status fold(const bnk_context *ctx, int64_t rows, int64_t row_elements, bnk_dtype dtype,
                       const void *weight_in, const float *bias_in, const float *gamma, const float *beta,
                       const float *running_mean, const float *running_var, double eps, void *weight_out,
                       void *bias_out, bnk_dtype bias_dtype) {
  int64_t elements = 0;
  int64_t weight_bytes = 0;
  if (__builtin_mul_overflow(rows, row_elements, &elements) ||
      __builtin_mul_overflow(elements, (int64_t)(dtype == BNK_FLOAT32 ? 4 : 2), &weight_bytes))
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "weight of %" PRId64 " x %" PRId64 " values is larger than 2^63 bytes",
                     rows, row_elements);
  BNK__TRY(bnk__require_statistics(running_mean, running_var, eps));
  BNK__TRY(bnk__require_pointer(weight_in, "weight_in"));
  BNK__TRY(bnk__require_pointer(weight_out, "weight_out"));
  BNK__TRY(bnk__require_pointer(bias_out, "bias_out"));
  BNK__TRY(bnk__require_same_or_apart(weight_out, weight_in, (size_t)weight_bytes, "weight_out", "weight_in"));
  if (bias_dtype != BNK_FLOAT32 && (const void *)bias_out == (const void *)bias_in)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "bias_out may be bias_in only when bias_dtype is BNK_FLOAT32, got bias_dtype %d", (int)bias_dtype);
  const size_t bias_bytes = (size_t)rows * (bias_dtype == BNK_FLOAT32 ? 4 : 2);
  BNK__TRY(bnk__require_same_or_apart(bias_out, bias_in, bias_bytes, "bias_out", "bias_in"));
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push_rows("fold", rows, row_elements);
  const bnk_frozen_bn bn = {gamma, beta, running_mean, running_var, bnk__eps_to_float(eps)};
  /* One pass over the weight, then over the rows for the bias. */
  const int64_t blocks = bnk__fold_blocks(ctx, elements > rows ? elements : rows, dtype, bias_dtype);
  const bnk_status status =
      bnk__check_cuda(bnk__launch_fold(rows, row_elements, (int)dtype, weight_in, weight_out, bias_in, bias_out,
                                       (int)bias_dtype, bn, blocks, ctx->stream),
                      "folding kernel");
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
}

bnk_status bnk_fold_conv(bnk_context *ctx, int64_t k, int64_t c_in, int kernel_dims, const int64_t *kernel_size,
                         bnk_weight_layout layout, bnk_dtype dtype, const void *weight_in, const float *bias_in,
                         const float *gamma, const float *beta, const float *running_mean, const float *running_var,
                         double eps, void *weight_out, float *bias_out) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_positive(k, "K"));
  BNK__TRY(bnk__require_positive(c_in, "C_in"));
  if (kernel_dims < 1 || kernel_dims > 3)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "kernel_dims must be in [1, 3], got %d", kernel_dims);
  BNK__TRY(bnk__require_pointer(kernel_size, "kernel_size"));
  if (layout != BNK_WEIGHTS_KCRS && layout != BNK_WEIGHTS_KRSC)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "layout must be BNK_WEIGHTS_KCRS or BNK_WEIGHTS_KRSC, got %d",
                     (int)layout);
  BNK__TRY(bnk__require_dtype(dtype, "dtype"));
  /* Output channel k is outermost in both layouts: the weight is K rows of C_in x kernel values either way. */
  int64_t row_elements = c_in;
  for (int d = 0; d < kernel_dims; ++d) {
    if (kernel_size[d] <= 0)
      return bnk__fail(BNK_ERROR_INVALID_VALUE, "kernel_size[%d] must be > 0, got %" PRId64, d, kernel_size[d]);
    if (__builtin_mul_overflow(row_elements, kernel_size[d], &row_elements))
      return bnk__fail(BNK_ERROR_INVALID_VALUE, "C_in x kernel_size overflows int64 at kernel_size[%d] = %" PRId64, d,
                       kernel_size[d]);
  }
  return fold(ctx, k, row_elements, dtype, weight_in, bias_in, gamma, beta, running_mean, running_var, eps, weight_out,
              bias_out, BNK_FLOAT32);
}

bnk_status bnk_fold_linear(bnk_context *ctx, int64_t out_features, int64_t in_features, bnk_dtype dtype,
                           const void *weight_in, const float *bias_in, const float *gamma, const float *beta,
                           const float *running_mean, const float *running_var, double eps, void *weight_out,
                           void *bias_out, bnk_dtype bias_dtype) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_positive(out_features, "out_features"));
  BNK__TRY(bnk__require_positive(in_features, "in_features"));
  BNK__TRY(bnk__require_dtype(dtype, "dtype"));
  if (bias_dtype != BNK_FLOAT32 && bias_dtype != dtype)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "bias_dtype must be BNK_FLOAT32 or dtype (%d), got %d", (int)dtype,
                     (int)bias_dtype);
  return fold(ctx, out_features, in_features, dtype, weight_in, bias_in, gamma, beta, running_mean, running_var, eps,
              weight_out, bias_out, bias_dtype);
}
