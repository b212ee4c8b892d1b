/* Memcheck: planted out-of-bounds and use-after-free accesses fail the launch with
 * cudaErrorIllegalAddress and a diagnostic naming the access's file:line, under every schedule. */
#include "emu_test.h"
#include "memcheck_kernels.h"

#include <cstdint>
#include <string>

namespace {

/* Asserts that a launch failed as an illegal address at memcheck_kernels.cu:line, that the next
 * synchronisation reports it once, and that the diagnostic holds each fragment. */
void expect_illegal(cudaError_t launch, int line, std::initializer_list<const char *> fragments) {
  cr_assert_eq(launch, cudaErrorIllegalAddress, "launch returned %s: %s", cudaGetErrorName(launch),
               bnk_emu_last_diagnostic());
  cr_assert_eq(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
  cr_assert_eq(cudaGetLastError(), cudaErrorIllegalAddress);
  cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
  const std::string d = bnk_emu_last_diagnostic();
  const std::string site = "/memcheck_kernels.cu:" + std::to_string(line) + ": illegal address: ";
  cr_assert(d.find(site) != std::string::npos && d.find(site) < d.find(" (block ("),
            "diagnostic does not start with %s: %s", site.c_str(), d.c_str());
  for (const char *f : fragments)
    cr_assert(d.find(f) != std::string::npos, "diagnostic lacks \"%s\": %s", f, d.c_str());
  bnk_emu_clear_diagnostic();
}

/* Runs check() once under each schedule. */
template <class F>
void under_every_schedule(F check) {
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 7);
    check();
  }
  bnk_emu_set_schedule(BNK_EMU_FORWARD, 0);
}

void read_past_end(size_t bytes) {
  dev_buf<float> p(bytes / 4), out(65);
  const std::string offset = "offset " + std::to_string(bytes);
  const std::string alloc = "(cudaMalloc of " + std::to_string(bytes) + " bytes at ";
  under_every_schedule([&] {
    expect_illegal(memcheck_read(p.p, long(bytes / 4), out.p, 64), memcheck_read_line,
                   {"read of 4 bytes", "4 bytes past the end of allocation #", alloc.c_str(), offset.c_str(),
                    "block (0,0,0), thread (63,0,0)", "[kernel launched at "});
  });
}

void write_past_end(size_t bytes) {
  dev_buf<float> p(bytes / 4);
  const std::string offset = "offset " + std::to_string(bytes + 4);
  under_every_schedule([&] {
    expect_illegal(memcheck_write(p.p, long(bytes / 4) + 1, 64), memcheck_write_line,
                   {"write of 4 bytes", "8 bytes past the end of allocation #", offset.c_str(), "thread (63,0,0)"});
  });
}

}  // namespace

Test(memcheck, read_one_past_an_exact_size_allocation) { read_past_end(4096); }

Test(memcheck, read_one_past_a_padded_allocation) { read_past_end(4000); }

Test(memcheck, write_past_an_exact_size_allocation) { write_past_end(4096); }

Test(memcheck, write_past_a_padded_allocation) { write_past_end(4000); }

Test(memcheck, read_before_the_start) {
  dev_buf<float> p(1024), out(33);
  under_every_schedule([&] {
    expect_illegal(memcheck_read(p.p, -1, out.p, 32), memcheck_read_line,
                   {"read of 4 bytes", "4 bytes before the start of allocation #", "offset -4", "thread (31,0,0)"});
  });
}

