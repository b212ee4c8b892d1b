/* The shared reduction primitives, run directly on blocks of awkward sizes, against a float64 reference,
 * under every schedule, with bitwise-equal results across schedules. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/launchers.h"
#include "tests/harness.h"

cudaError_t test_welford_block(const float *x, int64_t count, int threads, int chunked, float *out);
cudaError_t test_sum_block(const float *x, int64_t count, int threads, float *out);
cudaError_t test_sum_partial_warp(const float *x, int lanes, float *out);
cudaError_t test_reverse_in_shared(const float *x, int threads, float *out);
cudaError_t test_tile_reduce(const float *x, int tile_x, int tile_y, int rows_per_thread, float *out);
cudaError_t test_fast_division(const uint64_t *dividends, int count, uint64_t divisor, uint64_t *quotients);

static float *random_data(test_rng *rng, int64_t count, double offset, double spread, double **as_double) {
  float *host = malloc((size_t)count * sizeof(float));
  *as_double = malloc((size_t)count * sizeof(double));
  for (int64_t i = 0; i < count; ++i) {
    host[i] = (float)(offset + spread * rng_normal(rng));
    (*as_double)[i] = host[i];
  }
  float *device = dev_alloc((size_t)count * sizeof(float));
  dev_upload(device, host, (size_t)count * sizeof(float));
  free(host);
  return device;
}

/* Block sizes: one thread, partial warps, one warp, a partial last warp, full blocks. Element counts
 * smaller and larger than the block, prime and not. */
static const int block_sizes[] = {1, 7, 32, 33, 100, 256, 1000, 1024};
static const int64_t counts[] = {1, 5, 31, 64, 997, 4096, 10007};

/* Relative 1e-6 against float64. What is under test is the merge tree; the sequential part before it,
 * one thread folding k values, has error growing with k (about k 2^-24 at worst), so the cases keep k at
 * or below 128, which is also the regime the kernels' plans put threads in. The tree adds log2(threads)
 * merges, each within a few ulps. */
#define REDUCE_TOLERANCE 1e-6
#define MAX_PER_THREAD 128

Test(reduce, welford_block_matches_float64, .timeout = 300) {
  bnk_context_destroy(test_context()); /* skips the test without a device */
  test_rng rng = rng_fresh();
  for (size_t b = 0; b < sizeof block_sizes / sizeof block_sizes[0]; ++b) {
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; ++k) {
      for (int chunked = 0; chunked < 2; ++chunked) {
        const int64_t count = chunked ? counts[k] / 4 * 4 : counts[k];
        if (count == 0 || count > (int64_t)block_sizes[b] * MAX_PER_THREAD) continue;
        /* The mean within a few standard deviations of 0, as the kernels' data is after they subtract one
         * sample of the channel: Chan's merge then loses nothing. (Unshifted, the error of M2 grows as
         * 2^-24 |mean| / std, which is why the kernels shift.) */
        double *x;
        const double spread = rng_uniform(&rng, 0.1, 4.0);
        float *x_dev = random_data(&rng, count, spread * rng_uniform(&rng, -3.0, 3.0), spread, &x);
        double mean = 0.0, m2 = 0.0;
        for (int64_t i = 0; i < count; ++i) mean += x[i];
        mean /= (double)count;
        for (int64_t i = 0; i < count; ++i) m2 += (x[i] - mean) * (x[i] - mean);
        float *out = dev_alloc(3 * sizeof(float));
        float first[3];
        for (int schedule = 0; schedule < schedule_count(); ++schedule) {
          schedule_use(schedule);
          dev_poison(out, 3 * sizeof(float));
          cr_assert_eq(test_welford_block(x_dev, count, block_sizes[b], chunked, out), cudaSuccess);
          float got[3];
          dev_download(got, out, sizeof got);
          cr_expect_eq(got[0], (float)count, "count %g, expected %lld (threads %d)", got[0], (long long)count,
                       block_sizes[b]);
          const double scale = fabs(mean) + sqrt(m2 / (double)count);
          cr_expect(fabs(got[1] - mean) <= REDUCE_TOLERANCE * scale,
                    "mean %.9g, reference %.9g (threads %d, count %lld, %s)", got[1], mean, block_sizes[b],
                    (long long)count, chunked ? "chunks of 4" : "one at a time");
          cr_expect(fabs(got[2] - m2) <= REDUCE_TOLERANCE * m2 + 1e-30,
                    "M2 %.9g, reference %.9g (threads %d, count %lld, %s)", got[2], m2, block_sizes[b],
                    (long long)count, chunked ? "chunks of 4" : "one at a time");
          if (schedule == 0) memcpy(first, got, sizeof got);
          else expect_bitwise_equal("block Welford", first, got, sizeof got);
        }
        dev_free(out);
        dev_free(x_dev);
        free(x);
      }
    }
  }
}

