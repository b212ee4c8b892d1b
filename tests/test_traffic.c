/* The bytes each op moves and the kernels it launches, measured by the emulation's traffic meter
 * (docs/emulation.md, "Traffic meter") against the byte tables of docs/performance.md: 32-byte sectors read
 * and written by the kernels, distinct within each launch, plus what cudaMemset writes (the mask's
 * zeroing), within 3% of the documented bytes; and the exact launch count, on the two-pass path and, on a
 * small emulated device, the persistent training forward's. The counts must not depend on the schedule. Emulation only:
 * the GPU build of this suite skips. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"

#ifdef BNK_TEST_EMULATION
#include <bnk_emu/control.h>
#include <cuda_runtime_api.h>

#define TRAFFIC_TOLERANCE 0.03
#define EPS 1e-5

typedef enum op_call { FORWARD_TRAINING, FORWARD_INFERENCE, SCALE_SHIFT, BACKWARD, BACKWARD_INFERENCE } op_call;

/* What the op is given besides its tensors. */
enum {
  WITH_MASK = 1, /* forward: writes the ReLU mask; backward: gates from the mask instead of y */
  WITH_Z = 2,    /* forward ADD_RELU: the residual; backward ADD_RELU: writes dz */
  NO_DX = 4,     /* backward: dx NULL */
  NO_DGAMMA = 8, /* backward: dgamma NULL */
  NO_DBETA = 16  /* backward: dbeta NULL */
};

/* The one table of expected traffic, mirroring docs/performance.md: bytes = tensors * E * b + eighths * E / 8
 * for a tensor of E elements of b bytes (the mask is E / 8 bytes), and the kernels launched. Per-channel
 * arrays and partials are left out: the shapes below make them < 1% of the tensor bytes. */
typedef struct traffic_row {
  const char *name;
  op_call call;
  bnk_epilogue_kind epilogue;
  int flags;
  double tensors;
  double eighths;
  int launches;
} traffic_row;

static const traffic_row forward_rows[] = {
    {"forward training", FORWARD_TRAINING, BNK_EPILOGUE_NONE, 0, 3, 0, 2},
    {"forward inference", FORWARD_INFERENCE, BNK_EPILOGUE_NONE, 0, 2, 0, 1},
    {"training BN + ReLU", FORWARD_TRAINING, BNK_EPILOGUE_RELU, 0, 3, 0, 2},
    {"training BN + ReLU, mask", FORWARD_TRAINING, BNK_EPILOGUE_RELU, WITH_MASK, 3, 2, 2},
    {"training BN + add + ReLU", FORWARD_TRAINING, BNK_EPILOGUE_ADD_RELU, WITH_Z, 4, 0, 2},
    {"training BN + add + ReLU, mask", FORWARD_TRAINING, BNK_EPILOGUE_ADD_RELU, WITH_Z | WITH_MASK, 4, 2, 2},
    {"inference BN + ReLU", FORWARD_INFERENCE, BNK_EPILOGUE_RELU, 0, 2, 0, 1},
    {"inference BN + ReLU, mask", FORWARD_INFERENCE, BNK_EPILOGUE_RELU, WITH_MASK, 2, 2, 1},
    {"inference BN + add + ReLU", FORWARD_INFERENCE, BNK_EPILOGUE_ADD_RELU, WITH_Z, 3, 0, 1},
    {"inference BN + add + ReLU, mask", FORWARD_INFERENCE, BNK_EPILOGUE_ADD_RELU, WITH_Z | WITH_MASK, 3, 2, 1},
    {"scale_shift", SCALE_SHIFT, BNK_EPILOGUE_NONE, 0, 2, 0, 1},
    {"scale_shift + ReLU, mask", SCALE_SHIFT, BNK_EPILOGUE_RELU, WITH_MASK, 2, 2, 1},
    {"scale_shift + add + ReLU", SCALE_SHIFT, BNK_EPILOGUE_ADD_RELU, WITH_Z, 3, 0, 1},
};

