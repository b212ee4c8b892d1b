// The persistent training forward: one cooperative launch that reads x once and writes y once.
//
// Every block of the grid is resident at once (a cooperative launch), and each thread keeps its share of x,
// at most BNK_PERSISTENT_CACHE vectors, in registers from the first phase to the last:
//   1. load the share, minus the channel's shift K (stats.cu's first element), and reduce the block's
//      Welford triples into the workspace as the two-pass statistics kernel does (one piece per block);
//   2. grid barrier; the channel's pieces are merged and its statistics derived, the saved and running
//      statistics written once (channels-first: one warp per channel, bnk_finalize_channel; channels-last:
//      threads of a block share a channel, for_each_block_channel);
//   3. grid barrier; normalize the cached values with the fused epilogue (affine.cuh) and write y.
// The blocks and pieces are bnk__plan_persistent's: the tiling of bnk__plan_reduce with each thread's share cut
// to fit its cache. The channels-first merge is the two-pass path's, so both paths agree wherever their
// pieces do; the channels-last merge takes its pieces in another fixed order.
// Channels-first channels that fit one warp's or one block's cache (bnk_persistent_team) take
// persistent_forward_team instead: no pieces, no merge across blocks, no barrier (any C fits).
#include <cooperative_groups.h>

#include <type_traits>

#include "kernels/affine.cuh"
#include "kernels/batch_stats.cuh"
#include "kernels/persistent.cuh"

namespace cg = cooperative_groups;

// What every persistent forward kernel takes besides its tensors and tiling.
struct persistent_forward_args {
  bnk_stats_workspace ws;
  int64_t m;  // elements per channel
  float eps;
  bnk_running_update running;
  float *save_mean;
  float *save_invstd;
  const float *gamma;
  const float *beta;
  uint32_t *mask;      // NULL: not written
  int64_t mask_words;  // bnk_mask_bytes / 4
  int shared_depth;    // vectors (rows) per thread of the second cache level; the teams have none
};

// The first phase's common part: the batch is counted before the merge reads num_batches_tracked, and the
// mask is cleared before the last phase ORs its bits in (one launch: no memset on the stream).
static __device__ __forceinline__ void begin_forward(const persistent_forward_args &a) {
  const int64_t thread = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (thread == 0 && a.running.num_batches_tracked != NULL)
    *a.running.num_batches_tracked = bnk_next_count(*a.running.num_batches_tracked);
  if (a.mask != NULL)
    for (int64_t w = thread; w < a.mask_words; w += (int64_t)gridDim.x * blockDim.x) a.mask[w] = 0u;
}

// Phases 2 and 3's barriers around the merge: warp w of the grid finalizes channels w, w + warps, ...
static __device__ __forceinline__ void merge_statistics(const persistent_forward_args &a, int64_t c, int64_t parts) {
  cg::grid_group grid = cg::this_grid();
  grid.sync();
  for_each_warp_channel(c, [&](int64_t channel) {
    bnk_finalize_channel(channel, c, parts, a.m, a.ws, a.eps, a.running, a.save_mean, a.save_invstd, NULL);
  });
  grid.sync();
}

// The same for channels-last, whose grids have threads to spare per channel, or fewer warps than channels:
// threads of a block share a channel (for_each_block_channel).
static __device__ __forceinline__ void merge_statistics_in_blocks(const persistent_forward_args &a, int64_t c,
                                                                  int64_t parts) {
  __shared__ bnk_welford merged[BNK_STREAM_THREADS / BNK_WARP];
  cg::grid_group grid = cg::this_grid();
  grid.sync();
  for_each_block_channel(
      c, merged,
      [&](int64_t channel, int first, int step) { return bnk_merge_pieces(channel, c, parts, a.ws, first, step); },
      [&](int64_t channel, bnk_welford acc) {
        bnk_finish_channel(channel, c, a.m, acc, a.ws, a.eps, a.running, a.save_mean, a.save_invstd, NULL);
      });
  grid.sync();
}

