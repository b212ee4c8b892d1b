/* The implementations: what each one queues for an op, and why it cannot run a case. */
#include <stdio.h>
#include <string.h>

#include "benchmarks/bench.h"
#include "benchmarks/baselines.h"

call_result call_ok(void) {
  call_result result;
  memset(&result, 0, sizeof result);
  return result;
}

static call_result bnk_result(bnk_status status, const char *call) {
  call_result result = call_ok();
  if (status != BNK_SUCCESS) {
    result.failed = 1;
    result.not_supported = status == BNK_ERROR_NOT_SUPPORTED;
    snprintf(result.message, sizeof result.message, "%s: %s: %s", call, bnk_status_name(status),
             bnk_last_error_message());
  }
  return result;
}

call_result cuda_call_result(cudaError_t error, const char *call) {
  call_result result = call_ok();
  if (error != cudaSuccess) {
    result.failed = 1;
    snprintf(result.message, sizeof result.message, "%s: %s: %s", call, cudaGetErrorName(error),
             cudaGetErrorString(error));
  }
  return result;
}

static call_result run_bnk(const bench_env *env, case_data *data, const op_arguments *a, bench_op op) {
  switch (op) {
  case OP_FWD_TRAIN:
    return bnk_result(bnk_forward_training(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                           a->running_var, NULL, a->momentum, a->eps, a->save_mean, a->save_invstd,
                                           data->workspace, data->workspace_bytes),
                      "bnk_forward_training");
  case OP_FWD_INFER:
    return bnk_result(bnk_forward_inference(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                            a->running_var, a->eps),
                      "bnk_forward_inference");
  case OP_BWD:
    return bnk_result(bnk_backward(env->ctx, a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta, a->save_mean,
                                   a->save_invstd, data->workspace, data->workspace_bytes),
                      "bnk_backward");
  case OP_BWD_INFER:
    return bnk_result(bnk_backward_inference(env->ctx, a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                             a->running_mean, a->running_var, a->eps, data->workspace,
                                             data->workspace_bytes),
                      "bnk_backward_inference");
  default:
    break;
  }
  die("internal error: %s is not a plain op", op_names[op]);
  return call_ok();
}

/* bnk_forward_training or bnk_backward on one training path: the context's setting forced for the call and put
 * back after it, so that every other row takes the automatic choice. A shape the forced persistent path does
 * not fit fails the call with BNK_ERROR_NOT_SUPPORTED and the library's reason, which the row reports. */
static call_result run_bnk_on_path(const bench_env *env, case_data *data, const op_arguments *a, bench_impl impl,
                                   bench_op op) {
  bnk_training_path before;
  check_bnk(bnk_context_get_training_path(env->ctx, &before), "bnk_context_get_training_path");
  const bnk_training_path path =
      impl == IMPL_BNK_PERSISTENT ? BNK_TRAINING_PATH_PERSISTENT : BNK_TRAINING_PATH_TWO_PASS;
  check_bnk(bnk_context_set_training_path(env->ctx, path), "bnk_context_set_training_path");
  const call_result result = run_bnk(env, data, a, op);
  check_bnk(bnk_context_set_training_path(env->ctx, before), "bnk_context_set_training_path");
  return result;
}

/* The epilogue ops: each variant queues either bnk's fused call or the unfused sequence it replaces (bnk's
 * plain op, then the bench's separate elementwise pass); the forwards write y to out, the backward dx. */
