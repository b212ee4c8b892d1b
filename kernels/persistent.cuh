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

// ---- the second cache level (bnk_persistent_shared_bytes): vectors beyond the registers' cache ----

// One thread's slot of the second level, laid out [depth][thread] so that a warp's accesses of a depth are
// consecutive: as aligned as its size allows (at most 16 bytes), so that a 16-byte slot moves in one access.
template <typename S>
struct alignas(sizeof(S) >= 16 ? 16 : sizeof(S)) shared_slot {
  S value;
};

// Loads in flight together while a second level fills or drains: a batch's loads are issued before any of its
// values are used, so that the level costs a memory latency per batch rather than per vector.
#define BNK_DEEP_BATCH 4

// The kernels ask for more than the 48 KiB of dynamic shared memory that a kernel gets unasked; the most any
// depth takes, so that setting it again before each query and launch changes nothing.
static inline cudaError_t allow_deep_cache(const void *kernel, size_t deep_bytes) {
  return deep_bytes > 0
             ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, BNK_PERSISTENT_SHARED_LIMIT)
             : cudaSuccess;
}

// The cooperative launch of a persistent kernel with `deep_bytes` of dynamic shared memory for its second level.
template <typename Kernel>
static cudaError_t launch_cooperative(Kernel *kernel, dim3 grid, dim3 block, void **args, size_t deep_bytes,
                                      cudaStream_t stream) {
  const cudaError_t allowed = allow_deep_cache(reinterpret_cast<const void *>(kernel), deep_bytes);
  if (allowed != cudaSuccess) return allowed;
  return cudaLaunchCooperativeKernel(kernel, grid, block, args, deep_bytes, stream);
}

// Blocks of BNK_STREAM_THREADS threads of a persistent kernel that one SM holds with `deep_bytes` of dynamic
// shared memory.
static inline cudaError_t deep_cache_occupancy(const void *kernel, size_t deep_bytes, int *blocks_per_sm) {
  const cudaError_t allowed = allow_deep_cache(kernel, deep_bytes);
  if (allowed == cudaErrorInvalidValue) {
    // A device whose blocks cannot opt in to BNK_PERSISTENT_SHARED_LIMIT bytes (sm_75 allows 64 KiB): no block
    // of the kernel takes a second level there, so that depth does not fit and the plan falls back on the
    // registers' cache, or on the two-pass path, rather than failing the call.
    (void)cudaGetLastError();
    *blocks_per_sm = 0;
    return cudaSuccess;
  }
  if (allowed != cudaSuccess) return allowed;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, BNK_STREAM_THREADS, deep_bytes);
}

// merge(channel) by every lane of warp w of the grid for channels w, w + warps, ...: each channel's
// pieces merged by one warp, in the fixed order of the two-pass merge kernels.
template <typename F>
static __device__ __forceinline__ void for_each_warp_channel(int64_t c, F &&merge) {
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / BNK_WARP);
  for (int64_t channel = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / BNK_WARP; channel < c; channel += warps)
    merge(channel);
}

// The channels-last merge: `group` threads of one block share a channel, so that a channel of P pieces takes
// ceil(P / group) steps per thread, and a grid with fewer threads than channels still keeps all of them busy.
// group is the most threads of the block, halving, that leaves a group for every channel (it depends only on
// the grid and c); block b takes channels b x per_block, ... (per_block = threads / group), then gridDim.x x
// per_block further on. Each thread merges pieces first, first + group, ... (merge(channel, first, step)
// returns the thread's result): in a group of `split` > 1 warps, lane l of member warp s starts at s + l split,
// so that few pieces still spread over the members; in a group of at most a warp, thread t of the group at t.
// The results meet along a fixed shuffle tree within each warp's share of the group, then one thread combines
// the members' results from shared memory in member order and calls finish(channel, merged): the same pieces
// merge in the same order under any schedule. Every thread of the block calls it (shuffles of whole warps and
// block barriers); `shared` holds one S per warp of the block.
template <typename S, typename Merge, typename Finish>
static __device__ __forceinline__ void for_each_block_channel(int64_t c, S *shared, Merge &&merge, Finish &&finish) {
  // 32-bit counters (channels are fewer than 2^31) keep the loop's registers few: the cache is live across it.
  const int channels = (int)c, threads = (int)blockDim.x, thread = (int)threadIdx.x;
  const int warp = thread / BNK_WARP, lane = thread % BNK_WARP;
  int group = threads;  // a power of two: the block's threads are 256
  while (group > 1 && (int)gridDim.x * (threads / group) < channels) group /= 2;
  const int per_block = threads / group, split = group > BNK_WARP ? group / BNK_WARP : 1;
  const int lanes = min(group, BNK_WARP), rank = thread % group;
  const int first_piece = split > 1 ? warp % split + lane * split : rank;
  for (int first = (int)blockIdx.x * per_block; first < channels; first += (int)gridDim.x * per_block) {
    const int channel = first + thread / group;
    S merged = {};
    if (channel < channels) merged = merge((int64_t)channel, first_piece, group);
#pragma unroll
    for (int offset = BNK_WARP / 2; offset > 0; offset /= 2) {
      const S other = bnk_shfl_down(BNK_FULL_MASK, merged, offset);
      if (offset < lanes && lane % lanes + offset < lanes) merged = bnk_combine(merged, other);
    }
    if (split > 1) {
      if (lane == 0) shared[warp] = merged;
      __syncthreads();
      if (rank == 0 && channel < channels) {
        for (int k = 1; k < split; ++k) merged = bnk_combine(merged, shared[warp + k]);
        finish((int64_t)channel, merged);
      }
      __syncthreads();
    } else if (rank == 0 && channel < channels) {
      finish((int64_t)channel, merged);
    }
  }
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
