/* The API surface: version, statuses, descriptors, contexts. */
#include <string.h>

#include "tests/harness.h"

Test(api, version) {
  cr_expect_eq(bnk_version(), BNK_VERSION_NUMBER);
  cr_expect_str_eq(bnk_version_string(), BNK_VERSION_STRING);
  cr_expect_eq(BNK_VERSION_NUMBER, BNK_VERSION_MAJOR * 10000 + BNK_VERSION_MINOR * 100 + BNK_VERSION_PATCH);
}

Test(api, status_names_and_strings) {
  cr_expect_eq(BNK_SUCCESS, 0);
  cr_expect_eq(BNK_ERROR_INVALID_VALUE, 1);
  cr_expect_eq(BNK_ERROR_NOT_SUPPORTED, 2);
  cr_expect_eq(BNK_ERROR_WORKSPACE_TOO_SMALL, 3);
  cr_expect_eq(BNK_ERROR_CUDA, 4);
  cr_expect_eq(BNK_ERROR_NO_DEVICE, 5);
  cr_expect_eq(BNK_ERROR_CUBLAS, 6);
  cr_expect_eq(BNK_ERROR_NCCL, 7);
  cr_expect_eq(BNK_ERROR_INTERNAL, 8);
  cr_expect_str_eq(bnk_status_name(BNK_ERROR_WORKSPACE_TOO_SMALL), "BNK_ERROR_WORKSPACE_TOO_SMALL");
  cr_expect_str_eq(bnk_status_name(BNK_SUCCESS), "BNK_SUCCESS");
  cr_expect_str_eq(bnk_status_name((bnk_status)99), "BNK_STATUS_UNKNOWN");
  cr_expect_str_eq(bnk_status_string(BNK_SUCCESS), "success");
  cr_expect_str_eq(bnk_status_string((bnk_status)-1), "unknown status");
  for (int s = 0; s <= 8; ++s) {
    cr_expect(strncmp(bnk_status_name((bnk_status)s), "BNK_", 4) == 0);
    cr_expect(strlen(bnk_status_string((bnk_status)s)) > 5);
  }
}

Test(api, descriptor_accepts_every_rank_and_layout) {
  const int64_t spatial[3] = {4, 5, 6};
  for (int dims = 0; dims <= 3; ++dims) {
    bnk_tensor_desc desc;
    cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_BFLOAT16, BNK_NHWC, 2, 3, dims, spatial), BNK_SUCCESS);
    int64_t expected = 6;
    for (int d = 0; d < dims; ++d) expected *= spatial[d];
    cr_expect_eq(bnk_tensor_desc_elements(&desc), expected);
    for (int d = dims; d < 3; ++d) cr_expect_eq(desc.spatial[d], 1);
  }
  bnk_tensor_desc empty;
  cr_expect_eq(bnk_tensor_desc_init(&empty, BNK_FLOAT32, BNK_NCHW, 0, 3, 0, NULL), BNK_SUCCESS);
  cr_expect_eq(bnk_tensor_desc_elements(&empty), 0);
}

static void expect_rejected(bnk_status status, const char *needle) {
  expect_rejection(status, BNK_ERROR_INVALID_VALUE, needle);
}

/* Member by member: the descriptor's padding (after spatial_dims) need not survive a copy. */
static int same_desc(const bnk_tensor_desc *a, const bnk_tensor_desc *b) {
  int same = a->dtype == b->dtype && a->layout == b->layout && a->spatial_dims == b->spatial_dims && a->n == b->n &&
             a->c == b->c;
  for (int d = 0; d < BNK_MAX_SPATIAL_DIMS; ++d) same = same && a->spatial[d] == b->spatial[d];
  return same;
}

