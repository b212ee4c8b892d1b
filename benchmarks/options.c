/* The command line: options, name lists, shapes, and the shape presets they expand to. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchmarks/bench.h"
#include "tests/storage.h"

/* The distinct batch-normalization layers of ResNet-50 as (C, H, W), at every batch of --batch. */
static const int64_t resnet50_layers[][3] = {
    {64, 112, 112}, {64, 56, 56},  {256, 56, 56},  {128, 56, 56}, {128, 28, 28}, {512, 28, 28},
    {256, 28, 28},  {256, 14, 14}, {1024, 14, 14}, {512, 14, 14}, {512, 7, 7},   {2048, 7, 7},
};
#define DEFAULT_BATCH 32

/* BatchNorm1d, (N, C): N from 1 (inference only: training needs more than one value per channel) to a
 * million rows, across 65535 and 65536, where a grid dimension bound to N runs out. */
static const int64_t bn1d_shapes[][2] = {
    {1, 256}, {32, 256}, {256, 4096}, {4096, 1024}, {65535, 256}, {65536, 256}, {1000000, 128},
};

/* (N, C) at 7 x 7: few positions per channel, many channels, up to C past 65535. */
static const int64_t tiny_spatial_shapes[][2] = {
    {1, 2048}, {32, 2048}, {256, 2048}, {32, 8192}, {8, 65536}, {2, 131072},
};

/* linear_bn's default (batch, in_features, out_features): ResNet-50's head (2048 features, 1000 classes) at
 * batch 32 and 256, and a single request. */
static const int64_t default_linear_shapes[][3] = {{32, 2048, 1000}, {256, 2048, 1000}, {1, 2048, 1000}};

static void print_usage(FILE *out) {
  fprintf(out,
          "usage: " PROGRAM " [options]\n"
          "\n"
          "Validates each batch-normalization op against a float64 reference, then times it on the GPU next to\n"
          "cuDNN's legacy BN API, a cuBLAS baseline and a naive two-kernel baseline, on the same tensors.\n"
          "Without a CUDA device, bnk-bench runs bnk-bench-emu instead: bnk and the naive baseline on the host\n"
          "emulation, validated on shrunk shapes and not timed.\n"
          "\n"
          "  --preset LIST    comma-separated, repeatable: resnet50 (the 12 distinct BN layers of ResNet-50),\n"
          "                   bn1d (N x C, N from 1 to 1,000,000), tiny-spatial (7x7, C up to 131072), all\n"
          "                   (default: resnet50 when no --shape is given)\n"
          "  --batch LIST     batch sizes of the resnet50 preset, e.g. 1,32,256 (default: %d)\n"
          "  --shape S        N,C or N,C,L or N,C,H,W or N,C,D,H,W; repeatable, added to the presets\n"
          "  --op LIST        fwd_train, fwd_infer, bwd, bwd_infer; bnk's epilogue ops, each against the\n"
          "                   unfused sequence: fwd_infer_relu, fwd_infer_add_relu, fwd_train_add_relu,\n"
          "                   bwd_add_relu, scale_shift, linear_bn (GPU only); or all (default: all)\n"
          "  --impl LIST      bnk, bnk-persistent and bnk-two-pass (bnk with its training path forced; fwd_train\n"
          "                   and bwd), cudnn, cudnn-persistent, cudnn-persistent-ex (NHWC), cublas, naive, and the\n"
          "                   variants of the epilogue ops: bnk-fused, bnk-mask, bnk-from-y, bnk-scale-shift,\n"
          "                   bnk+separate, bnk-fwd-infer\n"
          "                   (default: all)\n"
          "  --linear B,I,O   linear_bn's batch, in_features, out_features; repeatable (default: 32,2048,1000\n"
          "                   256,2048,1000 and 1,2048,1000)\n"
          "  --layout L       nchw, nhwc or both (default: both)\n"
          "  --dtype LIST     storage type of x, y, dy and dx: f32, f16, bf16 or all (default: f32)\n"
          "  --runs K         timed runs per case, each after an L2 flush (default: %d)\n"
          "  --warmup K       untimed runs before them (default: %d)\n"
          "  --seed S         seed of the random data (default: %u)\n"
          "  --csv FILE       also write the results as CSV\n"
          "  --json FILE      also write the results as JSON\n"
          "  --help           print this and exit\n",
          DEFAULT_BATCH, DEFAULT_RUNS, DEFAULT_WARMUP, DEFAULT_SEED);
}

static void usage_error(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, PROGRAM ": ");
  vfprintf(stderr, format, args);
  fprintf(stderr, "\n(" PROGRAM " --help lists the options)\n");
  va_end(args);
  exit(EXIT_USAGE);
}

static int64_t parse_integer(const char *text, const char *option, int64_t min, int64_t max) {
  char *end = NULL;
  errno = 0;
  const long long value = strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || value < min || value > max)
    usage_error("%s expects an integer in [%" PRId64 ", %" PRId64 "], got '%s'", option, min, max, text);
  return (int64_t)value;
}