// The affine of a channel for values that already have K subtracted: shift 0, so that (v - 0) - dmean is
// the two-pass normalize's ((x - K) - dmean), bit for bit.
static __device__ __forceinline__ bnk_channel_affine shifted_affine(const persistent_forward_args &a, int64_t c) {
  const bnk_normalize_params p = {NULL, a.ws.dmean, a.ws.invstd, NULL, a.eps, a.gamma, a.beta};
  return channel_affine<false>(p, c);
}

// The mask bits of V elements at `at` made `bits` in a mask nobody cleared (the team kernels have no barrier
// to clear it behind): the thread that owns the elements clears those it leaves 0, and the padding bits past
// the tensor's last element, and sets the others. Every bit has one owner, so these atomics on disjoint bits
// leave the same word in any order.
template <int V>
static __device__ __forceinline__ void mask_assign(uint32_t *mask, int64_t at, unsigned bits, int64_t elements) {
  const int shift = (int)(at % 32);
  unsigned own = ((1u << V) - 1u) << shift;
  if (at + V == elements && elements % 32 != 0) own |= ~0u << (elements % 32);
  const unsigned set = (bits << shift) & own;
  if ((own & ~set) != 0u) atomicAnd(mask + at / 32, ~(own & ~set));
  if (set != 0u) atomicOr(mask + at / 32, set);
}

// y of V cached values and their V values of z (ADD_RELU), stored at element `at`, with its mask bits: ORed
// into a cleared mask, or with ASSIGN_MASK assigned (mask_assign) in a tensor of `elements`.
template <typename T, int V, int EPILOGUE, bool ASSIGN_MASK = false>
static __device__ __forceinline__ void store_outputs(const float (&v)[V], const float (&vz)[V],
                                                     const bnk_channel_affine (&affine)[V], T *y, uint32_t *mask,
                                                     int64_t at, int64_t elements = 0) {
  float out[V];
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = apply_epilogue<EPILOGUE>(apply_affine(v[i], affine[i]), vz[i]);
  if constexpr (V * sizeof(T) == 16) {
    // One 128-bit store, said explicitly: through bnk_store's plain assignment nvcc stored these y vectors
    // element by element (4-byte STGs, already in the PTX) in the channels-first kernel.
    __stwb(reinterpret_cast<uint4 *>(y + at), bnk_round_vector<T, V>(out));
  } else {
    bnk_store<T, V>(y + at, out);
  }
  if (EPILOGUE != BNK_EPILOGUE_NONE && mask != NULL) {
    if constexpr (ASSIGN_MASK) mask_assign<V>(mask, at, bnk_positive_bits<T, V>(out), elements);
    else bnk_mask_set<V>(mask, at, bnk_positive_bits<T, V>(out));
  }
}

// The same with z read at `at` first.
template <typename T, int V, int EPILOGUE, bool ASSIGN_MASK = false>
static __device__ __forceinline__ void write_outputs(const float (&v)[V], const bnk_channel_affine (&affine)[V],
                                                     const T *z, T *y, uint32_t *mask, int64_t at,
                                                     int64_t elements = 0) {
  float vz[V] = {};
  if constexpr (EPILOGUE == BNK_EPILOGUE_ADD_RELU) bnk_load<T, V>(z + at, vz);
  store_outputs<T, V, EPILOGUE, ASSIGN_MASK>(v, vz, affine, y, mask, at, elements);
}

// What a thread keeps of one cached vector: x - K as floats, or, for the 16-byte vectors of a 16-bit type, the
// 16 bytes of x as loaded: half the registers, which keeps those kernels within 128 registers (2 blocks per
// SM) where floats made ptxas spill; x - K is then recomputed where it is used, to the same bits.
template <typename T, int V, bool RAW = (sizeof(T) == 2 && V * sizeof(T) == 16)>
struct cached_vector {
  float v[V];
};

template <typename T, int V>
struct cached_vector<T, V, true> {
  uint4 raw;
};

template <typename T, int V>
static __device__ __forceinline__ void cache_load(cached_vector<T, V, false> &c, const T *p, const float (&shift)[V]) {
  bnk_load<T, V>(p, c.v);
#pragma unroll
  for (int i = 0; i < V; ++i) c.v[i] -= shift[i];
}