static call_result run_bnk_variant(const bench_env *env, case_data *data, const op_arguments *a, bench_impl impl,
                                   bench_op op) {
  const int fused = impl != IMPL_BNK_SEPARATE;
  switch (op) {
  case OP_FWD_INFER_RELU:
  case OP_FWD_INFER_ADD_RELU:
  case OP_FWD_TRAIN_ADD_RELU: {
    const int training = op == OP_FWD_TRAIN_ADD_RELU;
    const void *z = adds_residual(op) ? a->z : NULL;
    if (!fused) {
      const call_result plain = run_bnk(env, data, a, training ? OP_FWD_TRAIN : OP_FWD_INFER);
      if (plain.failed) return plain;
      return cuda_call_result(baseline_add_relu(a->desc, a->out, z, a->stream), "baseline_add_relu");
    }
    const bnk_epilogue epilogue = {z != NULL ? BNK_EPILOGUE_ADD_RELU : BNK_EPILOGUE_RELU, z, NULL, 0};
    if (training)
      return bnk_result(bnk_forward_training_ex(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                a->running_var, NULL, a->momentum, a->eps, a->save_mean, a->save_invstd,
                                                data->workspace, data->workspace_bytes, &epilogue),
                        "bnk_forward_training_ex");
    return bnk_result(bnk_forward_inference_ex(env->ctx, a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                               a->running_var, a->eps, &epilogue),
                      "bnk_forward_inference_ex");
  }
  case OP_BWD_ADD_RELU: {
    if (!fused) {
      /* The ReLU's backward writes g, which is dz; the BN's backward then takes it as its dy. */
      const call_result relu =
          cuda_call_result(baseline_relu_backward(a->desc, a->y, a->dy, a->dz, a->stream), "baseline_relu_backward");
      if (relu.failed) return relu;
      op_arguments through_relu = *a;
      through_relu.dy = a->dz;
      return run_bnk(env, data, &through_relu, OP_BWD);
    }
    const int from_mask = impl == IMPL_BNK_MASK;
    const bnk_epilogue_grad epilogue = {BNK_EPILOGUE_ADD_RELU, from_mask ? NULL : a->y, from_mask ? a->mask : NULL,
                                        from_mask ? a->mask_bytes : 0, a->dz};
    return bnk_result(bnk_backward_ex(env->ctx, a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                      a->save_mean, a->save_invstd, data->workspace, data->workspace_bytes, &epilogue),
                      "bnk_backward_ex");
  }
  case OP_SCALE_SHIFT:
    if (impl == IMPL_BNK_FWD_INFER) return run_bnk(env, data, a, OP_FWD_INFER);
    return bnk_result(bnk_scale_shift(env->ctx, a->desc, a->x, a->out, a->scale, a->shift, NULL), "bnk_scale_shift");
  default:
    break;
  }
  die("internal error: %s has no variant %s", op_names[op], impl_names[impl]);
  return call_ok();
}

/* linear_bn: bnk_linear_bn on the folded weight and bias (one cublasLtMatmul with the RELU_BIAS epilogue), or
 * the unfused sequence: the GEMM by cuBLAS, bnk's inference forward in place over its output, the ReLU pass. */
static call_result run_linear(const bench_env *env, case_data *data, bench_impl impl) {
  const linear_data *linear = data->linear;
  const int64_t batch = data->desc.n, out_features = data->desc.c;
  if (impl == IMPL_BNK_FUSED)
    return bnk_result(bnk_linear_bn(env->ctx, data->dtype, batch, linear->in_features, out_features, linear->x,
                                    linear->folded_weight, linear->folded_bias, BNK_EPILOGUE_RELU, data->out,
                                    linear->workspace, linear->workspace_bytes),
                      "bnk_linear_bn");
#ifdef BNK_BENCH_WITH_CUBLAS
  call_result result = cublas_bench_linear(env->cublas, data->dtype, batch, linear->in_features, out_features,
                                           linear->x, linear->weight, data->out);
  if (!result.failed)
    result = bnk_result(bnk_forward_inference(env->ctx, &data->desc, data->out, data->out, data->gamma, data->beta,
                                              data->running_mean, data->running_var, EPS),
                        "bnk_forward_inference (over the GEMM's output)");
  if (!result.failed)
    result = cuda_call_result(baseline_add_relu(&data->desc, data->out, NULL, env->stream), "baseline_add_relu");
  return result;
#else
  die("internal error: %s cannot run linear_bn in this build", impl_names[impl]);
  return call_ok();
#endif
}

