/* Launch configuration limits, arguments, dynamic shared memory, built-in
 * variables, intrinsics and kernels compiled from a .cu through the wrapper. */
#include "emu_test.h"
#include "wrapped_kernels.h"

#include <cstdint>

namespace {

__global__ void write_index(int *out) {
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  out[b * n + t] = int(b * n + t);
}

}  // namespace

Test(launch, limits) {
  dev_buf<int> out(2048);
  out.zero();
  struct Case {
    dim3 grid, block;
    size_t smem;
    cudaError_t expect;
  } cases[] = {
      {dim3(1), dim3(1025), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(32, 33), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(1, 1, 65), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(2048, 1, 1), 0, cudaErrorInvalidConfiguration},
      {dim3(1, 65536), dim3(1), 0, cudaErrorInvalidConfiguration},
      {dim3(1, 1, 65536), dim3(1), 0, cudaErrorInvalidConfiguration},
      {dim3(0), dim3(32), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(0), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(32, 0), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(32), 49153, cudaErrorInvalidValue},
      {dim3(1), dim3(32), 300000, cudaErrorInvalidValue},
  };
  for (const Case &c : cases) {
    BNK_EMU_LAUNCH(write_index, c.grid, c.block, c.smem, 0)(out.p);
    cr_assert_eq(cudaPeekAtLastError(), c.expect, "grid (%u,%u,%u) block (%u,%u,%u) smem %zu: %s", c.grid.x, c.grid.y,
                 c.grid.z, c.block.x, c.block.y, c.block.z, c.smem, cudaGetErrorName(cudaPeekAtLastError()));
    cr_assert_eq(cudaGetLastError(), c.expect);
    cr_assert_eq(cudaGetLastError(), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "configuration errors are not sticky");
  }
  for (int v : out.download()) cr_assert_eq(v, 0, "a rejected launch ran");
  /* The largest legal shapes run. */
  BNK_EMU_LAUNCH(write_index, 1, dim3(1024), 49152, 0)(out.p);
  EXPECT_LAUNCH_OK();
  BNK_EMU_LAUNCH(write_index, 2, dim3(8, 2, 64), 0, 0)(out.p);
  EXPECT_LAUNCH_OK();
  auto v = out.download();
  for (int i = 0; i < 2048; ++i) cr_assert_eq(v[i], i);
}

namespace {

__global__ void dyn_smem_sum(const float *in, float *out, int n) {
  float *s = static_cast<float *>(BNK_EMU_DYNAMIC_SHARED());
  out[gridDim.x + blockIdx.x] = float(reinterpret_cast<uintptr_t>(s) % 128);
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) s[i] = in[blockIdx.x * n + i];
  __syncthreads();
  if (threadIdx.x == 0) {
    float acc = 0;
    for (int i = 0; i < n; ++i) acc += s[i];
    out[blockIdx.x] = acc;
  }
}

}  // namespace

Test(launch, dynamic_shared_memory_and_opt_in) {
  const int n = 50000; /* 200000 bytes: needs the opt-in */
  const int blocks = 3;
  std::vector<float> in(size_t(n) * blocks);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 7);
  dev_buf<float> d_in(in), out(2 * blocks);
  const size_t smem = n * sizeof(float);
  BNK_EMU_LAUNCH(dyn_smem_sum, blocks, 256, smem, 0)(d_in.p, out.p, n);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue, "more than 48 KiB without the attribute");
  cr_assert_eq(cudaFuncSetAttribute(reinterpret_cast<const void *>(dyn_smem_sum),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, 232449),
               cudaErrorInvalidValue);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue);
  cr_assert_eq(cudaFuncSetAttribute(reinterpret_cast<const void *>(dyn_smem_sum),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
               cudaSuccess);
  cudaFuncAttributes fa;
  cr_assert_eq(cudaFuncGetAttributes(&fa, reinterpret_cast<const void *>(dyn_smem_sum)), cudaSuccess);
  cr_assert_eq(fa.maxDynamicSharedSizeBytes, int(smem));
  BNK_EMU_LAUNCH(dyn_smem_sum, blocks, 256, smem, 0)(d_in.p, out.p, n);
  EXPECT_LAUNCH_OK();
  auto v = out.download();
  for (int b = 0; b < blocks; ++b) {
    float expect = 0;
    for (int i = 0; i < n; ++i) expect += in[size_t(b) * n + i];
    cr_assert_eq(v[b], expect);
    cr_assert_eq(v[blocks + b], 0.0f, "dynamic shared memory is 128-byte aligned");
  }
  /* The attribute is per kernel. */
  dev_buf<int> idx(32);
  BNK_EMU_LAUNCH(write_index, 1, 32, smem, 0)(idx.p);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue);
  /* The full opt-in maximum is accepted. */
  cr_assert_eq(cudaFuncSetAttribute(reinterpret_cast<const void *>(write_index),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, 232448),
               cudaSuccess);
  BNK_EMU_LAUNCH(write_index, 1, 32, 232448, 0)(idx.p);
  EXPECT_LAUNCH_OK();
}

