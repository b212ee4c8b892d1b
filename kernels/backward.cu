// The backward of batch normalization: one reduction over (x, dy) giving both per-channel sums, then one
// elementwise pass writing dx.
//
// The reduction uses the statistics' machinery (bnk_reduce_plan pieces, partials in the workspace, a
// merge in fixed order, by the last blocks of each group or by a kernel of its own), so dgamma and dbeta are
// bitwise reproducible. It accumulates dy * (x - mean)
// rather than dy * xhat: with the saved fp32 mean, x - mean is exact when |mean| >> std (Sterbenz), and
// invstd is applied once per channel in the merge instead of once per element.
//
// x is NULL when only dbeta is wanted of frozen statistics, and in the dx pass of frozen statistics. Its
// registers then keep their zero initial values, as does the mean beside them, so the absent tensor costs
// no branch in the arithmetic.
//
// Through a fused ReLU epilogue (template parameter GRAD, a bnk_grad_source), both passes read
// g = (y > 0 ? dy : 0) in place of dy, deciding from y or from the forward's bit mask. The first pass over
// the tensor also writes g to dz (the residual's gradient of ADD_RELU) when asked, and the host then hands
// dz to the dx pass as a plain dy: it is g already, and reading it costs less than dy and y again.
#include "kernels/dispatch.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/gradient.cuh"

// The merge of the backward sums in a kernel of its own, one warp per channel: the channels-first path without
// counters.
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    merge_backward_sums(int64_t c, int64_t parts, int64_t m, bnk_backward_stats stats, bnk_backward_workspace ws,
                        float *dgamma, float *dbeta) {
  const int64_t channel = (int64_t)blockIdx.x * (blockDim.x / BNK_WARP) + threadIdx.x / BNK_WARP;
  if (channel >= c) return;  // the whole warp leaves together
  merge_backward_channel(channel, c, parts, m, stats, ws, dgamma, dbeta);
}

// The channels-last path without counters: one thread per channel, in the order of the merge inside the sums
// kernel (merge_backward_bands_of).
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    merge_backward_sums_channels_last(int64_t c, int parts, int band_pieces, int64_t m, bnk_backward_stats stats,
                                      bnk_backward_workspace ws, float *dgamma, float *dbeta) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= c) return;
  finish_backward_channel(channel, m, merge_backward_bands_of(channel, c, parts, band_pieces, ws), stats, ws, dgamma,
                          dbeta);
}

// What the last blocks of a group need to merge it in the sums kernel (bnk_last_of_group); counters NULL:
// a merge kernel does it in a launch of its own.
struct sums_merge {
  unsigned *counters;  // [1 + g]: the groups' counters (bnk_merge_groups)
  int band_pieces;     // channels-last: bnk_merge_band_pieces and bnk_merge_bands of the plan's pieces
  int bands;
  int64_t m;
  bnk_backward_stats stats;
  float *dgamma;
  float *dbeta;
};

// Channels-first, called by every thread of a block after its partials are written: when it is the last block
// of the channel, merges the channel's pieces, one warp.
static __device__ __forceinline__ void merge_channel_sums_if_last(const sums_merge &merge,
                                                                  const bnk_backward_workspace &ws, int64_t c,
                                                                  int64_t parts, int64_t channel) {
  if (merge.counters == NULL || !bnk_last_of_group(merge.counters + 1 + channel, parts)) return;
  if (threadIdx.x < BNK_WARP)
    merge_backward_channel(channel, c, parts, merge.m, merge.stats, ws, merge.dgamma, merge.dbeta);
}

// Channels-last, called by every thread of a block after its partials are written: the two levels of the merge
// (bnk_merge_tile_if_last), a thread per channel of the tile (channels [first, end), at most the block's
// threads).
static __device__ __forceinline__ void merge_tile_sums_if_last(const sums_merge &merge,
                                                               const bnk_backward_workspace &ws, int64_t c,
                                                               int64_t tiles, int64_t first, int64_t end) {
  if (merge.counters == NULL) return;
  const int64_t tile = blockIdx.x % tiles;
  const int part = (int)(blockIdx.x / tiles), parts = (int)(gridDim.x / tiles);
  const int64_t channel = first + threadIdx.x;
  const bool mine = channel < end;
  bnk_merge_tile_if_last(
      merge.counters + 1 + tile * (merge.bands + 1), part, parts, merge.band_pieces, merge.bands,
      [&](int band, int band_first, int band_end) {
        if (!mine) return;
        const float2 sums = merge_sum_pairs(ws.sum_dy, ws.sum_dy_xmu, channel, c, band_first, band_end);
        const int64_t slot = (int64_t)band * c + channel;
        ws.band_sum_dy[slot] = sums.x;
        ws.band_sum_dy_xmu[slot] = sums.y;
      },
      [&]() {
        if (!mine) return;
        const float2 sums = merge_sum_pairs(ws.band_sum_dy, ws.band_sum_dy_xmu, channel, c, 0, merge.bands);
        finish_backward_channel(channel, merge.m, sums, merge.stats, ws, merge.dgamma, merge.dbeta);
      });
}

