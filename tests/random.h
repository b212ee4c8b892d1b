/* The one pseudo-random generator of the tests and the benchmark: splitmix64, small, fast and good enough
 * for test data, with a state that a seed fully determines (a failure's logged seed repeats it). */
#ifndef BNK_TESTS_RANDOM_H
#define BNK_TESTS_RANDOM_H

#include <stdint.h>

typedef struct rng_state {
  uint64_t state;
} rng_state;

/* The next 64 random bits. */
uint64_t rng_next(rng_state *rng);
/* Uniform in [lo, hi), from the top 53 bits of one draw. */
double rng_uniform(rng_state *rng, double lo, double hi);

#endif
