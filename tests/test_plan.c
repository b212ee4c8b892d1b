/* The invariants of host/plan.c's reduction plans and workspace layouts, over a sweep of shapes, dtypes,
 * layouts, vector widths and SM counts. Host code only: no kernel runs. */
#include <inttypes.h>
#include <stdint.h>

#include <criterion/criterion.h>

#include "host/internal.h"

/* Floats count exactly up to 2^24: no piece of a channel may hold more values. */
#define MAX_PIECE_VALUES ((int64_t)1 << 24)

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static int is_power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

static const char *layout_name(const bnk_view *view) { return view->channels_last ? "NHWC" : "NCHW"; }

#define SHAPE_FORMAT "%s dtype %d N=%" PRId64 " C=%" PRId64 " S=%" PRId64 " vec %d on %d SMs"
#define SHAPE_ARGS(view, vec, sms) layout_name(view), (view)->dtype, (view)->n, (view)->c, (view)->s, vec, sms

/* The pieces cover every channel exactly once, each under 2^24 values, in a grid that a launch can take. */
static void check_pieces(const bnk_view *view, int vec, int sms, int blocks_per_sm, const bnk_reduce_plan *plan) {
  cr_assert(plan->parts >= 1, "parts %" PRId64 " for " SHAPE_FORMAT, plan->parts, SHAPE_ARGS(view, vec, sms));
  cr_assert(plan->threads >= 32 && plan->threads <= BNK_STREAM_THREADS && plan->threads % 32 == 0,
            "threads %d for " SHAPE_FORMAT, plan->threads, SHAPE_ARGS(view, vec, sms));
  cr_assert(plan->blocks >= 1 && plan->blocks <= INT32_MAX, "blocks %" PRId64 " for " SHAPE_FORMAT, plan->blocks,
            SHAPE_ARGS(view, vec, sms));
  cr_assert_eq(plan->vec, vec);
  if (!view->channels_last) {
    const int64_t m = view->n * view->s;
    cr_assert(plan->chunk % 8 == 0 && plan->chunk <= MAX_PIECE_VALUES, "chunk %" PRId64 " for " SHAPE_FORMAT,
              plan->chunk, SHAPE_ARGS(view, vec, sms));
    cr_assert(plan->parts * plan->chunk >= m && (plan->parts - 1) * plan->chunk < m,
              "%" PRId64 " pieces of %" PRId64 " do not cover %" PRId64 " values once for " SHAPE_FORMAT, plan->parts,
              plan->chunk, m, SHAPE_ARGS(view, vec, sms));
    cr_assert_eq(plan->blocks, view->c * plan->parts);
    /* One wave at most, where the channels and the piece size limit allow it. */
    const int64_t target = (int64_t)sms * blocks_per_sm;
    if (view->c <= target && m <= MAX_PIECE_VALUES * (target / view->c))
      cr_assert(plan->blocks <= target, "%" PRId64 " blocks for %" PRId64 " slots for " SHAPE_FORMAT, plan->blocks,
                target, SHAPE_ARGS(view, vec, sms));
  } else {
    cr_assert(plan->tile_x * plan->tile_y == plan->threads, "tile %d x %d, threads %d for " SHAPE_FORMAT, plan->tile_x,
              plan->tile_y, plan->threads, SHAPE_ARGS(view, vec, sms));
    /* The block merge's shuffles and shared layout need whole warps across channels or whole rows in a warp. */
    cr_assert(plan->tile_x % 32 == 0 || (plan->tile_x < 32 && is_power_of_two(plan->tile_x)),
              "tile_x %d for " SHAPE_FORMAT, plan->tile_x, SHAPE_ARGS(view, vec, sms));
    const int64_t vectors = view->c / vec;
    cr_assert(plan->tiles * plan->tile_x >= vectors && (plan->tiles - 1) * plan->tile_x < vectors,
              "%" PRId64 " tiles of %d vectors for %" PRId64 " for " SHAPE_FORMAT, plan->tiles, plan->tile_x, vectors,
              SHAPE_ARGS(view, vec, sms));
    cr_assert(plan->rows_per_part <= MAX_PIECE_VALUES, "rows_per_part %" PRId64 " for " SHAPE_FORMAT,
              plan->rows_per_part, SHAPE_ARGS(view, vec, sms));
    cr_assert(plan->parts * plan->rows_per_part >= view->n && (plan->parts - 1) * plan->rows_per_part < view->n,
              "%" PRId64 " pieces of %" PRId64 " rows do not cover %" PRId64 " once for " SHAPE_FORMAT, plan->parts,
              plan->rows_per_part, view->n, SHAPE_ARGS(view, vec, sms));
    cr_assert_eq(plan->blocks, plan->tiles * plan->parts);
    /* Each level of the merge inside the kernel is one pass of the block: a channel per thread at most. */
    cr_assert((int64_t)plan->tile_x * vec <= plan->threads, "tile of %d x %d channels, %d threads for " SHAPE_FORMAT,
              plan->tile_x, vec, plan->threads, SHAPE_ARGS(view, vec, sms));
    /* The bands cover the pieces once, at most BNK_MERGE_BANDS of them, none empty. */
    const int64_t band_pieces = bnk_merge_band_pieces(plan->parts), bands = bnk_merge_bands(plan->parts);
    cr_assert(bands <= BNK_MERGE_BANDS && bands * band_pieces >= plan->parts && (bands - 1) * band_pieces < plan->parts,
              "%" PRId64 " bands of %" PRId64 " pieces for %" PRId64 " for " SHAPE_FORMAT, bands, band_pieces,
              plan->parts, SHAPE_ARGS(view, vec, sms));
    /* At least 4 chunks of BNK_UNROLL rows per thread when the rows allow that with a block on every SM;
     * otherwise about one chunk (at least half of one), when there are rows enough. */
    const int64_t chunk_rows = (int64_t)plan->tile_y * BNK_UNROLL;
    if (view->n / (4 * chunk_rows) >= ceil_div(sms, plan->tiles))
      cr_assert(plan->rows_per_part >= 4 * chunk_rows, "%" PRId64 " rows per piece of %d-row tiles for " SHAPE_FORMAT,
                plan->rows_per_part, plan->tile_y, SHAPE_ARGS(view, vec, sms));
    else if (view->n >= chunk_rows)
      cr_assert(2 * plan->rows_per_part >= chunk_rows, "%" PRId64 " rows per piece of %d-row tiles for " SHAPE_FORMAT,
                plan->rows_per_part, plan->tile_y, SHAPE_ARGS(view, vec, sms));
    /* No more pieces than one wave of the kernel's blocks per SM asks for, unless the piece size limit forces
     * them. */
    if (view->n <= MAX_PIECE_VALUES)
      cr_assert(plan->parts <= ceil_div((int64_t)sms * blocks_per_sm, plan->tiles),
                "%" PRId64 " pieces of %" PRId64 " tiles for " SHAPE_FORMAT, plan->parts, plan->tiles,
                SHAPE_ARGS(view, vec, sms));
  }
}