Test(api, descriptor_rejects_bad_shapes_and_leaves_it_unchanged) {
  bnk_tensor_desc desc;
  memset(&desc, 0x5a, sizeof desc);
  bnk_tensor_desc before = desc;
  const int64_t spatial[3] = {4, -2, 6};
  const int64_t huge[3] = {INT64_C(1) << 40, INT64_C(1) << 20, 1};
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 0, 0, NULL), "C must be > 0, got 0");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, -1, 3, 0, NULL), "N must be >= 0, got -1");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 3, 2, spatial),
                  "spatial[1] must be >= 0, got -2");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 3, 4, spatial),
                  "spatial_dims must be in [0, 3], got 4");
  expect_rejected(bnk_tensor_desc_init(&desc, (bnk_dtype)7, BNK_NCHW, 2, 3, 0, NULL), "dtype");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, (bnk_layout)2, 2, 3, 0, NULL), "layout must be");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 3, 2, NULL), "spatial must not be NULL");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NHWC, 1 << 10, 3, 2, huge), "larger than 2^63 bytes");
  /* Empty, but its other extents overflow when multiplied (found by the fuzzer:
   * tests/fuzz/corpus/regression-empty-desc-overflowing-extents). */
  const int64_t empty_huge[3] = {2, INT64_MAX, 0};
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT16, BNK_NCHW, 0, 1, 2, empty_huge),
                  "larger than 2^63 bytes in its non-zero extents");
  expect_rejected(bnk_tensor_desc_init(&desc, BNK_FLOAT16, BNK_NCHW, 3, 1, 3, empty_huge),
                  "larger than 2^63 bytes in its non-zero extents");
  expect_rejected(bnk_tensor_desc_init(NULL, BNK_FLOAT32, BNK_NHWC, 1, 3, 0, NULL), "desc must not be NULL");
  cr_expect(same_desc(&desc, &before), "a rejected init wrote the descriptor");
  cr_expect_eq(bnk_tensor_desc_elements(NULL), 0);
}

Test(api, error_message_clears_on_success) {
  bnk_tensor_desc desc;
  cr_assert_neq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 0, 0, NULL), BNK_SUCCESS);
  cr_assert_neq(bnk_last_error_message()[0], '\0');
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NCHW, 2, 1, 0, NULL), BNK_SUCCESS);
  cr_expect_str_eq(bnk_last_error_message(), "");
  /* Found by the fuzzer (tests/fuzz/corpus/regression-desc-check-keeps-stale-message): a successful
   * bnk_tensor_desc_check kept the message of the failure before it. */
  cr_assert_neq(bnk_tensor_desc_check(NULL), BNK_SUCCESS);
  cr_assert_neq(bnk_last_error_message()[0], '\0');
  cr_assert_eq(bnk_tensor_desc_check(&desc), BNK_SUCCESS);
  cr_expect_str_eq(bnk_last_error_message(), "");
}

Test(api, context_lifecycle) {
  bnk_context_destroy(NULL);
  bnk_context *ctx = test_context();
  int device = -5, sms = 0;
  cr_expect_eq(bnk_context_get_device(ctx, &device), BNK_SUCCESS);
  cr_expect_geq(device, 0);
  cr_expect_eq(bnk_context_get_sm_count(ctx, &sms), BNK_SUCCESS);
  cr_expect_gt(sms, 0);
  bnk_stream stream = (bnk_stream)0x1;
  cr_expect_eq(bnk_context_get_stream(ctx, &stream), BNK_SUCCESS);
  cr_expect_null(stream, "a new context uses the default stream");
  bnk_stream mine = (bnk_stream)0x1234;
  cr_expect_eq(bnk_context_set_stream(ctx, mine), BNK_SUCCESS);
  cr_expect_eq(bnk_context_get_stream(ctx, &stream), BNK_SUCCESS);
  cr_expect_eq(stream, mine);
  expect_rejected(bnk_context_get_stream(ctx, NULL), "stream must not be NULL");
  expect_rejected(bnk_context_set_stream(NULL, mine), "ctx must not be NULL");
  expect_rejected(bnk_context_create(NULL, 0), "ctx must not be NULL");
  bnk_context *other = NULL;
  expect_rejected(bnk_context_create(&other, 1000), "device must be <");
  expect_rejected(bnk_context_create(&other, -2), "device must be -1 or a device ordinal, got -2");
  cr_expect_null(other);
  bnk_context_destroy(ctx);
}
