/* Shared by the host sources: error reporting, the context, views of descriptors. Not installed. */
#ifndef BNK_HOST_INTERNAL_H
#define BNK_HOST_INTERNAL_H

#include <cuda_runtime_api.h>

#include "bnk.h"
#include "kernels/launchers.h"

/* Blocks per SM of each persistent kernel at each second-level depth, learned the first time a plan asks
 * (host/persistent.c): bnk__plan_persistent_op bisects over the depth for every call's shape, and each probe is
 * an occupancy query of one (kernel, dynamic shared memory) pair, whose answer never changes on a device.
 * An entry is blocks + 1, 0 while unknown; a relaxed atomic, so that threads sharing a context for queries
 * (bnk_forward_training_path) write the same value without a race. Indexed [backward][dtype][channels_last]
 * [vec > 1][epilogue kind or gradient source][team: none, warp, block][depth]. */
#define BNK__PERSISTENT_DEPTHS (BNK_PERSISTENT_SHARED_LIMIT / (BNK_STREAM_THREADS * 4) + 1)
typedef struct bnk_persistent_occupancy {
  _Atomic unsigned char blocks_plus_one[2][3][2][2][3][3][BNK__PERSISTENT_DEPTHS];
} bnk_persistent_occupancy;

struct bnk_context {
  int device;
  int device_sm_count;
  int sm_count;           /* the SMs bnk's grids are sized for: device_sm_count or the context's SM limit */
  int cooperative_launch; /* cudaDevAttrCooperativeLaunch */
  bnk_training_path training_path;
  cudaStream_t stream;
  void *cublaslt; /* cublasLtHandle_t of bnk_linear_bn in the GPU build (BNK_WITH_CUBLASLT), else NULL */
  /* BNK_MERGE_COUNTERS device integers, zeroed at creation and zero between calls (bnk_merge_groups): not in
   * the workspace, which callers recycle, so that no call needs a memset launch to clear them. */
  unsigned *merge_counters;
  int64_t merge_counters_usable; /* BNK_MERGE_COUNTERS, or fewer under bnk__context_limit_merge_counters */
  bnk_occupancy_table occupancy; /* of this device's streaming kernels, queried at creation */
  bnk_persistent_occupancy *persistent_occupancy; /* of its persistent kernels, queried as plans need them */
};

/* Blocks per SM of a family's kernels for this view and variant, the element-wide one [0] and the 16-byte one
 * [1], from the context's table (at least 1); variant -1: the most over the family's variants. */
void bnk__blocks_per_sm(const bnk_context *ctx, bnk_kernel_family family, const bnk_view *view, int variant,
                        int blocks_per_sm[2]);
/* bnk__plan_reduce for a family's kernel on the context's GPU (its SM limit, the kernel's occupancy). */
bnk_reduce_plan bnk__reduce_plan_of(const bnk_context *ctx, bnk_kernel_family family, int variant, const bnk_view *view,
                                    int vec);
/* bnk__plan_parts_bound for a family on the context's GPU, over every variant. */
int64_t bnk__parts_bound_of(const bnk_context *ctx, bnk_kernel_family family, const bnk_view *view);

/* The context's merge counters for a reduction on `plan`, or NULL (the reduction then merges in a kernel of
 * its own) when its groups exceed the pool, or when a group has more channels than its last block has warps:
 * that block would merge them one after another, a warp walking all pieces of a channel per round, where the
 * merge kernel gives every channel of the tensor a warp at once (benchmarks/perf_model.py puts the serial
 * merge of a 1024-channel tile at tens of microseconds, a launch at 2). */
unsigned *bnk__merge_counters_of(const bnk_context *ctx, const bnk_view *view, const bnk_reduce_plan *plan);
/* Tests only: lets the reductions use `usable` counters of the pool (at most BNK_MERGE_COUNTERS), so that
 * both sides of the limit are reachable with small tensors. */
void bnk__context_limit_merge_counters(bnk_context *ctx, int64_t usable);

/* The context's cuBLASLt handle (host/linear.c): created with the context, NULL in builds without cuBLASLt. */
bnk_status bnk__cublaslt_create(void **handle);
void bnk__cublaslt_destroy(void *handle);

/* A double as the shortest text that reads back as the same value ("-1.0000001", "1e-05", "nan"), for
 * messages: bnk__double_text_of(x).text lives until the end of the full expression. */
typedef struct bnk_double_text {
  char text[32];
} bnk_double_text;
bnk_double_text bnk__double_text_of(double value);