Test(reduce, sum_block_matches_float64, .timeout = 300) {
  bnk_context_destroy(test_context()); /* skips the test without a device */
  test_rng rng = rng_fresh();
  for (size_t b = 0; b < sizeof block_sizes / sizeof block_sizes[0]; ++b) {
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; ++k) {
      if (counts[k] > (int64_t)block_sizes[b] * MAX_PER_THREAD) continue;
      double *x;
      float *x_dev = random_data(&rng, counts[k], 0.5, 1.0, &x);
      double sum = 0.0, squares = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < counts[k]; ++i) {
        sum += x[i];
        squares += x[i] * x[i];
        magnitude += fabs(x[i]);
      }
      float *out = dev_alloc(2 * sizeof(float));
      float first[2];
      for (int schedule = 0; schedule < schedule_count(); ++schedule) {
        schedule_use(schedule);
        dev_poison(out, 2 * sizeof(float));
        cr_assert_eq(test_sum_block(x_dev, counts[k], block_sizes[b], out), cudaSuccess);
        float got[2];
        dev_download(got, out, sizeof got);
        /* A sum can cancel to near zero: bound the error by the sum of magnitudes. */
        cr_expect(fabs(got[0] - sum) <= REDUCE_TOLERANCE * magnitude, "sum %.9g, reference %.9g (threads %d)", got[0],
                  sum, block_sizes[b]);
        cr_expect(fabs(got[1] - squares) <= REDUCE_TOLERANCE * squares, "sum of squares %.9g, reference %.9g", got[1],
                  squares);
        if (schedule == 0) memcpy(first, got, sizeof got);
        else expect_bitwise_equal("block sum", first, got, sizeof got);
      }
      dev_free(out);
      dev_free(x_dev);
      free(x);
    }
  }
}

/* The channels-last tile merge: every tile width the plans make (powers of two below a warp, whose rows
 * share warps and merge by shuffles, and multiples of 32, merged across warps in shared memory), rows per
 * thread a multiple of the chunk and not, against float64 per channel. */
Test(reduce, tile_reduce_matches_float64, .timeout = 300) {
  (void)test_context();
  test_rng rng = rng_fresh();
  static const int tile_widths[] = {1, 2, 4, 8, 16, 32, 64, 96, 128, 256};
  static const int rows_per_thread[] = {1, 4, 7};
  for (size_t t = 0; t < sizeof tile_widths / sizeof tile_widths[0]; ++t) {
    for (size_t r = 0; r < sizeof rows_per_thread / sizeof rows_per_thread[0]; ++r) {
      const int tile_x = tile_widths[t], tile_y = BNK_STREAM_THREADS / tile_x;
      const int channels = tile_x * 4, rows = tile_y * rows_per_thread[r];
      double *x;
      const double spread = rng_uniform(&rng, 0.1, 4.0);
      float *x_dev = random_data(&rng, (int64_t)rows * channels, spread * rng_uniform(&rng, -3.0, 3.0), spread, &x);
      const size_t out_bytes = (size_t)channels * 4 * sizeof(float);
      float *out = dev_alloc(out_bytes), *got = malloc(out_bytes), *first = malloc(out_bytes);
      for (int schedule = 0; schedule < schedule_count(); ++schedule) {
        schedule_use(schedule);
        dev_poison(out, out_bytes);
        cr_assert_eq(test_tile_reduce(x_dev, tile_x, tile_y, rows_per_thread[r], out), cudaSuccess);
        dev_download(got, out, out_bytes);
        for (int c = 0; c < channels; ++c) {
          double mean = 0.0, m2 = 0.0, magnitude = 0.0;
          for (int i = 0; i < rows; ++i) mean += x[(int64_t)i * channels + c];
          for (int i = 0; i < rows; ++i) magnitude += fabs(x[(int64_t)i * channels + c]);
          const double sum = mean;
          mean /= rows;
          for (int i = 0; i < rows; ++i)
            m2 += (x[(int64_t)i * channels + c] - mean) * (x[(int64_t)i * channels + c] - mean);
          const float *o = got + c * 4;
          cr_expect_eq(o[0], (float)rows, "tile %d x %d channel %d: count %g, expected %d", tile_x, tile_y, c, o[0],
                       rows);
          cr_expect(fabs(o[1] - mean) <= REDUCE_TOLERANCE * (fabs(mean) + sqrt(m2 / rows)),
                    "tile %d x %d, %d rows per thread, channel %d: mean %.9g, reference %.9g", tile_x, tile_y,
                    rows_per_thread[r], c, o[1], mean);
          /* Unlike the kernels' data these channels are not shifted, and with few rows the spread can be
           * far below the mean: each merge rounds the means (to ~2^-24 |mean|), which moves M2 by about
           * that times |delta| n ~ |mean| sqrt(M2 n), whatever M2 is. */
          cr_expect(fabs(o[2] - m2) <= REDUCE_TOLERANCE * (m2 + fabs(mean) * sqrt(m2 * rows)) + 1e-30,
                    "tile %d x %d, %d rows per thread, channel %d: M2 %.9g, reference %.9g", tile_x, tile_y,
                    rows_per_thread[r], c, o[2], m2);
          cr_expect(fabs(o[3] - sum) <= REDUCE_TOLERANCE * magnitude,
                    "tile %d x %d, %d rows per thread, channel %d: sum %.9g, reference %.9g", tile_x, tile_y,
                    rows_per_thread[r], c, o[3], sum);
        }
        if (schedule == 0) memcpy(first, got, out_bytes);
        else expect_bitwise_equal("tile merge", first, got, out_bytes);
      }
      dev_free(out);
      dev_free(x_dev);
      free(got);
      free(first);
      free(x);
    }
  }
}