/* Every array a launch carves lies inside what the size query asked for, 256-byte aligned. */
static void check_workspaces(const bnk_view *view, int vec, int sms, int blocks_per_sm, const bnk_reduce_plan *plan) {
  const int blocks_per_sm_by_width[2] = {blocks_per_sm, blocks_per_sm};
  const int64_t bound = bnk__plan_parts_bound(view, sms, blocks_per_sm_by_width);
  cr_assert(bound >= plan->parts, "parts bound %" PRId64 " < parts %" PRId64 " for " SHAPE_FORMAT, bound, plan->parts,
            SHAPE_ARGS(view, vec, sms));
  const uintptr_t base = 1 << 20;
  const uintptr_t channels = (uintptr_t)view->c * sizeof(float);
  const uintptr_t pieces = (uintptr_t)(plan->parts * view->c) * sizeof(float);

  const size_t stats_bytes = bnk__stats_workspace_bytes(view, bound);
  const bnk_stats_workspace stats = bnk__stats_workspace_carve((void *)base, view, plan->parts);
  const struct {
    const float *array;
    uintptr_t bytes;
  } stats_arrays[] = {{stats.shift, channels}, {stats.dmean, channels}, {stats.invstd, channels},
                      {stats.count, pieces},   {stats.mean, pieces},    {stats.m2, pieces}};
  for (size_t i = 0; i < sizeof stats_arrays / sizeof stats_arrays[0]; ++i) {
    const uintptr_t start = (uintptr_t)stats_arrays[i].array;
    cr_assert(start % 256 == 0 && start >= base && start + stats_arrays[i].bytes <= base + stats_bytes,
              "statistics array %zu at +%" PRIuPTR " (%" PRIuPTR " bytes) outside the %zu queried for " SHAPE_FORMAT, i,
              start - base, stats_arrays[i].bytes, stats_bytes, SHAPE_ARGS(view, vec, sms));
  }

  const size_t backward_bytes = bnk__backward_workspace_bytes(view, bound);
  const bnk_backward_workspace backward = bnk__backward_workspace_carve((void *)base, view, plan->parts);
  const struct {
    const float *array;
    uintptr_t bytes;
  } backward_arrays[] = {{backward.dy_scale, channels},
                         {backward.xmu_scale, channels},
                         {backward.bias, channels},
                         {backward.sum_dy, pieces},
                         {backward.sum_dy_xmu, pieces}};
  for (size_t i = 0; i < sizeof backward_arrays / sizeof backward_arrays[0]; ++i) {
    const uintptr_t start = (uintptr_t)backward_arrays[i].array;
    cr_assert(start % 256 == 0 && start >= base && start + backward_arrays[i].bytes <= base + backward_bytes,
              "backward array %zu at +%" PRIuPTR " (%" PRIuPTR " bytes) outside the %zu queried for " SHAPE_FORMAT, i,
              start - base, backward_arrays[i].bytes, backward_bytes, SHAPE_ARGS(view, vec, sms));
  }
}

