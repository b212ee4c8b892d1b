// Test kernels that drive the shared reduction primitives of kernels/reduce.cuh directly, on one block of
// any size, and the fast division of kernels/common.cuh. Launched from test_reduce.c.
#include "kernels/reduce.cuh"

// Each thread folds elements thread, thread + blockDim, ... into a Welford triple (one value at a time,
// or V consecutive values at a time when chunked), then the block merges them into thread 0.
template <int V>
static __global__ void welford_block(const float *x, int64_t count, float *out) {
  __shared__ bnk_welford shared[BNK_WARP];
  bnk_welford_run run = bnk_run_empty();
  for (int64_t i = (int64_t)threadIdx.x * V; i + V <= count; i += (int64_t)blockDim.x * V) {
    float v[1][V];
    for (int k = 0; k < V; ++k) v[0][k] = x[i + k];
    bnk_run_add(run, bnk_welford_of<1, V>(v, 1));
  }
  const bnk_welford acc = bnk_block_reduce(bnk_run_result(run), shared);
  if (threadIdx.x == 0) {
    out[0] = acc.count;
    out[1] = acc.mean;
    out[2] = acc.m2;
  }
}

static __global__ void sum_block(const float *x, int64_t count, float *out) {
  __shared__ float2 shared[BNK_WARP];
  float2 acc = make_float2(0.0f, 0.0f);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc = bnk_combine(acc, make_float2(x[i], x[i] * x[i]));
  acc = bnk_block_reduce(acc, shared);
  if (threadIdx.x == 0) {
    out[0] = acc.x;
    out[1] = acc.y;
  }
}

// Lanes [0, lanes) of one warp reduce their value; the others take no part, as in a partial warp.
static __global__ void sum_partial_warp(const float *x, int lanes, float *out) {
  const int lane = (int)threadIdx.x;
  if (lane >= lanes) return;
  const unsigned mask = lanes == BNK_WARP ? BNK_FULL_MASK : (1u << lanes) - 1u;
  const float total = bnk_warp_reduce(x[lane], mask, lanes);
  if (lane == 0) out[0] = total;
}

static __global__ void fast_division(const uint64_t *dividends, int count, bnk_fastdiv divisor, uint64_t *quotients) {
  const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < count) quotients[i] = bnk_div(dividends[i], divisor);
}

// Each thread stores its value in dynamic shared memory; after the barrier it reads its mirror's.
static __global__ void reverse_in_shared(const float *x, float *out) {
  BNK_DYNAMIC_SHARED(float, values);
  const int n = (int)blockDim.x;
  values[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = values[n - 1 - (int)threadIdx.x];
}

extern "C" cudaError_t test_reverse_in_shared(const float *x, int threads, float *out) {
  BNK_LAUNCH(reverse_in_shared, dim3(1), dim3((unsigned)threads), (size_t)threads * sizeof(float), 0, x, out);
  return cudaGetLastError();
}

extern "C" cudaError_t test_welford_block(const float *x, int64_t count, int threads, int chunked, float *out) {
  auto kernel = chunked ? welford_block<4> : welford_block<1>;
  BNK_LAUNCH(kernel, dim3(1), dim3((unsigned)threads), 0, 0, x, count, out);
  return cudaGetLastError();
}

extern "C" cudaError_t test_sum_block(const float *x, int64_t count, int threads, float *out) {
  BNK_LAUNCH(sum_block, dim3(1), dim3((unsigned)threads), 0, 0, x, count, out);
  return cudaGetLastError();
}

extern "C" cudaError_t test_sum_partial_warp(const float *x, int lanes, float *out) {
  BNK_LAUNCH(sum_partial_warp, dim3(1), dim3(BNK_WARP), 0, 0, x, lanes, out);
  return cudaGetLastError();
}

extern "C" cudaError_t test_fast_division(const uint64_t *dividends, int count, uint64_t divisor, uint64_t *quotients) {
  BNK_LAUNCH(fast_division, dim3((unsigned)((count + 127) / 128)), dim3(128), 0, 0, dividends, count,
             bnk_fastdiv_make(divisor), quotients);
  return cudaGetLastError();
}

// A channels-last tile of tile_x x tile_y threads over x[rows][tile_x * 4] (rows = tile_y * rows_per_thread):
// thread (tx, ty) folds rows ty, ty + tile_y, ... of channels 4 tx .. 4 tx + 3 in chunks of BNK_UNROLL rows
// (the last chunk partial when rows_per_thread is not a multiple of it), then bnk_tile_reduce merges the
// tile. Out per channel: count, mean, M2, sum (the bnk_sums_vec path, over the same values).
static __global__ void tile_reduce(const float *x, int tile_x, int tile_y, int rows_per_thread, float *out) {
  __shared__ float shared_welford[bnk_fields<bnk_welford_vec<4>>::count * BNK_STREAM_THREADS];
  __shared__ float shared_sums[bnk_fields<bnk_sums_vec<4>>::count * BNK_STREAM_THREADS];
  const int tx = (int)threadIdx.x % tile_x, ty = (int)threadIdx.x / tile_x;
  const int64_t width = (int64_t)tile_x * 4;
  bnk_welford_vec_run<4> run = bnk_run_vec_empty<4>();
  bnk_sums_vec<4> sums = bnk_sums_vec_empty<4>();
  for (int done = 0; done < rows_per_thread; done += BNK_UNROLL) {
    const int rows = min(BNK_UNROLL, rows_per_thread - done);
    float v[BNK_UNROLL][4] = {};
    for (int u = 0; u < rows; ++u)
      for (int i = 0; i < 4; ++i) {
        v[u][i] = x[(int64_t)(ty + (done + u) * tile_y) * width + tx * 4 + i];
        sums.dy[i] += v[u][i];
      }
    bnk_run_add_rows<BNK_UNROLL, 4>(run, v, rows);
  }
  const bnk_welford_vec<4> w = bnk_tile_reduce(bnk_run_result(run), shared_welford, tile_x, tile_y);
  sums = bnk_tile_reduce(sums, shared_sums, tile_x, tile_y);
  if ((int)threadIdx.x < tile_x) {
    for (int i = 0; i < 4; ++i) {
      float *o = out + (tx * 4 + i) * 4;
      o[0] = w.count;
      o[1] = w.mean[i];
      o[2] = w.m2[i];
      o[3] = sums.dy[i];
    }
  }
}

extern "C" cudaError_t test_tile_reduce(const float *x, int tile_x, int tile_y, int rows_per_thread, float *out) {
  BNK_LAUNCH(tile_reduce, dim3(1), dim3((unsigned)(tile_x * tile_y)), 0, 0, x, tile_x, tile_y, rows_per_thread, out);
  return cudaGetLastError();
}
