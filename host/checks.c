/* The argument checks of the public entry points, in one place. Each failure names the argument and its
 * value; a double is printed in the shortest form that reads back as the same value, so that a rejected
 * momentum of -1.0000001 does not read as the valid BNK_MOMENTUM_CUMULATIVE. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "host/internal.h"

bnk_double_text bnk__double_text_of(double value) {
  bnk_double_text out;
  for (int digits = 1; digits <= 17; ++digits) {
    snprintf(out.text, sizeof out.text, "%.*g", digits, value);
    if (isnan(value) || strtod(out.text, NULL) == value) break;
  }
  return out;
}

bnk_status bnk__require_eps(double eps) {
  if (!(eps >= 0.0) || isinf(eps))
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "eps must be finite and >= 0, got %s", bnk__double_text_of(eps).text);
  /* The kernels add eps to a float32 variance. */
  if (eps > FLT_MAX)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "eps must be at most FLT_MAX (%s), got %s",
                     bnk__double_text_of(FLT_MAX).text, bnk__double_text_of(eps).text);
  return BNK_SUCCESS;
}

float bnk__eps_to_float(double eps) {
  const float rounded = (float)eps;
  /* A positive eps below half of FLT_TRUE_MIN would round to 0 and switch on the zero-variance rule. */
  return rounded == 0.0f && eps > 0.0 ? FLT_TRUE_MIN : rounded;
}

bnk_status bnk__require_running(const float *running_mean, const float *running_var, const int64_t *num_batches_tracked,
                                double momentum) {
  if ((running_mean == NULL) != (running_var == NULL))
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "running_mean and running_var must both be given or both be NULL, got running_mean=%p "
                     "and running_var=%p",
                     (const void *)running_mean, (const void *)running_var);
  if (running_mean == NULL) return BNK_SUCCESS; /* momentum is then ignored, as the header says */
  if (momentum == BNK_MOMENTUM_CUMULATIVE) {
    if (num_batches_tracked == NULL)
      return bnk__fail(BNK_ERROR_INVALID_VALUE,
                       "num_batches_tracked must not be NULL when momentum is BNK_MOMENTUM_CUMULATIVE");
    return BNK_SUCCESS;
  }
  if (!(momentum >= 0.0 && momentum <= 1.0))
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "momentum must be in [0, 1] or BNK_MOMENTUM_CUMULATIVE, got %s",
                     bnk__double_text_of(momentum).text);
  return BNK_SUCCESS;
}

bnk_status bnk__require_context(const bnk_context *ctx) {
  return ctx == NULL ? bnk__fail(BNK_ERROR_INVALID_VALUE, "ctx must not be NULL") : BNK_SUCCESS;
}

bnk_status bnk__require_pointer(const void *pointer, const char *name) {
  return pointer == NULL ? bnk__fail(BNK_ERROR_INVALID_VALUE, "%s must not be NULL", name) : BNK_SUCCESS;
}

bnk_status bnk__require_dtype(bnk_dtype dtype, const char *name) {
  if (dtype != BNK_FLOAT32 && dtype != BNK_FLOAT16 && dtype != BNK_BFLOAT16)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "%s must be BNK_FLOAT32, BNK_FLOAT16 or BNK_BFLOAT16, got %d", name,
                     (int)dtype);
  return BNK_SUCCESS;
}

bnk_status bnk__require_positive(int64_t value, const char *name) {
  if (value <= 0) return bnk__fail(BNK_ERROR_INVALID_VALUE, "%s must be > 0, got %" PRId64, name, value);
  return BNK_SUCCESS;
}

