/*
 * bnk: batch normalization kernels for NVIDIA GPUs, with a C API.
 *
 * Conventions that hold for every call in this header:
 *  - Every function returns a bnk_status. On failure, bnk_last_error_message() (per thread) names the
 *    argument and its value, and no output buffer has been written.
 *  - Compute calls are asynchronous on the context's stream. They never allocate device memory and never
 *    synchronize the host, so a sequence of them can be captured in a CUDA graph and replayed. Scratch
 *    memory is a caller-provided device workspace whose size the matching *_workspace_size() returns.
 *  - Tensor pointers are device pointers. x, y, dy and dx have the descriptor's dtype; every per-channel
 *    array (gamma, beta, running and saved statistics, gradients of gamma and beta) is float32 of length C.
 *  - Statistics are accumulated in float32 whatever the storage type, with deterministic reductions (the
 *    same inputs give bitwise the same outputs on the same device and build).
 *  - The semantics follow PyTorch's BatchNorm{1,2,3}d; docs/semantics.md gives the formulas.
 */
#ifndef BNK_H
#define BNK_H

#include <stddef.h>
#include <stdint.h>

#define BNK_VERSION_MAJOR 0
#define BNK_VERSION_MINOR 1
#define BNK_VERSION_PATCH 0
#define BNK_VERSION_NUMBER (BNK_VERSION_MAJOR * 10000 + BNK_VERSION_MINOR * 100 + BNK_VERSION_PATCH)
#define BNK_VERSION_STRING "0.1.0"

#if defined(_WIN32)
#if defined(BNK_BUILDING_LIBRARY)
#define BNK_API __declspec(dllexport)
#else
#define BNK_API
#endif
#elif defined(__GNUC__)
#define BNK_API __attribute__((visibility("default")))
#else
#define BNK_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t, declared here so that this header needs no CUDA header. */
typedef struct CUstream_st *bnk_stream;

/* ---------------------------------------------------------------------------------------------------
 * Status codes. The values are stable across releases; new codes are only ever appended.
 * ------------------------------------------------------------------------------------------------- */
#define BNK_STATUS_LIST(X)                                                                             \
  X(BNK_SUCCESS, 0, "success")                                                                         \
  X(BNK_ERROR_INVALID_VALUE, 1, "an argument has an invalid value")                                    \
  X(BNK_ERROR_NOT_SUPPORTED, 2, "the operation is not supported for these arguments or by this build") \
  X(BNK_ERROR_WORKSPACE_TOO_SMALL, 3, "the workspace is smaller than the size query returned")         \
  X(BNK_ERROR_CUDA, 4, "a CUDA runtime call or kernel launch failed")                                  \
  X(BNK_ERROR_NO_DEVICE, 5, "no CUDA device is available")                                             \
  X(BNK_ERROR_CUBLAS, 6, "a cuBLAS call failed")                                                       \
  X(BNK_ERROR_NCCL, 7, "an NCCL call failed")                                                          \
  X(BNK_ERROR_INTERNAL, 8, "internal error in bnk (please report it)")

#define BNK_STATUS_ENUMERATOR_(name, value, message) name = (value),
typedef enum bnk_status { BNK_STATUS_LIST(BNK_STATUS_ENUMERATOR_) } bnk_status;
#undef BNK_STATUS_ENUMERATOR_

/* "BNK_ERROR_INVALID_VALUE"; "BNK_STATUS_UNKNOWN" for a value outside the enum. Never NULL. */
BNK_API const char *bnk_status_name(bnk_status status);
/* A one-line description of the status. Never NULL. */
BNK_API const char *bnk_status_string(bnk_status status);
/* The detail of the last failure on the calling thread ("C must be > 0, got 0"), or "" if the last
 * bnk call on this thread succeeded. Valid until the next bnk call on this thread. A double in it is printed
 * in the shortest form that reads back as the same value ("got -1.0000001", never "got -1"). */
