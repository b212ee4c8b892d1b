/* The argument checks of the public entry points, in one place. Each failure names the argument and its
 * value; a double is printed in the shortest form that reads back as the same value, so that a rejected
 * momentum of -1.0000001 does not read as the valid BNK_MOMENTUM_CUMULATIVE. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "host/internal.h"

bnk_double_text bnk_double_text_of(double value) {
  bnk_double_text out;
  for (int digits = 1; digits <= 17; ++digits) {
    snprintf(out.text, sizeof out.text, "%.*g", digits, value);
    if (isnan(value) || strtod(out.text, NULL) == value) break;
  }
  return out;
}

bnk_status bnk_require_eps(double eps) {
  if (!(eps >= 0.0) || isinf(eps))
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "eps must be finite and >= 0, got %s", bnk_double_text_of(eps).text);
  /* The kernels add eps to a float32 variance. */
  if (eps > FLT_MAX)
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "eps must be at most FLT_MAX (%s), got %s",
                    bnk_double_text_of(FLT_MAX).text, bnk_double_text_of(eps).text);
  return BNK_SUCCESS;
}

float bnk_eps_to_float(double eps) {
  const float rounded = (float)eps;
  /* A positive eps below half of FLT_TRUE_MIN would round to 0 and switch on the zero-variance rule. */
  return rounded == 0.0f && eps > 0.0 ? FLT_TRUE_MIN : rounded;
}

bnk_status bnk_require_running(const float *running_mean, const float *running_var,
                               const int64_t *num_batches_tracked, double momentum) {
  if ((running_mean == NULL) != (running_var == NULL))
    return bnk_fail(BNK_ERROR_INVALID_VALUE,
                    "running_mean and running_var must both be given or both be NULL, got running_mean=%p "
                    "and running_var=%p",
                    (const void *)running_mean, (const void *)running_var);
  if (running_mean == NULL) return BNK_SUCCESS; /* momentum is then ignored, as the header says */
  if (momentum == BNK_MOMENTUM_CUMULATIVE) {
    if (num_batches_tracked == NULL)
      return bnk_fail(BNK_ERROR_INVALID_VALUE,
                      "num_batches_tracked must not be NULL when momentum is BNK_MOMENTUM_CUMULATIVE");
    return BNK_SUCCESS;
  }
  if (!(momentum >= 0.0 && momentum <= 1.0))
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "momentum must be in [0, 1] or BNK_MOMENTUM_CUMULATIVE, got %s",
                    bnk_double_text_of(momentum).text);
  return BNK_SUCCESS;
}
