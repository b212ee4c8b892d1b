// Per-channel batch statistics: mean and variance by shifted Welford, in two deterministic stages.
//
// Stage 1 cuts every channel into pieces (bnk_reduce_plan); a block reduces one piece and writes its
// Welford triple to the workspace. Stage 2 merges a channel's pieces in a fixed order, then derives
// invstd, the saved statistics and the running statistics. Stage 2 runs in the same launch when the
// context's counters cover the call's groups (bnk_merge_groups): in the last block of a channel to finish
// (channels-first), or in two levels, the last block of each band of a tile's pieces, then the last of the
// tile's bands (channels-last, bnk_merge_tile_if_last); else in a kernel of its own (finalize_stats,
// finalize_stats_channels_last), which merges the same pieces in the same order, so to the same bits.
//
// Every value is accumulated as x - K, where K is the channel's first element: with a large common
// offset (mean 1e4, unit variance) the shifted values are small, so fp32 keeps their digits.
#include "kernels/batch_stats.cuh"
#include "kernels/dispatch.cuh"

// What the last block of a group needs to merge it in the statistics kernel. counters NULL: finalize_stats
// merges in a launch of its own, and block 0 counts the batch first.
struct stats_merge {
  unsigned *counters;  // [0]: groups merged so far in this call; then the groups' (bnk_merge_groups)
  int64_t groups;      // channels (channels-first) or tiles (channels-last): merges that finish channels
  int band_pieces;     // channels-last: bnk_merge_band_pieces and bnk_merge_bands of the plan's pieces
  int bands;
  int64_t m;
  float eps;
  bnk_running_update running;
  float *save_mean;
  float *save_invstd;
  double *rank_partials;
};

// The batch is counted after every group has merged (below), so a merge sees the count before it: the
// cumulative weight 1 / num_batches_tracked of finalize_stats, which runs after the count, is here
// 1 / (count + 1), handed on as a momentum.
static __device__ __forceinline__ bnk_running_update running_before_count(bnk_running_update running) {
  const bool weighed_by_count = running.running_mean != NULL && running.cumulative;
  const float weight = weighed_by_count ? 1.0f / (float)bnk_next_count(*running.num_batches_tracked) : running.momentum;
  running.momentum = weight;
  running.cumulative = 0;
  return running;
}

// After a group's channels are finished: the last group to be merged counts the batch, which no merge
// reads after that.
static __device__ __forceinline__ void count_if_last_group(const stats_merge &merge) {
  if (bnk_last_of_group(merge.counters, merge.groups) && threadIdx.x == 0 && merge.running.num_batches_tracked != NULL)
    *merge.running.num_batches_tracked = bnk_next_count(*merge.running.num_batches_tracked);
}

// Channels-first, called by every thread of a block after its partials are written: when it is the last block
// of the channel, merges the channel's pieces, one warp (the others have none to merge).
static __device__ __forceinline__ void merge_channel_if_last(const stats_merge &merge, const bnk_stats_workspace &ws,
                                                             int64_t c, int64_t parts, int64_t channel) {
  if (!bnk_last_of_group(merge.counters + 1 + channel, parts)) return;
  if (threadIdx.x < BNK_WARP)
    bnk_finalize_channel(channel, c, parts, merge.m, ws, merge.eps, running_before_count(merge.running),
                         merge.save_mean, merge.save_invstd, merge.rank_partials);
  count_if_last_group(merge);
}

