/* How the elementwise passes (normalize, dx) and the folding kernel cover a tensor, decided once on the
 * host and handed to the launchers (kernels/launchers.h, bnk_elementwise_plan). */
#include <stdint.h>

#include "host/internal.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Whether every pointer (NULL ones aside) allows 16-byte accesses. */
static int all_aligned(const void *const *pointers, int count) {
  for (int i = 0; i < count; ++i)
    if ((uintptr_t)pointers[i] % 16 != 0) return 0;
  return 1;
}

int bnk__choose_vec(const bnk_view *view, const void *const *pointers, int count) {
  const int vec = bnk__dtype_vec(view->dtype);
  return bnk__reduce_vec_fits(view, vec) && all_aligned(pointers, count) ? vec : 1;
}

int bnk__choose_whole_run_vec(const bnk_view *view, const void *const *pointers, int count) {
  const int vec = bnk__dtype_vec(view->dtype);
  const int64_t contiguous = view->channels_last ? view->c : view->s;
  return contiguous % vec == 0 && all_aligned(pointers, count) ? vec : 1;
}

int64_t bnk__plan_grid_stride_blocks(int64_t items, int64_t resident_blocks) {
  return min64(ceil_div(items, BNK_STREAM_THREADS), resident_blocks);
}

int64_t bnk__fold_blocks(const bnk_context *ctx, int64_t items, int dtype, int bias_dtype) {
  const int per_sm = ctx->occupancy.blocks_per_sm[BNK_FAMILY_FOLD][0][dtype][0][bias_dtype == BNK_FLOAT32];
  return bnk__plan_grid_stride_blocks(items, (int64_t)ctx->sm_count * (per_sm > 0 ? per_sm : 1));
}

/* The channels-first flat walk: as many blocks as the GPU holds, each walking a contiguous piece of
 * whole tiles, shorter where S is so small that the piece would touch more than BNK_TABLE_TARGET runs. */
static void plan_flat_walk(const bnk_view *view, int64_t resident_blocks, bnk_elementwise_plan *plan) {
  const int64_t s = view->s;
  const int64_t tile = (int64_t)BNK_STREAM_THREADS * plan->vec;
  plan->elements = view->n * view->c * s;
  const int64_t tiles = ceil_div(ceil_div(plan->elements, plan->vec), BNK_STREAM_THREADS);
  int64_t per_block = ceil_div(tiles, max64(1, min64(tiles, resident_blocks)));
  /* A piece of L elements touches at most (L + S - 2) / S + 1 runs. */
  const int64_t table_bound = s < BNK_RUN_CAP ? (BNK_TABLE_TARGET - 2) * s / tile : BNK_RUN_CAP;
  per_block = min64(per_block, max64(1, table_bound));
  per_block = min64(per_block, (BNK_RUN_CAP / 2) / tile);
  const int64_t piece = per_block * tile;
  plan->tiles_per_block = (int)per_block;
  plan->blocks = ceil_div(tiles, per_block);
  plan->threads = BNK_STREAM_THREADS;
  plan->table_runs = (int)min64((piece + s - 2) / s + 1, view->n * view->c);
  plan->run_step = (int32_t)(tile / s);
  plan->left_step = (int32_t)(tile % s);
  plan->run_length = (int32_t)min64(s, BNK_RUN_CAP);
  plan->mask_words = 1;
}

bnk_elementwise_plan bnk__plan_elementwise(const bnk_view *view, const void *const *pointers, int count, int sm_count,
                                           const int blocks_per_sm[2]) {
  bnk_elementwise_plan plan = {0};
  const int vec = bnk__dtype_vec(view->dtype);
  const int aligned = all_aligned(pointers, count);
  if (!view->channels_last) {
    plan.vec = aligned ? vec : 1;
    plan_flat_walk(view, (int64_t)sm_count * blocks_per_sm[plan.vec != 1], &plan);
    return plan;
  }
  plan.vec = aligned && view->c % vec == 0 ? vec : 1;
  plan.tiling = bnk__plan_reduce(view, plan.vec, sm_count, blocks_per_sm[plan.vec != 1], BNK_STREAM_THREADS);
  plan.blocks = plan.tiling.blocks;
  plan.threads = plan.tiling.threads;
  /* A group of 32 / vec lanes covers 32 consecutive elements of one row, starting at a multiple of 32,
   * when rows are whole words and the group does not wrap around the tile. */
  plan.mask_words = view->c % 32 == 0 && plan.tiling.tile_x % (32 / plan.vec) == 0;
  return plan;
}

bnk_status bnk__require_elementwise_grid(const bnk_elementwise_plan *plan) {
  bnk_reduce_plan blocks_only = {0};
  blocks_only.blocks = plan->blocks;
  return bnk__require_grid(&blocks_only);
}

bnk_elementwise_plan bnk__elementwise_plan_of(const bnk_context *ctx, const bnk_view *view, const void *const *pointers,
                                              int count, bnk_kernel_family family, int variant) {
  int blocks_per_sm[2];
  bnk__blocks_per_sm(ctx, family, view, variant, blocks_per_sm);
  return bnk__plan_elementwise(view, pointers, count, ctx->sm_count, blocks_per_sm);
}
