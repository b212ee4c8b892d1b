// The elementwise pass of the forward: y = ((x - shift) - dmean) * (invstd * gamma) + beta, reading x once
// and writing y once. Training passes the batch statistics from the workspace (shift = K, dmean =
// mean - K); inference passes running_mean as shift and running_var, from which invstd is derived.
// Subtracting the two parts of the mean one after the other keeps y exact when |mean| >> std.
// bnk_scale_shift passes no shift and its precomputed scale as invstd: y = x * scale + shift, one fma.
//
// The fused epilogue (a template parameter, bnk_epilogue_kind) adds the residual z and applies the ReLU
// to the fp32 result before its one rounding, and may record y > 0 per element in a bit mask.
//
// y may be x and z may be y (in place): every tensor access is a plain coherent load or store
// (bnk_load), each element read by the thread that then writes it.
#include "kernels/affine.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/elementwise.cuh"

template <int EPILOGUE>
static __device__ __forceinline__ float normalize_one(float x, float z, const bnk_channel_affine &a) {
  return apply_epilogue<EPILOGUE>(apply_affine(x, a), z);
}

// Records y > 0 of a vector of `element`'s word group: whole words built in the warp (plan.mask_words),
// else ORed into the zeroed mask. Every lane of a word group calls it, count 0 for no elements; with
// WHOLE_WARP every lane of the warp (bnk_mask_word).
template <typename T, int V, bool WHOLE_WARP>
static __device__ __forceinline__ void record_mask(uint32_t *mask, bool mask_words, int64_t element, int count,
                                                   const float (&y)[V]) {
  unsigned bits = count > 0 ? bnk_positive_bits<T, V>(y) : 0u;
  if (count < V) bits &= (1u << count) - 1u;
  if (mask_words) {
    const unsigned word = bnk_mask_word<V, WHOLE_WARP>(bits);
    if (bnk_mask_word_owner<V>() && count > 0) mask[element / 32] = word;
  } else if (count > 0) {
    bnk_mask_set<V>(mask, element, bits);
  }
}

// Channels-first: the flat walk (kernels/elementwise.cuh) with each run's affine in the block's table.
// z (ADD_RELU) is read like x; mask may be NULL.
template <typename T, int V, bool FROM_VARIANCE, int EPILOGUE>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    normalize_channels_first(const T *x, const T *z, T *y, uint32_t *mask, bnk_elementwise_plan plan, int64_t c,
                             int64_t s, bnk_normalize_params p) {
  BNK_DYNAMIC_SHARED(bnk_channel_affine, table);
  const bnk_flat_start start =
      bnk_flat_begin<V>(plan, c, s, table, [&](int64_t channel) { return channel_affine<FROM_VARIANCE>(p, channel); });
  float v[BNK_UNROLL][V] = {}, vz[BNK_UNROLL][V] = {};
  bnk_flat_walk<V>(
      plan, start,
      [&](int u, int64_t element, int count) {
        bnk_load_first<T, V>(x + element, count, v[u]);
        if constexpr (EPILOGUE == BNK_EPILOGUE_ADD_RELU) bnk_load_first<T, V>(z + element, count, vz[u]);
      },
      [&](int u, int64_t element, int count, const bnk_flat_cursor &cursor) {
        if (count > 0) {
          bnk_apply_runs(v[u], vz[u], count, cursor, table, plan.run_length,
                         [](float value, float z_value, const bnk_channel_affine &a) {
                           return normalize_one<EPILOGUE>(value, z_value, a);
                         });
          bnk_store_first<T, V>(y + element, count, v[u]);
        }
        if (EPILOGUE != BNK_EPILOGUE_NONE && mask != NULL) record_mask<T, V, true>(mask, true, element, count, v[u]);
      });
}

// Channels-last: the tiling of bnk_reduce_plan; each thread keeps the affine of its V channels in
// registers and walks rows ty, ty + tile_y, ... of its piece.
template <typename T, int V, bool FROM_VARIANCE, int EPILOGUE>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS, BNK_MIN_RESIDENT_BLOCKS)
    normalize_channels_last(const T *x, const T *z, T *y, uint32_t *mask, bnk_elementwise_plan plan, int64_t rows,
                            int64_t c, bnk_normalize_params p) {
  const bnk_reduce_plan &tiling = plan.tiling;
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tiling.tile_x, tiling.tiles, &part, &ty, &channel0);
  if (channel0 >= c) return;  // with mask words, whole word groups leave together (C % 32 == 0)
  bnk_channel_affine a[V];
