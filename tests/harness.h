/* What every test executable shares: random data, storage conversion, device buffers, schedules and
 * comparisons. The same test sources build against bnk_emu (BNK_TEST_EMULATION) and against bnk. */
#ifndef BNK_TESTS_HARNESS_H
#define BNK_TESTS_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include <criterion/criterion.h>

#include "bnk.h"
#include "tests/random.h"
#include "tests/storage.h"

/* ---- random data (tests/random.h): each test draws a fresh seed (BNK_TEST_SEED overrides it) and logs it ---- */
typedef rng_state test_rng;
test_rng rng_fresh(void);
double rng_normal(test_rng *rng);

/* ---- storage types (tests/storage.h), over arrays ---- */
size_t dtype_size(bnk_dtype dtype);
const char *dtype_name(bnk_dtype dtype);
double round_to_storage(bnk_dtype dtype, double value);
void to_storage(bnk_dtype dtype, const double *in, void *out, int64_t count);
void from_storage(bnk_dtype dtype, const void *in, double *out, int64_t count);
/* "NCHW f32 2x3x5x7": how failure messages name a case's tensor. */
void format_shape(char *out, size_t size, bnk_layout layout, bnk_dtype dtype, int64_t n, int64_t c, int spatial_dims,
                  const int64_t *spatial);

/* ---- case tables: a shape's rank and its three spatial extents, padded with 1 ({spatial_dims, spatial}) ---- */
#define S0 \
  0, { 1, 1, 1 }
#define S1(a) \
  1, { a, 1, 1 }
#define S2(a, b) \
  2, { a, b, 1 }
#define S3(a, b, c) \
  3, { a, b, c }

/* ---- device memory: every allocation starts poisoned (all bits set: NaN in every float type) ---- */
void *dev_alloc(size_t bytes);
void dev_free(void *pointer);
void dev_poison(void *pointer, size_t bytes);
void dev_upload(void *device, const void *host, size_t bytes);
void dev_download(void *host, const void *device, size_t bytes);
/* Uploads doubles as float32; returns a new device array (NULL for NULL values). */
float *dev_floats(const double *values, int64_t count);
/* Downloads float32 into doubles. */
void dev_read_floats(const float *device, double *out, int64_t count);
/* Host copy of device bytes, for "the call wrote nothing" checks. */
void *dev_snapshot(const void *device, size_t bytes);
void expect_unchanged(const char *what, const void *device, const void *snapshot, size_t bytes);

/* ---- the context every test uses: skips the test when no device is present ---- */
bnk_context *test_context(void);

/* ---- schedules: three in emulation (forward, reverse, random), one on a GPU ---- */
int schedule_count(void);
void schedule_use(int index);
const char *schedule_name(int index);

/* ---- comparisons, each naming the quantity, the index and both values on failure ---- */
/* |got - want| <= atol + rtol |want| elementwise. */
void expect_close(const char *what, const double *got, const double *want, int64_t count, double atol, double rtol);
/* |got - want| <= ulps * ulp(want) of the storage type + atol (the error of the fp32 result before its
 * rounding, which only shows where the result cancels to near zero). */
void expect_within_ulps(const char *what, bnk_dtype dtype, const double *got, const double *want, int64_t count,
                        double ulps, double atol);
void expect_bitwise_equal(const char *what, const void *a, const void *b, size_t bytes);
/* A rejected call: the status, and a message (bnk_last_error_message) that contains `needle`. */
void expect_rejection(bnk_status got, bnk_status want, const char *needle);

#endif
