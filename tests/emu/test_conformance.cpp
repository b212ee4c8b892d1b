/* Conformance cases an audit found: collectives of partial, overlapping masks in sequence under every
 * schedule; votes and __syncwarp after lanes exited; __activemask() in divergent code; saturating
 * float-to-integer conversions; atomicAdd(float) flushing subnormals. */
#include "emu_test.h"

#include <cfloat>
#include <climits>
#include <cmath>

namespace {

/* Legal and common: half a warp reduces first, then the whole warp. */
__global__ void half_then_full_shuffle(int *out) {
  const unsigned lane = threadIdx.x & 31;
  int v = int(lane) + 1;
  if (lane < 16) v += __shfl_xor_sync(0x0000ffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 16);
  out[threadIdx.x] = v;
}

/* Lanes 0,2 of each byte-quad are in both masks; 4,6 only in the second; 1,3 only in the first. */
__global__ void overlapping_reductions(unsigned *first, unsigned *second) {
  const unsigned lane = threadIdx.x & 31;
  const unsigned a = 0x0f0f0f0fu, b = 0x55555555u;
  first[threadIdx.x] = (a >> lane) & 1u ? __reduce_add_sync(a, lane + 1) : 0u;
  second[threadIdx.x] = (b >> lane) & 1u ? __reduce_add_sync(b, 100u * lane) : 0u;
}

__global__ void votes_after_exit(unsigned *ballot, int *any, int *all, int *after_syncwarp) {
  const unsigned lane = threadIdx.x & 31;
  if (lane >= 16) return;
  __syncwarp();
  ballot[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
  any[threadIdx.x] = __any_sync(0xffffffffu, lane == 3);
  all[threadIdx.x] = __all_sync(0xffffffffu, lane < 16);
  __syncwarp(0xffffffffu);
  after_syncwarp[threadIdx.x] = 1;
}

/* Lanes 16-31 exit while lanes 0-15 already wait in the ballot. */
__global__ void exit_while_ballot_waits(unsigned *ballot) {
  const unsigned lane = threadIdx.x & 31;
  if (lane < 16) ballot[threadIdx.x] = __ballot_sync(0xffffffffu, lane & 1);
}

__global__ void activemask_divergent(unsigned *inside, unsigned *other, unsigned *together) {
  const unsigned lane = threadIdx.x & 31;
  together[threadIdx.x] = __activemask();
  if (lane < 8) inside[threadIdx.x] = __activemask();
  else other[threadIdx.x] = __activemask();
}

/* The documented limit: no reconvergence after the if. */
__global__ void activemask_no_reconvergence(unsigned *after_if) {
  const unsigned lane = threadIdx.x & 31;
  unsigned a = 0;
  if (lane < 8) a = __activemask();
  after_if[threadIdx.x] = __activemask() | (a & 0u);
}

__global__ void activemask_after_exit(unsigned *out) {
  const unsigned lane = threadIdx.x & 31;
  if (lane % 3 == 0) return;
  out[threadIdx.x] = __activemask();
}

__global__ void conversions(const float *x, int *rn, int *rz, int *rd, int *ru, unsigned *urn, unsigned *urz,
                            long long *ll, int n) {
  const int i = int(threadIdx.x);
  if (i >= n) return;
  rn[i] = __float2int_rn(x[i]);
  rz[i] = __float2int_rz(x[i]);
  rd[i] = __float2int_rd(x[i]);
  ru[i] = __float2int_ru(x[i]);
  urn[i] = __float2uint_rn(x[i]);
  urz[i] = __float2uint_rz(x[i]);
  ll[i] = __float2ll_rn(x[i]);
}

__global__ void add_each(float *acc, const float *v) { atomicAdd(&acc[threadIdx.x], v[threadIdx.x]); }

}  // namespace

TestSuite(conformance, .timeout = 30);

Test(conformance, partial_then_full_shuffle_under_every_schedule) {
  dev_buf<int> out(64);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 5);
    BNK_EMU_LAUNCH(half_then_full_shuffle, 1, 64, 0, 0)(out.p);
    EXPECT_LAUNCH_OK();
    const std::vector<int> got = out.download();
    for (unsigned t = 0; t < 64; ++t) {
      auto after_first = [](unsigned l) { return l < 16 ? int(l + 1) + int((l ^ 1u) + 1) : int(l + 1); };
      const unsigned lane = t & 31;
      cr_assert_eq(got[t], after_first(lane) + after_first(lane ^ 16u), "thread %u under schedule %d", t, int(s));
    }
  }
}

