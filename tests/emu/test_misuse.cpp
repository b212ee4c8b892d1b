/* Kernel misuse is reported as a launch failure with a diagnostic, never hung. */
#include "emu_test.h"

#include <atomic>
#include <stdexcept>
#include <string>

namespace {

int g_line; /* each kernel stores the line of its faulty call here, on the same source line */

std::atomic<int> g_unwound{0};
struct Guard {
  ~Guard() { g_unwound.fetch_add(1); }
};

/* Asserts the launch failed with cudaErrorLaunchFailure and that the
 * diagnostic names this file, the faulty line and every given fragment. */
void expect_misuse(const char *what) {
  cr_assert_eq(cudaPeekAtLastError(), cudaErrorLaunchFailure);
  cr_assert_eq(cudaGetLastError(), cudaErrorLaunchFailure);
  cr_assert_eq(cudaGetLastError(), cudaSuccess, "cudaGetLastError resets the error");
  cr_assert_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure, "the next synchronisation reports the failure");
  cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
  /* As with the real runtime, the failing synchronisation recorded the error too. */
  cr_assert_eq(cudaGetLastError(), cudaErrorLaunchFailure);
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
  const std::string d = bnk_emu_last_diagnostic();
  const std::string site = "test_misuse.cpp:" + std::to_string(g_line) + ":";
  cr_assert(d.find(site) != std::string::npos, "diagnostic does not name %s: %s", site.c_str(), d.c_str());
  cr_assert(d.find(what) != std::string::npos, "diagnostic lacks \"%s\": %s", what, d.c_str());
  cr_assert(d.find("block (") != std::string::npos, "diagnostic names no block: %s", d.c_str());
}

__global__ void partial_barrier(int *out) {
  Guard g;
  if (threadIdx.x == 5) return;
  g_line = __LINE__ + 1;  // the line of the call below
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void barrier_after_exit(int *out) {
  if (threadIdx.x == 40) {
    out[0] = 1;
    return;
  }
  g_line = __LINE__ + 1;  // the line of the call below
  __syncthreads();
}

__global__ void deadlock(int *out) {
  const unsigned lane = threadIdx.x & 31;
  int v = int(lane);
  if (lane < 16) {
    g_line = __LINE__ + 1;  // the line of the call below
    v = __shfl_sync(0xffffffffu, v, 0);
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

__global__ void shuffle_exited_lane(int *out) {
  const unsigned lane = threadIdx.x & 31;
  if (lane == 3) return;
  g_line = __LINE__ + 1;  // the line of the call below
  out[lane] = __shfl_xor_sync(0xffffffffu, int(lane), 1);
}

__global__ void shuffle_missing_lane(int *out) {
  /* 40 threads: warp 1 has lanes 0..7 only */
  g_line = __LINE__ + 1;  // the line of the call below
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, int(threadIdx.x), 1);
}

__global__ void different_collectives(int *out) {
  const unsigned lane = threadIdx.x & 31;
  if (lane & 1) {
    out[lane] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    g_line = __LINE__ + 1;  // the line of the call below
    out[lane] = int(__ballot_sync(0xffffffffu, 1));
  }
}

__global__ void different_masks(int *out) {
  const unsigned lane = threadIdx.x & 31;
  const unsigned mask = lane < 8 ? 0x000000ffu : 0xffffffffu;
  g_line = __LINE__ + 1;  // the line of the call below
  out[lane] = __shfl_sync(mask, 1, 0);
}

__global__ void lane_not_in_mask(int *out) {
  g_line = __LINE__ + 1;  // the line of the call below
  out[threadIdx.x] = __shfl_sync(0x1u, 1, 0);
}

__global__ void different_barriers(int *out) {
  if (threadIdx.x & 1) {
    g_line = __LINE__ + 1;  // the line of the call below
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void trapping(int *out) {
  if (blockIdx.x == 3 && threadIdx.x == 7) {
    g_line = __LINE__ + 1;  // the line of the call below
    __trap();
  }
  out[blockIdx.x] = 1;
}

__global__ void throwing(int *out) {
  if (threadIdx.x == 2) throw std::runtime_error("boom");
  out[threadIdx.x] = 1;
}

__global__ void fine(int *out) {
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = int(threadIdx.x);
}

}  // namespace

TestSuite(misuse, .timeout = 30);

Test(misuse, partial_barrier_unwinds_every_thread) {
  dev_buf<int> out(64);
  bnk_emu_clear_diagnostic();
  cr_assert_str_empty(bnk_emu_last_diagnostic());
  g_unwound = 0;
  bnk_emu_set_schedule(BNK_EMU_FORWARD, 0);
  BNK_EMU_LAUNCH(partial_barrier, 1, 64, 0, 0)(out.p);
  expect_misuse("__syncthreads");
  /* Forward schedule: threads 0-4 wait at the barrier when thread 5 exits; the
   * misuse is detected there, the waiting fibers are unwound (their Guard
   * destructors run), and threads 6-63 never start. */
  cr_assert_eq(g_unwound.load(), 6, "destructors ran for %d threads", g_unwound.load());
  const std::string d = bnk_emu_last_diagnostic();
  cr_assert(d.find("(5,0,0)") != std::string::npos, "%s", d.c_str());
  cr_assert(d.find("test_misuse.cpp") != d.rfind("test_misuse.cpp"), "launch site appended: %s", d.c_str());
  bnk_emu_clear_diagnostic();
  cr_assert_str_empty(bnk_emu_last_diagnostic());
}

Test(misuse, barrier_after_exit) {
  dev_buf<int> out(1);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 1);
    BNK_EMU_LAUNCH(barrier_after_exit, 2, 64, 0, 0)(out.p);
    expect_misuse("only part of the block");
  }
}

Test(misuse, deadlock) {
  dev_buf<int> out(64);
  BNK_EMU_LAUNCH(deadlock, 1, 64, 0, 0)(out.p);
  expect_misuse("deadlock");
  const std::string d = bnk_emu_last_diagnostic();
  cr_assert(d.find("__shfl_sync") != std::string::npos, "%s", d.c_str());
  cr_assert(d.find("__syncthreads") != std::string::npos, "%s", d.c_str());
}

Test(misuse, shuffle_names_exited_lane) {
  dev_buf<int> out(32);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 2);
    BNK_EMU_LAUNCH(shuffle_exited_lane, 1, 32, 0, 0)(out.p);
    expect_misuse("exited");
  }
}

