/* Host entry points of tests/emu/kernels.cu (compiled through bnk_emu_wrap_cuda). */
#ifndef BNK_EMU_WRAPPED_KERNELS_H
#define BNK_EMU_WRAPPED_KERNELS_H

#include <cuda_runtime_api.h>

cudaError_t wrapped_block_sum(const float *in, float *out, int n, cudaStream_t stream);
cudaError_t wrapped_block_sum_d(const double *in, double *out, int n, cudaStream_t stream);
cudaError_t wrapped_scale(float *x, float s, int n, cudaStream_t stream);

#endif
