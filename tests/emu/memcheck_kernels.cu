// Kernels with planted memory bugs for tests/emu/test_memcheck.cpp, compiled through bnk_emu_wrap_cuda()
// as the library's kernels are (with the memcheck instrumentation).  Each planted access is the last line
// of its kernel; the line is exported (memcheck_*_line, two lines below it) so that the test knows which
// file:line the report must name.
#include <bnk_emu/device.h>

#include "memcheck_kernels.h"

static __global__ void read_one(const float *p, long index, float *out) {
  const bool planted = threadIdx.x == blockDim.x - 1;
  const long i = planted ? index : long(threadIdx.x);
  out[planted ? 0 : threadIdx.x + 1] = p[i];
}
extern const int memcheck_read_line = __LINE__ - 2;

static __global__ void write_one(float *p, long index) {
  const bool planted = threadIdx.x == blockDim.x - 1;
  const long i = planted ? index : long(threadIdx.x);
  p[i] = planted ? 1.0f : 2.0f;
}
extern const int memcheck_write_line = __LINE__ - 2;

static __global__ void dynamic_shared(size_t offset) {
  unsigned char *s = static_cast<unsigned char *>(BNK_EMU_DYNAMIC_SHARED());
  const bool planted = threadIdx.x == blockDim.x - 1;
  const size_t i = planted ? offset : threadIdx.x;
  s[i] = planted ? 1 : 2;
}
extern const int memcheck_shared_line = __LINE__ - 2;

static __global__ void copy4(const float4 *p, float4 *q, int n4) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n4) q[i] = p[i];
}

static __global__ void static_shared(float *out) {
  __shared__ float never_written[64];
  out[blockIdx.x * 64 + threadIdx.x] = never_written[threadIdx.x];
  __syncthreads();
  never_written[threadIdx.x] = 1.0f; /* what a block that wrongly inherited it would read */
}

cudaError_t memcheck_read(const float *p, long index, float *out, int threads) {
  BNK_EMU_LAUNCH(read_one, 1, threads, 0, nullptr)(p, index, out);
  return cudaGetLastError();
}

cudaError_t memcheck_write(float *p, long index, int threads) {
  BNK_EMU_LAUNCH(write_one, 1, threads, 0, nullptr)(p, index);
  return cudaGetLastError();
}

cudaError_t memcheck_copy4(const float *p, float *q, int n) {
  const int n4 = n / 4;
  BNK_EMU_LAUNCH(copy4, (n4 + 127) / 128, 128, 0, nullptr)
  (reinterpret_cast<const float4 *>(p), reinterpret_cast<float4 *>(q), n4);
  return cudaGetLastError();
}

cudaError_t memcheck_dynamic_shared(size_t smem, size_t offset) {
  cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void *>(dynamic_shared),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  BNK_EMU_LAUNCH(dynamic_shared, 1, 64, smem, nullptr)(offset);
  return cudaGetLastError();
}

cudaError_t memcheck_static_shared(float *out, int blocks) {
  BNK_EMU_LAUNCH(static_shared, blocks, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
