/* The choice between the persistent kernels and the two-pass ones, for the training forward and the backward
 * (docs/performance.md, "Two training paths"): persistent when a channels-first channel fits one team's cache
 * (a warp's or a block's, bnk_persistent_team: any C), or else when the tensor's pieces fit the co-resident grid
 * of the persistent kernel on this device, which the kernel's occupancy decides: with the registers' cache
 * alone, or else with a second level in shared memory that fits (host/internal.h); a context setting may force
 * either path. */
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>

#include "host/internal.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int bnk__plan_persistent(const bnk_view *view, int vec, int cache, int shared_depth, int sm_count, int blocks_per_sm,
                         bnk_reduce_plan *plan) {
  /* The tiling only: the pieces are cut below for the cache. */
  *plan = bnk__plan_reduce(view, vec, sm_count, blocks_per_sm, BNK_STREAM_THREADS);
  plan->threads = BNK_STREAM_THREADS;
  const int team = bnk_persistent_team(view, vec, cache);
  plan->shared_depth = team != 0 ? 0 : shared_depth;
  cache += plan->shared_depth;
  if (team != 0) {
    /* Teams own whole channels and meet at no grid barrier: a grid-stride grid over the channels, as many blocks
     * as the channels need up to the co-resident grid (the forward's launch is cooperative, see persistent.cu). */
    const int64_t needed = ceil_div(view->c, BNK_STREAM_THREADS / team);
    const int64_t resident = (int64_t)blocks_per_sm * sm_count;
    plan->chunk = view->n * view->s;
    plan->parts = 1;
    plan->blocks = needed < resident ? needed : resident;
    return resident > 0;
  }
  if (!view->channels_last) {
    /* A multiple of 8 (every vector width) at most one full cache per thread, as bnk__plan_reduce cuts. */
    const int64_t m = view->n * view->s;
    const int64_t per_block = (int64_t)BNK_STREAM_THREADS * cache * vec;
    const int64_t parts = ceil_div(m, per_block);
    plan->chunk = ceil_div(ceil_div(m, parts), 8) * 8;
    plan->parts = ceil_div(m, plan->chunk);
    plan->blocks = view->c * plan->parts;
  } else {
    const int64_t per_block = (int64_t)plan->tile_y * cache;
    const int64_t parts = ceil_div(view->n, per_block);
    plan->rows_per_part = ceil_div(view->n, parts);
    plan->parts = ceil_div(view->n, plan->rows_per_part);
    plan->blocks = plan->tiles * plan->parts;
  }
  return plan->blocks <= (int64_t)blocks_per_sm * sm_count;
}

/* The most pieces per channel of a family's two-pass plans and of the persistent plans of this cache depth. */
static int64_t parts_bound(const bnk_context *ctx, const bnk_view *view, bnk_kernel_family family, int cache) {
  int64_t parts = bnk__parts_bound_of(ctx, family, view);
  const int widths[2] = {1, bnk__dtype_vec(view->dtype)};
  for (int i = 0; i < 2; ++i) {
    bnk_reduce_plan plan;
    bnk__plan_persistent(view, widths[i], cache, 0, ctx->sm_count, 0, &plan); /* the most pieces: no second level */
    if (plan.parts > parts) parts = plan.parts;
  }
  return parts;
}

int64_t bnk__training_parts_bound(const bnk_context *ctx, const bnk_view *view) {
  return parts_bound(ctx, view, BNK_FAMILY_STATS, BNK_PERSISTENT_CACHE);
}

int64_t bnk__backward_parts_bound(const bnk_context *ctx, const bnk_view *view) {
  return parts_bound(ctx, view, BNK_FAMILY_BACKWARD_SUMS, BNK_PERSISTENT_BACKWARD_CACHE);
}

static const char *path_name(bnk_training_path path) {
  return path == BNK_TRAINING_PATH_PERSISTENT ? "BNK_TRAINING_PATH_PERSISTENT"
         : path == BNK_TRAINING_PATH_TWO_PASS ? "BNK_TRAINING_PATH_TWO_PASS"
                                              : "BNK_TRAINING_PATH_AUTO";
}

/* Whether the context may take the persistent path on this device: a forced persistent path on a device
 * without cooperative launch fails here. */
static bnk_status persistent_allowed(const bnk_context *ctx, int *allowed) {
  *allowed = ctx->training_path != BNK_TRAINING_PATH_TWO_PASS && ctx->cooperative_launch;
  if (!ctx->cooperative_launch && ctx->training_path == BNK_TRAINING_PATH_PERSISTENT)
    return bnk__fail(BNK_ERROR_NOT_SUPPORTED, "training path is %s but device %d has no cooperative launch",
                     path_name(ctx->training_path), ctx->device);
  return BNK_SUCCESS;
}

