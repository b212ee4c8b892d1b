// The persistent backward: one cooperative launch that reads x and dy once and writes dx once.
//
// Every block of the grid is resident at once (a cooperative launch), and each thread keeps its share of the
// gated gradient g and of x - mean, at most BNK_PERSISTENT_BACKWARD_CACHE vectors of each, in registers from
// the first phase to the last:
//   1. load the share (g = dy gated by the epilogue from y or the mask, and written to dz when asked), add the
//      thread's terms of sum g and sum g (x - mean), and reduce them over the block into the workspace as
//      backward.cu's sums kernels do (one piece per block);
//   2. grid barrier; the channel's pieces are merged (channels-first: one warp per channel,
//      merge_backward_channel; channels-last: threads of a block share a channel, for_each_block_channel):
//      dgamma, dbeta and the dx coefficients are written once;
//   3. grid barrier (only when dx is wanted); dx of the cached values (apply_dx) is written.
// The arithmetic is gradient.cuh's, so both paths agree wherever their pieces do (channels-last: but for the
// order in which the pieces are added). With frozen statistics (the
// inference backward) the mean is the running mean (x NULL when only dbeta is wanted: its cache stays 0), and
// dx is g gamma invstd alone (channel_dx without coefficients): the sums serve dgamma and dbeta only.
// The blocks and pieces are bnk__plan_persistent's with the backward's cache depth. Channels-first channels that
// fit one warp's or one block's cache (bnk_persistent_team) take persistent_backward_team instead: no pieces, no
// merge across blocks, no barrier, a plain launch (any C fits).
#include <cooperative_groups.h>

#include "kernels/dispatch.cuh"
#include "kernels/gradient.cuh"
#include "kernels/persistent.cuh"

namespace cg = cooperative_groups;

// What every persistent backward kernel takes besides its tensors and tiling.
struct persistent_backward_args {
  bnk_backward_stats stats;
  bnk_backward_workspace ws;
  int64_t m;  // elements per channel
  int frozen;
  float *dgamma;  // NULL: not written
  float *dbeta;   // NULL: not written
  bnk_grad_epilogue_args e;
  int shared_depth;  // vectors (rows) per thread of the second cache level; the teams have none
};

// Phases 2 and 3's barriers around the merge; the second only when a dx phase follows.
static __device__ __forceinline__ void merge_sums(const persistent_backward_args &a, int64_t c, int64_t parts,
                                                  bool dx_follows) {
  cg::grid_group grid = cg::this_grid();
  grid.sync();
  for_each_warp_channel(
      c, [&](int64_t channel) { merge_backward_channel(channel, c, parts, a.m, a.stats, a.ws, a.dgamma, a.dbeta); });
  if (dx_follows) grid.sync();
}

// The same for channels-last, whose grids have threads to spare per channel, or fewer warps than channels:
// threads of a block share a channel (for_each_block_channel).
static __device__ __forceinline__ void merge_sums_in_blocks(const persistent_backward_args &a, int64_t c, int64_t parts,
                                                            bool dx_follows) {
  __shared__ float2 merged[BNK_STREAM_THREADS / BNK_WARP];
  cg::grid_group grid = cg::this_grid();
  grid.sync();
  for_each_block_channel(
      c, merged,
      [&](int64_t channel, int first, int step) { return merge_backward_pieces(channel, c, parts, a.ws, first, step); },
      [&](int64_t channel, float2 acc) {
        finish_backward_channel(channel, a.m, acc, a.stats, a.ws, a.dgamma, a.dbeta);
      });
  if (dx_follows) grid.sync();
}

// The dx coefficients of a channel for cached values that already have the mean subtracted: mean 0, so that
// (xmu - 0) is the two-pass dx's (x - mean), bit for bit.
static __device__ __forceinline__ dx_coefficients cached_dx(const persistent_backward_args &a, int64_t c) {
  const dx_params p = {a.stats, a.frozen ? NULL : a.ws.dy_scale, a.ws.xmu_scale, a.ws.bias};
  dx_coefficients k = channel_dx(p, c);
  k.mean = 0.0f;
  return k;
}