static call_result run_naive(const op_arguments *a, bench_op op) {
  /* Only the plain ops reach here (impl_has_op). */
  switch (op) {
  case OP_FWD_TRAIN:
    return cuda_call_result(naive_forward_training(a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                   a->running_var, a->momentum, a->eps, a->save_mean, a->save_invstd,
                                                   a->stream),
                            "naive_forward_training");
  case OP_FWD_INFER:
    return cuda_call_result(naive_forward_inference(a->desc, a->x, a->out, a->gamma, a->beta, a->running_mean,
                                                    a->running_var, a->eps, a->stream),
                            "naive_forward_inference");
  case OP_BWD:
    return cuda_call_result(naive_backward(a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta, a->save_mean,
                                           a->save_invstd, a->stream),
                            "naive_backward");
  case OP_BWD_INFER:
    return cuda_call_result(naive_backward_inference(a->desc, a->x, a->dy, a->out, a->gamma, a->dgamma, a->dbeta,
                                                     a->running_mean, a->running_var, a->eps, a->stream),
                            "naive_backward_inference");
  default:
    break;
  }
  die("internal error: unknown op %d", (int)op);
  return call_ok();
}

call_result run_impl(const bench_env *env, case_data *data, bench_impl impl, bench_op op, int slot) {
  const op_arguments arguments = {
      .desc = &data->desc,
      .x = data->x_copies[slot],
      .dy = data->dy_copies[slot],
      .out = data->out,
      .gamma = data->gamma,
      .beta = data->beta,
      .running_mean = data->running_mean,
      .running_var = data->running_var,
      .save_mean = data->save_mean,
      .save_invstd = data->save_invstd,
      .dgamma = data->dgamma,
      .dbeta = data->dbeta,
      .momentum = MOMENTUM,
      .eps = EPS,
      .stream = env->stream,
      .z = data->z_copies[slot],
      .y = data->forward_y,
      .mask = data->mask,
      .mask_bytes = data->mask_bytes,
      .dz = data->dz,
      .scale = data->scale,
      .shift = data->shift,
  };
  if (op == OP_LINEAR_BN) return run_linear(env, data, impl);
  switch (impl) {
  case IMPL_BNK:
    return run_bnk(env, data, &arguments, op);
  case IMPL_BNK_PERSISTENT:
  case IMPL_BNK_TWO_PASS:
    return run_bnk_on_path(env, data, &arguments, impl, op);
  case IMPL_NAIVE:
    return run_naive(&arguments, op);
  case IMPL_BNK_FUSED:
  case IMPL_BNK_MASK:
  case IMPL_BNK_FROM_Y:
  case IMPL_BNK_SCALE_SHIFT:
  case IMPL_BNK_SEPARATE:
  case IMPL_BNK_FWD_INFER:
    return run_bnk_variant(env, data, &arguments, impl, op);
#ifdef BNK_BENCH_WITH_CUDNN
  case IMPL_CUDNN:
    return cudnn_bench_run(env->cudnn, CUDNN_BENCH_SPATIAL, op, &arguments);
  case IMPL_CUDNN_PERSISTENT:
    return cudnn_bench_run(env->cudnn, CUDNN_BENCH_PERSISTENT, op, &arguments);
  case IMPL_CUDNN_PERSISTENT_EX:
    return cudnn_bench_run(env->cudnn, CUDNN_BENCH_PERSISTENT_EX, op, &arguments);
#endif
#ifdef BNK_BENCH_WITH_CUBLAS
  case IMPL_CUBLAS:
    return cublas_bench_run(env->cublas, op, &arguments);
#endif
  default:
    break;
  }
  die("internal error: implementation %d cannot run in this build", (int)impl);
  return call_ok();
}

