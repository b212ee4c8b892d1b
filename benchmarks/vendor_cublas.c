/* The cuBLAS baseline: the per-channel reductions of batch norm done by cuBLAS, the way one does it with a
 * BLAS at hand, and the rest (statistics from the sums, the elementwise pass) by benchmarks/baselines.cu.
 *
 *   sum over a channel     = a GEMV against a vector of ones, in the storage type, accumulated in float32
 *                            (cublasGemmEx with n = 1: cuBLAS's GEMV takes no 16-bit inputs);
 *   sum of a * b over it   = a batch of dot products, one per channel, as cublasGemmStridedBatchedEx of
 *                            1 x 1 results (x.x for the variance, dy.x for dgamma). cuBLAS has no batched dot,
 *                            and a strided-batched 1 x k by k x 1 GEMM is one.
 *
 * Layouts (M = N x spatial elements per channel, S = spatial positions):
 *  - NHWC (and (N, C)): the tensor is a column-major C x M matrix with leading dimension C. The sums are one
 *    GEMV (C x M times ones(M)); channel c's dot is over the strided vector starting at c, stride C, so the C
 *    dots are one strided-batched GEMM with batch stride 1 and leading dimension C.
 *  - NCHW: a channel is N runs of S contiguous elements, not one strided vector, so each reduction takes two
 *    steps: a GEMV / batch of N x C dots over the S positions of every (n, c) run, giving an N x C matrix of
 *    partials, then one cublasSgemv against ones(N). Two calls whatever N is; the alternative, N GEMVs that
 *    accumulate into the result (beta = 1), costs N launches, 256 of them at batch 256.
 * The sums of squares give the variance as E[x^2] - E[x]^2, the textbook formula, which cancels when the
 * mean is large against the spread; the validation reports what that costs.
 *
 * Also here: the plain GEMM of linear_bn's unfused sequence (cublas_bench_linear), on the same handle. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "benchmarks/alternatives.h"
#include "benchmarks/baselines.h"
#include "tests/storage.h"

struct cublas_bench {
  cublasHandle_t handle;
  cudaStream_t stream;
  bnk_tensor_desc prepared; /* the case the scratch below was sized for */
  int prepared_valid;
  void *ones;             /* storage type, length M: the GEMV's vector */
  float *ones_over_batch; /* float32, length N: the NCHW second step */
  float *partials;        /* N x C, NCHW only */
  float *sums, *products; /* length C */
};

static void release_scratch(cublas_bench *bench) {
  void *buffers[] = {bench->ones, bench->ones_over_batch, bench->partials, bench->sums, bench->products};
  for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; ++i)
    if (buffers[i] != NULL) cudaFree(buffers[i]);
  bench->ones = NULL;
  bench->ones_over_batch = bench->partials = bench->sums = bench->products = NULL;
  bench->prepared_valid = 0;
}

cublas_bench *cublas_bench_create(cudaStream_t stream, char *why, size_t why_size) {
  cublas_bench *bench = calloc(1, sizeof *bench);
  if (bench == NULL) {
    snprintf(why, why_size, "out of host memory");
    return NULL;
  }
  bench->stream = stream;
  cublasStatus_t status = cublasCreate(&bench->handle);
  if (status == CUBLAS_STATUS_SUCCESS) status = cublasSetStream(bench->handle, stream);
  /* float32 inputs reduce in float32, never TF32 (which would round x to 10 mantissa bits). */
  if (status == CUBLAS_STATUS_SUCCESS) status = cublasSetMathMode(bench->handle, CUBLAS_DEFAULT_MATH);
  if (status != CUBLAS_STATUS_SUCCESS) {
    snprintf(why, why_size, "cuBLAS setup failed: %s", cublasGetStatusName(status));
    cublas_bench_destroy(bench);
    return NULL;
  }
  return bench;
}

void cublas_bench_destroy(cublas_bench *bench) {
  if (bench == NULL) return;
  release_scratch(bench);
  if (bench->handle != NULL) cublasDestroy(bench->handle);
  free(bench);
}

void cublas_bench_version(char *out, size_t size) {
  int version = 0;
  cublasGetProperty(MAJOR_VERSION, &version);
  int minor = 0, patch = 0;
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  snprintf(out, size, "cuBLAS %d.%d.%d", version, minor, patch);
}

typedef struct channel_geometry {
  int channels_last;
  int64_t n, c, s, m; /* m = n x s, the elements of one channel */
} channel_geometry;

static channel_geometry geometry_of(const bnk_tensor_desc *desc) {
  channel_geometry g = {.n = desc->n, .c = desc->c, .s = 1};
  for (int d = 0; d < desc->spatial_dims; ++d) g.s *= desc->spatial[d];
  g.m = g.n * g.s;
  /* (N, C) is a channels-last matrix in either layout. */
  g.channels_last = desc->layout == BNK_NHWC || desc->spatial_dims == 0;
  return g;
}

static call_result failure(int not_supported, const char *format, const char *detail) {
  call_result result = {.failed = 1, .not_supported = not_supported};
  snprintf(result.message, sizeof result.message, format, detail);
  return result;
}