// dx of V cached values, stored at element `at`. Frozen statistics weigh x - mean by 0: passing 0 keeps an
// infinite x out of dx, as the two-pass dx pass, which never reads x there.
template <typename T, int V>
static __device__ __forceinline__ void write_dx(const persistent_backward_args &a, float (&g)[V], const float (&xmu)[V],
                                                const dx_coefficients (&k)[V], T *dx, int64_t at) {
#pragma unroll
  for (int i = 0; i < V; ++i) g[i] = apply_dx(g[i], a.frozen ? 0.0f : xmu[i], k[i]);
  bnk_store<T, V>(dx + at, g);
}

// One cached vector: writes dz when asked, subtracts the mean and adds its terms to lane i % L of the sums
// (L = V: the V elements are V channels; L = 1: one channel).
template <typename T, int V, int GRAD, int L>
static __device__ __forceinline__ void add_cached(const persistent_backward_args &a, int64_t at, const float (&g)[V],
                                                  float (&xmu)[V], const float (&mean)[L], bnk_sums_vec<L> &acc) {
  store_residual_gradient<GRAD, T, V>(a.e, at, g);
#pragma unroll
  for (int i = 0; i < V; ++i) {
    xmu[i] -= mean[i % L];
    add_gradient(acc.dy[i % L], acc.dy_xmu[i % L], g[i], xmu[i]);
  }
}

// ---- the second cache level: g and x of vectors beyond the registers' cache, as stored ----

// V values in the storage type: one slot of the second level. g (dy, or 0 where gated) and x came from T, so
// they are exact in it, and a 16-bit vector takes half the shared memory of floats; x - mean is computed again
// from x where dx is written, the same subtraction as the registers' cache's, to the same bits.
template <typename T, int V>
struct stored_vector {
  T v[V];
};

template <typename T, int V>
static __device__ __forceinline__ stored_vector<T, V> to_stored(const float (&in)[V]) {
  stored_vector<T, V> out;
#pragma unroll
  for (int i = 0; i < V; ++i) out.v[i] = bnk_from_float<T>(in[i]);
  return out;
}

// The level's two planes in the block's dynamic shared memory: g's [depth][thread] slots, then x's.
template <typename T, int V>
struct deep_gradient {
  shared_slot<stored_vector<T, V>> *g;
  shared_slot<stored_vector<T, V>> *x;
};

template <typename T, int V>
static __device__ __forceinline__ deep_gradient<T, V> deep_gradient_of(void *shared, int depth) {
  shared_slot<stored_vector<T, V>> *slots = static_cast<shared_slot<stored_vector<T, V>> *>(shared);
  return {slots, slots + depth * (int)blockDim.x};
}

// Fills the thread's slots of the second level with the vectors at element offsets offset(0), offset(1), ...,
// up to `depth` or until offset says the thread's share has ended (-1): a batch loaded at once, then each
// vector's terms added to the sums (add_cached, dz written) after the registers' cache and in slot order.
// Vectors in flight per batch: fewer of the 16-byte ones, whose batch (g and x - mean of each, as floats) is
// live beside the registers' cache; with BNK_DEEP_BATCH of them the 16-bit kernels took 200 registers, and two
// at a time still put 48-72 bytes of the channels-last kernel on the stack within 128.
template <int V>
struct deep_gradient_batch {
  static constexpr int value = V == 1 ? BNK_DEEP_BATCH : V == 4 ? 2 : 1;
};

template <typename T, int V, int GRAD, int L, typename Offset>
static __device__ __forceinline__ void fill_deep_gradient(const persistent_backward_args &a, deep_gradient<T, V> deep,
                                                          int depth, const T *x, const T *dy, Offset &&offset,
                                                          const float (&mean)[L], bnk_sums_vec<L> &acc) {
  constexpr int B = deep_gradient_batch<V>::value;
  for (int first = 0; first < depth; first += B) {
    float g[B][V] = {}, xmu[B][V] = {};
    int64_t at[B] = {};  // set below; g++ took the gate's branches for a path that skips it
#pragma unroll
    for (int b = 0; b < B; ++b) {
      at[b] = first + b < depth ? offset(first + b) : -1;
      if (at[b] >= 0) load_gradient<GRAD, T, V>(x, dy, a.e, at[b], g[b], xmu[b]);
    }
#pragma unroll
    for (int b = 0; b < B; ++b)
      if (at[b] >= 0) {
        const int slot = (first + b) * (int)blockDim.x + (int)threadIdx.x;
        deep.g[slot].value = to_stored<T, V>(g[b]);
        deep.x[slot].value = to_stored<T, V>(xmu[b]);  // x: add_cached subtracts the mean
        add_cached<T, V, GRAD, L>(a, at[b], g[b], xmu[b], mean, acc);
      }
    if (at[B - 1] < 0) return;
  }
}

