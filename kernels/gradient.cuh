// The per-element and per-channel arithmetic of the backward, shared by the two-pass kernels (backward.cu)
// and the persistent backward (persistent_backward.cu), so that both paths compute the gated gradient, the
// sums, their merge and dx with the same operations, bit for bit.
#pragma once

#include "kernels/reduce.cuh"

// One vector of the gradient a pass reads: dy gated by the epilogue (g = y > 0 ? dy : 0), and x when the
// pass needs it (x NULL: left 0); the first `count` elements of it, the rest left 0.
template <int GRAD, typename T, int V>
static __device__ __forceinline__ void load_gradient(const T *x, const T *dy, const bnk_grad_epilogue_args &e,
                                                     int64_t offset, int count, float (&g)[V], float (&vx)[V]) {
  bnk_load_first<T, V>(dy + offset, count, g);
  bnk_gate_gradient<GRAD, T, V>(g, static_cast<const T *>(e.y), e.mask, offset, count);
  if (x != NULL) bnk_load_first<T, V>(x + offset, count, vx);
}

template <int GRAD, typename T, int V>
static __device__ __forceinline__ void load_gradient(const T *x, const T *dy, const bnk_grad_epilogue_args &e,
                                                     int64_t offset, float (&g)[V], float (&vx)[V]) {
  load_gradient<GRAD, T, V>(x, dy, e, offset, V, g, vx);
}

// The gated gradient is also the gradient of the residual z of ADD_RELU: the first pass writes it.
template <int GRAD, typename T, int V>
static __device__ __forceinline__ void store_residual_gradient(const bnk_grad_epilogue_args &e, int64_t offset,
                                                               int count, const float (&g)[V]) {
  if (GRAD != BNK_GRAD_PLAIN && e.dz != NULL) bnk_store_first<T, V>(static_cast<T *>(e.dz) + offset, count, g);
}

template <int GRAD, typename T, int V>
static __device__ __forceinline__ void store_residual_gradient(const bnk_grad_epilogue_args &e, int64_t offset,
                                                               const float (&g)[V]) {
  store_residual_gradient<GRAD, T, V>(e, offset, V, g);
}

// One element's terms of the two sums: dbeta's g and dgamma's g (x - mean), xmu = x - mean.
static __device__ __forceinline__ void add_gradient(float &sum_dy, float &sum_dy_xmu, float g, float xmu) {
  sum_dy += g;
  sum_dy_xmu = fmaf(g, xmu, sum_dy_xmu);
}

static __device__ __forceinline__ float channel_invstd(const bnk_backward_stats &stats, int64_t c) {
  return stats.invstd != NULL ? stats.invstd[c] : bnk_invstd_of(stats.variance[c], stats.eps);
}

// dbeta and dgamma of a channel, and the coefficients of its dx pass:
//   dx = k / M (M dy - dbeta - xhat dgamma) = k dy + (x - mean) (-k invstd dgamma / M) + (-k dbeta / M),
// with k = gamma invstd and xhat = (x - mean) invstd.
static __device__ __forceinline__ void store_gradients(int64_t channel, float channel_dbeta, float channel_dgamma,
                                                       float m, float invstd, const bnk_backward_stats &stats,
                                                       const bnk_backward_workspace &ws, float *dgamma, float *dbeta) {
  if (dbeta != NULL) dbeta[channel] = channel_dbeta;
  if (dgamma != NULL) dgamma[channel] = channel_dgamma;
  const float k = stats.gamma != NULL ? invstd * stats.gamma[channel] : invstd;
  const float k_over_m = k / m;
  ws.dy_scale[channel] = k;
  ws.xmu_scale[channel] = -k_over_m * invstd * channel_dgamma;
  ws.bias[channel] = -k_over_m * channel_dbeta;
}

// A thread's sums of the channel's pieces first, first + step, ... in order.
static __device__ __forceinline__ float2 merge_backward_pieces(int64_t channel, int64_t c, int64_t parts,
                                                               const bnk_backward_workspace &ws, int64_t first,
                                                               int64_t step) {
  float2 acc = make_float2(0.0f, 0.0f);
  for (int64_t p = first; p < parts; p += step) {
    const int64_t slot = p * c + channel;
    acc = bnk_combine(acc, make_float2(ws.sum_dy[slot], ws.sum_dy_xmu[slot]));
  }
  return acc;
}