template <typename T, int V>
static __device__ __forceinline__ void cache_load(cached_vector<T, V, true> &c, const T *p, const float (&)[V]) {
  c.raw = *reinterpret_cast<const uint4 *>(p);
}

template <typename T, int V>
static __device__ __forceinline__ void shifted_values(const cached_vector<T, V, false> &c, const float (&)[V],
                                                      float (&v)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = c.v[i];
}

template <typename T, int V>
static __device__ __forceinline__ void shifted_values(const cached_vector<T, V, true> &c, const float (&shift)[V],
                                                      float (&v)[V]) {
  bnk_unpack_vector<T, V>(c.raw, v);
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] -= shift[i];
}

// Fills the thread's slots of the second level `deep` (depth slots, [slot][thread]) with the vectors at element
// offsets offset(0), offset(1), ..., up to `depth` or until offset says the thread's share has ended (-1), and
// folds each batch of x - K into the thread's statistics with fold(values, vectors) as it arrives, after the
// registers' cache and in slot order.
template <typename T, int V, typename Offset, typename Fold>
static __device__ __forceinline__ void fill_deep_cache(shared_slot<cached_vector<T, V>> *deep, int depth, const T *x,
                                                       const float (&shift)[V], Offset &&offset, Fold &&fold) {
  for (int first = 0; first < depth; first += BNK_DEEP_BATCH) {
    cached_vector<T, V> batch[BNK_DEEP_BATCH] = {};
    int vectors = 0;
#pragma unroll
    for (int b = 0; b < BNK_DEEP_BATCH; ++b) {
      const int64_t at = first + b < depth ? offset(first + b) : -1;
      if (at >= 0) {
        cache_load(batch[b], x + at, shift);
        vectors = b + 1;
      }
    }
    float v[BNK_DEEP_BATCH][V];
#pragma unroll
    for (int b = 0; b < BNK_DEEP_BATCH; ++b) {
      if (b < vectors) deep[(first + b) * (int)blockDim.x + (int)threadIdx.x].value = batch[b];
      shifted_values(batch[b], shift, v[b]);
    }
    if (vectors > 0) fold(v, vectors);
    if (vectors < BNK_DEEP_BATCH) return;
  }
}

// y of the second level's vectors (fill_deep_cache's slots and offsets), a batch's z read before its y is
// stored.
template <typename T, int V, int EPILOGUE, typename Offset>
static __device__ __forceinline__ void write_deep_cache(const shared_slot<cached_vector<T, V>> *deep, int depth,
                                                        const float (&shift)[V], const bnk_channel_affine (&affine)[V],
                                                        const T *z, T *y, uint32_t *mask, Offset &&offset) {
  for (int first = 0; first < depth; first += BNK_DEEP_BATCH) {
    int64_t at[BNK_DEEP_BATCH];
    float vz[BNK_DEEP_BATCH][V] = {};
#pragma unroll
    for (int b = 0; b < BNK_DEEP_BATCH; ++b) {
      at[b] = first + b < depth ? offset(first + b) : -1;
      if (EPILOGUE == BNK_EPILOGUE_ADD_RELU && at[b] >= 0) bnk_load<T, V>(z + at[b], vz[b]);
    }
#pragma unroll
    for (int b = 0; b < BNK_DEEP_BATCH; ++b)
      if (at[b] >= 0) {
        float values[V];
        shifted_values(deep[(first + b) * (int)blockDim.x + (int)threadIdx.x].value, shift, values);
        store_outputs<T, V, EPILOGUE>(values, vz[b], affine, y, mask, at[b]);
      }
    if (at[BNK_DEEP_BATCH - 1] < 0) return;
  }
}