/* Records the detail message of a failure for bnk_last_error_message() and returns status. */
bnk_status bnk__fail(bnk_status status, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Every public entry point starts here, so that the message describes the last call only. */
void bnk__clear_error(void);
/* BNK_SUCCESS, or BNK_ERROR_CUDA with "<what>: <cuda error name>: <cuda message>". */
bnk_status bnk__check_cuda(cudaError_t error, const char *what);

/* ---- argument checks (host/checks.c): each failure names the argument and its value ---- */

/* Returns from the calling function with the status of a check that failed (zstd's FORWARD_IF_ERROR). */
#define BNK__TRY(check)                                             \
  do {                                                              \
    const bnk_status bnk__tried_status = (check);                   \
    if (bnk__tried_status != BNK_SUCCESS) return bnk__tried_status; \
  } while (0)

/* The same for a cudaError_t in functions that return one. */
#define BNK__TRY_CUDA(call)                                       \
  do {                                                            \
    const cudaError_t bnk__tried_error = (call);                  \
    if (bnk__tried_error != cudaSuccess) return bnk__tried_error; \
  } while (0)

bnk_status bnk__require_context(const bnk_context *ctx);
bnk_status bnk__require_pointer(const void *pointer, const char *name);
/* A known bnk_dtype, named `name` in the message. */
bnk_status bnk__require_dtype(bnk_dtype dtype, const char *name);
bnk_status bnk__require_positive(int64_t value, const char *name);
/* eps finite, >= 0 and at most FLT_MAX. */
bnk_status bnk__require_eps(double eps);
/* The float32 eps the kernels add to a variance: eps rounded to nearest, except that a positive eps stays
 * positive (FLT_TRUE_MIN where it would round to 0), so that only eps = 0 takes the zero-variance rule. */
float bnk__eps_to_float(double eps);
/* running_mean and running_var both or neither; with them, momentum in [0, 1] or BNK_MOMENTUM_CUMULATIVE,
 * which needs num_batches_tracked. Without them momentum is ignored. */
bnk_status bnk__require_running(const float *running_mean, const float *running_var, const int64_t *num_batches_tracked,
                                double momentum);
/* Frozen statistics: running_mean, running_var and eps. */
bnk_status bnk__require_statistics(const float *running_mean, const float *running_var, double eps);
/* The arguments of a workspace-size query: a context, a valid descriptor, somewhere to write. */
bnk_status bnk__require_query(const bnk_context *ctx, const bnk_tensor_desc *desc, const size_t *bytes);
/* workspace_bytes >= needed (naming the query that gives it) and a workspace when needed > 0. */
bnk_status bnk__require_workspace(const void *workspace, size_t workspace_bytes, size_t needed, const char *query);
/* What the per-channel calls check first: a context, a valid descriptor and the two per-channel arrays the
 * call requires (running statistics, saved statistics, scale and shift). */
bnk_status bnk__require_channel_arrays(const bnk_context *ctx, const bnk_tensor_desc *desc, const float *first,
                                       const char *first_name, const float *second, const char *second_name);
/* The tensors of a non-empty forward pass (training, inference, scale_shift, normalize): x, y, and the
 * epilogue checked against them and translated into *fused. */
bnk_status bnk__require_forward_tensors(const bnk_tensor_desc *desc, const void *x, const void *y,
                                        const bnk_epilogue *epilogue, bnk_epilogue_args *fused);
/* `out` is `in` or shares no byte of `bytes` with it; `in` may be NULL. In place is fine where each value is
 * read and written by one thread; a shifted overlap is not. */
bnk_status bnk__require_same_or_apart(const void *out, const void *in, size_t bytes, const char *out_name,
                                      const char *in_name);
/* Rounds a workspace array up to a multiple of 256 bytes, so every array starts aligned. */
size_t bnk__align256(size_t bytes);
/* A workspace being laid out: arrays taken one after another from base, each 256-byte aligned. With base 0
 * nothing is carved (take returns NULL) and only the bytes are counted, so that one function describes a
 * workspace for both its size query and its launch. */
typedef struct bnk_workspace_layout {
  uintptr_t base;
  size_t bytes;
} bnk_workspace_layout;
void *bnk__layout_take(bnk_workspace_layout *layout, size_t bytes);
/* BNK_ERROR_NOT_SUPPORTED when a plan needs more blocks than a one-dimensional grid holds. */
bnk_status bnk__require_grid(const bnk_reduce_plan *plan);
bnk_status bnk__require_elementwise_grid(const bnk_elementwise_plan *plan);
/* Blocks of the folding kernel's grid-stride loop over `items` for a weight of `dtype` and a bias of bias_dtype:
 * one per BNK_STREAM_THREADS items, at most the blocks the context's SMs hold at once (its occupancy query). */
int64_t bnk__fold_blocks(const bnk_context *ctx, int64_t items, int dtype, int bias_dtype);
/* bnk__plan_elementwise on the context's GPU for a family's kernel (normalize or dx) and variant. */
bnk_elementwise_plan bnk__elementwise_plan_of(const bnk_context *ctx, const bnk_view *view, const void *const *pointers,
                                              int count, bnk_kernel_family family, int variant);

/* The kernels' view of a fused epilogue of the forward (NULL: plain), after checking it against the call's
 * tensors; each failure names the field and its value. */
bnk_status bnk__epilogue_args_of(const bnk_epilogue *epilogue, const bnk_tensor_desc *desc, const void *x,
                                 const void *y, bnk_epilogue_args *args);
/* The same for the backward's epilogue, given its x, dy and dx (any may be NULL). */
bnk_status bnk__grad_epilogue_args_of(const bnk_epilogue_grad *epilogue, const bnk_tensor_desc *desc, const void *x,
                                      const void *dy, const void *dx, bnk_grad_epilogue_args *args);

/* The training forward's path for a call (host/persistent.c): the persistent plan when the context allows it
 * and the tensor fits the co-resident grid, else the two-pass statistics plan (x's alignment). A forced
 * persistent path that does not fit fails with BNK_ERROR_NOT_SUPPORTED. */
typedef struct bnk_training_plan {
  int persistent;
  bnk_reduce_plan reduce;
} bnk_training_plan;
bnk_status bnk__plan_training_forward(const bnk_context *ctx, const bnk_view *view, const void *x, const void *y,
                                      const bnk_epilogue_args *fused, bnk_training_plan *plan);
/* The persistent plan of the forward (backward 0; kind a bnk_epilogue_kind) or the backward (1; kind a
 * bnk_grad_source) for a `vec`-wide access on sm_count SMs: the registers' cache alone where the tensor fits
 * it or a team owns each channel, else a second level in shared memory that fits and is one deeper than a
 * depth that does not (a bisection over the depth, each probe the kernel's occupancy at that depth), else the
 * deepest, which does not fit (*fits 0).
 * *blocks_per_sm is the occupancy of the plan's kernel and depth. `known` holds the occupancies queried before
 * on this device and takes the new ones (a context's persistent_occupancy); NULL queries every probe. */
cudaError_t bnk__plan_persistent_op(const bnk_view *view, int vec, int backward, int kind, int sm_count,
                                    bnk_persistent_occupancy *known, bnk_reduce_plan *plan, int *blocks_per_sm,
                                    int *fits);
/* The most pieces per channel of either path for this view: the training forward's workspace query. */
int64_t bnk__training_parts_bound(const bnk_context *ctx, const bnk_view *view);

/* The backward's path: the persistent plan (BNK_PERSISTENT_BACKWARD_CACHE) of the tensors it touches (x may be
 * NULL, dx NULL, and the epilogue's y and dz) when the context allows it and they fit the co-resident grid; else
 * plan->persistent is 0 (the two-pass kernels plan themselves). A forced persistent path that does not fit
 * fails with BNK_ERROR_NOT_SUPPORTED. */
bnk_status bnk__plan_training_backward(const bnk_context *ctx, const bnk_view *view, const void *x, const void *dy,
                                       const void *dx, const bnk_grad_epilogue_args *fused, bnk_training_plan *plan);
/* The most pieces per channel of either backward path for this view: the backward's workspace query. */
int64_t bnk__backward_parts_bound(const bnk_context *ctx, const bnk_view *view);
/* The backward of a call whose sums are wanted (host/backward.c checked its arguments), on the persistent path
 * when bnk__plan_training_backward takes it: then *launched is 1 and the status is the launch's. Otherwise
 * *launched is 0 and nothing ran (or the forced path failed). x is the tensor the sums read (NULL for frozen
 * statistics without dgamma); `caller` names the call in a failure message. */
bnk_status bnk__persistent_backward(const bnk_context *ctx, const bnk_tensor_desc *desc, const bnk_view *view,
                                    const void *x, const void *dy, void *dx, bnk_backward_stats stats, int frozen,
                                    float *dgamma, float *dbeta, void *workspace, const bnk_grad_epilogue_args *fused,
                                    const char *caller, int *launched);

/* The kernels' view of a checked descriptor. */
bnk_view bnk__view_of(const bnk_tensor_desc *desc);
/* Elements per channel (N x spatial). */
int64_t bnk__view_per_channel(const bnk_view *view);
/* Whether a checked descriptor has no elements (N = 0 or a zero spatial extent). */
int bnk__is_empty(const bnk_tensor_desc *desc);

/* An NVTX range named by op and shape around a public compute call (no-op without a profiler, or when
 * built with BNK_NVTX=OFF). Every push is matched by a pop on the same thread. */
void bnk__range_push(const char *op, const bnk_tensor_desc *desc);
void bnk__range_pop(void);
/* The same for a call on per-channel arrays or weights, named "<rows>x<columns>" (ranks x C, K x C x R x S). */
void bnk__range_push_rows(const char *op, int64_t rows, int64_t columns);

/* The one elementwise pass (inference forward, bnk_scale_shift, bnk_normalize), after the caller's checks:
 * plan, device, NVTX range `op`, launch; `what` names the launch in a failure message. */
bnk_status bnk__launch_elementwise(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                   bnk_normalize_params params, const bnk_epilogue_args *fused, const char *op,
                                   const char *what);

/* Makes the context's device current for the duration of a call. */
typedef struct bnk_device_guard {
  int previous;
  int switched;
} bnk_device_guard;
bnk_status bnk__device_enter(const bnk_context *ctx, bnk_device_guard *guard);
void bnk__device_leave(const bnk_device_guard *guard);

#endif
