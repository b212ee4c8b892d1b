// The channels-first flat walk of the elementwise passes (bnk_elementwise_plan, launchers.h): a block's
// piece of the tensor in memory order, 16-byte vectors whatever S is, per-run parameters from a table the
// block fills once, and run counters advanced by constants instead of divisions.
#pragma once

#include "kernels/common.cuh"

// Where one of a thread's elements lies: its run, counted from the block's first run (an index into the
// block's table), and the elements from it to the end of that run (>= 1; at most BNK_RUN_CAP).
struct bnk_flat_cursor {
  uint32_t run;
  int32_t left;
};

// From one of a thread's vectors to its next, BNK_STREAM_THREADS * V elements on.
static __device__ __forceinline__ void bnk_run_advance(bnk_flat_cursor &cursor, const bnk_elementwise_plan &plan) {
  cursor.run += (uint32_t)plan.run_step;
  cursor.left -= plan.left_step;
  if (cursor.left <= 0) {
    cursor.left += plan.run_length;
    cursor.run += 1;
  }
}

// A thread's place in the walk: its first vector (index in the tensor) and the run it starts in.
struct bnk_flat_start {
  int64_t vector;
  bnk_flat_cursor cursor;
};

// Every thread of the block calls this first. It fills table[k] with params(channel) of the block's run
// k (k < plan.table_runs), for `params` a per-channel function returning a 16-byte struct, and returns
// the thread's start. The divisions here run once per block and thread, never in the loop.
template <int V, typename P, typename Params>
static __device__ __forceinline__ bnk_flat_start bnk_flat_begin(const bnk_elementwise_plan &plan, int64_t c, int64_t s,
                                                                P *table, Params &&params) {
  __shared__ int64_t origin[2];  // the block's first element's offset in its run, and that run's channel
  const int64_t tile = (int64_t)BNK_STREAM_THREADS * V;
  const int64_t first_element = (int64_t)blockIdx.x * plan.tiles_per_block * tile;
  if (threadIdx.x == 0) {
    const int64_t run = first_element / s;
    origin[0] = first_element - run * s;
    origin[1] = run % c;
  }
  __syncthreads();
  const int64_t offset = origin[0];
  const int64_t first_channel = origin[1];
  for (int k = (int)threadIdx.x; k < plan.table_runs; k += BNK_STREAM_THREADS) {
    int64_t channel = first_channel + k;
    // first_channel < c and k < table_runs: one subtraction unless C is smaller than the table.
    if (channel >= c) channel = c >= plan.table_runs ? channel - c : (int64_t)((uint32_t)channel % (uint32_t)c);
    table[k] = params(channel);
  }

  bnk_flat_start start;
  start.vector = first_element / V + threadIdx.x;
  // The thread's first element is offset + threadIdx.x * V < S + tile into the block's first run.
  int64_t position = offset + (int64_t)threadIdx.x * V;
  start.cursor.run = 0;
  if (position >= s) {
    position -= s;  // < tile now
    start.cursor.run = 1;
    if (s <= tile) {
      start.cursor.run += (uint32_t)position / (uint32_t)s;
      position = (uint32_t)position % (uint32_t)s;
    }
  }
  start.cursor.left = (int32_t)min(s - position, (int64_t)BNK_RUN_CAP);
  __syncthreads();
  return start;
}

// Applies f(value, companion, parameters) to the first `count` elements of a vector at `cursor` (the
// companion is the element's residual z, or its x, from w): with the run's parameters when the whole
// vector lies in one run, else one element at a time across the run boundaries. That second path
// rotates both arrays by one element per step, so that its loop stays rolled (registers cannot be
// indexed at run time) and the hot loop small; it serves only the vectors that straddle a boundary and
// the tensor's last vector.
template <typename P, int V, typename F>
static __device__ __forceinline__ void bnk_apply_runs(float (&v)[V], float (&w)[V], int count,
                                                      const bnk_flat_cursor &cursor, const P *table, int32_t run_length,
                                                      F &&f) {
  if (count == V && cursor.left >= V) {
    const P params = table[cursor.run];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = f(v[i], w[i], params);
    return;
  }
  uint32_t run = cursor.run;
  int32_t left = cursor.left;
#pragma unroll 1
  for (int i = 0; i < V; ++i) {
    if (left == 0) {
      ++run;
      left = run_length;
    }
    --left;
    const float result = i < count ? f(v[0], w[0], table[run]) : v[0];
#pragma unroll
    for (int k = 0; k + 1 < V; ++k) {
      v[k] = v[k + 1];
      w[k] = w[k + 1];
    }
    v[V - 1] = result;
  }
}

// The walk itself: for each of the thread's vectors in order, load(u, element, count) and then
// consume(u, element, count, cursor), u the BNK_UNROLL slot, element the vector's first element, count
// its elements. The loop runs over the block's tiles that lie wholly inside the tensor, with count the
// constant V, so that the hot loop holds no end-of-tensor code; the tensor's last tile, if partial, comes
// after it, with count < V for the partial vector and 0 past the end (load skipped; consume must not touch
// memory then). Every lane of the block runs the same steps, so consume may build mask words.
template <int V, typename Load, typename Consume>
static __device__ __forceinline__ void bnk_flat_walk(const bnk_elementwise_plan &plan, const bnk_flat_start &start,
                                                     Load &&load, Consume &&consume) {
  constexpr int64_t tile = (int64_t)BNK_STREAM_THREADS * V;
  const int64_t first_tile = (int64_t)blockIdx.x * plan.tiles_per_block;
  const int64_t whole_tiles = plan.elements / tile;
  const int full = (int)max((int64_t)0, min((int64_t)plan.tiles_per_block, whole_tiles - first_tile));
  bnk_flat_cursor cursor = start.cursor;
  bnk_walk(
      0, full, 1, [&](int u, int i) { load(u, (start.vector + (int64_t)i * BNK_STREAM_THREADS) * V, V); },
      [&](int u, int i) {
        consume(u, (start.vector + (int64_t)i * BNK_STREAM_THREADS) * V, V, cursor);
        bnk_run_advance(cursor, plan);
      });
  if (full < plan.tiles_per_block && first_tile + full == whole_tiles && whole_tiles * tile < plan.elements) {
    const int64_t element = (start.vector + (int64_t)full * BNK_STREAM_THREADS) * V;
    const int count = element >= plan.elements ? 0 : (int)min((int64_t)V, plan.elements - element);
    if (count > 0) load(0, element, count);
    consume(0, element, count, cursor);
  }
}