// The registers' cache of a channels-first thread: the channel's vectors first, first + step, ... below end (at
// most K), from the channel's first element `base`, minus the shift; returns how many it holds and their
// Welford triple.
template <typename T, int V, int K>
static __device__ __forceinline__ int
load_channel_cache(cached_vector<T, V> (&cache)[K], const T *x, int64_t base, int64_t first, int64_t step, int64_t end,
                   bnk_fastdiv vecs_per_run, int64_t run_stride, const float (&shift)[V], bnk_welford &mine) {
  int vectors = 0;
#pragma unroll
  for (int u = 0; u < K; ++u) {
    const int64_t j = first + u * step;
    if (j < end) {
      cache_load(cache[u], x + base + channel_vector_offset(j, vecs_per_run, run_stride, V), shift);
      vectors = u + 1;
    }
  }
  float v[K][V];
#pragma unroll
  for (int u = 0; u < K; ++u) shifted_values(cache[u], shift, v[u]);
  mine = vectors > 0 ? bnk_welford_of<K, V>(v, vectors) : bnk_welford_empty();
  return vectors;
}

// y of load_channel_cache's vectors (write_outputs; ASSIGN_MASK in a tensor of `elements`).
template <typename T, int V, int EPILOGUE, bool ASSIGN_MASK, int K>
static __device__ __forceinline__ void
write_channel_cache(const cached_vector<T, V> (&cache)[K], int vectors, const float (&shift)[V],
                    const bnk_channel_affine (&affine)[V], const T *z, T *y, uint32_t *mask, int64_t base,
                    int64_t first, int64_t step, bnk_fastdiv vecs_per_run, int64_t run_stride, int64_t elements) {
#pragma unroll
  for (int u = 0; u < K; ++u)
    if (u < vectors) {
      float values[V];
      shifted_values(cache[u], shift, values);
      write_outputs<T, V, EPILOGUE, ASSIGN_MASK>(
          values, affine, z, y, mask, base + channel_vector_offset(first + u * step, vecs_per_run, run_stride, V),
          elements);
    }
}

// Channels-first: block b holds piece (b % parts) of channel (b / parts), `chunk` elements; thread t caches
// the piece's vectors t, t + blockDim.x, ... (at most BNK_PERSISTENT_CACHE). At least 2 blocks per SM, said
// explicitly: left to itself ptxas squeezed the plain fp32 kernel into 80 registers for a third block and
// spilled part of the cache (52 bytes); with the bound it takes 98 registers, as the epilogue variants do.
template <typename T, int V, int EPILOGUE>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, V == 1 ? 4 : 2)
    persistent_forward_channels_first(const T *x, const T *z, T *y, int64_t c, int64_t s, bnk_fastdiv vecs_per_run,
                                      int64_t parts, int64_t chunk, persistent_forward_args a) {
  constexpr int K = BNK_PERSISTENT_CACHE;
  __shared__ bnk_welford shared[BNK_WARP];
  const int64_t block = blockIdx.x;
  const int64_t channel = block / parts;
  const int64_t part = block - channel * parts;
  const int64_t base = channel * s;
  const int64_t run_stride = c * s;
  float shift[V];
#pragma unroll
  for (int i = 0; i < V; ++i) shift[i] = bnk_to_float(x[base]);
  begin_forward(a);
  if (threadIdx.x == 0 && part == 0) a.ws.shift[channel] = shift[0];

  const int64_t begin = part * chunk / V + threadIdx.x;
  const int64_t end = min(a.m, (part + 1) * chunk) / V;
  const int64_t step = blockDim.x;
  cached_vector<T, V> cache[K] = {};
  bnk_welford mine;
  const int vectors = load_channel_cache(cache, x, base, begin, step, end, vecs_per_run, run_stride, shift, mine);
  // The second level: vectors K, K + 1, ... of the thread's share, their offsets asked again when y is written
  // (kept, they would be registers across the barriers).
  typedef shared_slot<cached_vector<T, V>> deep_slot;  // a comma is more than the macro takes
  BNK_DYNAMIC_SHARED(deep_slot, deep);
  const auto deep_offset = [&](int u) {
    const int64_t j = begin + (int64_t)(K + u) * step;
    return j < end ? base + channel_vector_offset(j, vecs_per_run, run_stride, V) : (int64_t)-1;
  };
  fill_deep_cache<T, V>(deep, a.shared_depth, x, shift, deep_offset,
                        [&](const float(&batch)[BNK_DEEP_BATCH][V], int rows) {
                          mine = bnk_combine(mine, bnk_welford_of<BNK_DEEP_BATCH, V>(batch, rows));
                        });
  const bnk_welford acc = bnk_block_reduce(mine, shared);
  if (threadIdx.x == 0) {
    const int64_t slot = part * c + channel;
    a.ws.count[slot] = acc.count;
    a.ws.mean[slot] = acc.mean;
    a.ws.m2[slot] = acc.m2;
  }

  merge_statistics(a, c, parts);

  bnk_channel_affine affine[V];
  const bnk_channel_affine channel_affine_value = shifted_affine(a, channel);
#pragma unroll
  for (int i = 0; i < V; ++i) affine[i] = channel_affine_value;
  write_channel_cache<T, V, EPILOGUE, false>(cache, vectors, shift, affine, z, y, a.mask, base, begin, step,
                                             vecs_per_run, run_stride, 0);
  write_deep_cache<T, V, EPILOGUE>(deep, a.shared_depth, shift, affine, z, y, a.mask, deep_offset);
}

