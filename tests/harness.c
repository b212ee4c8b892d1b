#include "tests/harness.h"

#include "tests/shape_text.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#ifdef BNK_TEST_EMULATION
#include <bnk_emu/control.h>
#endif

/* ---- random ---- */

test_rng rng_fresh(void) {
  static uint64_t draws;
  const char *fixed = getenv("BNK_TEST_SEED");
  uint64_t seed;
  if (fixed != NULL) {
    seed = strtoull(fixed, NULL, 0) + draws;
  } else {
    struct timespec now;
    timespec_get(&now, TIME_UTC);
    rng_state mix = {(uint64_t)now.tv_sec * 1000000007ull + (uint64_t)now.tv_nsec + draws * 7919u};
    seed = rng_next(&mix);
  }
  ++draws;
  cr_log_info("random seed %" PRIu64 " (set BNK_TEST_SEED to repeat)", seed);
  test_rng rng = {seed};
  return rng;
}

double rng_normal(test_rng *rng) {
  const double u1 = rng_uniform(rng, 0x1.0p-53, 1.0);
  const double u2 = rng_uniform(rng, 0.0, 1.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- storage ---- */

size_t dtype_size(bnk_dtype dtype) { return storage_element_bytes(dtype); }

const char *dtype_name(bnk_dtype dtype) { return storage_name(dtype); }

void to_storage(bnk_dtype dtype, const double *in, void *out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) storage_store(dtype, out, i, (float)in[i]);
}

void from_storage(bnk_dtype dtype, const void *in, double *out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = storage_load(dtype, in, i);
}

double round_to_storage(bnk_dtype dtype, double value) {
  unsigned char stored[4];
  storage_store(dtype, stored, 0, (float)value);
  return storage_load(dtype, stored, 0);
}

void format_shape(char *out, size_t size, bnk_layout layout, bnk_dtype dtype, int64_t n, int64_t c, int spatial_dims,
                  const int64_t *spatial) {
  const int used = snprintf(out, size, "%s %s ", layout == BNK_NCHW ? "NCHW" : "NHWC", dtype_name(dtype));
  if (used >= 0 && (size_t)used < size) format_extents(out + used, size - (size_t)used, n, c, spatial_dims, spatial);
}

/* ---- device memory ---- */

static void check_cuda(cudaError_t error, const char *what) {
  cr_assert(error == cudaSuccess, "%s failed: %s", what, cudaGetErrorString(error));
}

void *dev_alloc(size_t bytes) {
  void *pointer = NULL;
  if (bytes == 0) return NULL;
  check_cuda(cudaMalloc(&pointer, bytes), "cudaMalloc");
  dev_poison(pointer, bytes);
  return pointer;
}

void dev_free(void *pointer) {
  if (pointer != NULL) check_cuda(cudaFree(pointer), "cudaFree");
}

void dev_poison(void *pointer, size_t bytes) {
  if (bytes > 0) check_cuda(cudaMemset(pointer, 0xff, bytes), "cudaMemset");
}

void dev_upload(void *device, const void *host, size_t bytes) {
  if (bytes > 0) check_cuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

void dev_download(void *host, const void *device, size_t bytes) {
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  if (bytes > 0) check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

float *dev_floats(const double *values, int64_t count) {
  if (values == NULL) return NULL;
  float *host = malloc((size_t)count * sizeof(float));
  for (int64_t i = 0; i < count; ++i) host[i] = (float)values[i];
  float *device = dev_alloc((size_t)count * sizeof(float));
  dev_upload(device, host, (size_t)count * sizeof(float));
  free(host);
  return device;
}

void dev_read_floats(const float *device, double *out, int64_t count) {
  float *host = malloc((size_t)count * sizeof(float));
  dev_download(host, device, (size_t)count * sizeof(float));
  for (int64_t i = 0; i < count; ++i) out[i] = host[i];
  free(host);
}

void *dev_snapshot(const void *device, size_t bytes) {
  void *host = malloc(bytes > 0 ? bytes : 1);
  dev_download(host, device, bytes);
  return host;
}

void expect_unchanged(const char *what, const void *device, const void *snapshot, size_t bytes) {
  void *now = dev_snapshot(device, bytes);
  const int same = memcmp(now, snapshot, bytes) == 0;
  free(now);
  cr_expect(same, "%s was written by a call that was rejected", what);
}

/* ---- context ---- */

bnk_context *test_context(void) {
  int devices = 0;
  const cudaError_t error = cudaGetDeviceCount(&devices);
  if (error != cudaSuccess || devices == 0) {
    cudaGetLastError();
    cr_skip_test("no CUDA device (%s): these tests run on the GPU build only with a device; the emulation "
                 "build runs them on the CPU",
                 cudaGetErrorString(error));
  }
  bnk_context *ctx = NULL;
  const bnk_status status = bnk_context_create(&ctx, -1);
  cr_assert(status == BNK_SUCCESS, "bnk_context_create: %s: %s", bnk_status_name(status), bnk_last_error_message());
#ifdef BNK_TEST_EMULATION
  /* The emulation runs a cooperative grid as one OS thread per block, each with a fiber stack per thread, which
   * a co-resident grid of the default 132 SMs exhausts: suites other than test_persistent (which shrinks the
   * emulated device) keep the two-pass training forward there. On a GPU every suite takes the automatic path. */
  cr_assert_eq(bnk_context_set_training_path(ctx, BNK_TRAINING_PATH_TWO_PASS), BNK_SUCCESS);
#endif
  return ctx;
}

/* ---- schedules ---- */

#ifdef BNK_TEST_EMULATION
static unsigned long long random_schedule_seed(void) {
  static unsigned long long seed;
  if (seed == 0) {
    test_rng rng = rng_fresh();
    seed = (unsigned long long)rng_uniform(&rng, 1.0, 4294967295.0);
  }
  return seed;
}

int schedule_count(void) { return 3; }

void schedule_use(int index) {
  const bnk_emu_schedule kinds[3] = {BNK_EMU_FORWARD, BNK_EMU_REVERSE, BNK_EMU_RANDOM};
  bnk_emu_set_schedule(kinds[index], random_schedule_seed());
}

const char *schedule_name(int index) {
  static const char *names[3] = {"forward", "reverse", "random"};
  return names[index];
}
#else
int schedule_count(void) { return 1; }
void schedule_use(int index) { (void)index; }
const char *schedule_name(int index) {
  (void)index;
  return "gpu";
}
#endif

/* ---- comparisons ---- */

void expect_close(const char *what, const double *got, const double *want, int64_t count, double atol, double rtol) {
  int64_t worst = -1;
  double worst_excess = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const double error = fabs(got[i] - want[i]);
    const double allowed = atol + rtol * fabs(want[i]);
    const double excess = isnan(error) ? INFINITY : error - allowed;
    if (excess > worst_excess || (worst < 0 && excess > 0)) {
      worst = i;
      worst_excess = excess;
    }
  }
  if (worst >= 0)
    cr_expect(0, "%s[%" PRId64 "] = %.9g, reference %.9g (error %.3g > %.3g allowed)", what, worst, got[worst],
              want[worst], fabs(got[worst] - want[worst]), atol + rtol * fabs(want[worst]));
}

void expect_within_ulps(const char *what, bnk_dtype dtype, const double *got, const double *want, int64_t count,
                        double ulps, double atol) {
  for (int64_t i = 0; i < count; ++i) {
    const double allowed = ulps * storage_ulp(dtype, want[i]) + atol;
    if (!(fabs(got[i] - want[i]) <= allowed)) {
      cr_expect(0, "%s[%" PRId64 "] = %.9g, reference %.9g: more than %g %s ulp + %g apart", what, i, got[i], want[i],
                ulps, dtype_name(dtype), atol);
      return;
    }
  }
}

void expect_bitwise_equal(const char *what, const void *a, const void *b, size_t bytes) {
  const unsigned char *pa = a, *pb = b;
  for (size_t i = 0; i < bytes; ++i) {
    if (pa[i] != pb[i]) {
      cr_expect(0, "%s differs at byte %zu between schedules (a deterministic kernel must not)", what, i);
      return;
    }
  }
}

void expect_rejection(bnk_status got, bnk_status want, const char *needle) {
  cr_expect_eq(got, want, "expected %s, got %s (%s)", bnk_status_name(want), bnk_status_name(got),
               bnk_last_error_message());
  cr_expect(strstr(bnk_last_error_message(), needle) != NULL, "message \"%s\" does not contain \"%s\"",
            bnk_last_error_message(), needle);
}
