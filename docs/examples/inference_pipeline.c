/* Using bnk in an inference pipeline (docs/inference-pipeline.md): fold batch normalization away at load time,
 * then run at most one cheap pass per request, with the ReLU or the residual add+ReLU fused into it.
 *
 * The network piece served here, in fp16 NHWC:
 *   conv3x3 (64 -> 64) -> BN -> ReLU            the BN folds into the convolution's weight and bias
 *   ... -> BN -> + residual -> ReLU             a ResNet block's tail: one bnk_forward_inference_ex pass
 *   x -> BN -> ReLU                             a BN with nothing before it to fold into: scale-shift
 *   features -> Linear (2048 -> 1000) -> BatchNorm1d -> ReLU   one cuBLASLt matmul, bnk_linear_bn
 * The convolution itself is the caller's (cuDNN, TensorRT, ...); bnk only rewrites its parameters.
 *
 * Built by CMake as bnk_example_inference_pipeline, so that it keeps compiling; it runs when a GPU is present
 * (parameters are zeros here: the point is the sequence of calls). */
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#include <bnk.h>

#define CHECK_BNK(call)                                                                                           \
  do {                                                                                                            \
    const bnk_status status_ = (call);                                                                            \
    if (status_ != BNK_SUCCESS) {                                                                                 \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, bnk_status_name(status_), bnk_last_error_message()); \
      exit(1);                                                                                                    \
    }                                                                                                             \
  } while (0)

