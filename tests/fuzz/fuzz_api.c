/* libFuzzer harness of the whole public API, on the host emulation (bnk_emu built with clang and
 * -fsanitize=fuzzer,address,undefined; `./dev fuzz [seconds]`, README.md "Fuzzing").
 *
 * Each input is a sequence of calls. Every argument is decoded from the input: descriptors (tiny extents, or
 * values every check must reject), pointers (NULL, or anywhere in a small device arena: misaligned and
 * overlapping each other), sizes, enums and doubles (NaN, inf, -0.0, huge, subnormal). After each call the
 * harness asserts the contract of include/bnk.h:
 *  - nothing crashes, and the sanitizers see no out-of-bounds access or undefined behaviour;
 *  - a failure has a known status and a non-empty message, a success an empty one;
 *  - a rejected call wrote nothing: the device arena (poisoned) and the host outputs are unchanged.
 * What the library cannot check is left as the caller's promise, and the harness keeps it: a valid shape is
 * always tiny (the library cannot know a buffer's size), and a tensor pointer lies outside the arena only
 * when the tensor is empty. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include <bnk_emu/control.h>

#include "bnk.h"

/* Device memory every pointer points into. The largest array of a tiny shape (4 x 4 x 3^3 values, a
 * workspace, 3 ranks' partials) is under 4 KiB, so a pointer at most ARENA_BYTES - EXTENT_BYTES in always
 * has room. */
#define ARENA_BYTES (64 * 1024)
#define EXTENT_BYTES (8 * 1024)
#define MAX_CALLS 8

static unsigned char *arena;
static unsigned char *snapshot;
static unsigned char *after;
static bnk_context *ctx;

/* ---- decoding ---- */

typedef struct input {
  const uint8_t *data;
  size_t size;
} input;

static unsigned take_byte(input *in) {
  if (in->size == 0) return 0;
  --in->size;
  return *in->data++;
}

static uint64_t take_bits(input *in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value = value << 8 | take_byte(in);
  return value;
}

/* An extent of a tensor: mostly 0..3 (1..4 for n), else a value the descriptor check must reject or that
 * leaves the tensor empty (INT64_MAX overflows the byte count unless a 0 comes first). */
static int64_t take_extent(input *in, int64_t largest) {
  static const int64_t wild[] = {-1, -3, INT64_MIN, INT64_MAX};
  const unsigned pick = take_byte(in);
  if (pick < 240) return (int64_t)(pick % (unsigned)(largest + 1));
  return wild[pick % 4];
}

/* A channel count or another "must be > 0" size: 1..4, or a value <= 0. Never a huge positive one: an
 * accepted huge C would promise arrays of that length. */
static int64_t take_count(input *in) {
  static const int64_t wild[] = {0, -1, INT64_MIN, -4};
  const unsigned pick = take_byte(in);
  if (pick < 240) return 1 + (int64_t)(pick % 4);
  return wild[pick % 4];
}

/* A rank count: 1..3, or a value <= 0 (an accepted huge one would promise that many ranks' partials). */
static int take_ranks(input *in) {
  static const int wild[] = {0, -1, INT32_MIN, -2};
  const unsigned pick = take_byte(in);
  if (pick < 240) return 1 + (int)(pick % 3);
  return wild[pick % 4];
}

static int take_enum(input *in, int values) {
  static const int wild[] = {-1, 3, 7, 1 << 30};
  const unsigned pick = take_byte(in);
  if (pick < 240) return (int)(pick % (unsigned)values);
  return wild[pick % 4];
}