// Adds `count` vectors (at most BNK_UNROLL) at the element offsets given to a thread's L lanes of sums,
// writing dz on the way when the epilogue asks: element i of a vector goes to lane i % L, whose channel
// mean is mean[i % L]. L is V when the V elements are V channels (channels-last), 1 when they are one.
template <typename T, int V, int GRAD, int L>
static __device__ __forceinline__ void add_vectors(const T *x, const T *dy, const bnk_grad_epilogue_args &e,
                                                   const int64_t (&offsets)[BNK_UNROLL], int count,
                                                   const float (&mean)[L], bnk_sums_vec<L> &acc) {
  float vdy[BNK_UNROLL][V] = {}, vx[BNK_UNROLL][V] = {};
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u)
    if (u < count) load_gradient<GRAD, T, V>(x, dy, e, offsets[u], vdy[u], vx[u]);
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u) {
    if (u < count) {
      store_residual_gradient<GRAD, T, V>(e, offsets[u], vdy[u]);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        add_gradient(acc.dy[i % L], acc.dy_xmu[i % L], vdy[u][i], vx[u][i] - mean[i % L]);
      }
    }
  }
}

// Adds `count` vectors of a channels-first channel from the cursor's on, one step apart; leaves the
// cursor past them.
template <typename T, int V, int GRAD>
static __device__ __forceinline__ void add_run_vectors(const T *x, const T *dy, const bnk_grad_epilogue_args &e,
                                                       const bnk_run_walk &walk, bnk_run_cursor &cursor, int count,
                                                       const float (&mean)[1], bnk_sums_vec<1> &acc) {
  int64_t offsets[BNK_UNROLL] = {};
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u) {
    if (u < count) {
      offsets[u] = cursor.offset;
      bnk_run_cursor_step(cursor, walk);
    }
  }
  add_vectors<T, V, GRAD, 1>(x, dy, e, offsets, count, mean, acc);
}

// Channels-first: block b sums piece (b % parts) of channel (b / parts), its body vectors and peeled
// elements as stats_channels_first takes them.
template <typename T, int V, int GRAD>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    backward_sums_channels_first(const T *__restrict__ x, const T *__restrict__ dy, int64_t c, int64_t s,
                                 bnk_channel_runs runs, int64_t parts, const float *__restrict__ mean,
                                 bnk_backward_workspace ws, bnk_grad_epilogue_args e, sums_merge merge) {
  __shared__ float2 shared[BNK_WARP];
  const int64_t block = blockIdx.x;
  const int64_t channel = block / parts;
  const int64_t part = block - channel * parts;
  const int64_t channel_offset = channel * s;
  const float channel_mean[1] = {x != NULL ? mean[channel] : 0.0f};
  const bnk_run_split split = bnk_run_split_of<V>(runs, channel, s);
  const bnk_run_walk walk = bnk_body_walk(runs, split);
  const int64_t piece_vectors = split.kind == 0 ? runs.piece_vectors[0] : runs.piece_vectors[1];
  const int64_t first = part * piece_vectors + threadIdx.x;
  const int64_t end = min(runs.runs * split.body, (part + 1) * piece_vectors);
  const int step = (int)blockDim.x;
  // A piece is under 2^24 values, so the thread's count of vectors fits in 32 bits.
  const int vectors = first < end ? (int)((end - first + step - 1) / step) : 0;
  bnk_sums_vec<1> acc = bnk_sums_vec_empty<1>();
  bnk_run_cursor cursor = bnk_run_cursor_at<V>(walk, channel_offset + split.head, first);
  int done = 0;
  for (; done + BNK_UNROLL <= vectors; done += BNK_UNROLL)
    add_run_vectors<T, V, GRAD>(x, dy, e, walk, cursor, BNK_UNROLL, channel_mean, acc);
  if (done < vectors) add_run_vectors<T, V, GRAD>(x, dy, e, walk, cursor, vectors - done, channel_mean, acc);
  bnk_peel_walk<V>(
      runs, split, channel_offset, walk.run_stride, part * step + threadIdx.x, parts * step,
      [&](int, int64_t offset) {
        float g[1], vx[1] = {0.0f};
        load_gradient<GRAD, T, 1>(x, dy, e, offset, g, vx);
        store_residual_gradient<GRAD, T, 1>(e, offset, g);
        add_gradient(acc.dy[0], acc.dy_xmu[0], g[0], vx[0] - channel_mean[0]);
      },
      [] {});
  const float2 sums = bnk_block_reduce(make_float2(acc.dy[0], acc.dy_xmu[0]), shared);
  if (threadIdx.x == 0) {
    const int64_t slot = part * c + channel;
    ws.sum_dy[slot] = sums.x;
    ws.sum_dy_xmu[slot] = sums.y;
  }
  merge_channel_sums_if_last(merge, ws, c, parts, channel);
}