// The sums [first, end) of a channel in arrays laid out [index][c] (the pieces, or the channels-last bands),
// added in order by one thread.
static __device__ __forceinline__ float2 merge_sum_pairs(const float *sum_dy, const float *sum_dy_xmu, int64_t channel,
                                                         int64_t c, int first, int end) {
  float2 acc = make_float2(0.0f, 0.0f);
  bnk_fold_in_order<float2>(
      acc, first, end,
      [&](int p) {
        const int64_t slot = (int64_t)p * c + channel;
        return make_float2(sum_dy[slot], sum_dy_xmu[slot]);
      },
      [](float2 &a, const float2 &b) { a = bnk_combine(a, b); });
  return acc;
}

// The channels-last merge of a channel's sums in a kernel of its own, in the order of the two levels of the
// merge inside the sums kernel (bnk_merge_tile_if_last), so to the same bits.
static __device__ __forceinline__ float2 merge_backward_bands_of(int64_t channel, int64_t c, int parts, int band_pieces,
                                                                 const bnk_backward_workspace &ws) {
  float2 acc = make_float2(0.0f, 0.0f);
  for (int first = 0; first < parts; first += band_pieces)
    acc =
        bnk_combine(acc, merge_sum_pairs(ws.sum_dy, ws.sum_dy_xmu, channel, c, first, min(parts, first + band_pieces)));
  return acc;
}

// The gradients of gamma and beta and the dx coefficients of a channel from its merged sums, by one thread.
static __device__ __forceinline__ void finish_backward_channel(int64_t channel, int64_t m, float2 acc,
                                                               const bnk_backward_stats &stats,
                                                               const bnk_backward_workspace &ws, float *dgamma,
                                                               float *dbeta) {
  const float invstd = channel_invstd(stats, channel);
  store_gradients(channel, acc.x, acc.y * invstd, (float)m, invstd, stats, ws, dgamma, dbeta);
}

// One warp merges channel's pieces (lane l takes pieces l, l + 32, ... in order, then a fixed tree across
// lanes); lane 0 stores the gradients of gamma and beta and the dx coefficients. Every lane of the warp
// calls it.
static __device__ __forceinline__ void merge_backward_channel(int64_t channel, int64_t c, int64_t parts, int64_t m,
                                                              const bnk_backward_stats &stats,
                                                              const bnk_backward_workspace &ws, float *dgamma,
                                                              float *dbeta) {
  const int lane = (int)(threadIdx.x % BNK_WARP);
  const float2 acc =
      bnk_warp_reduce(merge_backward_pieces(channel, c, parts, ws, lane, BNK_WARP), BNK_FULL_MASK, BNK_WARP);
  if (lane == 0) finish_backward_channel(channel, m, acc, stats, ws, dgamma, dbeta);
}

// What the dx pass needs; dy_scale is NULL for frozen statistics.
struct dx_params {
  bnk_backward_stats stats;
  const float *dy_scale;
  const float *xmu_scale;
  const float *bias;
};

// 16 bytes, one table entry of the channels-first walk.
struct dx_coefficients {
  float mean;
  float dy_scale;
  float xmu_scale;
  float bias;
};

// Once per run in the channels-first walk, once per thread and channel in the channels-last tiles.
static __device__ __forceinline__ dx_coefficients channel_dx(const dx_params &p, int64_t c) {
  dx_coefficients k;
  if (p.dy_scale != NULL) {
    k.mean = p.stats.mean[c];
    k.dy_scale = p.dy_scale[c];
    k.xmu_scale = p.xmu_scale[c];
    k.bias = p.bias[c];
  } else {
    const float invstd = channel_invstd(p.stats, c);
    k.mean = 0.0f;
    k.dy_scale = p.stats.gamma != NULL ? invstd * p.stats.gamma[c] : invstd;
    k.xmu_scale = 0.0f;
    k.bias = 0.0f;
  }
  return k;
}

// With frozen statistics x is 0 and so are xmu_scale and bias: the result is dy * dy_scale rounded once.
static __device__ __forceinline__ float apply_dx(float dy, float x, const dx_coefficients &k) {
  return fmaf(dy, k.dy_scale, fmaf(x - k.mean, k.xmu_scale, k.bias));
}