Test(memcheck, use_after_free) {
  dev_buf<float> out(65);
  under_every_schedule([&] {
    float *p = nullptr;
    cr_assert_eq(cudaMalloc(reinterpret_cast<void **>(&p), 4096), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    expect_illegal(memcheck_read(p, 10, out.p, 64), memcheck_read_line,
                   {"use after cudaFree: allocation #", "(cudaMalloc of 4096 bytes at "});
    float *q = nullptr;
    cr_assert_eq(cudaMalloc(reinterpret_cast<void **>(&q), 4096), cudaSuccess);
    cr_assert_neq(q, p, "freed memory stays in quarantine");
    expect_illegal(memcheck_write(p, 3, 64), memcheck_write_line, {"write of 4 bytes", "use after cudaFree"});
    cr_assert_eq(cudaFree(q), cudaSuccess);
  });
}

Test(memcheck, host_allocation) {
  float *h = nullptr;
  cr_assert_eq(cudaMallocHost(reinterpret_cast<void **>(&h), 4096), cudaSuccess);
  dev_buf<float> out(65);
  under_every_schedule([&] {
    expect_illegal(memcheck_read(h, 1024, out.p, 64), memcheck_read_line,
                   {"(cudaMallocHost of 4096 bytes", "offset 4096"});
  });
  cr_assert_eq(cudaFreeHost(h), cudaSuccess);
  under_every_schedule(
      [&] { expect_illegal(memcheck_read(h, 0, out.p, 64), memcheck_read_line, {"use after cudaFreeHost"}); });
}

Test(memcheck, in_bounds_accesses_pass) {
  /* 4000 bytes: the last float4 ends exactly at the end, next to the redzone. */
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f - 3.0f;
  dev_buf<float> p(v), q(1000), out(65);
  under_every_schedule([&] {
    q.zero();
    cr_assert_eq(memcheck_copy4(p.p, q.p, 1000), cudaSuccess, "%s", bnk_emu_last_diagnostic());
    EXPECT_LAUNCH_OK();
    const std::vector<float> got = q.download();
    for (size_t i = 0; i < v.size(); ++i) cr_assert_eq(got[i], v[i], "element %zu", i);
    cr_assert_eq(memcheck_read(p.p, 999, out.p, 64), cudaSuccess, "%s", bnk_emu_last_diagnostic());
    EXPECT_LAUNCH_OK();
    cr_assert_eq(out.download()[0], v[999]);
  });
  cr_assert_str_empty(bnk_emu_last_diagnostic());
}

Test(memcheck, dynamic_shared_memory_past_the_launch_bytes) {
  under_every_schedule([&] {
    expect_illegal(memcheck_dynamic_shared(1024, 1024), memcheck_shared_line,
                   {"write of 1 bytes", "dynamic shared memory offset 1024, past the 1024 bytes of the launch",
                    "thread (63,0,0)"});
    expect_illegal(memcheck_dynamic_shared(0, 0), memcheck_shared_line, {"past the 0 bytes of the launch"});
    cr_assert_eq(memcheck_dynamic_shared(1024, 1023), cudaSuccess, "%s", bnk_emu_last_diagnostic());
    EXPECT_LAUNCH_OK();
  });
}

Test(memcheck, dynamic_shared_memory_past_the_227_KiB_buffer) {
  under_every_schedule([&] {
    expect_illegal(memcheck_dynamic_shared(232448, 232448), memcheck_shared_line,
                   {"offset 232448, past the 232448 bytes"});
    cr_assert_eq(memcheck_dynamic_shared(232448, 232447), cudaSuccess, "%s", bnk_emu_last_diagnostic());
    EXPECT_LAUNCH_OK();
  });
}

Test(memcheck, static_shared_memory_starts_poisoned_in_every_block) {
  const int blocks = 6;
  dev_buf<float> out(size_t(blocks) * 64);
  for (int workers : {1, 2}) {
    bnk_emu_set_workers(workers);
    under_every_schedule([&] {
      out.zero();
      cr_assert_eq(memcheck_static_shared(out.p, blocks), cudaSuccess, "%s", bnk_emu_last_diagnostic());
      EXPECT_LAUNCH_OK();
      const std::vector<float> got = out.download();
      for (size_t i = 0; i < got.size(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, &got[i], 4);
        cr_assert_eq(bits, 0xffffffffu, "%d workers: block %zu thread %zu read 0x%08x, not the poison", workers, i / 64,
                     i % 64, bits);
      }
    });
  }
  bnk_emu_set_workers(0);
}
