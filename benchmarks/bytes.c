/* The bytes each op must move. */
#include <math.h>

#include "benchmarks/bench.h"
#include "tests/storage.h"

/* ------------------------------------------------------------------------------------------------------
 * Bytes each op must move: the tensor passes of the current design plus every per-channel array it reads
 * or writes (float32, C each). The workspace is scratch of the implementation, not a requirement of the op,
 * and is not counted. The plain ops credit every implementation with bnk's two-pass passes, except the
 * bnk-persistent rows, which get their path's own (x, and dy, read once); the epilogue ops count each variant's own
 * (docs/performance.md, "Fused epilogues"). docs/benchmarks.md lists the passes.
 * ---------------------------------------------------------------------------------------------------- */

/* linear_bn: the GEMM reads x and the weight and writes y; the fused form also reads the folded bias (of the
 * storage type), the unfused one then reads and writes y for the BN (with its 4 per-channel arrays) and
 * again for the ReLU. */
static double linear_bytes(bench_impl impl, const bench_shape *shape, bnk_dtype dtype) {
  const double element = (double)storage_element_bytes(dtype);
  const double x = (double)(shape->n * shape->in_features) * element;
  const double weight = (double)(shape->c * shape->in_features) * element;
  const double y = (double)(shape->n * shape->c) * element;
  const double channel_array = (double)shape->c * sizeof(float);
  if (impl == IMPL_BNK_SEPARATE) return x + weight + y + (2.0 * y + 4.0 * channel_array) + 2.0 * y;
  return x + weight + (double)shape->c * element + y;
}

double op_bytes(bench_op op, bench_impl impl, const bench_shape *shape, bnk_dtype dtype) {
  const double tensor = (double)shape_elements(shape) * (double)storage_element_bytes(dtype);
  const double channel_array = (double)shape->c * sizeof(float);
  const double mask = (double)shape_elements(shape) / 8.0;
  const int separate = impl == IMPL_BNK_SEPARATE;
  switch (op) {
  case OP_FWD_TRAIN: /* x for statistics, x again to normalize, y; gamma, beta, running mean and var read and
                        written, saved mean and invstd. The persistent path reads x once. */
    return (impl == IMPL_BNK_PERSISTENT ? 2.0 : 3.0) * tensor + 8.0 * channel_array;
  case OP_FWD_INFER: /* x, y; gamma, beta, running mean and var */
    return 2.0 * tensor + 4.0 * channel_array;
  case OP_BWD: /* x and dy for the sums, x and dy again for dx, dx; gamma, saved mean and invstd, dgamma,
                  dbeta. The persistent path reads x and dy once. */
    return (impl == IMPL_BNK_PERSISTENT ? 3.0 : 5.0) * tensor + 5.0 * channel_array;
  case OP_BWD_INFER: /* x and dy for the sums, dy again for dx, dx; gamma, running mean and var, dgamma, dbeta */
    return 4.0 * tensor + 5.0 * channel_array;
  case OP_FWD_INFER_RELU: /* fwd_infer; unfused, the ReLU pass reads and writes y again */
    return (separate ? 4.0 : 2.0) * tensor + 4.0 * channel_array;
  case OP_FWD_INFER_ADD_RELU: /* fwd_infer and z read; unfused, the add + ReLU pass reads y and z, writes y */
    return (separate ? 5.0 : 3.0) * tensor + 4.0 * channel_array;
  case OP_FWD_TRAIN_ADD_RELU: /* fwd_train and z read; unfused, the same add + ReLU pass after it */
    return (separate ? 6.0 : 4.0) * tensor + 8.0 * channel_array;
  case OP_BWD_ADD_RELU:
    /* The sums pass reads x, dy and y (or the mask) and writes dz = g; the dx pass reads x and dz. Unfused:
     * the ReLU backward reads dy and y and writes g = dz, then bwd on it. Per-channel arrays as bwd. */
    if (impl == IMPL_BNK_MASK) return 6.0 * tensor + mask + 5.0 * channel_array;
    return (separate ? 8.0 : 7.0) * tensor + 5.0 * channel_array;
  case OP_SCALE_SHIFT: /* x, y; scale and shift, against fwd_infer's 4 arrays */
    return 2.0 * tensor + (impl == IMPL_BNK_SCALE_SHIFT ? 2.0 : 4.0) * channel_array;
  case OP_LINEAR_BN:
    return linear_bytes(impl, shape, dtype);
  case OP_COUNT:
    break;
  }
  return 0.0;
}

/* This variant's bytes over those of the op's unfused sequence; NAN for the plain ops. */
double bytes_ratio_to_unfused(bench_op op, bench_impl impl, const bench_shape *shape, bnk_dtype dtype) {
  const bench_impl unfused = unfused_impl(op);
  if (unfused == IMPL_COUNT) return NAN;
  return op_bytes(op, impl, shape, dtype) / op_bytes(op, unfused, shape, dtype);
}
