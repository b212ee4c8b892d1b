// A persistent grid with a grid barrier, written once for nvcc and the emulation: cooperative_groups, a
// cooperative launch through cudaLaunchCooperativeKernel and through cudaLaunchKernelEx, and a grid sized
// from the occupancy API. Launched from test_cooperative.c.
#include <cooperative_groups.h>

#include "kernels/common.cuh"

namespace cg = cooperative_groups;

#define COOP_THREADS 256

// Every block adds up a strided part of x, the grid syncs, and each block then adds up all the partials:
// out[b] is the total in every block. A second round on the totals checks that the barrier is reusable.
static __global__ void __launch_bounds__(COOP_THREADS)
    grid_total(const float *x, int64_t count, float *partial, float *out) {
  cg::grid_group grid = cg::this_grid();
  cg::thread_block block = cg::this_thread_block();
  __shared__ float acc[COOP_THREADS];
  float s = 0.0f;
  for (int64_t i = (int64_t)grid.thread_rank(); i < count; i += (int64_t)grid.size()) s += x[i];
  acc[block.thread_rank()] = s;
  block.sync();
  const unsigned long long blocks = grid.num_blocks(), me = grid.block_rank();
  if (block.thread_rank() == 0) {
    float t = 0.0f;
    for (unsigned k = 0; k < block.size(); ++k) t += acc[k];
    partial[me] = t;
  }
  grid.sync();
  if (block.thread_rank() == 0) {
    float t = 0.0f;
    for (unsigned long long b = 0; b < blocks; ++b) t += partial[b];
    out[me] = t;
  }
  grid.sync();
  if (block.thread_rank() == 0) partial[me] = out[(me + 1) % blocks] - out[me];
}

// The largest co-resident grid: blocks per SM (from the kernel's resource usage) times SMs.
extern "C" cudaError_t test_cooperative_grid_size(int *blocks) {
  int per_sm = 0, sms = 0;
  cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, grid_total, COOP_THREADS, 0);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  *blocks = per_sm * sms;
  return e;
}

extern "C" cudaError_t test_cooperative_total(const float *x, int64_t count, int blocks, int use_launch_ex,
                                              float *partial, float *out) {
  if (!use_launch_ex) {
    void *args[] = {&x, &count, &partial, &out};
    return cudaLaunchCooperativeKernel(grid_total, dim3(blocks), dim3(COOP_THREADS), args, 0, 0);
  }
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(COOP_THREADS);
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, grid_total, x, count, partial, out);
}