bnk_status bnk_tensor_desc_check(const bnk_tensor_desc *desc) {
  bnk__clear_error(); /* public: a success must not leave the last call's message behind */
  if (desc == NULL) return bnk__fail(BNK_ERROR_INVALID_VALUE, "desc must not be NULL");
  BNK__TRY(bnk__require_dtype(desc->dtype, "dtype"));
  if (desc->layout != BNK_NCHW && desc->layout != BNK_NHWC)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "layout must be BNK_NCHW or BNK_NHWC, got %d", (int)desc->layout);
  if (desc->spatial_dims < 0 || desc->spatial_dims > BNK_MAX_SPATIAL_DIMS)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "spatial_dims must be in [0, %d], got %d", BNK_MAX_SPATIAL_DIMS,
                     desc->spatial_dims);
  if (desc->n < 0) return bnk__fail(BNK_ERROR_INVALID_VALUE, "N must be >= 0, got %" PRId64, desc->n);
  BNK__TRY(bnk__require_positive(desc->c, "C"));
  /* The product of the non-zero extents: an empty tensor must not hide a shape whose other extents overflow
   * int64 when multiplied (N = 0 with spatial {2, 2^62}; found by fuzz_api), since every partial product of
   * its extents is computed somewhere. */
  int64_t bytes = desc->dtype == BNK_FLOAT32 ? 4 : 2;
  int overflow = __builtin_mul_overflow(bytes, desc->c, &bytes);
  int empty = desc->n == 0;
  if (desc->n != 0) overflow = overflow || __builtin_mul_overflow(bytes, desc->n, &bytes);
  for (int d = 0; d < desc->spatial_dims; ++d) {
    if (desc->spatial[d] < 0)
      return bnk__fail(BNK_ERROR_INVALID_VALUE, "spatial[%d] must be >= 0, got %" PRId64, d, desc->spatial[d]);
    empty = empty || desc->spatial[d] == 0;
    if (desc->spatial[d] != 0) overflow = overflow || __builtin_mul_overflow(bytes, desc->spatial[d], &bytes);
  }
  if (overflow)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "tensor of N=%" PRId64 ", C=%" PRId64 " and %d spatial dims is larger than 2^63 bytes%s", desc->n,
                     desc->c, desc->spatial_dims, empty ? " in its non-zero extents" : "");
  return BNK_SUCCESS;
}

bnk_status bnk__require_query(const bnk_context *ctx, const bnk_tensor_desc *desc, const size_t *bytes) {
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  return bnk__require_pointer(bytes, "bytes");
}

bnk_status bnk__require_workspace(const void *workspace, size_t workspace_bytes, size_t needed, const char *query) {
  if (workspace_bytes < needed)
    return bnk__fail(BNK_ERROR_WORKSPACE_TOO_SMALL, "workspace_bytes must be >= %zu (%s) for this shape, got %zu",
                     needed, query, workspace_bytes);
  if (needed > 0 && workspace == NULL) return bnk__fail(BNK_ERROR_INVALID_VALUE, "workspace must not be NULL");
  return BNK_SUCCESS;
}

bnk_status bnk__require_channel_arrays(const bnk_context *ctx, const bnk_tensor_desc *desc, const float *first,
                                       const char *first_name, const float *second, const char *second_name) {
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_pointer(first, first_name));
  return bnk__require_pointer(second, second_name);
}

bnk_status bnk__require_forward_tensors(const bnk_tensor_desc *desc, const void *x, const void *y,
                                        const bnk_epilogue *epilogue, bnk_epilogue_args *fused) {
  BNK__TRY(bnk__require_pointer(x, "x"));
  BNK__TRY(bnk__require_pointer(y, "y"));
  return bnk__epilogue_args_of(epilogue, desc, x, y, fused);
}

bnk_status bnk__require_statistics(const float *running_mean, const float *running_var, double eps) {
  BNK__TRY(bnk__require_pointer(running_mean, "running_mean"));
  BNK__TRY(bnk__require_pointer(running_var, "running_var"));
  return bnk__require_eps(eps);
}

bnk_status bnk__require_same_or_apart(const void *out, const void *in, size_t bytes, const char *out_name,
                                      const char *in_name) {
  const uintptr_t o = (uintptr_t)out, i = (uintptr_t)in;
  if (in != NULL && out != in && o < i + bytes && i < o + bytes)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "%s must be %s or not overlap it, got %s=%p and %s=%p (%zu bytes)",
                     out_name, in_name, out_name, out, in_name, in, bytes);
  return BNK_SUCCESS;
}
