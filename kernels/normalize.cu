// The elementwise pass of the forward: y = ((x - shift) - dmean) * (invstd * gamma) + beta, reading x once
// and writing y once. Training passes the batch statistics from the workspace (shift = K, dmean =
// mean - K); inference passes running_mean as shift and running_var, from which invstd is derived.
// Subtracting the two parts of the mean one after the other keeps y exact when |mean| >> std.
// bnk_scale_shift passes no shift and its precomputed scale as invstd: y = x * scale + shift, one fma.
//
// The fused epilogue (a template parameter, bnk_epilogue_kind) adds the residual z and applies the ReLU
// to the fp32 result before its one rounding, and may record y > 0 per element in a bit mask.
#include "kernels/affine.cuh"

// Channels-first: the tensor is n * c runs of s elements; vector j lies in run j / (s / V), whose channel
// is run % c. A grid-stride loop over all vectors. z (ADD_RELU) is read like x; mask may be NULL.
template <typename T, int V, bool FROM_VARIANCE, int EPILOGUE>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    normalize_channels_first(const T *x, const T *z, T *y, uint32_t *mask, int64_t vecs, bnk_fastdiv vecs_per_run,
                             bnk_fastdiv channels, bnk_normalize_params p) {
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t j0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j0 < vecs; j0 += BNK_UNROLL * step) {
    float v[BNK_UNROLL][V] = {}, vz[BNK_UNROLL][V] = {};
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u) {
      const int64_t j = j0 + u * step;
      if (j < vecs) {
        bnk_load<T, V>(x + j * V, v[u]);
        if constexpr (EPILOGUE == BNK_EPILOGUE_ADD_RELU) bnk_load<T, V>(z + j * V, vz[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u) {
      const int64_t j = j0 + u * step;
      if (j < vecs) {
        const uint64_t run = bnk_div((uint64_t)j, vecs_per_run);
        const bnk_channel_affine a = channel_affine<FROM_VARIANCE>(p, (int64_t)bnk_mod(run, channels));
#pragma unroll
        for (int i = 0; i < V; ++i) v[u][i] = apply_epilogue<EPILOGUE>(apply_affine(v[u][i], a), vz[u][i]);
        bnk_store<T, V>(y + j * V, v[u]);
        if (EPILOGUE != BNK_EPILOGUE_NONE && mask != NULL) bnk_mask_set<V>(mask, j * V, bnk_positive_bits<T, V>(v[u]));
      }
    }
  }
}

// Channels-last: the tiling of bnk_reduce_plan; each thread keeps the affine of its V channels in
// registers and walks rows ty, ty + tile_y, ... of its piece.
template <typename T, int V, bool FROM_VARIANCE, int EPILOGUE>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    normalize_channels_last(const T *x, const T *z, T *y, uint32_t *mask, int64_t rows, int64_t c, int tile_x,
                            int tile_y, int64_t tiles, int64_t rows_per_part, bnk_normalize_params p) {
  int64_t part, channel0;
  int ty;
  bnk_tile_position<V>(tile_x, tiles, &part, &ty, &channel0);
  if (channel0 >= c) return;
  bnk_channel_affine a[V];
#pragma unroll
  for (int i = 0; i < V; ++i) a[i] = channel_affine<FROM_VARIANCE>(p, channel0 + i);
  const int64_t row_begin = part * rows_per_part;
  const int64_t row_end = min(rows, row_begin + rows_per_part);
  for (int64_t r0 = row_begin + ty; r0 < row_end; r0 += BNK_UNROLL * tile_y) {
    float v[BNK_UNROLL][V] = {}, vz[BNK_UNROLL][V] = {};
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u) {
      const int64_t r = r0 + (int64_t)u * tile_y;
      if (r < row_end) {
        bnk_load<T, V>(x + r * c + channel0, v[u]);
        if constexpr (EPILOGUE == BNK_EPILOGUE_ADD_RELU) bnk_load<T, V>(z + r * c + channel0, vz[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < BNK_UNROLL; ++u) {
      const int64_t r = r0 + (int64_t)u * tile_y;
      if (r < row_end) {
#pragma unroll
        for (int i = 0; i < V; ++i) v[u][i] = apply_epilogue<EPILOGUE>(apply_affine(v[u][i], a[i]), vz[u][i]);
        bnk_store<T, V>(y + r * c + channel0, v[u]);
        if (EPILOGUE != BNK_EPILOGUE_NONE && mask != NULL)
          bnk_mask_set<V>(mask, r * c + channel0, bnk_positive_bits<T, V>(v[u]));
      }
    }
  }
}

template <typename T, int V, bool FROM_VARIANCE, int EPILOGUE>
static void launch_normalize_typed(const bnk_view *view, int sm_count, const bnk_reduce_plan *plan, const T *x,
                                   const T *z, T *y, uint32_t *mask, const bnk_normalize_params &p,
                                   cudaStream_t stream) {
  if (view->channels_last) {
    auto kernel = normalize_channels_last<T, V, FROM_VARIANCE, EPILOGUE>;
    BNK_LAUNCH(kernel, dim3((unsigned)plan->blocks), dim3((unsigned)plan->threads), 0, stream)(
        x, z, y, mask, view->n, view->c, plan->tile_x, plan->tile_y, plan->tiles, plan->rows_per_part, p);
  } else {
    const int64_t vecs = view->n * view->c * view->s / V;
    const unsigned blocks = (unsigned)bnk_plan_grid_stride_blocks(vecs, sm_count);
    auto kernel = normalize_channels_first<T, V, FROM_VARIANCE, EPILOGUE>;
    BNK_LAUNCH(kernel, dim3(blocks), dim3(BNK_STREAM_THREADS), 0, stream)(
        x, z, y, mask, vecs, bnk_fastdiv_make((uint64_t)(view->s / V)), bnk_fastdiv_make((uint64_t)view->c), p);
  }
}

template <typename T, int V, bool FROM_VARIANCE>
static void launch_normalize_epilogue(const bnk_view *view, int sm_count, const bnk_reduce_plan *plan, const T *x,
                                      T *y, const bnk_normalize_params &p, const bnk_epilogue_args &e,
                                      cudaStream_t stream) {
  const T *z = static_cast<const T *>(e.z);
  switch (e.kind) {
  case BNK_EPILOGUE_RELU:
    launch_normalize_typed<T, V, FROM_VARIANCE, BNK_EPILOGUE_RELU>(view, sm_count, plan, x, z, y, e.mask, p, stream);
    break;
  case BNK_EPILOGUE_ADD_RELU:
    launch_normalize_typed<T, V, FROM_VARIANCE, BNK_EPILOGUE_ADD_RELU>(view, sm_count, plan, x, z, y, e.mask, p,
                                                                       stream);
    break;
  default:
    launch_normalize_typed<T, V, FROM_VARIANCE, BNK_EPILOGUE_NONE>(view, sm_count, plan, x, z, y, e.mask, p, stream);
    break;
  }
}

template <typename T>
static void launch_normalize_dtype(const bnk_view *view, int sm_count, const void *x, void *y,
                                   const bnk_normalize_params &p, const bnk_epilogue_args &e, cudaStream_t stream) {
  constexpr int W = bnk_vec_width<T>::value;
  const void *pointers[3] = {x, y, e.z};
  const int vec = bnk_choose_vec(view, pointers, e.z != NULL ? 3 : 2);
  const bnk_reduce_plan plan = bnk_plan_reduce(view, vec, sm_count);
  const T *xt = static_cast<const T *>(x);
  T *yt = static_cast<T *>(y);
  const bool from_variance = p.variance != NULL;
  if (vec == W) {
    if (from_variance) launch_normalize_epilogue<T, W, true>(view, sm_count, &plan, xt, yt, p, e, stream);
    else launch_normalize_epilogue<T, W, false>(view, sm_count, &plan, xt, yt, p, e, stream);
  } else {
    if (from_variance) launch_normalize_epilogue<T, 1, true>(view, sm_count, &plan, xt, yt, p, e, stream);
    else launch_normalize_epilogue<T, 1, false>(view, sm_count, &plan, xt, yt, p, e, stream);
  }
}

extern "C" cudaError_t bnk_launch_normalize_ex(const bnk_view *view, int sm_count, const void *x, void *y,
                                               bnk_normalize_params params, const bnk_epilogue_args *epilogue,
                                               cudaStream_t stream) {
  const bnk_epilogue_args plain = {BNK_EPILOGUE_NONE, NULL, NULL};
  const bnk_epilogue_args &e = epilogue != NULL ? *epilogue : plain;
  if (e.mask != NULL) {
    // The kernel ORs the set bits in; every other bit, and the padding of the last word, must read 0.
    const cudaError_t status =
        cudaMemsetAsync(e.mask, 0, bnk_mask_bytes(view->n * view->c * view->s), stream);
    if (status != cudaSuccess) return status;
  }
  switch (view->dtype) {
  case BNK_FLOAT32: launch_normalize_dtype<float>(view, sm_count, x, y, params, e, stream); break;
  case BNK_FLOAT16: launch_normalize_dtype<__half>(view, sm_count, x, y, params, e, stream); break;
  case BNK_BFLOAT16: launch_normalize_dtype<__nv_bfloat16>(view, sm_count, x, y, params, e, stream); break;
  default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
