/* A float64 reference of batch normalization, written from the definitions in docs/semantics.md and
 * sharing no code with the kernels. Tensors are arrays of double in the layout of the descriptor. */
#ifndef BNK_TESTS_REFERENCE_H
#define BNK_TESTS_REFERENCE_H

#include <stdint.h>

#include "bnk.h"

/* Product of the spatial extents. */
int64_t ref_spatial(const bnk_tensor_desc *desc);
/* Offset of element (n, c, s) where s indexes the flattened spatial positions. */
int64_t ref_offset(const bnk_tensor_desc *desc, int64_t n, int64_t c, int64_t s);

/* Per-channel mean, biased variance (divide by M) and unbiased variance (divide by M - 1; 0 if M < 2),
 * by two passes in double. Any output may be NULL. */
void ref_channel_stats(const bnk_tensor_desc *desc, const double *x, double *mean, double *var_biased,
                       double *var_unbiased);

/* 1 / sqrt(var + eps), and 0 when var and eps are both 0 (PyTorch's rule for a constant channel). */
double ref_invstd(double var, double eps);

/* y = (x - mean) * ref_invstd(var, eps) * gamma + beta; gamma/beta NULL mean 1 and 0. */
void ref_normalize(const bnk_tensor_desc *desc, const double *x, const double *mean, const double *var, double eps,
                   const double *gamma, const double *beta, double *y);

/* PyTorch's update with weight `momentum` on the batch: r = (1 - m) r + m batch. */
void ref_running_update(int64_t c, double momentum, const double *batch_mean, const double *batch_var_unbiased,
                        double *running_mean, double *running_var);

/* Gradients of the training forward given the saved mean and invstd:
 * xhat = (x - mean) invstd, dbeta = sum dy, dgamma = sum dy xhat,
 * dx = gamma invstd (dy - dbeta / M - xhat dgamma / M). */
void ref_backward(const bnk_tensor_desc *desc, const double *x, const double *dy, const double *mean,
                  const double *invstd, const double *gamma, double *dx, double *dgamma, double *dbeta);

/* Gradients of the inference forward (frozen statistics), invstd = ref_invstd(running_var, eps):
 * dx = dy gamma invstd, dgamma = sum dy (x - running_mean) invstd, dbeta = sum dy. Any output may be NULL;
 * x is read only for dgamma. */
void ref_backward_inference(const bnk_tensor_desc *desc, const double *x, const double *dy, const double *running_mean,
                            const double *running_var, double eps, const double *gamma, double *dx, double *dgamma,
                            double *dbeta);

#endif
