/* How the kernels split a tensor over the GPU. Decided on the host from the shape and the SM count, so
 * that the workspace query and the launch agree, and no grid dimension depends on C alone. */
#include <inttypes.h>
#include <stdint.h>

#include "host/internal.h"

/* Pieces stay below 2^24 values so that float counts are exact. */
#define BNK_MAX_PIECE ((int64_t)1 << 24)
/* Below this many values per piece, splitting a channel further costs more in merging than it gains. */
#define BNK_MIN_PIECE 4096
/* Chunks of BNK_UNROLL rows that a channels-last thread should see at least. */
#define BNK_MIN_ITERATIONS 4

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

int bnk__dtype_vec(int dtype) { return dtype == BNK_FLOAT32 ? 4 : 8; }

bnk_reduce_plan bnk__plan_reduce(const bnk_view *view, int vec, int sm_count, int blocks_per_sm, int max_tile_vectors) {
  bnk_reduce_plan plan = {0};
  plan.vec = vec;
  /* One full wave: as many blocks as the SMs hold at once. */
  const int64_t target = (int64_t)sm_count * blocks_per_sm;
  if (!view->channels_last) {
    const int64_t m = view->n * view->s;
    /* At most one wave where C allows it: rounding the pieces per channel up would start a second wave of a
     * few blocks (448 blocks for 396 slots at C = 64), as long as a full one. Past `target` channels, one piece
     * each, in waves of small blocks (threads sized to the piece). */
    int64_t parts = clamp64(target / view->c, 1, ceil_div(m, BNK_MIN_PIECE));
    if (parts < ceil_div(m, BNK_MAX_PIECE)) parts = ceil_div(m, BNK_MAX_PIECE);
    /* A multiple of 8 is a multiple of every vector width, so pieces never split a vector. */
    plan.chunk = ceil_div(ceil_div(m, parts), 8) * 8;
    plan.parts = ceil_div(m, plan.chunk);
    plan.threads = (int)clamp64(ceil_div(ceil_div(plan.chunk, (int64_t)vec * 4), 32) * 32, 32, BNK_STREAM_THREADS);
    plan.blocks = view->c * plan.parts;
  } else {
    /* A tile is whole 32-lane warps across channels, or a power of two of fewer lanes when a row has
     * fewer than 32 vectors (rows then sit whole in a warp): the block merge's shuffles and its shared
     * layout rely on it. */
    const int64_t vecs_per_row = view->c / vec;
    if (vecs_per_row < 32) {
      plan.tiles = 1;
      plan.tile_x = 1;
      while (plan.tile_x < vecs_per_row) plan.tile_x *= 2;
    } else {
      plan.tiles = ceil_div(vecs_per_row, max_tile_vectors);
      plan.tile_x = (int)(ceil_div(ceil_div(vecs_per_row, plan.tiles), 32) * 32);
    }
    plan.tile_y = BNK_STREAM_THREADS / plan.tile_x;
    /* Each thread's share of rows: at least BNK_MIN_ITERATIONS chunks of BNK_UNROLL rows, so that
     * the block merge is a small part of a block's time, unless that leaves SMs idle; then one block per
     * SM, down to one chunk per thread. Never more blocks than the SMs hold at once. */
    const int64_t rows_per_block_chunk = (int64_t)plan.tile_y * BNK_UNROLL;
    const int64_t parts_long = view->n / (rows_per_block_chunk * BNK_MIN_ITERATIONS);
    const int64_t parts_one_per_sm = ceil_div(sm_count, plan.tiles);
    const int64_t parts_one_chunk = ceil_div(view->n, rows_per_block_chunk);
    const int64_t parts_wanted = parts_long > parts_one_per_sm        ? parts_long
                                 : parts_one_per_sm < parts_one_chunk ? parts_one_per_sm
                                                                      : parts_one_chunk;
    int64_t parts = clamp64(parts_wanted, 1, ceil_div(target, plan.tiles));
    if (parts < ceil_div(view->n, BNK_MAX_PIECE)) parts = ceil_div(view->n, BNK_MAX_PIECE);
    plan.rows_per_part = ceil_div(view->n, parts);
    plan.parts = ceil_div(view->n, plan.rows_per_part);
    plan.threads = plan.tile_x * plan.tile_y;
    plan.blocks = plan.tiles * plan.parts;
  }
  return plan;
}

int bnk__reduce_vec_fits(const bnk_view *view, int vec) {
  if (view->channels_last) return view->c % vec == 0;
  /* Channels-first runs then all start at the same misalignment per channel, each a head, whole vectors and
   * a tail (kernels/reduce.cuh, bnk_run_split); S >= vec keeps the head inside the run. */
  return view->s % vec == 0 || (view->s >= vec && (view->c * view->s) % vec == 0);
}

/* Pieces grow with the blocks per SM, so the most over the variants bounds every variant's. */
int64_t bnk__plan_parts_bound(const bnk_view *view, int sm_count, const int blocks_per_sm[2]) {
  const bnk_reduce_plan narrow = bnk__plan_reduce(view, 1, sm_count, blocks_per_sm[0], bnk_reduction_tile_vectors(1));
  int64_t parts = narrow.parts;
  const int vec = bnk__dtype_vec(view->dtype);
  if (bnk__reduce_vec_fits(view, vec)) {
    const bnk_reduce_plan wide =
        bnk__plan_reduce(view, vec, sm_count, blocks_per_sm[1], bnk_reduction_tile_vectors(vec));
    if (wide.parts > parts) parts = wide.parts;
  }
  return parts;
}

