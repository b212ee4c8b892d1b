// The bench's textbook baselines (benchmarks/baselines.h). Written for clarity, the way batch norm is first
// written on a GPU, and deliberately not tuned: their time says what bnk's design buys.
//  - Statistics: one block per channel walks the channel's N x spatial elements with a generic index, sums
//    x and x^2 in float32, reduces them through shared memory, and thread 0 derives mean and variance as
//    E[x^2] - E[x]^2. For NHWC consecutive threads read addresses C elements apart (uncoalesced): that is
//    the cost of the textbook indexing, not an accident.
//  - Elementwise passes: a grid-stride loop, one element per thread per step, the channel recomputed from
//    the flat index by division.
#ifdef BNK_EMULATION
#include <bnk_emu/device.h>
#define BASELINE_LAUNCH(kernel, grid, block, stream, ...) BNK_EMU_LAUNCH(kernel, grid, block, 0, stream)(__VA_ARGS__)
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define BASELINE_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif

#include "benchmarks/baselines.h"

// A power of two: the shared-memory tree reduction halves it.
#define BASELINE_THREADS 256
// Grid-stride loops cover any size; more blocks than this only add scheduling work.
#define BASELINE_MAX_BLOCKS 65535

static __device__ __forceinline__ float load_float(const float *p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float load_float(const __half *p, int64_t i) { return __half2float(p[i]); }
static __device__ __forceinline__ float load_float(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }

static __device__ __forceinline__ void store_float(float *p, int64_t i, float v) { p[i] = v; }
static __device__ __forceinline__ void store_float(__half *p, int64_t i, float v) { p[i] = __float2half_rn(v); }
static __device__ __forceinline__ void store_float(__nv_bfloat16 *p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// The tensor as the kernels see it: element (n, c, s), s the flattened spatial position.
struct baseline_shape {
  int64_t n, c, s;
  int channels_last;
};

static __device__ __forceinline__ int64_t element_offset(const baseline_shape &shape, int64_t n, int64_t c, int64_t s) {
  return shape.channels_last ? (n * shape.s + s) * shape.c + c : (n * shape.c + c) * shape.s + s;
}

static __device__ __forceinline__ int64_t channel_of(const baseline_shape &shape, int64_t flat_index) {
  return shape.channels_last ? flat_index % shape.c : (flat_index / shape.s) % shape.c;
}

// Sums two values over the block into thread 0, by halving a shared array (the textbook tree).
static __device__ void block_sum2(float &a, float &b) {
  __shared__ float shared_a[BASELINE_THREADS];
  __shared__ float shared_b[BASELINE_THREADS];
  const int tid = (int)threadIdx.x;
  shared_a[tid] = a;
  shared_b[tid] = b;
  __syncthreads();
  for (int stride = BASELINE_THREADS / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
      shared_a[tid] += shared_a[tid + stride];
      shared_b[tid] += shared_b[tid + stride];
    }
    __syncthreads();
  }
  a = shared_a[0];
  b = shared_b[0];
}

static __device__ void store_statistics(int64_t channel, int64_t count, float sum, float sum_of_squares, float momentum,
                                        float eps, float *running_mean, float *running_var, float *save_mean,
                                        float *save_invstd) {
  const float mean = sum / (float)count;
  // E[x^2] - E[x]^2 cancels when the mean is large against the spread, and can even come out negative.
  float variance = sum_of_squares / (float)count - mean * mean;
  if (variance < 0.0f) variance = 0.0f;
  save_mean[channel] = mean;
  save_invstd[channel] = 1.0f / sqrtf(variance + eps);
  if (running_mean != nullptr) {
    const float unbiased = variance * (float)count / (float)(count - 1);
    running_mean[channel] = (1.0f - momentum) * running_mean[channel] + momentum * mean;
    running_var[channel] = (1.0f - momentum) * running_var[channel] + momentum * unbiased;
  }
}

template <typename T>
static __global__ void naive_statistics(const T *x, baseline_shape shape, float momentum, float eps,
                                        float *running_mean, float *running_var, float *save_mean, float *save_invstd) {
  const int64_t channel = blockIdx.x;
  const int64_t count = shape.n * shape.s;
  float sum = 0.0f, sum_of_squares = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const float v = load_float(x, element_offset(shape, i / shape.s, channel, i % shape.s));
    sum += v;
    sum_of_squares += v * v;
  }
  block_sum2(sum, sum_of_squares);
  if (threadIdx.x == 0)
    store_statistics(channel, count, sum, sum_of_squares, momentum, eps, running_mean, running_var, save_mean,
                     save_invstd);
}

