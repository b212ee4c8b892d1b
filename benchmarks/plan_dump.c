/* bnk-plan: prints, as JSON, the launches that bnk's own planning code chooses for each op on each shape, for
 * benchmarks/perf_model.py. Built against bnk_emu, so it needs no GPU, and it calls the library's planning
 * functions (host/plan.c) rather than a copy of them, so the model follows the library when the plan changes.
 *
 *   bnk-plan [--sm-count N] LAYOUT:DTYPE:N,C[,D1[,D2[,D3]]] ...     e.g. nchw:f16:32,64,56,56
 *
 * Every tensor is taken as 16-byte aligned (cudaMalloc's alignment is 256 bytes), so the vector width is
 * the one the launch picks for an aligned tensor of that shape. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/internal.h"

typedef struct plan_launch {
  char kernel[96]; /* the kernel's demangled name as benchmarks/sass_report.py prints it */
  int64_t blocks;
  int threads;
} plan_launch;

#define MAX_LAUNCHES 4

/* The op's persistent path, where it has one: its one cooperative launch, the grid barriers inside it, the
 * blocks per SM its kernel holds (the occupancy query, which the emulation answers from the kernel's sm_90
 * resources) and whether host/persistent.c's capacity rule takes it for this shape. */
typedef struct persistent_plan {
  int exists;
  int fits;
  int blocks_per_sm;
  int team;         /* threads that own a channel whole (bnk_persistent_team); 0: pieces across blocks */
  int shared_depth; /* vectors (rows) per thread cached in shared memory beyond the registers */
  int grid_syncs;
  int64_t parts;
  plan_launch launch;
} persistent_plan;

typedef struct op_plan {
  int vec;
  int64_t parts; /* pieces per channel of the reduction (0: none) */
  /* channels that the last block of a group merges inside the reduction kernel; 0: no reduction, or a merge
   * kernel of its own merges */
  int64_t merged_channels;
  /* channels-last, merged inside: the bands of pieces of its first level (bnk_merge_bands); 0 otherwise */
  int64_t merge_bands;
  int launches;
  plan_launch launch[MAX_LAUNCHES]; /* the two-pass path's (the only path of an op without a persistent one) */
  persistent_plan persistent;
} op_plan;

enum { OP_FWD_TRAIN, OP_FWD_INFER, OP_BWD, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"fwd_train", "fwd_infer", "bwd"};

static const char *storage_type(int dtype) {
  return dtype == BNK_FLOAT32 ? "float" : dtype == BNK_FLOAT16 ? "__half" : "__nv_bfloat16";
}

/* A reduction whose last blocks merge its pieces inside it (bnk_merge_groups). */
static void merged_inside(op_plan *plan, const bnk_view *view, const bnk_reduce_plan *reduce) {
  plan->merged_channels = bnk_merge_group_channels(view, reduce);
  plan->merge_bands = view->channels_last ? bnk_merge_bands(reduce->parts) : 0;
}