// Channels-last, called by every thread of a block after its partials are written: the two levels of the
// merge (bnk_merge_tile_if_last), a thread per channel of the tile (channels [first, end), at most the
// block's threads).
static __device__ __forceinline__ void merge_tile_if_last(const stats_merge &merge, const bnk_stats_workspace &ws,
                                                          int64_t c, int64_t tiles, int64_t first, int64_t end) {
  const int64_t tile = blockIdx.x % tiles;
  const int part = (int)(blockIdx.x / tiles), parts = (int)(gridDim.x / tiles);
  const int64_t channel = first + threadIdx.x;
  const bool mine = channel < end;
  const bool finished = bnk_merge_tile_if_last(
      merge.counters + 1 + tile * (merge.bands + 1), part, parts, merge.band_pieces, merge.bands,
      [&](int band, int band_first, int band_end) {
        if (!mine) return;
        const bnk_welford w = bnk_merge_triples(ws.count, ws.mean, ws.m2, channel, c, band_first, band_end);
        const int64_t slot = (int64_t)band * c + channel;
        ws.band_count[slot] = w.count;
        ws.band_mean[slot] = w.mean;
        ws.band_m2[slot] = w.m2;
      },
      [&]() {
        if (!mine) return;
        const bnk_welford acc = bnk_merge_triples(ws.band_count, ws.band_mean, ws.band_m2, channel, c, 0, merge.bands);
        bnk_finish_channel(channel, c, merge.m, acc, ws, merge.eps, running_before_count(merge.running),
                           merge.save_mean, merge.save_invstd, merge.rank_partials);
      });
  if (finished) count_if_last_group(merge);
}

// Folds `vectors` vectors (at most BNK_UNROLL) of a channel into the run, from the cursor's on, one
// step apart: one triple of all their values, one division. Leaves the cursor past them.
template <typename T, int V>
static __device__ __forceinline__ void fold_vectors(const T *x, const bnk_run_walk &walk, bnk_run_cursor &cursor,
                                                    int vectors, float shift, bnk_welford_run &run) {
  float v[BNK_UNROLL][V] = {};
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u) {
    if (u < vectors) {
      bnk_load<T, V>(x + cursor.offset, v[u]);
      bnk_run_cursor_step(cursor, walk);
    }
  }
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u)
#pragma unroll
    for (int i = 0; i < V; ++i) v[u][i] -= shift;
  bnk_run_add(run, bnk_welford_of<BNK_UNROLL, V>(v, vectors));
}

// Folds the peeled elements of the thread's runs (bnk_peel_walk) into its run, one triple per run.
template <typename T, int V>
static __device__ __forceinline__ void fold_peeled(const T *x, const bnk_channel_runs &runs, const bnk_run_split &split,
                                                   int64_t channel_offset, int64_t run_stride, int64_t first,
                                                   int64_t step, float shift, bnk_welford_run &run) {
  if (V == 1 || split.head + split.tail == 0) return;
  const float count = (float)(split.head + split.tail);
  const float inv_count = 1.0f / count;
  float v[2 * V - 1] = {};
  bnk_peel_walk<V>(
      runs, split, channel_offset, run_stride, first, step,
      [&](int slot, int64_t offset) { v[slot] = bnk_to_float(x[offset]) - shift; },
      [&]() {
        bnk_welford w;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 2 * V - 2; ++j)
          if (bnk_peeled_slot<V>(split, j)) sum += v[j];
        w.count = count;
        w.mean = sum * inv_count;
        w.m2 = 0.0f;
#pragma unroll
        for (int j = 0; j < 2 * V - 2; ++j) {
          const float d = v[j] - w.mean;
          if (bnk_peeled_slot<V>(split, j)) w.m2 = fmaf(d, d, w.m2);
        }
        bnk_run_add(run, w);
      });
}

