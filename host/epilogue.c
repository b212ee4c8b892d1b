/* Checks of the fused epilogues' arguments, and their translation into what the kernels take. */
#include <stdint.h>

#include "host/internal.h"

static int64_t elements_of(const bnk_tensor_desc *desc) {
  const bnk_view view = bnk__view_of(desc);
  return view.n * view.c * view.s;
}

static size_t tensor_bytes(const bnk_tensor_desc *desc) {
  return (size_t)elements_of(desc) * (desc->dtype == BNK_FLOAT32 ? 4 : 2);
}

bnk_status bnk_epilogue_mask_size(const bnk_tensor_desc *desc, size_t *bytes) {
  bnk__clear_error();
  BNK__TRY(bnk_tensor_desc_check(desc));
  BNK__TRY(bnk__require_pointer(bytes, "bytes"));
  *bytes = bnk_mask_bytes(elements_of(desc));
  return BNK_SUCCESS;
}

/* Whether [a, a + a_bytes) and [b, b + b_bytes) share a byte; never for a NULL pointer. */
static int overlaps(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
  if (a == NULL || b == NULL) return 0;
  const uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

static bnk_status require_kind(bnk_epilogue_kind kind) {
  if (kind != BNK_EPILOGUE_NONE && kind != BNK_EPILOGUE_RELU && kind != BNK_EPILOGUE_ADD_RELU)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "epilogue->kind must be BNK_EPILOGUE_NONE, BNK_EPILOGUE_RELU or BNK_EPILOGUE_ADD_RELU, got %d",
                     (int)kind);
  return BNK_SUCCESS;
}

/* The mask is read and written a 32-bit word at a time, and holds one bit per element. */
static bnk_status require_mask(const void *mask, size_t mask_bytes, const bnk_tensor_desc *desc) {
  if ((uintptr_t)mask % 4 != 0)
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "epilogue->mask must be 4-byte aligned, got %p", mask);
  const size_t needed = bnk_mask_bytes(elements_of(desc));
  if (mask_bytes < needed)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "epilogue->mask_bytes must be >= %zu (bnk_epilogue_mask_size) for this shape, got %zu", needed,
                     mask_bytes);
  return BNK_SUCCESS;
}

bnk_status bnk__epilogue_args_of(const bnk_epilogue *epilogue, const bnk_tensor_desc *desc, const void *x,
                                 const void *y, bnk_epilogue_args *args) {
  const bnk_epilogue_args plain = {BNK_EPILOGUE_NONE, NULL, NULL};
  *args = plain;
  if (epilogue == NULL) return BNK_SUCCESS;
  bnk_status status = require_kind(epilogue->kind);
  if (status != BNK_SUCCESS) return status;
  const size_t bytes = tensor_bytes(desc);
  const void *z = epilogue->z;
  if (epilogue->kind == BNK_EPILOGUE_ADD_RELU) {
    if (z == NULL)
      return bnk__fail(BNK_ERROR_INVALID_VALUE, "epilogue->z must not be NULL when epilogue->kind is "
                                                "BNK_EPILOGUE_ADD_RELU");
    /* Equal to y, each element of z is read by the thread that then writes y there; a shifted overlap would
     * let one thread overwrite residual values that another has yet to read. */
    if (z != y && overlaps(z, bytes, y, bytes))
      return bnk__fail(BNK_ERROR_INVALID_VALUE,
                       "epilogue->z must be y or not overlap it, got z=%p and y=%p (%zu bytes each)", z, y, bytes);
  } else if (z != NULL) {
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "epilogue->z must be NULL unless epilogue->kind is "
                     "BNK_EPILOGUE_ADD_RELU, got %p with kind %d",
                     z, (int)epilogue->kind);
  }
  if (epilogue->mask != NULL) {
    if (epilogue->kind == BNK_EPILOGUE_NONE)
      return bnk__fail(BNK_ERROR_INVALID_VALUE,
                       "epilogue->mask must be NULL when epilogue->kind is BNK_EPILOGUE_NONE (no ReLU to record), "
                       "got %p",
                       epilogue->mask);
    status = require_mask(epilogue->mask, epilogue->mask_bytes, desc);
    if (status != BNK_SUCCESS) return status;
    const size_t mask_bytes = bnk_mask_bytes(elements_of(desc));
    if (overlaps(epilogue->mask, mask_bytes, x, bytes) || overlaps(epilogue->mask, mask_bytes, y, bytes) ||
        overlaps(epilogue->mask, mask_bytes, z, bytes))
      return bnk__fail(BNK_ERROR_INVALID_VALUE, "epilogue->mask (%p, %zu bytes) must not overlap x, y or z",
                       epilogue->mask, mask_bytes);
  }
  args->kind = (int)epilogue->kind;
  args->z = z;
  args->mask = epilogue->mask;
  return BNK_SUCCESS;
}