BNK_API const char *bnk_last_error_message(void);

/* BNK_VERSION_NUMBER of the library actually linked. */
BNK_API unsigned bnk_version(void);
BNK_API const char *bnk_version_string(void);

/* ---------------------------------------------------------------------------------------------------
 * Tensors
 * ------------------------------------------------------------------------------------------------- */
typedef enum bnk_dtype { BNK_FLOAT32 = 0, BNK_FLOAT16 = 1, BNK_BFLOAT16 = 2 } bnk_dtype;

typedef enum bnk_layout {
  BNK_NCHW = 0, /* channels-first: x[n][c][spatial...] (NCL, NCHW, NCDHW) */
  BNK_NHWC = 1  /* channels-last:  x[n][spatial...][c] (NLC, NHWC, NDHWC) */
} bnk_layout;

#define BNK_MAX_SPATIAL_DIMS 3

/* A dense tensor of shape (N, C, spatial...) in the given layout. spatial_dims is 0 for BatchNorm1d on
 * (N, C), 1 for (N, C, L), 2 for images, 3 for volumes. With no spatial dims both layouts are the same
 * row-major (N, C) matrix. Fill it with bnk_tensor_desc_init(), which checks it. */
typedef struct bnk_tensor_desc {
  bnk_dtype dtype;
  bnk_layout layout;
  int spatial_dims;
  int64_t n;
  int64_t c;
  int64_t spatial[BNK_MAX_SPATIAL_DIMS]; /* entries past spatial_dims are ignored and set to 1 */
} bnk_tensor_desc;

/* Fills *desc and checks it: n >= 0, c > 0, spatial extents >= 0, 0 <= spatial_dims <= 3, a known dtype and
 * layout, and a byte size that fits in int64, counting the non-zero extents only (so that an empty tensor
 * cannot carry extents whose product overflows). spatial may be NULL when spatial_dims is 0. On failure
 * *desc is left unchanged. */
BNK_API bnk_status bnk_tensor_desc_init(bnk_tensor_desc *desc, bnk_dtype dtype, bnk_layout layout, int64_t n, int64_t c,
                                        int spatial_dims, const int64_t *spatial);
/* The checks of bnk_tensor_desc_init on a descriptor filled by hand. */
BNK_API bnk_status bnk_tensor_desc_check(const bnk_tensor_desc *desc);
/* Number of elements, N * C * product(spatial); 0 for an invalid descriptor. */
BNK_API int64_t bnk_tensor_desc_elements(const bnk_tensor_desc *desc);

/* ---------------------------------------------------------------------------------------------------
 * Context: the device, its properties and the stream every compute call is queued on.
 *
 * A context's compute calls, made directly or replayed from graphs they were captured in, must run one at
 * a time: queue them all on the context's stream (or on streams ordered after each other). The reductions
 * merge their pieces in the same kernel through a small pool of device counters that the context owns
 * (allocated and zeroed at creation; each call leaves them zero again), and two calls running at once on
 * one context would share it. Use one context per concurrently running stream (docs/semantics.md,
 * "Contexts and concurrency").
 * ------------------------------------------------------------------------------------------------- */
typedef struct bnk_context bnk_context;

/* device: a CUDA device ordinal, or -1 for the calling thread's current device. The context starts on the
 * default (legacy) stream. Allocates and zeroes the context's merge counters (64 KiB of device memory,
 * synchronously). Fails with BNK_ERROR_NO_DEVICE when no device is present. */
BNK_API bnk_status bnk_context_create(bnk_context **ctx, int device);
/* Accepts NULL. Does not synchronize: the caller must not destroy a context with work still in flight. */
BNK_API void bnk_context_destroy(bnk_context *ctx);
/* The stream is borrowed, not owned: the caller keeps it alive while the context uses it. */
BNK_API bnk_status bnk_context_set_stream(bnk_context *ctx, bnk_stream stream);
BNK_API bnk_status bnk_context_get_stream(const bnk_context *ctx, bnk_stream *stream);
BNK_API bnk_status bnk_context_get_device(const bnk_context *ctx, int *device);
BNK_API bnk_status bnk_context_get_sm_count(const bnk_context *ctx, int *sm_count);

