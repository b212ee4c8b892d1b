// Per-channel batch statistics: mean and variance by shifted Welford, in two deterministic stages.
//
// Stage 1 cuts every channel into pieces (bnk_reduce_plan); a block reduces one piece and writes its
// Welford triple to the workspace. Stage 2 merges a channel's pieces in index order, then derives
// invstd, the saved statistics and the running statistics.
//
// Every value is accumulated as x - K, where K is the channel's first element: with a large common
// offset (mean 1e4, unit variance) the shifted values are small, so fp32 keeps their digits.
#include "kernels/reduce.cuh"

// Channels-first: block b reduces piece (b % parts) of channel (b / parts). The channel is n runs of s
// contiguous elements, run_stride = c * s apart; vector j of the channel is in run j / (s / V).
template <typename T, int V>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    stats_channels_first(const T *__restrict__ x, int64_t c, int64_t s, bnk_fastdiv vecs_per_run,
                         int64_t parts, int64_t chunk, int64_t m, bnk_stats_workspace ws,
                         int64_t *num_batches_tracked) {
  __shared__ bnk_welford shared[BNK_WARP];
  const int64_t block = blockIdx.x;
  const int64_t channel = block / parts;
  const int64_t part = block - channel * parts;
  const T *xc = x + channel * s;
  const float shift = bnk_to_float(xc[0]);
  if (threadIdx.x == 0) {
    if (part == 0) ws.shift[channel] = shift;
    if (block == 0 && num_batches_tracked != NULL) *num_batches_tracked += 1;
  }
  const int64_t run_stride = c * s;
  const int64_t begin = part * chunk / V;
  const int64_t end = min(m, (part + 1) * chunk) / V;
  const int64_t step = blockDim.x;
  bnk_welford_run run = bnk_run_empty();
  for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += BNK_UNROLL * step) {
    float v[BNK_UNROLL][V] = {};
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u) {
      const int64_t j = j0 + u * step;
      if (j < end) {
        const int64_t run = (int64_t)bnk_div((uint64_t)j, vecs_per_run);
        const int64_t within = j - run * (int64_t)vecs_per_run.divisor;
        bnk_load<T, V>(xc + run * run_stride + within * V, v[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u) {
      if (j0 + u * step < end) {
#pragma unroll
        for (int i = 0; i < V; ++i) v[u][i] -= shift;
        bnk_run_add(run, bnk_welford_of<V>(v[u]));
      }
    }
  }
  const bnk_welford acc = bnk_block_reduce(bnk_run_result(run), shared);
  if (threadIdx.x == 0) {
    const int64_t slot = part * c + channel;
    ws.count[slot] = acc.count;
    ws.mean[slot] = acc.mean;
    ws.m2[slot] = acc.m2;
  }
}

// Channels-last: x is rows of c contiguous channels. Block b covers tile (b % tiles) of tile_x * V
// channels over the rows of piece (b / tiles). Thread (tx, ty) owns V channels and walks rows ty,
// ty + tile_y, ...; consecutive threads read consecutive addresses. The block then merges its tile_y
// partial results per channel along a fixed tree in shared memory.
template <typename T, int V>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    stats_channels_last(const T *__restrict__ x, int64_t rows, int64_t c, int tile_x, int tile_y,
                        int64_t tiles, int64_t rows_per_part, bnk_stats_workspace ws,
                        int64_t *num_batches_tracked) {
  __shared__ float shared_count[BNK_STREAM_THREADS];
  __shared__ float shared_mean[BNK_STREAM_THREADS][V];
  __shared__ float shared_m2[BNK_STREAM_THREADS][V];
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tile_x, tiles, &part, &ty, &channel0);
  const bool active = channel0 < c;

  float shift[V] = {};
  if (active) bnk_load<T, V>(x + channel0, shift);
  if (active && part == 0 && ty == 0) {
#pragma unroll
    for (int i = 0; i < V; ++i) ws.shift[channel0 + i] = shift[i];
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && num_batches_tracked != NULL) *num_batches_tracked += 1;

  bnk_welford_run run[V];
#pragma unroll
  for (int i = 0; i < V; ++i) run[i] = bnk_run_empty();
  if (active) {
    const int64_t row_begin = part * rows_per_part;
    const int64_t row_end = min(rows, row_begin + rows_per_part);
    for (int64_t r0 = row_begin + ty; r0 < row_end; r0 += BNK_UNROLL * tile_y) {
      float v[BNK_UNROLL][V] = {};
#pragma unroll
      for (int u = 0; u < BNK_UNROLL; ++u) {
        const int64_t r = r0 + (int64_t)u * tile_y;
        if (r < row_end) bnk_load<T, V>(x + r * c + channel0, v[u]);
      }
#pragma unroll
      for (int u = 0; u < BNK_UNROLL; ++u) {
        if (r0 + (int64_t)u * tile_y < row_end) {
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const bnk_welford one = {1.0f, v[u][i] - shift[i], 0.0f};
            bnk_run_add(run[i], one);
          }
        }
      }
    }
  }

  const int slot = (int)threadIdx.x;
  shared_count[slot] = run[0].w.count; // every channel of a thread has seen the same rows
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const bnk_welford w = bnk_run_result(run[i]);
    shared_mean[slot][i] = w.mean;
    shared_m2[slot][i] = w.m2;
  }
  for (int stride = 1; stride < tile_y; stride *= 2) {
    __syncthreads();
    if (active && ty % (2 * stride) == 0 && ty + stride < tile_y) {
      const int other = slot + stride * tile_x;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        bnk_welford a = {shared_count[slot], shared_mean[slot][i], shared_m2[slot][i]};
        bnk_welford b = {shared_count[other], shared_mean[other][i], shared_m2[other][i]};
        bnk_welford r = bnk_combine(a, b);
        shared_mean[slot][i] = r.mean;
        shared_m2[slot][i] = r.m2;
      }
      shared_count[slot] += shared_count[other];
    }
  }
  if (active && ty == 0) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int64_t out = part * c + channel0 + i;
      ws.count[out] = shared_count[slot];
      ws.mean[out] = shared_mean[slot][i];
      ws.m2[out] = shared_m2[slot][i];
    }
  }
}