static const traffic_row backward_rows[] = {
    {"backward", BACKWARD, BNK_EPILOGUE_NONE, 0, 5, 0, 2},
    {"backward, parameter gradients only", BACKWARD, BNK_EPILOGUE_NONE, NO_DX, 2, 0, 1},
    {"backward inference, dx only", BACKWARD_INFERENCE, BNK_EPILOGUE_NONE, NO_DGAMMA | NO_DBETA, 2, 0, 1},
    {"backward inference with dgamma", BACKWARD_INFERENCE, BNK_EPILOGUE_NONE, 0, 4, 0, 2},
    {"backward inference, dbeta only", BACKWARD_INFERENCE, BNK_EPILOGUE_NONE, NO_DGAMMA, 3, 0, 2},
    {"training ReLU backward from y", BACKWARD, BNK_EPILOGUE_RELU, 0, 7, 0, 2},
    {"training ReLU backward from the mask", BACKWARD, BNK_EPILOGUE_RELU, WITH_MASK, 5, 2, 2},
    {"training add + ReLU backward with dz, from y", BACKWARD, BNK_EPILOGUE_ADD_RELU, WITH_Z, 7, 0, 2},
    {"training add + ReLU backward with dz, from the mask", BACKWARD, BNK_EPILOGUE_ADD_RELU, WITH_Z | WITH_MASK, 6, 1,
     2},
    {"inference ReLU backward, dx only, from y", BACKWARD_INFERENCE, BNK_EPILOGUE_RELU, NO_DGAMMA | NO_DBETA, 3, 0, 1},
    {"inference ReLU backward, dx only, from the mask", BACKWARD_INFERENCE, BNK_EPILOGUE_RELU,
     WITH_MASK | NO_DGAMMA | NO_DBETA, 2, 1, 1},
    {"inference add + ReLU backward with dz, from y", BACKWARD_INFERENCE, BNK_EPILOGUE_ADD_RELU,
     WITH_Z | NO_DGAMMA | NO_DBETA, 4, 0, 1},
    {"inference add + ReLU backward with dz, from the mask", BACKWARD_INFERENCE, BNK_EPILOGUE_ADD_RELU,
     WITH_Z | WITH_MASK | NO_DGAMMA | NO_DBETA, 3, 1, 1},
};

/* The persistent training forward (docs/performance.md, "Two training paths"): x read once, y written once, z
 * read for ADD_RELU; the mask is cleared and written by the one kernel, in the same sectors. One launch. */
static const traffic_row persistent_rows[] = {
    {"persistent training", FORWARD_TRAINING, BNK_EPILOGUE_NONE, 0, 2, 0, 1},
    {"persistent training BN + ReLU", FORWARD_TRAINING, BNK_EPILOGUE_RELU, 0, 2, 0, 1},
    {"persistent training BN + ReLU, mask", FORWARD_TRAINING, BNK_EPILOGUE_RELU, WITH_MASK, 2, 1, 1},
    {"persistent training BN + add + ReLU", FORWARD_TRAINING, BNK_EPILOGUE_ADD_RELU, WITH_Z, 3, 0, 1},
    {"persistent training BN + add + ReLU, mask", FORWARD_TRAINING, BNK_EPILOGUE_ADD_RELU, WITH_Z | WITH_MASK, 3, 1, 1},
};

/* Large enough that per-channel arrays and partials stay below 1% of the tensor bytes. */
typedef struct traffic_shape {
  bnk_dtype dtype;
  bnk_layout layout;
  int64_t n, c, h, w;
} traffic_shape;

static const traffic_shape shapes[] = {
    {BNK_FLOAT32, BNK_NCHW, 8, 8, 64, 64},
    {BNK_FLOAT16, BNK_NHWC, 8, 8, 64, 64},
};

