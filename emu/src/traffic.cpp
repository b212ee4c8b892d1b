/*
 * The traffic meter: bytes that kernel code reads and writes in the runtime's allocations, counted per
 * launch as distinct 32-byte sectors (what DRAM would see if every sector were fetched once per launch,
 * i.e. perfect caching inside a launch and none across launches) and as bytes requested.  The access
 * hooks of memcheck.cpp feed it; it is off by default because every access then also sets a bit.
 */
#include "internal.h"
#include "memory.h"

#include <bnk_emu/control.h>

#include <cstdlib>
#include <cstring>

namespace bnk_emu {
namespace detail {
namespace {

std::atomic<bool> &enabled_flag() {
  static std::atomic<bool> on{[] {
    const char *s = std::getenv("BNK_EMU_TRAFFIC");
    return s && s[0] != '\0' && s[0] != '0';
  }()};
  return on;
}

/* Guarded by tracker_mutex(). */
bnk_emu_traffic g_launch, g_last, g_total;

void add(bnk_emu_traffic &to, const bnk_emu_traffic &from) {
  to.launches += from.launches;
  to.read_sectors += from.read_sectors;
  to.written_sectors += from.written_sectors;
  to.read_bytes += from.read_bytes;
  to.written_bytes += from.written_bytes;
  to.copy_read_bytes += from.copy_read_bytes;
  to.copy_written_bytes += from.copy_written_bytes;
}

/* Counts and clears the set bits of a launch's bitmap. */
unsigned long long take_bits(std::atomic<uint64_t> *bits, size_t words) {
  unsigned long long n = 0;
  for (size_t i = 0; i < words; ++i) {
    const uint64_t w = bits[i].load(std::memory_order_relaxed);
    if (w) {
      n += unsigned(__builtin_popcountll(w));
      bits[i].store(0, std::memory_order_relaxed);
    }
  }
  return n;
}

inline void mark(std::atomic<uint64_t> *bits, size_t first, size_t last) {
  for (size_t s = first; s <= last; ++s) {
    const uint64_t bit = uint64_t(1) << (s & 63);
    std::atomic<uint64_t> &w = bits[s >> 6];
    if (!(w.load(std::memory_order_relaxed) & bit)) w.fetch_or(bit, std::memory_order_relaxed);
  }
}

}  // namespace

bool traffic_enabled() { return enabled_flag().load(std::memory_order_relaxed); }

void traffic_prepare(allocation &A) {
  alloc_meter &m = A.meter;
  if (m.read_bits) return;
  const size_t sectors = (A.end - A.begin + kSectorBytes - 1) / kSectorBytes;
  m.words = (sectors + 63) / 64;
  m.read_bits = new std::atomic<uint64_t>[m.words]();
  m.write_bits = new std::atomic<uint64_t>[m.words]();
}

void traffic_record(allocation &A, uintptr_t a, size_t n, bool write) {
  alloc_meter &m = A.meter;
  if (!m.read_bits) return; /* allocated during this launch by another host thread: metered from the next */
  const size_t first = (a - A.begin) / kSectorBytes, last = (a + n - 1 - A.begin) / kSectorBytes;
  mark(write ? m.write_bits : m.read_bits, first, last);
  (write ? m.write_bytes : m.read_bytes).fetch_add(n, std::memory_order_relaxed);
  if (!m.touched.load(std::memory_order_relaxed)) m.touched.store(true, std::memory_order_relaxed);
}

void traffic_fold(allocation &A) {
  alloc_meter &m = A.meter;
  if (!m.touched.load(std::memory_order_relaxed)) return;
  m.touched.store(false, std::memory_order_relaxed);
  bnk_emu_traffic t{};
  t.read_sectors = take_bits(m.read_bits, m.words);
  t.written_sectors = take_bits(m.write_bits, m.words);
  t.read_bytes = m.read_bytes.exchange(0, std::memory_order_relaxed);
  t.written_bytes = m.write_bytes.exchange(0, std::memory_order_relaxed);
  add(g_launch, t);
  t.launches = 1;
  add(m.totals, t);
}

void traffic_launch_done() {
  g_launch.launches = 1;
  add(g_total, g_launch);
  g_last = g_launch;
  g_launch = bnk_emu_traffic{};
}

void traffic_copied(allocation *dst, allocation *src, size_t bytes) {
  if (dst) {
    dst->meter.totals.copy_written_bytes += bytes;
    g_total.copy_written_bytes += bytes;
  }
  if (src) {
    src->meter.totals.copy_read_bytes += bytes;
    g_total.copy_read_bytes += bytes;
  }
}

void traffic_release(allocation &A) {
  delete[] A.meter.read_bits;
  delete[] A.meter.write_bits;
  A.meter.read_bits = A.meter.write_bits = nullptr;
}

}  // namespace detail
}  // namespace bnk_emu

using namespace bnk_emu::detail;

#pragma GCC visibility push(default)
extern "C" {

void bnk_emu_set_traffic(int enabled) {
  std::lock_guard<std::mutex> lk(tracker_mutex()); /* not in the middle of a launch's fold */
  enabled_flag().store(enabled != 0);
}

int bnk_emu_get_traffic(void) { return traffic_enabled() ? 1 : 0; }

void bnk_emu_traffic_reset(void) {
  std::lock_guard<std::mutex> lk(tracker_mutex());
  g_total = g_last = bnk_emu_traffic{};
  for_each_tracked_locked([](allocation &A) { A.meter.totals = bnk_emu_traffic{}; });
}

void bnk_emu_traffic_total(bnk_emu_traffic *out) {
  if (!out) return;
  std::lock_guard<std::mutex> lk(tracker_mutex());
  *out = g_total;
}

void bnk_emu_traffic_last_launch(bnk_emu_traffic *out) {
  if (!out) return;
  std::lock_guard<std::mutex> lk(tracker_mutex());
  *out = g_last;
}

int bnk_emu_traffic_of(const void *ptr, bnk_emu_traffic *out) {
  std::lock_guard<std::mutex> lk(tracker_mutex());
  const allocation *A = tracked_allocation_of_locked(ptr);
  if (!A) return -1;
  if (out) *out = A->meter.totals;
  return 0;
}

}  // extern "C"
#pragma GCC visibility pop