bnk_status bnk__grad_epilogue_args_of(const bnk_epilogue_grad *epilogue, const bnk_tensor_desc *desc, const void *x,
                                      const void *dy, const void *dx, bnk_grad_epilogue_args *args) {
  const bnk_grad_epilogue_args plain = {BNK_GRAD_PLAIN, NULL, NULL, NULL};
  *args = plain;
  if (epilogue == NULL) return BNK_SUCCESS;
  bnk_status status = require_kind(epilogue->kind);
  if (status != BNK_SUCCESS) return status;
  const void *y = epilogue->y, *mask = epilogue->mask;
  void *dz = epilogue->dz;
  if (epilogue->kind == BNK_EPILOGUE_NONE) {
    if (y != NULL || mask != NULL || dz != NULL)
      return bnk__fail(BNK_ERROR_INVALID_VALUE,
                       "epilogue->y, epilogue->mask and epilogue->dz must be NULL when epilogue->kind is "
                       "BNK_EPILOGUE_NONE, got y=%p, mask=%p, dz=%p",
                       y, mask, dz);
    return BNK_SUCCESS;
  }
  if (y == NULL && mask == NULL)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "epilogue->y or epilogue->mask must be given for a ReLU epilogue (where y > 0 decides the "
                     "gradient), got neither");
  if (y != NULL && mask != NULL)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "only one of epilogue->y and epilogue->mask may be given, got y=%p and mask=%p", y, mask);
  if (mask != NULL) {
    status = require_mask(mask, epilogue->mask_bytes, desc);
    if (status != BNK_SUCCESS) return status;
  }
  if (dz != NULL && epilogue->kind != BNK_EPILOGUE_ADD_RELU)
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "epilogue->dz must be NULL unless epilogue->kind is BNK_EPILOGUE_ADD_RELU, got %p", dz);
  const size_t bytes = tensor_bytes(desc);
  const size_t mask_bytes = bnk_mask_bytes(elements_of(desc));
  /* dz is written while x, dy, y and the mask are still to be read by other threads and by the dx pass. */
  if (overlaps(dz, bytes, x, bytes) || overlaps(dz, bytes, dy, bytes) || overlaps(dz, bytes, dx, bytes) ||
      overlaps(dz, bytes, y, bytes) || overlaps(dz, bytes, mask, mask_bytes))
    return bnk__fail(BNK_ERROR_INVALID_VALUE,
                     "epilogue->dz (%p) must not overlap x, dy, dx, epilogue->y or "
                     "epilogue->mask",
                     dz);
  if (overlaps(dx, bytes, y, bytes) || overlaps(dx, bytes, mask, mask_bytes))
    return bnk__fail(BNK_ERROR_INVALID_VALUE, "dx (%p) must not overlap epilogue->y or epilogue->mask", dx);
  args->source = y != NULL ? BNK_GRAD_FROM_Y : BNK_GRAD_FROM_MASK;
  args->y = y;
  args->mask = mask;
  args->dz = dz;
  return BNK_SUCCESS;
}
