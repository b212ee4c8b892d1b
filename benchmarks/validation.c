/* Validation against the float64 reference of tests/reference.c, on the sampled channels of each case. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchmarks/bench.h"
#include "benchmarks/tolerances.h"
#include "tests/reference.h"
#include "tests/storage.h"

#ifdef BNK_BENCH_EMULATION
#include <bnk_emu/control.h>
#endif

static void record_failure(validation *result, const char *format, ...) {
  if (!result->passed) return; /* the first failure is the one worth reading */
  result->passed = 0;
  va_list args;
  va_start(args, format);
  vsnprintf(result->failure, sizeof result->failure, format, args);
  va_end(args);
}

/* Elements of the sample: float32 to an absolute tolerance, 16-bit storage to one unit in its last place.
 * rounded_before, when given, holds values that the implementation rounded to the storage type on the way
 * (bn(x), which the unfused sequence stores before adding z): 16-bit storage is then allowed half a unit in
 * the last place of each such value on top. */
static void check_elements(validation *result, const case_data *data, const char *what, const double *got,
                           const double *want, const double *rounded_before) {
  const int64_t spatial = ref_spatial(&data->sample_desc);
  for (int64_t i = 0; i < data->sample_elements; ++i) {
    const double error = fabs(got[i] - want[i]);
    double allowed = data->dtype == BNK_FLOAT32
                         ? F32_ELEMENT_TOLERANCE
                         : SIXTEEN_BIT_ULPS * storage_ulp(data->dtype, want[i]) + SIXTEEN_BIT_SLACK;
    if (rounded_before != NULL && data->dtype != BNK_FLOAT32)
      allowed += 0.5 * storage_ulp(data->dtype, rounded_before[i]);
    if (isnan(error) || error > result->max_error) result->max_error = isnan(error) ? INFINITY : error;
    if (error <= allowed) continue;
    /* Name the element by (n, c, spatial index) of the full tensor, not its place in the sample. */
    const int64_t k = data->channel_count;
    const int channels_last = data->sample_desc.layout == BNK_NHWC;
    const int64_t j = channels_last ? i % k : (i / spatial) % k;
    const int64_t s = channels_last ? (i / k) % spatial : i % spatial;
    const int64_t n = i / (k * spatial);
    record_failure(result,
                   "%s at n=%" PRId64 " c=%" PRId64 " spatial=%" PRId64
                   " is %.9g, reference %.9g (error %.3g > %.3g allowed)",
                   what, n, data->channels[j], s, got[i], want[i], error, allowed);
  }
}

/* Per-channel outputs, at the validated channels: |got - want| <= CHANNEL_TOLERANCE * scale. The scale is
 * what the error of the quantity is proportional to: |want| for invstd and variances, |mean| + std for
 * means (the mean of a centred channel is near 0 but its error scales with the spread), and the sum of the
 * absolute terms for dgamma and dbeta (a sum that cancels to near 0 has no meaningful relative error; its
 * rounding error is a fraction of what was added up). */
static void check_channels(validation *result, const case_data *data, const char *what, const double *got_full,
                           const double *want, const double *scale) {
  for (int64_t j = 0; j < data->channel_count; ++j) {
    const double got = got_full[data->channels[j]];
    const double relative = fabs(got - want[j]) / scale[j];
    if (isnan(relative) || relative > result->worst_channel_error)
      result->worst_channel_error = isnan(relative) ? INFINITY : relative;
    if (!(relative <= CHANNEL_TOLERANCE))
      record_failure(result, "%s[%" PRId64 "] is %.9g, reference %.9g (relative error %.3g > %.3g)", what,
                     data->channels[j], got, want[j], relative, CHANNEL_TOLERANCE);
  }
}

