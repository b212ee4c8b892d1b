/* Cooperative launches: co-resident grids, this_grid().sync(), the cooperative_groups subset, the launch
 * limit from occupancy x SMs, and occupancy from the kernels' real sm_90 resource usage. */
#include "emu_test.h"

#include <cooperative_groups.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace cg = cooperative_groups;

namespace {

int g_line; /* the line of the faulty call, stored on that line */

/* Three rounds of: each block sums its slice into partial[block], the grid syncs, every block adds up
 * all partials.  Wrong without a working grid barrier (a block would read another's stale partial). */
__global__ void grid_sum_rounds(const float *x, float *partial, float *out, int per_block) {
  cg::grid_group grid = cg::this_grid();
  cg::thread_block block = cg::this_thread_block();
  __shared__ float acc[256];
  for (int round = 0; round < 3; ++round) {
    const float scale = float(round + 1);
    float s = 0.0f;
    for (int i = int(block.thread_rank()); i < per_block; i += int(block.size()))
      s += scale * x[grid.block_rank() * per_block + i];
    acc[block.thread_rank()] = s;
    block.sync();
    if (block.thread_rank() == 0) {
      float t = 0.0f;
      for (unsigned k = 0; k < block.size(); ++k) t += acc[k];
      partial[round * grid.num_blocks() + grid.block_rank()] = t;
    }
    grid.sync();
    if (block.thread_rank() == 0) {
      float t = 0.0f;
      for (unsigned long long b = 0; b < grid.num_blocks(); ++b) t += partial[round * grid.num_blocks() + b];
      out[round * grid.num_blocks() + grid.block_rank()] = t;
    }
    grid.sync();
  }
}

__global__ void group_ranks(unsigned long long *grid_rank, unsigned *block_rank_of, unsigned *thread_rank,
                            unsigned long long *sizes, int *valid) {
  cg::grid_group grid = cg::this_grid();
  cg::thread_block block = cg::this_thread_block();
  const unsigned long long r = grid.thread_rank();
  grid_rank[r] = r;
  block_rank_of[r] = unsigned(grid.block_rank());
  thread_rank[r] = block.thread_rank();
  sizes[r] = grid.size() * 1000000ull + grid.num_blocks() * 1000ull + block.size();
  valid[r] = grid.is_valid();
}

__global__ void block_leaves_early(int *out) {
  if (blockIdx.x == 1) return;
  g_line = __LINE__ + 1;  // the line of the call below
  cg::this_grid().sync();
  out[blockIdx.x] = 1;
}

__global__ void grid_sync_uncooperative(int *out) {
  g_line = __LINE__ + 1;  // the line of the call below
  cg::this_grid().sync();
  out[blockIdx.x] = 1;
}

/* A hand-written grid barrier: spins until every block arrived.  It hangs unless all blocks are
 * resident at once, which a cooperative launch guarantees. */
__global__ void atomic_grid_barrier(unsigned *arrived, int *out) {
  if (threadIdx.x == 0) {
    atomicAdd(arrived, 1u);
    while (atomicAdd(arrived, 0u) < gridDim.x) {
    }
  }
  __syncthreads();
  out[blockIdx.x] = int(atomicAdd(arrived, 0u));
}

__global__ void empty_kernel(int *) {}

void expect_misuse(const char *what) {
  cr_assert_eq(cudaGetLastError(), cudaErrorLaunchFailure);
  cr_assert_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  (void)cudaGetLastError();
  const std::string d = bnk_emu_last_diagnostic();
  const std::string site = "test_cooperative.cpp:" + std::to_string(g_line) + ":";
  cr_assert(d.find(site) != std::string::npos, "diagnostic does not name %s: %s", site.c_str(), d.c_str());
  cr_assert(d.find(what) != std::string::npos, "diagnostic lacks \"%s\": %s", what, d.c_str());
}

}  // namespace

/* Names and parameter types of one of bnk's kernels (kernels/backward.cu): only the mangled name matters,
 * which is how the emulation finds the kernel's entry in the table generated from the sm_90 build. */
struct dx_params {};
struct bnk_grad_epilogue_args {};
struct bnk_elementwise_plan {};
template <class T, int V, int E>
__global__ void backward_dx_channels_last(const T *, const T *, T *, bnk_elementwise_plan, long, long, dx_params,
                                          bnk_grad_epilogue_args) {}

TestSuite(cooperative, .timeout = 60);