/* The two paths of the training forward and of the backward (docs/performance.md, "Two training paths"). The
 * persistent path is one cooperative launch that reads x (the backward: x and dy) once, keeping it in registers
 * across a grid barrier; the two-pass path reads x for the statistics and again to normalize (the backward:
 * x and dy for the sums, then again for dx). AUTO (the default) takes the persistent path exactly when the
 * tensor fits the persistent kernel's co-resident grid on this device (its occupancy x the SMs bnk uses); the
 * choice depends only on the shape, dtype, epilogue kind, pointer alignment, device and SM limit. PERSISTENT
 * makes a tensor that does not fit fail with BNK_ERROR_NOT_SUPPORTED; TWO_PASS never takes it. The setting
 * applies to bnk_forward_training(_ex), bnk_backward(_ex) and bnk_backward_inference(_ex) when that computes
 * dgamma or dbeta (with neither, it is one pass over dy on every setting). */
typedef enum bnk_training_path {
  BNK_TRAINING_PATH_AUTO = 0,
  BNK_TRAINING_PATH_PERSISTENT = 1,
  BNK_TRAINING_PATH_TWO_PASS = 2
} bnk_training_path;
BNK_API bnk_status bnk_context_set_training_path(bnk_context *ctx, bnk_training_path path);
BNK_API bnk_status bnk_context_get_training_path(const bnk_context *ctx, bnk_training_path *path);
/* The SMs that bnk sizes its grids for, on every path: 0 (the default) for all of the device's, else 1 to
 * bnk_context_get_sm_count(). Fewer leave room for kernels that run alongside (communication overlapped with
 * BN); the hardware still places the blocks, so this bounds bnk's share rather than pinning SMs. Workspace
 * sizes depend on it: query them after setting it. */
BNK_API bnk_status bnk_context_set_sm_limit(bnk_context *ctx, int sm_limit);
BNK_API bnk_status bnk_context_get_sm_limit(const bnk_context *ctx, int *sm_limit);

/* ---------------------------------------------------------------------------------------------------
 * Forward
 * ------------------------------------------------------------------------------------------------- */

/* Pass as momentum for PyTorch's momentum=None: the running statistics become the cumulative average of
 * all batches seen, with weight 1 / num_batches_tracked (after its increment) on the new batch. */
#define BNK_MOMENTUM_CUMULATIVE (-1.0)

/* Workspace bytes that bnk_forward_training needs for this shape on this context's device. */
BNK_API bnk_status bnk_forward_training_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc,
                                                       size_t *bytes);

/* Training-mode forward: per-channel batch mean and biased variance over N x spatial elements, then
 *   y = (x - mean) / sqrt(var + eps) * gamma + beta.
 * x, y:            device tensors described by desc (y may equal x: the op then works in place).
 * gamma, beta:     length C; NULL gamma means 1 and NULL beta means 0 (both NULL: no affine).
 * running_mean, running_var: length C, updated in place, or both NULL when not tracked:
 *                  running_mean = (1 - m) running_mean + m mean, running_var = (1 - m) running_var +
 *                  m var M / (M - 1), where M = N x spatial and m = momentum.
 * num_batches_tracked: one device int64, incremented by one on the device (even for an empty batch, as
 *                  nn.BatchNorm does), or NULL. Required when momentum is BNK_MOMENTUM_CUMULATIVE and
 *                  running statistics are tracked.
 * momentum:        in [0, 1] (the weight of the new batch, PyTorch's convention), or
 *                  BNK_MOMENTUM_CUMULATIVE. Ignored (any value, NaN included) when running statistics are NULL.
 * eps:             >= 0, finite and at most FLT_MAX. Rounded to float32, except that a positive eps below
 *                  FLT_TRUE_MIN becomes FLT_TRUE_MIN (a positive eps stays positive).
 * save_mean, save_invstd: length C, receive mean and 1 / sqrt(var + eps) for bnk_backward; or NULL.
 * workspace:       device memory of at least bnk_forward_training_workspace_size() bytes (NULL if 0).
 * Zero variance: with eps = 0, a channel whose variance is 0 gets invstd = 0 (PyTorch's rule), so y = beta
 * there and the backward gives dx = 0 and dgamma = 0. This holds wherever bnk derives invstd (the merge, the
 * inference calls with running_var = 0, the folding calls). docs/semantics.md.
 * An empty batch (N = 0 or a zero spatial extent) writes nothing but num_batches_tracked and succeeds. M == 1
 * is rejected, as in PyTorch ("expected more than 1 value per channel when training"). */
