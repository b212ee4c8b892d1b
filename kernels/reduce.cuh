// Warp and block reductions of Welford triples and of plain sums.
//
// Every reduction here is deterministic: values are combined along a fixed tree (lanes, then warps, then
// pieces in index order), never with floating-point atomics, so the same inputs give bitwise the same
// result whatever order the hardware (or the emulation's scheduler) runs the threads in.
#pragma once

#include "kernels/common.cuh"

// count, mean and M2 (sum of squared deviations from the mean) of a set of values.
struct bnk_welford {
  float count;
  float mean;
  float m2;
};

static __device__ __forceinline__ bnk_welford bnk_welford_empty() {
  bnk_welford w;
  w.count = 0.0f;
  w.mean = 0.0f;
  w.m2 = 0.0f;
  return w;
}

// Chan, Golub & LeVeque's merge: each side keeps the error of its own mean, so long sums never cancel.
static __device__ __forceinline__ bnk_welford bnk_combine(bnk_welford a, bnk_welford b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  bnk_welford r;
  r.count = a.count + b.count;
  const float delta = b.mean - a.mean;
  const float weight_b = b.count / r.count;
  r.mean = a.mean + delta * weight_b;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * weight_b;
  return r;
}

static __device__ __forceinline__ float bnk_combine(float a, float b) { return a + b; }

static __device__ __forceinline__ float2 bnk_combine(float2 a, float2 b) {
  return make_float2(a.x + b.x, a.y + b.y);
}

// The triple of V values: their mean and M2 by two passes over registers, so that folding them into a
// running triple costs one division per V values instead of one per value.
template <int V>
static __device__ __forceinline__ bnk_welford bnk_welford_of(const float (&v)[V]) {
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < V; ++i) sum += v[i];
  bnk_welford chunk;
  chunk.count = (float)V;
  chunk.mean = sum * (1.0f / (float)V);
  chunk.m2 = 0.0f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const float d = v[i] - chunk.mean;
    chunk.m2 += d * d;
  }
  return chunk;
}

// A thread's running triple, with the rounding error of its mean carried along (Kahan). One thread folds
// up to thousands of triples into one mean when channels are long; every update rounds the mean, and
// uncompensated those errors add up, to about 1e-5 of the standard deviation over the ~10^3 updates per
// thread of a 2^31-element channel. Compensated, the mean stays within a few ulps.
struct bnk_welford_run {
  bnk_welford w;
  float mean_error; // by how much w.mean exceeds the exact running mean
};

static __device__ __forceinline__ bnk_welford_run bnk_run_empty() {
  bnk_welford_run run;
  run.w = bnk_welford_empty();
  run.mean_error = 0.0f;
  return run;
}

// Chan's merge of b into the run (an empty run takes b as it is).
static __device__ __forceinline__ void bnk_run_add(bnk_welford_run &run, bnk_welford b) {
  if (b.count == 0.0f) return;
  const float count = run.w.count + b.count;
  const float delta = b.mean - run.w.mean;
  const float weight_b = b.count / count;
  const float step = delta * weight_b - run.mean_error;
  const float mean = run.w.mean + step;
  run.mean_error = (mean - run.w.mean) - step;
  run.w.m2 += b.m2 + delta * delta * run.w.count * weight_b;
  run.w.mean = mean;
  run.w.count = count;
}

static __device__ __forceinline__ bnk_welford bnk_run_result(const bnk_welford_run &run) {
  bnk_welford w = run.w;
  w.mean -= run.mean_error;
  return w;
}

static __device__ __forceinline__ float bnk_shfl_down(unsigned mask, float v, int offset) {
  return __shfl_down_sync(mask, v, offset);
}

static __device__ __forceinline__ float2 bnk_shfl_down(unsigned mask, float2 v, int offset) {
  return make_float2(__shfl_down_sync(mask, v.x, offset), __shfl_down_sync(mask, v.y, offset));
}

static __device__ __forceinline__ bnk_welford bnk_shfl_down(unsigned mask, bnk_welford v, int offset) {
  bnk_welford r;
  r.count = __shfl_down_sync(mask, v.count, offset);
  r.mean = __shfl_down_sync(mask, v.mean, offset);
  r.m2 = __shfl_down_sync(mask, v.m2, offset);
  return r;
}

// Reduces the values of lanes [0, lanes) of a warp into lane 0. `mask` names exactly those lanes, all of
// which must call this. Lanes other than 0 return partial results.
template <typename T>
static __device__ __forceinline__ T bnk_warp_reduce(T v, unsigned mask, int lanes) {
  const int lane = (int)(threadIdx.x % BNK_WARP);
#pragma unroll
  for (int offset = BNK_WARP / 2; offset > 0; offset /= 2) {
    const T other = bnk_shfl_down(mask, v, offset);
    if (lane + offset < lanes) v = bnk_combine(v, other);
  }
  return v;
}

// Reduces one value per thread of a one-dimensional block into thread 0 (other threads return partial
// results). Every thread of the block must call it. `shared` is caller-provided storage for BNK_WARP
// values; it may be reused after a __syncthreads() that follows the call.
template <typename T>
static __device__ __forceinline__ T bnk_block_reduce(T v, T *shared) {
  const int thread = (int)threadIdx.x;
  const int threads = (int)blockDim.x;
  const int warp = thread / BNK_WARP;
  const int warps = (threads + BNK_WARP - 1) / BNK_WARP;
  const int lanes = min(BNK_WARP, threads - warp * BNK_WARP);
  const unsigned mask = lanes == BNK_WARP ? BNK_FULL_MASK : (1u << lanes) - 1u;
  v = bnk_warp_reduce(v, mask, lanes);
  if (warps == 1) return v;
  if (thread % BNK_WARP == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) v = bnk_warp_reduce(shared[thread < warps ? thread : 0], BNK_FULL_MASK, warps);
  return v;
}