Test(reduce, partial_warp_sums_only_its_lanes) {
  bnk_context_destroy(test_context()); /* skips the test without a device */
  test_rng rng = rng_fresh();
  double *x;
  float *x_dev = random_data(&rng, 32, 0.0, 1.0, &x);
  float *out = dev_alloc(sizeof(float));
  for (int lanes = 1; lanes <= 32; ++lanes) {
    double sum = 0.0, magnitude = 0.0;
    for (int i = 0; i < lanes; ++i) {
      sum += x[i];
      magnitude += fabs(x[i]);
    }
    for (int schedule = 0; schedule < schedule_count(); ++schedule) {
      schedule_use(schedule);
      dev_poison(out, sizeof(float));
      cr_assert_eq(test_sum_partial_warp(x_dev, lanes, out), cudaSuccess);
      float got;
      dev_download(&got, out, sizeof got);
      cr_expect(fabs(got - sum) <= REDUCE_TOLERANCE * magnitude, "%d lanes: %.9g, reference %.9g", lanes, got, sum);
    }
  }
  dev_free(out);
  dev_free(x_dev);
  free(x);
}

Test(reduce, fast_division_is_exact) {
  bnk_context_destroy(test_context()); /* skips the test without a device */
  test_rng rng = rng_fresh();
  enum { COUNT = 4096 };
  uint64_t dividends[COUNT], quotients[COUNT];
  const uint64_t divisors[] = {
      1, 2, 3, 7, 49, 64, 196, 3136, 65537, 1000003, 4294967295ull, 4294967297ull, (1ull << 40) + 15, (1ull << 62) + 1};
  uint64_t *dividends_dev = dev_alloc(sizeof dividends), *quotients_dev = dev_alloc(sizeof quotients);
  for (size_t d = 0; d < sizeof divisors / sizeof divisors[0]; ++d) {
    const uint64_t divisor = divisors[d];
    for (int i = 0; i < COUNT; ++i) {
      /* Around multiples of the divisor (where off-by-one errors live), small values, and up to 2^63. */
      const uint64_t multiple = (uint64_t)rng_uniform(&rng, 0.0, 9.2e18) / divisor;
      const uint64_t near = multiple * divisor + (uint64_t)(i % 3) - 1u;
      dividends[i] = i < 64 ? (uint64_t)i : i % 4 == 0 ? (uint64_t)rng_uniform(&rng, 0.0, 9.2e18) : near;
      if (dividends[i] >= (1ull << 63)) dividends[i] = (1ull << 63) - 1 - (uint64_t)i;
    }
    dev_upload(dividends_dev, dividends, sizeof dividends);
    dev_poison(quotients_dev, sizeof quotients);
    cr_assert_eq(test_fast_division(dividends_dev, COUNT, divisor, quotients_dev), cudaSuccess);
    dev_download(quotients, quotients_dev, sizeof quotients);
    for (int i = 0; i < COUNT; ++i)
      cr_expect_eq(quotients[i], dividends[i] / divisor, "%llu / %llu gave %llu", (unsigned long long)dividends[i],
                   (unsigned long long)divisor, (unsigned long long)quotients[i]);
  }
  dev_free(dividends_dev);
  dev_free(quotients_dev);
}

/* BNK_DYNAMIC_SHARED: the launch's dynamic shared memory, shared by the block, across a barrier. */
Test(reduce, dynamic_shared_memory) {
  bnk_context_destroy(test_context()); /* skips the test without a device */
  enum { THREADS = 1000 };
  float host[THREADS], got[THREADS];
  for (int i = 0; i < THREADS; ++i) host[i] = (float)(i * 3 + 1);
  float *x = dev_alloc(sizeof host), *out = dev_alloc(sizeof got);
  dev_upload(x, host, sizeof host);
  for (int schedule = 0; schedule < schedule_count(); ++schedule) {
    schedule_use(schedule);
    dev_poison(out, sizeof got);
    cr_assert_eq(test_reverse_in_shared(x, THREADS, out), cudaSuccess);
    dev_download(got, out, sizeof got);
    for (int i = 0; i < THREADS; ++i)
      cr_expect_eq(got[i], host[THREADS - 1 - i], "[%s] out[%d] = %g", schedule_name(schedule), i, got[i]);
  }
  dev_free(x);
  dev_free(out);
}