BNK_API bnk_status bnk_forward_training(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                        const float *gamma, const float *beta, float *running_mean, float *running_var,
                                        int64_t *num_batches_tracked, double momentum, double eps, float *save_mean,
                                        float *save_invstd, void *workspace, size_t workspace_bytes);

/* Inference-mode forward with the running statistics:
 *   y = (x - running_mean) * (gamma / sqrt(running_var + eps)) + beta, in one pass over x.
 * gamma, beta may be NULL (1 and 0). running_mean and running_var are required. Needs no
 * workspace. An empty batch does nothing and succeeds. */
BNK_API bnk_status bnk_forward_inference(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                         const float *gamma, const float *beta, const float *running_mean,
                                         const float *running_var, double eps);

/* ---------------------------------------------------------------------------------------------------
 * Backward
 * ------------------------------------------------------------------------------------------------- */

/* Workspace bytes that bnk_backward and bnk_backward_inference need for this shape on this device. */
BNK_API bnk_status bnk_backward_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, size_t *bytes);

/* Gradients of bnk_forward_training, from the statistics it saved. With xhat = (x - mean) * invstd and
 * M = N x spatial, per channel:
 *   dbeta = sum(dy), dgamma = sum(dy * xhat), dx = gamma * invstd / M * (M dy - dbeta - xhat * dgamma).
 * x, dy:                  device tensors described by desc (dy may equal dx: the op then works in place).
 * dx:                     receives the input gradient, or NULL when only dgamma/dbeta are wanted.
 * gamma:                  length C, or NULL (the forward ran without gamma: 1).
 * dgamma, dbeta:          length C, receive the parameter gradients (overwritten, not accumulated), or NULL.
 * save_mean, save_invstd: what bnk_forward_training saved for this batch; required.
 * An empty batch writes zeros to dgamma and dbeta and nothing else. */
BNK_API bnk_status bnk_backward(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy, void *dx,
                                const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                                const float *save_invstd, void *workspace, size_t workspace_bytes);

/* Gradients of bnk_forward_inference (frozen statistics): with invstd = 1 / sqrt(running_var + eps),
 *   dx = dy * gamma * invstd, dbeta = sum(dy), dgamma = sum(dy * (x - running_mean) * invstd).
 * x is read only when dgamma is wanted (it may be NULL otherwise); dx, dgamma, dbeta may each be NULL;
 * the workspace may be NULL (0 bytes) when dgamma and dbeta are both NULL. */
BNK_API bnk_status bnk_backward_inference(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                          void *dx, const float *gamma, float *dgamma, float *dbeta,
                                          const float *running_mean, const float *running_var, double eps,
                                          void *workspace, size_t workspace_bytes);