namespace {

struct Params {
  int a;
  double b;
  char tag[5];
};

/* Parameters are converted to the kernel's types and every thread gets its
 * own copy (modifying one does not affect the others). */
__global__ void args_kernel(float f, size_t big, long long neg, Params p, const int *ptr, double *out) {
  f += float(threadIdx.x);
  p.a += int(threadIdx.x);
  __syncthreads();
  out[threadIdx.x * 6 + 0] = f;
  out[threadIdx.x * 6 + 1] = double(big);
  out[threadIdx.x * 6 + 2] = double(neg);
  out[threadIdx.x * 6 + 3] = p.a + p.b;
  out[threadIdx.x * 6 + 4] = p.tag[3];
  out[threadIdx.x * 6 + 5] = ptr[threadIdx.x];
}

template <typename T, int kScale>
__global__ void templated(T *out) {
  out[threadIdx.x] = T(threadIdx.x) * T(kScale);
}

}  // namespace

Test(launch, arguments_and_templates) {
  dev_buf<double> out(4 * 6);
  dev_buf<int> ints(std::vector<int>{10, 20, 30, 40});
  Params p{100, 0.5, "abcd"};
  int *raw = ints.p;
  BNK_EMU_LAUNCH(args_kernel, 1, 4, 0, 0)(3 /* int -> float */, 7u /* -> size_t */, -5, p, raw, out.p);
  EXPECT_LAUNCH_OK();
  auto v = out.download();
  for (int t = 0; t < 4; ++t) {
    cr_assert_eq(v[t * 6 + 0], 3.0 + t);
    cr_assert_eq(v[t * 6 + 1], 7.0);
    cr_assert_eq(v[t * 6 + 2], -5.0);
    cr_assert_eq(v[t * 6 + 3], 100.5 + t);
    cr_assert_eq(v[t * 6 + 4], double('d'));
    cr_assert_eq(v[t * 6 + 5], 10.0 * (t + 1));
  }
  dev_buf<long long> t(8);
  BNK_EMU_LAUNCH(templated<long long, 3>, dim3(1), dim3(8), 0, nullptr)(t.p); /* commas, no parentheses */
  EXPECT_LAUNCH_OK();
  auto tv = t.download();
  for (int i = 0; i < 8; ++i) cr_assert_eq(tv[i], 3ll * i);
}

namespace {

__global__ void builtins(uint3 *out, dim3 *dims) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  __syncthreads(); /* threadIdx must be right after a fiber switch too */
  out[2 * (b * n + t)] = threadIdx;
  out[2 * (b * n + t) + 1] = blockIdx;
  if (t == 0 && b == 0) {
    dims[0] = blockDim;
    dims[1] = gridDim;
  }
}

}  // namespace

Test(launch, builtin_variables_3d) {
  const dim3 grid(3, 2, 2), block(4, 3, 5);
  const unsigned n = 60, nb = 12;
  dev_buf<uint3> out(2 * n * nb);
  dev_buf<dim3> dims(2);
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 9);
    BNK_EMU_LAUNCH(builtins, grid, block, 0, 0)(out.p, dims.p);
    EXPECT_LAUNCH_OK();
    auto v = out.download();
    auto d = dims.download();
    cr_assert(d[0].x == 4 && d[0].y == 3 && d[0].z == 5);
    cr_assert(d[1].x == 3 && d[1].y == 2 && d[1].z == 2);
    for (unsigned bz = 0; bz < 2; ++bz)
      for (unsigned by = 0; by < 2; ++by)
        for (unsigned bx = 0; bx < 3; ++bx)
          for (unsigned z = 0; z < 5; ++z)
            for (unsigned y = 0; y < 3; ++y)
              for (unsigned x = 0; x < 4; ++x) {
                const unsigned b = bx + 3 * (by + 2 * bz), t = x + 4 * (y + 3 * z);
                const uint3 ti = v[2 * (b * n + t)], bi = v[2 * (b * n + t) + 1];
                cr_assert(ti.x == x && ti.y == y && ti.z == z, "threadIdx");
                cr_assert(bi.x == bx && bi.y == by && bi.z == bz, "blockIdx");
              }
  }
}

Test(launch, streams) {
  cudaStream_t s;
  cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
  dev_buf<int> out(32);
  BNK_EMU_LAUNCH(write_index, 1, 32, 0, s)(out.p);
  EXPECT_LAUNCH_OK();
  BNK_EMU_LAUNCH(write_index, 1, 32, 0, cudaStreamPerThread)(out.p);
  EXPECT_LAUNCH_OK();
  cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
  BNK_EMU_LAUNCH(write_index, 1, 32, 0, s)(out.p);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidResourceHandle, "launch into a destroyed stream");
}