static call_result cuda_result(cudaError_t error, const char *call) {
  call_result result = {0};
  if (error != cudaSuccess) {
    result.failed = 1;
    snprintf(result.message, sizeof result.message, "%s: %s: %s", call, cudaGetErrorName(error),
             cudaGetErrorString(error));
  }
  return result;
}

static call_result cublas_result(cublasStatus_t status, const char *call) {
  call_result result = {0};
  if (status != CUBLAS_STATUS_SUCCESS) {
    result.failed = 1;
    result.not_supported = status == CUBLAS_STATUS_NOT_SUPPORTED;
    snprintf(result.message, sizeof result.message, "%s: %s", call, cublasGetStatusName(status));
  }
  return result;
}

call_result cublas_bench_prepare(cublas_bench *bench, const bnk_tensor_desc *desc) {
  if (bench->prepared_valid && memcmp(&bench->prepared, desc, sizeof *desc) == 0) return (call_result){0};
  release_scratch(bench);
  const channel_geometry g = geometry_of(desc);
  /* cuBLAS's 32-bit API takes int extents and batch counts. */
  if (g.m > INT_MAX || g.n * g.c > INT_MAX || g.c > INT_MAX)
    return failure(1, "%s", "an extent or batch count exceeds the int range of cuBLAS's 32-bit API");
  const size_t element = storage_element_bytes(desc->dtype);
  const int64_t ones_length = g.m;
  void *host = malloc((size_t)ones_length * element > (size_t)g.n * sizeof(float) ? (size_t)ones_length * element
                                                                                  : (size_t)g.n * sizeof(float));
  if (host == NULL) return failure(0, "%s", "out of host memory for the ones vector");
  cudaError_t error = cudaMalloc(&bench->ones, (size_t)ones_length * element);
  if (error == cudaSuccess) error = cudaMalloc((void **)&bench->ones_over_batch, (size_t)g.n * sizeof(float));
  if (error == cudaSuccess && !g.channels_last)
    error = cudaMalloc((void **)&bench->partials, (size_t)(g.n * g.c) * sizeof(float));
  if (error == cudaSuccess) error = cudaMalloc((void **)&bench->sums, (size_t)g.c * sizeof(float));
  if (error == cudaSuccess) error = cudaMalloc((void **)&bench->products, (size_t)g.c * sizeof(float));
  if (error == cudaSuccess) {
    for (int64_t i = 0; i < ones_length; ++i) storage_store(desc->dtype, host, i, 1.0f);
    error = cudaMemcpy(bench->ones, host, (size_t)ones_length * element, cudaMemcpyHostToDevice);
  }
  if (error == cudaSuccess) {
    for (int64_t i = 0; i < g.n; ++i) ((float *)host)[i] = 1.0f;
    error = cudaMemcpy(bench->ones_over_batch, host, (size_t)g.n * sizeof(float), cudaMemcpyHostToDevice);
  }
  free(host);
  if (error != cudaSuccess) {
    release_scratch(bench);
    return cuda_result(error, "allocating the cuBLAS baseline's scratch");
  }
  bench->prepared = *desc;
  bench->prepared_valid = 1;
  return (call_result){0};
}

static cudaDataType_t data_type(bnk_dtype dtype) {
  switch (dtype) {
  case BNK_FLOAT16:
    return CUDA_R_16F;
  case BNK_BFLOAT16:
    return CUDA_R_16BF;
  case BNK_FLOAT32:
    break;
  }
  return CUDA_R_32F;
}

/* NCHW second step: out[c] = sum over n of partials[n][c] (a column-major C x N matrix). */
static cublasStatus_t sum_over_batch(cublas_bench *bench, const channel_geometry *g, float *out) {
  const float one = 1.0f, zero = 0.0f;
  return cublasSgemv(bench->handle, CUBLAS_OP_N, (int)g->c, (int)g->n, &one, bench->partials, (int)g->c,
                     bench->ones_over_batch, 1, &zero, out, 1);
}