#pragma unroll
  for (int i = 0; i < V; ++i) a[i] = channel_affine<FROM_VARIANCE>(p, channel0 + i);
  const int64_t row_begin = part * tiling.rows_per_part;
  const int64_t row_end = min(rows, row_begin + tiling.rows_per_part);
  constexpr int U = bnk_tile_unroll<V, EPILOGUE == BNK_EPILOGUE_ADD_RELU>::value;
  float v[U][V] = {}, vz[U][V] = {};
  bnk_walk<U>(
      row_begin + ty, row_end, (int64_t)tiling.tile_y,
      [&](int u, int64_t r) {
        bnk_load<T, V>(x + r * c + channel0, v[u]);
        if constexpr (EPILOGUE == BNK_EPILOGUE_ADD_RELU) bnk_load<T, V>(z + r * c + channel0, vz[u]);
      },
      [&](int u, int64_t r) {
        const int64_t element = r * c + channel0;
#pragma unroll
        for (int k = 0; k < V; ++k) v[u][k] = normalize_one<EPILOGUE>(v[u][k], vz[u][k], a[k]);
        bnk_store<T, V>(y + element, v[u]);
        if (EPILOGUE != BNK_EPILOGUE_NONE && mask != NULL)
          record_mask<T, V, false>(mask, plan.mask_words != 0, element, V, v[u]);
      });
}

template <typename T, int V, bool FROM_VARIANCE, int EPILOGUE>
static void launch_normalize_typed(const bnk_view *view, const bnk_elementwise_plan &plan, const T *x, const T *z, T *y,
                                   uint32_t *mask, const bnk_normalize_params &p, cudaStream_t stream) {
  const dim3 grid((unsigned)plan.blocks), block((unsigned)plan.threads);
  if (view->channels_last) {
    auto kernel = normalize_channels_last<T, V, FROM_VARIANCE, EPILOGUE>;
    BNK_LAUNCH(kernel, grid, block, 0, stream, x, z, y, mask, plan, view->n, view->c, p);
  } else {
    auto kernel = normalize_channels_first<T, V, FROM_VARIANCE, EPILOGUE>;
    const size_t table_bytes = (size_t)plan.table_runs * sizeof(bnk_channel_affine);
    BNK_LAUNCH(kernel, grid, block, table_bytes, stream, x, z, y, mask, plan, view->c, view->s, p);
  }
}

extern "C" cudaError_t bnk__launch_normalize_ex(const bnk_view *view, const bnk_elementwise_plan *plan, const void *x,
                                                void *y, bnk_normalize_params params, const bnk_epilogue_args *epilogue,
                                                cudaStream_t stream) {
  const bnk_epilogue_args plain = {BNK_EPILOGUE_NONE, NULL, NULL};
  const bnk_epilogue_args &e = epilogue != NULL ? *epilogue : plain;
  if (e.mask != NULL && !plan->mask_words) {
    // The kernel ORs the set bits in; every other bit, and the padding of the last word, must read 0.
    const cudaError_t status = cudaMemsetAsync(e.mask, 0, bnk_mask_bytes(view->n * view->c * view->s), stream);
    if (status != cudaSuccess) return status;
  }
  const bool from_variance = params.variance != NULL;
  const cudaError_t status = bnk_dispatch<BNK_EPILOGUE_NONE, BNK_EPILOGUE_RELU, BNK_EPILOGUE_ADD_RELU>(
      view->dtype, plan->vec, e.kind, [&](auto type, auto vec, auto kind) {
        using T = typename decltype(type)::type;
        constexpr int V = decltype(vec)::value, EPILOGUE = decltype(kind)::value;
        const T *xt = static_cast<const T *>(x), *zt = static_cast<const T *>(e.z);
        T *yt = static_cast<T *>(y);
        if (from_variance)
          launch_normalize_typed<T, V, true, EPILOGUE>(view, *plan, xt, zt, yt, e.mask, params, stream);
        else launch_normalize_typed<T, V, false, EPILOGUE>(view, *plan, xt, zt, yt, e.mask, params, stream);
      });
  return status != cudaSuccess ? status : cudaGetLastError();
}

// The channels-first run table is at most BNK_TABLE_MAX(V) entries (BNK_TABLE_TARGET but for the tiniest S,
// where one tile touches more runs): residency is taken at that most.
extern "C" cudaError_t bnk__normalize_occupancy(bnk_occupancy_table *table) {
  return bnk_for_each_storage([&](auto type, auto width, int dtype, int wide) {
    using T = typename decltype(type)::type;
    constexpr int V = decltype(width)::value;
    return bnk_for_each_value<BNK_EPILOGUE_NONE, BNK_EPILOGUE_RELU, BNK_EPILOGUE_ADD_RELU>([&](auto kind) {
      constexpr int EPILOGUE = decltype(kind)::value;
      int(&row)[2][3][2][BNK_OCCUPANCY_VARIANTS] = table->blocks_per_sm[BNK_FAMILY_NORMALIZE];
      const size_t table_bytes = (size_t)BNK_TABLE_MAX(V) * sizeof(bnk_channel_affine);
      return bnk_for_each_value<0, 1>([&](auto variance) {
        constexpr bool FROM_VARIANCE = decltype(variance)::value != 0;
        const int variant = bnk_normalize_variant(EPILOGUE, FROM_VARIANCE);
        const cudaError_t status = bnk_occupancy(normalize_channels_first<T, V, FROM_VARIANCE, EPILOGUE>, table_bytes,
                                                 &row[0][dtype][wide][variant]);
        return status != cudaSuccess ? status
                                     : bnk_occupancy(normalize_channels_last<T, V, FROM_VARIANCE, EPILOGUE>, 0,
                                                     &row[1][dtype][wide][variant]);
      });
    });
  });
}
