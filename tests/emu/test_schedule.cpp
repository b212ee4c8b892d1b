/* Schedules: a missing __syncthreads must be visible; the control API. */
#include "emu_test.h"

#include <cstdlib>

namespace {

constexpr int kN = 256;

/* Each thread publishes its input in shared memory and reads its left
 * neighbour's.  Without the barrier the read can happen before the
 * neighbour's write: under the forward schedule thread t-1 always runs (to
 * completion) before thread t, so the answer happens to be right; under the
 * reverse schedule thread t reads before t-1 has written. */
__global__ void shift_racy(const int *in, int *out) {
  __shared__ int s[kN];
  const int t = int(threadIdx.x);
  s[t] = in[blockIdx.x * kN + t];
  /* missing __syncthreads() */
  out[blockIdx.x * kN + t] = t > 0 ? s[t - 1] : -1;
}

__global__ void shift_fixed(const int *in, int *out) {
  __shared__ int s[kN];
  const int t = int(threadIdx.x);
  s[t] = in[blockIdx.x * kN + t];
  __syncthreads();
  out[blockIdx.x * kN + t] = t > 0 ? s[t - 1] : -1;
}

/* Counts wrong outputs of one launch; every launch uses fresh input values so
 * that stale shared memory from an earlier launch can never look right. */
int wrong_outputs(void (*kernel)(const int *, int *), int blocks, int salt) {
  std::vector<int> in(size_t(blocks) * kN);
  for (size_t i = 0; i < in.size(); ++i) in[i] = int(i) * 7 + salt * 100003;
  dev_buf<int> d_in(in), d_out(in.size());
  BNK_EMU_LAUNCH(kernel, blocks, kN, 0, 0)(d_in.p, d_out.p);
  EXPECT_LAUNCH_OK();
  const std::vector<int> out = d_out.download();
  int wrong = 0;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < kN; ++t) {
      const int expect = t > 0 ? in[size_t(b) * kN + t - 1] : -1;
      wrong += out[size_t(b) * kN + t] != expect;
    }
  return wrong;
}

int salt = 1;

}  // namespace

Test(schedule, missing_syncthreads_is_visible) {
  bnk_emu_set_schedule(BNK_EMU_FORWARD, 0);
  cr_expect_eq(wrong_outputs(shift_racy, 4, salt++), 0, "forward schedule hides this race");
  bnk_emu_set_schedule(BNK_EMU_REVERSE, 0);
  cr_expect_gt(wrong_outputs(shift_racy, 4, salt++), 0, "reverse schedule must expose the race");
  bnk_emu_set_schedule(BNK_EMU_RANDOM, 12345);
  cr_expect_gt(wrong_outputs(shift_racy, 4, salt++), 0, "random schedule must expose the race");
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 99);
    cr_expect_eq(wrong_outputs(shift_fixed, 4, salt++), 0, "fixed kernel wrong under schedule %d", int(s));
  }
  bnk_emu_set_schedule(BNK_EMU_FORWARD, 0);
}

namespace {

/* Records, per block, the order in which threads first ran. */
__global__ void record_order(int *order) {
  __shared__ int counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads(); /* then every thread runs to its end in schedule order */
  order[blockIdx.x * blockDim.x + threadIdx.x] = counter++;
}

std::vector<int> run_order(int workers, bnk_emu_schedule s, unsigned long long seed) {
  bnk_emu_set_workers(workers);
  bnk_emu_set_schedule(s, seed);
  dev_buf<int> order(16 * 64);
  BNK_EMU_LAUNCH(record_order, 16, 64, 0, 0)(order.p);
  EXPECT_LAUNCH_OK();
  return order.download();
}

}  // namespace

Test(schedule, orders) {
  std::vector<int> f = run_order(1, BNK_EMU_FORWARD, 0);
  std::vector<int> r = run_order(1, BNK_EMU_REVERSE, 0);
  for (int b = 0; b < 16; ++b)
    for (int t = 0; t < 64; ++t) {
      cr_assert_eq(f[b * 64 + t], t);
      cr_assert_eq(r[b * 64 + t], 63 - t);
    }
  /* Random: a permutation, reproducible from the seed whatever the number of
   * workers, different for another seed. */
  std::vector<int> a = run_order(1, BNK_EMU_RANDOM, 42);
  std::vector<int> b = run_order(3, BNK_EMU_RANDOM, 42);
  std::vector<int> c = run_order(2, BNK_EMU_RANDOM, 43);
  cr_assert(a == b, "random schedule depends on the worker count");
  cr_assert(a != c, "random schedule ignores the seed");
  cr_assert(a != f);
  for (int blk = 0; blk < 16; ++blk) {
    std::vector<int> seen(64, 0);
    for (int t = 0; t < 64; ++t) seen[a[blk * 64 + t]]++;
    for (int k = 0; k < 64; ++k) cr_assert_eq(seen[k], 1);
  }
  /* Blocks get different permutations. */
  cr_assert(!std::equal(a.begin(), a.begin() + 64, a.begin() + 64));
  bnk_emu_set_workers(0);
  bnk_emu_set_schedule(BNK_EMU_FORWARD, 0);
}

Test(schedule, control_api) {
  setenv("BNK_EMU_WORKERS", "2", 1); /* read at first use, in this fresh test process */
  unsigned long long seed = 1;
  bnk_emu_set_schedule(BNK_EMU_RANDOM, 77);
  cr_assert_eq(bnk_emu_get_schedule(&seed), BNK_EMU_RANDOM);
  cr_assert_eq(seed, 77ull);
  bnk_emu_set_schedule(BNK_EMU_REVERSE, 5);
  cr_assert_eq(bnk_emu_get_schedule(NULL), BNK_EMU_REVERSE);
  bnk_emu_set_workers(3);
  cr_assert_eq(bnk_emu_get_workers(), 3);
  bnk_emu_set_workers(1);
  cr_assert_eq(bnk_emu_get_workers(), 1);
  bnk_emu_set_workers(0);
  cr_assert_eq(bnk_emu_get_workers(), 2);
}

/* Criterion runs every test in a fresh process, so the environment is read
 * here for the first time. */
Test(schedule, environment) {
  setenv("BNK_EMU_SCHEDULE", "random:0x2a", 1);
  unsigned long long seed = 0;
  cr_assert_eq(bnk_emu_get_schedule(&seed), BNK_EMU_RANDOM);
  cr_assert_eq(seed, 42ull);
}