/* The persistent rows' device and shapes: a co-resident grid of the emulated device's SMs must hold the
 * shape, and the emulation runs each of its blocks on an OS thread, so both stay small (a quarter of the
 * shapes above, which still keeps per-channel arrays and partials below 1%). Channels-first, the fp32 shape's
 * channels (4096 elements) each fit a block's cache and the fp16 one's (1024) a warp's (bnk_persistent_team). */
#define PERSISTENT_SMS 8
static const traffic_shape persistent_shapes[] = {
    {BNK_FLOAT32, BNK_NCHW, 4, 8, 32, 32},
    {BNK_FLOAT16, BNK_NHWC, 4, 8, 32, 32},
    {BNK_FLOAT16, BNK_NCHW, 4, 8, 16, 16},
};

/* Every buffer an op may use, on the device. */
typedef struct op_buffers {
  bnk_tensor_desc desc;
  int64_t elements;
  size_t tensor_bytes, mask_bytes, forward_workspace_bytes, backward_workspace_bytes;
  void *x, *y, *z, *dy, *dx, *dz, *mask, *forward_workspace, *backward_workspace;
  float *gamma, *beta, *running_mean, *running_var, *save_mean, *save_invstd, *dgamma, *dbeta, *scale, *shift;
} op_buffers;

static void *random_tensor(const op_buffers *b, test_rng *rng) {
  double *values = malloc((size_t)b->elements * sizeof *values);
  cr_assert(values != NULL);
  for (int64_t i = 0; i < b->elements; ++i) values[i] = 0.5 + rng_normal(rng);
  void *host = malloc(b->tensor_bytes);
  cr_assert(host != NULL);
  to_storage(b->desc.dtype, values, host, b->elements);
  void *device = dev_alloc(b->tensor_bytes);
  dev_upload(device, host, b->tensor_bytes);
  free(host);
  free(values);
  return device;
}

static float *random_channels(int64_t c, test_rng *rng, double lo, double hi) {
  double values[64];
  cr_assert(c <= 64);
  for (int64_t i = 0; i < c; ++i) values[i] = rng_uniform(rng, lo, hi);
  return dev_floats(values, c);
}

static void buffers_create(bnk_context *ctx, const traffic_shape *s, op_buffers *b, test_rng *rng) {
  memset(b, 0, sizeof *b);
  const int64_t spatial[2] = {s->h, s->w};
  cr_assert_eq(bnk_tensor_desc_init(&b->desc, s->dtype, s->layout, s->n, s->c, 2, spatial), BNK_SUCCESS);
  b->elements = bnk_tensor_desc_elements(&b->desc);
  b->tensor_bytes = (size_t)b->elements * dtype_size(s->dtype);
  cr_assert_eq(bnk_epilogue_mask_size(&b->desc, &b->mask_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &b->desc, &b->forward_workspace_bytes), BNK_SUCCESS);
  cr_assert_eq(bnk_backward_workspace_size(ctx, &b->desc, &b->backward_workspace_bytes), BNK_SUCCESS);
  b->x = random_tensor(b, rng);
  b->z = random_tensor(b, rng);
  b->dy = random_tensor(b, rng);
  b->y = dev_alloc(b->tensor_bytes);
  b->dx = dev_alloc(b->tensor_bytes);
  b->dz = dev_alloc(b->tensor_bytes);
  b->mask = dev_alloc(b->mask_bytes);
  b->forward_workspace = dev_alloc(b->forward_workspace_bytes);
  b->backward_workspace = dev_alloc(b->backward_workspace_bytes);
  b->gamma = random_channels(s->c, rng, 0.5, 2.0);
  b->beta = random_channels(s->c, rng, -1.0, 1.0);
  b->running_mean = random_channels(s->c, rng, -0.5, 0.5);
  b->running_var = random_channels(s->c, rng, 0.5, 2.0);
  b->save_mean = random_channels(s->c, rng, -0.5, 0.5);
  b->save_invstd = random_channels(s->c, rng, 0.5, 2.0);
  b->scale = random_channels(s->c, rng, 0.5, 2.0);
  b->shift = random_channels(s->c, rng, -1.0, 1.0);
  b->dgamma = dev_alloc((size_t)s->c * sizeof(float));
  b->dbeta = dev_alloc((size_t)s->c * sizeof(float));
}

