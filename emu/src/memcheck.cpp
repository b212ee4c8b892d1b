/*
 * The emulation's memcheck: device allocations between redzones, a quarantine of freed memory, and the
 * access hooks that instrumented kernel code calls before every load and store.
 *
 * Wrapped kernel sources are compiled with -fsanitize=kernel-address and a call threshold of 0, so g++
 * emits a call to __asan_{load,store}{1,2,4,8,16,N}_noabort(address[, size]) before each access instead
 * of inline shadow checks; the emulation defines those functions here.  An access is checked only while
 * a worker runs a block, and only against the memory the runtime handed out (cudaMalloc*, cudaMallocHost)
 * and the worker's dynamic shared memory: host memory, stacks and static shared memory pass unchecked.
 * This file also poisons the static shared memory of wrapped kernels at every block start.
 * Under a full AddressSanitizer build (./dev sanitize) the kernels call the same functions in ASan's
 * recover mode; these hooks run first and then hand the access to ASan's own check.  See
 * docs/emulation.md, "Memcheck".
 */
#include "asan.h"
#include "internal.h"
#include "memory.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <elf.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#define BNK_EMU_IE_TLS __attribute__((tls_model("initial-exec")))

/* Bounds of the static shared memory of wrapped kernels, gathered by emu/shared.ld, and the anchor that
 * makes that section initialised TLS. */
extern "C" char __start_bnk_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_bnk_emu_shared[] __attribute__((weak, visibility("hidden")));
__attribute__((used, section(".tdata.bnk_emu_shared_anchor"))) static thread_local char bnk_emu_shared_anchor = 1;

