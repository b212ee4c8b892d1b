/*
 * Table test of the warp shuffles: every mode x width x offset/source lane
 * x mask, for every operand type, against a reference written from the CUDA
 * C++ Programming Guide's description (warp split into groups of `width`
 * lanes with logical lane ids starting at 0), not from the emulator.
 */
#include "emu_test.h"

namespace {

enum Mode { IDX = 0, UP, DOWN, XOR };
const int kWidths[] = {1, 2, 4, 8, 16, 32};
constexpr int kNumWidths = 6;

std::vector<int> offsets() {
  std::vector<int> b;
  for (int i = 0; i <= 32; ++i) b.push_back(i);
  for (int extra : {-1, -5, -32, 33, 47, 63, 64, 1000}) b.push_back(extra);
  return b;
}

const unsigned kMasks[] = {0xffffffffu, 0x0000ffffu, 0xffff0000u, 0x55555555u,
                           0x80000001u, 0x00000001u, 0x7ffffffeu, 0x0f0f00f0u};

/*
 * Reference, from the Programming Guide ("Warp Shuffle Functions"):
 *  - a warp is split into groups of `width` consecutive lanes; within a
 *    group logical lane ids start at 0;
 *  - __shfl_sync: the value of the lane with logical id srcLane of the
 *    caller's group, srcLane taken modulo width;
 *  - __shfl_up_sync: logical id (own - delta); the lower delta lanes of a
 *    group keep their own value (no wrap around);
 *  - __shfl_down_sync: logical id (own + delta); the upper delta lanes of a
 *    group keep their own value;
 *  - __shfl_xor_sync: lane (own ^ laneMask); a lane can read from its own or
 *    an earlier group, but reading a later group returns its own value.
 * The PTX ISA (shfl.sync) adds that only the 5 low bits of the lane/offset
 * operand are used (b[4:0]), which decides offsets >= 32 and negative ones.
 * Reading a lane that does not take part (not in mask) is undefined; the
 * emulator returns all-ones bytes there.  Returns the source lane.
 */
int reference_source(int mode, int lane, int b, int width) {
  const int group_first = (lane / width) * width;
  const int logical = lane - group_first;
  const int off = b & 31;
  switch (mode) {
  case IDX:
    return group_first + off % width;
  case UP:
    return logical - off < 0 ? lane : lane - off;
  case DOWN:
    return logical + off >= width ? lane : lane + off;
  default: {
    const int src = lane ^ off;
    return src / width > lane / width ? lane : src;
  }
  }
}

template <class T>
__global__ void shuffle_table(int mode, unsigned mask, const int *bs, int nb, const T *in, T *out) {
  const int lane = int(threadIdx.x & 31);
  if (!((mask >> lane) & 1u)) return; /* lanes outside the mask do not call the shuffle */
  const T v = in[lane];
  for (int wi = 0; wi < kNumWidths; ++wi) {
    const int w = kWidths[wi];
    for (int i = 0; i < nb; ++i) {
      T r;
      switch (mode) {
      case IDX:
        r = __shfl_sync(mask, v, bs[i], w);
        break;
      case UP:
        r = __shfl_up_sync(mask, v, unsigned(bs[i]), w);
        break;
      case DOWN:
        r = __shfl_down_sync(mask, v, unsigned(bs[i]), w);
        break;
      default:
        r = __shfl_xor_sync(mask, v, bs[i], w);
        break;
      }
      out[(size_t(wi) * nb + i) * 32 + lane] = r;
    }
  }
}

template <class T>
void run_table(const char *type) {
  const std::vector<int> b = offsets();
  const int nb = int(b.size());
  std::vector<T> in(32);
  for (int l = 0; l < 32; ++l) {
    unsigned char bytes[sizeof(T)];
    for (size_t k = 0; k < sizeof(T); ++k) bytes[k] = (unsigned char)(l + 1 + 40 * k);
    std::memcpy(static_cast<void *>(&in[l]), bytes, sizeof(T));
  }
  dev_buf<int> d_b(b);
  dev_buf<T> d_in(in);
  dev_buf<T> d_out(size_t(kNumWidths) * nb * 32);
  size_t checked = 0;
  for (int mode = IDX; mode <= XOR; ++mode) {
    for (unsigned mask : kMasks) {
      BNK_EMU_LAUNCH(shuffle_table<T>, 1, 32, 0, 0)(mode, mask, d_b.p, nb, d_in.p, d_out.p);
      EXPECT_LAUNCH_OK();
      const std::vector<T> out = d_out.download();
      for (int wi = 0; wi < kNumWidths; ++wi)
        for (int i = 0; i < nb; ++i)
          for (int lane = 0; lane < 32; ++lane) {
            if (!((mask >> lane) & 1u)) continue;
            const int src = reference_source(mode, lane, b[i], kWidths[wi]);
            unsigned char expect[sizeof(T)];
            if ((mask >> src) & 1u) std::memcpy(expect, static_cast<const void *>(&in[src]), sizeof(T));
            else std::memset(expect, 0xff, sizeof(T)); /* poison: source lane not participating */
            const T &got = out[(size_t(wi) * nb + i) * 32 + lane];
            cr_assert(std::memcmp(expect, static_cast<const void *>(&got), sizeof(T)) == 0,
                      "%s mode %d mask 0x%08x width %d b %d lane %d: expected source lane %d%s", type, mode, mask,
                      kWidths[wi], b[i], lane, src, ((mask >> src) & 1u) ? "" : " (poison)");
            ++checked;
          }
    }
  }
  cr_assert_gt(checked, 0u);
}

}  // namespace