Test(conformance, overlapping_reduction_masks_under_every_schedule) {
  dev_buf<unsigned> first(32), second(32);
  unsigned sum_a = 0, sum_b = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if ((0x0f0f0f0fu >> l) & 1u) sum_a += l + 1;
    if ((0x55555555u >> l) & 1u) sum_b += 100u * l;
  }
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 6);
    BNK_EMU_LAUNCH(overlapping_reductions, 1, 32, 0, 0)(first.p, second.p);
    EXPECT_LAUNCH_OK();
    const auto a = first.download(), b = second.download();
    for (unsigned l = 0; l < 32; ++l) {
      cr_assert_eq(a[l], (0x0f0f0f0fu >> l) & 1u ? sum_a : 0u);
      cr_assert_eq(b[l], (0x55555555u >> l) & 1u ? sum_b : 0u);
    }
  }
}

Test(conformance, votes_and_syncwarp_wait_for_live_lanes_only) {
  dev_buf<unsigned> ballot(64);
  dev_buf<int> any(64), all(64), after(64);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 8);
    after.zero();
    BNK_EMU_LAUNCH(votes_after_exit, 1, 64, 0, 0)(ballot.p, any.p, all.p, after.p);
    EXPECT_LAUNCH_OK();
    const auto b = ballot.download();
    const auto y = any.download(), l = all.download(), a = after.download();
    for (unsigned t = 0; t < 64; ++t) {
      if ((t & 31) >= 16) {
        cr_assert_eq(a[t], 0);
        continue;
      }
      cr_assert_eq(b[t], 0x0000ffffu, "thread %u: ballot 0x%08x", t, b[t]);
      cr_assert_eq(y[t], 1);
      cr_assert_eq(l[t], 1);
      cr_assert_eq(a[t], 1);
    }
    BNK_EMU_LAUNCH(exit_while_ballot_waits, 1, 32, 0, 0)(ballot.p);
    EXPECT_LAUNCH_OK();
    const auto c = ballot.download();
    for (unsigned t = 0; t < 16; ++t) cr_assert_eq(c[t], 0x0000aaaau, "thread %u: ballot 0x%08x", t, c[t]);
  }
}

Test(conformance, activemask_is_the_lanes_that_arrive_together) {
  dev_buf<unsigned> inside(64), other(64), together(64), after(64);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 4);
    BNK_EMU_LAUNCH(activemask_divergent, 1, 48, 0, 0)(inside.p, other.p, together.p);
    EXPECT_LAUNCH_OK();
    const auto in = inside.download(), ot = other.download(), tg = together.download();
    for (unsigned t = 0; t < 48; ++t) {
      const unsigned live = t < 32 ? 0xffffffffu : 0x0000ffffu; /* warp 1 has 16 threads */
      cr_assert_eq(tg[t], live, "thread %u: 0x%08x", t, tg[t]);
      if ((t & 31) < 8) cr_assert_eq(in[t], 0x000000ffu, "thread %u: 0x%08x", t, in[t]);
      else cr_assert_eq(ot[t], live & ~0xffu, "thread %u: 0x%08x", t, ot[t]);
    }
    BNK_EMU_LAUNCH(activemask_no_reconvergence, 1, 32, 0, 0)(after.p);
    EXPECT_LAUNCH_OK();
    const auto nr = after.download();
    for (unsigned l = 0; l < 32; ++l)
      cr_assert_eq(nr[l], l < 8 ? 0x000000ffu : 0xffffff00u, "lane %u: 0x%08x", l, nr[l]);
    BNK_EMU_LAUNCH(activemask_after_exit, 1, 32, 0, 0)(after.p);
    EXPECT_LAUNCH_OK();
    const auto af = after.download();
    unsigned expect = 0;
    for (unsigned l = 0; l < 32; ++l)
      if (l % 3 != 0) expect |= 1u << l;
    for (unsigned l = 0; l < 32; ++l)
      if (l % 3 != 0) cr_assert_eq(af[l], expect, "lane %u: 0x%08x", l, af[l]);
  }
}

