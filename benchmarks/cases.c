/* Shapes and cases: the extents of a shape, the shrunk shape of the emulation, and each case's data, drawn at
 * random on the host in the storage type and uploaded once, with the channels that validation samples. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "benchmarks/bench.h"
#include "tests/reference.h"
#include "tests/shape_text.h"
#include "tests/storage.h"

/* Zero mean, unit variance, bounded by +-2 sqrt(3): the sum of four uniforms from one 64-bit draw. The
 * largest default shapes hold 25.7 million elements, and a Box-Muller normal per element would make
 * generating the data slower than benchmarking it. */
static float rng_noise(rng_state *rng) {
  const uint64_t bits = rng_next(rng);
  double sum = 0.0;
  for (int part = 0; part < 4; ++part) sum += (double)((bits >> (16 * part)) & 0xffffu) * (1.0 / 65536.0);
  return (float)((sum - 2.0) * 1.7320508075688772);
}

/* "32x256x56x56", or for linear_bn "batch x in_features -> out_features", "32x2048->1000". */
void format_shape(const bench_shape *shape, char *out, size_t size) {
  if (shape->in_features > 0) {
    snprintf(out, size, "%" PRId64 "x%" PRId64 "->%" PRId64, shape->n, shape->in_features, shape->c);
    return;
  }
  format_extents(out, size, shape->n, shape->c, shape->spatial_dims, shape->spatial);
}

int64_t shape_elements(const bench_shape *shape) {
  int64_t elements = shape->n * shape->c;
  for (int d = 0; d < shape->spatial_dims; ++d) elements *= shape->spatial[d];
  return elements;
}

bench_shape emulation_shape(const bench_shape *shape) {
  bench_shape small = *shape;
  const int64_t max_n = shape->spatial_dims == 0 ? EMULATION_MAX_N_WITHOUT_SPATIAL : EMULATION_MAX_N;
  if (small.n > max_n) small.n = max_n;
  if (small.c > EMULATION_MAX_C) small.c = EMULATION_MAX_C;
  for (int d = 0; d < shape->spatial_dims; ++d)
    if (small.spatial[d] > EMULATION_MAX_SPATIAL) small.spatial[d] = EMULATION_MAX_SPATIAL;
  return small;
}

/* The elements each channel's statistics are taken over, N x spatial. */
int64_t values_per_channel(const bench_shape *shape) { return shape_elements(shape) / shape->c; }
/* Up to VALIDATED_CHANNELS of `total` indices in increasing order (all of them when validate_all): the first
 * and the last (the edges of a range are where indexing goes wrong), the rest drawn at random. */
static int64_t *choose_indices(int64_t total, rng_state *rng, int validate_all, int64_t *count_out) {
  const int64_t count = validate_all || total <= VALIDATED_CHANNELS ? total : VALIDATED_CHANNELS;
  int64_t *indices = host_alloc((size_t)count * sizeof(int64_t));
  *count_out = count;
  if (count == total) {
    for (int64_t i = 0; i < total; ++i) indices[i] = i;
    return indices;
  }
  unsigned char *chosen = calloc((size_t)total, 1);
  if (chosen == NULL) die("out of host memory choosing the validated indices");
  chosen[0] = chosen[total - 1] = 1;
  for (int64_t picked = 2; picked < count;) {
    const int64_t index = (int64_t)(rng_next(rng) % (uint64_t)total);
    if (!chosen[index]) {
      chosen[index] = 1;
      ++picked;
    }
  }
  int64_t next = 0;
  for (int64_t i = 0; i < total; ++i)
    if (chosen[i]) indices[next++] = i;
  free(chosen);
  return indices;
}

/* Copies the validated channels of a storage-type tensor into a float64 tensor of the sample layout. */
void gather_sample(const case_data *data, const void *storage, double *sample) {
  const int64_t spatial = ref_spatial(&data->desc);
  for (int64_t j = 0; j < data->channel_count; ++j)
    for (int64_t n = 0; n < data->desc.n; ++n)
      for (int64_t s = 0; s < spatial; ++s)
        sample[ref_offset(&data->sample_desc, n, j, s)] =
            storage_load(data->dtype, storage, ref_offset(&data->desc, n, data->channels[j], s));
}

/* Per-channel values at the validated channels, from a full length-C array. */
double *sample_channels(const case_data *data, const double *full) {
  double *sample = host_alloc((size_t)data->channel_count * sizeof(double));
  for (int64_t j = 0; j < data->channel_count; ++j) sample[j] = full[data->channels[j]];
  return sample;
}