static void buffers_destroy(op_buffers *b) {
  void *all[] = {b->x,
                 b->y,
                 b->z,
                 b->dy,
                 b->dx,
                 b->dz,
                 b->mask,
                 b->forward_workspace,
                 b->backward_workspace,
                 b->gamma,
                 b->beta,
                 b->running_mean,
                 b->running_var,
                 b->save_mean,
                 b->save_invstd,
                 b->dgamma,
                 b->dbeta,
                 b->scale,
                 b->shift};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) dev_free(all[i]);
}

/* The forward's epilogue for a row: its kind, z and the mask as the row asks. */
static bnk_epilogue forward_epilogue(const traffic_row *row, const op_buffers *b) {
  bnk_epilogue e = {row->epilogue, NULL, NULL, 0};
  if (row->flags & WITH_Z) e.z = b->z;
  if (row->flags & WITH_MASK) {
    e.mask = b->mask;
    e.mask_bytes = b->mask_bytes;
  }
  return e;
}

/* Before a backward row: what its forward leaves behind (y and the mask of the same epilogue), unmetered. */
static void prepare_backward(bnk_context *ctx, const traffic_row *row, op_buffers *b) {
  if (row->epilogue == BNK_EPILOGUE_NONE) return;
  bnk_epilogue e = {row->epilogue, row->epilogue == BNK_EPILOGUE_ADD_RELU ? b->z : NULL, b->mask, b->mask_bytes};
  cr_assert_eq(
      bnk_forward_inference_ex(ctx, &b->desc, b->x, b->y, b->gamma, b->beta, b->running_mean, b->running_var, EPS, &e),
      BNK_SUCCESS, "%s", bnk_last_error_message());
}

static bnk_status run_op(bnk_context *ctx, const traffic_row *row, op_buffers *b) {
  if (row->call == FORWARD_TRAINING || row->call == FORWARD_INFERENCE || row->call == SCALE_SHIFT) {
    const bnk_epilogue e = forward_epilogue(row, b);
    if (row->call == FORWARD_TRAINING)
      return bnk_forward_training_ex(ctx, &b->desc, b->x, b->y, b->gamma, b->beta, b->running_mean, b->running_var,
                                     NULL, 0.1, EPS, b->save_mean, b->save_invstd, b->forward_workspace,
                                     b->forward_workspace_bytes, &e);
    if (row->call == FORWARD_INFERENCE)
      return bnk_forward_inference_ex(ctx, &b->desc, b->x, b->y, b->gamma, b->beta, b->running_mean, b->running_var,
                                      EPS, &e);
    return bnk_scale_shift(ctx, &b->desc, b->x, b->y, b->scale, b->shift, &e);
  }
  bnk_epilogue_grad g = {row->epilogue, NULL, NULL, 0, NULL};
  if (row->epilogue != BNK_EPILOGUE_NONE) {
    if (row->flags & WITH_MASK) {
      g.mask = b->mask;
      g.mask_bytes = b->mask_bytes;
    } else {
      g.y = b->y;
    }
    if (row->flags & WITH_Z) g.dz = b->dz;
  }
  void *dx = (row->flags & NO_DX) ? NULL : b->dx;
  float *dgamma = (row->flags & NO_DGAMMA) ? NULL : b->dgamma;
  float *dbeta = (row->flags & NO_DBETA) ? NULL : b->dbeta;
  if (row->call == BACKWARD)
    return bnk_backward_ex(ctx, &b->desc, b->x, b->dy, dx, b->gamma, dgamma, dbeta, b->save_mean, b->save_invstd,
                           b->backward_workspace, b->backward_workspace_bytes, &g);
  return bnk_backward_inference_ex(ctx, &b->desc, b->x, b->dy, dx, b->gamma, dgamma, dbeta, b->running_mean,
                                   b->running_var, EPS, b->backward_workspace, b->backward_workspace_bytes, &g);
}