#define CHECK_CUDA(call)                                                              \
  do {                                                                                \
    const cudaError_t error_ = (call);                                                \
    if (error_ != cudaSuccess) {                                                      \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(error_)); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

enum { BATCH = 8, C = 64, H = 56, W = 56, FEATURES = 2048, CLASSES = 1000 };

/* A zero-filled device buffer: stands for a tensor or parameter loaded from a checkpoint. */
static void *device_buffer(size_t bytes) {
  void *p = NULL;
  CHECK_CUDA(cudaMalloc(&p, bytes));
  CHECK_CUDA(cudaMemset(p, 0, bytes));
  return p;
}

/* One BatchNorm's frozen parameters (float32, device). */
typedef struct batch_norm {
  float *gamma, *beta, *running_mean, *running_var;
} batch_norm;

static batch_norm load_batch_norm(int64_t channels) {
  batch_norm bn;
  bn.gamma = device_buffer((size_t)channels * sizeof(float));
  bn.beta = device_buffer((size_t)channels * sizeof(float));
  bn.running_mean = device_buffer((size_t)channels * sizeof(float));
  bn.running_var = device_buffer((size_t)channels * sizeof(float));
  return bn;
}

int main(void) {
  bnk_context *ctx = NULL;
  const bnk_status created = bnk_context_create(&ctx, -1);
  if (created == BNK_ERROR_NO_DEVICE) {
    printf("no CUDA device: nothing to run (%s)\n", bnk_last_error_message());
    return 0;
  }
  CHECK_BNK(created);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  CHECK_BNK(bnk_context_set_stream(ctx, stream));
  const double eps = 1e-5;

  /* ---- load time: fold every BN once ---- */

  /* conv3x3 + BN: W'[k] = W[k] * scale[k], b'[k] = (b[k] - mean[k]) * scale[k] + beta[k], in place. The
   * convolution had no bias (NULL); the folded one has. */
  const int64_t kernel_size[2] = {3, 3};
  void *conv_weight = device_buffer((size_t)C * C * 3 * 3 * 2);
  float *conv_bias = device_buffer(C * sizeof(float));
  const batch_norm conv_bn = load_batch_norm(C);
  CHECK_BNK(bnk_fold_conv(ctx, C, C, 2, kernel_size, BNK_WEIGHTS_KRSC, BNK_FLOAT16, conv_weight, NULL, conv_bn.gamma,
                          conv_bn.beta, conv_bn.running_mean, conv_bn.running_var, eps, conv_weight, conv_bias));

  /* A BN with no layer before it to fold into: precompute its per-channel scale and shift. */
  const batch_norm input_bn = load_batch_norm(C);
  float *scale = device_buffer(C * sizeof(float));
  float *shift = device_buffer(C * sizeof(float));
  CHECK_BNK(bnk_inference_params(ctx, C, input_bn.gamma, input_bn.beta, input_bn.running_mean, input_bn.running_var,
                                 eps, scale, shift));

  /* Linear + BatchNorm1d: fold into the weight and an fp16 bias (what cuBLASLt's bias epilogue reads for
   * fp16 outputs), in place for the weight. */
  void *fc_weight = device_buffer((size_t)CLASSES * FEATURES * 2);
  float *fc_bias = device_buffer(CLASSES * sizeof(float));
  void *fc_bias_folded = device_buffer(CLASSES * 2);
  const batch_norm fc_bn = load_batch_norm(CLASSES);
  CHECK_BNK(bnk_fold_linear(ctx, CLASSES, FEATURES, BNK_FLOAT16, fc_weight, fc_bias, fc_bn.gamma, fc_bn.beta,
                            fc_bn.running_mean, fc_bn.running_var, eps, fc_weight, fc_bias_folded, BNK_FLOAT16));

  /* The block tail's BN stays a BN (its statistics are applied by subtracting the mean first, which keeps
   * more digits than the folded form; docs/semantics.md). */
  const batch_norm tail_bn = load_batch_norm(C);

  /* Buffers of one request, and the one workspace bnk_linear_bn needs, allocated once. */
  const int64_t spatial[2] = {H, W};
  bnk_tensor_desc image;
  CHECK_BNK(bnk_tensor_desc_init(&image, BNK_FLOAT16, BNK_NHWC, BATCH, C, 2, spatial));
  const size_t image_bytes = (size_t)BATCH * C * H * W * 2;
  void *input = device_buffer(image_bytes), *activation = device_buffer(image_bytes);
  void *residual = device_buffer(image_bytes);
  void *features = device_buffer((size_t)BATCH * FEATURES * 2), *logits = device_buffer((size_t)BATCH * CLASSES * 2);
  size_t linear_workspace_bytes = 0;
  const bnk_status linear_available = bnk_linear_bn_workspace_size(ctx, &linear_workspace_bytes);
  void *linear_workspace = linear_available == BNK_SUCCESS ? device_buffer(linear_workspace_bytes) : NULL;

  /* ---- per request ---- */

  /* input -> BN -> ReLU, as one pass: y = relu(x * scale + shift). */
  const bnk_epilogue relu = {BNK_EPILOGUE_RELU, NULL, NULL, 0};
  CHECK_BNK(bnk_scale_shift(ctx, &image, input, activation, scale, shift, &relu));

  /* ... the caller's convolution with conv_weight and conv_bias, then ReLU (its epilogue), runs here ... */

  /* Block tail: y = relu(bn(x) + residual), one pass, in place over the residual. */
  const bnk_epilogue add_relu = {BNK_EPILOGUE_ADD_RELU, residual, NULL, 0};
  CHECK_BNK(bnk_forward_inference_ex(ctx, &image, activation, residual, tail_bn.gamma, tail_bn.beta,
                                     tail_bn.running_mean, tail_bn.running_var, eps, &add_relu));

  /* Head: relu(features * W'^T + b'), one cublasLtMatmul. */
  if (linear_available == BNK_SUCCESS)
    CHECK_BNK(bnk_linear_bn(ctx, BNK_FLOAT16, BATCH, FEATURES, CLASSES, features, fc_weight, fc_bias_folded,
                            BNK_EPILOGUE_RELU, logits, linear_workspace, linear_workspace_bytes));

  CHECK_CUDA(cudaStreamSynchronize(stream));
  printf("inference pipeline ran: conv and linear BNs folded, two fused BN passes per request\n");

  /* Freeing is the caller's, as allocating was (omitted here for brevity: the process ends). */
  bnk_context_destroy(ctx);
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
