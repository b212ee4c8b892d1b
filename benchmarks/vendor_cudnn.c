/* cuDNN's legacy batch-norm API (cudnnBatchNormalizationForwardTraining / ForwardInference / Backward) on the
 * bench's tensors. Deprecated in cuDNN 9 but shipped, and what most frameworks called for years, so it is the
 * reference the bench's ratios are taken against. GPU build only: cuDNN cannot run on the host emulation.
 * Also the *Ex calls (ForwardTrainingEx, BackwardEx) in SPATIAL_PERSISTENT with their workspace and reserve
 * space: what PyTorch calls for channels-last training, measured beside the plain persistent calls.
 *
 * Every status is passed on, NOT_SUPPORTED included: the table reports what cuDNN does with each case rather
 * than skipping the ones it refuses. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cudnn.h>

#include "benchmarks/alternatives.h"

struct cudnn_bench {
  cudnnHandle_t handle;
  cudnnTensorDescriptor_t tensor;     /* x, y, dy and dx: the same shape, layout and type */
  cudnnTensorDescriptor_t parameters; /* 1 x C x 1 x 1 float32: gamma, beta, statistics and their gradients */
  bnk_tensor_desc described;          /* what the descriptors currently describe */
  int described_valid;
  cudnnStatus_t describe_status;
  char describe_failure[200];
  /* The *Ex calls' scratch, grown to the largest size asked for, and whether the reserve space holds what a
   * forward of the described shape left there for the backward. */
  void *workspace, *reserve;
  size_t workspace_bytes, reserve_bytes;
  int reserve_filled;
};

cudnn_bench *cudnn_bench_create(cudaStream_t stream, char *why, size_t why_size) {
  cudnn_bench *bench = calloc(1, sizeof *bench);
  if (bench == NULL) {
    snprintf(why, why_size, "out of host memory");
    return NULL;
  }
  cudnnStatus_t status = cudnnCreate(&bench->handle);
  if (status == CUDNN_STATUS_SUCCESS) status = cudnnSetStream(bench->handle, stream);
  if (status == CUDNN_STATUS_SUCCESS) status = cudnnCreateTensorDescriptor(&bench->tensor);
  if (status == CUDNN_STATUS_SUCCESS) status = cudnnCreateTensorDescriptor(&bench->parameters);
  if (status != CUDNN_STATUS_SUCCESS) {
    snprintf(why, why_size, "cuDNN setup failed: %s", cudnnGetErrorString(status));
    cudnn_bench_destroy(bench);
    return NULL;
  }
  return bench;
}

void cudnn_bench_destroy(cudnn_bench *bench) {
  if (bench == NULL) return;
  cudaFree(bench->workspace);
  cudaFree(bench->reserve);
  if (bench->parameters != NULL) cudnnDestroyTensorDescriptor(bench->parameters);
  if (bench->tensor != NULL) cudnnDestroyTensorDescriptor(bench->tensor);
  if (bench->handle != NULL) cudnnDestroy(bench->handle);
  free(bench);
}

void cudnn_bench_version(char *out, size_t size) {
  const size_t version = cudnnGetVersion(); /* major * 10000 + minor * 100 + patch since cuDNN 9 */
  snprintf(out, size, "cuDNN %zu.%zu.%zu", version / 10000, version / 100 % 100, version % 100);
}

static cudnnDataType_t data_type(bnk_dtype dtype) {
  switch (dtype) {
  case BNK_FLOAT16:
    return CUDNN_DATA_HALF;
  case BNK_BFLOAT16:
    return CUDNN_DATA_BFLOAT16;
  case BNK_FLOAT32:
    break;
  }
  return CUDNN_DATA_FLOAT;
}

/* The descriptors for a tensor shape, set again only when the shape changes, so that the timed loop queues
 * the cuDNN call alone. An (N, C) or (N, C, L) tensor is described as 4-D with unit extents (the legacy API
 * takes 4-D and 5-D tensors); NHWC with three spatial dims is NDHWC. */