static void add_launch(op_plan *plan, int64_t blocks, int threads, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void add_launch(op_plan *plan, int64_t blocks, int threads, const char *format, ...) {
  plan_launch *launch = &plan->launch[plan->launches++];
  va_list args;
  va_start(args, format);
  vsnprintf(launch->kernel, sizeof launch->kernel, format, args);
  va_end(args);
  launch->blocks = blocks;
  launch->threads = threads;
}

/* An op's persistent kernel (host/persistent.c; kernels/persistent.cu, persistent_backward.cu): bnk__plan_persistent's
 * grid for the op's cache depth, the occupancy of its plain-epilogue kernel for this dtype, layout, width and team
 * (bnk_persistent_team), and its grid barriers: two (before and after the merge) where pieces of a channel lie
 * in several blocks, none where a team owns its channels (momentum running statistics; cumulative ones add one). */
static persistent_plan persistent_op_plan(int op, const bnk_view *view, const void *const *pointers, int sm_count,
                                          const bnk_context *ctx, const char *type, const char *layout) {
  const int vec = bnk__choose_whole_run_vec(view, pointers, 5);
  const int forward = op == OP_FWD_TRAIN;
  const int cache = forward ? BNK_PERSISTENT_CACHE : BNK_PERSISTENT_BACKWARD_CACHE;
  const int team = bnk_persistent_team(view, vec, cache);
  persistent_plan plan = {.exists = 1, .team = team, .grid_syncs = team != 0 ? 0 : 2};
  bnk_reduce_plan reduce;
  const cudaError_t error =
      bnk__plan_persistent_op(view, vec, !forward, forward ? BNK_EPILOGUE_NONE : BNK_GRAD_PLAIN, sm_count,
                              ctx->persistent_occupancy, &reduce, &plan.blocks_per_sm, &plan.fits);
  if (error != cudaSuccess) {
    fprintf(stderr, "bnk-plan: the occupancy query of the persistent %s failed\n", forward ? "forward" : "backward");
    exit(1);
  }
  plan.shared_depth = reduce.shared_depth;
  plan.parts = reduce.parts;
  if (team != 0)
    snprintf(plan.launch.kernel, sizeof plan.launch.kernel, "persistent_%s_team<%s, %d, 0, %d>",
             forward ? "forward" : "backward", type, vec, team);
  else
    snprintf(plan.launch.kernel, sizeof plan.launch.kernel, "persistent_%s_channels_%s<%s, %d, 0>",
             forward ? "forward" : "backward", layout, type, vec);
  plan.launch.blocks = reduce.blocks;
  plan.launch.threads = reduce.threads;
  return plan;
}

/* The one place that knows which kernels each op launches and how their grids come from the plan: today
 * (host/forward.c, host/backward.c, host/persistent.c, kernels/stats.cu, normalize.cu, backward.cu, persistent.cu,
 * persistent_backward.cu) a training forward is one persistent kernel where it fits, else statistics (with the
 * merge in its last blocks) + normalize, an inference forward one normalize, a backward
 * one persistent kernel or sums (with the merge) + dx; where the reduction does not merge inside
 * (bnk__merge_counters_of) the finalize or merge kernel, one warp per channel, runs between them. Every grid is the
 * library's own plan on sm_count SMs, each holding as many blocks of the kernel as its sm_90 occupancy says (the
 * emulation's answer from the sm_90 resource table). Adapt this function, and only it, when the launchers change. */
static op_plan plan_of_op(int op, const bnk_view *view, int sm_count, const bnk_context *ctx) {
  const bnk_occupancy_table *occupancy = &ctx->occupancy;
  static _Alignas(16) const char aligned[16] = {0};
  const void *pointers[5] = {aligned, aligned, aligned, aligned, aligned};
  const int vec = bnk__choose_vec(view, pointers, 5);
  const int layout_index = view->channels_last != 0;
  const int *stats_occupancy = occupancy->blocks_per_sm[BNK_FAMILY_STATS][layout_index][view->dtype][vec != 1];
  const int *sums_occupancy = occupancy->blocks_per_sm[BNK_FAMILY_BACKWARD_SUMS][layout_index][view->dtype][vec != 1];
  const int normalize_variant = bnk_normalize_variant(BNK_EPILOGUE_NONE, op == OP_FWD_INFER);
  int normalize_occupancy[2], dx_occupancy[2];
  for (int wide = 0; wide < 2; ++wide) {
    normalize_occupancy[wide] =
        occupancy->blocks_per_sm[BNK_FAMILY_NORMALIZE][layout_index][view->dtype][wide][normalize_variant];
    dx_occupancy[wide] = occupancy->blocks_per_sm[BNK_FAMILY_DX][layout_index][view->dtype][wide][BNK_GRAD_PLAIN];
  }
  const char *type = storage_type(view->dtype);
  const char *layout = view->channels_last ? "last" : "first";
  /* The merge kernels: a warp per channel channels-first, a thread per channel channels-last. */
  const int64_t per_channel_threads = view->channels_last ? 1 : 32;
  const int64_t per_channel_blocks = (view->c * per_channel_threads + BNK_STREAM_THREADS - 1) / BNK_STREAM_THREADS;

  op_plan plan = {.vec = vec};
  switch (op) {
  case OP_FWD_TRAIN:
  case OP_FWD_INFER: {
    const bnk_elementwise_plan normalize = bnk__plan_elementwise(view, pointers, 2, sm_count, normalize_occupancy);
    if (op == OP_FWD_TRAIN) {
      const bnk_reduce_plan reduce =
          bnk__plan_reduce(view, vec, sm_count, stats_occupancy[0], bnk_reduction_tile_vectors(vec));
      plan.parts = reduce.parts;
      add_launch(&plan, reduce.blocks, reduce.threads, "stats_channels_%s<%s, %d>", layout, type, vec);
      if (bnk__merge_counters_of(ctx, view, &reduce) == NULL)
        add_launch(&plan, per_channel_blocks, BNK_STREAM_THREADS, "finalize_stats%s",
                   view->channels_last ? "_channels_last" : "");
      else merged_inside(&plan, view, &reduce);
      plan.persistent = persistent_op_plan(op, view, pointers, sm_count, ctx, type, layout);
    }
    add_launch(&plan, normalize.blocks, normalize.threads, "normalize_channels_%s<%s, %d, %s, 0>", layout, type,
               normalize.vec, op == OP_FWD_INFER ? "true" : "false");
    break;
  }
  default: {
    const bnk_reduce_plan reduce =
        bnk__plan_reduce(view, vec, sm_count, sums_occupancy[BNK_GRAD_PLAIN], bnk_reduction_tile_vectors(vec));
    const bnk_elementwise_plan dx = bnk__plan_elementwise(view, pointers, 3, sm_count, dx_occupancy);
    plan.parts = reduce.parts;
    add_launch(&plan, reduce.blocks, reduce.threads, "backward_sums_channels_%s<%s, %d, 0>", layout, type, vec);
    if (bnk__merge_counters_of(ctx, view, &reduce) == NULL)
      add_launch(&plan, per_channel_blocks, BNK_STREAM_THREADS, "merge_backward_sums%s",
                 view->channels_last ? "_channels_last" : "");
    else merged_inside(&plan, view, &reduce);
    add_launch(&plan, dx.blocks, dx.threads, "backward_dx_channels_%s<%s, %d, 0>", layout, type, dx.vec);
    plan.persistent = persistent_op_plan(op, view, pointers, sm_count, ctx, type, layout);
    break;
  }
  }
  return plan;
}

static void usage_error(const char *what, const char *value) {
  fprintf(stderr,
          "bnk-plan: %s: '%s'\nusage: bnk-plan [--sm-count N] LAYOUT:DTYPE:N,C[,D1[,D2[,D3]]] ...\n"
          "  LAYOUT nchw | nhwc, DTYPE f32 | f16 | bf16\n",
          what, value);
  exit(2);
}

static int64_t parse_int(const char *text, const char **end, const char *argument) {
  char *stop;
  errno = 0;
  const long long value = strtoll(text, &stop, 10);
  if (stop == text || errno != 0 || value < 0) usage_error("bad number", argument);
  *end = stop;
  return (int64_t)value;
}

static bnk_tensor_desc parse_shape(const char *argument) {
  const char *colon1 = strchr(argument, ':');
  const char *colon2 = colon1 ? strchr(colon1 + 1, ':') : NULL;
  if (colon2 == NULL) usage_error("expected LAYOUT:DTYPE:DIMS", argument);
  bnk_layout layout;
  if (strncmp(argument, "nchw:", 5) == 0) layout = BNK_NCHW;
  else if (strncmp(argument, "nhwc:", 5) == 0) layout = BNK_NHWC;
  else usage_error("layout must be nchw or nhwc", argument);
  const size_t dtype_length = (size_t)(colon2 - colon1 - 1);
  bnk_dtype dtype;
  if (dtype_length == 3 && strncmp(colon1 + 1, "f32", 3) == 0) dtype = BNK_FLOAT32;
  else if (dtype_length == 3 && strncmp(colon1 + 1, "f16", 3) == 0) dtype = BNK_FLOAT16;
  else if (dtype_length == 4 && strncmp(colon1 + 1, "bf16", 4) == 0) dtype = BNK_BFLOAT16;
  else usage_error("dtype must be f32, f16 or bf16", argument);
  int64_t dims[2 + BNK_MAX_SPATIAL_DIMS];
  int count = 0;
  const char *p = colon2 + 1;
  for (;;) {
    if (count == 2 + BNK_MAX_SPATIAL_DIMS) usage_error("too many dimensions", argument);
    dims[count++] = parse_int(p, &p, argument);
    if (*p == '\0') break;
    if (*p != ',') usage_error("dimensions are separated by commas", argument);
    ++p;
  }
  if (count < 2) usage_error("expected at least N,C", argument);
  bnk_tensor_desc desc;
  if (bnk_tensor_desc_init(&desc, dtype, layout, dims[0], dims[1], count - 2, dims + 2) != BNK_SUCCESS)
    usage_error(bnk_last_error_message(), argument);
  return desc;
}

int main(int argc, char **argv) {
  int sm_count = 132;
  int first_shape = 1;
  if (argc > 2 && strcmp(argv[1], "--sm-count") == 0) {
    const char *end;
    sm_count = (int)parse_int(argv[2], &end, argv[2]);
    if (*end != '\0' || sm_count <= 0) usage_error("--sm-count must be a positive integer", argv[2]);
    first_shape = 3;
  }
  if (first_shape >= argc) usage_error("no shape given", "");
  /* Every shape is checked before anything is printed, so a bad argument leaves no partial JSON. */
  bnk_tensor_desc *descs = calloc((size_t)argc, sizeof *descs);
  if (descs == NULL) usage_error("out of memory", "");
  for (int i = first_shape; i < argc; ++i) descs[i] = parse_shape(argv[i]);
  /* A context of the emulated sm_90 device, for its kernels' occupancy only. */
  bnk_context *ctx = NULL;
  if (bnk_context_create(&ctx, -1) != BNK_SUCCESS) usage_error("no emulated device", bnk_last_error_message());
  printf("{\"sm_count\": %d, \"stream_threads\": %d, \"shapes\": [", sm_count, BNK_STREAM_THREADS);
  for (int i = first_shape; i < argc; ++i) {
    const bnk_view view = bnk__view_of(&descs[i]);
    printf("%s\n {\"shape\": \"%s\", \"n\": %" PRId64 ", \"c\": %" PRId64 ", \"s\": %" PRId64
           ", \"channels_last\": %d, \"elements\": %" PRId64 ", \"ops\": {",
           i > first_shape ? "," : "", argv[i], view.n, view.c, view.s, view.channels_last, view.n * view.c * view.s);
    for (int op = 0; op < OP_COUNT; ++op) {
      const op_plan plan = plan_of_op(op, &view, sm_count, ctx);
      printf("%s\n  \"%s\": {\"vec\": %d, \"parts\": %" PRId64 ", \"merged_channels\": %" PRId64
             ", \"merge_bands\": %" PRId64 ", \"launches\": [",
             op ? "," : "", op_names[op], plan.vec, plan.parts, plan.merged_channels, plan.merge_bands);
      for (int l = 0; l < plan.launches; ++l)
        printf("%s{\"kernel\": \"%s\", \"blocks\": %" PRId64 ", \"threads\": %d}", l ? ", " : "", plan.launch[l].kernel,
               plan.launch[l].blocks, plan.launch[l].threads);
      printf("]");
      const persistent_plan *persistent = &plan.persistent;
      if (persistent->exists)
        printf(", \"persistent\": {\"fits\": %s, \"blocks_per_sm\": %d, \"team\": %d, \"shared_depth\": %d, "
               "\"grid_syncs\": %d, \"parts\": %" PRId64 ", \"kernel\": \"%s\", \"blocks\": %" PRId64
               ", \"threads\": %d}",
               persistent->fits ? "true" : "false", persistent->blocks_per_sm, persistent->team,
               persistent->shared_depth, persistent->grid_syncs, persistent->parts, persistent->launch.kernel,
               persistent->launch.blocks, persistent->launch.threads);
      printf("}");
    }
    printf("}}");
  }
  printf("\n]}\n");
  bnk_context_destroy(ctx);
  free(descs);
  return 0;
}
