/* The one spelling of a tensor's extents, "2x3x5x7" (N, C, then the spatial extents), in the tests' failure
 * messages and in the benchmark's rows. */
#ifndef BNK_TESTS_SHAPE_TEXT_H
#define BNK_TESTS_SHAPE_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Writes "NxC[xS...]" into out (cut short, still terminated, when size is too small); returns the length of
 * the full text, as snprintf does. */
int format_extents(char *out, size_t size, int64_t n, int64_t c, int spatial_dims, const int64_t *spatial);

#endif