static cudnnStatus_t describe(cudnn_bench *bench, const bnk_tensor_desc *desc) {
  if (bench->described_valid && memcmp(&bench->described, desc, sizeof *desc) == 0) return bench->describe_status;
  bench->described = *desc;
  bench->described_valid = 1;
  bench->reserve_filled = 0;
  bench->describe_failure[0] = '\0';
  int dims[5] = {0, 0, 1, 1, 1};
  const int rank = desc->spatial_dims == 3 ? 5 : 4;
  const int64_t extents[5] = {desc->n, desc->c, desc->spatial[0], desc->spatial[1], desc->spatial[2]};
  /* Spatial extents fill the trailing dims: (N, C, L) is N x C x 1 x L. */
  const int first_spatial = rank - desc->spatial_dims;
  for (int d = 0; d < 2 + desc->spatial_dims; ++d) {
    if (extents[d] > INT_MAX) {
      bench->describe_status = CUDNN_STATUS_NOT_SUPPORTED;
      snprintf(bench->describe_failure, sizeof bench->describe_failure,
               "an extent exceeds the int range of cudnnSetTensorNdDescriptorEx");
      return bench->describe_status;
    }
    dims[d < 2 ? d : first_spatial + (d - 2)] = (int)extents[d];
  }
  const cudnnTensorFormat_t format = desc->layout == BNK_NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  cudnnStatus_t status = cudnnSetTensorNdDescriptorEx(bench->tensor, format, data_type(desc->dtype), rank, dims);
  if (status != CUDNN_STATUS_SUCCESS) {
    snprintf(bench->describe_failure, sizeof bench->describe_failure, "cudnnSetTensorNdDescriptorEx");
  } else {
    status = cudnnDeriveBNTensorDescriptor(bench->parameters, bench->tensor, CUDNN_BATCHNORM_SPATIAL);
    if (status != CUDNN_STATUS_SUCCESS)
      snprintf(bench->describe_failure, sizeof bench->describe_failure, "cudnnDeriveBNTensorDescriptor");
  }
  bench->describe_status = status;
  return status;
}

static call_result result_of(cudnnStatus_t status, const char *call) {
  call_result result = {0};
  if (status != CUDNN_STATUS_SUCCESS) {
    result.failed = 1;
    result.not_supported = status == CUDNN_STATUS_NOT_SUPPORTED;
    snprintf(result.message, sizeof result.message, "%s: %s", call, cudnnGetErrorString(status));
    return result;
  }
  /* A launch cuDNN did not check (a grid dimension over its limit, say) shows up here, not in its status. */
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    result.failed = 1;
    snprintf(result.message, sizeof result.message, "%s returned success, then the CUDA runtime reported %s: %s", call,
             cudaGetErrorName(error), cudaGetErrorString(error));
  }
  return result;
}

/* Device scratch of at least `bytes`, reallocated only when a larger size is asked for (outside the timed runs:
 * the validated run asks first). */
static cudnnStatus_t ensure_scratch(void **buffer, size_t *capacity, size_t bytes) {
  if (bytes <= *capacity) return CUDNN_STATUS_SUCCESS;
  cudaFree(*buffer);
  *buffer = NULL;
  *capacity = 0;
  if (cudaMalloc(buffer, bytes) != cudaSuccess) {
    cudaGetLastError();
    return CUDNN_STATUS_ALLOC_FAILED;
  }
  *capacity = bytes;
  return CUDNN_STATUS_SUCCESS;
}

/* The workspace and reserve space the *Ex calls ask for, for plain batch normalization (no add, no
 * activation), as PyTorch sizes them. */
static call_result prepare_ex(cudnn_bench *bench, bench_op op) {
  const cudnnBatchNormMode_t mode = CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
  const cudnnBatchNormOps_t ops = CUDNN_BATCHNORM_OPS_BN;
  size_t workspace = 0, reserve = 0;
  cudnnStatus_t status =
      op == OP_FWD_TRAIN
          ? cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(bench->handle, mode, ops, bench->tensor, NULL,
                                                                     bench->tensor, bench->parameters, NULL, &workspace)
          : cudnnGetBatchNormalizationBackwardExWorkspaceSize(bench->handle, mode, ops, bench->tensor, NULL,
                                                              bench->tensor, NULL, bench->tensor, bench->parameters,
                                                              NULL, &workspace);
  if (status != CUDNN_STATUS_SUCCESS) return result_of(status, "cudnnGetBatchNormalization*ExWorkspaceSize");
  status =
      cudnnGetBatchNormalizationTrainingExReserveSpaceSize(bench->handle, mode, ops, NULL, bench->tensor, &reserve);
  if (status != CUDNN_STATUS_SUCCESS) return result_of(status, "cudnnGetBatchNormalizationTrainingExReserveSpaceSize");
  status = ensure_scratch(&bench->workspace, &bench->workspace_bytes, workspace);
  if (status == CUDNN_STATUS_SUCCESS) status = ensure_scratch(&bench->reserve, &bench->reserve_bytes, reserve);
  return result_of(status, "cudaMalloc (the *Ex calls' workspace and reserve space)");
}

static call_result forward_training_ex(cudnn_bench *bench, const op_arguments *args, const float *one,
                                       const float *zero) {
  return result_of(cudnnBatchNormalizationForwardTrainingEx(
                       bench->handle, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_OPS_BN, one, zero,
                       bench->tensor, args->x, NULL, NULL, bench->tensor, args->out, bench->parameters, args->gamma,
                       args->beta, args->momentum, args->running_mean, args->running_var, args->eps, args->save_mean,
                       args->save_invstd, NULL, bench->workspace, bench->workspace_bytes, bench->reserve,
                       bench->reserve_bytes),
                   "cudnnBatchNormalizationForwardTrainingEx");
}