/* ---------------------------------------------------------------------------------------------------
 * Fused epilogues: BN + ReLU and BN + add + ReLU (the tail of a ResNet block) in the normalize pass itself,
 * for every layout, dtype and rank (docs/semantics.md, "Fused epilogues"). The *_ex calls take the
 * arguments of the plain calls plus an epilogue; a NULL epilogue is the plain call.
 * ------------------------------------------------------------------------------------------------- */
typedef enum bnk_epilogue_kind {
  BNK_EPILOGUE_NONE = 0,    /* y = bn(x) */
  BNK_EPILOGUE_RELU = 1,    /* y = relu(bn(x)) */
  BNK_EPILOGUE_ADD_RELU = 2 /* y = relu(bn(x) + z) */
} bnk_epilogue_kind;

/* What the forward applies to bn(x) before its one rounding to the storage type. relu(v) is 0 for v < 0 and
 * v otherwise (NaN stays NaN, as in PyTorch). */
typedef struct bnk_epilogue {
  bnk_epilogue_kind kind;
  const void *z;     /* ADD_RELU: the residual, a device tensor of x's descriptor; may be y (y overwrites z) or
                      * x, must not otherwise overlap y. NULL for the other kinds. */
  void *mask;        /* RELU, ADD_RELU, optional: receives one bit per element for bnk_backward_ex, bit i of byte
                      * i / 8 = (y_i > 0) with i the element's index in memory order. 4-byte aligned; must not
                      * overlap x, y or z. NULL: not written. */
  size_t mask_bytes; /* size of mask, at least bnk_epilogue_mask_size() */
} bnk_epilogue;

/* Bytes of the epilogue's mask for tensors of this descriptor: one bit per element, in whole 4-byte words. */
BNK_API bnk_status bnk_epilogue_mask_size(const bnk_tensor_desc *desc, size_t *bytes);

/* The backward through the forward's epilogue: every gradient is taken with g = (y > 0 ? dy : 0) in place of
 * dy, deciding from y or from the mask (the same bits either way; docs/performance.md compares the bytes). */
typedef struct bnk_epilogue_grad {
  bnk_epilogue_kind kind; /* the forward's */
  const void *y;          /* the forward's output: for RELU and ADD_RELU exactly one of y and mask is given */
  const void *mask;       /* the mask the forward wrote (4-byte aligned) */
  size_t mask_bytes;      /* size of mask, at least bnk_epilogue_mask_size() */
  void *dz;               /* ADD_RELU, optional: receives the gradient of z, which is g (x's descriptor); must not
                           * overlap x, dy, dx, y or mask. NULL: not written. */
} bnk_epilogue_grad;

BNK_API bnk_status bnk_forward_training_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                           const float *gamma, const float *beta, float *running_mean,
                                           float *running_var, int64_t *num_batches_tracked, double momentum,
                                           double eps, float *save_mean, float *save_invstd, void *workspace,
                                           size_t workspace_bytes, const bnk_epilogue *epilogue);
/* The path bnk_forward_training_ex would take for these arguments (x, y and the epilogue's z decide the
 * alignment): BNK_TRAINING_PATH_PERSISTENT or BNK_TRAINING_PATH_TWO_PASS, or the call's failure when the
 * context forces a persistent path that does not fit. BNK_TRAINING_PATH_TWO_PASS for an empty batch or one value
 * per channel, where no persistent kernel runs. */
BNK_API bnk_status bnk_forward_training_path(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x,
                                             const void *y, const bnk_epilogue *epilogue, bnk_training_path *path);

BNK_API bnk_status bnk_forward_inference_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                            const float *gamma, const float *beta, const float *running_mean,
                                            const float *running_var, double eps, const bnk_epilogue *epilogue);
/* With an epilogue, dx may be NULL when dz is wanted. */
BNK_API bnk_status bnk_backward_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                   void *dx, const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                                   const float *save_invstd, void *workspace, size_t workspace_bytes,
                                   const bnk_epilogue_grad *epilogue);
