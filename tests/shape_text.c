#include "tests/shape_text.h"

#include <inttypes.h>
#include <stdio.h>

int format_extents(char *out, size_t size, int64_t n, int64_t c, int spatial_dims, const int64_t *spatial) {
  int length = snprintf(out, size, "%" PRId64 "x%" PRId64, n, c);
  for (int d = 0; d < spatial_dims && length >= 0; ++d) {
    const size_t used = (size_t)length < size ? (size_t)length : size;
    const int more = snprintf(out + used, size - used, "x%" PRId64, spatial[d]);
    length = more < 0 ? more : length + more;
  }
  return length;
}
