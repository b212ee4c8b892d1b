/* Helpers shared by the emulation's own tests. */
#ifndef BNK_EMU_TEST_H
#define BNK_EMU_TEST_H

#include <bnk_emu/control.h>
#include <bnk_emu/device.h>
#include <criterion/criterion.h>

#include <cstring>
#include <vector>

/* Device buffer holding n elements of T, freed at scope exit. */
template <class T>
struct dev_buf {
  T *p = nullptr;
  size_t n = 0;
  explicit dev_buf(size_t count) : n(count) {
    cr_assert_eq(cudaMalloc(reinterpret_cast<void **>(&p), count * sizeof(T)), cudaSuccess);
  }
  dev_buf(const std::vector<T> &v) : dev_buf(v.size()) { upload(v); }
  ~dev_buf() { cudaFree(p); }
  dev_buf(const dev_buf &) = delete;
  dev_buf &operator=(const dev_buf &) = delete;
  void upload(const std::vector<T> &v) {
    cr_assert_eq(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  void zero() { cr_assert_eq(cudaMemset(p, 0, n * sizeof(T)), cudaSuccess); }
  std::vector<T> download() const {
    std::vector<T> v(n);
    cr_assert_eq(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

/* Asserts that the last launch succeeded (and clears the error state). */
#define EXPECT_LAUNCH_OK()                                                                                   \
  do {                                                                                                       \
    cudaError_t e_ = cudaGetLastError();                                                                     \
    cr_assert_eq(e_, cudaSuccess, "launch failed: %s: %s", cudaGetErrorName(e_), bnk_emu_last_diagnostic()); \
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);                                                      \
  } while (0)

static const bnk_emu_schedule kAllSchedules[] = {BNK_EMU_FORWARD, BNK_EMU_REVERSE, BNK_EMU_RANDOM};

#endif
