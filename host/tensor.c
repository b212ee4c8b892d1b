#include "host/internal.h"

bnk_status bnk_tensor_desc_init(bnk_tensor_desc *desc, bnk_dtype dtype, bnk_layout layout, int64_t n, int64_t c,
                                int spatial_dims, const int64_t *spatial) {
  bnk__clear_error();
  if (desc == NULL) return bnk__fail(BNK_ERROR_INVALID_VALUE, "desc must not be NULL");
  if (spatial == NULL && spatial_dims > 0)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "spatial must not be NULL when spatial_dims is %d", spatial_dims);
  bnk_tensor_desc filled = {dtype, layout, spatial_dims, n, c, {1, 1, 1}};
  for (int d = 0; d < spatial_dims && d < BNK_MAX_SPATIAL_DIMS; ++d) filled.spatial[d] = spatial[d];
  BNK__TRY(bnk_tensor_desc_check(&filled));
  *desc = filled;
  return BNK_SUCCESS;
}

int64_t bnk_tensor_desc_elements(const bnk_tensor_desc *desc) {
  bnk__clear_error();
  if (bnk_tensor_desc_check(desc) != BNK_SUCCESS) return 0;
  bnk_view view = bnk__view_of(desc);
  return view.n * view.c * view.s;
}

bnk_view bnk__view_of(const bnk_tensor_desc *desc) {
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

int64_t bnk__view_per_channel(const bnk_view *view) { return view->n * view->s; }

int bnk__is_empty(const bnk_tensor_desc *desc) {
  const bnk_view view = bnk__view_of(desc);
  return bnk__view_per_channel(&view) == 0;
}
