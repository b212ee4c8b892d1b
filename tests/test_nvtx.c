/* NVTX ranges: every public compute call is one range named by op, layout, dtype and shape, seen by a
 * tool attached the way nsys attaches. Built with BNK_NVTX=OFF (BNK_TEST_NVTX_OFF) there are none. */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <stdlib.h>
#include <string.h>

#include "tests/harness.h"

int nvtx_recorder_pushes(void);
int nvtx_recorder_pops(void);
const char *nvtx_recorder_name(int index);

Test(nvtx, compute_calls_are_named_ranges) {
  /* Before the library's first range: NVTX looks for a tool once, as nsys would have set it up. */
  setenv("NVTX_INJECTION64_PATH", BNK_NVTX_RECORDER_PATH, 1);
  bnk_context *ctx = test_context();
  const int64_t spatial[2] = {4, 5};
  bnk_tensor_desc desc;
  cr_assert_eq(bnk_tensor_desc_init(&desc, BNK_FLOAT32, BNK_NHWC, 2, 3, 2, spatial), BNK_SUCCESS);
  float *x = dev_alloc(120 * 4), *y = dev_alloc(120 * 4), *stats = dev_alloc(3 * 4);
  float ones[3] = {1.0f, 1.0f, 1.0f}, zeros[120] = {0};
  dev_upload(stats, ones, sizeof ones);
  dev_upload(x, zeros, sizeof zeros);
  size_t bytes = 0;
  cr_assert_eq(bnk_forward_training_workspace_size(ctx, &desc, &bytes), BNK_SUCCESS);
  void *ws = dev_alloc(bytes);
  cr_assert_eq(bnk_forward_inference(ctx, &desc, x, y, NULL, NULL, stats, stats, 1e-5), BNK_SUCCESS);
  float *save = dev_alloc(6 * 4);
  cr_assert_eq(
      bnk_forward_training(ctx, &desc, x, y, NULL, NULL, NULL, NULL, NULL, 0.1, 1e-5, save, save + 3, ws, bytes),
      BNK_SUCCESS);
  size_t backward_bytes = 0;
  cr_assert_eq(bnk_backward_workspace_size(ctx, &desc, &backward_bytes), BNK_SUCCESS);
  void *backward_ws = dev_alloc(backward_bytes);
  cr_assert_eq(bnk_backward(ctx, &desc, x, y, y, NULL, NULL, NULL, save, save + 3, backward_ws, backward_bytes),
               BNK_SUCCESS, "%s", bnk_last_error_message());
  cr_assert_eq(bnk_inference_params(ctx, 3, NULL, NULL, stats, stats, 1e-5, save, save + 3), BNK_SUCCESS);
  /* A rejected call opens no range. */
  cr_assert_neq(bnk_forward_inference(ctx, &desc, x, y, NULL, NULL, stats, stats, -1.0), BNK_SUCCESS);
#ifdef BNK_TEST_NVTX_OFF
  cr_expect_eq(nvtx_recorder_pushes(), 0, "built without NVTX, yet %d ranges were pushed", nvtx_recorder_pushes());
#else
  cr_expect_eq(nvtx_recorder_pushes(), 4);
  cr_expect_eq(nvtx_recorder_pops(), 4);
  cr_expect_str_eq(nvtx_recorder_name(0), "bnk.fwd_infer NHWC f32 2x3x4x5");
  cr_expect_str_eq(nvtx_recorder_name(1), "bnk.fwd_train NHWC f32 2x3x4x5");
  cr_expect_str_eq(nvtx_recorder_name(2), "bnk.bwd NHWC f32 2x3x4x5");
  cr_expect_str_eq(nvtx_recorder_name(3), "bnk.inference_params NCHW f32 1x3");
#endif
  dev_free(x);
  dev_free(y);
  dev_free(stats);
  dev_free(ws);
  dev_free(save);
  dev_free(backward_ws);
  bnk_context_destroy(ctx);
}