/* Copies the next comma-separated item of *cursor into item and advances past it; 0 at the end. */
static int next_item(const char **cursor, char *item, size_t size, const char *option) {
  if (*cursor == NULL) return 0;
  const char *comma = strchr(*cursor, ',');
  const size_t length = comma ? (size_t)(comma - *cursor) : strlen(*cursor);
  if (length == 0 || length >= size) usage_error("%s: bad list item in '%s'", option, *cursor);
  memcpy(item, *cursor, length);
  item[length] = '\0';
  *cursor = comma ? comma + 1 : NULL;
  return 1;
}

/* Sets flags[i] for every item of the list that names names[i]; any other item is a usage error. */
static void parse_name_list(const char *text, const char *option, const char *const *names, int count, int *flags,
                            const char *all_name) {
  memset(flags, 0, (size_t)count * sizeof flags[0]);
  char item[64];
  for (const char *cursor = text; next_item(&cursor, item, sizeof item, option);) {
    int found = 0;
    for (int i = 0; i < count; ++i) {
      if (strcmp(item, names[i]) == 0 || (all_name != NULL && strcmp(item, all_name) == 0)) {
        flags[i] = 1;
        found = 1;
      }
    }
    if (!found) {
      char known[256] = "";
      for (int i = 0; i < count; ++i)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", names[i]);
      usage_error("%s: unknown value '%s' (known: %s%s%s)", option, item, known, all_name ? ", " : "",
                  all_name ? all_name : "");
    }
  }
}

static bench_shape parse_shape(const char *text) {
  int64_t extents[2 + BNK_MAX_SPATIAL_DIMS];
  int count = 0;
  const char *start = text;
  for (;;) {
    if (count == 2 + BNK_MAX_SPATIAL_DIMS)
      usage_error("--shape takes at most %d extents (N,C,D,H,W), got '%s'", 2 + BNK_MAX_SPATIAL_DIMS, text);
    char *end = NULL;
    errno = 0;
    const long long value = strtoll(start, &end, 10);
    if (end == start || (*end != ',' && *end != '\0') || errno == ERANGE || value < 1)
      usage_error("--shape expects positive integers separated by commas (N,C,H,W), got '%s'", text);
    extents[count++] = value;
    if (*end == '\0') break;
    start = end + 1;
  }
  if (count < 2) usage_error("--shape needs at least N and C, got '%s'", text);
  /* One value per channel (N x spatial = 1) is accepted: inference runs, training is reported as n/a. */
  bench_shape shape = {.n = extents[0], .c = extents[1], .spatial_dims = count - 2};
  for (int d = 0; d < BNK_MAX_SPATIAL_DIMS; ++d) shape.spatial[d] = d < shape.spatial_dims ? extents[2 + d] : 1;
  return shape;
}

/* --linear B,IN,OUT */
static bench_shape parse_linear(const char *text) {
  const bench_shape extents = parse_shape(text);
  if (extents.spatial_dims != 1)
    usage_error("--linear expects batch,in_features,out_features (three positive integers), got '%s'", text);
  bench_shape shape = {
      .n = extents.n, .c = extents.spatial[0], .spatial_dims = 0, .spatial = {1, 1, 1}, .in_features = extents.c};
  return shape;
}

static void add_linear_shape(bench_options *options, bench_shape shape) {
  if (options->linear_count == MAX_SHAPES) usage_error("at most %d --linear shapes", MAX_SHAPES);
  options->linear_shapes[options->linear_count++] = shape;
}

static void add_shape(bench_options *options, bench_shape shape) {
  if (options->shape_count == MAX_SHAPES) usage_error("at most %d shapes (presets and --shape together)", MAX_SHAPES);
  options->shapes[options->shape_count++] = shape;
}

static bench_shape image_shape(int64_t n, int64_t c, int64_t h, int64_t w) {
  bench_shape shape = {.n = n, .c = c, .spatial_dims = 2, .spatial = {h, w, 1}};
  return shape;
}

static void add_presets(bench_options *options) {
  if (options->preset_resnet50)
    for (int b = 0; b < options->batch_count; ++b)
      for (size_t i = 0; i < sizeof resnet50_layers / sizeof resnet50_layers[0]; ++i)
        add_shape(options, image_shape(options->batches[b], resnet50_layers[i][0], resnet50_layers[i][1],
                                       resnet50_layers[i][2]));
  if (options->preset_bn1d)
    for (size_t i = 0; i < sizeof bn1d_shapes / sizeof bn1d_shapes[0]; ++i) {
      bench_shape shape = {.n = bn1d_shapes[i][0], .c = bn1d_shapes[i][1], .spatial_dims = 0, .spatial = {1, 1, 1}};
      add_shape(options, shape);
    }
  if (options->preset_tiny_spatial)
    for (size_t i = 0; i < sizeof tiny_spatial_shapes / sizeof tiny_spatial_shapes[0]; ++i)
      add_shape(options, image_shape(tiny_spatial_shapes[i][0], tiny_spatial_shapes[i][1], 7, 7));
}

