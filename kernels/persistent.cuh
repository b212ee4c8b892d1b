// What the persistent kernels (persistent.cu's forward, persistent_backward.cu's backward) share: where a
// thread's cached vectors lie and which warp of the grid merges which channel between the grid barriers.
#pragma once

#include "kernels/common.cuh"

// Offset, from the channel's first element, of vector j of a channels-first channel (runs of s elements,
// run_stride apart).
static __device__ __forceinline__ int64_t channel_vector_offset(int64_t j, bnk_fastdiv vecs_per_run, int64_t run_stride,
                                                                int vec) {
  const int64_t run = (int64_t)bnk_div((uint64_t)j, vecs_per_run);
  return run * run_stride + (j - run * (int64_t)vecs_per_run.divisor) * vec;
}

// merge(channel) by every lane of warp w of the grid for channels w, w + warps, ...: each channel's
// pieces merged by one warp, in the fixed order of the two-pass merge kernels.
template <typename F>
static __device__ __forceinline__ void for_each_warp_channel(int64_t c, F &&merge) {
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / BNK_WARP);
  for (int64_t channel = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / BNK_WARP; channel < c; channel += warps)
    merge(channel);
}
