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
  int grid_syncs;
  int64_t parts;
  plan_launch launch;
} persistent_plan;

typedef struct op_plan {
  int vec;
  int64_t parts; /* pieces per channel of the reduction (0: none) */
  int launches;
  plan_launch launch[MAX_LAUNCHES]; /* the two-pass path's (the only path of an op without a persistent one) */
  persistent_plan persistent;
} op_plan;

enum { OP_FWD_TRAIN, OP_FWD_INFER, OP_BWD, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"fwd_train", "fwd_infer", "bwd"};

static const char *storage_type(int dtype) {
  return dtype == BNK_FLOAT32 ? "float" : dtype == BNK_FLOAT16 ? "__half" : "__nv_bfloat16";
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

/* The persistent training forward (host/persistent.c, kernels/persistent.cu): bnk__plan_persistent's grid, the
 * occupancy of the plain-epilogue kernel for this dtype, layout and width, and its two grid barriers (before and
 * after the merge). */
static persistent_plan persistent_forward_plan(const bnk_view *view, int vec, int sm_count, const char *type,
                                               const char *layout) {
  persistent_plan plan = {.exists = 1, .grid_syncs = 2};
  if (bnk__persistent_forward_occupancy(view, vec, BNK_EPILOGUE_NONE, &plan.blocks_per_sm) != cudaSuccess) {
    fprintf(stderr, "bnk-plan: the occupancy query of the persistent forward failed\n");
    exit(1);
  }
  bnk_reduce_plan reduce;
  plan.fits = bnk__plan_persistent(view, vec, sm_count, plan.blocks_per_sm, &reduce);
  plan.parts = reduce.parts;
  snprintf(plan.launch.kernel, sizeof plan.launch.kernel, "persistent_forward_channels_%s<%s, %d, 0>", layout, type,
           vec);
  plan.launch.blocks = reduce.blocks;
  plan.launch.threads = reduce.threads;
  return plan;
}

/* The one place that knows which kernels each op launches and how their grids come from the plan: today
 * (host/forward.c, host/backward.c, host/persistent.c, kernels/stats.cu, normalize.cu, backward.cu,
 * persistent.cu) a training forward is statistics + finalize + normalize on the two-pass path and one
 * persistent kernel on the other, an inference forward one normalize, a backward sums + merge + dx,
 * the finalize and merge kernels one warp per channel, and the channels-first elementwise passes a
 * grid-stride loop. Adapt this function, and only it, when the launchers change. */
static op_plan plan_of_op(int op, const bnk_view *view, int sm_count) {
  static _Alignas(16) const char aligned[16] = {0};
  const void *pointers[5] = {aligned, aligned, aligned, aligned, aligned};
  const int vec = bnk__choose_vec(view, pointers, 5);
  const bnk_reduce_plan reduce = bnk__plan_reduce(view, vec, sm_count);
  const char *type = storage_type(view->dtype);
  const char *layout = view->channels_last ? "last" : "first";
  const int64_t vecs = view->n * view->c * view->s / vec;
  const int64_t elementwise_blocks = view->channels_last ? reduce.blocks : bnk__plan_grid_stride_blocks(vecs, sm_count);
  const int elementwise_threads = view->channels_last ? reduce.threads : BNK_STREAM_THREADS;
  const int64_t per_channel_blocks = (view->c + BNK_STREAM_THREADS / 32 - 1) / (BNK_STREAM_THREADS / 32);

  op_plan plan = {.vec = vec};
  switch (op) {
  case OP_FWD_TRAIN:
    plan.parts = reduce.parts;
    add_launch(&plan, reduce.blocks, reduce.threads, "stats_channels_%s<%s, %d>", layout, type, vec);
    add_launch(&plan, per_channel_blocks, BNK_STREAM_THREADS, "finalize_stats");
    add_launch(&plan, elementwise_blocks, elementwise_threads, "normalize_channels_%s<%s, %d, false, 0>", layout, type,
               vec);
    plan.persistent = persistent_forward_plan(view, vec, sm_count, type, layout);
    break;
  case OP_FWD_INFER:
    add_launch(&plan, elementwise_blocks, elementwise_threads, "normalize_channels_%s<%s, %d, true, 0>", layout, type,
               vec);
    break;
  default:
    plan.parts = reduce.parts;
    add_launch(&plan, reduce.blocks, reduce.threads, "backward_sums_channels_%s<%s, %d, 0>", layout, type, vec);
    add_launch(&plan, per_channel_blocks, BNK_STREAM_THREADS, "merge_backward_sums");
    add_launch(&plan, elementwise_blocks, elementwise_threads, "backward_dx_channels_%s<%s, %d, 0>", layout, type, vec);
    break;
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
  printf("{\"sm_count\": %d, \"stream_threads\": %d, \"shapes\": [", sm_count, BNK_STREAM_THREADS);
  for (int i = first_shape; i < argc; ++i) {
    const bnk_view view = bnk__view_of(&descs[i]);
    printf("%s\n {\"shape\": \"%s\", \"n\": %" PRId64 ", \"c\": %" PRId64 ", \"s\": %" PRId64
           ", \"channels_last\": %d, \"elements\": %" PRId64 ", \"ops\": {",
           i > first_shape ? "," : "", argv[i], view.n, view.c, view.s, view.channels_last, view.n * view.c * view.s);
    for (int op = 0; op < OP_COUNT; ++op) {
      const op_plan plan = plan_of_op(op, &view, sm_count);
      printf("%s\n  \"%s\": {\"vec\": %d, \"parts\": %" PRId64 ", \"launches\": [", op ? "," : "", op_names[op],
             plan.vec, plan.parts);
      for (int l = 0; l < plan.launches; ++l)
        printf("%s{\"kernel\": \"%s\", \"blocks\": %" PRId64 ", \"threads\": %d}", l ? ", " : "", plan.launch[l].kernel,
               plan.launch[l].blocks, plan.launch[l].threads);
      printf("]");
      const persistent_plan *persistent = &plan.persistent;
      if (persistent->exists)
        printf(", \"persistent\": {\"fits\": %s, \"blocks_per_sm\": %d, \"grid_syncs\": %d, \"parts\": %" PRId64
               ", \"kernel\": \"%s\", \"blocks\": %" PRId64 ", \"threads\": %d}",
               persistent->fits ? "true" : "false", persistent->blocks_per_sm, persistent->grid_syncs,
               persistent->parts, persistent->launch.kernel, persistent->launch.blocks, persistent->launch.threads);
      printf("}");
    }
    printf("}}");
  }
  printf("\n]}\n");
  free(descs);
  return 0;
}