// Channels-first: block b reduces piece (b % parts) of channel (b / parts): its share of the channel's
// body vectors (bnk_channel_runs), thread t taking vectors t, t + threads, ..., and its share of the peeled
// elements, one run per thread.
template <typename T, int V>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    stats_channels_first(const T *__restrict__ x, int64_t c, int64_t s, bnk_channel_runs runs, int64_t parts,
                         bnk_stats_workspace ws, stats_merge merge) {
  __shared__ bnk_welford shared[BNK_WARP];
  const int64_t block = blockIdx.x;
  const int64_t channel = block / parts;
  const int64_t part = block - channel * parts;
  const int64_t channel_offset = channel * s;
  const float shift = bnk_to_float(x[channel_offset]);
  if (threadIdx.x == 0) {
    if (part == 0) ws.shift[channel] = shift;
    if (block == 0 && merge.counters == NULL && merge.running.num_batches_tracked != NULL)
      *merge.running.num_batches_tracked = bnk_next_count(*merge.running.num_batches_tracked);
  }
  const bnk_run_split split = bnk_run_split_of<V>(runs, channel, s);
  const bnk_run_walk walk = bnk_body_walk(runs, split);
  const int64_t piece_vectors = split.kind == 0 ? runs.piece_vectors[0] : runs.piece_vectors[1];
  const int64_t first = part * piece_vectors + threadIdx.x;
  const int64_t end = min(runs.runs * split.body, (part + 1) * piece_vectors);
  const int step = (int)blockDim.x;
  // A piece is under 2^24 values, so the thread's count of vectors fits in 32 bits.
  const int vectors = first < end ? (int)((end - first + step - 1) / step) : 0;
  bnk_welford_run run = bnk_run_empty();
  bnk_run_cursor cursor = bnk_run_cursor_at<V>(walk, channel_offset + split.head, first);
  int done = 0;
  for (; done + BNK_UNROLL <= vectors; done += BNK_UNROLL) fold_vectors<T, V>(x, walk, cursor, BNK_UNROLL, shift, run);
  if (done < vectors) fold_vectors<T, V>(x, walk, cursor, vectors - done, shift, run);
  fold_peeled<T, V>(x, runs, split, channel_offset, walk.run_stride, part * step + threadIdx.x, parts * step, shift,
                    run);
  const bnk_welford acc = bnk_block_reduce(bnk_run_result(run), shared);
  if (threadIdx.x == 0) {
    const int64_t slot = part * c + channel;
    ws.count[slot] = acc.count;
    ws.mean[slot] = acc.mean;
    ws.m2[slot] = acc.m2;
  }
  if (merge.counters != NULL) merge_channel_if_last(merge, ws, c, parts, channel);
}

// The chunk of `rows` rows (1 to BNK_UNROLL) of a thread's V channels at p, p + stride, ...: 16-bit values as
// loaded, which sum exactly within a chunk (bnk_run_add_chunk then shifts the chunk's mean only), fp32 values less
// the shift.
template <typename T, int V>
static __device__ __forceinline__ bnk_welford_vec<V> load_chunk(const T *p, int64_t stride, int rows,
                                                                const float (&shift)[V]) {
  float v[BNK_UNROLL][V] = {};
#pragma unroll
  for (int u = 0; u < BNK_UNROLL; ++u)
    if (u < rows) bnk_load<T, V>(p + u * stride, v[u]);
  if constexpr (sizeof(T) != 2) {
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u)
#pragma unroll
      for (int i = 0; i < V; ++i) v[u][i] -= shift[i];
  }
  return bnk_chunk_of_rows<BNK_UNROLL, V>(v, rows);
}