Test(plan, reduction_plans_keep_their_invariants) {
  static const int64_t batches[] = {1, 2, 7, 32, 256};
  static const int64_t channel_counts[] = {1, 3, 8, 24, 64, 100, 256, 1000, 2048, 4104, 70000};
  static const int64_t spatial_sizes[] = {1, 7 * 7, 14 * 14, 56 * 56, 112 * 112, 1 << 22};
  static const int sm_counts[] = {1, 8, 132};
  static const int blocks_per_sm_counts[] = {2, 8};
  static const int dtypes[] = {BNK_FLOAT32, BNK_FLOAT16};
  int64_t checked = 0;
  for (size_t b = 0; b < sizeof batches / sizeof batches[0]; ++b)
    for (size_t c = 0; c < sizeof channel_counts / sizeof channel_counts[0]; ++c)
      for (size_t s = 0; s < sizeof spatial_sizes / sizeof spatial_sizes[0]; ++s)
        for (int channels_last = 0; channels_last < 2; ++channels_last)
          for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; ++d)
            for (size_t g = 0; g < sizeof sm_counts / sizeof sm_counts[0]; ++g) {
              /* Keep the tensor under 2^34 elements: the largest a real call could hold. */
              if (batches[b] * channel_counts[c] * spatial_sizes[s] > ((int64_t)1 << 34)) continue;
              bnk_view view = {batches[b], channel_counts[c], spatial_sizes[s], channels_last, dtypes[d]};
              if (channels_last) { /* x[n][c] with n = N x spatial */
                view.n = batches[b] * spatial_sizes[s];
                view.s = 1;
              }
              const int wide = bnk__dtype_vec(view.dtype);
              const int vecs[2] = {1, wide};
              for (int v = 0; v < (bnk__reduce_vec_fits(&view, wide) ? 2 : 1); ++v)
                for (int k = 0; k < 2; ++k) {
                  const int blocks_per_sm = blocks_per_sm_counts[k];
                  const bnk_reduce_plan plan = bnk__plan_reduce(&view, vecs[v], sm_counts[g], blocks_per_sm,
                                                                bnk_reduction_tile_vectors(vecs[v]));
                  check_pieces(&view, vecs[v], sm_counts[g], blocks_per_sm, &plan);
                  check_workspaces(&view, vecs[v], sm_counts[g], blocks_per_sm, &plan);
                  ++checked;
                }
            }
  cr_assert(checked > 1000, "only %" PRId64 " plans checked", checked);
}

/* The reductions' vector width: channels-first any S >= vec whose C x S is whole vectors (heads and tails
 * peeled), channels-last whole vectors of C; the persistent kernels' width only for whole vectors of the
 * contiguous extent; never with a misaligned pointer. */
