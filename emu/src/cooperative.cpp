/*
 * Cooperative launches in the bnk host emulation of CUDA: the emulated
 * device's SM count, and the grid barrier behind this_grid().sync().
 * The engine (engine.cpp) runs every block of a cooperative launch on its
 * own OS thread; this file holds what the blocks share.  See
 * docs/emulation.md, "Cooperative launches".
 */
#include "internal.h"

#include <bnk_emu/control.h>

#include <atomic>
#include <cstdlib>

namespace bnk_emu {
namespace detail {
namespace {

int sm_count_from_env() {
  if (const char *s = std::getenv("BNK_EMU_SMS")) {
    const long n = std::strtol(s, nullptr, 10);
    if (n >= 1 && n <= kNumSMs) return int(n);
  }
  return kNumSMs;
}

std::atomic<int> &sm_setting() {
  static std::atomic<int> n{sm_count_from_env()};
  return n;
}

}  // namespace

int sm_count() { return sm_setting().load(std::memory_order_relaxed); }

GridBarrier::Outcome GridBarrier::arrive_and_wait(const char *file, int line) {
  std::unique_lock<std::mutex> lk(mu_);
  if (aborted_) return ABORTED;
  if (exited_ > 0) return BLOCKS_EXITED;
  if (arrived_ == 0) {
    file_ = file;
    line_ = line;
  }
  if (++arrived_ == nblocks_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return RELEASED;
  }
  const unsigned long long gen = generation_;
  cv_.wait(lk, [&] { return aborted_ || generation_ != gen; });
  return generation_ != gen ? RELEASED : ABORTED;
}

unsigned long long GridBarrier::block_exited(const char **file, int *line) {
  std::lock_guard<std::mutex> lk(mu_);
  ++exited_;
  *file = file_;
  *line = line_;
  return arrived_;
}

unsigned long long GridBarrier::exited_blocks() {
  std::lock_guard<std::mutex> lk(mu_);
  return exited_;
}

void GridBarrier::abort() {
  std::lock_guard<std::mutex> lk(mu_);
  aborted_ = true;
  cv_.notify_all();
}

}  // namespace detail
}  // namespace bnk_emu

#pragma GCC visibility push(default)
extern "C" {

/* The C entry points get the kernel as an address and its arguments as
 * untyped pointers; the emulation cannot call a host function from those.
 * Kernel sources reach the templates of <bnk_emu/runtime_cxx.h> instead. */
cudaError_t cudaLaunchCooperativeKernel(const void *func, dim3 gridDim, dim3 blockDim, void **args, size_t sharedMem,
                                        cudaStream_t stream) {
  (void)func, (void)gridDim, (void)blockDim, (void)args, (void)sharedMem, (void)stream;
  return bnk_emu::detail::record_error(cudaErrorInvalidDeviceFunction);
}

cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t *config, const void *func, void **args) {
  (void)config, (void)func, (void)args;
  return bnk_emu::detail::record_error(cudaErrorInvalidDeviceFunction);
}

void bnk_emu_set_sm_count(int n) {
  bnk_emu::detail::sm_setting().store(n >= 1 && n <= bnk_emu::detail::kNumSMs ? n
                                                                              : bnk_emu::detail::sm_count_from_env());
}

int bnk_emu_get_sm_count(void) { return bnk_emu::detail::sm_count(); }

}  // extern "C"
#pragma GCC visibility pop
