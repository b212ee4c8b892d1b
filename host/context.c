#include <stdlib.h>
#include <string.h>

#include "host/internal.h"

static int is_missing_device(cudaError_t error) {
  return error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver;
}

/* The pool of merge counters on the context's device, zeroed once; synchronous, as creation may be. */
static bnk_status create_merge_counters(bnk_context *ctx) {
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  const size_t bytes = BNK_MERGE_COUNTERS * sizeof(unsigned);
  void *counters = NULL;
  bnk_status status = bnk__check_cuda(cudaMalloc(&counters, bytes), "cudaMalloc(merge counters)");
  if (status == BNK_SUCCESS) status = bnk__check_cuda(cudaMemset(counters, 0, bytes), "cudaMemset(merge counters)");
  if (status != BNK_SUCCESS) cudaFree(counters);
  else ctx->merge_counters = counters;
  bnk__device_leave(&guard);
  return status;
}

/* Every streaming kernel's blocks per SM, once: the plans of every call read them (host/plan.c). */
static bnk_status query_occupancy(bnk_context *ctx) {
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  memset(&ctx->occupancy, 0, sizeof ctx->occupancy);
  bnk_status status = bnk__check_cuda(bnk__stats_occupancy(&ctx->occupancy),
                                      "cudaOccupancyMaxActiveBlocksPerMultiprocessor (statistics kernels)");
  if (status == BNK_SUCCESS)
    status = bnk__check_cuda(bnk__backward_occupancy(&ctx->occupancy),
                             "cudaOccupancyMaxActiveBlocksPerMultiprocessor (backward kernels)");
  if (status == BNK_SUCCESS)
    status = bnk__check_cuda(bnk__normalize_occupancy(&ctx->occupancy),
                             "cudaOccupancyMaxActiveBlocksPerMultiprocessor (normalize kernels)");
  if (status == BNK_SUCCESS)
    status = bnk__check_cuda(bnk__fold_occupancy(&ctx->occupancy),
                             "cudaOccupancyMaxActiveBlocksPerMultiprocessor (folding kernel)");
  bnk__device_leave(&guard);
  return status;
}

bnk_status bnk_context_create(bnk_context **ctx, int device) {
  bnk__clear_error();
  if (ctx == NULL) return bnk__fail(BNK_ERROR_INVALID_VALUE, "ctx must not be NULL");
  if (device < -1) return bnk__fail(BNK_ERROR_INVALID_VALUE, "device must be -1 or a device ordinal, got %d", device);
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (is_missing_device(error) || (error == cudaSuccess && count == 0)) {
    cudaGetLastError(); /* not sticky: leave the runtime clean for the caller */
    return bnk__fail(BNK_ERROR_NO_DEVICE, "no CUDA device: %s", cudaGetErrorString(error));
  }
  BNK__TRY(bnk__check_cuda(error, "cudaGetDeviceCount"));
  if (device == -1) {
    BNK__TRY(bnk__check_cuda(cudaGetDevice(&device), "cudaGetDevice"));
  } else if (device >= count) {
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "device must be < %d (the number of devices), got %d", count, device);
  }
  int sm_count = 0;
  BNK__TRY(bnk__check_cuda(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device),
                           "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)"));
  int cooperative = 0;
  BNK__TRY(bnk__check_cuda(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device),
                           "cudaDeviceGetAttribute(cudaDevAttrCooperativeLaunch)"));
  bnk_context *created = malloc(sizeof *created);
  if (created == NULL) return bnk__fail(BNK_ERROR_INTERNAL, "out of host memory allocating a context");
  created->device = device;
  created->device_sm_count = sm_count;
  created->sm_count = sm_count;
  created->cooperative_launch = cooperative;
  created->training_path = BNK_TRAINING_PATH_AUTO;
  created->stream = NULL;
  created->merge_counters = NULL;
  created->merge_counters_usable = BNK_MERGE_COUNTERS;
  created->persistent_occupancy = calloc(1, sizeof *created->persistent_occupancy);
  if (created->persistent_occupancy == NULL) {
    free(created);
    return bnk__fail(BNK_ERROR_INTERNAL, "out of host memory allocating a context's occupancy table");
  }
  /* Here rather than in the first call: compute calls allocate nothing (and may be captured in a graph). */
  bnk_status status = query_occupancy(created);
  if (status == BNK_SUCCESS) status = create_merge_counters(created);
  if (status == BNK_SUCCESS) {
    status = bnk__cublaslt_create(&created->cublaslt);
    if (status != BNK_SUCCESS) cudaFree(created->merge_counters);
  }
  if (status != BNK_SUCCESS) {
    free(created->persistent_occupancy);
    free(created);
    return status;
  }
  *ctx = created;
  return BNK_SUCCESS;
}