Test(shuffle, table_int) { run_table<int>("int"); }
Test(shuffle, table_unsigned) { run_table<unsigned>("unsigned"); }
Test(shuffle, table_long_long) { run_table<long long>("long long"); }
Test(shuffle, table_unsigned_long_long) { run_table<unsigned long long>("unsigned long long"); }
Test(shuffle, table_float) { run_table<float>("float"); }
Test(shuffle, table_double) { run_table<double>("double"); }
Test(shuffle, table_half) { run_table<__half>("__half"); }
Test(shuffle, table_half2) { run_table<__half2>("__half2"); }
Test(shuffle, table_bfloat16) { run_table<__nv_bfloat16>("__nv_bfloat16"); }
Test(shuffle, table_bfloat162) { run_table<__nv_bfloat162>("__nv_bfloat162"); }

namespace {

/* A warp-sum through __shfl_xor_sync and __shfl_down_sync over a partial
 * last warp (48 threads: warp 1 has lanes 0..15) with a half mask. */
__global__ void partial_warp_sum(const float *in, float *xor_sum, float *down_sum) {
  const unsigned t = threadIdx.x;
  const unsigned mask = t < 32 ? 0xffffffffu : 0x0000ffffu;
  const int width = t < 32 ? 32 : 16;
  float a = in[t], b = in[t];
  for (int o = width / 2; o > 0; o /= 2) {
    a += __shfl_xor_sync(mask, a, o, width);
    b += __shfl_down_sync(mask, b, unsigned(o), width);
  }
  xor_sum[t] = a;
  down_sum[t] = __shfl_sync(mask, b, 0, width);
}

}  // namespace

Test(shuffle, partial_warp_reduction) {
  std::vector<float> in(48);
  for (int i = 0; i < 48; ++i) in[i] = float(i);
  dev_buf<float> d_in(in), x(48), d(48);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 11);
    BNK_EMU_LAUNCH(partial_warp_sum, 1, 48, 0, 0)(d_in.p, x.p, d.p);
    EXPECT_LAUNCH_OK();
    auto xs = x.download(), ds = d.download();
    for (int t = 0; t < 48; ++t) {
      const float expect = t < 32 ? 496.0f : float((32 + 47) * 16 / 2);
      cr_assert_eq(xs[t], expect, "thread %d: %f", t, double(xs[t]));
      cr_assert_eq(ds[t], expect, "thread %d: %f", t, double(ds[t]));
    }
  }
}

namespace {

/* Reading a lane outside the mask yields a NaN for floats. */
__global__ void poison_kernel(float *out) {
  const unsigned lane = threadIdx.x;
  if (lane >= 16) return;
  out[lane] = __shfl_sync(0x0000ffffu, 1.5f, 20); /* srcLane 20 does not take part */
}

}  // namespace

Test(shuffle, non_participating_source_is_nan) {
  dev_buf<float> out(16);
  BNK_EMU_LAUNCH(poison_kernel, 1, 32, 0, 0)(out.p);
  EXPECT_LAUNCH_OK();
  for (float v : out.download()) cr_assert(std::isnan(v));
}