/* The occupancy of the op's kernel with a second level `depth` deep, from `known` where an earlier plan asked. */
static cudaError_t occupancy_at_depth(const bnk_view *view, int vec, int backward, int kind, int team, int depth,
                                      bnk_persistent_occupancy *known, int *blocks_per_sm) {
  _Atomic unsigned char *entry = known == NULL
                                     ? NULL
                                     : &known->blocks_plus_one[backward][view->dtype][view->channels_last != 0][vec > 1]
                                                              [kind][team == 0    ? 0
                                                                     : team == 32 ? 1
                                                                                  : 2][depth];
  const unsigned char cached = entry == NULL ? 0 : atomic_load_explicit(entry, memory_order_relaxed);
  if (cached != 0) {
    *blocks_per_sm = cached - 1;
    return cudaSuccess;
  }
  BNK__TRY_CUDA(backward ? bnk__persistent_backward_occupancy(view, vec, kind, team, depth, blocks_per_sm)
                         : bnk__persistent_forward_occupancy(view, vec, kind, team, depth, blocks_per_sm));
  /* An SM holds at most 32 blocks: every answer has an entry. */
  if (entry != NULL && *blocks_per_sm >= 0 && *blocks_per_sm < UCHAR_MAX)
    atomic_store_explicit(entry, (unsigned char)(*blocks_per_sm + 1), memory_order_relaxed);
  return cudaSuccess;
}

/* One candidate of bnk__plan_persistent_op: the occupancy of the op's kernel with a second level `depth` deep,
 * and the plan of that depth on it. */
static cudaError_t plan_at_depth(const bnk_view *view, int vec, int backward, int kind, int team, int depth,
                                 int sm_count, bnk_persistent_occupancy *known, bnk_reduce_plan *plan,
                                 int *blocks_per_sm, int *fits) {
  BNK__TRY_CUDA(occupancy_at_depth(view, vec, backward, kind, team, depth, known, blocks_per_sm));
  const int cache = backward ? BNK_PERSISTENT_BACKWARD_CACHE : BNK_PERSISTENT_CACHE;
  *fits = bnk__plan_persistent(view, vec, cache, depth, sm_count, *blocks_per_sm, plan);
  return cudaSuccess;
}

cudaError_t bnk__plan_persistent_op(const bnk_view *view, int vec, int backward, int kind, int sm_count,
                                    bnk_persistent_occupancy *known, bnk_reduce_plan *plan, int *blocks_per_sm,
                                    int *fits) {
  /* Defined outputs when a query fails too. */
  const bnk_reduce_plan none = {0};
  *plan = none;
  *blocks_per_sm = 0;
  *fits = 0;
  const int team = bnk_persistent_team(view, vec, backward ? BNK_PERSISTENT_BACKWARD_CACHE : BNK_PERSISTENT_CACHE);
  BNK__TRY_CUDA(plan_at_depth(view, vec, backward, kind, team, 0, sm_count, known, plan, blocks_per_sm, fits));
  if (*fits || team != 0) return cudaSuccess;
  const int deepest = bnk_persistent_max_shared_depth(backward, view->dtype == BNK_FLOAT32 ? 4 : 2, vec);
  BNK__TRY_CUDA(plan_at_depth(view, vec, backward, kind, team, deepest, sm_count, known, plan, blocks_per_sm, fits));
  if (!*fits) return cudaSuccess;
  /* Depth `fitting` fits and `short_of` does not: halve the gap, down to a fitting depth whose next shallower
   * one does not fit (a deeper level than needed would only cost shared memory traffic). The capacity need not
   * grow with the depth (a deeper level can cost a block per SM), so this is the shallowest only where it does;
   * the search is deterministic, so a shape always gets the same depth. */
  int short_of = 0, fitting = deepest, probed = deepest;
  while (fitting - short_of > 1) {
    probed = short_of + (fitting - short_of) / 2;
    BNK__TRY_CUDA(plan_at_depth(view, vec, backward, kind, team, probed, sm_count, known, plan, blocks_per_sm, fits));
    if (*fits) fitting = probed;
    else short_of = probed;
  }
  if (probed != fitting)
    BNK__TRY_CUDA(plan_at_depth(view, vec, backward, kind, team, fitting, sm_count, known, plan, blocks_per_sm, fits));
  return cudaSuccess;
}

/* The persistent plan of an op's kernel (bnk__plan_persistent_op): plan->persistent when it fits; a forced
 * persistent path that does not fit fails, naming the capacity of both cache levels. */
