/* How the kernels split a tensor over the GPU. Decided on the host from the shape and the SM count, so
 * that the workspace query and the launch agree, and no grid dimension depends on C alone. */
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

int bnk_choose_vec(const bnk_view *view, const void *const *pointers, int count) {
  const int vec = bnk_dtype_vec(view->dtype);
  const int64_t contiguous = view->channels_last ? view->c : view->s;
  if (contiguous % vec != 0) return 1;
  for (int i = 0; i < count; ++i)
    if ((uintptr_t)pointers[i] % 16 != 0) return 1;
  return vec;
}

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

static size_t align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

size_t bnk_stats_workspace_bytes(const bnk_view *view, int64_t parts) {
  const size_t channel_array = align256((size_t)view->c * sizeof(float));
  const size_t piece_array = align256((size_t)(parts * view->c) * sizeof(float));
  return 3 * channel_array + 3 * piece_array;
}

bnk_stats_workspace bnk_stats_workspace_carve(void *base, const bnk_view *view, int64_t parts) {
  const size_t channel_array = align256((size_t)view->c * sizeof(float));
  const size_t piece_array = align256((size_t)(parts * view->c) * sizeof(float));
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