// dx of the second level's vectors (fill_deep_gradient's slots and offsets), x - mean lane i % L.
template <typename T, int V, int L, typename Offset>
static __device__ __forceinline__ void write_deep_dx(const persistent_backward_args &a, deep_gradient<T, V> deep,
                                                     int depth, const float (&mean)[L], const dx_coefficients (&k)[V],
                                                     T *dx, Offset &&offset) {
  for (int u = 0; u < depth; ++u) {
    const int64_t at = offset(u);
    if (at < 0) return;
    const int slot = u * (int)blockDim.x + (int)threadIdx.x;
    const stored_vector<T, V> g_stored = deep.g[slot].value, x_stored = deep.x[slot].value;
    float g[V], xmu[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      g[i] = bnk_to_float(g_stored.v[i]);
      xmu[i] = bnk_to_float(x_stored.v[i]) - mean[i % L];
    }
    write_dx<T, V>(a, g, xmu, k, dx, at);
  }
}

// The registers' cache of a channels-first thread: g and x of the channel's vectors first, first + step, ...
// below end (at most K), from the channel's first element `base`, with their element offsets (kept: recomputed
// where dz and dx are stored, they lead nvcc to split those 16-byte stores into 4-byte ones), and their terms
// added to acc (add_cached: x - mean left in xmu, dz written); returns how many it holds.
template <typename T, int V, int GRAD, int K>
static __device__ __forceinline__ int
load_channel_gradient(const persistent_backward_args &a, const T *x, const T *dy, int64_t base, int64_t first,
                      int64_t step, int64_t end, bnk_fastdiv vecs_per_run, int64_t run_stride, const float (&mean)[1],
                      float (&g)[K][V], float (&xmu)[K][V], int64_t (&at)[K], bnk_sums_vec<1> &acc) {
  int vectors = 0;
#pragma unroll
  for (int u = 0; u < K; ++u) {
    const int64_t j = first + u * step;
    if (j < end) {
      at[u] = base + channel_vector_offset(j, vecs_per_run, run_stride, V);
      load_gradient<GRAD, T, V>(x, dy, a.e, at[u], g[u], xmu[u]);
      vectors = u + 1;
    }
  }
#pragma unroll
  for (int u = 0; u < K; ++u)
    if (u < vectors) add_cached<T, V, GRAD, 1>(a, at[u], g[u], xmu[u], mean, acc);
  return vectors;
}

