#include "tests/reference.h"

#include <math.h>
#include <stdlib.h>

int64_t ref_spatial(const bnk_tensor_desc *desc) {
  int64_t s = 1;
  for (int d = 0; d < desc->spatial_dims; ++d) s *= desc->spatial[d];
  return s;
}

int64_t ref_offset(const bnk_tensor_desc *desc, int64_t n, int64_t c, int64_t s) {
  const int64_t spatial = ref_spatial(desc);
  if (desc->layout == BNK_NCHW) return (n * desc->c + c) * spatial + s;
  return (n * spatial + s) * desc->c + c;
}

void ref_channel_stats(const bnk_tensor_desc *desc, const double *x, double *mean, double *var_biased,
                       double *var_unbiased) {
  const int64_t spatial = ref_spatial(desc);
  const int64_t m = desc->n * spatial;
  for (int64_t c = 0; c < desc->c; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) sum += x[ref_offset(desc, n, c, s)];
    const double mu = m > 0 ? sum / (double)m : 0.0;
    double squares = 0.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const double d = x[ref_offset(desc, n, c, s)] - mu;
        squares += d * d;
      }
    if (mean) mean[c] = mu;
    if (var_biased) var_biased[c] = m > 0 ? squares / (double)m : 0.0;
    if (var_unbiased) var_unbiased[c] = m > 1 ? squares / (double)(m - 1) : 0.0;
  }
}

double ref_invstd(double var, double eps) { return var == 0.0 && eps == 0.0 ? 0.0 : 1.0 / sqrt(var + eps); }

void ref_normalize(const bnk_tensor_desc *desc, const double *x, const double *mean, const double *var, double eps,
                   const double *gamma, const double *beta, double *y) {
  const int64_t spatial = ref_spatial(desc);
  for (int64_t c = 0; c < desc->c; ++c) {
    const double invstd = ref_invstd(var[c], eps);
    const double g = gamma ? gamma[c] : 1.0;
    const double b = beta ? beta[c] : 0.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(desc, n, c, s);
        y[i] = (x[i] - mean[c]) * invstd * g + b;
      }
  }
}

void ref_running_update(int64_t c, double momentum, const double *batch_mean, const double *batch_var_unbiased,
                        double *running_mean, double *running_var) {
  for (int64_t i = 0; i < c; ++i) {
    running_mean[i] = (1.0 - momentum) * running_mean[i] + momentum * batch_mean[i];
    running_var[i] = (1.0 - momentum) * running_var[i] + momentum * batch_var_unbiased[i];
  }
}

void ref_backward(const bnk_tensor_desc *desc, const double *x, const double *dy, const double *mean,
                  const double *invstd, const double *gamma, double *dx, double *dgamma, double *dbeta) {
  const int64_t spatial = ref_spatial(desc);
  const double m = (double)(desc->n * spatial);
  for (int64_t c = 0; c < desc->c; ++c) {
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(desc, n, c, s);
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * (x[i] - mean[c]) * invstd[c];
      }
    if (dbeta) dbeta[c] = sum_dy;
    if (dgamma) dgamma[c] = sum_dy_xhat;
    if (!dx) continue;
    const double g = gamma ? gamma[c] : 1.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(desc, n, c, s);
        const double xhat = (x[i] - mean[c]) * invstd[c];
        dx[i] = g * invstd[c] * (dy[i] - sum_dy / m - xhat * sum_dy_xhat / m);
      }
  }
}

void ref_backward_inference(const bnk_tensor_desc *desc, const double *x, const double *dy, const double *running_mean,
                            const double *running_var, double eps, const double *gamma, double *dx, double *dgamma,
                            double *dbeta) {
  const int64_t spatial = ref_spatial(desc);
  for (int64_t c = 0; c < desc->c; ++c) {
    const double invstd = ref_invstd(running_var[c], eps);
    const double g = gamma ? gamma[c] : 1.0;
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(desc, n, c, s);
        sum_dy += dy[i];
        if (dgamma) sum_dy_xhat += dy[i] * (x[i] - running_mean[c]) * invstd;
        if (dx) dx[i] = dy[i] * g * invstd;
      }
    if (dbeta) dbeta[c] = sum_dy;
    if (dgamma) dgamma[c] = sum_dy_xhat;
  }
}