Test(cooperative, grid_sum_with_grid_sync_under_every_schedule) {
  bnk_emu_set_sm_count(2);
  int per_sm = 0;
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, (const void *)grid_sum_rounds, 256, 0),
               cudaSuccess);
  cr_assert_eq(per_sm, 8, "estimate for a kernel without a table entry: 2048 threads / 256");
  const int blocks = per_sm * 2, per_block = 300;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> host(size_t(blocks) * per_block);
  for (float &v : host) v = dist(rng);
  dev_buf<float> x(host), partial(size_t(3) * blocks), out(size_t(3) * blocks);
  std::vector<float> first;
  for (int variant = 0; variant < 2; ++variant) {
    for (bnk_emu_schedule s : kAllSchedules) {
      bnk_emu_set_schedule(s, 7);
      cr_assert_eq(cudaMemset(out.p, 0xff, out.n * sizeof(float)), cudaSuccess);
      float *xp = x.p, *pp = partial.p, *op = out.p;
      int pb = per_block;
      if (variant == 0) {
        void *args[] = {&xp, &pp, &op, &pb};
        cr_assert_eq(cudaLaunchCooperativeKernel(grid_sum_rounds, dim3(blocks), dim3(256), args, 0, nullptr),
                     cudaSuccess, "%s", bnk_emu_last_diagnostic());
      } else {
        cudaLaunchAttribute attr;
        std::memset(&attr, 0, sizeof attr);
        attr.id = cudaLaunchAttributeCooperative;
        attr.val.cooperative = 1;
        cudaLaunchConfig_t cfg = {dim3(blocks), dim3(256), 0, nullptr, &attr, 1};
        cr_assert_eq(cudaLaunchKernelEx(&cfg, grid_sum_rounds, x.p, partial.p, out.p, per_block), cudaSuccess, "%s",
                     bnk_emu_last_diagnostic());
      }
      EXPECT_LAUNCH_OK();
      const std::vector<float> got = out.download();
      for (int round = 0; round < 3; ++round) {
        double ref = 0.0;
        for (float v : host) ref += double(v) * (round + 1);
        for (int b = 0; b < blocks; ++b)
          cr_assert_float_eq(got[size_t(round * blocks + b)], ref, 1e-3, "round %d block %d: %g vs %g", round, b,
                             double(got[size_t(round * blocks + b)]), ref);
      }
      if (first.empty()) first = got;
      else
        cr_assert(std::memcmp(first.data(), got.data(), got.size() * sizeof(float)) == 0,
                  "results differ between schedules or launch calls");
    }
  }
}

Test(cooperative, group_ranks_and_sizes) {
  bnk_emu_set_sm_count(1);
  const unsigned blocks = 4, threads = 96, n = blocks * threads;
  dev_buf<unsigned long long> grid_rank(n), sizes(n);
  dev_buf<unsigned> block_rank(n), thread_rank(n);
  dev_buf<int> valid(n);
  unsigned long long *a = grid_rank.p, *d = sizes.p;
  unsigned *b = block_rank.p, *c = thread_rank.p;
  int *e = valid.p;
  void *args[] = {&a, &b, &c, &d, &e};
  cr_assert_eq(cudaLaunchCooperativeKernel(group_ranks, dim3(2, 2), dim3(32, 3), args), cudaSuccess, "%s",
               bnk_emu_last_diagnostic());
  EXPECT_LAUNCH_OK();
  auto gr = grid_rank.download(), sz = sizes.download();
  auto br = block_rank.download(), tr = thread_rank.download();
  auto v = valid.download();
  for (unsigned r = 0; r < n; ++r) {
    cr_assert_eq(gr[r], r);
    cr_assert_eq(br[r], r / threads);
    cr_assert_eq(tr[r], r % threads);
    cr_assert_eq(sz[r], n * 1000000ull + blocks * 1000ull + threads);
    cr_assert_eq(v[r], 1);
  }
}

Test(cooperative, grid_larger_than_occupancy_times_sms_is_refused) {
  bnk_emu_set_sm_count(2);
  int per_sm = 0, sms = 0, coop = 0;
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, (const void *)empty_kernel, 1024, 0),
               cudaSuccess);
  cr_assert_eq(per_sm, 2);
  cr_assert_eq(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  cr_assert_eq(sms, 2);
  cr_assert_eq(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0), cudaSuccess);
  cr_assert_eq(coop, 1);
  dev_buf<int> out(8);
  int *p = out.p;
  void *args[] = {&p};
  cr_assert_eq(cudaLaunchCooperativeKernel(empty_kernel, dim3(5), dim3(1024), args),
               cudaErrorCooperativeLaunchTooLarge);
  cr_assert_eq(cudaGetLastError(), cudaErrorCooperativeLaunchTooLarge);
  cr_assert_eq(cudaLaunchCooperativeKernel(empty_kernel, dim3(4), dim3(1024), args), cudaSuccess);
  EXPECT_LAUNCH_OK();
  /* The limit is the cooperative one only: an ordinary launch of the same grid runs. */
  BNK_EMU_LAUNCH(empty_kernel, 5, 1024, 0, 0)(out.p);
  EXPECT_LAUNCH_OK();
}