namespace bnk_emu {
namespace detail {
namespace {

/* Freed memory stays poisoned and reserved until this many bytes of later frees push it out. */
constexpr size_t kQuarantineBytes = size_t(256) << 20;
/* Every tracked allocation lies in one reserved range of address space (reserved, not committed), so
 * that the hooks tell device memory from stacks, heap and shared memory with one comparison.  The arena
 * is cut in 64 KiB granules; an allocation starts on a granule and owns its granules alone, so a table
 * of one pointer per granule finds the allocation of an address in one load. */
constexpr size_t kArenaBytes = size_t(1) << 40;
constexpr unsigned kGranuleShift = 16;
constexpr size_t kGranuleBytes = size_t(1) << kGranuleShift;

/* Read by the hooks without a lock: set once, before the first allocation is handed out. */
uintptr_t g_arena_lo = 0;
size_t g_arena_bytes = 0; /* 0 until the arena is reserved: no address is in it */
std::atomic<allocation *> *g_granules = nullptr;

struct tracker {
  std::mutex mu;
  std::map<uintptr_t, allocation *> live; /* by user address */
  std::deque<allocation *> quarantine;    /* oldest first */
  size_t quarantined_bytes = 0;
  std::vector<allocation *> evicted; /* released when no launch can see them */
  unsigned long long serial = 0;
  uintptr_t arena_next = 0;
  std::multimap<size_t, uintptr_t> arena_free; /* released ranges by size, for reuse */
  bool in_launch = false;
};

tracker &trk() {
  static tracker *t = new tracker(); /* never destroyed: usable from atexit handlers */
  return *t;
}

/* The dynamic shared memory that the hooks of one worker check against while it runs a block. */
struct worker_view {
  uintptr_t smem;
  size_t smem_bytes;
};

thread_local bool tl_armed BNK_EMU_IE_TLS = false;
thread_local worker_view tl_view BNK_EMU_IE_TLS;
thread_local char *tl_static_shared BNK_EMU_IE_TLS = nullptr; /* this worker's copy of the section */

size_t granule_round(size_t bytes) { return (bytes + kGranuleBytes - 1) / kGranuleBytes * kGranuleBytes; }

/* Caller holds mu. */
bool arena_reserve_locked() {
  if (g_arena_bytes) return true;
  void *m = mmap(nullptr, kArenaBytes + kGranuleBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  void *table = mmap(nullptr, (kArenaBytes >> kGranuleShift) * sizeof(allocation *), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (table == MAP_FAILED) {
    munmap(m, kArenaBytes + kGranuleBytes);
    return false;
  }
  g_granules = static_cast<std::atomic<allocation *> *>(table); /* zero pages: no allocation anywhere */
  g_arena_lo = granule_round(reinterpret_cast<uintptr_t>(m));
  trk().arena_next = g_arena_lo;
  g_arena_bytes = kArenaBytes;
  return true;
}

/* Caller holds mu.  Records A as the owner of its granules (or none). */
void set_owner_locked(uintptr_t lo, size_t bytes, allocation *A) {
  for (size_t g = (lo - g_arena_lo) >> kGranuleShift, e = g + (bytes >> kGranuleShift); g < e; ++g)
    g_granules[g].store(A, std::memory_order_release);
}

/* Caller holds mu.  Maps `bytes` (a multiple of the granule) of the arena read-write; 0 when exhausted. */
uintptr_t arena_map_locked(size_t bytes) {
  tracker &t = trk();
  if (!arena_reserve_locked()) return 0;
  uintptr_t at = 0;
  auto it = t.arena_free.lower_bound(bytes);
  if (it != t.arena_free.end()) {
    at = it->second;
    const size_t left = it->first - bytes;
    t.arena_free.erase(it);
    if (left) t.arena_free.emplace(left, at + bytes);
  } else if (g_arena_lo + kArenaBytes - t.arena_next >= bytes) {
    at = t.arena_next;
    t.arena_next += bytes;
  } else {
    return 0;
  }
  void *m = mmap(reinterpret_cast<void *>(at), bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    t.arena_free.emplace(bytes, at);
    return 0;
  }
  return at;
}

/* Caller holds mu.  Gives the pages back to the system and the range back to the arena. */
void arena_unmap_locked(uintptr_t at, size_t bytes) {
  mmap(reinterpret_cast<void *>(at), bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  trk().arena_free.emplace(bytes, at);
}

/* Caller holds mu. */
void release_locked(allocation *A) {
  traffic_release(*A);
  set_owner_locked(A->lo, A->hi - A->lo, nullptr);
  arena_unmap_locked(A->lo, A->hi - A->lo);
  delete A;
}

/* Caller holds mu. */
void release_evicted_locked() {
  if (trk().in_launch) return;
  for (allocation *A : trk().evicted) release_locked(A);
  trk().evicted.clear();
}

const char *kind_name(alloc_kind k) { return k == ALLOC_HOST ? "cudaMallocHost" : "cudaMalloc"; }

/* --- where an access came from -------------------------------------------------------------------- */

/* The first source frame of the inline chain at pc that is not the emulation's or the standard
 * library's: the kernel line that made the access.  Runs addr2line, on the report path only. */
std::string source_line(const void *pc) {
  Dl_info info;
  if (!dladdr(pc, &info) || !info.dli_fbase) return std::string();
  const ElfW(Ehdr) *eh = static_cast<const ElfW(Ehdr) *>(info.dli_fbase);
  uintptr_t addr = reinterpret_cast<uintptr_t>(pc);
  if (eh->e_type == ET_DYN) addr -= reinterpret_cast<uintptr_t>(info.dli_fbase);
  std::string file = info.dli_fname ? info.dli_fname : "";
  if (file.empty() || file.find('/') == std::string::npos) { /* the main program: its own path */
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return std::string();
    file.assign(self, size_t(n));
  }
  if (file.find('\'') != std::string::npos) return std::string(); /* not quotable below */
  char cmd[4200];
  std::snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' 0x%" PRIxPTR " 2>/dev/null", file.c_str(), addr - 1);
  FILE *p = popen(cmd, "r");
  if (!p) return std::string();
  std::string best, first;
  char line[4096];
  while (std::fgets(line, sizeof line, p)) {
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    const size_t disc = s.find(" (discriminator");
    if (disc != std::string::npos) s.erase(disc);
    if (s.empty() || s.compare(0, 2, "??") == 0) continue;
    if (first.empty()) first = s;
    if (best.empty() && s.find("/bnk_emu/") == std::string::npos && s.compare(0, 13, "/usr/include/") != 0 &&
        s.compare(0, 9, "/usr/lib/") != 0)
      best = s;
  }
  pclose(p);
  return best.empty() ? first : best;
}

std::string hexaddr(uintptr_t a) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIxPTR, a);
  return buf;
}

[[noreturn]] void report(const void *pc, const std::string &what) {
  std::string where = source_line(pc);
  if (where.empty()) where = "?? (kernel code at " + hexaddr(reinterpret_cast<uintptr_t>(pc)) + ")";
  fail_illegal_address(where + ": illegal address: " + what + " (" + current_thread_str() + ")");
}

std::string access_str(uintptr_t a, size_t n, bool write) {
  return std::string(write ? "write" : "read") + " of " + std::to_string(n) + " bytes at " + hexaddr(a);
}

[[noreturn]] void report_allocation(const void *pc, const allocation &A, uintptr_t a, size_t n, bool write) {
  const long long offset = (long long)(a - A.begin);
  const size_t size = A.end - A.begin;
  std::string how;
  if (A.freed) how = "use after cudaFree" + std::string(A.kind == ALLOC_HOST ? "Host" : "") + ": ";
  else if (a + n > A.end) how = std::to_string(a + n - A.end) + " bytes past the end of ";
  else how = std::to_string(A.begin - a) + " bytes before the start of ";
  report(pc, access_str(a, n, write) + ", " + how + "allocation #" + std::to_string(A.serial) + " (" +
                 kind_name(A.kind) + " of " + std::to_string(size) + " bytes at " + hexaddr(A.begin) + "), offset " +
                 std::to_string(offset));
}

/* The allocation owning the granule of a (a lies in the arena), or null. */
inline allocation *owner(uintptr_t a) {
  return g_granules[(a - g_arena_lo) >> kGranuleShift].load(std::memory_order_acquire);
}

[[noreturn]] __attribute__((noinline)) void report_unowned(const void *pc, uintptr_t a, size_t n, bool write) {
  report(pc, access_str(a, n, write) + ", in the emulated device's address range but in no allocation");
}

/* An access [a, a + n) inside the arena. */
inline void check_device(uintptr_t a, size_t n, bool write, const void *pc) {
  allocation *A = owner(a);
  if (!A) report_unowned(pc, a, n, write);
  if (A->freed || a < A->begin || a + n > A->end) report_allocation(pc, *A, a, n, write);
  if (traffic_enabled()) traffic_record(*A, a, n, write);
}

inline void check(const void *p, size_t n, bool write, const void *pc) {
  if (!tl_armed || n == 0) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a - g_arena_lo < g_arena_bytes) { /* wraps to a huge value below the arena */
    check_device(a, n, write, pc);
    return;
  }
  const uintptr_t s = a - tl_view.smem;
  if (s < size_t(kOptinSmemPerBlock) + kRedzone && s + n > tl_view.smem_bytes)
    report(pc, access_str(a, n, write) + ": dynamic shared memory offset " + std::to_string(s) + ", past the " +
                   std::to_string(tl_view.smem_bytes) + " bytes of the launch");
}

/* --- static shared memory ---------------------------------------------------------------------------- */

struct tls_search {
  uintptr_t section;
  char *found;
};

int find_tls_module(struct dl_phdr_info *info, size_t, void *data) {
  tls_search *q = static_cast<tls_search *>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr) &ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_TLS) continue;
    const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (q->section >= start && q->section < start + ph.p_memsz && info->dlpi_tls_data) {
      q->found = static_cast<char *>(info->dlpi_tls_data) + (q->section - start);
      return 1;
    }
  }
  return 0;
}