static double take_double(input *in) {
  static const double special[] = {0.0,     -0.0,   1e-5,     0.1,       1.0,   -1.0,    -1.0000001, 1.0000000000000002,
                                   1.5,     NAN,    INFINITY, -INFINITY, 1e300, -1e-300, 5e-324,     1e-50,
                                   FLT_MAX, 3.5e38, DBL_MAX,  -0.5};
  const unsigned pick = take_byte(in);
  const unsigned count = sizeof special / sizeof special[0];
  if (pick < 8 * count) return special[pick % count];
  const uint64_t bits = take_bits(in, 8);
  double value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

static size_t take_size(input *in, size_t exact) {
  const unsigned pick = take_byte(in);
  switch (pick % 6) {
  case 0:
    return exact;
  case 1:
    return exact > 0 ? exact - 1 : 0;
  case 2:
    return 0;
  case 3:
    return SIZE_MAX;
  case 4:
    return exact + 4;
  default:
    return (size_t)take_bits(in, 2);
  }
}

/* NULL, or a place in the arena aligned to `align` bytes (the element: a float * that is not 4-byte aligned
 * is undefined in C before any call), often not to 16 (the vector loads), and overlapping other pointers. */
static void *take_aligned(input *in, size_t align) {
  const unsigned pick = take_byte(in);
  if (pick < 16) return NULL;
  const size_t offset = (size_t)take_bits(in, 2) % (ARENA_BYTES - EXTENT_BYTES);
  return arena + (pick < 96 ? offset & ~(align - 1) : offset & ~(size_t)255);
}

static void *take_pointer(input *in) { return take_aligned(in, 8); }

/* A tensor's pointer, aligned to its element; for an empty tensor also one outside the arena (or misaligned),
 * which the library must never dereference. */
static void *take_tensor_pointer(input *in, const bnk_tensor_desc *desc, int empty) {
  if (empty && take_byte(in) < 64) {
    static const uintptr_t outside[] = {1, 16, (uintptr_t)-256};
    const unsigned pick = take_byte(in);
    return pick % 4 == 3 ? (void *)(arena + ARENA_BYTES) : (void *)outside[pick % 4];
  }
  return take_aligned(in, desc->dtype == BNK_FLOAT32 ? 4 : 2);
}

/* A descriptor as a caller may fill it by hand, so also with invalid enums and extents; *empty tells whether
 * a valid one has no elements (or it is invalid, when any pointer is as good as another). */
static bnk_tensor_desc take_desc(input *in, int *empty) {
  bnk_tensor_desc desc;
  desc.dtype = (bnk_dtype)take_enum(in, 3);
  desc.layout = (bnk_layout)take_enum(in, 2);
  desc.spatial_dims = take_enum(in, 4);
  desc.n = take_extent(in, 4);
  desc.c = take_count(in);
  for (int d = 0; d < BNK_MAX_SPATIAL_DIMS; ++d) desc.spatial[d] = take_extent(in, 3);
  const int valid = bnk_tensor_desc_check(&desc) == BNK_SUCCESS;
  *empty = !valid || bnk_tensor_desc_elements(&desc) == 0;
  return desc;
}

static bnk_epilogue take_epilogue(input *in, const bnk_tensor_desc *desc, int empty) {
  bnk_epilogue e;
  size_t mask_bytes = 0;
  if (!empty) bnk_epilogue_mask_size(desc, &mask_bytes);
  e.kind = (bnk_epilogue_kind)take_enum(in, 3);
  e.z = take_tensor_pointer(in, desc, empty);
  e.mask = take_aligned(in, 1); /* the library checks its 4-byte alignment */
  e.mask_bytes = take_size(in, mask_bytes);
  return e;
}

static bnk_epilogue_grad take_epilogue_grad(input *in, const bnk_tensor_desc *desc, int empty) {
  bnk_epilogue_grad e;
  size_t mask_bytes = 0;
  if (!empty) bnk_epilogue_mask_size(desc, &mask_bytes);
  e.kind = (bnk_epilogue_kind)take_enum(in, 3);
  e.y = take_tensor_pointer(in, desc, empty);
  e.mask = take_aligned(in, 1); /* the library checks its 4-byte alignment */
  e.mask_bytes = take_size(in, mask_bytes);
  e.dz = take_tensor_pointer(in, desc, empty);
  return e;
}

/* ---- the contract ---- */

static void fail(const char *call, const char *what, bnk_status status) {
  fprintf(stderr, "fuzz_api: %s returned %s (\"%s\"): %s\n", call, bnk_status_name(status), bnk_last_error_message(),
          what);
  abort();
}

/* Just before each call: the arena's bytes, and a failure's message left behind, which the call must clear if
 * it succeeds. */
static void take_snapshot(void) {
  cudaDeviceSynchronize();
  memcpy(snapshot, arena, ARENA_BYTES);
  bnk_tensor_desc_init(NULL, BNK_FLOAT32, BNK_NCHW, 1, 1, 0, NULL);
}

/* host_out/host_before: the call's host output (a size, a descriptor, a stream) and its bytes before. */
static void check(const char *call, bnk_status status, const void *host_out, const void *host_before,
                  size_t host_bytes) {
  if (cudaDeviceSynchronize() != cudaSuccess) fail(call, "left the device in an error state", status);
  if (strcmp(bnk_status_name(status), "BNK_STATUS_UNKNOWN") == 0) fail(call, "an unknown status", status);
  const char *message = bnk_last_error_message();
  if (status == BNK_SUCCESS) {
    if (message[0] != '\0') fail(call, "success with a non-empty message", status);
    return;
  }
  if (message[0] == '\0') fail(call, "a failure with an empty message", status);
  memcpy(after, arena, ARENA_BYTES);
  for (size_t i = 0; i < ARENA_BYTES; ++i) {
    if (after[i] != snapshot[i]) {
      char what[96];
      snprintf(what, sizeof what, "rejected, but wrote device memory at arena offset %zu", i);
      fail(call, what, status);
    }
  }
  if (host_out != NULL && memcmp(host_out, host_before, host_bytes) != 0)
    fail(call, "rejected, but wrote its host output", status);
}

/* ---- the calls ---- */

static bnk_context *take_context(input *in) { return take_byte(in) < 16 ? NULL : ctx; }

static size_t training_bytes(const bnk_tensor_desc *desc) {
  size_t bytes = 0;
  bnk_forward_training_workspace_size(ctx, desc, &bytes);
  return bytes;
}

static size_t backward_bytes(const bnk_tensor_desc *desc) {
  size_t bytes = 0;
  bnk_backward_workspace_size(ctx, desc, &bytes);
  return bytes;
}

#define CHECK(call, status) check(call, status, NULL, NULL, 0)

static void call_queries(input *in) {
  int empty;
  const bnk_tensor_desc desc = take_desc(in, &empty);
  size_t bytes = 12345;
  const size_t before = bytes;
  size_t *out = take_byte(in) < 16 ? NULL : &bytes;
  bnk_context *c = take_context(in);
  take_snapshot();
  const char *name;
  bnk_status status;
  switch (take_byte(in) % 6) {
  case 0:
    name = "bnk_forward_training_workspace_size";
    status = bnk_forward_training_workspace_size(c, &desc, out);
    break;
  case 1:
    name = "bnk_backward_workspace_size";
    status = bnk_backward_workspace_size(c, &desc, out);
    break;
  case 2:
    name = "bnk_batch_stats_workspace_size";
    status = bnk_batch_stats_workspace_size(c, &desc, out);
    break;
  case 3:
    name = "bnk_sync_workspace_size";
    status = bnk_sync_workspace_size(c, &desc, take_enum(in, 4), out);
    break;
  case 4:
    name = "bnk_epilogue_mask_size";
    status = bnk_epilogue_mask_size(&desc, out);
    break;
  default:
    name = "bnk_linear_bn_workspace_size";
    status = bnk_linear_bn_workspace_size(c, out);
    break;
  }
  check(name, status, out, &before, sizeof bytes);
}

static void call_descriptors(input *in) {
  bnk_tensor_desc desc = {BNK_FLOAT32, BNK_NCHW, 0, 1, 1, {1, 1, 1}};
  const bnk_tensor_desc before = desc;
  int64_t spatial[BNK_MAX_SPATIAL_DIMS];
  for (int d = 0; d < BNK_MAX_SPATIAL_DIMS; ++d) spatial[d] = take_extent(in, 3);
  const bnk_dtype dtype = (bnk_dtype)take_enum(in, 3);
  const bnk_layout layout = (bnk_layout)take_enum(in, 2);
  const int64_t n = take_extent(in, 4), c = take_count(in);
  const int dims = take_enum(in, 4);
  bnk_tensor_desc *out = take_byte(in) < 16 ? NULL : &desc;
  take_snapshot();
  check("bnk_tensor_desc_init",
        bnk_tensor_desc_init(out, dtype, layout, n, c, dims, take_byte(in) < 16 ? NULL : spatial), out, &before,
        sizeof desc);
  int empty;
  const bnk_tensor_desc filled = take_desc(in, &empty);
  const bnk_tensor_desc *checked = take_byte(in) < 16 ? NULL : &filled;
  take_snapshot();
  CHECK("bnk_tensor_desc_check", bnk_tensor_desc_check(checked));
  bnk_tensor_desc_elements(&filled);
  bnk_status_name((bnk_status)take_enum(in, 9));
  bnk_status_string((bnk_status)take_enum(in, 9));
  if (bnk_version() != BNK_VERSION_NUMBER || strcmp(bnk_version_string(), BNK_VERSION_STRING) != 0)
    fail("bnk_version", "does not match the header", BNK_SUCCESS);
}

static void call_context(input *in) {
  bnk_context *c = take_context(in);
  bnk_stream stream = (bnk_stream)(uintptr_t)0x5a5a;
  const bnk_stream stream_before = stream;
  int value = -7;
  const int value_before = value;
  take_snapshot();
  switch (take_byte(in) % 5) {
  case 0: {
    bnk_context *created = NULL;
    const int device = take_enum(in, 2) - 1;
    const bnk_status status = bnk_context_create(take_byte(in) < 16 ? NULL : &created, device);
    CHECK("bnk_context_create", status);
    bnk_context_destroy(created);
    break;
  }
  case 1:
    CHECK("bnk_context_set_stream", bnk_context_set_stream(c, NULL));
    break;
  case 2: {
    bnk_stream *out = take_byte(in) < 16 ? NULL : &stream;
    check("bnk_context_get_stream", bnk_context_get_stream(c, out), out, &stream_before, sizeof stream);
    break;
  }
  case 3: {
    int *out = take_byte(in) < 16 ? NULL : &value;
    check("bnk_context_get_device", bnk_context_get_device(c, out), out, &value_before, sizeof value);
    break;
  }
  default: {
    int *out = take_byte(in) < 16 ? NULL : &value;
    check("bnk_context_get_sm_count", bnk_context_get_sm_count(c, out), out, &value_before, sizeof value);
    break;
  }
  }
}

static void call_forward(input *in) {
  int empty;
  const bnk_tensor_desc desc = take_desc(in, &empty);
  bnk_context *c = take_context(in);
  const void *x = take_tensor_pointer(in, &desc, empty);
  void *y = take_tensor_pointer(in, &desc, empty);
  float *gamma = take_pointer(in), *beta = take_pointer(in);
  float *running_mean = take_pointer(in), *running_var = take_pointer(in);
  int64_t *tracked = take_pointer(in);
  const double momentum = take_double(in), eps = take_double(in);
  float *save_mean = take_pointer(in), *save_invstd = take_pointer(in);
  void *workspace = take_pointer(in);
  const size_t workspace_bytes = take_size(in, training_bytes(&desc));
  const bnk_epilogue epilogue = take_epilogue(in, &desc, empty);
  const bnk_epilogue *e = take_byte(in) < 128 ? NULL : &epilogue;
  take_snapshot();
  switch (take_byte(in) % 3) {
  case 0:
    if (e == NULL)
      CHECK("bnk_forward_training",
            bnk_forward_training(c, &desc, x, y, gamma, beta, running_mean, running_var, tracked, momentum, eps,
                                 save_mean, save_invstd, workspace, workspace_bytes));
    else
      CHECK("bnk_forward_training_ex",
            bnk_forward_training_ex(c, &desc, x, y, gamma, beta, running_mean, running_var, tracked, momentum, eps,
                                    save_mean, save_invstd, workspace, workspace_bytes, e));
    break;
  case 1:
    if (e == NULL)
      CHECK("bnk_forward_inference",
            bnk_forward_inference(c, &desc, x, y, gamma, beta, running_mean, running_var, eps));
    else
      CHECK("bnk_forward_inference_ex",
            bnk_forward_inference_ex(c, &desc, x, y, gamma, beta, running_mean, running_var, eps, e));
    break;
  default:
    CHECK("bnk_forward_training_sync",
          bnk_forward_training_sync(c, &desc, x, y, gamma, beta, running_mean, running_var, tracked, momentum, eps,
                                    save_mean, save_invstd, NULL, workspace, workspace_bytes));
    break;
  }
}

static void call_backward(input *in) {
  int empty;
  const bnk_tensor_desc desc = take_desc(in, &empty);
  bnk_context *c = take_context(in);
  const void *x = take_tensor_pointer(in, &desc, empty), *dy = take_tensor_pointer(in, &desc, empty);
  void *dx = take_tensor_pointer(in, &desc, empty);
  const float *gamma = take_pointer(in);
  float *dgamma = take_pointer(in), *dbeta = take_pointer(in);
  const float *mean = take_pointer(in), *invstd = take_pointer(in);
  const double eps = take_double(in);
  void *workspace = take_pointer(in);
  const size_t workspace_bytes = take_size(in, backward_bytes(&desc));
  const bnk_epilogue_grad epilogue = take_epilogue_grad(in, &desc, empty);
  const bnk_epilogue_grad *e = take_byte(in) < 128 ? NULL : &epilogue;
  take_snapshot();
  switch (take_byte(in) % 3) {
  case 0:
    if (e == NULL)
      CHECK("bnk_backward",
            bnk_backward(c, &desc, x, dy, dx, gamma, dgamma, dbeta, mean, invstd, workspace, workspace_bytes));
    else
      CHECK("bnk_backward_ex",
            bnk_backward_ex(c, &desc, x, dy, dx, gamma, dgamma, dbeta, mean, invstd, workspace, workspace_bytes, e));
    break;
  case 1:
    if (e == NULL)
      CHECK("bnk_backward_inference", bnk_backward_inference(c, &desc, x, dy, dx, gamma, dgamma, dbeta, mean, invstd,
                                                             eps, workspace, workspace_bytes));
    else
      CHECK("bnk_backward_inference_ex", bnk_backward_inference_ex(c, &desc, x, dy, dx, gamma, dgamma, dbeta, mean,
                                                                   invstd, eps, workspace, workspace_bytes, e));
    break;
  default:
    CHECK("bnk_backward_sync",
          bnk_backward_sync(c, &desc, x, dy, dx, gamma, dgamma, dbeta, mean, invstd, NULL, workspace, workspace_bytes));
    break;
  }
}

static void call_split_statistics(input *in) {
  int empty;
  const bnk_tensor_desc desc = take_desc(in, &empty);
  bnk_context *c = take_context(in);
  const void *x = take_tensor_pointer(in, &desc, empty), *dy = take_tensor_pointer(in, &desc, empty);
  void *dx = take_tensor_pointer(in, &desc, empty);
  float *a = take_pointer(in), *b = take_pointer(in), *d = take_pointer(in), *e = take_pointer(in);
  void *data = take_pointer(in);
  void *workspace = take_pointer(in);
  const size_t bytes =
      take_size(in, training_bytes(&desc) > backward_bytes(&desc) ? training_bytes(&desc) : backward_bytes(&desc));
  take_snapshot();
  switch (take_byte(in) % 4) {
  case 0:
    CHECK("bnk_batch_stats", bnk_batch_stats(c, &desc, x, data, workspace, bytes));
    break;
  case 1:
    CHECK("bnk_normalize", bnk_normalize(c, &desc, x, dx, a, b, d, e));
    break;
  case 2:
    CHECK("bnk_backward_local_sums", bnk_backward_local_sums(c, &desc, x, dy, a, b, data, workspace, bytes));
    break;
  default:
    CHECK("bnk_backward_apply",
          bnk_backward_apply(c, &desc, x, dy, dx, a, b, d, e, take_pointer(in), data, workspace, bytes));
    break;
  }
}

static void call_merge(input *in) {
  bnk_context *c = take_context(in);
  const int64_t channels = take_count(in);
  const int ranks = take_ranks(in);
  const double *gathered = take_pointer(in);
  float *running_mean = take_pointer(in), *running_var = take_pointer(in);
  int64_t *tracked = take_pointer(in);
  const double momentum = take_double(in), eps = take_double(in);
  float *mean = take_pointer(in), *invstd = take_pointer(in);
  take_snapshot();
  CHECK("bnk_merge_stats",
        bnk_merge_stats(c, channels, ranks, gathered, running_mean, running_var, tracked, momentum, eps, mean, invstd));
}

static void call_inference_pipeline(input *in) {
  int empty;
  const bnk_tensor_desc desc = take_desc(in, &empty);
  bnk_context *c = take_context(in);
  const int64_t k = take_count(in), c_in = take_count(in);
  int64_t kernel[3];
  for (int i = 0; i < 3; ++i) kernel[i] = take_byte(in) < 240 ? 1 + take_byte(in) % 3 : -(int64_t)take_byte(in);
  const int kernel_dims = take_enum(in, 4);
  const bnk_dtype dtype = (bnk_dtype)take_enum(in, 3), bias_dtype = (bnk_dtype)take_enum(in, 3);
  const void *x = take_tensor_pointer(in, &desc, empty);
  void *y = take_tensor_pointer(in, &desc, empty);
  float *p[6];
  for (int i = 0; i < 6; ++i) p[i] = take_pointer(in);
  void *weight_in = take_pointer(in), *weight_out = take_pointer(in);
  const double eps = take_double(in);
  const bnk_epilogue epilogue = take_epilogue(in, &desc, empty);
  const bnk_epilogue *e = take_byte(in) < 128 ? NULL : &epilogue;
  void *workspace = take_pointer(in);
  const size_t workspace_bytes = take_size(in, 0);
  take_snapshot();
  switch (take_byte(in) % 5) {
  case 0:
    CHECK("bnk_inference_params", bnk_inference_params(c, k, p[0], p[1], p[2], p[3], eps, p[4], p[5]));
    break;
  case 1:
    CHECK("bnk_scale_shift", bnk_scale_shift(c, &desc, x, y, p[0], p[1], e));
    break;
  case 2:
    CHECK("bnk_fold_conv", bnk_fold_conv(c, k, c_in, kernel_dims, take_byte(in) < 16 ? NULL : kernel,
                                         (bnk_weight_layout)take_enum(in, 2), dtype, weight_in, p[0], p[1], p[2], p[3],
                                         p[4], eps, weight_out, p[5]));
    break;
  case 3:
    CHECK("bnk_fold_linear", bnk_fold_linear(c, k, c_in, dtype, weight_in, p[0], p[1], p[2], p[3], p[4], eps,
                                             weight_out, p[5], bias_dtype));
    break;
  default:
    CHECK("bnk_linear_bn", bnk_linear_bn(c, dtype, take_extent(in, 4), c_in, k, x, weight_in, p[0],
                                         (bnk_epilogue_kind)take_enum(in, 3), y, workspace, workspace_bytes));
    break;
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  bnk_emu_set_workers(1);
  if (cudaMalloc((void **)&arena, ARENA_BYTES) != cudaSuccess || bnk_context_create(&ctx, -1) != BNK_SUCCESS) {
    fprintf(stderr, "fuzz_api: no emulated device\n");
    abort();
  }
  snapshot = malloc(ARENA_BYTES);
  after = malloc(ARENA_BYTES);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static void (*const calls[])(input *) = {call_queries,  call_descriptors,      call_context, call_forward,
                                           call_backward, call_split_statistics, call_merge,   call_inference_pipeline};
  input in = {data, size};
  /* Poisoned afresh (NaN in every float type), so that no input sees what an earlier one's calls wrote: a finding
   * then reproduces from its input alone. */
  memset(arena, 0xff, ARENA_BYTES);
  for (int i = 0; i < MAX_CALLS && in.size > 0; ++i) calls[take_byte(&in) % (sizeof calls / sizeof calls[0])](&in);
  return 0;
}
