/* Linear + BatchNorm1d (+ ReLU) for inference as one cuBLASLt matmul: the BN is folded into the weight and
 * bias once (bnk_fold_linear), and the bias and the ReLU are cuBLASLt's epilogue. Compiled against cuBLASLt
 * in the GPU build only (BNK_WITH_CUBLASLT); the emulation has no cuBLAS and reports so. */
#include <inttypes.h>

#include "host/internal.h"

#ifdef BNK_WITH_CUBLASLT
#include <cublasLt.h>

static bnk_status check_cublas(cublasStatus_t status, const char *what) {
  if (status == CUBLAS_STATUS_SUCCESS) return BNK_SUCCESS;
  return bnk__fail(BNK_ERROR_CUBLAS, "%s: %s: %s", what, cublasLtGetStatusName(status),
                   cublasLtGetStatusString(status));
}

bnk_status bnk__cublaslt_create(void **handle) {
  cublasLtHandle_t created = NULL;
  const bnk_status status = check_cublas(cublasLtCreate(&created), "cublasLtCreate");
  *handle = status == BNK_SUCCESS ? (void *)created : NULL;
  return status;
}

void bnk__cublaslt_destroy(void *handle) {
  if (handle != NULL) cublasLtDestroy((cublasLtHandle_t)handle);
}
#else
bnk_status bnk__cublaslt_create(void **handle) {
  *handle = NULL;
  return BNK_SUCCESS;
}

void bnk__cublaslt_destroy(void *handle) { (void)handle; }
#endif

static bnk_status no_cublas(const char *call) {
  return bnk__fail(BNK_ERROR_NOT_SUPPORTED,
                   "%s needs cuBLASLt, and this build has none (the host emulation, bnk_emu, has no cuBLAS)", call);
}

#ifdef BNK_WITH_CUBLASLT
/* cuBLAS's guidance for its workspace: 32 MiB on Hopper and newer, 4 MiB before. */
static bnk_status cublaslt_workspace_bytes(const bnk_context *ctx, size_t *bytes) {
  int major = 0;
  const bnk_status status =
      bnk__check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx->device),
                      "cudaDeviceGetAttribute(cudaDevAttrComputeCapabilityMajor)");
  *bytes = (size_t)(major >= 9 ? 32 : 4) << 20;
  return status;
}
#endif

bnk_status bnk_linear_bn_workspace_size(const bnk_context *ctx, size_t *bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_pointer(bytes, "bytes"));
#ifdef BNK_WITH_CUBLASLT
  return cublaslt_workspace_bytes(ctx, bytes);
#else
  return no_cublas("bnk_linear_bn_workspace_size");
#endif
}