/* Every block starts with its static shared memory full of 0xff (NaN for floating types), as the GPU
 * gives no initial value: a kernel that reads before writing fails its tests, the first block on a worker
 * included.  The section is found in this worker's TLS through the module's PT_TLS template. */
void poison_static_shared() {
  const size_t bytes = size_t(__stop_bnk_emu_shared - __start_bnk_emu_shared);
  if (!__start_bnk_emu_shared || bytes == 0) return;
  if (!tl_static_shared) {
    tls_search q{reinterpret_cast<uintptr_t>(__start_bnk_emu_shared), nullptr};
    dl_iterate_phdr(find_tls_module, &q);
    tl_static_shared = q.found;
    if (!tl_static_shared) return;
  }
  std::memset(tl_static_shared, 0xff, bytes);
}

}  // namespace

/* --- allocations -------------------------------------------------------------------------------------- */

void *tracked_alloc(size_t size, alloc_kind kind) {
  const size_t rounded = (size + 255) / 256 * 256;
  if (rounded < size || rounded > kArenaBytes / 2) return nullptr;
  const size_t total = granule_round(kRedzone + rounded + kRedzone);
  tracker &t = trk();
  std::lock_guard<std::mutex> lk(t.mu);
  const uintptr_t base = arena_map_locked(total);
  if (!base) return nullptr;
  std::memset(reinterpret_cast<void *>(base), 0xff, total); /* uninitialised on the GPU: poison */
  allocation *A = new allocation();
  A->lo = base;
  A->begin = A->lo + kRedzone;
  A->end = A->begin + size;
  A->hi = A->lo + total;
  A->kind = kind;
  A->freed = false;
  A->serial = ++t.serial;
  t.live.emplace(A->begin, A);
  set_owner_locked(A->lo, total, A);
  return reinterpret_cast<void *>(A->begin);
}

void tracked_free(void *p) {
  tracker &t = trk();
  std::lock_guard<std::mutex> lk(t.mu);
  auto it = t.live.find(reinterpret_cast<uintptr_t>(p));
  if (it == t.live.end()) return;
  allocation *A = it->second;
  t.live.erase(it);
  A->freed = true;
  const size_t bytes = A->hi - A->lo;
  if (bytes > kQuarantineBytes) { /* would push out everything else, itself included: unmap it now */
    t.evicted.push_back(A);
    release_evicted_locked();
    return;
  }
  std::memset(reinterpret_cast<void *>(A->begin), 0xfd, A->end - A->begin);
  t.quarantine.push_back(A);
  t.quarantined_bytes += bytes;
  while (t.quarantined_bytes > kQuarantineBytes && !t.quarantine.empty()) {
    allocation *old = t.quarantine.front();
    t.quarantine.pop_front();
    t.quarantined_bytes -= old->hi - old->lo;
    t.evicted.push_back(old);
  }
  release_evicted_locked();
}