/* A device tensor of the case's descriptor at the validated channels, as float64 (the caller frees it). */
static double *download_sample(case_data *data, const void *device) {
  download(data->out_host, device, data->tensor_bytes); /* out_host is the download scratch */
  double *sample = host_alloc((size_t)data->sample_elements * sizeof(double));
  gather_sample(data, data->out_host, sample);
  return sample;
}

/* An output tensor (y, dx or dz), at the validated channels; rounded_before as in check_elements. */
static void check_tensor(validation *result, case_data *data, const char *what, const void *device, const double *want,
                         const double *rounded_before) {
  double *got = download_sample(data, device);
  check_elements(result, data, what, got, want, rounded_before);
  free(got);
}

/* y of a forward op: want holds bn(x) on entry and becomes the op's epilogue of it, relu(bn(x) + z) or
 * relu(bn(x)) (relu keeps NaN). The unfused add + ReLU stores bn(x) before adding z, one more rounding. */
static void check_forward_output(validation *result, case_data *data, bench_impl impl, bench_op op, double *want) {
  double *rounded_bn = NULL;
  if (impl == IMPL_BNK_SEPARATE && adds_residual(op)) {
    rounded_bn = host_alloc((size_t)data->sample_elements * sizeof(double));
    memcpy(rounded_bn, want, (size_t)data->sample_elements * sizeof(double));
  }
  if (has_relu(op))
    for (int64_t i = 0; i < data->sample_elements; ++i) {
      const double v = want[i] + (adds_residual(op) ? data->z_sample[i] : 0.0);
      want[i] = v < 0.0 ? 0.0 : v;
    }
  check_tensor(result, data, "y", data->out, want, rounded_bn);
  free(rounded_bn);
}

static double *download_channel_array(const case_data *data, const float *device) {
  double *values = host_alloc((size_t)data->desc.c * sizeof(double));
  download_floats(values, device, data->desc.c);
  return values;
}

static void check_channel_output(validation *result, const case_data *data, const char *what, const float *device,
                                 const double *want, const double *scale) {
  double *got = download_channel_array(data, device);
  check_channels(result, data, what, got, want, scale);
  free(got);
}

/* The scales of dbeta = sum dy and dgamma = sum dy xhat: the sums of the absolute terms. */
static void gradient_sum_scales(const case_data *data, const double *dy, const double *mean, const double *invstd,
                                double *dbeta_scale, double *dgamma_scale) {
  const int64_t spatial = ref_spatial(&data->sample_desc);
  for (int64_t j = 0; j < data->channel_count; ++j) {
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < data->sample_desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&data->sample_desc, n, j, s);
        sum_dy += fabs(dy[i]);
        sum_dy_xhat += fabs(dy[i] * (data->x_sample[i] - mean[j]) * invstd[j]);
      }
    /* An all-zero channel of dy has scale 0; any nonzero result is then wrong, which DBL_MIN still says. */
    dbeta_scale[j] = sum_dy > 0.0 ? sum_dy : 0x1p-1022;
    dgamma_scale[j] = sum_dy_xhat > 0.0 ? sum_dy_xhat : 0x1p-1022;
  }
}

/* scale_shift: bnk_inference_params' scale and shift against float64 (scale = gamma / sqrt(running_var + eps),
 * relative; shift = beta - running_mean scale, relative to the size of its terms), then want = x scale + shift
 * in float64 from the parameters as the device stored them: the pass is validated on its own, and the
 * digits the folded form loses to cancellation (docs/semantics.md) are not charged to it. */