// Channels-last: x is rows of c contiguous channels. Block b covers tile (b % tiles) of tile_x * V
// channels over the rows of piece (b / tiles). Thread (tx, ty) owns V channels and walks rows ty,
// ty + tile_y, ...; consecutive threads read consecutive addresses. 2 x BNK_UNROLL rows at a time go into
// its run with one division for all of them and all V channels; the block then merges its tile_y runs per
// channel (bnk_tile_reduce). Four resident blocks except for the 16-bit 8-wide kernels, whose run state allows
// two: without the bound the merge inside takes the register count past 64, and ptxas fits it there without
// spills (sass_budget.json checks that).
template <typename T, int V>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, V == 8 ? 2 : 4)
    stats_channels_last(const T *__restrict__ x, int64_t rows, int64_t c, int tile_x, int tile_y, int64_t tiles,
                        int64_t rows_per_part, bnk_stats_workspace ws, stats_merge merge) {
  typedef bnk_welford_vec<V> state;
  __shared__ float shared[bnk_fields<state>::count * BNK_STREAM_THREADS];
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
  if (blockIdx.x == 0 && threadIdx.x == 0 && merge.counters == NULL && merge.running.num_batches_tracked != NULL)
    *merge.running.num_batches_tracked = bnk_next_count(*merge.running.num_batches_tracked);

  bnk_welford_vec_run<V> run = bnk_run_vec_empty<V>();
  if (active) {
    const int64_t row_end = min(rows, (part + 1) * rows_per_part);
    const int64_t stride = (int64_t)tile_y * c;
    int64_t r = part * rows_per_part + ty;
    const T *p = x + r * c + channel0;
    const float *chunk_shift = sizeof(T) == 2 ? shift : NULL;  // load_chunk shifted fp32 values itself
    // Two chunks a step, paired before the run takes them: one division and one compensated merge per
    // 2 BNK_UNROLL rows, and 2 BNK_UNROLL loads in flight.
    constexpr int STEP = 2 * BNK_UNROLL;
    for (; r + (STEP - 1) * tile_y < row_end; r += STEP * tile_y, p += STEP * stride) {
      const bnk_welford_vec<V> first = load_chunk<T, V>(p, stride, BNK_UNROLL, shift);
      const bnk_welford_vec<V> second = load_chunk<T, V>(p + BNK_UNROLL * stride, stride, BNK_UNROLL, shift);
      bnk_run_add_chunk(run, bnk_chunk_pair(first, second), chunk_shift);
    }
    for (; r < row_end; r += BNK_UNROLL * tile_y, p += BNK_UNROLL * stride) {
      const int left = (int)min((int64_t)BNK_UNROLL, (row_end - r + tile_y - 1) / tile_y);
      bnk_run_add_chunk(run, load_chunk<T, V>(p, stride, left, shift), chunk_shift);
    }
  }

  const state acc = bnk_tile_reduce(bnk_run_result(run), shared, tile_x, tile_y);
  if (active && (int)threadIdx.x < tile_x) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int64_t out = part * c + channel0 + i;
      ws.count[out] = acc.count;
      ws.mean[out] = acc.mean[i];
      ws.m2[out] = acc.m2[i];
    }
  }
  if (merge.counters != NULL) {
    const int64_t first = (int64_t)(blockIdx.x % tiles) * tile_x * V;
    merge_tile_if_last(merge, ws, c, tiles, first, min(c, first + tile_x * V));
  }
}

// Stage 2: one warp per channel merges the channel's pieces and derives everything per-channel
// (bnk_finalize_channel, batch_stats.cuh).
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    finalize_stats(int64_t c, int64_t parts, int64_t m, bnk_stats_workspace ws, float eps, bnk_running_update running,
                   float *save_mean, float *save_invstd, double *rank_partials) {
  const int64_t channel = (int64_t)blockIdx.x * (blockDim.x / BNK_WARP) + threadIdx.x / BNK_WARP;
  if (channel >= c) return;  // the whole warp leaves together
  bnk_finalize_channel(channel, c, parts, m, ws, eps, running, save_mean, save_invstd, rank_partials);
}

// Stage 2 channels-last: one thread per channel merges the channel's pieces in the order of the merge inside the
// statistics kernel (bnk_merge_bands_of) and derives everything per-channel.
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    finalize_stats_channels_last(int64_t c, int parts, int band_pieces, int64_t m, bnk_stats_workspace ws, float eps,
                                 bnk_running_update running, float *save_mean, float *save_invstd,
                                 double *rank_partials) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= c) return;
  bnk_finish_channel(channel, c, m, bnk_merge_bands_of(channel, c, parts, band_pieces, ws), ws, eps, running, save_mean,
                     save_invstd, rank_partials);
}