// Channels-first: block b holds piece (b % parts) of channel (b / parts), `chunk` elements; thread t caches
// the piece's vectors t, t + blockDim.x, ... (at most BNK_PERSISTENT_BACKWARD_CACHE, and then a.shared_depth in
// the second level). At least 2 blocks per SM (4 element-wide), said explicitly: with the second level's loads
// beside the cache ptxas otherwise took 200 registers for the 16-bit vectors (1 block); 3 blocks of the fp32
// vectors (80 registers, as in the registers alone) put 56 bytes on the stack.
template <typename T, int V, int GRAD>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, V == 1 ? 4 : 2)
    persistent_backward_channels_first(const T *x, const T *dy, T *dx, int64_t c, int64_t s, bnk_fastdiv vecs_per_run,
                                       int64_t parts, int64_t chunk, persistent_backward_args a) {
  constexpr int K = BNK_PERSISTENT_BACKWARD_CACHE;
  __shared__ float2 shared[BNK_WARP];
  const int64_t block = blockIdx.x;
  const int64_t channel = block / parts;
  const int64_t part = block - channel * parts;
  const int64_t base = channel * s;
  const int64_t run_stride = c * s;
  const float mean[1] = {x != NULL ? a.stats.mean[channel] : 0.0f};

  const int64_t begin = part * chunk / V + threadIdx.x;
  const int64_t end = min(a.m, (part + 1) * chunk) / V;
  const int64_t step = blockDim.x;
  float g[K][V] = {}, xmu[K][V] = {};
  int64_t at[K] = {};
  bnk_sums_vec<1> acc = bnk_sums_vec_empty<1>();
  const int vectors = load_channel_gradient<T, V, GRAD>(a, x, dy, base, begin, step, end, vecs_per_run, run_stride,
                                                        mean, g, xmu, at, acc);
  // The second level: vectors K, K + 1, ... of the thread's share, their offsets asked again for dx.
  BNK_DYNAMIC_SHARED(unsigned char, deep_bytes);
  const auto deep_offset = [&](int u) {
    const int64_t j = begin + (int64_t)(K + u) * step;
    return j < end ? base + channel_vector_offset(j, vecs_per_run, run_stride, V) : (int64_t)-1;
  };
  fill_deep_gradient<T, V, GRAD, 1>(a, deep_gradient_of<T, V>(deep_bytes, a.shared_depth), a.shared_depth, x, dy,
                                    deep_offset, mean, acc);
  const float2 sums = bnk_block_reduce(make_float2(acc.dy[0], acc.dy_xmu[0]), shared);
  if (threadIdx.x == 0) {
    const int64_t slot = part * c + channel;
    a.ws.sum_dy[slot] = sums.x;
    a.ws.sum_dy_xmu[slot] = sums.y;
  }

  merge_sums(a, c, parts, dx != NULL);

  if (dx == NULL) return;
  dx_coefficients k[V];
  const dx_coefficients channel_k = cached_dx(a, channel);
#pragma unroll
  for (int i = 0; i < V; ++i) k[i] = channel_k;
#pragma unroll
  for (int u = 0; u < K; ++u)
    if (u < vectors) write_dx<T, V>(a, g[u], xmu[u], k, dx, at[u]);
  // The planes found again rather than kept across the barriers: two registers fewer there.
  write_deep_dx<T, V, 1>(a, deep_gradient_of<T, V>(deep_bytes, a.shared_depth), a.shared_depth, mean, k, dx,
                         deep_offset);
}

// Channels-first, a team of TEAM threads (a warp or the block) per channel, channels in a grid-stride loop
// (for_each_team_channel): the team caches the channel's vectors r, r + TEAM, ... by rank r (all of them:
// bnk_persistent_team), reduces its sums, merges them as the one piece of merge_backward_channel (dgamma, dbeta
// and the dx coefficients written once, by the team) and writes dx from the cache. Nothing here waits for
// another team, so the launch is a plain one (bnk_persistent_team's grid-stride grid): the capacity is the
// team's cache alone. dx may be dy: a team reads all of its channel before it writes any of it.
template <typename T, int V, int GRAD, int TEAM>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    persistent_backward_team(const T *x, const T *dy, T *dx, int64_t c, int64_t s, bnk_fastdiv vecs_per_run,
                             persistent_backward_args a) {
  constexpr int K = BNK_PERSISTENT_TEAM_CACHE(BNK_PERSISTENT_BACKWARD_CACHE, V);
  __shared__ float2 shared[BNK_WARP];
  const int rank = (int)(threadIdx.x % TEAM);
  const int64_t channel_vectors = a.m / V;
  const int64_t run_stride = c * s;
  for_each_team_channel<TEAM>(c, [&](int64_t channel) {
    const int64_t base = channel * s;
    const float mean[1] = {x != NULL ? a.stats.mean[channel] : 0.0f};
    float g[K][V] = {}, xmu[K][V] = {};
    int64_t at[K] = {};
    bnk_sums_vec<1> acc = bnk_sums_vec_empty<1>();
    const int vectors = load_channel_gradient<T, V, GRAD>(a, x, dy, base, rank, TEAM, channel_vectors, vecs_per_run,
                                                          run_stride, mean, g, xmu, at, acc);
    const float2 sums = team_reduce<TEAM>(make_float2(acc.dy[0], acc.dy_xmu[0]), shared);
    if (rank == 0) {  // the channel's one piece, which the same thread reads back in merge_backward_channel
      a.ws.sum_dy[channel] = sums.x;
      a.ws.sum_dy_xmu[channel] = sums.y;
    }
    if (rank < BNK_WARP) merge_backward_channel(channel, c, 1, a.m, a.stats, a.ws, a.dgamma, a.dbeta);
    team_sync<TEAM>();

    if (dx == NULL) return;
    dx_coefficients k[V];
    const dx_coefficients channel_k = cached_dx(a, channel);
#pragma unroll
    for (int i = 0; i < V; ++i) k[i] = channel_k;
#pragma unroll
    for (int u = 0; u < K; ++u)
      if (u < vectors) write_dx<T, V>(a, g[u], xmu[u], k, dx, at[u]);
  });
}