/* Bytes the meter saw: sectors of kernel traffic plus what cudaMemset and cudaMemcpy moved. */
static double measured_bytes(const bnk_emu_traffic *t) {
  return 32.0 * (double)(t->read_sectors + t->written_sectors) + (double)(t->copy_read_bytes + t->copy_written_bytes);
}

/* Each row on each shape, under every schedule, with the context's training path (test_context's, or AUTO on a
 * device of PERSISTENT_SMS SMs, where each training forward must then take the persistent path). */
static void check_rows(const traffic_row *rows, size_t count, const traffic_shape *shape_list, size_t shape_count,
                       int persistent) {
  if (persistent) bnk_emu_set_sm_count(PERSISTENT_SMS);
  bnk_context *ctx = test_context();
  if (persistent)
    cr_assert_eq(bnk_context_set_training_path(ctx, BNK_TRAINING_PATH_AUTO), BNK_SUCCESS, "%s",
                 bnk_last_error_message());
  test_rng rng = rng_fresh();
  bnk_emu_set_traffic(1);
  for (size_t s = 0; s < shape_count; ++s) {
    op_buffers b;
    buffers_create(ctx, &shape_list[s], &b, &rng);
    char shape[96];
    format_shape(shape, sizeof shape, shape_list[s].layout, shape_list[s].dtype, shape_list[s].n, shape_list[s].c, 2,
                 b.desc.spatial);
    const double e = (double)b.elements, bytes = (double)dtype_size(shape_list[s].dtype);
    for (size_t r = 0; r < count; ++r) {
      const traffic_row *row = &rows[r];
      const double want = row->tensors * e * bytes + row->eighths * e / 8.0;
      if (persistent) {
        const bnk_epilogue fused = forward_epilogue(row, &b);
        bnk_training_path path;
        cr_assert_eq(bnk_forward_training_path(ctx, &b.desc, b.x, b.y, &fused, &path), BNK_SUCCESS, "%s",
                     bnk_last_error_message());
        cr_assert_eq(path, BNK_TRAINING_PATH_PERSISTENT, "%s, %s: the automatic choice is not the persistent path",
                     row->name, shape);
      }
      bnk_emu_traffic first = {0};
      for (int k = 0; k < schedule_count(); ++k) {
        schedule_use(k);
        prepare_backward(ctx, row, &b);
        dev_poison(b.y, row->call <= SCALE_SHIFT ? b.tensor_bytes : 0);
        dev_poison(b.dx, b.tensor_bytes);
        dev_poison(b.dz, b.tensor_bytes);
        cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
        bnk_emu_traffic_reset();
        const bnk_status status = run_op(ctx, row, &b);
        cr_assert_eq(status, BNK_SUCCESS, "%s, %s: %s: %s", row->name, shape, bnk_status_name(status),
                     bnk_last_error_message());
        cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "%s, %s: %s", row->name, shape, bnk_emu_last_diagnostic());
        bnk_emu_traffic t;
        bnk_emu_traffic_total(&t);
        const double got = measured_bytes(&t);
        cr_log_info("%s, %s, %s: %.0f bytes (%llu + %llu sectors, %llu memset/memcpy bytes), documented %.0f; "
                    "%llu launches",
                    row->name, shape, schedule_name(k), got, t.read_sectors, t.written_sectors,
                    t.copy_read_bytes + t.copy_written_bytes, want, t.launches);
        cr_expect(got >= want * (1.0 - TRAFFIC_TOLERANCE) && got <= want * (1.0 + TRAFFIC_TOLERANCE),
                  "%s, %s: the kernels moved %.0f bytes, docs/performance.md says %.0f (%+.2f%%)", row->name, shape,
                  got, want, 100.0 * (got - want) / want);
        cr_expect_eq(t.launches, (unsigned long long)row->launches, "%s, %s: %llu launches, expected %d", row->name,
                     shape, t.launches, row->launches);
        if (k == 0) first = t;
        else
          cr_expect(memcmp(&first, &t, sizeof t) == 0, "%s, %s: the %s schedule counted other traffic", row->name,
                    shape, schedule_name(k));
      }
    }
    buffers_destroy(&b);
  }
  bnk_emu_set_traffic(0);
  bnk_context_destroy(ctx);
  if (persistent) bnk_emu_set_sm_count(0); /* back to the default device */
}

