/* How the kernels split a tensor over the GPU. Decided on the host from the shape and the SM count, so
 * that the workspace query and the launch agree, and no grid dimension depends on C alone. */
#include <inttypes.h>
#include <stdint.h>

#include "host/internal.h"

/* Blocks of BNK_STREAM_THREADS that keep every SM's thread slots full (2048 per SM on sm_80..sm_90). */
static int64_t target_blocks(int sm_count) { return (int64_t)sm_count * (2048 / BNK_STREAM_THREADS); }

/* Pieces stay below 2^24 values so that float counts are exact. */
#define BNK_MAX_PIECE ((int64_t)1 << 24)
/* Below this many values per piece, splitting a channel further costs more in merging than it gains. */
#define BNK_MIN_PIECE 4096

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

int bnk_dtype_vec(int dtype) { return dtype == BNK_FLOAT32 ? 4 : 8; }

bnk_reduce_plan bnk_plan_reduce(const bnk_view *view, int vec, int sm_count) {
  bnk_reduce_plan plan = {0};
  plan.vec = vec;
  const int64_t target = target_blocks(sm_count);
  if (!view->channels_last) {
    const int64_t m = view->n * view->s;
    int64_t parts = clamp64(ceil_div(target, view->c), 1, ceil_div(m, BNK_MIN_PIECE));
    if (parts < ceil_div(m, BNK_MAX_PIECE)) parts = ceil_div(m, BNK_MAX_PIECE);
    /* A multiple of 8 is a multiple of every vector width, so pieces never split a vector. */
    plan.chunk = ceil_div(ceil_div(m, parts), 8) * 8;
    plan.parts = ceil_div(m, plan.chunk);
    plan.threads = (int)clamp64(ceil_div(ceil_div(plan.chunk, (int64_t)vec * 4), 32) * 32, 32, BNK_STREAM_THREADS);
    plan.blocks = view->c * plan.parts;
  } else {
    const int64_t vecs_per_row = view->c / vec;
    plan.tiles = ceil_div(vecs_per_row, BNK_STREAM_THREADS);
    plan.tile_x = (int)ceil_div(vecs_per_row, plan.tiles);
    plan.tile_y = BNK_STREAM_THREADS / plan.tile_x;
    int64_t parts = clamp64(ceil_div(target, plan.tiles), 1, ceil_div(view->n, (int64_t)plan.tile_y * 4));
    if (parts < ceil_div(view->n, BNK_MAX_PIECE)) parts = ceil_div(view->n, BNK_MAX_PIECE);
    plan.rows_per_part = ceil_div(view->n, parts);
    plan.parts = ceil_div(view->n, plan.rows_per_part);
    plan.threads = plan.tile_x * plan.tile_y;
    plan.blocks = plan.tiles * plan.parts;
  }
  return plan;
}

int64_t bnk_plan_parts_bound(const bnk_view *view, int sm_count) {
  const bnk_reduce_plan narrow = bnk_plan_reduce(view, 1, sm_count);
  int64_t parts = narrow.parts;
  const int vec = bnk_dtype_vec(view->dtype);
  if ((view->channels_last ? view->c : view->s) % vec == 0) {
    const bnk_reduce_plan wide = bnk_plan_reduce(view, vec, sm_count);
    if (wide.parts > parts) parts = wide.parts;
  }
  return parts;
}

bnk_status bnk_require_grid(const bnk_reduce_plan *plan) {
  if (plan->blocks > INT32_MAX)
    return bnk_fail(BNK_ERROR_NOT_SUPPORTED, "tensor needs %" PRId64 " blocks, more than a grid holds (2^31 - 1)",
                    plan->blocks);
  return BNK_SUCCESS;
}

/* Workspaces are per-channel arrays followed by per-piece arrays, each 256-byte aligned. */
size_t bnk_align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }
static size_t channel_array_bytes(const bnk_view *view) { return bnk_align256((size_t)view->c * sizeof(float)); }
static size_t piece_array_bytes(const bnk_view *view, int64_t parts) {
  return bnk_align256((size_t)(parts * view->c) * sizeof(float));
}

size_t bnk_stats_workspace_bytes(const bnk_view *view, int64_t parts) {
  return 3 * channel_array_bytes(view) + 3 * piece_array_bytes(view, parts);
}

bnk_stats_workspace bnk_stats_workspace_carve(void *base, const bnk_view *view, int64_t parts) {
  const size_t channel_array = channel_array_bytes(view);
  const size_t piece_array = piece_array_bytes(view, parts);
  char *p = (char *)base;
  bnk_stats_workspace ws;
  ws.shift = (float *)p;
  ws.dmean = (float *)(p + channel_array);
  ws.invstd = (float *)(p + 2 * channel_array);
  ws.count = (float *)(p + 3 * channel_array);
  ws.mean = (float *)(p + 3 * channel_array + piece_array);
  ws.m2 = (float *)(p + 3 * channel_array + 2 * piece_array);
  return ws;
}

size_t bnk_backward_workspace_bytes(const bnk_view *view, int64_t parts) {
  return 3 * channel_array_bytes(view) + 2 * piece_array_bytes(view, parts);
}

bnk_backward_workspace bnk_backward_workspace_carve(void *base, const bnk_view *view, int64_t parts) {
  const size_t channel_array = channel_array_bytes(view);
  const size_t piece_array = piece_array_bytes(view, parts);
  char *p = (char *)base;
  bnk_backward_workspace ws;
  ws.dy_scale = (float *)p;
  ws.xmu_scale = (float *)(p + channel_array);
  ws.bias = (float *)(p + 2 * channel_array);
  ws.sum_dy = (float *)(p + 3 * channel_array);
  ws.sum_dy_xmu = (float *)(p + 3 * channel_array + piece_array);
  return ws;
}