bnk_status bnk__require_grid(const bnk_reduce_plan *plan) {
  if (plan->blocks > INT32_MAX)
    return bnk__fail(BNK_ERROR_NOT_SUPPORTED, "tensor needs %" PRId64 " blocks, more than a grid holds (2^31 - 1)",
                     plan->blocks);
  return BNK_SUCCESS;
}

/* Workspaces are per-channel arrays followed by per-piece arrays, each 256-byte aligned. */
size_t bnk__align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

void *bnk__layout_take(bnk_workspace_layout *layout, size_t bytes) {
  void *start = layout->base == 0 ? NULL : (void *)(layout->base + layout->bytes);
  layout->bytes += bnk__align256(bytes);
  return start;
}

static size_t channel_floats(const bnk_view *view) { return (size_t)view->c * sizeof(float); }
static size_t piece_floats(const bnk_view *view, int64_t parts) { return (size_t)(parts * view->c) * sizeof(float); }

/* The one description of each workspace: it carves the arrays from base (NULL: measures only) and returns
 * the bytes they take, so that the size query and the launch cannot disagree. */
static size_t stats_layout(void *base, const bnk_view *view, int64_t parts, bnk_stats_workspace *ws) {
  bnk_workspace_layout layout = {(uintptr_t)base, 0};
  ws->shift = bnk__layout_take(&layout, channel_floats(view));
  ws->dmean = bnk__layout_take(&layout, channel_floats(view));
  ws->invstd = bnk__layout_take(&layout, channel_floats(view));
  ws->count = bnk__layout_take(&layout, piece_floats(view, parts));
  ws->mean = bnk__layout_take(&layout, piece_floats(view, parts));
  ws->m2 = bnk__layout_take(&layout, piece_floats(view, parts));
  ws->band_count = bnk__layout_take(&layout, piece_floats(view, BNK_MERGE_BANDS));
  ws->band_mean = bnk__layout_take(&layout, piece_floats(view, BNK_MERGE_BANDS));
  ws->band_m2 = bnk__layout_take(&layout, piece_floats(view, BNK_MERGE_BANDS));
  return layout.bytes;
}

static size_t backward_layout(void *base, const bnk_view *view, int64_t parts, bnk_backward_workspace *ws) {
  bnk_workspace_layout layout = {(uintptr_t)base, 0};
  ws->dy_scale = bnk__layout_take(&layout, channel_floats(view));
  ws->xmu_scale = bnk__layout_take(&layout, channel_floats(view));
  ws->bias = bnk__layout_take(&layout, channel_floats(view));
  ws->sum_dy = bnk__layout_take(&layout, piece_floats(view, parts));
  ws->sum_dy_xmu = bnk__layout_take(&layout, piece_floats(view, parts));
  ws->band_sum_dy = bnk__layout_take(&layout, piece_floats(view, BNK_MERGE_BANDS));
  ws->band_sum_dy_xmu = bnk__layout_take(&layout, piece_floats(view, BNK_MERGE_BANDS));
  return layout.bytes;
}

size_t bnk__stats_workspace_bytes(const bnk_view *view, int64_t parts) {
  bnk_stats_workspace ws;
  return stats_layout(NULL, view, parts, &ws);
}

bnk_stats_workspace bnk__stats_workspace_carve(void *base, const bnk_view *view, int64_t parts) {
  bnk_stats_workspace ws;
  stats_layout(base, view, parts, &ws);
  return ws;
}

size_t bnk__backward_workspace_bytes(const bnk_view *view, int64_t parts) {
  bnk_backward_workspace ws;
  return backward_layout(NULL, view, parts, &ws);
}

bnk_backward_workspace bnk__backward_workspace_carve(void *base, const bnk_view *view, int64_t parts) {
  bnk_backward_workspace ws;
  backward_layout(base, view, parts, &ws);
  return ws;
}

void bnk__blocks_per_sm(const bnk_context *ctx, bnk_kernel_family family, const bnk_view *view, int variant,
                        int blocks_per_sm[2]) {
  for (int wide = 0; wide < 2; ++wide) {
    const int *variants = ctx->occupancy.blocks_per_sm[family][view->channels_last != 0][view->dtype][wide];
    int blocks = 0;
    for (int v = variant < 0 ? 0 : variant; v < (variant < 0 ? BNK_OCCUPANCY_VARIANTS : variant + 1); ++v)
      if (variants[v] > blocks) blocks = variants[v];
    blocks_per_sm[wide] = blocks > 0 ? blocks : 1;
  }
}

bnk_reduce_plan bnk__reduce_plan_of(const bnk_context *ctx, bnk_kernel_family family, int variant, const bnk_view *view,
                                    int vec) {
  int blocks_per_sm[2];
  bnk__blocks_per_sm(ctx, family, view, variant, blocks_per_sm);
  return bnk__plan_reduce(view, vec, ctx->sm_count, blocks_per_sm[vec != 1], bnk_reduction_tile_vectors(vec));
}

int64_t bnk__parts_bound_of(const bnk_context *ctx, bnk_kernel_family family, const bnk_view *view) {
  int blocks_per_sm[2];
  bnk__blocks_per_sm(ctx, family, view, -1, blocks_per_sm);
  return bnk__plan_parts_bound(view, ctx->sm_count, blocks_per_sm);
}
