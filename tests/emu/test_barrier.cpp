/* Block barriers, __syncwarp and votes. */
#include "emu_test.h"

namespace {

/* Each thread writes its linear index, then after a barrier reads its
 * mirror's slot; __syncthreads_count/and/or results are stored per thread. */
__global__ void barrier_kernel(int *mirror, int *count, int *all, int *any, int every) {
  const int n = int(blockDim.x * blockDim.y * blockDim.z);
  const int tid = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int blk = int(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
  static_assert(sizeof(int) == 4, "");
  __shared__ int slots[1024];
  slots[tid] = blk * 10000 + tid;
  __syncthreads();
  const int out = blk * n + tid;
  mirror[out] = slots[n - 1 - tid];
  __syncthreads();
  count[out] = __syncthreads_count(tid % every == 0);
  all[out] = __syncthreads_and(tid % every == 0);
  any[out] = __syncthreads_or(tid == n - 1);
}

void run_barrier(dim3 grid, dim3 block, int every) {
  const int n = int(block.x * block.y * block.z);
  const int blocks = int(grid.x * grid.y * grid.z);
  dev_buf<int> mirror(size_t(n) * blocks), count(size_t(n) * blocks), all(size_t(n) * blocks), any(size_t(n) * blocks);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 7);
    BNK_EMU_LAUNCH(barrier_kernel, grid, block, 0, 0)(mirror.p, count.p, all.p, any.p, every);
    EXPECT_LAUNCH_OK();
    auto m = mirror.download(), c = count.download(), a = all.download(), o = any.download();
    int expect_count = 0;
    for (int t = 0; t < n; ++t) expect_count += t % every == 0;
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < n; ++t) {
        const size_t i = size_t(b) * n + t;
        cr_assert_eq(m[i], b * 10000 + (n - 1 - t), "schedule %d block %d thread %d", int(s), b, t);
        cr_assert_eq(c[i], expect_count);
        cr_assert_eq(a[i], expect_count == n ? 1 : 0);
        cr_assert_eq(o[i], 1);
      }
  }
  bnk_emu_set_schedule(BNK_EMU_FORWARD, 0);
}

}  // namespace

Test(barrier, one_thread) { run_barrier(dim3(3), dim3(1), 1); }
Test(barrier, thirty_three_threads) { run_barrier(dim3(4), dim3(33), 3); }
Test(barrier, full_block) { run_barrier(dim3(2), dim3(1024), 5); }
Test(barrier, three_d_block_and_grid) { run_barrier(dim3(2, 3, 2), dim3(8, 4, 3), 2); }
Test(barrier, all_true) { run_barrier(dim3(2), dim3(64), 1); }

namespace {

/* Lanes of each half-warp exchange through shared memory guarded by a
 * __syncwarp over the half-warp's mask only. */
__global__ void syncwarp_kernel(int *out) {
  __shared__ int buf[64];
  const unsigned lane = threadIdx.x & 31;
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  buf[threadIdx.x] = int(threadIdx.x) * 3;
  __syncwarp(half);
  const unsigned partner = (threadIdx.x & ~15u) | (15 - (threadIdx.x & 15));
  out[threadIdx.x] = buf[partner];
  /* Full-mask __syncwarp from two different lines is the same barrier. */
  if (lane & 1) __syncwarp();
  else __syncwarp();
}

}  // namespace

Test(syncwarp, partial_masks) {
  dev_buf<int> out(64);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 3);
    BNK_EMU_LAUNCH(syncwarp_kernel, 1, 64, 0, 0)(out.p);
    EXPECT_LAUNCH_OK();
    auto v = out.download();
    for (unsigned t = 0; t < 64; ++t) cr_assert_eq(v[t], int(((t & ~15u) | (15 - (t & 15))) * 3));
  }
}

namespace {

__global__ void vote_kernel(unsigned *ballot, int *any, int *all, unsigned *half_ballot, unsigned *active) {
  const unsigned t = threadIdx.x;
  const unsigned lane = t & 31;
  active[t] = __activemask(); /* before any lane can have exited */
  ballot[t] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  any[t] = __any_sync(0xffffffffu, t == 37) * 2 + __any_sync(0xffffffffu, 0);
  all[t] = __all_sync(0xffffffffu, 1) * 2 + __all_sync(0xffffffffu, lane != 5);
  if (lane >= 16) half_ballot[t] = __ballot_sync(0xffff0000u, lane & 1);
  else half_ballot[t] = __ballot_sync(0x0000ffffu, 1);
}

}  // namespace

Test(vote, ballot_any_all) {
  dev_buf<unsigned> ballot(64), half(64), active(64);
  dev_buf<int> any(64), all(64);
  BNK_EMU_LAUNCH(vote_kernel, 1, 64, 0, 0)(ballot.p, any.p, all.p, half.p, active.p);
  EXPECT_LAUNCH_OK();
  auto b = ballot.download(), h = half.download(), a = active.download();
  auto y = any.download(), l = all.download();
  unsigned every3 = 0;
  for (unsigned i = 0; i < 32; i += 3) every3 |= 1u << i;
  for (unsigned t = 0; t < 64; ++t) {
    cr_assert_eq(b[t], every3);
    cr_assert_eq(y[t], t < 32 ? 0 : 2, "thread %u", t);
    cr_assert_eq(l[t], 2);
    cr_assert_eq(h[t], (t & 31) >= 16 ? 0xaaaa0000u : 0x0000ffffu);
    cr_assert_eq(a[t], 0xffffffffu);
  }
}

namespace {

__global__ void match_reduce_kernel(unsigned *match_any, unsigned *match_all, int *pred, unsigned *sum, int *smin,
                                    unsigned *bits) {
  const unsigned lane = threadIdx.x;
  match_any[lane] = __match_any_sync(0xffffffffu, lane % 4);
  int p = 0;
  match_all[lane] = __match_all_sync(0xffffffffu, 7.5f, &p);
  pred[lane] = p;
  sum[lane] = __reduce_add_sync(0xffffffffu, lane);
  smin[lane] = __reduce_min_sync(0xffffffffu, int(lane) - 10);
  bits[lane] = __reduce_or_sync(0xffffffffu, 1u << lane) ^ __reduce_xor_sync(0xffffffffu, 1u);
}

}  // namespace

Test(vote, match_and_reduce) {
  dev_buf<unsigned> ma(32), mall(32), sum(32), bits(32);
  dev_buf<int> pred(32), smin(32);
  BNK_EMU_LAUNCH(match_reduce_kernel, 1, 32, 0, 0)(ma.p, mall.p, pred.p, sum.p, smin.p, bits.p);
  EXPECT_LAUNCH_OK();
  auto a = ma.download(), al = mall.download(), s = sum.download(), b = bits.download();
  auto p = pred.download(), m = smin.download();
  for (unsigned l = 0; l < 32; ++l) {
    cr_assert_eq(a[l], 0x11111111u << (l % 4));
    cr_assert_eq(al[l], 0xffffffffu);
    cr_assert_eq(p[l], 1);
    cr_assert_eq(s[l], 496u);
    cr_assert_eq(m[l], -10);
    cr_assert_eq(b[l], 0xffffffffu); /* xor of 32 ones is 0 */
  }
}