// Channels-first, a team of TEAM threads (a warp or the block) per channel, channels in a grid-stride loop
// (for_each_team_channel): the team caches the channel's vectors r, r + TEAM, ... by rank r (all of them:
// bnk_persistent_team), reduces them with the channel's first element as K, derives the statistics as the
// one piece of bnk_finalize_channel (the saved and running statistics written once, by the team) and writes
// y from the cache. No grid barrier orders the channels, so nothing is cleared or counted ahead of them: the
// mask bits are assigned (mask_assign), and the batch is counted once by the grid's first thread, which with
// cumulative running statistics (weight 1 / num_batches_tracked, read by every team) waits for the others at
// the kernel's one grid barrier; every block reads the count before it and keeps it in shared memory. That
// barrier is why the launch is cooperative: the grid is at most the co-resident grid, which bounds nothing
// here (a grid-stride loop), and the capacity is the team's cache alone.
template <typename T, int V, int EPILOGUE, int TEAM>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, 2)
    persistent_forward_team(const T *x, const T *z, T *y, int64_t c, int64_t s, bnk_fastdiv vecs_per_run,
                            persistent_forward_args a) {
  constexpr int K = BNK_PERSISTENT_TEAM_CACHE(BNK_PERSISTENT_CACHE, V);
  __shared__ bnk_welford shared[BNK_WARP];
  __shared__ int64_t counted;
  int64_t *const batches = a.running.num_batches_tracked;
  const bool count_after = batches != NULL && a.running.cumulative;
  if (count_after) {
    if (threadIdx.x == 0) counted = bnk_next_count(*batches);
    __syncthreads();
  } else if (batches != NULL && blockIdx.x == 0 && threadIdx.x == 0) {
    *batches = bnk_next_count(*batches);
  }

  const int rank = (int)(threadIdx.x % TEAM);
  const int64_t channel_vectors = a.m / V;
  const int64_t run_stride = c * s;
  for_each_team_channel<TEAM>(c, [&](int64_t channel) {
    const int64_t base = channel * s;
    float shift[V];
#pragma unroll
    for (int i = 0; i < V; ++i) shift[i] = bnk_to_float(x[base]);
    cached_vector<T, V> cache[K] = {};
    bnk_welford mine;
    const int vectors =
        load_channel_cache(cache, x, base, rank, TEAM, channel_vectors, vecs_per_run, run_stride, shift, mine);
    const bnk_welford acc = team_reduce<TEAM>(mine, shared);
    if (rank == 0) {  // the channel's one piece, which the same thread reads back in bnk_finalize_channel
      a.ws.shift[channel] = shift[0];
      a.ws.count[channel] = acc.count;
      a.ws.mean[channel] = acc.mean;
      a.ws.m2[channel] = acc.m2;
    }
    if (rank < BNK_WARP) {
      // Made here from the arguments rather than kept across the loop: the 16-bit kernels have no register to
      // spare (held, it cost the block team an 8-byte stack frame).
      bnk_running_update running = a.running;
      if (count_after) running.num_batches_tracked = &counted;
      bnk_finalize_channel(channel, c, 1, a.m, a.ws, a.eps, running, a.save_mean, a.save_invstd, NULL);
    }
    team_sync<TEAM>();

    bnk_channel_affine affine[V];
    const bnk_channel_affine channel_affine_value = shifted_affine(a, channel);
#pragma unroll
    for (int i = 0; i < V; ++i) affine[i] = channel_affine_value;
    write_channel_cache<T, V, EPILOGUE, true>(cache, vectors, shift, affine, z, y, a.mask, base, rank, TEAM,
                                              vecs_per_run, run_stride, c * a.m);
  });

  if (count_after) {
    cg::this_grid().sync();
    if (blockIdx.x == 0 && threadIdx.x == 0) *batches = counted;
  }
}

