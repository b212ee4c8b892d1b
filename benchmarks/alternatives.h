/* What bnk-bench runs besides bnk, on the same tensors: cuDNN's legacy batch-norm API and a cuBLAS baseline
 * (benchmarks/vendor_cudnn.c, benchmarks/vendor_cublas.c, GPU build only), and the naive baseline of
 * benchmarks/baselines.cu (both builds). */
#ifndef BNK_BENCHMARKS_ALTERNATIVES_H
#define BNK_BENCHMARKS_ALTERNATIVES_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#include "bnk.h"

/* The four batch-normalization ops, which every alternative is measured on; then bnk's fused epilogues and
 * inference forms, which bnk-bench measures against the unfused sequence they replace (implementations.c): the
 * alternatives never see those. */
typedef enum bench_op {
  OP_FWD_TRAIN,
  OP_FWD_INFER,
  OP_BWD,
  OP_BWD_INFER,
  OP_FWD_INFER_RELU,     /* relu(bn(x)), running statistics */
  OP_FWD_INFER_ADD_RELU, /* relu(bn(x) + z), running statistics */
  OP_FWD_TRAIN_ADD_RELU, /* relu(bn(x) + z), batch statistics */
  OP_BWD_ADD_RELU,       /* the training backward through relu(bn(x) + z), with dz */
  OP_SCALE_SHIFT,        /* x * scale + shift from precomputed inference parameters */
  OP_LINEAR_BN,          /* relu(bn(x W^T)), Linear + BatchNorm1d + ReLU at inference */
  OP_COUNT
} bench_op;

/* One op's tensors, shared by every implementation. out is y for the forward ops and dx for the backward
 * ops; the backward reads save_mean/save_invstd (bwd) or running_mean/running_var (bwd_infer). The fields
 * after them serve bnk's epilogue ops only. */
typedef struct op_arguments {
  const bnk_tensor_desc *desc;
  const void *x, *dy;
  void *out;
  const float *gamma, *beta;
  float *running_mean, *running_var, *save_mean, *save_invstd, *dgamma, *dbeta;
  double momentum, eps;
  cudaStream_t stream;
  const void *z;    /* the residual of the add + ReLU ops */
  const void *y;    /* bwd_add_relu: the forward's output, whose sign gates dy */
  const void *mask; /* bwd_add_relu: the forward's ReLU mask (mask_bytes) */
  size_t mask_bytes;
  void *dz;                   /* bwd_add_relu: receives the gradient of z */
  const float *scale, *shift; /* scale_shift: bnk_inference_params' output */
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
/* How cuDNN is called: the legacy calls in CUDNN_BATCHNORM_SPATIAL or SPATIAL_PERSISTENT, or the *Ex calls
 * (with workspace and reserve space) in SPATIAL_PERSISTENT, as PyTorch calls them for channels-last training. */
typedef enum cudnn_bench_mode {
  CUDNN_BENCH_SPATIAL,
  CUDNN_BENCH_PERSISTENT,
  CUDNN_BENCH_PERSISTENT_EX
} cudnn_bench_mode;
/* Queues the op. bwd_infer has no cuDNN counterpart; fwd_infer is SPATIAL only. */
call_result cudnn_bench_run(cudnn_bench *bench, cudnn_bench_mode mode, bench_op op, const op_arguments *args);
/* After a persistent-mode call completed: cudnnQueryRuntimeError, which is how cuDNN reports that the
 * persistent kernels' reduced-precision accumulation overflowed (CUDNN_STATUS_RUNTIME_FP_OVERFLOW): failed,
 * with the status, when it reports anything. Blocking, so never called between timed runs. */
call_result cudnn_bench_runtime_error(cudnn_bench *bench);
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
/* The GEMM of the unfused Linear + BatchNorm1d + ReLU: y (batch x out_features) = x (batch x in_features) *
 * weight^T, weight (out_features x in_features), all row-major in the storage type, fp32 accumulation (no
 * TF32), no bias, no epilogue. */
call_result cublas_bench_linear(cublas_bench *bench, bnk_dtype dtype, int64_t batch, int64_t in_features,
                                int64_t out_features, const void *x, const void *weight, void *y);
#endif

#endif