static void check_scale_shift(validation *result, case_data *data, const double *gamma, const double *beta,
                              const double *running_mean, const double *running_var, double *want) {
  const int64_t k = data->channel_count;
  double *scale_want = host_alloc((size_t)k * sizeof(double)), *shift_want = host_alloc((size_t)k * sizeof(double));
  double *scale_size = host_alloc((size_t)k * sizeof(double)), *shift_size = host_alloc((size_t)k * sizeof(double));
  for (int64_t j = 0; j < k; ++j) {
    scale_want[j] = gamma[j] / sqrt(running_var[j] + EPS);
    shift_want[j] = beta[j] - running_mean[j] * scale_want[j];
    scale_size[j] = fabs(scale_want[j]);
    shift_size[j] = fabs(beta[j]) + fabs(running_mean[j] * scale_want[j]);
  }
  double *scale_got = download_channel_array(data, data->scale), *shift_got = download_channel_array(data, data->shift);
  check_channels(result, data, "scale", scale_got, scale_want, scale_size);
  check_channels(result, data, "shift", shift_got, shift_want, shift_size);
  const int64_t spatial = ref_spatial(&data->sample_desc);
  for (int64_t n = 0; n < data->sample_desc.n; ++n)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(&data->sample_desc, n, j, s);
        want[i] = data->x_sample[i] * scale_got[data->channels[j]] + shift_got[data->channels[j]];
      }
  double *to_free[] = {scale_want, shift_want, scale_size, shift_size, scale_got, shift_got};
  for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; ++i) free(to_free[i]);
}

/* Storage-type values as float64. */
static double *load_all(bnk_dtype dtype, const void *storage, int64_t count) {
  double *values = host_alloc((size_t)count * sizeof(double));
  for (int64_t i = 0; i < count; ++i) values[i] = storage_load(dtype, storage, i);
  return values;
}

/* linear_bn against float64: y = relu((x W^T - running_mean) gamma / sqrt(running_var + eps) + beta) from the
 * stored x and the original weight, on the validated rows (every output feature of each). Both variants round
 * on the way, the fused one the folded weight and bias to the storage type, the unfused one the GEMM's output:
 * each is allowed the storage type's unit roundoff, plus LINEAR_ACCUMULATION_TOLERANCE, of the size of the
 * terms (scale times the sum of |x w|, plus |scale running_mean| and |beta|), and in 16-bit storage one unit
 * in the last place of the result. */
validation validate_linear(const bench_env *env, case_data *data, bench_impl impl, call_result *call) {
  validation result = {.passed = 1, .worst_channel_error = -1.0, .metered_bytes = -1.0, .launches = -1};
  device_poison(data->out, data->tensor_bytes);
  *call = run_impl(env, data, impl, OP_LINEAR_BN, 0);
  if (!call->failed)
    *call = cuda_call_result(cudaDeviceSynchronize(), "the kernels of the validated run (cudaDeviceSynchronize)");
  if (call->failed) {
    cudaGetLastError();
    result.passed = 0;
    return result;
  }
  download(data->out_host, data->out, data->tensor_bytes);
  const linear_data *linear = data->linear;
  const bnk_dtype dtype = data->dtype;
  const int64_t in = linear->in_features, out_features = data->desc.c;
  const double roundoff = 0.5 * storage_ulp(dtype, 1.0);
  double *weight = load_all(dtype, linear->weight_host, out_features * in);
  for (int64_t r = 0; r < linear->row_count; ++r) {
    const int64_t row = linear->rows[r];
    double *x = load_all(dtype, (const char *)linear->x_host + (size_t)(row * in) * storage_element_bytes(dtype), in);
    for (int64_t o = 0; o < out_features; ++o) {
      double sum = 0.0, size = 0.0;
      for (int64_t i = 0; i < in; ++i) {
        const double product = x[i] * weight[o * in + i];
        sum += product;
        size += fabs(product);
      }
      const double mean = data->running_mean_host[o], beta = data->beta_host[o];
      const double scale = data->gamma_host[o] / sqrt((double)data->running_var_host[o] + EPS);
      const double normalized = (sum - mean) * scale + beta;
      const double want = normalized < 0.0 ? 0.0 : normalized;
      double allowed = (roundoff + LINEAR_ACCUMULATION_TOLERANCE) * (scale * size + fabs(scale * mean) + fabs(beta));
      if (dtype != BNK_FLOAT32) allowed += SIXTEEN_BIT_ULPS * storage_ulp(dtype, want);
      const double got = storage_load(dtype, data->out_host, row * out_features + o);
      const double error = fabs(got - want);
      if (isnan(error) || error > result.max_error) result.max_error = isnan(error) ? INFINITY : error;
      if (!(error <= allowed))
        record_failure(&result,
                       "y at row=%" PRId64 " feature=%" PRId64 " is %.9g, reference %.9g (error %.3g > %.3g allowed)",
                       row, o, got, want, error, allowed);
    }
    free(x);
  }
  free(weight);
  return result;
}

