// What the persistent kernels (persistent.cu's forward, persistent_backward.cu's backward) share: where a
// thread's cached vectors lie and which warp of the grid merges which channel between the grid barriers.
#pragma once

#include "kernels/common.cuh"
#include "kernels/reduce.cuh"

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

// ---- teams: the channels-first kernels whose channels each fit one team (bnk_persistent_team) ----
// A team of TEAM threads (a warp or the whole block) owns whole channels, so it reduces, derives and writes
// a channel with no grid barrier. A block holds blockDim.x / TEAM teams.

// Synchronizes the threads of a team, memory included.
template <int TEAM>
static __device__ __forceinline__ void team_sync() {
  if constexpr (TEAM == BNK_WARP) __syncwarp();
  else __syncthreads();
}

// Reduces one value per thread of the team into the team's first thread (others return partial results);
// `shared` is bnk_block_reduce's storage for a block team, reusable after the next team_sync.
template <int TEAM, typename T>
static __device__ __forceinline__ T team_reduce(T v, T *shared) {
  if constexpr (TEAM == BNK_WARP) return bnk_warp_reduce(v, BNK_FULL_MASK, BNK_WARP);
  else return bnk_block_reduce(v, shared);
}

// work(channel) by every thread of team t of the grid for channels t, t + teams, ...: a block team's threads
// all take the same channels, so work may synchronize the block.
template <int TEAM, typename F>
static __device__ __forceinline__ void for_each_team_channel(int64_t c, F &&work) {
  const int64_t per_block = blockDim.x / TEAM;
  const int64_t teams = (int64_t)gridDim.x * per_block;
  for (int64_t channel = (int64_t)blockIdx.x * per_block + threadIdx.x / TEAM; channel < c; channel += teams)
    work(channel);
}