/* out[c] = sum of the channel's elements of a. */
static call_result channel_sums(cublas_bench *bench, const bnk_tensor_desc *desc, const void *a, float *out) {
  const channel_geometry g = geometry_of(desc);
  const cudaDataType_t type = data_type(desc->dtype);
  const float one = 1.0f, zero = 0.0f;
  if (g.channels_last)
    return cublas_result(cublasGemmEx(bench->handle, CUBLAS_OP_N, CUBLAS_OP_N, (int)g.c, 1, (int)g.m, &one, a, type,
                                      (int)g.c, bench->ones, type, (int)g.m, &zero, out, CUDA_R_32F, (int)g.c,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx (GEMV against ones)");
  /* The (n, c) runs as the columns of an S x (N C) matrix: its transpose times ones(S). */
  call_result result =
      cublas_result(cublasGemmEx(bench->handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)(g.n * g.c), 1, (int)g.s, &one, a, type,
                                 (int)g.s, bench->ones, type, (int)g.s, &zero, bench->partials, CUDA_R_32F,
                                 (int)(g.n * g.c), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                    "cublasGemmEx (GEMV against ones over the spatial positions)");
  if (result.failed) return result;
  return cublas_result(sum_over_batch(bench, &g, out), "cublasSgemv (sum over the batch)");
}

/* out[c] = sum of a * b over the channel's elements. Each dot is a 1 x k by k x 1 GEMM: A is the row vector
 * a (element i at i * lda), B is b read through a transpose (element i at i * ldb). */
static call_result channel_dots(cublas_bench *bench, const bnk_tensor_desc *desc, const void *a, const void *b,
                                float *out) {
  const channel_geometry g = geometry_of(desc);
  const cudaDataType_t type = data_type(desc->dtype);
  const float one = 1.0f, zero = 0.0f;
  if (g.channels_last)
    return cublas_result(cublasGemmStridedBatchedEx(bench->handle, CUBLAS_OP_N, CUBLAS_OP_T, 1, 1, (int)g.m, &one, a,
                                                    type, (int)g.c, 1, b, type, (int)g.c, 1, &zero, out, CUDA_R_32F, 1,
                                                    1, (int)g.c, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmStridedBatchedEx (one dot per channel)");
  call_result result = cublas_result(
      cublasGemmStridedBatchedEx(bench->handle, CUBLAS_OP_N, CUBLAS_OP_T, 1, 1, (int)g.s, &one, a, type, 1,
                                 (long long)g.s, b, type, 1, (long long)g.s, &zero, bench->partials, CUDA_R_32F, 1, 1,
                                 (int)(g.n * g.c), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx (one dot per (n, c) run)");
  if (result.failed) return result;
  return cublas_result(sum_over_batch(bench, &g, out), "cublasSgemv (sum over the batch)");
}

call_result cublas_bench_run(cublas_bench *bench, bench_op op, const op_arguments *args) {
  if (!bench->prepared_valid || memcmp(&bench->prepared, args->desc, sizeof *args->desc) != 0)
    return failure(0, "%s", "internal error: cublas_bench_prepare was not called for this case");
  const bnk_tensor_desc *desc = args->desc;
  const int64_t m = geometry_of(desc).m;
  call_result result;
  switch (op) {
  case OP_FWD_TRAIN:
    if ((result = channel_sums(bench, desc, args->x, bench->sums)).failed) return result;
    if ((result = channel_dots(bench, desc, args->x, args->x, bench->products)).failed) return result;
    if ((result = cuda_result(baseline_statistics_from_sums(desc->c, m, bench->sums, bench->products, args->momentum,
                                                            args->eps, args->running_mean, args->running_var,
                                                            args->save_mean, args->save_invstd, args->stream),
                              "the statistics kernel"))
            .failed)
      return result;
    return cuda_result(baseline_normalize(desc, args->x, args->out, args->gamma, args->beta, args->save_mean,
                                          args->save_invstd, args->stream),
                       "the normalize kernel");
  case OP_BWD:
  case OP_BWD_INFER: {
    const int frozen = op == OP_BWD_INFER;
    const float *mean = frozen ? args->running_mean : args->save_mean;
    const float *spread = frozen ? args->running_var : args->save_invstd;
    if ((result = channel_sums(bench, desc, args->dy, bench->sums)).failed) return result;
    if ((result = channel_dots(bench, desc, args->dy, args->x, bench->products)).failed) return result;
    if ((result = cuda_result(baseline_gradients_from_sums(desc->c, bench->sums, bench->products, mean, spread, frozen,
                                                           args->eps, args->dgamma, args->dbeta, args->stream),
                              "the gradients kernel"))
            .failed)
      return result;
    return cuda_result(baseline_backward_dx(desc, args->x, args->dy, args->out, args->gamma, mean, spread, frozen,
                                            args->eps, args->dgamma, args->dbeta, args->stream),
                       "the dx kernel");
  }
  case OP_FWD_INFER:
    break;
  default: /* bnk's epilogue ops are measured against bnk's own unfused sequence: never routed here */
    return failure(1, "%s", "the cuBLAS baseline has no counterpart of this op");
  }
  return failure(1, "%s", "the cuBLAS baseline has no reduction to do in inference");
}

/* Row-major y = x weight^T is, in cuBLAS's column-major terms, y^T (out x batch) = weight^T (the row-major
 * out x in weight read as a column-major in x out matrix, transposed) times x^T (in x batch). */
call_result cublas_bench_linear(cublas_bench *bench, bnk_dtype dtype, int64_t batch, int64_t in_features,
                                int64_t out_features, const void *x, const void *weight, void *y) {
  if (batch > INT_MAX || in_features > INT_MAX || out_features > INT_MAX)
    return failure(1, "%s", "an extent exceeds the int range of cuBLAS's 32-bit API");
  const cudaDataType_t type = data_type(dtype);
  const float one = 1.0f, zero = 0.0f;
  return cublas_result(cublasGemmEx(bench->handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)out_features, (int)batch,
                                    (int)in_features, &one, weight, type, (int)in_features, x, type, (int)in_features,
                                    &zero, y, type, (int)out_features, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx (the Linear layer's GEMM)");
}