// Channels-last: the tiling of bnk_reduce_plan (bnk_tile_position); thread (tx, ty) caches its V channels
// in rows ty, ty + tile_y, ... of its piece (at most BNK_PERSISTENT_CACHE rows). At least 2 blocks per SM, as
// the channels-first kernel: unbounded, ptxas held the fp32 vector kernels to 80 registers and spilled 32
// bytes of the cache; bounded, they take 92 and spill nothing. The element-wide kernels, 4 blocks: they took
// 60 registers until the block-shared merge made ptxas choose 66 (3 blocks, a quarter of the capacity gone).
template <typename T, int V, int EPILOGUE>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, V == 1 ? 4 : 2)
    persistent_forward_channels_last(const T *x, const T *z, T *y, int64_t rows, int64_t c, int tile_x, int tile_y,
                                     int64_t tiles, int64_t rows_per_part, persistent_forward_args a) {
  constexpr int K = BNK_PERSISTENT_CACHE;
  typedef bnk_welford_vec<V> state;
  __shared__ float shared[bnk_fields<state>::count * BNK_STREAM_THREADS];
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tile_x, tiles, &part, &ty, &channel0);
  const bool active = channel0 < c;
  begin_forward(a);

  float shift[V] = {};
  if (active) bnk_load<T, V>(x + channel0, shift);
  if (active && part == 0 && ty == 0) {
#pragma unroll
    for (int i = 0; i < V; ++i) a.ws.shift[channel0 + i] = shift[i];
  }

  const int64_t first_row = part * rows_per_part + ty;
  const int64_t row_end = min(rows, (part + 1) * rows_per_part);
  cached_vector<T, V> cache[K] = {};
  int cached = 0;
#pragma unroll
  for (int u = 0; u < K; ++u) {
    const int64_t r = first_row + (int64_t)u * tile_y;
    if (active && r < row_end) {
      cache_load(cache[u], x + r * c + channel0, shift);
      cached = u + 1;
    }
  }
  float v[K][V];
#pragma unroll
  for (int u = 0; u < K; ++u) shifted_values(cache[u], shift, v[u]);
  bnk_welford_vec_run<V> run = bnk_run_vec_empty<V>();
  if (cached > 0) bnk_run_add_rows<K, V>(run, v, cached);
  // The second level: rows K, K + 1, ... of the thread's share, as in the channels-first kernel.
  typedef shared_slot<cached_vector<T, V>> deep_slot;  // a comma is more than the macro takes
  BNK_DYNAMIC_SHARED(deep_slot, deep);
  const auto deep_offset = [&](int u) {
    const int64_t r = first_row + (int64_t)(K + u) * tile_y;
    return active && r < row_end ? r * c + channel0 : (int64_t)-1;
  };
  fill_deep_cache<T, V>(
      deep, a.shared_depth, x, shift, deep_offset,
      [&](const float(&batch)[BNK_DEEP_BATCH][V], int rows) { bnk_run_add_rows<BNK_DEEP_BATCH, V>(run, batch, rows); });
  const state acc = bnk_tile_reduce(bnk_run_result(run), shared, tile_x, tile_y);
  if (active && (int)threadIdx.x < tile_x) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int64_t out = part * c + channel0 + i;
      a.ws.count[out] = acc.count;
      a.ws.mean[out] = acc.mean[i];
      a.ws.m2[out] = acc.m2[i];
    }
  }

  merge_statistics_in_blocks(a, c, (int64_t)gridDim.x / tiles);  // blocks = tiles x parts

  if (!active) return;
  // bf16: K read again (as the first phase stored it) rather than held across the barriers, V registers fewer
  // beside the raw cache, without which ptxas spilled 32 bytes within the 128 registers. Not for fp16, whose
  // kernel fits as it is and, so changed, parks 8 bytes of its cache's halves on the stack instead.
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
#pragma unroll
    for (int i = 0; i < V; ++i) shift[i] = a.ws.shift[channel0 + i];
  }
  bnk_channel_affine affine[V];
