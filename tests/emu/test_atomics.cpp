/* Atomics on global and shared memory across many blocks and several workers. */
#include "emu_test.h"

#include <functional>
#include <set>
#include <thread>

namespace {

constexpr int kBlocks = 96, kThreads = 256;

struct Counters {
  int i_add;
  unsigned u_add;
  unsigned long long ull_add;
  float f_add;
  double d_add;
  __half h_add;
  __nv_bfloat16 bf_add;
  int i_sub;
  int i_min, i_max;
  unsigned u_max;
  long long ll_min;
  unsigned long long ull_max;
  unsigned u_and, u_or, u_xor;
  unsigned u_inc, u_dec;
  int cas_sum;
  float f_exch;
  unsigned long long ull_exch_sum;
};

__global__ void atomics_kernel(Counters *c, unsigned long long *workers, int *hist_out) {
  const int t = int(threadIdx.x), b = int(blockIdx.x);
  const int g = b * kThreads + t;
  atomicAdd(&c->i_add, 1);
  atomicAdd(&c->u_add, 2u);
  atomicAdd(&c->ull_add, 3ull);
  atomicAdd(&c->f_add, 1.0f);
  atomicAdd(&c->d_add, 0.5);
  if (g < 2048) atomicAdd(&c->h_add, __float2half_rn(1.0f));
  if (g < 256) atomicAdd(&c->bf_add, __float2bfloat16_rn(1.0f));
  atomicSub(&c->i_sub, 1);
  atomicMin(&c->i_min, g - 1000);
  atomicMax(&c->i_max, g);
  atomicMax(&c->u_max, unsigned(g) * 3u);
  atomicMin(&c->ll_min, -(long long)g * 1000000000ll);
  atomicMax(&c->ull_max, (unsigned long long)g << 33);
  atomicAnd(&c->u_and, ~(1u << (g % 32)));
  atomicOr(&c->u_or, 1u << (g % 32));
  atomicXor(&c->u_xor, 1u << (g % 7));
  atomicInc(&c->u_inc, 999u);  /* wraps to 0 after 999 */
  atomicDec(&c->u_dec, 1000u); /* from 0 wraps to 1000 */
  /* A CAS loop adding g. */
  int old = c->cas_sum, assumed;
  do {
    assumed = old;
    old = atomicCAS(&c->cas_sum, assumed, assumed + (g & 1));
  } while (old != assumed);
  atomicExch(&c->f_exch, 2.5f);
  atomicAdd(&c->ull_exch_sum, atomicExch(&workers[kBlocks + t % 4], 1ull));
  /* Shared-memory histogram, flushed with global atomics. */
  __shared__ int hist[8];
  if (t < 8) hist[t] = 0;
  __syncthreads();
  atomicAdd(&hist[t % 8], 1);
  __syncthreads();
  if (t < 8) atomicAdd(&hist_out[t], hist[t]);
  /* Which OS worker ran this block (host code is fine in an emulated kernel). */
  if (t == 0) workers[b] = (unsigned long long)std::hash<std::thread::id>()(std::this_thread::get_id());
}

}  // namespace

Test(atomics, many_blocks_several_workers) {
  bnk_emu_set_workers(2);
  bool saw_two_workers = false;
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 5);
    Counters init{};
    init.i_min = 1 << 30;
    init.ll_min = 0;
    init.u_and = 0xffffffffu;
    init.h_add = __float2half_rn(0.0f);
    init.bf_add = __float2bfloat16_rn(0.0f);
    dev_buf<Counters> c(1);
    cr_assert_eq(cudaMemcpy(c.p, &init, sizeof init, cudaMemcpyHostToDevice), cudaSuccess);
    dev_buf<unsigned long long> workers(kBlocks + 4);
    workers.zero();
    dev_buf<int> hist(8);
    hist.zero();
    BNK_EMU_LAUNCH(atomics_kernel, kBlocks, kThreads, 0, 0)(c.p, workers.p, hist.p);
    EXPECT_LAUNCH_OK();
    Counters r;
    cr_assert_eq(cudaMemcpy(&r, c.p, sizeof r, cudaMemcpyDeviceToHost), cudaSuccess);
    const int n = kBlocks * kThreads;
    cr_assert_eq(r.i_add, n);
    cr_assert_eq(r.u_add, 2u * n);
    cr_assert_eq(r.ull_add, 3ull * n);
    cr_assert_eq(r.f_add, float(n));
    cr_assert_eq(r.d_add, 0.5 * n);
    cr_assert_eq(__half2float(r.h_add), 2048.0f);
    cr_assert_eq(__bfloat162float(r.bf_add), 256.0f);
    cr_assert_eq(r.i_sub, -n);
    cr_assert_eq(r.i_min, -1000);
    cr_assert_eq(r.i_max, n - 1);
    cr_assert_eq(r.u_max, unsigned(n - 1) * 3u);
    cr_assert_eq(r.ll_min, -(long long)(n - 1) * 1000000000ll);
    cr_assert_eq(r.ull_max, (unsigned long long)(n - 1) << 33);
    cr_assert_eq(r.u_and, 0u);
    cr_assert_eq(r.u_or, 0xffffffffu);
    unsigned x = 0;
    for (int g = 0; g < n; ++g) x ^= 1u << (g % 7);
    cr_assert_eq(r.u_xor, x);
    cr_assert_eq(r.u_inc, unsigned(n % 1000));
    /* atomicDec from 0: 1000, 999, ..., 0, 1000, ... (period 1001) */
    cr_assert_eq(r.u_dec, unsigned((1001 - n % 1001) % 1001));
    cr_assert_eq(r.cas_sum, n / 2);
    cr_assert_eq(r.f_exch, 2.5f);
    cr_assert_eq(r.ull_exch_sum, (unsigned long long)(n - 4), "all but the first exchange per slot saw 1");
    auto h = hist.download();
    for (int k = 0; k < 8; ++k) cr_assert_eq(h[k], n / 8);
    auto w = workers.download();
    std::set<unsigned long long> ids(w.begin(), w.begin() + kBlocks);
    cr_assert_leq(ids.size(), 2u);
    if (ids.size() == 2) saw_two_workers = true;
  }
  /* On a loaded machine the helper may wake late; relaunch a few times. */
  for (int attempt = 0; attempt < 20 && !saw_two_workers; ++attempt) {
    dev_buf<Counters> c(1);
    c.zero();
    dev_buf<unsigned long long> workers(kBlocks + 4);
    dev_buf<int> hist(8);
    BNK_EMU_LAUNCH(atomics_kernel, kBlocks, kThreads, 0, 0)(c.p, workers.p, hist.p);
    EXPECT_LAUNCH_OK();
    auto w = workers.download();
    saw_two_workers = std::set<unsigned long long>(w.begin(), w.begin() + kBlocks).size() == 2;
  }
  cr_assert(saw_two_workers, "blocks never ran on two workers");
}