double *sample_floats(const case_data *data, const float *full) {
  double *sample = host_alloc((size_t)data->channel_count * sizeof(double));
  for (int64_t j = 0; j < data->channel_count; ++j) sample[j] = full[data->channels[j]];
  return sample;
}

static float *device_floats(const float *host, int64_t count) {
  float *device = device_alloc((size_t)count * sizeof(float));
  upload(device, host, (size_t)count * sizeof(float));
  return device;
}

/* Whether any selected op reads the residual z, and whether bwd_add_relu runs (it needs the forward's y, its
 * mask and dz): the buffers are made only then. */
static int needs_residual(const bench_options *options) {
  for (int op = 0; op < OP_COUNT; ++op)
    if (options->run_op[op] && adds_residual((bench_op)op)) return 1;
  return 0;
}

case_data make_case(const bench_env *env, const bench_options *options, const bench_shape *shape, bnk_layout layout,
                    bnk_dtype dtype, rng_state *rng) {
  case_data data;
  memset(&data, 0, sizeof data);
  data.dtype = dtype;
  check_bnk(bnk_tensor_desc_init(&data.desc, dtype, layout, shape->n, shape->c, shape->spatial_dims, shape->spatial),
            "bnk_tensor_desc_init");
  data.elements = bnk_tensor_desc_elements(&data.desc);
  data.tensor_bytes = (size_t)data.elements * storage_element_bytes(dtype);
  const int64_t c = shape->c;
  const size_t channel_bytes = (size_t)c * sizeof(float);

  /* Activations after a convolution: each channel has its own mean (around 1, in [-1, 3]) and spread (in
   * [0.5, 2]), so that a kernel that mixes channels or drops the mean shows. dy is centred with unit spread. */
  data.gamma_host = host_alloc(channel_bytes);
  data.beta_host = host_alloc(channel_bytes);
  data.running_mean_host = host_alloc(channel_bytes);
  data.running_var_host = host_alloc(channel_bytes);
  float *channel_mean = host_alloc(channel_bytes), *channel_spread = host_alloc(channel_bytes);
  float *gradient_mean = host_alloc(channel_bytes);
  for (int64_t i = 0; i < c; ++i) {
    channel_mean[i] = (float)rng_uniform(rng, -1.0, 3.0);
    channel_spread[i] = (float)rng_uniform(rng, 0.5, 2.0);
    gradient_mean[i] = (float)rng_uniform(rng, -0.2, 0.2);
    data.gamma_host[i] = (float)rng_uniform(rng, 0.5, 1.5);
    data.beta_host[i] = (float)rng_uniform(rng, -0.5, 0.5);
    data.running_mean_host[i] = channel_mean[i] + (float)rng_uniform(rng, -0.5, 0.5);
    data.running_var_host[i] = channel_spread[i] * channel_spread[i] * (float)rng_uniform(rng, 0.5, 1.5);
  }
  const int residual = needs_residual(options);
  data.x_host = host_alloc(data.tensor_bytes);
  data.dy_host = host_alloc(data.tensor_bytes);
  data.z_host = residual ? host_alloc(data.tensor_bytes) : NULL;
  data.out_host = host_alloc(data.tensor_bytes);
  const int64_t spatial = ref_spatial(&data.desc);
  for (int64_t n = 0; n < shape->n; ++n)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t offset = ref_offset(&data.desc, n, i, s);
        storage_store(dtype, data.x_host, offset, channel_mean[i] + channel_spread[i] * rng_noise(rng));
        storage_store(dtype, data.dy_host, offset, gradient_mean[i] + rng_noise(rng));
        /* The residual: centred, unit spread, like bn(x), so that relu(bn(x) + z) cuts about half the values. */
        if (residual) storage_store(dtype, data.z_host, offset, rng_noise(rng));
      }
  free(channel_mean);
  free(channel_spread);
  free(gradient_mean);

  /* The inputs the timed runs rotate through: x and dy, and z when made. */
  void *const hosts[] = {data.x_host, data.dy_host, data.z_host};
  void **const copies[] = {data.x_copies, data.dy_copies, data.z_copies};
  const int inputs = residual ? 3 : 2;
  for (int k = 0; k < inputs; ++k) {
    copies[k][0] = device_alloc(data.tensor_bytes);
    upload(copies[k][0], hosts[k], data.tensor_bytes);
  }
  data.x = data.x_copies[0];
  data.dy = data.dy_copies[0];
  data.z = data.z_copies[0];
  data.out = device_alloc(data.tensor_bytes);
  data.rotation = 1;
  if (!env->emulation && data.tensor_bytes > 0) {
    /* As many copies as fit in the rotation budget and leave three quarters of the free memory alone. */
    size_t free_bytes = 0, total_bytes = 0;
    check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    size_t budget = free_bytes / 4 < ROTATION_BUDGET_BYTES ? free_bytes / 4 : ROTATION_BUDGET_BYTES;
    while (data.rotation < MAX_ROTATION && (size_t)(data.rotation + 1) * (size_t)inputs * data.tensor_bytes <= budget) {
      for (int k = 0; k < inputs; ++k) {
        copies[k][data.rotation] = device_alloc(data.tensor_bytes);
        check_cuda(cudaMemcpy(copies[k][data.rotation], copies[k][0], data.tensor_bytes, cudaMemcpyDeviceToDevice),
                   "cudaMemcpy (input rotation)");
      }
      ++data.rotation;
    }
  }
  if (options->run_op[OP_BWD_ADD_RELU]) {
    check_bnk(bnk_epilogue_mask_size(&data.desc, &data.mask_bytes), "bnk_epilogue_mask_size");
    data.forward_y = device_alloc(data.tensor_bytes);
    data.dz = device_alloc(data.tensor_bytes);
    data.mask = device_alloc(data.mask_bytes);
  }
  data.gamma = device_floats(data.gamma_host, c);
  data.beta = device_floats(data.beta_host, c);
  data.running_mean = device_alloc(channel_bytes);
  data.running_var = device_alloc(channel_bytes);
  data.save_mean = device_alloc(channel_bytes);
  data.save_invstd = device_alloc(channel_bytes);
  data.dgamma = device_alloc(channel_bytes);
  data.dbeta = device_alloc(channel_bytes);
  data.scale = device_alloc(channel_bytes);
  data.shift = device_alloc(channel_bytes);
  size_t forward_bytes = 0, backward_bytes = 0;
  check_bnk(bnk_forward_training_workspace_size(env->ctx, &data.desc, &forward_bytes),
            "bnk_forward_training_workspace_size");
  check_bnk(bnk_backward_workspace_size(env->ctx, &data.desc, &backward_bytes), "bnk_backward_workspace_size");
  data.workspace_bytes = forward_bytes > backward_bytes ? forward_bytes : backward_bytes;
  data.workspace = device_alloc(data.workspace_bytes);

  data.channels = choose_indices(c, rng, env->emulation, &data.channel_count);
  check_bnk(bnk_tensor_desc_init(&data.sample_desc, BNK_FLOAT32, layout, shape->n, data.channel_count,
                                 shape->spatial_dims, shape->spatial),
            "bnk_tensor_desc_init");
  data.sample_elements = bnk_tensor_desc_elements(&data.sample_desc);
  data.x_sample = host_alloc((size_t)data.sample_elements * sizeof(double));
  data.dy_sample = host_alloc((size_t)data.sample_elements * sizeof(double));
  gather_sample(&data, data.x_host, data.x_sample);
  gather_sample(&data, data.dy_host, data.dy_sample);
  if (residual) {
    data.z_sample = host_alloc((size_t)data.sample_elements * sizeof(double));
    gather_sample(&data, data.z_host, data.z_sample);
  }
  return data;
}

