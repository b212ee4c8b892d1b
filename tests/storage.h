/* Host-side storage types of x, y, dy and dx: float32 as is, float16 and bfloat16 as their bit patterns.
 * The tests and the benchmark write their random data in the storage type and read the library's results
 * back from it; the float64 reference then works on exactly the values the device saw. */
#ifndef BNK_TESTS_STORAGE_H
#define BNK_TESTS_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "bnk.h"

size_t storage_element_bytes(bnk_dtype dtype);
/* "f32", "f16" or "bf16", the spelling --dtype accepts. */
const char *storage_name(bnk_dtype dtype);
/* Rounds value to the storage type (to nearest, ties to even) and stores it as element index of base.
 * Through float first: a double may round twice, which is harmless for the random data stored here. */
void storage_store(bnk_dtype dtype, void *base, int64_t index, float value);
/* Element index of base, exactly, as a double. */
double storage_load(bnk_dtype dtype, const void *base, int64_t index);
/* Unit in the last place of the storage type at |value| (the subnormal unit below the normal range). */
double storage_ulp(bnk_dtype dtype, double value);

#endif
