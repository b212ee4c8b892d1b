/* What bnk-bench runs besides bnk, on the same tensors: cuDNN's legacy batch-norm API and a cuBLAS baseline
 * (benchmarks/vendor_cudnn.c, benchmarks/vendor_cublas.c, GPU build only), and the naive baseline of
 * benchmarks/baselines.cu (both builds). */
#ifndef BNK_BENCHMARKS_ALTERNATIVES_H
#define BNK_BENCHMARKS_ALTERNATIVES_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#include "bnk.h"

typedef enum bench_op { OP_FWD_TRAIN, OP_FWD_INFER, OP_BWD, OP_BWD_INFER, OP_COUNT } bench_op;

/* One op's tensors, shared by every implementation. out is y for the forward ops and dx for the backward
 * ops; the backward reads save_mean/save_invstd (bwd) or running_mean/running_var (bwd_infer). */
typedef struct op_arguments {
  const bnk_tensor_desc *desc;
  const void *x, *dy;
  void *out;
  const float *gamma, *beta;
  float *running_mean, *running_var, *save_mean, *save_invstd, *dgamma, *dbeta;
  double momentum, eps;
  cudaStream_t stream;
} op_arguments;

/* How a call went: `failed` with the reason (the library's status name and message), and whether the
 * library said the case is not supported, which the table reports as such rather than as a crash. */
typedef struct call_result {
  int failed;
  int not_supported;
  char message[320];
} call_result;

#ifdef BNK_BENCH_WITH_CUDNN
typedef struct cudnn_bench cudnn_bench;
/* A handle on `stream`; on failure returns NULL and says why in `why`. */
cudnn_bench *cudnn_bench_create(cudaStream_t stream, char *why, size_t why_size);
void cudnn_bench_destroy(cudnn_bench *bench);
/* "cuDNN 9.x.y" */
void cudnn_bench_version(char *out, size_t size);
/* Queues the op with mode CUDNN_BATCHNORM_SPATIAL, or SPATIAL_PERSISTENT when `persistent`. bwd_infer has no
 * cuDNN counterpart; fwd_infer is SPATIAL only. */
call_result cudnn_bench_run(cudnn_bench *bench, int persistent, bench_op op, const op_arguments *args);
#endif

#ifdef BNK_BENCH_WITH_CUBLAS
typedef struct cublas_bench cublas_bench;
cublas_bench *cublas_bench_create(cudaStream_t stream, char *why, size_t why_size);
void cublas_bench_destroy(cublas_bench *bench);
void cublas_bench_version(char *out, size_t size);
/* Allocates the scratch of a case (ones vectors, partial sums); outside the timed runs. */
call_result cublas_bench_prepare(cublas_bench *bench, const bnk_tensor_desc *desc);
/* fwd_train, bwd and bwd_infer: per-channel sums by cuBLAS, the rest by baselines.cu's kernels. */
call_result cublas_bench_run(cublas_bench *bench, bench_op op, const op_arguments *args);
#endif

#endif