// Adds `rows` rows (at most BNK_UNROLL) of a channels-last thread's V channels, row u at element offset
// offset + u * stride.
template <typename T, int V, int GRAD>
static __device__ __forceinline__ void add_rows(const T *x, const T *dy, const bnk_grad_epilogue_args &e,
                                                int64_t offset, int64_t stride, int rows,
                                                const float (&channel_mean)[V], bnk_sums_vec<V> &acc) {
  int64_t offsets[BNK_UNROLL];
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u) offsets[u] = offset + u * stride;
  add_vectors<T, V, GRAD, V>(x, dy, e, offsets, rows, channel_mean, acc);
}

// Channels-last: the tiling of stats_channels_last. Thread (tx, ty) sums V channels over rows ty,
// ty + tile_y, ... of its piece; the block merges its tile_y partial sums per channel (bnk_tile_reduce).
template <typename T, int V, int GRAD>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    backward_sums_channels_last(const T *__restrict__ x, const T *__restrict__ dy, int64_t rows, int64_t c, int tile_x,
                                int tile_y, int64_t tiles, int64_t rows_per_part, const float *__restrict__ mean,
                                bnk_backward_workspace ws, bnk_grad_epilogue_args e, sums_merge merge) {
  typedef bnk_sums_vec<V> state;
  __shared__ float shared[bnk_fields<state>::count * BNK_STREAM_THREADS];
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tile_x, tiles, &part, &ty, &channel0);
  const bool active = channel0 < c;

  float channel_mean[V];
#pragma unroll
  for (int i = 0; i < V; ++i) channel_mean[i] = active && x != NULL ? mean[channel0 + i] : 0.0f;
  state acc = bnk_sums_vec_empty<V>();
  if (active) {
    const int64_t row_end = min(rows, (part + 1) * rows_per_part);
    const int64_t stride = (int64_t)tile_y * c;
    int64_t r = part * rows_per_part + ty;
    int64_t offset = r * c + channel0;
    for (; r + (BNK_UNROLL - 1) * tile_y < row_end; r += BNK_UNROLL * tile_y, offset += BNK_UNROLL * stride)
      add_rows<T, V, GRAD>(x, dy, e, offset, stride, BNK_UNROLL, channel_mean, acc);
    if (r < row_end)
      add_rows<T, V, GRAD>(x, dy, e, offset, stride, (int)((row_end - r + tile_y - 1) / tile_y), channel_mean, acc);
  }

  acc = bnk_tile_reduce(acc, shared, tile_x, tile_y);
  if (active && (int)threadIdx.x < tile_x) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int64_t out = part * c + channel0 + i;
      ws.sum_dy[out] = acc.dy[i];
      ws.sum_dy_xmu[out] = acc.dy_xmu[i];
    }
  }
  const int64_t first = (int64_t)(blockIdx.x % tiles) * tile_x * V;
  merge_tile_sums_if_last(merge, ws, c, tiles, first, min(c, first + tile_x * V));
}

// Synchronized backward: `sums` holds the sums of every rank added up (sum dy, then sum dy * xhat, C each,
// then the total count M); one thread per channel derives what merge_backward_sums derives locally.
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    gradients_from_sums(int64_t c, const float *sums, bnk_backward_stats stats, bnk_backward_workspace ws,
                        float *dgamma, float *dbeta) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= c) return;
  store_gradients(channel, sums[channel], sums[c + channel], sums[2 * c], channel_invstd(stats, channel), stats, ws,
                  dgamma, dbeta);
}