BNK_API bnk_status bnk_backward_inference_ex(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x,
                                             const void *dy, void *dx, const float *gamma, float *dgamma, float *dbeta,
                                             const float *running_mean, const float *running_var, double eps,
                                             void *workspace, size_t workspace_bytes,
                                             const bnk_epilogue_grad *epilogue);
/* The path bnk_backward_ex would take for these tensors (x, dy, dx and the epilogue's y and dz decide the
 * alignment; dx may be NULL as in the call): BNK_TRAINING_PATH_PERSISTENT or BNK_TRAINING_PATH_TWO_PASS, or the
 * call's failure when the context forces a persistent path that does not fit. BNK_TRAINING_PATH_TWO_PASS for an
 * empty batch, where no kernel of either path runs. The call takes this path when it computes any of dx,
 * dgamma, dbeta; bnk_backward_inference_ex with dgamma or dbeta takes it too, for its x (NULL without dgamma). */
BNK_API bnk_status bnk_backward_training_path(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x,
                                              const void *dy, const void *dx, const bnk_epilogue_grad *epilogue,
                                              bnk_training_path *path);

/* ---------------------------------------------------------------------------------------------------
 * Inference pipelines: fold the frozen statistics once at load time, then run one cheap pass (or none) per
 * request (docs/inference-pipeline.md). Every call here is asynchronous on the context's stream.
 * ------------------------------------------------------------------------------------------------- */

/* Per channel (length c, float32, device): scale = gamma * (1 / sqrt(running_var + eps)) and
 * shift = beta - running_mean * scale, by a kernel. gamma, beta may be NULL (1 and 0); scale and shift may be
 * gamma and beta (in place). */
BNK_API bnk_status bnk_inference_params(bnk_context *ctx, int64_t c, const float *gamma, const float *beta,
                                        const float *running_mean, const float *running_var, double eps, float *scale,
                                        float *shift);

/* y = x * scale + shift (one fma per element), then the epilogue (may be NULL), in one pass over x: the
 * folded form of bnk_forward_inference_ex. It loses |mean| / std digits to cancellation where
 * bnk_forward_inference does not (docs/semantics.md). y may be x. */
BNK_API bnk_status bnk_scale_shift(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                   const float *scale, const float *shift, const bnk_epilogue *epilogue);

/* Order of a convolution's weight. Output channel k is outermost in both, so folding treats them alike. */
typedef enum bnk_weight_layout {
  BNK_WEIGHTS_KCRS = 0, /* [K][C_in][kernel...] (PyTorch) */
  BNK_WEIGHTS_KRSC = 1  /* [K][kernel...][C_in] (channels-last, TensorRT/cuDNN NHWC filters) */
} bnk_weight_layout;

/* Folds a BatchNorm over the K output channels of the convolution before it, with scale = gamma /
 * sqrt(running_var + eps):
 *   weight_out[k][...] = weight_in[k][...] * scale[k],
 *   bias_out[k] = (bias_in[k] - running_mean[k]) * scale[k] + beta[k],
 * so that conv(x, weight_out) + bias_out = bn(conv(x, weight_in) + bias_in). kernel_dims (1 to 3) extents in
 * kernel_size (R, S, ... : 1-D to 3-D convolutions; a 1x1 convolution is kernel_dims 2 with {1, 1}). c_in is
 * the input channels per group for grouped and depthwise convolutions. The weight is of dtype, the
 * arithmetic fp32; bias_in (NULL: 0), gamma (NULL: 1), beta (NULL: 0), the statistics and bias_out are float32
 * of length K. weight_out may be weight_in and bias_out bias_in (in place). By a kernel on the device. */
BNK_API bnk_status bnk_fold_conv(bnk_context *ctx, int64_t k, int64_t c_in, int kernel_dims, const int64_t *kernel_size,
                                 bnk_weight_layout layout, bnk_dtype dtype, const void *weight_in, const float *bias_in,
                                 const float *gamma, const float *beta, const float *running_mean,
                                 const float *running_var, double eps, void *weight_out, float *bias_out);

