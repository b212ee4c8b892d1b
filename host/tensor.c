#include <inttypes.h>

#include "host/internal.h"

static int64_t dtype_bytes(bnk_dtype dtype) { return dtype == BNK_FLOAT32 ? 4 : 2; }

bnk_status bnk_tensor_desc_check(const bnk_tensor_desc *desc) {
  if (desc == NULL) return bnk_fail(BNK_ERROR_INVALID_VALUE, "desc must not be NULL");
  if (desc->dtype != BNK_FLOAT32 && desc->dtype != BNK_FLOAT16 && desc->dtype != BNK_BFLOAT16)
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "dtype must be BNK_FLOAT32, BNK_FLOAT16 or BNK_BFLOAT16, got %d",
                    (int)desc->dtype);
  if (desc->layout != BNK_NCHW && desc->layout != BNK_NHWC)
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "layout must be BNK_NCHW or BNK_NHWC, got %d", (int)desc->layout);
  if (desc->spatial_dims < 0 || desc->spatial_dims > BNK_MAX_SPATIAL_DIMS)
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "spatial_dims must be in [0, %d], got %d", BNK_MAX_SPATIAL_DIMS,
                    desc->spatial_dims);
  if (desc->n < 0) return bnk_fail(BNK_ERROR_INVALID_VALUE, "N must be >= 0, got %" PRId64, desc->n);
  if (desc->c <= 0) return bnk_fail(BNK_ERROR_INVALID_VALUE, "C must be > 0, got %" PRId64, desc->c);
  int64_t bytes = dtype_bytes(desc->dtype);
  int overflow = __builtin_mul_overflow(bytes, desc->n, &bytes) || __builtin_mul_overflow(bytes, desc->c, &bytes);
  for (int d = 0; d < desc->spatial_dims; ++d) {
    if (desc->spatial[d] < 0)
      return bnk_fail(BNK_ERROR_INVALID_VALUE, "spatial[%d] must be >= 0, got %" PRId64, d, desc->spatial[d]);
    overflow = overflow || __builtin_mul_overflow(bytes, desc->spatial[d], &bytes);
  }
  if (overflow)
    return bnk_fail(BNK_ERROR_INVALID_VALUE,
                    "tensor of N=%" PRId64 ", C=%" PRId64 " and %d spatial dims is larger than 2^63 bytes",
                    desc->n, desc->c, desc->spatial_dims);
  return BNK_SUCCESS;
}

bnk_status bnk_tensor_desc_init(bnk_tensor_desc *desc, bnk_dtype dtype, bnk_layout layout, int64_t n, int64_t c,
                                int spatial_dims, const int64_t *spatial) {
  bnk_clear_error();
  if (desc == NULL) return bnk_fail(BNK_ERROR_INVALID_VALUE, "desc must not be NULL");
  if (spatial == NULL && spatial_dims > 0)
    return bnk_fail(BNK_ERROR_INVALID_VALUE, "spatial must not be NULL when spatial_dims is %d", spatial_dims);
  bnk_tensor_desc filled = {dtype, layout, spatial_dims, n, c, {1, 1, 1}};
  for (int d = 0; d < spatial_dims && d < BNK_MAX_SPATIAL_DIMS; ++d) filled.spatial[d] = spatial[d];
  bnk_status status = bnk_tensor_desc_check(&filled);
  if (status == BNK_SUCCESS) *desc = filled;
  return status;
}

int64_t bnk_tensor_desc_elements(const bnk_tensor_desc *desc) {
  bnk_clear_error();
  if (bnk_tensor_desc_check(desc) != BNK_SUCCESS) return 0;
  bnk_view view = bnk_view_of(desc);
  return view.n * view.c * view.s;
}

bnk_view bnk_view_of(const bnk_tensor_desc *desc) {
  int64_t spatial = 1;
  for (int d = 0; d < desc->spatial_dims; ++d) spatial *= desc->spatial[d];
  bnk_view view;
  view.c = desc->c;
  view.dtype = (int)desc->dtype;
  /* With one element per (n, c) both layouts are the same (N, C) matrix: use the channels-last kernels,
   * whose reads are contiguous there. */
  view.channels_last = desc->layout == BNK_NHWC || spatial == 1;
  view.n = view.channels_last ? desc->n * spatial : desc->n;
  view.s = view.channels_last ? 1 : spatial;
  return view;
}

int64_t bnk_view_per_channel(const bnk_view *view) { return view->n * view->s; }
