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

// The channels-last merge: the warps of one block share a channel when the grid has warps to spare, so that
// a channel of P pieces takes ceil(P / (32 split)) steps instead of ceil(P / 32). Block b takes channels
// b per_block, ... (per_block = warps / split), then gridDim.x per_block further on, and so on; member s of a
// channel's `split` warps takes pieces s, s + split, ...: merge(channel, first, lane_stride, step) returns
// the warp's merge of pieces first + lane lane_stride, then + step, ... in lane 0. One thread combines the
// members' results from shared memory in member order and calls finish(channel, merged). split is the most
// warps of the block, halving, that leaves a warp group for every channel: it depends only on the grid and
// c, so the same pieces merge in the same order under any schedule. Every thread of the block calls it (it
// has block barriers); `shared` holds one S per warp of the block.
template <typename S, typename Merge, typename Finish>
static __device__ __forceinline__ void for_each_block_channel(int64_t c, S *shared, Merge &&merge, Finish &&finish) {
  // 32-bit counters (channels are fewer than 2^31) keep the loop's registers few: the cache is live across it.
  const int channels = (int)c, warps = (int)(blockDim.x / BNK_WARP);
  const int warp = (int)(threadIdx.x / BNK_WARP), lane = (int)(threadIdx.x % BNK_WARP);
  int split = warps;
  while (split > 1 && (int)gridDim.x * (warps / split) < channels) split /= 2;
  const int per_block = warps / split, member = warp % split;
  // Every warp while the block's warps are a power of two.
  const int group_channel = warp < per_block * split ? warp / split : channels;
  for (int first = (int)blockIdx.x * per_block; first < channels; first += (int)gridDim.x * per_block) {
    const int channel = first + group_channel;
    if (channel < channels) {
      const S merged = merge((int64_t)channel, member, split, split * BNK_WARP);
      if (lane == 0) shared[warp] = merged;
    }
    __syncthreads();
    if (channel < channels && member == 0 && lane == 0) {
      S merged = shared[warp];
      for (int k = 1; k < split; ++k) merged = bnk_combine(merged, shared[warp + k]);
      finish((int64_t)channel, merged);
    }
    __syncthreads();
  }
}