// Channels-last: the tiling of bnk_reduce_plan (bnk_tile_position); thread (tx, ty) caches its V channels in
// rows ty, ty + tile_y, ... of its piece (at most BNK_PERSISTENT_BACKWARD_CACHE rows, and then a.shared_depth in
// the second level). At least 2 blocks per SM (4 element-wide), as the channels-first kernel.
template <typename T, int V, int GRAD>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, V == 1 ? 4 : 2)
    persistent_backward_channels_last(const T *x, const T *dy, T *dx, int64_t rows, int64_t c, int tile_x, int tile_y,
                                      int64_t tiles, int64_t rows_per_part, persistent_backward_args a) {
  constexpr int K = BNK_PERSISTENT_BACKWARD_CACHE;
  typedef bnk_sums_vec<V> state;
  __shared__ float shared[bnk_fields<state>::count * BNK_STREAM_THREADS];
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tile_x, tiles, &part, &ty, &channel0);
  const bool active = channel0 < c;
  float mean[V];
#pragma unroll
  for (int i = 0; i < V; ++i) mean[i] = active && x != NULL ? a.stats.mean[channel0 + i] : 0.0f;

  const int64_t first_row = part * rows_per_part + ty;
  const int64_t row_end = min(rows, (part + 1) * rows_per_part);
  // The second level (rows K, K + 1, ... of the thread's share, as in the channels-first kernel) is filled
  // first, while the registers' cache is not yet live: filled after it, the 16-bit kernels put 16 bytes on the
  // stack. Its terms are added first, in slot order, then the registers' rows.
  state acc = bnk_sums_vec_empty<V>();
  BNK_DYNAMIC_SHARED(unsigned char, deep_bytes);
  const auto deep_offset = [&](int u) {
    const int64_t r = first_row + (int64_t)(K + u) * tile_y;
    return active && r < row_end ? r * c + channel0 : (int64_t)-1;
  };
  fill_deep_gradient<T, V, GRAD, V>(a, deep_gradient_of<T, V>(deep_bytes, a.shared_depth), a.shared_depth, x, dy,
                                    deep_offset, mean, acc);
  float g[K][V] = {}, xmu[K][V] = {};
  int cached = 0;
#pragma unroll
  for (int u = 0; u < K; ++u) {
    const int64_t r = first_row + (int64_t)u * tile_y;
    if (active && r < row_end) {
      load_gradient<GRAD, T, V>(x, dy, a.e, r * c + channel0, g[u], xmu[u]);
      cached = u + 1;
    }
  }
#pragma unroll
  for (int u = 0; u < K; ++u)
    if (u < cached)
      add_cached<T, V, GRAD, V>(a, (first_row + (int64_t)u * tile_y) * c + channel0, g[u], xmu[u], mean, acc);
  acc = bnk_tile_reduce(acc, shared, tile_x, tile_y);
  if (active && (int)threadIdx.x < tile_x) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int64_t out = part * c + channel0 + i;
      a.ws.sum_dy[out] = acc.dy[i];
      a.ws.sum_dy_xmu[out] = acc.dy_xmu[i];
    }
  }

  merge_sums_in_blocks(a, c, (int64_t)gridDim.x / tiles, dx != NULL);  // blocks = tiles x parts

  if (!active || dx == NULL) return;
  dx_coefficients k[V];
#pragma unroll
  for (int i = 0; i < V; ++i) k[i] = cached_dx(a, channel0 + i);
    // Which rows are cached is asked again of the rows rather than of `cached`: kept across the barriers, those
    // conditions are predicates that nvcc parks on the stack.
#pragma unroll
  for (int u = 0; u < K; ++u) {
    const int64_t r = first_row + (int64_t)u * tile_y;
    if (r < row_end) write_dx<T, V>(a, g[u], xmu[u], k, dx, r * c + channel0);
  }
  // The planes and the means found again rather than kept across the barriers: registers fewer there.
#pragma unroll
  for (int i = 0; i < V; ++i) mean[i] = x != NULL ? a.stats.mean[channel0 + i] : 0.0f;
  write_deep_dx<T, V, V>(a, deep_gradient_of<T, V>(deep_bytes, a.shared_depth), a.shared_depth, mean, k, dx,
                         deep_offset);
}