#pragma unroll
  for (int i = 0; i < V; ++i) affine[i] = shifted_affine(a, channel0 + i);
#pragma unroll
  for (int u = 0; u < K; ++u)
    if (u < cached) {
      float values[V];
      shifted_values(cache[u], shift, values);
      write_outputs<T, V, EPILOGUE>(values, affine, z, y, a.mask, (first_row + (int64_t)u * tile_y) * c + channel0);
    }
  write_deep_cache<T, V, EPILOGUE>(deep, a.shared_depth, shift, affine, z, y, a.mask, deep_offset);
}

// ---- launch and occupancy: one kernel per (dtype, layout, vector width, epilogue) ----

template <typename T, int V, int EPILOGUE>
static cudaError_t launch_layout(const bnk_view *view, const bnk_reduce_plan *plan, const void *x_raw,
                                 const void *z_raw, void *y_raw, persistent_forward_args a, cudaStream_t stream) {
  const T *x = static_cast<const T *>(x_raw);
  const T *z = static_cast<const T *>(z_raw);
  T *y = static_cast<T *>(y_raw);
  const dim3 grid((unsigned)plan->blocks), block((unsigned)plan->threads);
  const size_t deep_bytes = bnk_persistent_shared_bytes(0, (int)sizeof(T), V, plan->shared_depth);
  if (view->channels_last) {
    int64_t rows = view->n, c = view->c, tiles = plan->tiles, rows_per_part = plan->rows_per_part;
    int tile_x = plan->tile_x, tile_y = plan->tile_y;
    void *args[] = {&x, &z, &y, &rows, &c, &tile_x, &tile_y, &tiles, &rows_per_part, &a};
    return launch_cooperative(persistent_forward_channels_last<T, V, EPILOGUE>, grid, block, args, deep_bytes, stream);
  }
  int64_t c = view->c, s = view->s, parts = plan->parts, chunk = plan->chunk;
  bnk_fastdiv vecs_per_run = bnk_fastdiv_make((uint64_t)(view->s / V));
  const int team = bnk_persistent_team(view, V, BNK_PERSISTENT_CACHE);
  if (team != 0) {
    void *args[] = {&x, &z, &y, &c, &s, &vecs_per_run, &a};
    return launch_cooperative(team == BNK_WARP ? persistent_forward_team<T, V, EPILOGUE, BNK_WARP>
                                               : persistent_forward_team<T, V, EPILOGUE, BNK_STREAM_THREADS>,
                              grid, block, args, 0, stream);
  }
  void *args[] = {&x, &z, &y, &c, &s, &vecs_per_run, &parts, &chunk, &a};
  return launch_cooperative(persistent_forward_channels_first<T, V, EPILOGUE>, grid, block, args, deep_bytes, stream);
}