static bnk_status fit_persistent(const bnk_context *ctx, const bnk_view *view, int vec, int backward, int kind,
                                 bnk_training_plan *plan) {
  int blocks_per_sm = 0;
  BNK__TRY(bnk__check_cuda(bnk__plan_persistent_op(view, vec, backward, kind, ctx->sm_count, ctx->persistent_occupancy,
                                                   &plan->reduce, &blocks_per_sm, &plan->persistent),
                           backward ? "cudaOccupancyMaxActiveBlocksPerMultiprocessor (persistent backward)"
                                    : "cudaOccupancyMaxActiveBlocksPerMultiprocessor (persistent forward)"));
  if (plan->persistent || ctx->training_path != BNK_TRAINING_PATH_PERSISTENT) return BNK_SUCCESS;
  return bnk__fail(BNK_ERROR_NOT_SUPPORTED,
                   "training path is %s but this tensor does not fit the co-resident grid: it needs %" PRId64
                   " blocks of %d threads caching %d vectors of %d elements each in registers and %d in shared "
                   "memory, and %d SMs x %d blocks hold %" PRId64,
                   path_name(ctx->training_path), plan->reduce.blocks, BNK_STREAM_THREADS,
                   backward ? BNK_PERSISTENT_BACKWARD_CACHE : BNK_PERSISTENT_CACHE, vec, plan->reduce.shared_depth,
                   ctx->sm_count, blocks_per_sm, (int64_t)ctx->sm_count * blocks_per_sm);
}

bnk_status bnk__plan_training_forward(const bnk_context *ctx, const bnk_view *view, const void *x, const void *y,
                                      const bnk_epilogue_args *fused, bnk_training_plan *plan) {
  int allowed = 0;
  BNK__TRY(persistent_allowed(ctx, &allowed));
  plan->persistent = 0;
  if (allowed) {
    const void *pointers[3] = {x, y, fused->z};
    const int vec = bnk__choose_whole_run_vec(view, pointers, fused->z != NULL ? 3 : 2);
    BNK__TRY(fit_persistent(ctx, view, vec, 0, fused->kind, plan));
    if (plan->persistent) return BNK_SUCCESS;
  }
  const void *stats_pointers[1] = {x};
  plan->reduce = bnk__reduce_plan_of(ctx, BNK_FAMILY_STATS, 0, view, bnk__choose_vec(view, stats_pointers, 1));
  return bnk__require_grid(&plan->reduce);
}

bnk_status bnk__plan_training_backward(const bnk_context *ctx, const bnk_view *view, const void *x, const void *dy,
                                       const void *dx, const bnk_grad_epilogue_args *fused, bnk_training_plan *plan) {
  int allowed = 0;
  BNK__TRY(persistent_allowed(ctx, &allowed));
  plan->persistent = 0;
  if (!allowed) return BNK_SUCCESS;
  const void *pointers[5] = {x, dy, dx, fused->y, fused->dz};
  const int vec = bnk__choose_whole_run_vec(view, pointers, 5);
  return fit_persistent(ctx, view, vec, 1, fused->source, plan);
}

bnk_status bnk__persistent_backward(const bnk_context *ctx, const bnk_tensor_desc *desc, const bnk_view *view,
                                    const void *x, const void *dy, void *dx, bnk_backward_stats stats, int frozen,
                                    float *dgamma, float *dbeta, void *workspace, const bnk_grad_epilogue_args *fused,
                                    const char *caller, int *launched) {
  *launched = 0;
  bnk_training_plan plan;
  BNK__TRY(bnk__plan_training_backward(ctx, view, x, dy, dx, fused, &plan));
  if (!plan.persistent) return BNK_SUCCESS;
  bnk_device_guard guard;
  BNK__TRY(bnk__device_enter(ctx, &guard));
  bnk__range_push(frozen ? "bwd_infer" : "bwd", desc);
  char what[80];
  snprintf(what, sizeof what, "%s: persistent kernel", caller);
  const bnk_backward_workspace ws = bnk__backward_workspace_carve(workspace, view, plan.reduce.parts);
  const bnk_status status =
      bnk__check_cuda(bnk__launch_persistent_backward(view, &plan.reduce, x, dy, dx, stats, frozen, ws, dgamma, dbeta,
                                                      fused, ctx->stream),
                      what);
  bnk__range_pop();
  bnk__device_leave(&guard);
  *launched = 1;
  return status;
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

bnk_status bnk_backward_training_path(const bnk_context *ctx, const bnk_tensor_desc *desc, const void *x,
                                      const void *dy, const void *dx, const bnk_epilogue_grad *epilogue,
                                      bnk_training_path *path) {
  bnk__clear_error();
  BNK__TRY(bnk__require_context(ctx));
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_pointer(path, "path"));
  bnk_grad_epilogue_args fused;
  BNK__TRY(bnk__grad_epilogue_args_of(epilogue, desc, x, dy, dx, &fused));
  const bnk_view view = bnk__view_of(desc);
  /* An empty batch only zeroes dgamma and dbeta: no kernel of either path runs. */
  if (bnk__view_per_channel(&view) == 0) {
    *path = BNK_TRAINING_PATH_TWO_PASS;
    return BNK_SUCCESS;
  }
  bnk_training_plan plan;
  BNK__TRY(bnk__plan_training_backward(ctx, &view, x, dy, dx, &fused, &plan));
  *path = plan.persistent ? BNK_TRAINING_PATH_PERSISTENT : BNK_TRAINING_PATH_TWO_PASS;
  return BNK_SUCCESS;
}