// Channels-first: the flat walk (kernels/elementwise.cuh) with each run's coefficients in the block's
// table. x is NULL for frozen statistics. dx may be dy: plain coherent accesses, each element read by the
// thread that writes it. Through an epilogue, dx may be NULL when only dz is wanted.
template <typename T, int V, int GRAD>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    backward_dx_channels_first(const T *x, const T *dy, T *dx, bnk_elementwise_plan plan, int64_t c, int64_t s,
                               dx_params p, bnk_grad_epilogue_args e) {
  BNK_DYNAMIC_SHARED(dx_coefficients, table);
  const bnk_flat_start start =
      bnk_flat_begin<V>(plan, c, s, table, [&](int64_t channel) { return channel_dx(p, channel); });
  float vdy[BNK_UNROLL][V] = {}, vx[BNK_UNROLL][V] = {};
  bnk_flat_walk<V>(
      plan, start,
      [&](int u, int64_t element, int count) { load_gradient<GRAD, T, V>(x, dy, e, element, count, vdy[u], vx[u]); },
      [&](int u, int64_t element, int count, const bnk_flat_cursor &cursor) {
        if (count == 0) return;
        store_residual_gradient<GRAD, T, V>(e, element, count, vdy[u]);
        bnk_apply_runs(vdy[u], vx[u], count, cursor, table, plan.run_length, apply_dx);
        if (GRAD == BNK_GRAD_PLAIN || dx != NULL) bnk_store_first<T, V>(dx + element, count, vdy[u]);
      });
}

// Channels-last: the tiling of bnk_reduce_plan, each thread's V channels' coefficients in registers.
template <typename T, int V, int GRAD>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, BNK_MIN_RESIDENT_BLOCKS)
    backward_dx_channels_last(const T *x, const T *dy, T *dx, bnk_elementwise_plan plan, int64_t rows, int64_t c,
                              dx_params p, bnk_grad_epilogue_args e) {
  const bnk_reduce_plan &tiling = plan.tiling;
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tiling.tile_x, tiling.tiles, &part, &ty, &channel0);
  if (channel0 >= c) return;
  dx_coefficients k[V];
#pragma unroll
  for (int i = 0; i < V; ++i) k[i] = channel_dx(p, channel0 + i);
  const int64_t row_begin = part * tiling.rows_per_part;
  const int64_t row_end = min(rows, row_begin + tiling.rows_per_part);
  constexpr int U = bnk_tile_unroll<V, GRAD != BNK_GRAD_PLAIN>::value;
  float vdy[U][V] = {}, vx[U][V] = {};
  bnk_walk<U>(
      row_begin + ty, row_end, (int64_t)tiling.tile_y,
      [&](int u, int64_t r) { load_gradient<GRAD, T, V>(x, dy, e, r * c + channel0, vdy[u], vx[u]); },
      [&](int u, int64_t r) {
        const int64_t element = r * c + channel0;
        store_residual_gradient<GRAD, T, V>(e, element, vdy[u]);
#pragma unroll
        for (int j = 0; j < V; ++j) vdy[u][j] = apply_dx(vdy[u][j], vx[u][j], k[j]);
        if (GRAD == BNK_GRAD_PLAIN || dx != NULL) bnk_store<T, V>(dx + element, vdy[u]);
      });
}

template <typename T, int V, int GRAD>
static void launch_sums_typed(const bnk_view *view, const bnk_reduce_plan *plan, const T *x, const T *dy,
                              const float *mean, bnk_backward_workspace ws, const bnk_grad_epilogue_args &e,
                              const sums_merge &merge, cudaStream_t stream) {
  const dim3 grid((unsigned)plan->blocks);
  const dim3 block((unsigned)plan->threads);
  if (view->channels_last) {
    auto kernel = backward_sums_channels_last<T, V, GRAD>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, dy, view->n, view->c, plan->tile_x, plan->tile_y, plan->tiles,
               plan->rows_per_part, mean, ws, e, merge);
  } else {
    const bnk_channel_runs runs = bnk_channel_runs_make(view->n, view->c, view->s, V, plan->threads, plan->parts);
    auto kernel = backward_sums_channels_first<T, V, GRAD>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, dy, view->c, view->s, runs, plan->parts, mean, ws, e, merge);
  }
}