static __global__ void statistics_from_sums(int64_t channels, int64_t count, const float *sums,
                                            const float *sums_of_squares, float momentum, float eps,
                                            float *running_mean, float *running_var, float *save_mean,
                                            float *save_invstd) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel < channels)
    store_statistics(channel, count, sums[channel], sums_of_squares[channel], momentum, eps, running_mean, running_var,
                     save_mean, save_invstd);
}

template <typename T>
static __global__ void normalize(const T *x, T *y, baseline_shape shape, const float *gamma, const float *beta,
                                 const float *mean, const float *invstd) {
  const int64_t total = shape.n * shape.c * shape.s;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = channel_of(shape, i);
    store_float(y, i, (load_float(x, i) - mean[c]) * invstd[c] * gamma[c] + beta[c]);
  }
}

template <typename T>
static __global__ void normalize_inference(const T *x, T *y, baseline_shape shape, const float *gamma,
                                           const float *beta, const float *running_mean, const float *running_var,
                                           float eps) {
  const int64_t total = shape.n * shape.c * shape.s;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = channel_of(shape, i);
    // The textbook form: the square root per element, not hoisted into a per-channel scale.
    store_float(y, i, (load_float(x, i) - running_mean[c]) / sqrtf(running_var[c] + eps) * gamma[c] + beta[c]);
  }
}

static __device__ __forceinline__ float invstd_of(const float *spread, int64_t c, int frozen, float eps) {
  return frozen ? 1.0f / sqrtf(spread[c] + eps) : spread[c];
}

// dbeta = sum dy, dgamma = sum dy xhat, one block per channel.
template <typename T>
static __global__ void naive_gradient_sums(const T *x, const T *dy, baseline_shape shape, const float *mean,
                                           const float *spread, int frozen, float eps, float *dgamma, float *dbeta) {
  const int64_t channel = blockIdx.x;
  const int64_t count = shape.n * shape.s;
  const float channel_mean = mean[channel];
  const float invstd = invstd_of(spread, channel, frozen, eps);
  float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t offset = element_offset(shape, i / shape.s, channel, i % shape.s);
    const float g = load_float(dy, offset);
    sum_dy += g;
    sum_dy_xhat += g * (load_float(x, offset) - channel_mean) * invstd;
  }
  block_sum2(sum_dy, sum_dy_xhat);
  if (threadIdx.x == 0) {
    dbeta[channel] = sum_dy;
    dgamma[channel] = sum_dy_xhat;
  }
}

static __global__ void gradients_from_sums(int64_t channels, const float *sum_dy, const float *sum_dy_x,
                                           const float *mean, const float *spread, int frozen, float eps, float *dgamma,
                                           float *dbeta) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= channels) return;
  // sum dy (x - mean) invstd, expanded so that it needs only the two totals; it cancels like E[x^2] - E[x]^2.
  dgamma[channel] = (sum_dy_x[channel] - mean[channel] * sum_dy[channel]) * invstd_of(spread, channel, frozen, eps);
  dbeta[channel] = sum_dy[channel];
}