void free_case(case_data *data) {
  void *host_buffers[] = {
      data->x_host,    data->dy_host,           data->z_host,           data->out_host, data->gamma_host,
      data->beta_host, data->running_mean_host, data->running_var_host, data->channels, data->x_sample,
      data->dy_sample, data->z_sample};
  for (size_t i = 0; i < sizeof host_buffers / sizeof host_buffers[0]; ++i) free(host_buffers[i]);
  void *device_buffers[] = {data->out,       data->gamma,       data->beta,   data->running_mean, data->running_var,
                            data->save_mean, data->save_invstd, data->dgamma, data->dbeta,        data->workspace,
                            data->forward_y, data->mask,        data->dz,     data->scale,        data->shift};
  for (size_t i = 0; i < sizeof device_buffers / sizeof device_buffers[0]; ++i) device_free(device_buffers[i]);
  for (int i = 0; i < data->rotation; ++i) {
    device_free(data->x_copies[i]);
    device_free(data->dy_copies[i]);
    device_free(data->z_copies[i]);
  }
  linear_data *linear = data->linear;
  if (linear != NULL) {
    free(linear->x_host);
    free(linear->weight_host);
    free(linear->rows);
    void *linear_buffers[] = {linear->x, linear->weight, linear->folded_weight, linear->folded_bias, linear->workspace};
    for (size_t i = 0; i < sizeof linear_buffers / sizeof linear_buffers[0]; ++i) device_free(linear_buffers[i]);
    free(linear);
  }
  memset(data, 0, sizeof *data);
}