Test(misuse, shuffle_names_missing_lane) {
  dev_buf<int> out(40);
  BNK_EMU_LAUNCH(shuffle_missing_lane, 1, 40, 0, 0)(out.p);
  expect_misuse("do not exist");
}

Test(misuse, lanes_at_different_collectives) {
  dev_buf<int> out(32);
  bnk_emu_set_schedule(BNK_EMU_REVERSE, 0); /* an odd lane arrives first: the ballot is the faulty call */
  BNK_EMU_LAUNCH(different_collectives, 1, 32, 0, 0)(out.p);
  expect_misuse("different collectives");
}

Test(misuse, lanes_with_different_masks) {
  dev_buf<int> out(32);
  BNK_EMU_LAUNCH(different_masks, 1, 32, 0, 0)(out.p);
  expect_misuse("mask");
}

Test(misuse, caller_not_in_mask) {
  dev_buf<int> out(32);
  BNK_EMU_LAUNCH(lane_not_in_mask, 1, 32, 0, 0)(out.p);
  expect_misuse("not in the mask");
}

Test(misuse, threads_at_different_barriers) {
  dev_buf<int> out(32);
  bnk_emu_set_schedule(BNK_EMU_REVERSE, 0); /* thread 31 (odd) arrives first */
  BNK_EMU_LAUNCH(different_barriers, 1, 32, 0, 0)(out.p);
  cr_assert_eq(cudaGetLastError(), cudaErrorLaunchFailure);
  const std::string d = bnk_emu_last_diagnostic();
  cr_assert(d.find("different barriers") != std::string::npos, "%s", d.c_str());
  cr_assert(d.find("test_misuse.cpp:" + std::to_string(g_line)) != std::string::npos, "%s", d.c_str());
  (void)cudaDeviceSynchronize();
}

Test(misuse, trap_stops_the_grid_and_the_next_launch_works) {
  bnk_emu_set_workers(2);
  dev_buf<int> out(512 * 64);
  BNK_EMU_LAUNCH(trapping, 512, 64, 0, 0)(out.p);
  expect_misuse("__trap");
  cr_assert(std::string(bnk_emu_last_diagnostic()).find("block (3,0,0)") != std::string::npos);
  /* Misuse aborts the launch, not the emulation. */
  out.zero();
  BNK_EMU_LAUNCH(fine, 512, 64, 0, 0)(out.p);
  EXPECT_LAUNCH_OK();
  auto v = out.download();
  for (size_t i = 0; i < v.size(); ++i) cr_assert_eq(v[i], int(i % 64));
}

Test(misuse, exception_in_kernel) {
  dev_buf<int> out(8);
  g_line = __LINE__ + 1;                       // the line of the call below
  BNK_EMU_LAUNCH(throwing, 1, 8, 0, 0)(out.p); /* reported at the launch site */
  expect_misuse("boom");
}