/* Runs the implementation once on poisoned outputs and checks what it wrote. *call says whether the call
 * itself failed (a status, or a kernel fault found by the synchronization); the checks run only if not. */
validation validate_op(const bench_env *env, case_data *data, bench_impl impl, bench_op op, call_result *call) {
  validation result = {.passed = 1, .worst_channel_error = -1.0, .metered_bytes = -1.0, .launches = -1};
  prepare_op(env, data, op);
#ifdef BNK_BENCH_EMULATION
  bnk_emu_traffic_reset();
  bnk_emu_set_traffic(1);
#endif
  *call = run_impl(env, data, impl, op, 0);
#ifdef BNK_BENCH_EMULATION
  bnk_emu_set_traffic(0);
  bnk_emu_traffic traffic;
  bnk_emu_traffic_total(&traffic);
  result.metered_bytes = 32.0 * (double)(traffic.read_sectors + traffic.written_sectors);
  result.launches = (long long)traffic.launches;
#endif
  if (!call->failed)
    *call = cuda_call_result(cudaDeviceSynchronize(), "the kernels of the validated run (cudaDeviceSynchronize)");
  if (call->failed) {
    cudaGetLastError(); /* a launch error is not sticky: clear it so that the next implementation starts clean */
    result.passed = 0;
    return result;
  }
  /* cuDNN's persistent mode reports an overflow only when asked: a wrong result, recorded as a failure. */
  const call_result runtime = runtime_error(env, impl);
  if (runtime.failed) record_failure(&result, "%s", runtime.message);

  const int64_t k = data->channel_count;
  double *gamma = sample_floats(data, data->gamma_host), *beta = sample_floats(data, data->beta_host);
  double *running_mean = sample_floats(data, data->running_mean_host);
  double *running_var = sample_floats(data, data->running_var_host);
  double *want = host_alloc((size_t)data->sample_elements * sizeof(double));
  double *mean = host_zeros(k), *var = host_zeros(k), *var_unbiased = host_zeros(k), *invstd = host_zeros(k);
  double *scale = host_zeros(k), *second_scale = host_zeros(k), *dgamma = host_zeros(k), *dbeta = host_zeros(k);

  switch (op) {
  case OP_FWD_TRAIN:
  case OP_FWD_TRAIN_ADD_RELU: {
    ref_channel_stats(&data->sample_desc, data->x_sample, mean, var, var_unbiased);
    ref_normalize(&data->sample_desc, data->x_sample, mean, var, EPS, gamma, beta, want);
    check_forward_output(&result, data, impl, op, want);
    for (int64_t j = 0; j < k; ++j) {
      invstd[j] = 1.0 / sqrt(var[j] + EPS);
      scale[j] = fabs(mean[j]) + sqrt(var[j]);
    }
    check_channel_output(&result, data, "save_mean", data->save_mean, mean, scale);
    check_channel_output(&result, data, "save_invstd", data->save_invstd, invstd, invstd);
    ref_running_update(k, MOMENTUM, mean, var_unbiased, running_mean, running_var);
    for (int64_t j = 0; j < k; ++j) scale[j] = fabs(running_mean[j]) + sqrt(var[j]);
    check_channel_output(&result, data, "running_mean", data->running_mean, running_mean, scale);
    check_channel_output(&result, data, "running_var", data->running_var, running_var, running_var);
    break;
  }
  case OP_FWD_INFER:
  case OP_FWD_INFER_RELU:
  case OP_FWD_INFER_ADD_RELU:
    ref_normalize(&data->sample_desc, data->x_sample, running_mean, running_var, EPS, gamma, beta, want);
    check_forward_output(&result, data, impl, op, want);
    break;
  case OP_SCALE_SHIFT:
    if (impl == IMPL_BNK_SCALE_SHIFT) check_scale_shift(&result, data, gamma, beta, running_mean, running_var, want);
    else ref_normalize(&data->sample_desc, data->x_sample, running_mean, running_var, EPS, gamma, beta, want);
    check_tensor(&result, data, "y", data->out, want, NULL);
    break;
  case OP_BWD:
  case OP_BWD_ADD_RELU: {
    /* From the statistics the device saved, as bnk_backward gets them: this validates the backward on its
     * own, whatever small error the forward's statistics carry. Through the ReLU, the gradient that reaches
     * the BN is g = dy where the forward's stored y > 0 (else 0), which is also dz. */
    double *g = op == OP_BWD_ADD_RELU ? download_sample(data, data->forward_y) : NULL;
    for (int64_t i = 0; g != NULL && i < data->sample_elements; ++i) g[i] = g[i] > 0.0 ? data->dy_sample[i] : 0.0;
    const double *dy = g != NULL ? g : data->dy_sample;
    double *saved_mean = download_channel_array(data, data->save_mean);
    double *saved_invstd = download_channel_array(data, data->save_invstd);
    double *sample_mean = sample_channels(data, saved_mean), *sample_invstd = sample_channels(data, saved_invstd);
    ref_backward(&data->sample_desc, data->x_sample, dy, sample_mean, sample_invstd, gamma, want, dgamma, dbeta);
    check_tensor(&result, data, "dx", data->out, want, NULL);
    if (g != NULL) check_tensor(&result, data, "dz", data->dz, g, NULL);
    gradient_sum_scales(data, dy, sample_mean, sample_invstd, scale, second_scale);
    check_channel_output(&result, data, "dbeta", data->dbeta, dbeta, scale);
    check_channel_output(&result, data, "dgamma", data->dgamma, dgamma, second_scale);
    free(g);
    free(saved_mean);
    free(saved_invstd);
    free(sample_mean);
    free(sample_invstd);
    break;
  }
  case OP_BWD_INFER: {
    /* The frozen-statistics gradients from the shared reference: dgamma and dbeta are ref_backward's sums
     * with the running mean and invstd in place of the batch's, and dx = dy gamma invstd is
     * ref_normalize of dy with mean 0 and the running variance. */
    double *zeros = host_zeros(k);
    for (int64_t j = 0; j < k; ++j) invstd[j] = 1.0 / sqrt(running_var[j] + EPS);
    ref_backward(&data->sample_desc, data->x_sample, data->dy_sample, running_mean, invstd, gamma, NULL, dgamma, dbeta);
    ref_normalize(&data->sample_desc, data->dy_sample, zeros, running_var, EPS, gamma, NULL, want);
    check_tensor(&result, data, "dx", data->out, want, NULL);
    gradient_sum_scales(data, data->dy_sample, running_mean, invstd, scale, second_scale);
    check_channel_output(&result, data, "dbeta", data->dbeta, dbeta, scale);
    check_channel_output(&result, data, "dgamma", data->dgamma, dgamma, second_scale);
    free(zeros);
    break;
  }
  case OP_LINEAR_BN: /* validate_linear's */
  case OP_COUNT:
    break;
  }

  double *to_free[] = {gamma,        beta,   running_mean, running_var,  want,   mean, var,
                       var_unbiased, invstd, scale,        second_scale, dgamma, dbeta};
  for (size_t i = 0; i < sizeof to_free / sizeof to_free[0]; ++i) free(to_free[i]);
  return result;
}