template <typename T>
static __global__ void backward_dx(const T *x, const T *dy, T *dx, baseline_shape shape, const float *gamma,
                                   const float *mean, const float *spread, int frozen, float eps, const float *dgamma,
                                   const float *dbeta) {
  const int64_t total = shape.n * shape.c * shape.s;
  const float count = (float)(shape.n * shape.s);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = channel_of(shape, i);
    const float invstd = invstd_of(spread, c, frozen, eps);
    const float g = load_float(dy, i);
    if (frozen) {
      store_float(dx, i, g * gamma[c] * invstd);
    } else {
      const float xhat = (load_float(x, i) - mean[c]) * invstd;
      store_float(dx, i, gamma[c] * invstd * (g - dbeta[c] / count - xhat * dgamma[c] / count));
    }
  }
}

// y = relu(y + z), z null for relu(y): a separate pass after the BN, as a framework runs it unfused.
template <typename T>
static __global__ void add_relu(T *y, const T *z, int64_t total) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = load_float(y, i) + (z != nullptr ? load_float(z, i) : 0.0f);
    store_float(y, i, v < 0.0f ? 0.0f : v);  // NaN compares false and stays NaN
  }
}

template <typename T>
static __global__ void relu_backward(const T *y, const T *dy, T *g, int64_t total) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    store_float(g, i, load_float(y, i) > 0.0f ? load_float(dy, i) : 0.0f);  // exact: dy is widened, then narrowed
}

// ---- launchers ------------------------------------------------------------------------------------------

static baseline_shape shape_of(const bnk_tensor_desc *desc) {
  baseline_shape shape;
  shape.n = desc->n;
  shape.c = desc->c;
  shape.s = 1;
  for (int d = 0; d < desc->spatial_dims; ++d) shape.s *= desc->spatial[d];
  // Without spatial dims both layouts are the same (N, C) matrix, which either formula indexes.
  shape.channels_last = desc->layout == BNK_NHWC;
  return shape;
}

static dim3 elementwise_grid(const baseline_shape &shape) {
  const int64_t blocks = (shape.n * shape.c * shape.s + BASELINE_THREADS - 1) / BASELINE_THREADS;
  return dim3((unsigned)(blocks < BASELINE_MAX_BLOCKS ? (blocks > 0 ? blocks : 1) : BASELINE_MAX_BLOCKS));
}

static dim3 per_channel_grid(int64_t channels) {
  return dim3((unsigned)((channels + BASELINE_THREADS - 1) / BASELINE_THREADS));
}

// Calls launch<T>() with T the storage type of the descriptor.
template <typename Launch>
static cudaError_t by_dtype(const bnk_tensor_desc *desc, Launch launch) {
  switch (desc->dtype) {
  case BNK_FLOAT32:
    launch(float{});
    break;
  case BNK_FLOAT16:
    launch(__half{});
    break;
  case BNK_BFLOAT16:
    launch(__nv_bfloat16{});
    break;
  default:
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

extern "C" cudaError_t naive_forward_training(const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                                              const float *beta, float *running_mean, float *running_var,
                                              double momentum, double eps, float *save_mean, float *save_invstd,
                                              cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(naive_statistics<T>, dim3((unsigned)shape.c), dim3(BASELINE_THREADS), stream,
                    static_cast<const T *>(x), shape, (float)momentum, (float)eps, running_mean, running_var, save_mean,
                    save_invstd);
    BASELINE_LAUNCH(normalize<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream, static_cast<const T *>(x),
                    static_cast<T *>(y), shape, gamma, beta, (const float *)save_mean, (const float *)save_invstd);
  });
}

extern "C" cudaError_t naive_forward_inference(const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                                               const float *beta, const float *running_mean, const float *running_var,
                                               double eps, cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(normalize_inference<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream,
                    static_cast<const T *>(x), static_cast<T *>(y), shape, gamma, beta, running_mean, running_var,
                    (float)eps);
  });
}