#define COUNT(array) (sizeof array / sizeof array[0])

Test(traffic, forward_ops_move_the_documented_bytes, .timeout = 600) {
  check_rows(forward_rows, COUNT(forward_rows), shapes, COUNT(shapes), 0);
}

Test(traffic, backward_ops_move_the_documented_bytes, .timeout = 600) {
  check_rows(backward_rows, COUNT(backward_rows), shapes, COUNT(shapes), 0);
}

Test(traffic, persistent_forward_moves_x_once_in_one_launch, .timeout = 600) {
  check_rows(persistent_rows, COUNT(persistent_rows), persistent_shapes, COUNT(persistent_shapes), 1);
}

Test(traffic, the_meter_is_off_by_default_and_resets) {
  cr_assert_eq(bnk_emu_get_traffic(), 0);
  bnk_context *ctx = test_context();
  test_rng rng = rng_fresh();
  op_buffers b;
  buffers_create(ctx, &shapes[0], &b, &rng);
  bnk_emu_traffic_reset();
  cr_assert_eq(run_op(ctx, &forward_rows[1], &b), BNK_SUCCESS);
  bnk_emu_traffic t;
  memset(&t, 0xff, sizeof t);
  bnk_emu_traffic_total(&t);
  cr_assert_eq(t.launches + t.read_sectors + t.written_sectors + t.read_bytes + t.written_bytes, 0);
  bnk_emu_set_traffic(1);
  cr_assert_eq(run_op(ctx, &forward_rows[1], &b), BNK_SUCCESS);
  bnk_emu_traffic of_x, of_y;
  cr_assert_eq(bnk_emu_traffic_of(b.x, &of_x), 0);
  cr_assert_eq(bnk_emu_traffic_of(b.y, &of_y), 0);
  /* Inference reads all of x once and writes all of y once, in whole sectors. */
  cr_assert_eq(of_x.read_sectors, b.tensor_bytes / 32);
  cr_assert_eq(of_x.written_sectors, 0);
  cr_assert_eq(of_x.read_bytes, b.tensor_bytes);
  cr_assert_eq(of_y.written_sectors, b.tensor_bytes / 32);
  cr_assert_eq(of_y.written_bytes, b.tensor_bytes);
  cr_assert_eq(of_y.read_sectors, 0);
  cr_assert_eq(of_x.launches, 1);
  cr_assert_eq(bnk_emu_traffic_of((const char *)b.x + 4, &of_x), -1, "not the start of an allocation");
  bnk_emu_traffic_last_launch(&t);
  cr_assert_eq(t.launches, 1);
  cr_assert_geq(t.read_sectors, of_x.read_sectors);
  bnk_emu_traffic_reset();
  bnk_emu_traffic_total(&t);
  cr_assert_eq(t.launches + t.read_sectors + t.written_sectors, 0);
  cr_assert_eq(bnk_emu_traffic_of(b.x, &of_x), 0);
  cr_assert_eq(of_x.read_sectors + of_x.launches, 0);
  bnk_emu_set_traffic(0);
  buffers_destroy(&b);
  bnk_context_destroy(ctx);
}

#else

Test(traffic, emulation_only) { cr_skip_test("the traffic meter is the emulation's; this suite runs on bnk_emu"); }

#endif