template <typename T, int V, int EPILOGUE>
static cudaError_t occupancy_layout(int channels_last, int team, int shared_depth, int *blocks_per_sm) {
  const void *kernel =
      channels_last      ? reinterpret_cast<const void *>(persistent_forward_channels_last<T, V, EPILOGUE>)
      : team == BNK_WARP ? reinterpret_cast<const void *>(persistent_forward_team<T, V, EPILOGUE, BNK_WARP>)
      : team != 0        ? reinterpret_cast<const void *>(persistent_forward_team<T, V, EPILOGUE, BNK_STREAM_THREADS>)
                         : reinterpret_cast<const void *>(persistent_forward_channels_first<T, V, EPILOGUE>);
  return deep_cache_occupancy(kernel, bnk_persistent_shared_bytes(0, (int)sizeof(T), V, shared_depth), blocks_per_sm);
}

// Calls F<T, V, EPILOGUE>::run(args...) for the run-time dtype, vector width and epilogue kind.
template <template <typename, int, int> class F, typename... A>
static cudaError_t dispatch(int dtype, int vec, int epilogue, A... args) {
#define BNK_PERSISTENT_EPILOGUES(T, V)                   \
  switch (epilogue) {                                    \
  case BNK_EPILOGUE_NONE:                                \
    return F<T, V, BNK_EPILOGUE_NONE>::run(args...);     \
  case BNK_EPILOGUE_RELU:                                \
    return F<T, V, BNK_EPILOGUE_RELU>::run(args...);     \
  case BNK_EPILOGUE_ADD_RELU:                            \
    return F<T, V, BNK_EPILOGUE_ADD_RELU>::run(args...); \
  default:                                               \
    return cudaErrorInvalidValue;                        \
  }
#define BNK_PERSISTENT_VECS(T)                           \
  if (vec == bnk_vec_width<T>::value) {                  \
    BNK_PERSISTENT_EPILOGUES(T, bnk_vec_width<T>::value) \
  } else {                                               \
    BNK_PERSISTENT_EPILOGUES(T, 1)                       \
  }
  switch (dtype) {
  case BNK_FLOAT32:
    BNK_PERSISTENT_VECS(float)
  case BNK_FLOAT16:
    BNK_PERSISTENT_VECS(__half)
  case BNK_BFLOAT16:
    BNK_PERSISTENT_VECS(__nv_bfloat16)
  default:
    return cudaErrorInvalidValue;
  }
#undef BNK_PERSISTENT_VECS
#undef BNK_PERSISTENT_EPILOGUES
}

template <typename T, int V, int EPILOGUE>
struct launch_op {
  static cudaError_t run(const bnk_view *view, const bnk_reduce_plan *plan, const void *x, const void *z, void *y,
                         persistent_forward_args a, cudaStream_t stream) {
    return launch_layout<T, V, EPILOGUE>(view, plan, x, z, y, a, stream);
  }
};

template <typename T, int V, int EPILOGUE>
struct occupancy_op {
  static cudaError_t run(int channels_last, int team, int shared_depth, int *blocks_per_sm) {
    return occupancy_layout<T, V, EPILOGUE>(channels_last, team, shared_depth, blocks_per_sm);
  }
};

extern "C" cudaError_t bnk__persistent_forward_occupancy(const bnk_view *view, int vec, int epilogue, int team,
                                                         int shared_depth, int *blocks_per_sm) {
  return dispatch<occupancy_op>(view->dtype, vec, epilogue, view->channels_last, team, shared_depth, blocks_per_sm);
}

extern "C" cudaError_t bnk__launch_persistent_forward(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                                      void *y, bnk_stats_workspace ws, float eps,
                                                      bnk_running_update running, float *save_mean, float *save_invstd,
                                                      const float *gamma, const float *beta,
                                                      const bnk_epilogue_args *epilogue, cudaStream_t stream) {
  const int64_t elements = view->n * view->c * view->s;
  const persistent_forward_args a = {ws,
                                     view->n * view->s,
                                     eps,
                                     running,
                                     save_mean,
                                     save_invstd,
                                     gamma,
                                     beta,
                                     epilogue->mask,
                                     (int64_t)bnk_mask_bytes(elements) / 4,
                                     plan->shared_depth};
  return dispatch<launch_op>(view->dtype, plan->vec, epilogue->kind, view, plan, x, epilogue->z, y, a, stream);
}
