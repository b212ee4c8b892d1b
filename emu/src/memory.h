/* Internal interface of the emulation's device-memory subsystems: allocations with redzones (memcheck.cpp),
 * the access hooks that instrumented kernel code calls, and the traffic meter (traffic.cpp). */
#ifndef BNK_EMU_MEMORY_H
#define BNK_EMU_MEMORY_H

#include <bnk_emu/control.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

namespace bnk_emu {
namespace detail {

/* Bytes of redzone on each side of an allocation, and past the worker's dynamic shared memory buffer. */
constexpr size_t kRedzone = 256;
constexpr size_t kSectorBytes = 32;

enum alloc_kind : int { ALLOC_DEVICE = 0, ALLOC_HOST = 1 };

/* Per-allocation traffic state: one bit per 32-byte sector read or written in the current launch, and the
 * bytes requested; folded into the totals at the launch's end. */
struct alloc_meter {
  std::atomic<uint64_t> *read_bits = nullptr, *write_bits = nullptr;
  size_t words = 0;
  std::atomic<uint64_t> read_bytes{0}, write_bytes{0};
  std::atomic<bool> touched{false};
  bnk_emu_traffic totals{}; /* since the last reset; launches = launches that touched it */
};

struct allocation {
  uintptr_t lo, begin, end, hi; /* [lo, begin) and [end, hi) are redzones; [begin, end) is the user's */
  unsigned long long serial;    /* n-th allocation of the program */
  alloc_kind kind;
  bool freed;
  alloc_meter meter;
};

/* --- called by the runtime (runtime.cpp) ------------------------------------------------------------ */
/* Returns 256-byte-aligned memory of `size` bytes between redzones, filled with 0xff, or NULL. */
void *tracked_alloc(size_t size, alloc_kind kind);
/* Releases memory from tracked_alloc (kept poisoned in a quarantine for a while, so that later kernel
 * accesses are reported as use after free). */
void tracked_free(void *p);
/* cudaMemset / cudaMemcpy on tracked memory, for the traffic meter. */
void traffic_copy(const void *dst, const void *src, size_t bytes);

/* --- called by the engine (engine.cpp) -------------------------------------------------------------- */
void memory_launch_begin();
void memory_launch_end();
/* On the worker, before a block's first fiber runs: arms the checks for this worker and poisons the
 * static shared memory. */
void memory_block_begin(void *dynamic_smem, size_t smem_bytes);
void memory_block_end();

/* For the traffic meter: the tracker's lock, the live allocation that starts at p (lock held), and every
 * allocation still tracked, quarantined ones included (lock held). */
std::mutex &tracker_mutex();
allocation *tracked_allocation_of_locked(const void *p);
void for_each_tracked_locked(void (*f)(allocation &));

/* --- provided by the engine -------------------------------------------------------------------------- */
/* Fails the current block's launch with cudaErrorIllegalAddress and message m (never returns). */
[[noreturn]] void fail_illegal_address(const std::string &m);
/* "block (x,y,z), thread (x,y,z)" of the running fiber. */
std::string current_thread_str();

/* --- traffic.cpp ------------------------------------------------------------------------------------- */
bool traffic_enabled();
/* Records an access of n bytes at a in allocation A (the access lies inside [A.begin, A.end)). */
void traffic_record(allocation &A, uintptr_t a, size_t n, bool write);
/* Gives A its sector bitmaps before a launch that meters. */
void traffic_prepare(allocation &A);
/* Folds A's sector bits of the launch that ends into its totals and the launch's, and clears them. */
void traffic_fold(allocation &A);
void traffic_launch_done();
/* A cudaMemset/cudaMemcpy of `bytes` into dst and from src (either may be null: untracked memory). */
void traffic_copied(allocation *dst, allocation *src, size_t bytes);
void traffic_release(allocation &A);

}  // namespace detail
}  // namespace bnk_emu

#endif