// ---- launch and occupancy: one kernel per (dtype, layout, vector width, gradient source) ----

template <typename T, int V, int GRAD>
static cudaError_t launch_layout(const bnk_view *view, const bnk_reduce_plan *plan, const T *x, const T *dy, T *dx,
                                 persistent_backward_args a, cudaStream_t stream) {
  const dim3 grid((unsigned)plan->blocks), block((unsigned)plan->threads);
  const size_t deep_bytes = bnk_persistent_shared_bytes(1, (int)sizeof(T), V, plan->shared_depth);
  if (view->channels_last) {
    int64_t rows = view->n, c = view->c, tiles = plan->tiles, rows_per_part = plan->rows_per_part;
    int tile_x = plan->tile_x, tile_y = plan->tile_y;
    void *args[] = {&x, &dy, &dx, &rows, &c, &tile_x, &tile_y, &tiles, &rows_per_part, &a};
    return launch_cooperative(persistent_backward_channels_last<T, V, GRAD>, grid, block, args, deep_bytes, stream);
  }
  int64_t c = view->c, s = view->s, parts = plan->parts, chunk = plan->chunk;
  bnk_fastdiv vecs_per_run = bnk_fastdiv_make((uint64_t)(view->s / V));
  const int team = bnk_persistent_team(view, V, BNK_PERSISTENT_BACKWARD_CACHE);
  if (team != 0) {
    const auto kernel = team == BNK_WARP ? persistent_backward_team<T, V, GRAD, BNK_WARP>
                                         : persistent_backward_team<T, V, GRAD, BNK_STREAM_THREADS>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, dy, dx, c, s, vecs_per_run, a);
    return cudaGetLastError();
  }
  void *args[] = {&x, &dy, &dx, &c, &s, &vecs_per_run, &parts, &chunk, &a};
  return launch_cooperative(persistent_backward_channels_first<T, V, GRAD>, grid, block, args, deep_bytes, stream);
}

extern "C" cudaError_t bnk__persistent_backward_occupancy(const bnk_view *view, int vec, int source, int team,
                                                          int shared_depth, int *blocks_per_sm) {
  cudaError_t status = cudaSuccess;
  const cudaError_t found = bnk_dispatch<BNK_GRAD_PLAIN, BNK_GRAD_FROM_Y, BNK_GRAD_FROM_MASK>(
      view->dtype, vec, source, [&](auto type, auto width, auto grad) {
        using T = typename decltype(type)::type;
        constexpr int V = decltype(width)::value, GRAD = decltype(grad)::value;
        const void *kernel =
            view->channels_last ? reinterpret_cast<const void *>(persistent_backward_channels_last<T, V, GRAD>)
            : team == BNK_WARP  ? reinterpret_cast<const void *>(persistent_backward_team<T, V, GRAD, BNK_WARP>)
            : team != 0 ? reinterpret_cast<const void *>(persistent_backward_team<T, V, GRAD, BNK_STREAM_THREADS>)
                        : reinterpret_cast<const void *>(persistent_backward_channels_first<T, V, GRAD>);
        status = deep_cache_occupancy(kernel, bnk_persistent_shared_bytes(1, (int)sizeof(T), V, shared_depth),
                                      blocks_per_sm);
      });
  return found != cudaSuccess ? found : status;
}

extern "C" cudaError_t bnk__launch_persistent_backward(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                                       const void *dy, void *dx, bnk_backward_stats stats, int frozen,
                                                       bnk_backward_workspace ws, float *dgamma, float *dbeta,
                                                       const bnk_grad_epilogue_args *epilogue, cudaStream_t stream) {
  const persistent_backward_args a = {stats,  ws,    view->n * view->s, frozen,
                                      dgamma, dbeta, *epilogue,         plan->shared_depth};
  cudaError_t status = cudaSuccess;
  const cudaError_t found = bnk_dispatch<BNK_GRAD_PLAIN, BNK_GRAD_FROM_Y, BNK_GRAD_FROM_MASK>(
      view->dtype, plan->vec, epilogue->source, [&](auto type, auto width, auto grad) {
        using T = typename decltype(type)::type;
        status = launch_layout<T, decltype(width)::value, decltype(grad)::value>(
            view, plan, static_cast<const T *>(x), static_cast<const T *>(dy), static_cast<T *>(dx), a, stream);
      });
  return found != cudaSuccess ? found : status;
}
