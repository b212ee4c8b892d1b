// The second stage of the batch statistics, shared by the two-pass statistics (stats.cu) and the persistent
// forward (persistent.cu): the same merge of the same pieces gives the same bits on either path.
#pragma once

#include "kernels/reduce.cuh"

// A thread's merge of the channel's pieces first, first + step, ... in order.
static __device__ __forceinline__ bnk_welford bnk_merge_pieces(int64_t channel, int64_t c, int64_t parts,
                                                               const bnk_stats_workspace &ws, int first, int step) {
  bnk_welford_run run = bnk_run_empty();
  // Pieces are blocks of a one-dimensional grid, so fewer than 2^31: a 32-bit counter keeps the loop's
  // registers few enough that a kernel merging several channels in a row (stats.cu) needs no stack.
  for (int p = first; p < (int)parts; p += step) {
    const int64_t slot = (int64_t)p * c + channel;
    const bnk_welford piece = {ws.count[slot], ws.mean[slot], ws.m2[slot]};
    bnk_run_add(run, piece);
  }
  return bnk_run_result(run);
}

// The triples [first, end) of a channel in arrays laid out [index][c] (the pieces, or the channels-last
// bands), merged in order by one thread.
static __device__ __forceinline__ bnk_welford bnk_merge_triples(const float *count, const float *mean, const float *m2,
                                                                int64_t channel, int64_t c, int first, int end) {
  bnk_welford_run run = bnk_run_empty();
  bnk_fold_in_order<bnk_welford>(
      run, first, end,
      [&](int p) {
        const int64_t slot = (int64_t)p * c + channel;
        const bnk_welford piece = {count[slot], mean[slot], m2[slot]};
        return piece;
      },
      [](bnk_welford_run &r, const bnk_welford &w) { bnk_run_add(r, w); });
  return bnk_run_result(run);
}

// The channels-last merge of a channel in a kernel of its own, in the order of the two levels of the merge
// inside the statistics kernel (bnk_merge_tile_if_last), so to the same bits: each band's pieces in order,
// then the bands' results in order.
static __device__ __forceinline__ bnk_welford bnk_merge_bands_of(int64_t channel, int64_t c, int parts, int band_pieces,
                                                                 const bnk_stats_workspace &ws) {
  bnk_welford_run run = bnk_run_empty();
  for (int first = 0; first < parts; first += band_pieces)
    bnk_run_add(run, bnk_merge_triples(ws.count, ws.mean, ws.m2, channel, c, first, min(parts, first + band_pieces)));
  return bnk_run_result(run);
}

// Everything per channel from its merged triple, by one thread: ws.dmean and ws.invstd, the saved
// statistics, the rank partials and the running statistics, each written once.
static __device__ __forceinline__ void bnk_finish_channel(int64_t channel, int64_t c, int64_t m, bnk_welford acc,
                                                          bnk_stats_workspace ws, float eps, bnk_running_update running,
                                                          float *save_mean, float *save_invstd, double *rank_partials) {
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
    // The batch was counted earlier on the stream (the stats kernel) or before the grid barrier.
    const float weight = running.cumulative ? 1.0f / (float)*running.num_batches_tracked : running.momentum;
    const float unbiased_var = acc.m2 / (float)(m - 1);
    running.running_mean[channel] = (1.0f - weight) * running.running_mean[channel] + weight * mean;
    running.running_var[channel] = (1.0f - weight) * running.running_var[channel] + weight * unbiased_var;
  }
}

// One warp merges channel's pieces (lane l takes pieces l, l + 32, ... in order, then a fixed tree across
// lanes) and lane 0 finishes the channel. Every lane of the warp calls it.
static __device__ __forceinline__ void bnk_finalize_channel(int64_t channel, int64_t c, int64_t parts, int64_t m,
                                                            bnk_stats_workspace ws, float eps,
                                                            bnk_running_update running, float *save_mean,
                                                            float *save_invstd, double *rank_partials) {
  const int lane = (int)(threadIdx.x % BNK_WARP);
  const bnk_welford acc =
      bnk_warp_reduce(bnk_merge_pieces(channel, c, parts, ws, lane, BNK_WARP), BNK_FULL_MASK, BNK_WARP);
  if (lane == 0) bnk_finish_channel(channel, c, m, acc, ws, eps, running, save_mean, save_invstd, rank_partials);
}