void bnk_context_destroy(bnk_context *ctx) {
  bnk__clear_error();
  if (ctx != NULL) {
    bnk__cublaslt_destroy(ctx->cublaslt);
    bnk_device_guard guard;
    if (bnk__device_enter(ctx, &guard) == BNK_SUCCESS) {
      cudaFree(ctx->merge_counters);
      bnk__device_leave(&guard);
    }
    free(ctx->persistent_occupancy);
  }
  free(ctx);
}

unsigned *bnk__merge_counters_of(const bnk_context *ctx, const bnk_view *view, const bnk_reduce_plan *plan) {
  return 1 + bnk_merge_groups(view, plan) <= ctx->merge_counters_usable ? ctx->merge_counters : NULL;
}

void bnk__context_limit_merge_counters(bnk_context *ctx, int64_t usable) {
  ctx->merge_counters_usable = usable < BNK_MERGE_COUNTERS ? usable : BNK_MERGE_COUNTERS;
}

bnk_status bnk_context_set_stream(bnk_context *ctx, bnk_stream stream) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  ctx->stream = (cudaStream_t)stream;
  return BNK_SUCCESS;
}

bnk_status bnk_context_get_stream(const bnk_context *ctx, bnk_stream *stream) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_pointer(stream, "stream"));
  *stream = (bnk_stream)ctx->stream;
  return BNK_SUCCESS;
}

bnk_status bnk_context_get_device(const bnk_context *ctx, int *device) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_pointer(device, "device"));
  *device = ctx->device;
  return BNK_SUCCESS;
}

bnk_status bnk_context_get_sm_count(const bnk_context *ctx, int *sm_count) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_pointer(sm_count, "sm_count"));
  *sm_count = ctx->device_sm_count;
  return BNK_SUCCESS;
}

bnk_status bnk_context_set_training_path(bnk_context *ctx, bnk_training_path path) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  if (path != BNK_TRAINING_PATH_AUTO && path != BNK_TRAINING_PATH_PERSISTENT && path != BNK_TRAINING_PATH_TWO_PASS)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "path must be BNK_TRAINING_PATH_AUTO, BNK_TRAINING_PATH_PERSISTENT or "
                     "BNK_TRAINING_PATH_TWO_PASS, got %d",
                     (int)path);
  ctx->training_path = path;
  return BNK_SUCCESS;
}

bnk_status bnk_context_get_training_path(const bnk_context *ctx, bnk_training_path *path) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_pointer(path, "path"));
  *path = ctx->training_path;
  return BNK_SUCCESS;
}

bnk_status bnk_context_set_sm_limit(bnk_context *ctx, int sm_limit) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  if (sm_limit < 0 || sm_limit > ctx->device_sm_count)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "sm_limit must be 0 (every SM) or in [1, %d] (the device's SMs), got %d",
                     ctx->device_sm_count, sm_limit);
  ctx->sm_count = sm_limit == 0 ? ctx->device_sm_count : sm_limit;
  return BNK_SUCCESS;
}

bnk_status bnk_context_get_sm_limit(const bnk_context *ctx, int *sm_limit) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk__require_pointer(sm_limit, "sm_limit"));
  *sm_limit = ctx->sm_count == ctx->device_sm_count ? 0 : ctx->sm_count;
  return BNK_SUCCESS;
}

bnk_status bnk__device_enter(const bnk_context *ctx, bnk_device_guard *guard) {
  guard->switched = 0;
  BNK__TRY(bnk__check_cuda(cudaGetDevice(&guard->previous), "cudaGetDevice"));
  if (guard->previous == ctx->device) return BNK_SUCCESS;
  const bnk_status status = bnk__check_cuda(cudaSetDevice(ctx->device), "cudaSetDevice");
  guard->switched = status == BNK_SUCCESS;
  return status;
}

void bnk__device_leave(const bnk_device_guard *guard) {
  if (guard->switched) cudaSetDevice(guard->previous);
}