#ifdef BNK_WITH_CUBLASLT
static cudaDataType_t cuda_type(bnk_dtype dtype) {
  return dtype == BNK_FLOAT32 ? CUDA_R_32F : dtype == BNK_FLOAT16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* Row-major y (batch, out) = x (batch, in) * weight^T + bias is, in cuBLASLt's column-major terms,
 * y^T (out x batch) = op_T(weight stored as in x out) * x^T (in x batch), bias along D's rows. Descriptors
 * live on the stack (the *Init calls), so the call allocates nothing. */
static bnk_status matmul(const bnk_context *ctx, bnk_dtype dtype, int64_t batch, int64_t in_features,
                         int64_t out_features, const void *x, const void *weight, const void *bias, int relu, void *y,
                         void *workspace, size_t workspace_bytes) {
  const cublasLtHandle_t handle = (cublasLtHandle_t)ctx->cublaslt;
  const cudaDataType_t type = cuda_type(dtype);
  cublasLtMatmulDescOpaque_t op_storage;
  cublasLtMatrixLayoutOpaque_t a_storage, b_storage, d_storage;
  cublasLtMatmulPreferenceOpaque_t preference_storage;
  const cublasLtMatmulDesc_t op = &op_storage;
  const cublasLtMatrixLayout_t a = &a_storage, b = &b_storage, d = &d_storage;
  const cublasLtMatmulPreference_t preference = &preference_storage;
  const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
  const cublasLtEpilogue_t epilogue = relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  const uint64_t max_workspace = workspace_bytes;

  BNK__TRY(check_cublas(cublasLtMatmulDescInit(op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescInit"));
  BNK__TRY(check_cublas(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose),
                        "cublasLtMatmulDescSetAttribute(TRANSA)"));
  BNK__TRY(check_cublas(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof keep),
                        "cublasLtMatmulDescSetAttribute(TRANSB)"));
  BNK__TRY(check_cublas(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue),
                        "cublasLtMatmulDescSetAttribute(EPILOGUE)"));
  BNK__TRY(check_cublas(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
                        "cublasLtMatmulDescSetAttribute(BIAS_POINTER)"));
  BNK__TRY(check_cublas(cublasLtMatrixLayoutInit(a, type, (uint64_t)in_features, (uint64_t)out_features, in_features),
                        "cublasLtMatrixLayoutInit(weight)"));
  BNK__TRY(check_cublas(cublasLtMatrixLayoutInit(b, type, (uint64_t)in_features, (uint64_t)batch, in_features),
                        "cublasLtMatrixLayoutInit(x)"));
  BNK__TRY(check_cublas(cublasLtMatrixLayoutInit(d, type, (uint64_t)out_features, (uint64_t)batch, out_features),
                        "cublasLtMatrixLayoutInit(y)"));
  BNK__TRY(check_cublas(cublasLtMatmulPreferenceInit(preference), "cublasLtMatmulPreferenceInit"));
  BNK__TRY(check_cublas(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &max_workspace, sizeof max_workspace),
                        "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)"));
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  BNK__TRY(check_cublas(cublasLtMatmulAlgoGetHeuristic(handle, op, a, b, d, d, preference, 1, &result, &found),
                        "cublasLtMatmulAlgoGetHeuristic"));
  if (found == 0)
    return bnk__fail(BNK_ERROR_CUBLAS,
                     "cublasLtMatmulAlgoGetHeuristic: CUBLAS_STATUS_NOT_SUPPORTED: no algorithm for %" PRId64
                     " x %" PRId64 " x %" PRId64 " with a bias epilogue",
                     batch, in_features, out_features);
  const float one = 1.0f, zero = 0.0f;
  return check_cublas(cublasLtMatmul(handle, op, &one, weight, a, x, b, &zero, y, d, y, d, &result.algo, workspace,
                                     workspace_bytes, ctx->stream),
                      "cublasLtMatmul");
}
#endif

bnk_status bnk_linear_bn(bnk_context *ctx, bnk_dtype dtype, int64_t batch, int64_t in_features, int64_t out_features,
                         const void *x, const void *weight, const void *bias, bnk_epilogue_kind epilogue, void *y,
                         void *workspace, size_t workspace_bytes) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_dtype(dtype, "dtype"));
  if (batch < 0) return bnk__fail(BNK_ERROR_INVALID_VALUE, "batch must be >= 0, got %" PRId64, batch);
  BNK__TRY(bnk__require_positive(in_features, "in_features"));
  BNK__TRY(bnk__require_positive(out_features, "out_features"));
  if (epilogue == BNK_EPILOGUE_ADD_RELU)
    return bnk__fail(BNK_ERROR_NOT_SUPPORTED, "epilogue BNK_EPILOGUE_ADD_RELU is not supported by bnk_linear_bn "
                                              "(cuBLASLt's bias epilogues add no residual)");
  if (epilogue != BNK_EPILOGUE_NONE && epilogue != BNK_EPILOGUE_RELU)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "epilogue must be BNK_EPILOGUE_NONE or BNK_EPILOGUE_RELU, got %d",
                     (int)epilogue);
  if (batch == 0) return BNK_SUCCESS;
  BNK__TRY(bnk__require_pointer(x, "x"));
  BNK__TRY(bnk__require_pointer(weight, "weight"));
  BNK__TRY(bnk__require_pointer(bias, "bias"));
  BNK__TRY(bnk__require_pointer(y, "y"));
#ifdef BNK_WITH_CUBLASLT
  size_t needed = 0;
  BNK__TRY(cublaslt_workspace_bytes(ctx, &needed));
  BNK__TRY(bnk__require_workspace(workspace, workspace_bytes, needed, "bnk_linear_bn_workspace_size"));
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const bnk_tensor_desc shape = {dtype, BNK_NCHW, 0, batch, out_features, {1, 1, 1}};
  bnk__range_push("linear_bn", &shape);
  const bnk_status status = matmul(ctx, dtype, batch, in_features, out_features, x, weight, bias,
                                   epilogue == BNK_EPILOGUE_RELU, y, workspace, workspace_bytes);
  bnk__range_pop();
  bnk__device_leave(&guard);
  return status;
#else
  (void)workspace;
  (void)workspace_bytes;
  return no_cublas("bnk_linear_bn");
#endif
}