/* bnk_fold_conv for a Linear layer followed by BatchNorm1d: weight is the (out_features, in_features)
 * row-major matrix of PyTorch's Linear. bias_out is of bias_dtype: BNK_FLOAT32, or dtype itself, which is
 * what bnk_linear_bn needs for 16-bit storage (cuBLASLt's bias epilogue reads the output's type). */
BNK_API bnk_status bnk_fold_linear(bnk_context *ctx, int64_t out_features, int64_t in_features, bnk_dtype dtype,
                                   const void *weight_in, const float *bias_in, const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var, double eps, void *weight_out,
                                   void *bias_out, bnk_dtype bias_dtype);

/* Workspace of bnk_linear_bn on this context's device (cuBLASLt's workspace). */
BNK_API bnk_status bnk_linear_bn_workspace_size(const bnk_context *ctx, size_t *bytes);

/* Linear + BatchNorm1d (+ ReLU) in inference, in one cublasLtMatmul with the BIAS or RELU_BIAS epilogue:
 *   y = x * weight^T + bias, then relu when epilogue is BNK_EPILOGUE_RELU,
 * with weight and bias folded by bnk_fold_linear. x is (batch, in_features) row-major, weight
 * (out_features, in_features) row-major, y (batch, out_features) row-major, all of dtype; bias is float32 for
 * BNK_FLOAT32 and dtype for 16-bit storage. fp32 accumulation (no TF32). BNK_ERROR_NOT_SUPPORTED in the
 * emulation build (it has no cuBLAS) and for BNK_EPILOGUE_ADD_RELU; cuBLASLt failures are BNK_ERROR_CUBLAS. */
BNK_API bnk_status bnk_linear_bn(bnk_context *ctx, bnk_dtype dtype, int64_t batch, int64_t in_features,
                                 int64_t out_features, const void *x, const void *weight, const void *bias,
                                 bnk_epilogue_kind epilogue, void *y, void *workspace, size_t workspace_bytes);

/* ---------------------------------------------------------------------------------------------------
 * Synchronized batch normalization across GPUs (SyncBatchNorm): docs/distributed.md
 *
 * Each rank holds a share of the batch (shares may differ in N, and may be empty). The statistics are those
 * of the whole batch, so that every rank normalizes as one device holding the whole batch would.
 *
 * Split statistics, usable with any communication library:
 *   forward:  bnk_batch_stats (each rank)          -> 3 x C doubles per rank
 *             all-gather them rank-major           (what ncclAllGather and MPI_Allgather leave)
 *             bnk_merge_stats (each rank)          -> mean, invstd, running statistics, the same on every rank
 *             bnk_normalize (each rank, its share)
 *   backward: bnk_backward_local_sums (each rank)  -> BNK_BACKWARD_SUMS(C) floats per rank
 *             all-reduce them with a sum
 *             bnk_backward_apply (each rank)       -> dgamma, dbeta (of the whole batch), dx of its share
 * Over NCCL, bnk_forward_training_sync and bnk_backward_sync do all of it on the context's stream.
 * ------------------------------------------------------------------------------------------------- */

/* Doubles per channel of a rank's partial statistics: [count (C) | mean (C) | M2 (C)], M2 being the sum
 * of squared deviations from the rank's mean. */
#define BNK_PARTIALS_PER_CHANNEL 3
/* Floats of the backward's sums for C channels: [sum dy (C) | sum dy * xhat (C) | count]. */
#define BNK_BACKWARD_SUMS(c) (2 * (c) + 1)

/* Workspace of bnk_batch_stats (the same as the training forward's). */
BNK_API bnk_status bnk_batch_stats_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, size_t *bytes);
/* This rank's partial statistics of x into `partials` (BNK_PARTIALS_PER_CHANNEL x C doubles, device).
 * An empty share (N = 0) writes zeros, which the merge skips. */