// Stage 2: one warp per channel merges the channel's pieces (lane l takes pieces l, l + 32, ... in order,
// then a fixed tree across lanes) and lane 0 derives everything per-channel.
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    finalize_stats(int64_t c, int64_t parts, int64_t m, bnk_stats_workspace ws, float eps,
                   bnk_running_update running, float *save_mean, float *save_invstd, double *rank_partials) {
  const int lane = (int)(threadIdx.x % BNK_WARP);
  const int64_t channel = (int64_t)blockIdx.x * (blockDim.x / BNK_WARP) + threadIdx.x / BNK_WARP;
  if (channel >= c) return; // the whole warp leaves together
  bnk_welford_run run = bnk_run_empty();
  for (int64_t p = lane; p < parts; p += BNK_WARP) {
    const int64_t slot = p * c + channel;
    const bnk_welford piece = {ws.count[slot], ws.mean[slot], ws.m2[slot]};
    bnk_run_add(run, piece);
  }
  const bnk_welford acc = bnk_warp_reduce(bnk_run_result(run), BNK_FULL_MASK, BNK_WARP);
  if (lane != 0) return;

  const float var = acc.m2 / (float)m;
  const float invstd = bnk_invstd_of(var, eps);
  const float mean = ws.shift[channel] + acc.mean;
  ws.dmean[channel] = acc.mean;
  ws.invstd[channel] = invstd;
  if (rank_partials != NULL) {
    // In double, the mean keeps K's digits and the residual's: ranks' means merge without rounding.
    rank_partials[channel] = (double)m;
    rank_partials[c + channel] = (double)ws.shift[channel] + (double)acc.mean;
    rank_partials[2 * c + channel] = (double)acc.m2;
  }
  if (save_mean != NULL) save_mean[channel] = mean;
  if (save_invstd != NULL) save_invstd[channel] = invstd;
  if (running.running_mean != NULL) {
    // The stats kernel, earlier on the stream, already counted this batch.
    const float weight = running.cumulative ? 1.0f / (float)*running.num_batches_tracked : running.momentum;
    const float unbiased_var = acc.m2 / (float)(m - 1);
    running.running_mean[channel] = (1.0f - weight) * running.running_mean[channel] + weight * mean;
    running.running_var[channel] = (1.0f - weight) * running.running_var[channel] + weight * unbiased_var;
  }
}

template <typename T>
static void launch_stats_pieces(const bnk_view *view, const bnk_reduce_plan *plan, const void *x_raw,
                                bnk_stats_workspace ws, int64_t *num_batches_tracked, cudaStream_t stream) {
  constexpr int W = bnk_vec_width<T>::value;
  const T *x = static_cast<const T *>(x_raw);
  const dim3 grid((unsigned)plan->blocks);
  const dim3 block((unsigned)plan->threads);
  if (view->channels_last) {
    auto kernel = plan->vec == W ? stats_channels_last<T, W> : stats_channels_last<T, 1>;
    BNK_LAUNCH(kernel, grid, block, 0, stream)(x, view->n, view->c, plan->tile_x, plan->tile_y, plan->tiles,
                                                plan->rows_per_part, ws, num_batches_tracked);
  } else {
    const bnk_fastdiv vecs_per_run = bnk_fastdiv_make((uint64_t)(view->s / plan->vec));
    auto kernel = plan->vec == W ? stats_channels_first<T, W> : stats_channels_first<T, 1>;
    BNK_LAUNCH(kernel, grid, block, 0, stream)(x, view->c, view->s, vecs_per_run, plan->parts, plan->chunk,
                                                view->n * view->s, ws, num_batches_tracked);
  }
}

extern "C" cudaError_t bnk_launch_batch_stats(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                              bnk_stats_workspace ws, float eps, bnk_running_update running,
                                              float *save_mean, float *save_invstd, double *rank_partials,
                                              cudaStream_t stream) {
  switch (view->dtype) {
  case BNK_FLOAT32: launch_stats_pieces<float>(view, plan, x, ws, running.num_batches_tracked, stream); break;
  case BNK_FLOAT16: launch_stats_pieces<__half>(view, plan, x, ws, running.num_batches_tracked, stream); break;
  case BNK_BFLOAT16:
    launch_stats_pieces<__nv_bfloat16>(view, plan, x, ws, running.num_batches_tracked, stream);
    break;
  default: return cudaErrorInvalidValue;
  }
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const int warps_per_block = BNK_STREAM_THREADS / BNK_WARP;
  const dim3 grid((unsigned)((view->c + warps_per_block - 1) / warps_per_block));
  BNK_LAUNCH(finalize_stats, grid, dim3(BNK_STREAM_THREADS), 0, stream)(
      view->c, plan->parts, view->n * view->s, ws, eps, running, save_mean, save_invstd, rank_partials);
  return cudaGetLastError();
}