/* Accepts "--name value" and "--name=value"; returns the value, or NULL when argv[*index] is another option. */
static const char *option_value(int argc, char **argv, int *index, const char *name) {
  const char *arg = argv[*index];
  const size_t length = strlen(name);
  if (strncmp(arg, name, length) != 0) return NULL;
  if (arg[length] == '=') return arg + length + 1;
  if (arg[length] != '\0') return NULL;
  if (*index + 1 >= argc) usage_error("%s needs a value", name);
  return argv[++*index];
}

bench_options parse_options(int argc, char **argv) {
  static const char *const preset_names[] = {"resnet50", "bn1d", "tiny-spatial"};
  static const char *const dtype_names[] = {"f32", "f16", "bf16"}; /* indexed by bnk_dtype */
  static const char *const layout_names[] = {"nchw", "nhwc"};
  bench_options options;
  memset(&options, 0, sizeof options);
  for (int op = 0; op < OP_COUNT; ++op) options.run_op[op] = 1;
  for (int impl = 0; impl < IMPL_COUNT; ++impl) options.run_impl[impl] = 1;
  options.run_layout[BNK_NCHW] = options.run_layout[BNK_NHWC] = 1;
  options.run_dtype[BNK_FLOAT32] = 1;
  options.runs = DEFAULT_RUNS;
  options.warmup = DEFAULT_WARMUP;
  options.seed = DEFAULT_SEED;
  int any_preset = 0;
  for (int i = 1; i < argc; ++i) {
    const char *value;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      print_usage(stdout);
      exit(EXIT_SUCCESS);
    } else if ((value = option_value(argc, argv, &i, "--op")) != NULL) {
      parse_name_list(value, "--op", op_names, OP_COUNT, options.run_op, "all");
    } else if ((value = option_value(argc, argv, &i, "--impl")) != NULL) {
      parse_name_list(value, "--impl", impl_names, IMPL_COUNT, options.run_impl, NULL);
    } else if ((value = option_value(argc, argv, &i, "--layout")) != NULL) {
      parse_name_list(value, "--layout", layout_names, 2, options.run_layout, "both");
    } else if ((value = option_value(argc, argv, &i, "--dtype")) != NULL) {
      parse_name_list(value, "--dtype", dtype_names, 3, options.run_dtype, "all");
    } else if ((value = option_value(argc, argv, &i, "--preset")) != NULL) {
      int chosen[3];
      parse_name_list(value, "--preset", preset_names, 3, chosen, "all");
      options.preset_resnet50 |= chosen[0];
      options.preset_bn1d |= chosen[1];
      options.preset_tiny_spatial |= chosen[2];
      any_preset = 1;
    } else if ((value = option_value(argc, argv, &i, "--batch")) != NULL) {
      char item[32];
      options.batch_count = 0;
      for (const char *cursor = value; next_item(&cursor, item, sizeof item, "--batch");) {
        if (options.batch_count == MAX_BATCHES) usage_error("--batch takes at most %d sizes", MAX_BATCHES);
        options.batches[options.batch_count++] = parse_integer(item, "--batch", 1, INT32_MAX);
      }
    } else if ((value = option_value(argc, argv, &i, "--shape")) != NULL) {
      add_shape(&options, parse_shape(value));
    } else if ((value = option_value(argc, argv, &i, "--linear")) != NULL) {
      add_linear_shape(&options, parse_linear(value));
    } else if ((value = option_value(argc, argv, &i, "--runs")) != NULL) {
      options.runs = (int)parse_integer(value, "--runs", 1, 1000000);
    } else if ((value = option_value(argc, argv, &i, "--warmup")) != NULL) {
      options.warmup = (int)parse_integer(value, "--warmup", 0, 1000000);
    } else if ((value = option_value(argc, argv, &i, "--seed")) != NULL) {
      options.seed = (uint64_t)parse_integer(value, "--seed", 0, INT64_MAX);
    } else if ((value = option_value(argc, argv, &i, "--csv")) != NULL) {
      options.csv_path = value;
    } else if ((value = option_value(argc, argv, &i, "--json")) != NULL) {
      options.json_path = value;
    } else {
      usage_error("unknown argument '%s'", argv[i]);
    }
  }
  if (options.batch_count == 0) options.batches[options.batch_count++] = DEFAULT_BATCH;
  if (!any_preset && options.shape_count == 0) options.preset_resnet50 = 1;
  add_presets(&options);
  if (options.linear_count == 0)
    for (size_t i = 0; i < sizeof default_linear_shapes / sizeof default_linear_shapes[0]; ++i) {
      bench_shape shape = {.n = default_linear_shapes[i][0],
                           .c = default_linear_shapes[i][2],
                           .spatial_dims = 0,
                           .spatial = {1, 1, 1},
                           .in_features = default_linear_shapes[i][1]};
      add_linear_shape(&options, shape);
    }
  return options;
}