Test(plan, vector_width_rules) {
  static _Alignas(16) const char aligned[32] = {0};
  const void *good[2] = {aligned, aligned + 16};
  const void *bad[2] = {aligned, aligned + 2};
  static const struct {
    int channels_last, dtype;
    int64_t n, c, s;
    int reduce_vec, whole_run_vec;
  } cases[] = {
      {0, BNK_FLOAT16, 32, 64, 49, 8, 1},   /* 7x7, C x S = 3136: peeled */
      {0, BNK_FLOAT16, 32, 256, 196, 8, 1}, /* 14x14 */
      {0, BNK_FLOAT16, 32, 63, 49, 1, 1},   /* C x S odd: runs start at every misalignment */
      {0, BNK_FLOAT16, 32, 10, 50, 1, 1},   /* C x S = 500, not a multiple of 8 */
      {0, BNK_FLOAT16, 32, 16, 64, 8, 8},   /* whole vectors */
      {0, BNK_FLOAT16, 32, 8, 9, 8, 1},     /* S just past a vector */
      {0, BNK_FLOAT16, 32, 64, 7, 1, 1},    /* S below a vector: the head would not fit */
      {0, BNK_FLOAT16, 32, 64, 1, 1, 1},      {0, BNK_FLOAT32, 32, 64, 49, 4, 1},
      {0, BNK_FLOAT32, 32, 6, 6, 4, 1},       {0, BNK_FLOAT32, 32, 3, 3, 1, 1},
      {0, BNK_BFLOAT16, 32, 1024, 49, 8, 1},  {1, BNK_FLOAT16, 32 * 49, 64, 1, 8, 8},
      {1, BNK_FLOAT16, 32 * 49, 60, 1, 1, 1}, {1, BNK_FLOAT32, 32 * 49, 6, 1, 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    const bnk_view view = {cases[i].n, cases[i].c, cases[i].s, cases[i].channels_last, cases[i].dtype};
    const int vec = bnk__choose_vec(&view, good, 2), whole = bnk__choose_whole_run_vec(&view, good, 2);
    cr_expect_eq(vec, cases[i].reduce_vec, "reductions' width %d for " SHAPE_FORMAT, vec, SHAPE_ARGS(&view, 0, 0));
    cr_expect_eq(whole, cases[i].whole_run_vec, "persistent width %d for " SHAPE_FORMAT, whole,
                 SHAPE_ARGS(&view, 0, 0));
    cr_expect_eq(bnk__choose_vec(&view, bad, 2), 1, "misaligned pointer for " SHAPE_FORMAT, SHAPE_ARGS(&view, 0, 0));
    cr_expect_eq(bnk__choose_whole_run_vec(&view, bad, 2), 1, "misaligned pointer for " SHAPE_FORMAT,
                 SHAPE_ARGS(&view, 0, 0));
  }
}

/* The grids come from each kernel's occupancy on the context's device (the emulation answers it from the sm_90
 * resource table, emu/src/kernel_resources_sm90.inc), not from a fixed 8 blocks per SM: a big channels-first
 * normalize pass and statistics reduction fill exactly occupancy x SMs blocks, also under an SM limit. */
Test(plan, big_grids_are_occupancy_times_sms) {
  bnk_context *ctx = NULL;
  cr_assert_eq(bnk_context_create(&ctx, -1), BNK_SUCCESS, "%s", bnk_last_error_message());
  int device_sms = 0;
  cr_assert_eq(cudaDeviceGetAttribute(&device_sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  const int limits[2] = {0, device_sms > 3 ? 3 : 1};
  const int dtypes[3] = {BNK_FLOAT32, BNK_FLOAT16, BNK_BFLOAT16};
  for (int l = 0; l < 2; ++l) {
    cr_assert_eq(bnk_context_set_sm_limit(ctx, limits[l]), BNK_SUCCESS);
    const int sms = limits[l] == 0 ? device_sms : limits[l];
    for (int d = 0; d < 3; ++d)
      for (int variant = 0; variant < BNK_OCCUPANCY_VARIANTS; ++variant) {
        const int blocks_per_sm = ctx->occupancy.blocks_per_sm[BNK_FAMILY_NORMALIZE][0][dtypes[d]][1][variant];
        /* At least one block of 256 threads per SM, at most the 2048 thread slots. */
        cr_assert(blocks_per_sm >= 1 && blocks_per_sm <= 8, "normalize dtype %d variant %d: %d blocks per SM",
                  dtypes[d], variant, blocks_per_sm);
        /* blocks_per_sm x SMs channels of 4 tiles (256 vectors) each: 4 tiles per block fill one wave. */
        const bnk_view big = {1, (int64_t)blocks_per_sm * sms, 4 * BNK_STREAM_THREADS * bnk__dtype_vec(dtypes[d]), 0,
                              dtypes[d]};
        static _Alignas(16) const char aligned[16] = {0};
        const void *pointers[2] = {aligned, aligned};
        const bnk_elementwise_plan plan =
            bnk__elementwise_plan_of(ctx, &big, pointers, 2, BNK_FAMILY_NORMALIZE, variant);
        cr_assert_eq(plan.blocks, (int64_t)blocks_per_sm * sms,
                     "normalize dtype %d variant %d on %d SMs: %" PRId64 " blocks, occupancy %d per SM", dtypes[d],
                     variant, sms, plan.blocks, blocks_per_sm);
      }
    for (int d = 0; d < 3; ++d) {
      const int blocks_per_sm = ctx->occupancy.blocks_per_sm[BNK_FAMILY_STATS][0][dtypes[d]][1][0];
      cr_assert(blocks_per_sm >= 1 && blocks_per_sm <= 8, "statistics dtype %d: %d blocks per SM", dtypes[d],
                blocks_per_sm);
      /* One channel of occupancy x SMs pieces of 8192 values: the plan cuts it into exactly that many. */
      const int64_t target = (int64_t)blocks_per_sm * sms;
      const bnk_view channel = {1, 1, target * 8192, 0, dtypes[d]};
      const bnk_reduce_plan plan = bnk__reduce_plan_of(ctx, BNK_FAMILY_STATS, 0, &channel, bnk__dtype_vec(dtypes[d]));
      cr_assert_eq(plan.blocks, target, "statistics dtype %d on %d SMs: %" PRId64 " blocks, occupancy %d per SM",
                   dtypes[d], sms, plan.blocks, blocks_per_sm);
    }
  }
  bnk_context_destroy(ctx);
}

/* The folding kernel's grid is its own occupancy x SMs (not 8 blocks per SM) for a big weight, one block per 256
 * items for a small one, for both bias types. */
Test(plan, fold_grid_is_its_occupancy_times_sms) {
  bnk_context *ctx = NULL;
  cr_assert_eq(bnk_context_create(&ctx, -1), BNK_SUCCESS, "%s", bnk_last_error_message());
  const int dtypes[3] = {BNK_FLOAT32, BNK_FLOAT16, BNK_BFLOAT16};
  for (int d = 0; d < 3; ++d)
    for (int float_bias = 0; float_bias < 2; ++float_bias) {
      const int bias_dtype = float_bias ? BNK_FLOAT32 : dtypes[d];
      const int blocks_per_sm = ctx->occupancy.blocks_per_sm[BNK_FAMILY_FOLD][0][dtypes[d]][0][float_bias];
      cr_assert(blocks_per_sm >= 1 && blocks_per_sm <= 8, "fold dtype %d bias %d: %d blocks per SM", dtypes[d],
                bias_dtype, blocks_per_sm);
      const int64_t resident = (int64_t)blocks_per_sm * ctx->sm_count;
      cr_expect_eq(bnk__fold_blocks(ctx, resident * BNK_STREAM_THREADS * 3, dtypes[d], bias_dtype), resident,
                   "fold dtype %d bias %d", dtypes[d], bias_dtype);
      cr_expect_eq(bnk__fold_blocks(ctx, 1000, dtypes[d], bias_dtype), 4, "fold dtype %d bias %d", dtypes[d],
                   bias_dtype);
    }
  bnk_context_destroy(ctx);
}

/* No channels-first elementwise plan's run table exceeds BNK_TABLE_MAX, the size the occupancy is queried at. */
Test(plan, run_tables_fit_the_queried_shared_memory) {
  static const int64_t spatial_sizes[] = {1, 2, 3, 5, 7, 49, 196, 3136, 1 << 20};
  static const int64_t channel_counts[] = {1, 3, 64, 2048};
  static const int dtypes[] = {BNK_FLOAT32, BNK_FLOAT16};
  static _Alignas(16) const char aligned[32] = {0};
  const void *good[1] = {aligned}, *bad[1] = {aligned + 2};
  const int blocks_per_sm[2] = {8, 4};
  for (size_t s = 0; s < sizeof spatial_sizes / sizeof spatial_sizes[0]; ++s)
    for (size_t c = 0; c < sizeof channel_counts / sizeof channel_counts[0]; ++c)
      for (size_t d = 0; d < 2; ++d)
        for (int a = 0; a < 2; ++a) {
          const bnk_view view = {32, channel_counts[c], spatial_sizes[s], 0, dtypes[d]};
          const bnk_elementwise_plan plan = bnk__plan_elementwise(&view, a ? good : bad, 1, 132, blocks_per_sm);
          cr_expect(plan.table_runs >= 1 && plan.table_runs <= BNK_TABLE_MAX(plan.vec),
                    "%d table entries (most %d) for " SHAPE_FORMAT, plan.table_runs, BNK_TABLE_MAX(plan.vec),
                    SHAPE_ARGS(&view, plan.vec, 132));
        }
}