Test(cooperative, block_exiting_while_others_wait_is_misuse_never_a_hang) {
  bnk_emu_set_sm_count(1);
  dev_buf<int> out(4);
  int *p = out.p;
  void *args[] = {&p};
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 3);
    (void)cudaLaunchCooperativeKernel(block_leaves_early, dim3(4), dim3(64), args);
    expect_misuse("only part of the grid");
  }
}

Test(cooperative, grid_sync_outside_a_cooperative_launch_is_misuse) {
  dev_buf<int> out(2);
  BNK_EMU_LAUNCH(grid_sync_uncooperative, 2, 32, 0, 0)(out.p);
  expect_misuse("not launched cooperatively");
}

Test(cooperative, blocks_are_co_resident) {
  bnk_emu_set_workers(2);
  bnk_emu_set_sm_count(1);
  dev_buf<unsigned> arrived(1);
  dev_buf<int> out(3);
  arrived.zero();
  unsigned *a = arrived.p;
  int *o = out.p;
  void *args[] = {&a, &o};
  cr_assert_eq(cudaLaunchCooperativeKernel(atomic_grid_barrier, dim3(3), dim3(64), args), cudaSuccess);
  EXPECT_LAUNCH_OK();
  for (int v : out.download()) cr_assert_eq(v, 3);
}

Test(cooperative, sm_count_from_environment_and_control) {
  setenv("BNK_EMU_SMS", "5", 1);
  bnk_emu_set_sm_count(0); /* back to the default, which reads the environment */
  cr_assert_eq(bnk_emu_get_sm_count(), 5);
  cudaDeviceProp prop;
  cr_assert_eq(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  cr_assert_eq(prop.multiProcessorCount, 5);
  cr_assert_eq(prop.cooperativeLaunch, 1);
  bnk_emu_set_sm_count(3);
  cr_assert_eq(bnk_emu_get_sm_count(), 3);
  unsetenv("BNK_EMU_SMS");
  bnk_emu_set_sm_count(0);
  cr_assert_eq(bnk_emu_get_sm_count(), 132);
}

/* The expected resources come from the committed table itself; the kernel must be one of bnk's. */
Test(cooperative, occupancy_uses_the_kernels_sm90_resource_usage) {
  const char *name = "_Z25backward_dx_channels_lastI6__halfLi8ELi1EEvPKT_S3_PS1_20bnk_elementwise_planll9dx_"
                     "params22bnk_grad_epilogue_args";
  std::ifstream table(BNK_EMU_RESOURCE_TABLE);
  cr_assert(table.good(), "cannot read %s", BNK_EMU_RESOURCE_TABLE);
  std::string line;
  int regs = -1, shared = -1, local = -1;
  while (std::getline(table, line))
    if (line.find(std::string("\"") + name + "\"") != std::string::npos)
      std::sscanf(line.c_str() + line.find("\",") + 2, "%d, %d, %d", &regs, &shared, &local);
  cr_assert_gt(regs, 32, "%s: no entry with more than 32 registers in the table (renamed? pick another kernel)", name);

  const void *k = (const void *)backward_dx_channels_last<__half, 8, 1>;
  cudaFuncAttributes attr;
  cr_assert_eq(cudaFuncGetAttributes(&attr, k), cudaSuccess);
  cr_assert_eq(attr.numRegs, regs);
  cr_assert_eq(int(attr.sharedSizeBytes), shared);
  cr_assert_eq(int(attr.localSizeBytes), local);
  const int per_warp = (regs * 32 + 255) / 256 * 256;
  cr_assert_eq(attr.maxThreadsPerBlock, std::min(1024, 65536 / per_warp * 32));
  for (int threads : {128, 256, 512}) {
    const int warps = threads / 32;
    int expect = std::min({32, 64 / warps, 65536 / (per_warp * warps), 233472 / (shared + 1024)});
    if (threads > attr.maxThreadsPerBlock) expect = 0;
    int got = -1;
    cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&got, k, threads, 0), cudaSuccess);
    cr_assert_eq(got, expect, "%d threads: %d blocks per SM, expected %d", threads, got, expect);
  }
  /* A kernel without an entry keeps the estimate. */
  cr_assert_eq(cudaFuncGetAttributes(&attr, (const void *)empty_kernel), cudaSuccess);
  cr_assert_eq(attr.numRegs, 32);
  cr_assert_eq(int(attr.sharedSizeBytes), 0);
}
