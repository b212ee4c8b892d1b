/* Measures the cost of the emulation's primitives; the numbers are quoted in
 * docs/emulation.md.  Usage: bnk_emu_bench [repetitions-scale] */
#include <bnk_emu/control.h>
#include <bnk_emu/device.h>

#include <cooperative_groups.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

__global__ void empty_kernel() {}

__global__ void lone_sync_points(int k) {
  const unsigned self = 1u << (threadIdx.x & 31);
  for (int i = 0; i < k; ++i) __syncwarp(self); /* a sync point with no partner: one yield + one resume */
}

__global__ void barriers(int k) {
  for (int i = 0; i < k; ++i) __syncthreads();
}

__global__ void shuffles(int k, float *out) {
  float v = float(threadIdx.x);
  for (int i = 0; i < k; ++i) v += __shfl_xor_sync(0xffffffffu, v, 1 + (i & 15));
  if (v == -1.0f) out[0] = v;
}

__global__ void grid_barriers(int k) {
  for (int i = 0; i < k; ++i) cooperative_groups::this_grid().sync();
}

template <class F>
double seconds(F f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void check() {
  if (cudaGetLastError() != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %s\n", bnk_emu_last_diagnostic());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char **argv) {
  const int scale = argc > 1 ? std::atoi(argv[1]) : 1;
  float *out = nullptr;
  cudaMalloc(reinterpret_cast<void **>(&out), 4);
  std::printf("workers: %d\n", bnk_emu_get_workers());

  BNK_EMU_LAUNCH(empty_kernel, 1, 1, 0, 0)(); /* warm up: worker, stacks */
  BNK_EMU_LAUNCH(barriers, 2, 1024, 0, 0)(1);
  check();

  {
    const int k = 20000 * scale;
    const double s = seconds([&] { BNK_EMU_LAUNCH(lone_sync_points, 1, 32, 0, 0)(k); });
    check();
    std::printf("sync point, no partner (fiber yield + resume): %.1f ns\n", s * 1e9 / (double(k) * 32));
  }
  for (int threads : {256, 1024}) {
    const int k = 2000 * scale;
    const double s = seconds([&] { BNK_EMU_LAUNCH(barriers, 1, threads, 0, 0)(k); });
    check();
    std::printf("__syncthreads, %4d threads: %.2f us per barrier (%.1f ns per thread)\n", threads, s * 1e6 / k,
                s * 1e9 / (double(k) * threads));
  }
  {
    const int k = 20000 * scale;
    const double s = seconds([&] { BNK_EMU_LAUNCH(shuffles, 1, 32, 0, 0)(k, out); });
    check();
    std::printf("__shfl_xor_sync, one full warp: %.2f us per shuffle (%.1f ns per lane)\n", s * 1e6 / k,
                s * 1e9 / (double(k) * 32));
  }
  {
    const int k = 200 * scale;
    const double s = seconds([&] { BNK_EMU_LAUNCH(shuffles, 1, 1024, 0, 0)(k, out); });
    check();
    std::printf("__shfl_xor_sync, 32 warps: %.2f us per shuffle round (%.1f ns per lane)\n", s * 1e6 / k,
                s * 1e9 / (double(k) * 1024));
  }
  struct Shape {
    unsigned grid, block;
  } shapes[] = {{1, 1}, {1, 32}, {1, 256}, {1, 1024}, {132, 256}};
  for (int w : {1, 0}) {
    bnk_emu_set_workers(w);
    BNK_EMU_LAUNCH(barriers, 264, 256, 0, 0)(1); /* warm up the new workers' stacks */
    for (const Shape &sh : shapes) {
      const int k = int((sh.grid * sh.block > 10000 ? 50 : 2000) * scale);
      const double s = seconds([&] {
        for (int i = 0; i < k; ++i) BNK_EMU_LAUNCH(empty_kernel, sh.grid, sh.block, 0, 0)();
      });
      check();
      std::printf("launch of an empty kernel <<<%u, %u>>>, %d worker(s): %.2f us (%.1f ns per thread)\n", sh.grid,
                  sh.block, bnk_emu_get_workers(), s * 1e6 / k, s * 1e9 / (double(k) * sh.grid * sh.block));
    }
  }
  /* Cooperative launches: one OS thread per block, created per launch. */
  for (unsigned blocks : {4u, 16u}) {
    const int launches = 20 * scale, k = 200 * scale;
    int none = 0, syncs = k;
    void *no_sync[] = {&none}, *with_sync[] = {&syncs};
    const double empty = seconds([&] {
      for (int i = 0; i < launches; ++i) cudaLaunchCooperativeKernel(grid_barriers, blocks, 256, no_sync);
    });
    check();
    const double synced = seconds([&] { cudaLaunchCooperativeKernel(grid_barriers, blocks, 256, with_sync); });
    check();
    std::printf("cooperative launch <<<%u, 256>>>, no grid.sync: %.0f us; this_grid().sync(): %.1f us each\n", blocks,
                empty * 1e6 / launches, (synced - empty / launches) * 1e6 / k);
  }
  cudaFree(out);
  return 0;
}