/* The *Ex calls. The backward reads what the forward left in the reserve space, so before the first backward
 * of a shape one forward runs (in the validated run, never between timed ones); it also writes the saved mean
 * and invstd that the backward and its validation then use, which are of the same x as the case's. */
static call_result run_ex(cudnn_bench *bench, bench_op op, const op_arguments *args) {
  const float one = 1.0f, zero = 0.0f;
  call_result result = prepare_ex(bench, op);
  if (result.failed) return result;
  if (op == OP_FWD_TRAIN) {
    result = forward_training_ex(bench, args, &one, &zero);
    bench->reserve_filled = !result.failed;
    return result;
  }
  if (!bench->reserve_filled) {
    result = prepare_ex(bench, OP_FWD_TRAIN);
    if (!result.failed) result = forward_training_ex(bench, args, &one, &zero);
    if (result.failed) return result;
    bench->reserve_filled = 1;
  }
  return result_of(cudnnBatchNormalizationBackwardEx(
                       bench->handle, CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_OPS_BN, &one, &zero, &one,
                       &zero, bench->tensor, args->x, NULL, NULL, bench->tensor, args->dy, NULL, NULL, bench->tensor,
                       args->out, bench->parameters, args->gamma, args->beta, args->dgamma, args->dbeta, args->eps,
                       args->save_mean, args->save_invstd, NULL, bench->workspace, bench->workspace_bytes,
                       bench->reserve, bench->reserve_bytes),
                   "cudnnBatchNormalizationBackwardEx");
}

call_result cudnn_bench_runtime_error(cudnn_bench *bench) {
  cudnnStatus_t reported = CUDNN_STATUS_SUCCESS;
  const cudnnStatus_t status = cudnnQueryRuntimeError(bench->handle, &reported, CUDNN_ERRQUERY_BLOCKING, NULL);
  if (status != CUDNN_STATUS_SUCCESS) return result_of(status, "cudnnQueryRuntimeError");
  call_result result = {0};
  if (reported != CUDNN_STATUS_SUCCESS) {
    result.failed = 1;
    snprintf(result.message, sizeof result.message, "cudnnQueryRuntimeError reports %s%s",
             cudnnGetErrorString(reported),
             reported == CUDNN_STATUS_RUNTIME_FP_OVERFLOW ? " (the persistent kernels' accumulation overflowed)" : "");
  }
  return result;
}

call_result cudnn_bench_run(cudnn_bench *bench, cudnn_bench_mode how, bench_op op, const op_arguments *args) {
  const cudnnStatus_t described = describe(bench, args->desc);
  if (described != CUDNN_STATUS_SUCCESS) return result_of(described, bench->describe_failure);
  if (how == CUDNN_BENCH_PERSISTENT_EX && (op == OP_FWD_TRAIN || op == OP_BWD)) return run_ex(bench, op, args);
  const cudnnBatchNormMode_t mode =
      how == CUDNN_BENCH_SPATIAL ? CUDNN_BATCHNORM_SPATIAL : CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
  /* alpha = 1, beta = 0: write the result, do not blend it into the output (float for every data type). */
  const float one = 1.0f, zero = 0.0f;
  switch (op) {
  case OP_FWD_TRAIN:
    return result_of(cudnnBatchNormalizationForwardTraining(
                         bench->handle, mode, &one, &zero, bench->tensor, args->x, bench->tensor, args->out,
                         bench->parameters, args->gamma, args->beta, args->momentum, args->running_mean,
                         args->running_var, args->eps, args->save_mean, args->save_invstd),
                     "cudnnBatchNormalizationForwardTraining");
  case OP_FWD_INFER:
    return result_of(cudnnBatchNormalizationForwardInference(
                         bench->handle, mode, &one, &zero, bench->tensor, args->x, bench->tensor, args->out,
                         bench->parameters, args->gamma, args->beta, args->running_mean, args->running_var, args->eps),
                     "cudnnBatchNormalizationForwardInference");
  case OP_BWD:
    return result_of(cudnnBatchNormalizationBackward(bench->handle, mode, &one, &zero, &one, &zero, bench->tensor,
                                                     args->x, bench->tensor, args->dy, bench->tensor, args->out,
                                                     bench->parameters, args->gamma, args->dgamma, args->dbeta,
                                                     args->eps, args->save_mean, args->save_invstd),
                     "cudnnBatchNormalizationBackward");
  case OP_BWD_INFER:
    break;
  default: /* bnk's epilogue ops are measured against bnk's own unfused sequence: never routed here */
    break;
  }
  call_result result = {.failed = 1, .not_supported = 1};
  snprintf(result.message, sizeof result.message, "cuDNN has no %s",
           op == OP_BWD_INFER ? "frozen-statistics backward" : "counterpart of this op in the bench");
  return result;
}