/* --- launches and blocks ----------------------------------------------------------------------------------- */

void memory_launch_begin() {
  tracker &t = trk();
  std::lock_guard<std::mutex> lk(t.mu);
  t.in_launch = true;
  if (traffic_enabled())
    for (auto &e : t.live) traffic_prepare(*e.second);
}

void memory_launch_end() {
  tracker &t = trk();
  std::lock_guard<std::mutex> lk(t.mu);
  if (traffic_enabled()) {
    for (auto &e : t.live) traffic_fold(*e.second);
    traffic_launch_done();
  }
  t.in_launch = false;
  release_evicted_locked();
}

void memory_block_begin(void *dynamic_smem, size_t smem_bytes) {
  poison_static_shared();
  tl_view.smem = reinterpret_cast<uintptr_t>(dynamic_smem);
  tl_view.smem_bytes = smem_bytes;
  tl_armed = true;
}

void memory_block_end() { tl_armed = false; }

/* cudaMemset and cudaMemcpy count toward the meter of the allocations they touch. */
void traffic_copy(const void *dst, const void *src, size_t bytes) {
  if (!traffic_enabled() || bytes == 0) return;
  tracker &t = trk();
  std::lock_guard<std::mutex> lk(t.mu);
  auto owner = [&](const void *p) -> allocation * {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = t.live.upper_bound(a);
    if (it == t.live.begin()) return nullptr;
    allocation *A = std::prev(it)->second;
    return a < A->end ? A : nullptr;
  };
  traffic_copied(dst ? owner(dst) : nullptr, src ? owner(src) : nullptr, bytes);
}

allocation *tracked_allocation_of_locked(const void *p) {
  tracker &t = trk();
  auto it = t.live.find(reinterpret_cast<uintptr_t>(p));
  return it == t.live.end() ? nullptr : it->second;
}

std::mutex &tracker_mutex() { return trk().mu; }

void for_each_tracked_locked(void (*f)(allocation &)) {
  for (auto &e : trk().live) f(*e.second);
  for (allocation *A : trk().quarantine) f(*A);
}

}  // namespace detail
}  // namespace bnk_emu

/* --- the hooks ---------------------------------------------------------------------------------------------- */

using bnk_emu::detail::check;

#ifdef BNK_EMU_ASAN
/* A full ASan build: after the emulation's check, ASan's own (the next definition of the same name). */
#define BNK_EMU_FORWARD_ASAN(name, ...)                                             \
  do {                                                                              \
    static auto next_ = reinterpret_cast<decltype(&name)>(dlsym(RTLD_NEXT, #name)); \
    if (next_) next_(__VA_ARGS__);                                                  \
  } while (0)
#else
#define BNK_EMU_FORWARD_ASAN(name, ...) \
  do {                                  \
  } while (0)
#endif

#pragma GCC visibility push(default)
extern "C" {

#define BNK_EMU_HOOKS(n)                                \
  void __asan_load##n##_noabort(void *p) {              \
    check(p, n, false, __builtin_return_address(0));    \
    BNK_EMU_FORWARD_ASAN(__asan_load##n##_noabort, p);  \
  }                                                     \
  void __asan_store##n##_noabort(void *p) {             \
    check(p, n, true, __builtin_return_address(0));     \
    BNK_EMU_FORWARD_ASAN(__asan_store##n##_noabort, p); \
  }
BNK_EMU_HOOKS(1)
BNK_EMU_HOOKS(2)
BNK_EMU_HOOKS(4)
BNK_EMU_HOOKS(8)
BNK_EMU_HOOKS(16)
#undef BNK_EMU_HOOKS

void __asan_loadN_noabort(void *p, size_t n) {
  check(p, n, false, __builtin_return_address(0));
  BNK_EMU_FORWARD_ASAN(__asan_loadN_noabort, p, n);
}

void __asan_storeN_noabort(void *p, size_t n) {
  check(p, n, true, __builtin_return_address(0));
  BNK_EMU_FORWARD_ASAN(__asan_storeN_noabort, p, n);
}

#ifndef BNK_EMU_ASAN
/* Emitted by -fsanitize=kernel-address before calls that do not return; nothing to unpoison here. */
void __asan_handle_no_return(void) {}
#endif

}  // extern "C"
#pragma GCC visibility pop