static cudaError_t naive_gradients(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                   const float *gamma, float *dgamma, float *dbeta, const float *mean,
                                   const float *spread, int frozen, double eps, cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(naive_gradient_sums<T>, dim3((unsigned)shape.c), dim3(BASELINE_THREADS), stream,
                    static_cast<const T *>(x), static_cast<const T *>(dy), shape, mean, spread, frozen, (float)eps,
                    dgamma, dbeta);
    BASELINE_LAUNCH(backward_dx<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream, static_cast<const T *>(x),
                    static_cast<const T *>(dy), static_cast<T *>(dx), shape, gamma, mean, spread, frozen, (float)eps,
                    (const float *)dgamma, (const float *)dbeta);
  });
}

extern "C" cudaError_t naive_backward(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                      const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                                      const float *save_invstd, cudaStream_t stream) {
  return naive_gradients(desc, x, dy, dx, gamma, dgamma, dbeta, save_mean, save_invstd, 0, 0.0, stream);
}

extern "C" cudaError_t naive_backward_inference(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                                const float *gamma, float *dgamma, float *dbeta,
                                                const float *running_mean, const float *running_var, double eps,
                                                cudaStream_t stream) {
  return naive_gradients(desc, x, dy, dx, gamma, dgamma, dbeta, running_mean, running_var, 1, eps, stream);
}

extern "C" cudaError_t baseline_statistics_from_sums(int64_t channels, int64_t count, const float *sums,
                                                     const float *sums_of_squares, double momentum, double eps,
                                                     float *running_mean, float *running_var, float *save_mean,
                                                     float *save_invstd, cudaStream_t stream) {
  BASELINE_LAUNCH(statistics_from_sums, per_channel_grid(channels), dim3(BASELINE_THREADS), stream, channels, count,
                  sums, sums_of_squares, (float)momentum, (float)eps, running_mean, running_var, save_mean,
                  save_invstd);
  return cudaGetLastError();
}

extern "C" cudaError_t baseline_normalize(const bnk_tensor_desc *desc, const void *x, void *y, const float *gamma,
                                          const float *beta, const float *mean, const float *invstd,
                                          cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(normalize<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream, static_cast<const T *>(x),
                    static_cast<T *>(y), shape, gamma, beta, mean, invstd);
  });
}

extern "C" cudaError_t baseline_gradients_from_sums(int64_t channels, const float *sum_dy, const float *sum_dy_x,
                                                    const float *mean, const float *spread, int frozen, double eps,
                                                    float *dgamma, float *dbeta, cudaStream_t stream) {
  BASELINE_LAUNCH(gradients_from_sums, per_channel_grid(channels), dim3(BASELINE_THREADS), stream, channels, sum_dy,
                  sum_dy_x, mean, spread, frozen, (float)eps, dgamma, dbeta);
  return cudaGetLastError();
}

extern "C" cudaError_t baseline_backward_dx(const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                            const float *gamma, const float *mean, const float *spread, int frozen,
                                            double eps, const float *dgamma, const float *dbeta, cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(backward_dx<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream, static_cast<const T *>(x),
                    static_cast<const T *>(dy), static_cast<T *>(dx), shape, gamma, mean, spread, frozen, (float)eps,
                    dgamma, dbeta);
  });
}

extern "C" cudaError_t baseline_add_relu(const bnk_tensor_desc *desc, void *y, const void *z, cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(add_relu<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream, static_cast<T *>(y),
                    static_cast<const T *>(z), shape.n * shape.c * shape.s);
  });
}

extern "C" cudaError_t baseline_relu_backward(const bnk_tensor_desc *desc, const void *y, const void *dy, void *g,
                                              cudaStream_t stream) {
  const baseline_shape shape = shape_of(desc);
  return by_dtype(desc, [&](auto type) {
    using T = decltype(type);
    BASELINE_LAUNCH(relu_backward<T>, elementwise_grid(shape), dim3(BASELINE_THREADS), stream,
                    static_cast<const T *>(y), static_cast<const T *>(dy), static_cast<T *>(g),
                    shape.n * shape.c * shape.s);
  });
}