Test(conformance, float_to_integer_conversions_saturate) {
  const std::vector<float> x = {1e10f, -1e10f,        NAN,           -1.0f,          2.5f,     -2.5f,     3.7f,
                                -3.7f, 4294967296.0f, 2147483520.0f, -2147483648.0f, INFINITY, -INFINITY, 1e19f};
  const int n = int(x.size());
  dev_buf<float> in(x);
  dev_buf<int> rn(x.size()), rz(x.size()), rd(x.size()), ru(x.size());
  dev_buf<unsigned> urn(x.size()), urz(x.size());
  dev_buf<long long> ll(x.size());
  BNK_EMU_LAUNCH(conversions, 1, 32, 0, 0)(in.p, rn.p, rz.p, rd.p, ru.p, urn.p, urz.p, ll.p, n);
  EXPECT_LAUNCH_OK();
  const auto a = rn.download(), b = rz.download(), c = rd.download(), d = ru.download();
  const auto e = urn.download(), f = urz.download();
  const auto g = ll.download();
  const int want_rn[] = {INT_MAX, INT_MIN, 0,          -1,      2,       -2,      4,
                         -4,      INT_MAX, 2147483520, INT_MIN, INT_MAX, INT_MIN, INT_MAX};
  const int want_rz[] = {INT_MAX, INT_MIN, 0,          -1,      2,       -2,      3,
                         -3,      INT_MAX, 2147483520, INT_MIN, INT_MAX, INT_MIN, INT_MAX};
  const int want_rd[] = {INT_MAX, INT_MIN, 0,          -1,      2,       -3,      3,
                         -4,      INT_MAX, 2147483520, INT_MIN, INT_MAX, INT_MIN, INT_MAX};
  const int want_ru[] = {INT_MAX, INT_MIN, 0,          -1,      3,       -2,      4,
                         -3,      INT_MAX, 2147483520, INT_MIN, INT_MAX, INT_MIN, INT_MAX};
  const unsigned want_urn[] = {UINT_MAX, 0, 0, 0, 2, 0, 4, 0, UINT_MAX, 2147483520u, 0, UINT_MAX, 0, UINT_MAX};
  const unsigned want_urz[] = {UINT_MAX, 0, 0, 0, 2, 0, 3, 0, UINT_MAX, 2147483520u, 0, UINT_MAX, 0, UINT_MAX};
  const long long want_ll[] = {10000000000ll, -10000000000ll, 0,         -1,        2,        -2, 4, -4, 4294967296ll,
                               2147483520ll,  -2147483648ll,  LLONG_MAX, LLONG_MIN, LLONG_MAX};
  for (int i = 0; i < n; ++i) {
    cr_assert_eq(a[size_t(i)], want_rn[i], "__float2int_rn(%g) = %d", double(x[size_t(i)]), a[size_t(i)]);
    cr_assert_eq(b[size_t(i)], want_rz[i], "__float2int_rz(%g) = %d", double(x[size_t(i)]), b[size_t(i)]);
    cr_assert_eq(c[size_t(i)], want_rd[i], "__float2int_rd(%g) = %d", double(x[size_t(i)]), c[size_t(i)]);
    cr_assert_eq(d[size_t(i)], want_ru[i], "__float2int_ru(%g) = %d", double(x[size_t(i)]), d[size_t(i)]);
    cr_assert_eq(e[size_t(i)], want_urn[i], "__float2uint_rn(%g) = %u", double(x[size_t(i)]), e[size_t(i)]);
    cr_assert_eq(f[size_t(i)], want_urz[i], "__float2uint_rz(%g) = %u", double(x[size_t(i)]), f[size_t(i)]);
    cr_assert_eq(g[size_t(i)], want_ll[i], "__float2ll_rn(%g) = %lld", double(x[size_t(i)]), g[size_t(i)]);
  }
}

Test(conformance, float_atomic_add_flushes_subnormals) {
  const float sub = FLT_MIN / 4.0f; /* subnormal */
  cr_assert_eq(std::fpclassify(sub), FP_SUBNORMAL);
  /* initial value, addend -> stored result: subnormal inputs count as zero, a subnormal sum is stored as
   * a zero of its sign */
  const std::vector<float> init = {0.0f, -FLT_MIN, FLT_MIN, sub, 1.0f, sub, -0.0f};
  const std::vector<float> add = {sub, 1.5f * FLT_MIN, -1.5f * FLT_MIN, 1.0f, sub, FLT_MIN, -sub};
  const std::vector<float> want = {0.0f, 0.0f, -0.0f, 1.0f, 1.0f, FLT_MIN, -0.0f};
  dev_buf<float> acc(init), v(add);
  BNK_EMU_LAUNCH(add_each, 1, int(init.size()), 0, 0)(acc.p, v.p);
  EXPECT_LAUNCH_OK();
  const auto got = acc.download();
  for (size_t i = 0; i < got.size(); ++i) {
    cr_assert_eq(got[i], want[i], "%a + %a stored %a, expected %a", double(init[i]), double(add[i]), double(got[i]),
                 double(want[i]));
    cr_assert_eq(std::signbit(got[i]), std::signbit(want[i]), "%a + %a stored %a, expected %a", double(init[i]),
                 double(add[i]), double(got[i]), double(want[i]));
  }
}