Test(launch, wrapped_cu_kernels) {
  const int n = 10000;
  std::vector<float> in(n);
  std::vector<double> ind(n);
  double expect = 0;
  for (int i = 0; i < n; ++i) {
    in[i] = float(i % 13);
    ind[i] = 0.25 * (i % 5);
    expect += in[i];
  }
  dev_buf<float> d_in(in), sum(1);
  dev_buf<double> d_ind(ind), sumd(1);
  sum.zero();
  sumd.zero();
  cr_assert_eq(wrapped_block_sum(d_in.p, sum.p, n, nullptr), cudaSuccess);
  cr_assert_eq(wrapped_block_sum_d(d_ind.p, sumd.p, n, nullptr), cudaSuccess);
  cr_assert_eq(sum.download()[0], float(expect));
  cr_assert_eq(sumd.download()[0], 0.25 * 2 * n);
  cr_assert_eq(wrapped_scale(d_in.p, 2.0f, n, nullptr), cudaSuccess);
  auto scaled = d_in.download();
  for (int i = 0; i < n; ++i) cr_assert_eq(scaled[i], 2.0f * in[i]);
}

namespace {

__global__ void intrinsics(unsigned long long *o, float *f) {
  int k = 0;
  o[k++] = unsigned(__popc(0xf0f0u));
  o[k++] = unsigned(__popcll(0xffffffffffull));
  o[k++] = unsigned(__clz(1));
  o[k++] = unsigned(__clz(0));
  o[k++] = unsigned(__ffs(0x50));
  o[k++] = __brev(1u);
  o[k++] = __umulhi(0x80000000u, 6u);
  o[k++] = __umul64hi(1ull << 63, 4ull);
  o[k++] = (unsigned long long)__mulhi(-2, 0x40000000);
  o[k++] = (unsigned long long)__mul64hi(-1ll, 5ll);
  o[k++] = min(3, -4) == -4;
  o[k++] = min(3u, 5) == 3u;
  o[k++] = max(-1, 2u) == 0xffffffffu; /* CUDA: mixed signed/unsigned compares as unsigned */
  o[k++] = max(2ll, 7ll) == 7ll;
  o[k++] = max(1.5f, 2.5) == 2.5;
  o[k++] = __float_as_uint(1.0f);
  o[k++] = unsigned(__float_as_int(-2.0f));
  o[k++] = __int_as_float(0x40400000) == 3.0f;
  o[k++] = __uint_as_float(0x3f800000u) == 1.0f;
  o[k++] = __byte_perm(0x33221100u, 0x77665544u, 0x7531u);
  f[0] = rsqrtf(4.0f);
  f[1] = __fdividef(1.0f, 8.0f);
  f[2] = __half2float(__float2half_rn(0.333333f));
  f[3] = __bfloat162float(__float2bfloat16_rn(1.0f / 3.0f));
  f[4] = __saturatef(1.5f) + __saturatef(-1.0f);
  f[5] = float(__ldg(o + 0));
  f[6] = __frcp_rn(4.0f) + __fsqrt_rn(16.0f);
  f[7] = __low2float(__floats2half2_rn(1.25f, 2.5f)) + __high2float(__floats2half2_rn(1.25f, 2.5f));
  float4 q = make_float4(1, 2, 3, 4);
  int4 qi = make_int4(1, 2, 3, 4);
  uint2 u2 = make_uint2(5, 6);
  f[8] = q.w + float(qi.z) + float(u2.y);
}

}  // namespace

Test(launch, intrinsics) {
  dev_buf<unsigned long long> o(32);
  dev_buf<float> f(9);
  BNK_EMU_LAUNCH(intrinsics, 1, 1, 0, 0)(o.p, f.p);
  EXPECT_LAUNCH_OK();
  auto v = o.download();
  auto x = f.download();
  const unsigned long long expect[] = {
      8, 40,          31,          32, 5, 0x80000000u, 3, 2, 0xffffffffffffffffull, 0xffffffffffffffffull, 1, 1, 1, 1,
      1, 0x3f800000u, 0xc0000000u, 1,  1, 0x77553311u};
  for (size_t i = 0; i < sizeof expect / sizeof expect[0]; ++i)
    cr_assert_eq(v[i], expect[i], "intrinsic #%zu: %llx", i, v[i]);
  cr_assert_eq(x[0], 0.5f);
  cr_assert_eq(x[1], 0.125f);
  cr_assert_float_eq(x[2], 0.333333f, 1e-3f);
  cr_assert_float_eq(x[3], 1.0f / 3.0f, 4e-3f);
  cr_assert_eq(x[4], 1.0f);
  cr_assert_eq(x[5], 8.0f);
  cr_assert_eq(x[6], 4.25f);
  cr_assert_eq(x[7], 3.75f);
  cr_assert_eq(x[8], 13.0f);
}