template <typename T>
static void launch_stats_pieces(const bnk_view *view, const bnk_reduce_plan *plan, const void *x_raw,
                                bnk_stats_workspace ws, const stats_merge &merge, cudaStream_t stream) {
  constexpr int W = bnk_vec_width<T>::value;
  const T *x = static_cast<const T *>(x_raw);
  const dim3 grid((unsigned)plan->blocks);
  const dim3 block((unsigned)plan->threads);
  if (view->channels_last) {
    auto kernel = plan->vec == W ? stats_channels_last<T, W> : stats_channels_last<T, 1>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, view->n, view->c, plan->tile_x, plan->tile_y, plan->tiles,
               plan->rows_per_part, ws, merge);
  } else {
    const bnk_channel_runs runs =
        bnk_channel_runs_make(view->n, view->c, view->s, plan->vec, plan->threads, plan->parts);
    auto kernel = plan->vec == W ? stats_channels_first<T, W> : stats_channels_first<T, 1>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, view->c, view->s, runs, plan->parts, ws, merge);
  }
}

extern "C" cudaError_t bnk__launch_batch_stats(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                               bnk_stats_workspace ws, float eps, bnk_running_update running,
                                               float *save_mean, float *save_invstd, double *rank_partials,
                                               unsigned *counters, cudaStream_t stream) {
  const int64_t m = view->n * view->s;
  const int band_pieces = (int)bnk_merge_band_pieces(plan->parts);
  const stats_merge merge = {counters,    view->channels_last ? plan->tiles : view->c,
                             band_pieces, (int)bnk_merge_bands(plan->parts),
                             m,           eps,
                             running,     save_mean,
                             save_invstd, rank_partials};
  switch (view->dtype) {
  case BNK_FLOAT32:
    launch_stats_pieces<float>(view, plan, x, ws, merge, stream);
    break;
  case BNK_FLOAT16:
    launch_stats_pieces<__half>(view, plan, x, ws, merge, stream);
    break;
  case BNK_BFLOAT16:
    launch_stats_pieces<__nv_bfloat16>(view, plan, x, ws, merge, stream);
    break;
  default:
    return cudaErrorInvalidValue;
  }
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || counters != NULL) return status;
  if (view->channels_last) {
    const dim3 grid((unsigned)((view->c + BNK_STREAM_THREADS - 1) / BNK_STREAM_THREADS));
    BNK_LAUNCH(finalize_stats_channels_last, grid, dim3(BNK_STREAM_THREADS), 0, stream, view->c, (int)plan->parts,
               band_pieces, m, ws, eps, running, save_mean, save_invstd, rank_partials);
    return cudaGetLastError();
  }
  const int warps_per_block = BNK_STREAM_THREADS / BNK_WARP;
  const dim3 grid((unsigned)((view->c + warps_per_block - 1) / warps_per_block));
  BNK_LAUNCH(finalize_stats, grid, dim3(BNK_STREAM_THREADS), 0, stream, view->c, plan->parts, m, ws, eps, running,
             save_mean, save_invstd, rank_partials);
  return cudaGetLastError();
}

extern "C" cudaError_t bnk__stats_occupancy(bnk_occupancy_table *table) {
  return bnk_for_each_storage([&](auto type, auto width, int dtype, int wide) {
    using T = typename decltype(type)::type;
    constexpr int V = decltype(width)::value;
    int(&row)[2][3][2][BNK_OCCUPANCY_VARIANTS] = table->blocks_per_sm[BNK_FAMILY_STATS];
    const cudaError_t status = bnk_occupancy(stats_channels_first<T, V>, 0, &row[0][dtype][wide][0]);
    return status != cudaSuccess ? status : bnk_occupancy(stats_channels_last<T, V>, 0, &row[1][dtype][wide][0]);
  });
}