/* linear_bn's case: a Linear layer without bias (the BN's shift absorbs one) followed by BatchNorm1d with frozen
 * statistics. x and the weight are drawn so that x W^T has about unit spread, as bn(x) needs nothing special
 * there; the BN's parameters spread its output around 0, so that the ReLU cuts. The fold into the weight and
 * bias is bnk_fold_linear's work at load time: done here, once, not timed. The emulation has no cuBLAS, so it
 * makes nothing but the descriptor (the rows say n/a). */
case_data make_linear_case(const bench_env *env, const bench_shape *shape, bnk_dtype dtype, rng_state *rng) {
  case_data data;
  memset(&data, 0, sizeof data);
  data.dtype = dtype;
  check_bnk(bnk_tensor_desc_init(&data.desc, dtype, BNK_NCHW, shape->n, shape->c, 0, NULL), "bnk_tensor_desc_init");
  data.rotation = 1; /* the timed runs reuse one x: the L2 flush before each leaves nothing of it on chip */
  if (env->emulation) return data;
  data.elements = bnk_tensor_desc_elements(&data.desc);
  data.tensor_bytes = (size_t)data.elements * storage_element_bytes(dtype);
  const int64_t c = shape->c, in = shape->in_features;
  const size_t channel_bytes = (size_t)c * sizeof(float), element = storage_element_bytes(dtype);
  data.gamma_host = host_alloc(channel_bytes);
  data.beta_host = host_alloc(channel_bytes);
  data.running_mean_host = host_alloc(channel_bytes);
  data.running_var_host = host_alloc(channel_bytes);
  for (int64_t i = 0; i < c; ++i) {
    data.gamma_host[i] = (float)rng_uniform(rng, 0.5, 1.5);
    data.beta_host[i] = (float)rng_uniform(rng, -0.5, 0.5);
    data.running_mean_host[i] = (float)rng_uniform(rng, -0.5, 0.5);
    data.running_var_host[i] = (float)rng_uniform(rng, 0.5, 1.5);
  }
  linear_data *linear = calloc(1, sizeof *linear);
  if (linear == NULL) die("out of host memory");
  data.linear = linear;
  linear->in_features = in;
  linear->x_host = host_alloc((size_t)(shape->n * in) * element);
  linear->weight_host = host_alloc((size_t)(c * in) * element);
  for (int64_t i = 0; i < shape->n * in; ++i) storage_store(dtype, linear->x_host, i, rng_noise(rng));
  const float weight_spread = (float)(1.0 / sqrt((double)in));
  for (int64_t i = 0; i < c * in; ++i) storage_store(dtype, linear->weight_host, i, weight_spread * rng_noise(rng));
  linear->x = device_alloc((size_t)(shape->n * in) * element);
  linear->weight = device_alloc((size_t)(c * in) * element);
  linear->folded_weight = device_alloc((size_t)(c * in) * element);
  linear->folded_bias = device_alloc((size_t)c * element);
  upload(linear->x, linear->x_host, (size_t)(shape->n * in) * element);
  upload(linear->weight, linear->weight_host, (size_t)(c * in) * element);
  data.out = device_alloc(data.tensor_bytes);
  data.out_host = host_alloc(data.tensor_bytes);
  data.gamma = device_floats(data.gamma_host, c);
  data.beta = device_floats(data.beta_host, c);
  data.running_mean = device_floats(data.running_mean_host, c);
  data.running_var = device_floats(data.running_var_host, c);
  check_bnk(bnk_fold_linear(env->ctx, c, in, dtype, linear->weight, NULL, data.gamma, data.beta, data.running_mean,
                            data.running_var, EPS, linear->folded_weight, linear->folded_bias, dtype),
            "bnk_fold_linear");
  const bnk_status available = bnk_linear_bn_workspace_size(env->ctx, &linear->workspace_bytes);
  if (available == BNK_ERROR_NOT_SUPPORTED)
    snprintf(linear->fused_unavailable, sizeof linear->fused_unavailable, "%s", bnk_last_error_message());
  else check_bnk(available, "bnk_linear_bn_workspace_size");
  linear->workspace = available == BNK_SUCCESS ? device_alloc(linear->workspace_bytes) : NULL;
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize (after the fold)");
  linear->rows = choose_indices(shape->n, rng, 0, &linear->row_count);
  return data;
}
