// Kernels in a .cu file, compiled through bnk_emu_wrap_cuda() exactly as the library's kernels are: the
// source is CUDA as nvcc would see it, with the emulation selected by BNK_EMULATION.
#ifdef BNK_EMULATION
#include <bnk_emu/device.h>
#define LAUNCH(kernel, grid, block, smem, stream, ...) BNK_EMU_LAUNCH(kernel, grid, block, smem, stream)(__VA_ARGS__)
#else
#include <cuda_runtime.h>
#define LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

#include "wrapped_kernels.h"

namespace {

template <typename T, int kBlock>
__global__ void __launch_bounds__(kBlock) block_sum(const T *__restrict__ in, T *__restrict__ out, int n) {
  __shared__ T partial[kBlock / 32];
  T v = T(0);
  for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += int(gridDim.x * blockDim.x)) v += __ldg(in + i);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kBlock / 32 ? partial[threadIdx.x] : T(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) atomicAdd(out, v);
  }
}

__device__ __forceinline__ float scale_one(float x, float s) { return __fmaf_rn(x, s, 0.0f); }

__global__ void scale(float *x, float s, int n) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) x[i] = scale_one(x[i], s);
}

}  // namespace

cudaError_t wrapped_block_sum(const float *in, float *out, int n, cudaStream_t stream) {
  LAUNCH((block_sum<float, 256>), 8, 256, 0, stream, in, out, n);
  return cudaGetLastError();
}

cudaError_t wrapped_block_sum_d(const double *in, double *out, int n, cudaStream_t stream) {
  LAUNCH((block_sum<double, 128>), 8, 128, 0, stream, in, out, n);
  return cudaGetLastError();
}

cudaError_t wrapped_scale(float *x, float s, int n, cudaStream_t stream) {
  LAUNCH(scale, (n + 127) / 128, 128, 0, stream, x, s, n);
  return cudaGetLastError();
}
