#include "tests/random.h"

uint64_t rng_next(rng_state *rng) {
  uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double rng_uniform(rng_state *rng, double lo, double hi) {
  return lo + (hi - lo) * ((double)(rng_next(rng) >> 11) * 0x1.0p-53);
}