call_result runtime_error(const bench_env *env, bench_impl impl) {
#ifdef BNK_BENCH_WITH_CUDNN
  if (impl == IMPL_CUDNN_PERSISTENT || impl == IMPL_CUDNN_PERSISTENT_EX) return cudnn_bench_runtime_error(env->cudnn);
#else
  (void)env;
  (void)impl;
#endif
  return call_ok();
}

/* Why the implementation cannot run the op on this case, or NULL when it can. */
const char *unavailable_reason(const bench_env *env, const case_data *data, bench_impl impl, bench_op op,
                               const bench_shape *run_shape) {
  if (op == OP_LINEAR_BN) {
    /* Both variants need cuBLAS: bnk_linear_bn is a cuBLASLt matmul, the unfused GEMM a cuBLAS one. */
    if (env->emulation) return "needs a GPU (cuBLASLt)";
    if (impl == IMPL_BNK_FUSED && data->linear->fused_unavailable[0] != '\0') return data->linear->fused_unavailable;
    if (impl == IMPL_BNK_SEPARATE && env->cublas_unavailable[0] != '\0') return env->cublas_unavailable;
    return NULL;
  }
  if (trains(op) && values_per_channel(run_shape) < 2)
    return "training needs more than one value per channel (N x spatial = 1), as in PyTorch";
  if (is_cudnn(impl) && env->cudnn_unavailable[0] != '\0') return env->cudnn_unavailable;
  if (impl == IMPL_CUDNN_PERSISTENT_EX && data->desc.layout != BNK_NHWC)
    return "measured on NHWC only, where PyTorch makes these calls (channels-last training)";
  if (impl == IMPL_CUBLAS && env->cublas_unavailable[0] != '\0') return env->cublas_unavailable;
  if (impl == IMPL_CUBLAS && data->cublas_setup.failed) return data->cublas_setup.message;
  return NULL;
}

/* Puts the case in the state the op starts from: the initial running statistics (an earlier op's timed runs
 * moved them), poisoned outputs, for bwd the saved statistics of a training forward of this x, for
 * bwd_add_relu also that forward's relu(bn(x) + z) and ReLU mask, and for scale_shift the precomputed
 * parameters (bnk_inference_params, once, not timed). */
void prepare_op(const bench_env *env, case_data *data, bench_op op) {
  const size_t channel_bytes = (size_t)data->desc.c * sizeof(float);
  upload(data->running_mean, data->running_mean_host, channel_bytes);
  upload(data->running_var, data->running_var_host, channel_bytes);
  if (op == OP_BWD) {
    check_bnk(bnk_forward_training(env->ctx, &data->desc, data->x, data->out, data->gamma, data->beta, NULL, NULL, NULL,
                                   MOMENTUM, EPS, data->save_mean, data->save_invstd, data->workspace,
                                   data->workspace_bytes),
              "bnk_forward_training (the statistics bnk_backward starts from)");
  } else if (op == OP_BWD_ADD_RELU) {
    const bnk_epilogue epilogue = {BNK_EPILOGUE_ADD_RELU, data->z, data->mask, data->mask_bytes};
    check_bnk(bnk_forward_training_ex(env->ctx, &data->desc, data->x, data->forward_y, data->gamma, data->beta, NULL,
                                      NULL, NULL, MOMENTUM, EPS, data->save_mean, data->save_invstd, data->workspace,
                                      data->workspace_bytes, &epilogue),
              "bnk_forward_training_ex (the y, mask and statistics bnk_backward_ex starts from)");
    device_poison(data->dz, data->tensor_bytes);
  } else {
    device_poison(data->save_mean, channel_bytes);
    device_poison(data->save_invstd, channel_bytes);
  }
  if (op == OP_SCALE_SHIFT)
    check_bnk(bnk_inference_params(env->ctx, data->desc.c, data->gamma, data->beta, data->running_mean,
                                   data->running_var, EPS, data->scale, data->shift),
              "bnk_inference_params");
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  device_poison(data->out, data->tensor_bytes);
  device_poison(data->dgamma, channel_bytes);
  device_poison(data->dbeta, channel_bytes);
}
