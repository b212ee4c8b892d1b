/* The choice between the persistent training forward and the two-pass one (docs/performance.md, "Two
 * training paths"): persistent when the tensor fits the co-resident grid of the persistent kernel on this
 * device, which the kernel's occupancy decides; a context setting may force either path. */
#include <inttypes.h>

#include "host/internal.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int bnk__plan_persistent(const bnk_view *view, int vec, int sm_count, int blocks_per_sm, bnk_reduce_plan *plan) {
  /* The tiling only: the pieces are cut below for the cache. */
  *plan = bnk__plan_reduce(view, vec, sm_count, blocks_per_sm);
  plan->threads = BNK_STREAM_THREADS;
  if (!view->channels_last) {
    /* A multiple of 8 (every vector width) at most one full cache per thread, as bnk__plan_reduce cuts. */
    const int64_t m = view->n * view->s;
    const int64_t per_block = (int64_t)BNK_STREAM_THREADS * BNK_PERSISTENT_CACHE * vec;
    const int64_t parts = ceil_div(m, per_block);
    plan->chunk = ceil_div(ceil_div(m, parts), 8) * 8;
    plan->parts = ceil_div(m, plan->chunk);
    plan->blocks = view->c * plan->parts;
  } else {
    const int64_t per_block = (int64_t)plan->tile_y * BNK_PERSISTENT_CACHE;
    const int64_t parts = ceil_div(view->n, per_block);
    plan->rows_per_part = ceil_div(view->n, parts);
    plan->parts = ceil_div(view->n, plan->rows_per_part);
    plan->blocks = plan->tiles * plan->parts;
  }
  return plan->blocks <= (int64_t)blocks_per_sm * sm_count;
}

int64_t bnk__training_parts_bound(const bnk_context *ctx, const bnk_view *view) {
  int64_t parts = bnk__parts_bound_of(ctx, BNK_FAMILY_STATS, view);
  const int widths[2] = {1, bnk__dtype_vec(view->dtype)};
  for (int i = 0; i < 2; ++i) {
    bnk_reduce_plan plan;
    bnk__plan_persistent(view, widths[i], ctx->sm_count, 0, &plan);
    if (plan.parts > parts) parts = plan.parts;
  }
  return parts;
}

static const char *path_name(bnk_training_path path) {
  return path == BNK_TRAINING_PATH_PERSISTENT ? "BNK_TRAINING_PATH_PERSISTENT"
         : path == BNK_TRAINING_PATH_TWO_PASS ? "BNK_TRAINING_PATH_TWO_PASS"
                                              : "BNK_TRAINING_PATH_AUTO";
}

bnk_status bnk__plan_training_forward(const bnk_context *ctx, const bnk_view *view, const void *x, const void *y,
                                      const bnk_epilogue_args *fused, bnk_training_plan *plan) {
  plan->persistent = 0;
  if (ctx->training_path != BNK_TRAINING_PATH_TWO_PASS && ctx->cooperative_launch) {
    const void *pointers[3] = {x, y, fused->z};
    const int vec = bnk__choose_vec(view, pointers, fused->z != NULL ? 3 : 2);
    int blocks_per_sm = 0;
    BNK__TRY(bnk__check_cuda(bnk__persistent_forward_occupancy(view, vec, fused->kind, &blocks_per_sm),
                             "cudaOccupancyMaxActiveBlocksPerMultiprocessor (persistent forward)"));
    plan->persistent = bnk__plan_persistent(view, vec, ctx->sm_count, blocks_per_sm, &plan->reduce);
    if (plan->persistent) return BNK_SUCCESS;
    if (ctx->training_path == BNK_TRAINING_PATH_PERSISTENT)
      return bnk__fail(BNK_ERROR_NOT_SUPPORTED,
                       "training path is %s but this tensor does not fit the co-resident grid: it needs %" PRId64
                       " blocks of %d threads caching %d vectors of %d elements each, and %d SMs x %d blocks "
                       "hold %" PRId64,
                       path_name(ctx->training_path), plan->reduce.blocks, BNK_STREAM_THREADS, BNK_PERSISTENT_CACHE,
                       vec, ctx->sm_count, blocks_per_sm, (int64_t)ctx->sm_count * blocks_per_sm);
  } else if (ctx->training_path == BNK_TRAINING_PATH_PERSISTENT) {
    return bnk__fail(BNK_ERROR_NOT_SUPPORTED, "training path is %s but device %d has no cooperative launch",
                     path_name(ctx->training_path), ctx->device);
  }
  const void *stats_pointers[1] = {x};
  plan->reduce = bnk__reduce_plan_of(ctx, BNK_FAMILY_STATS, 0, view, bnk__choose_vec(view, stats_pointers, 1));
  return bnk__require_grid(&plan->reduce);
}

bnk_status bnk_forward_training_path(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x, const void *y,
                                     const bnk_epilogue *epilogue, bnk_training_path *path) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_pointer(path, "path"));
  bnk_epilogue_args fused;
  BNK__TRY(bnk__epilogue_args_of(epilogue, desc, x, y, &fused));
  const bnk_view view = bnk__view_of(desc);
  /* An empty batch only counts itself (no BN kernel runs) and M == 1 is rejected: neither has a plan. */
  if (bnk__view_per_channel(&view) < 2) {
    *path = BNK_TRAINING_PATH_TWO_PASS;
    return BNK_SUCCESS;
  }
  bnk_training_plan plan;
  BNK__TRY(bnk__plan_training_forward(ctx, &view, x, y, &fused, &plan));
  *path = plan.persistent ? BNK_TRAINING_PATH_PERSISTENT : BNK_TRAINING_PATH_TWO_PASS;
  return BNK_SUCCESS;
}
