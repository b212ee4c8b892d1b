/* The bench's own baselines, written the textbook way so that bnk has something simple to be measured
 * against (benchmarks/baselines.cu):
 *  - the naive baseline: one kernel reduces each channel's sum and sum of squares (one block per channel)
 *    and derives the statistics from them, E[x^2] - E[x]^2; a second, elementwise kernel normalizes;
 *  - the building blocks that the cuBLAS baseline (benchmarks/vendor_cublas.c) puts around its GEMVs:
 *    statistics from sums that cuBLAS computed, then the same elementwise kernels;
 *  - the separate add + ReLU and ReLU-backward passes of the unfused sequences that bnk's fused epilogues are
 *    measured against.
 * They share no code with bnk's kernels. Every launcher queues work on `stream` and returns
 * cudaGetLastError(). Compiled by nvcc into bnk-bench and through the host emulation into bnk-bench-emu. */
#ifndef BNK_BENCHMARKS_BASELINES_H
#define BNK_BENCHMARKS_BASELINES_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "bnk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The same signatures as bnk's ops, minus the workspace (the naive kernels need none). */
cudaError_t naive_forward_training(const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                                   const float *beta, float *running_mean, float *running_var, double momentum,
                                   double eps, float *save_mean, float *save_invstd, cudaStream_t stream);
cudaError_t naive_forward_inference(const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                                    const float *beta, const float *running_mean, const float *running_var, double eps,
                                    cudaStream_t stream);
cudaError_t naive_backward(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx, const float *gamma,
                           float *dgamma, float *dbeta, const float *save_mean, const float *save_invstd,
                           cudaStream_t stream);
cudaError_t naive_backward_inference(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                     const float *gamma, float *dgamma, float *dbeta, const float *running_mean,
                                     const float *running_var, double eps, cudaStream_t stream);

/* For the cuBLAS baseline. sums and sums_of_squares are per-channel totals over `count` elements: the
 * statistics follow (mean, 1/sqrt(E[x^2] - mean^2 + eps), the running update with the unbiased variance). */
cudaError_t baseline_statistics_from_sums(int64_t channels, int64_t count, const float *sums,
                                          const float *sums_of_squares, double momentum, double eps,
                                          float *running_mean, float *running_var, float *save_mean, float *save_invstd,
                                          cudaStream_t stream);
/* y = (x - mean) invstd gamma + beta, elementwise. */
cudaError_t baseline_normalize(const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                               const float *beta, const float *mean, const float *invstd, cudaStream_t stream);
/* dbeta = sum dy and dgamma = (sum dy x - mean sum dy) invstd, from the totals; with frozen set, `spread` is
 * the running variance and invstd = 1/sqrt(spread + eps), else `spread` is the saved invstd. */
cudaError_t baseline_gradients_from_sums(int64_t channels, const float *sum_dy, const float *sum_dy_x,
                                         const float *mean, const float *spread, int frozen, double eps, float *dgamma,
                                         float *dbeta, cudaStream_t stream);
/* dx from dgamma and dbeta, elementwise: the training formula, or dy gamma invstd when frozen (`spread` as
 * above). */
cudaError_t baseline_backward_dx(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                 const float *gamma, const float *mean, const float *spread, int frozen, double eps,
                                 const float *dgamma, const float *dbeta, cudaStream_t stream);

/* The separate elementwise passes of the unfused sequences that bnk's fused epilogues replace (each one read
 * and one write of the tensor, plus z):
 * y = relu(y + z) in place, or relu(y) when z is NULL; relu keeps NaN, as PyTorch's does. */
cudaError_t baseline_add_relu(const bnk_tensor_desc *desc, void *y, const void *z, cudaStream_t stream);
/* The ReLU's backward: g = dy where y > 0, else 0. */
cudaError_t baseline_relu_backward(const bnk_tensor_desc *desc, const void *y, const void *dy, void *g,
                                   cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