BNK_API bnk_status bnk_batch_stats(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, double *partials,
                                   void *workspace, size_t workspace_bytes);
/* Merges `ranks` partials, gathered rank-major (`gathered` holds ranks x BNK_PARTIALS_PER_CHANNEL x C
 * doubles), in rank order, so every rank computes the same bits. Writes the whole batch's mean and invstd
 * to save_mean and save_invstd (required: bnk_normalize and the backward take them) and, as
 * bnk_forward_training does, updates the running statistics (optional) with the whole batch's count M. With
 * M < 2 the running statistics are left as they were (the unbiased variance needs two values); eps, momentum
 * and num_batches_tracked follow bnk_forward_training's rules (zero variance with eps = 0 gives invstd 0). */
BNK_API bnk_status bnk_merge_stats(bnk_context *ctx, int64_t c, int ranks, const double *gathered, float *running_mean,
                                   float *running_var, int64_t *num_batches_tracked, double momentum, double eps,
                                   float *save_mean, float *save_invstd);
/* y = (x - mean) * invstd * gamma + beta with given per-channel statistics (gamma, beta may be NULL). */
BNK_API bnk_status bnk_normalize(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                 const float *gamma, const float *beta, const float *mean, const float *invstd);
/* This rank's sums for the backward into `sums` (BNK_BACKWARD_SUMS(C) floats, device), given the merged
 * statistics. The workspace is bnk_backward_workspace_size()'s. */
BNK_API bnk_status bnk_backward_local_sums(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                           const float *save_mean, const float *save_invstd, float *sums,
                                           void *workspace, size_t workspace_bytes);
/* From the sums added over every rank: dgamma and dbeta of the whole batch (each may be NULL), and dx of
 * this rank's share (may be NULL). The workspace is bnk_backward_workspace_size()'s. */
BNK_API bnk_status bnk_backward_apply(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                      void *dx, const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                                      const float *save_invstd, const float *sums, void *workspace,
                                      size_t workspace_bytes);

/* Same type as ncclComm_t, declared here so that this header needs no NCCL header. */
typedef struct ncclComm *bnk_nccl_comm;

/* Workspace of bnk_forward_training_sync and bnk_backward_sync for a communicator of `ranks` ranks. */
BNK_API bnk_status bnk_sync_workspace_size(const bnk_context *ctx, const bnk_tensor_desc *desc, int ranks,
                                           size_t *bytes);
/* bnk_forward_training over the batch spread across the communicator's ranks: local statistics,
 * ncclAllGather of BNK_PARTIALS_PER_CHANNEL x C doubles, merge, normalize, all on the context's stream with
 * no host synchronization. Every rank calls it with its own share (desc may differ in N). save_mean and
 * save_invstd may be NULL. BNK_ERROR_NOT_SUPPORTED when bnk was built without NCCL. */
BNK_API bnk_status bnk_forward_training_sync(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, void *y,
                                             const float *gamma, const float *beta, float *running_mean,
                                             float *running_var, int64_t *num_batches_tracked, double momentum,
                                             double eps, float *save_mean, float *save_invstd, bnk_nccl_comm comm,
                                             void *workspace, size_t workspace_bytes);
/* bnk_backward over the batch spread across the ranks: local sums, ncclAllReduce of BNK_BACKWARD_SUMS(C)
 * floats, then dgamma, dbeta (whole batch) and dx (this share). save_mean and save_invstd are what
 * bnk_forward_training_sync saved. */
BNK_API bnk_status bnk_backward_sync(bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *dy,
                                     void *dx, const float *gamma, float *dgamma, float *dbeta, const float *save_mean,
                                     const float *save_invstd, bnk_nccl_comm comm, void *workspace,
                                     size_t workspace_bytes);

#ifdef __cplusplus
}
#endif

#endif /* BNK_H */