template <typename T, int V>
static void launch_sums_source(const bnk_view *view, const bnk_reduce_plan *plan, const T *x, const T *dy,
                               const float *mean, bnk_backward_workspace ws, const bnk_grad_epilogue_args &e,
                               const sums_merge &merge, cudaStream_t stream) {
  switch (e.source) {
  case BNK_GRAD_FROM_Y:
    launch_sums_typed<T, V, BNK_GRAD_FROM_Y>(view, plan, x, dy, mean, ws, e, merge, stream);
    break;
  case BNK_GRAD_FROM_MASK:
    launch_sums_typed<T, V, BNK_GRAD_FROM_MASK>(view, plan, x, dy, mean, ws, e, merge, stream);
    break;
  default:
    launch_sums_typed<T, V, BNK_GRAD_PLAIN>(view, plan, x, dy, mean, ws, e, merge, stream);
    break;
  }
}

template <typename T>
static void launch_sums(const bnk_view *view, const bnk_reduce_plan *plan, const void *x_raw, const void *dy_raw,
                        const float *mean, bnk_backward_workspace ws, const bnk_grad_epilogue_args &e,
                        const sums_merge &merge, cudaStream_t stream) {
  constexpr int W = bnk_vec_width<T>::value;
  const T *x = static_cast<const T *>(x_raw);
  const T *dy = static_cast<const T *>(dy_raw);
  if (plan->vec == W) launch_sums_source<T, W>(view, plan, x, dy, mean, ws, e, merge, stream);
  else launch_sums_source<T, 1>(view, plan, x, dy, mean, ws, e, merge, stream);
}

static const bnk_grad_epilogue_args plain_gradient = {BNK_GRAD_PLAIN, NULL, NULL, NULL};

extern "C" cudaError_t bnk__launch_backward_reduce(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                                   const void *dy, bnk_backward_stats stats, bnk_backward_workspace ws,
                                                   float *dgamma, float *dbeta, unsigned *counters,
                                                   cudaStream_t stream) {
  return bnk__launch_backward_reduce_ex(view, plan, x, dy, stats, ws, dgamma, dbeta, NULL, counters, stream);
}

extern "C" cudaError_t bnk__launch_backward_reduce_ex(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                                      const void *dy, bnk_backward_stats stats,
                                                      bnk_backward_workspace ws, float *dgamma, float *dbeta,
                                                      const bnk_grad_epilogue_args *epilogue, unsigned *counters,
                                                      cudaStream_t stream) {
  const bnk_grad_epilogue_args &e = epilogue != NULL ? *epilogue : plain_gradient;
  const int64_t m = view->n * view->s;
  const int band_pieces = (int)bnk_merge_band_pieces(plan->parts);
  const sums_merge merge = {counters, band_pieces, (int)bnk_merge_bands(plan->parts), m, stats, dgamma, dbeta};
  switch (view->dtype) {
  case BNK_FLOAT32:
    launch_sums<float>(view, plan, x, dy, stats.mean, ws, e, merge, stream);
    break;
  case BNK_FLOAT16:
    launch_sums<__half>(view, plan, x, dy, stats.mean, ws, e, merge, stream);
    break;
  case BNK_BFLOAT16:
    launch_sums<__nv_bfloat16>(view, plan, x, dy, stats.mean, ws, e, merge, stream);
    break;
  default:
    return cudaErrorInvalidValue;
  }
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || counters != NULL) return status;
  if (view->channels_last) {
    const dim3 grid((unsigned)((view->c + BNK_STREAM_THREADS - 1) / BNK_STREAM_THREADS));
    BNK_LAUNCH(merge_backward_sums_channels_last, grid, dim3(BNK_STREAM_THREADS), 0, stream, view->c, (int)plan->parts,
               band_pieces, m, stats, ws, dgamma, dbeta);
    return cudaGetLastError();
  }
  const int warps_per_block = BNK_STREAM_THREADS / BNK_WARP;
  const dim3 grid((unsigned)((view->c + warps_per_block - 1) / warps_per_block));
  BNK_LAUNCH(merge_backward_sums, grid, dim3(BNK_STREAM_THREADS), 0, stream, view->c, plan->parts, m, stats, ws, dgamma,
             dbeta);
  return cudaGetLastError();
}

template <typename T, int V, int GRAD>
static void launch_dx_typed(const bnk_view *view, const bnk_elementwise_plan &plan, const T *x, const T *dy, T *dx,
                            const dx_params &p, const bnk_grad_epilogue_args &e, cudaStream_t stream) {
  const dim3 grid((unsigned)plan.blocks), block((unsigned)plan.threads);
  if (view->channels_last) {
    auto kernel = backward_dx_channels_last<T, V, GRAD>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, dy, dx, plan, view->n, view->c, p, e);
  } else {
    auto kernel = backward_dx_channels_first<T, V, GRAD>;
    const size_t table_bytes = (size_t)plan.table_runs * sizeof(dx_coefficients);
    BNK_LAUNCH(kernel, grid, block, table_bytes, stream, x, dy, dx, plan, view->c, view->s, p, e);
  }
}

extern "C" cudaError_t bnk__launch_backward_dx(const bnk_view *view, const bnk_elementwise_plan *plan, const void *x,
                                               const void *dy, void *dx, bnk_backward_stats stats,
                                               const bnk_backward_workspace *coefficients, cudaStream_t stream) {
  return bnk__launch_backward_dx_ex(view, plan, x, dy, dx, stats, coefficients, NULL, stream);
}

extern "C" cudaError_t bnk__launch_backward_dx_ex(const bnk_view *view, const bnk_elementwise_plan *plan, const void *x,
                                                  const void *dy, void *dx, bnk_backward_stats stats,
                                                  const bnk_backward_workspace *coefficients,
                                                  const bnk_grad_epilogue_args *epilogue, cudaStream_t stream) {
  const bnk_grad_epilogue_args &e = epilogue != NULL ? *epilogue : plain_gradient;
  dx_params p;
  p.stats = stats;
  p.dy_scale = coefficients != NULL ? coefficients->dy_scale : NULL;
  p.xmu_scale = coefficients != NULL ? coefficients->xmu_scale : NULL;
  p.bias = coefficients != NULL ? coefficients->bias : NULL;
  const cudaError_t status = bnk_dispatch<BNK_GRAD_PLAIN, BNK_GRAD_FROM_Y, BNK_GRAD_FROM_MASK>(
      view->dtype, plan->vec, e.source, [&](auto type, auto vec, auto source) {
        using T = typename decltype(type)::type;
        launch_dx_typed<T, decltype(vec)::value, decltype(source)::value>(
            view, *plan, static_cast<const T *>(x), static_cast<const T *>(dy), static_cast<T *>(dx), p, e, stream);
      });
  return status != cudaSuccess ? status : cudaGetLastError();
}

extern "C" cudaError_t bnk__launch_backward_gradients_from_sums(int64_t c, const float *sums, bnk_backward_stats stats,
                                                                bnk_backward_workspace ws, float *dgamma, float *dbeta,
                                                                cudaStream_t stream) {
  const dim3 grid((unsigned)((c + BNK_STREAM_THREADS - 1) / BNK_STREAM_THREADS));
  BNK_LAUNCH(gradients_from_sums, grid, dim3(BNK_STREAM_THREADS), 0, stream, c, sums, stats, ws, dgamma, dbeta);
  return cudaGetLastError();
}

// The channels-first dx pass's run table is at most BNK_TABLE_MAX(V) entries (BNK_TABLE_TARGET but for the
// tiniest S, where one tile touches more runs): residency is taken at that most.
extern "C" cudaError_t bnk__backward_occupancy(bnk_occupancy_table *table) {
  return bnk_for_each_storage([&](auto type, auto width, int dtype, int wide) {
    using T = typename decltype(type)::type;
    constexpr int V = decltype(width)::value;
    return bnk_for_each_value<BNK_GRAD_PLAIN, BNK_GRAD_FROM_Y, BNK_GRAD_FROM_MASK>([&](auto source) {
      constexpr int GRAD = decltype(source)::value;
      int(&sums)[2][3][2][BNK_OCCUPANCY_VARIANTS] = table->blocks_per_sm[BNK_FAMILY_BACKWARD_SUMS];
      int(&dx)[2][3][2][BNK_OCCUPANCY_VARIANTS] = table->blocks_per_sm[BNK_FAMILY_DX];
      const size_t table_bytes = (size_t)BNK_TABLE_MAX(V) * sizeof(dx_coefficients);
      cudaError_t status = bnk_occupancy(backward_sums_channels_first<T, V, GRAD>, 0, &sums[0][dtype][wide][GRAD]);
      if (status == cudaSuccess)
        status = bnk_occupancy(backward_sums_channels_last<T, V, GRAD>, 0, &sums[1][dtype][wide][GRAD]);
      if (status == cudaSuccess)
        status = bnk_occupancy(backward_dx_channels_first<T, V, GRAD>, table_bytes, &dx[0][dtype][wide][GRAD]);
      if (status == cudaSuccess)
        status = bnk_occupancy(backward_dx_channels_last<T, V, GRAD>, 0, &dx[1][dtype][wide][GRAD]);
      return status;
    });
  });
}
