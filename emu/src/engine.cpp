/*
 * Execution engine of the bnk host emulation of CUDA.
 *
 * Every CUDA thread of a block is a Boost.Context fiber running on the OS
 * worker thread that owns the block.  A fiber runs until it reaches a sync
 * point (barrier, warp collective) or exits; the scheduler then resumes the
 * runnable fibers round by round in the order of the schedule policy.
 * Blocks of a grid are distributed over a persistent pool of workers; the
 * launching thread is one of them.  See docs/emulation.md.
 */
#include "fiber_asan.h"
#include "internal.h"
#include "memory.h"

#include <bnk_emu/control.h>

#include <boost/context/fiber.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

/* Built-in variables: per OS worker, rewritten on every fiber switch. */
__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread dim3 blockDim;
__thread dim3 gridDim;

namespace ctx = boost::context;

namespace bnk_emu {
namespace detail {

__thread void *dynamic_shared_base;

namespace {

/* ------------------------------------------------------------------------ */
/* Settings                                                                  */
/* ------------------------------------------------------------------------ */

/* ASan's redzones and its uninlined frames take several times the stack of a plain build: at 64 KiB the block
 * reduction inside persistent_backward_team's per-channel lambda ran past its fiber's stack under ./dev sanitize. */
#if defined(BNK_EMU_ASAN)
constexpr size_t kDefaultStackBytes = 256 * 1024;
#else
constexpr size_t kDefaultStackBytes = 64 * 1024;
#endif

struct Settings {
  std::atomic<int> schedule{BNK_EMU_FORWARD};
  std::atomic<unsigned long long> seed{0};
  size_t stack_bytes = kDefaultStackBytes;
  bool verbose = false;
  int default_workers = 1;

  Settings() {
    if (const char *s = std::getenv("BNK_EMU_SCHEDULE")) {
      std::string v(s);
      if (v == "reverse") {
        schedule = BNK_EMU_REVERSE;
      } else if (v.compare(0, 6, "random") == 0) {
        schedule = BNK_EMU_RANDOM;
        if (v.size() > 7 && v[6] == ':') seed = std::strtoull(v.c_str() + 7, nullptr, 0);
      } else {
        schedule = BNK_EMU_FORWARD;
      }
    }
    if (const char *s = std::getenv("BNK_EMU_STACK_KB")) {
      long kb = std::strtol(s, nullptr, 10);
      if (kb >= 16 && kb <= 65536) stack_bytes = size_t(kb) * 1024;
    }
    if (const char *s = std::getenv("BNK_EMU_VERBOSE")) verbose = s[0] != '\0' && s[0] != '0';
    default_workers = int(std::thread::hardware_concurrency());
    if (const char *s = std::getenv("BNK_EMU_WORKERS")) {
      long n = std::strtol(s, nullptr, 10);
      if (n > 0 && n <= 1024) default_workers = int(n);
    }
    if (default_workers < 1) default_workers = 1;
  }
};

Settings &settings() {
  static Settings s;
  return s;
}

/* ------------------------------------------------------------------------ */
/* Fiber stacks: a per-worker pool, allocated once and reused.               */
/* ------------------------------------------------------------------------ */

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

class StackPool {
public:
  explicit StackPool(size_t usable) {
    const size_t pg = page_size();
    stride_ = (usable + pg - 1) / pg * pg + pg; /* + one guard page below */
  }
  ~StackPool() {
    for (auto &s : slabs_) munmap(s.first, s.second);
  }
  StackPool(const StackPool &) = delete;
  StackPool &operator=(const StackPool &) = delete;

  void *get() {
    if (free_.empty()) grow();
    void *p = free_.back();
    free_.pop_back();
    return p;
  }
  void put(void *base) noexcept { free_.push_back(base); /* capacity reserved in grow() */ }
  size_t stride() const { return stride_; }

private:
  void grow() {
    const size_t count = 64;
    const size_t bytes = count * stride_;
    void *m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    slabs_.emplace_back(m, bytes);
    total_ += count;
    free_.reserve(total_);
    for (size_t i = 0; i < count; ++i) {
      char *base = static_cast<char *>(m) + i * stride_;
      mprotect(base, page_size(), PROT_NONE);
      free_.push_back(base);
    }
  }

  size_t stride_;
  size_t total_ = 0;
  std::vector<void *> free_;
  std::vector<std::pair<void *, size_t>> slabs_;
};

struct PoolStackAllocator {
  StackPool *pool;
  stack_span *out; /* receives the stack's bounds, for the ASan annotations */
  ctx::stack_context allocate() {
    char *base = static_cast<char *>(pool->get());
    ctx::stack_context sc;
    sc.size = pool->stride() - page_size();
    sc.sp = base + pool->stride();
    *out = stack_span{base + page_size(), sc.size};
    return sc;
  }
  void deallocate(ctx::stack_context &sc) noexcept { pool->put(static_cast<char *>(sc.sp) - pool->stride()); }
};

/* ------------------------------------------------------------------------ */
/* Per-block state                                                           */
/* ------------------------------------------------------------------------ */

enum : uint8_t { ST_RUNNABLE = 0, ST_BLOCKED, ST_EXITED };
enum : uint8_t { WAIT_NONE = 0, WAIT_BARRIER, WAIT_WARP };

struct ThreadRec {
  ctx::fiber fib;
  uint3 tid;
  uint32_t linear;
  uint8_t state;
  uint8_t wait;
  int16_t kind;
  unsigned mask;
  const char *file;
  int line;
  int b, c;
  unsigned long long value; /* collective operand in, result out */
  stack_span stack;
  void *asan_fake; /* ASan's fake stack of this fiber while it is switched out */
  bool started;
};

struct WarpGroup {
  unsigned mask, arrived;
  int kind, size;
  const char *file;
  int line;
};

struct WarpState {
  unsigned exists, exited;
  int ngroups;
  WarpGroup groups[32];
};

struct Job {
  const launch_desc *d;
  unsigned long long nblocks;
  uint32_t nthreads;
  int schedule;
  unsigned long long seed;
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> abort{false};
  std::mutex mu;
  bool failed = false;
  cudaError_t code = cudaErrorLaunchFailure;
  std::string msg;
  GridBarrier *grid = nullptr; /* a cooperative launch's */
};

struct BlockCtx {
  Job *job = nullptr;
  std::vector<ThreadRec> threads;
  std::vector<WarpState> warps;
  uint32_t n = 0, nwarps = 0, live = 0, exited = 0;
  uint64_t runbits[16];
  uint32_t bar_arrived = 0;
  int bar_kind = 0;
  const char *bar_file = nullptr;
  int bar_line = 0;
  int bar_accum = 0, bar_result = 0;
  ThreadRec *cur = nullptr;
  ctx::fiber sink;
  stack_span sched_stack; /* the worker's own stack, where the scheduler runs */
  void *sched_fake = nullptr;
  bool discarding = false; /* fibers that start now exit at once: the block is being torn down */
  bool failed = false;
  cudaError_t code = cudaErrorLaunchFailure; /* what the failed launch returns */
  std::string msg;
  uint3 bidx;
  uint64_t rng = 0;
};

struct WorkerCtx {
  StackPool stacks{settings().stack_bytes};
  BlockCtx block;
  void *smem = nullptr;
  WorkerCtx() {
    smem = std::aligned_alloc(128, size_t(kOptinSmemPerBlock) + kRedzone); /* memcheck sees past the end */
    if (!smem) throw std::bad_alloc();
    block.threads.resize(kMaxThreadsPerBlock);
    block.sched_stack = thread_stack();
    block.warps.resize(kMaxThreadsPerBlock / 32);
  }
  ~WorkerCtx() { std::free(smem); }
  WorkerCtx(const WorkerCtx &) = delete;
  WorkerCtx &operator=(const WorkerCtx &) = delete;
};

thread_local BlockCtx *tl_block = nullptr;

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */
/* ------------------------------------------------------------------------ */

std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char *f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

std::string tid_str(const ThreadRec &t) { return fmt("(%u,%u,%u)", t.tid.x, t.tid.y, t.tid.z); }

/* "(0,0,0)-(15,0,0), (20,0,0)" for a sorted list of linear indices. */
std::string threads_str(const BlockCtx &B, const std::vector<uint32_t> &ids) {
  std::string s;
  size_t i = 0, ranges = 0;
  while (i < ids.size()) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (ranges == 8) {
      s += fmt(", ... (%zu threads in all)", ids.size());
      break;
    }
    if (!s.empty()) s += ", ";
    s += tid_str(B.threads[ids[i]]);
    if (j > i) s += "-" + tid_str(B.threads[ids[j]]);
    ++ranges;
    i = j + 1;
  }
  return s;
}

std::string block_str(const BlockCtx &B) { return fmt("block (%u,%u,%u)", B.bidx.x, B.bidx.y, B.bidx.z); }

const char *barrier_name(int k) {
  switch (k) {
  case BAR_COUNT:
    return "__syncthreads_count";
  case BAR_AND:
    return "__syncthreads_and";
  case BAR_OR:
    return "__syncthreads_or";
  case BAR_GRID:
    return "this_grid().sync()";
  default:
    return "__syncthreads";
  }
}

const char *collective_name(int k) {
  static const char *const names[COLL_KIND_COUNT] = {
      "__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",  "__shfl_xor_sync",   "__ballot_sync",
      "__any_sync",        "__all_sync",        "__syncwarp",        "__match_any_sync",  "__match_all_sync",
      "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync",
      "__reduce_and_sync", "__reduce_or_sync",  "__reduce_xor_sync", "__activemask"};
  return (k >= 0 && k < COLL_KIND_COUNT) ? names[k] : "collective";
}

bool same_site(const char *f1, int l1, const char *f2, int l2) {
  return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

/* Records the block's first misuse. */
void set_failure(BlockCtx &B, const std::string &m) {
  if (B.failed) return;
  B.failed = true;
  B.msg = m;
}

/* --- fiber switching ------------------------------------------------------ */

inline void yield(BlockCtx &B) {
  ThreadRec &t = *B.cur;
  asan_start_switch(&t.asan_fake, B.sched_stack);
  try {
    B.sink = std::move(B.sink).resume();
  } catch (const ctx::detail::forced_unwind &) { /* the scheduler destroys this fiber */
    asan_finish_switch(t.asan_fake);
    throw;
  }
  asan_finish_switch(t.asan_fake);
}

[[noreturn]] void fail_current(BlockCtx &B, const std::string &m) {
  set_failure(B, m);
  B.cur->state = ST_BLOCKED;
  B.cur->wait = WAIT_NONE;
  for (;;) yield(B); /* the scheduler unwinds this fiber */
}

inline void make_runnable(BlockCtx &B, uint32_t i) {
  B.threads[i].state = ST_RUNNABLE;
  B.runbits[i >> 6] |= uint64_t(1) << (i & 63);
}

BlockCtx &current_block(const char *what) {
  BlockCtx *B = tl_block;
  if (!B || !B->cur) {
    std::fprintf(stderr, "bnk_emu: %s called outside a kernel launched with BNK_EMU_LAUNCH\n", what);
    std::abort();
  }
  return *B;
}

/* --- thread exit ----------------------------------------------------------- */

void complete_collective(BlockCtx &B, uint32_t warp, const WarpGroup &G);
void settle_activemask(BlockCtx &B, uint32_t warp);

/* PTX: vote.sync and bar.warp.sync wait for the non-exited lanes of the mask
 * only; the other collectives read every lane of the mask. */
bool waits_for_live_lanes_only(int kind) {
  return kind == COLL_BALLOT || kind == COLL_ANY || kind == COLL_ALL || kind == COLL_SYNCWARP;
}

void on_thread_exit(BlockCtx &B, ThreadRec &t) {
  t.state = ST_EXITED;
  t.wait = WAIT_NONE;
  --B.live;
  ++B.exited;
  const uint32_t lane = t.linear & 31;
  WarpState &W = B.warps[t.linear >> 5];
  W.exited |= 1u << lane;
  if (B.failed) return;
  if (B.live == 0 && B.job->grid) {
    const char *file;
    int line;
    if (const unsigned long long waiting = B.job->grid->block_exited(&file, &line))
      set_failure(B, fmt("%s:%d: this_grid().sync() reached by only part of the grid: %s exited while %llu blocks "
                         "wait (thread %s exited last)",
                         file, line, block_str(B).c_str(), waiting, tid_str(t).c_str()));
    return;
  }
  for (int g = 0; g < W.ngroups; ++g) {
    const WarpGroup &G = W.groups[g];
    if (G.mask & (1u << lane)) {
      if (waits_for_live_lanes_only(G.kind)) {
        if (G.arrived == (G.mask & ~W.exited)) {
          complete_collective(B, t.linear >> 5, G);
          W.groups[g--] = W.groups[--W.ngroups];
        }
        continue;
      }
      std::vector<uint32_t> waiting;
      for (uint32_t l = 0; l < 32; ++l)
        if (G.arrived & (1u << l)) waiting.push_back((t.linear & ~31u) + l);
      set_failure(B, fmt("%s:%d: %s(mask 0x%08x): lane %u exited without joining the collective (%s, thread %s exited; "
                         "threads %s wait)",
                         G.file, G.line, collective_name(G.kind), G.mask, lane, block_str(B).c_str(),
                         tid_str(t).c_str(), threads_str(B, waiting).c_str()));
      return;
    }
  }
  settle_activemask(B, t.linear >> 5);
  if (B.bar_arrived > 0) {
    std::vector<uint32_t> waiting;
    for (uint32_t i = 0; i < B.n; ++i)
      if (B.threads[i].state == ST_BLOCKED && B.threads[i].wait == WAIT_BARRIER) waiting.push_back(i);
    set_failure(B, fmt("%s:%d: %s reached by only part of the block: thread %s exited while %u threads wait (%s, "
                       "threads %s wait)",
                       B.bar_file, B.bar_line, barrier_name(B.bar_kind), tid_str(t).c_str(), B.bar_arrived,
                       block_str(B).c_str(), threads_str(B, waiting).c_str()));
  }
}

struct FiberEntry {
  BlockCtx *B;
  uint32_t i;
  ctx::fiber operator()(ctx::fiber &&sink) {
    BlockCtx &b = *B;
    asan_finish_switch(nullptr);
    b.threads[i].started = true;
    b.sink = std::move(sink);
    if (b.discarding) {
      asan_start_switch(nullptr, b.sched_stack);
      return std::move(b.sink);
    }
    try {
      b.job->d->invoke(b.job->d->ctx);
    } catch (const ctx::detail::forced_unwind &) {
      asan_start_switch(nullptr, b.sched_stack); /* back to the scheduler, for good */
      throw;
    } catch (const std::exception &e) {
      set_failure(b, fmt("%s:%d: kernel threw an exception: %s (%s, thread %s)", b.job->d->file, b.job->d->line,
                         e.what(), block_str(b).c_str(), tid_str(b.threads[i]).c_str()));
    } catch (...) {
      set_failure(b, fmt("%s:%d: kernel threw an exception (%s, thread %s)", b.job->d->file, b.job->d->line,
                         block_str(b).c_str(), tid_str(b.threads[i]).c_str()));
    }
    on_thread_exit(b, b.threads[i]);
    asan_start_switch(nullptr, b.sched_stack);
    return std::move(b.sink);
  }
};

/* --- scheduling ------------------------------------------------------------ */

inline uint64_t splitmix64(uint64_t &s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Takes the runnable set and orders it by the schedule policy. */
uint32_t gather_round(BlockCtx &B, int schedule, uint16_t *order) {
  const uint32_t nw = (B.n + 63) / 64;
  uint64_t snap[16];
  for (uint32_t w = 0; w < nw; ++w) {
    snap[w] = B.runbits[w];
    B.runbits[w] = 0;
  }
  uint32_t cnt = 0;
  if (schedule == BNK_EMU_REVERSE) {
    for (uint32_t w = nw; w-- > 0;) {
      uint64_t bits = snap[w];
      while (bits) {
        const int bit = 63 - __builtin_clzll(bits);
        order[cnt++] = uint16_t(w * 64 + uint32_t(bit));
        bits &= ~(uint64_t(1) << bit);
      }
    }
  } else {
    for (uint32_t w = 0; w < nw; ++w) {
      uint64_t bits = snap[w];
      while (bits) {
        order[cnt++] = uint16_t(w * 64 + uint32_t(__builtin_ctzll(bits)));
        bits &= bits - 1;
      }
    }
    if (schedule == BNK_EMU_RANDOM) {
      for (uint32_t k = cnt; k > 1; --k) {
        const uint32_t r = uint32_t(splitmix64(B.rng) % k);
        std::swap(order[k - 1], order[r]);
      }
    }
  }
  return cnt;
}

void describe_stall(BlockCtx &B) {
  /* Group the waiting threads by where they wait. */
  struct Where {
    uint8_t wait;
    int kind;
    unsigned mask;
    const char *file;
    int line;
    std::vector<uint32_t> ids;
  };
  std::vector<Where> groups;
  for (uint32_t i = 0; i < B.n; ++i) {
    const ThreadRec &t = B.threads[i];
    if (t.state != ST_BLOCKED) continue;
    Where *w = nullptr;
    for (auto &g : groups)
      if (g.wait == t.wait && g.kind == t.kind && g.mask == t.mask && same_site(g.file, g.line, t.file, t.line)) {
        w = &g;
        break;
      }
    if (!w) {
      groups.push_back(Where{t.wait, t.kind, t.mask, t.file, t.line, {}});
      w = &groups.back();
    }
    w->ids.push_back(i);
  }
  std::string detail;
  for (auto &g : groups) {
    if (!detail.empty()) detail += "; ";
    detail += "threads " + threads_str(B, g.ids) + " wait in ";
    if (g.wait == WAIT_BARRIER) detail += fmt("%s at %s:%d", barrier_name(g.kind), g.file, g.line);
    else detail += fmt("%s(mask 0x%08x) at %s:%d", collective_name(g.kind), g.mask, g.file, g.line);
  }
  const char *file = groups.empty() ? B.job->d->file : groups[0].file;
  const int line = groups.empty() ? B.job->d->line : groups[0].line;
  set_failure(B, fmt("%s:%d: deadlock: no thread can proceed, %u of %u threads exited (", file, line, B.exited, B.n) +
                     block_str(B) + ", " + detail + ")");
}

void run_block(WorkerCtx &w, Job &j, unsigned long long lin) {
  BlockCtx &B = w.block;
  const launch_desc &d = *j.d;
  B.job = &j;
  B.n = j.nthreads;
  B.nwarps = (B.n + 31) / 32;
  B.live = B.n;
  B.exited = 0;
  B.bar_arrived = 0;
  B.failed = false;
  B.code = cudaErrorLaunchFailure;
  B.msg.clear();
  B.cur = nullptr;
  const unsigned long long gx = d.grid.x, gy = d.grid.y;
  B.bidx = make_uint3(unsigned(lin % gx), unsigned((lin / gx) % gy), unsigned(lin / (gx * gy)));
  uint64_t s = j.seed ^ 0x6a09e667f3bcc909ull;
  B.rng = splitmix64(s) ^ (lin * 0xd1b54a32d192ed03ull);

  blockIdx = B.bidx;
  blockDim = d.block;
  gridDim = d.grid;
  dynamic_shared_base = w.smem;
  if (d.smem) std::memset(w.smem, 0xff, d.smem); /* uninitialised on the GPU: poison */
  memory_block_begin(w.smem, d.smem);

  for (uint32_t wi = 0; wi < B.nwarps; ++wi) {
    WarpState &W = B.warps[wi];
    const uint32_t lanes = std::min<uint32_t>(32, B.n - wi * 32);
    W.exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    W.exited = 0;
    W.ngroups = 0;
  }
  const uint32_t bx = d.block.x, by = d.block.y;
  for (uint32_t i = 0; i < (B.n + 63) / 64; ++i) B.runbits[i] = 0;
  PoolStackAllocator alloc{&w.stacks, nullptr};
  for (uint32_t i = 0; i < B.n; ++i) {
    ThreadRec &t = B.threads[i];
    t.tid = make_uint3(i % bx, (i / bx) % by, i / (bx * by));
    t.linear = i;
    t.state = ST_RUNNABLE;
    t.wait = WAIT_NONE;
    t.kind = 0;
    t.mask = 0;
    t.asan_fake = nullptr;
    t.started = false;
    alloc.out = &t.stack;
    t.fib = ctx::fiber(std::allocator_arg, alloc, FiberEntry{&B, i});
    B.runbits[i >> 6] |= uint64_t(1) << (i & 63);
  }

  tl_block = &B;
  uint16_t order[kMaxThreadsPerBlock];
  for (;;) {
    if (j.abort.load(std::memory_order_relaxed)) break;
    const uint32_t cnt = gather_round(B, j.schedule, order);
    if (cnt == 0) break;
    for (uint32_t k = 0; k < cnt; ++k) {
      ThreadRec &t = B.threads[order[k]];
      B.cur = &t;
      threadIdx = t.tid;
      asan_start_switch(&B.sched_fake, t.stack);
      t.fib = std::move(t.fib).resume();
      asan_finish_switch(B.sched_fake);
      if (B.failed) break;
    }
    if (B.failed) break;
  }
  if (!B.failed && !j.abort.load(std::memory_order_relaxed) && B.live > 0) describe_stall(B);
  /* Unwind every fiber that has not finished (destroying a suspended fiber
   * unwinds its stack). */
  B.discarding = true;
  for (uint32_t i = 0; i < B.n; ++i) {
    ThreadRec &t = B.threads[i];
    if (!t.fib) continue;
    asan_start_switch(&B.sched_fake, t.stack);
    if (t.started) t.fib = ctx::fiber();
    else /* run it to its immediate exit, rather than let Boost unwind it where ASan cannot follow */
      t.fib = std::move(t.fib).resume();
    asan_finish_switch(B.sched_fake);
  }
  B.discarding = false;
  memory_block_end();
  B.cur = nullptr;
  tl_block = nullptr;
  if (B.failed) {
    std::lock_guard<std::mutex> lk(j.mu);
    if (!j.failed) {
      j.failed = true;
      j.code = B.code;
      j.msg = B.msg;
    }
    j.abort.store(true);
    if (j.grid) j.grid->abort(); /* wakes the blocks that wait at this_grid().sync() */
  }
}

void work(Job &j, WorkerCtx &w) {
  for (;;) {
    if (j.abort.load(std::memory_order_relaxed)) return;
    const unsigned long long b = j.next.fetch_add(1, std::memory_order_relaxed);
    if (b >= j.nblocks) return;
    run_block(w, j, b);
  }
}

/* ------------------------------------------------------------------------ */
/* Worker pool                                                               */
/* ------------------------------------------------------------------------ */

class Engine {
public:
  Engine() { resize_locked(settings().default_workers); }
  ~Engine() { stop_helpers(); }

  std::mutex launch_mu; /* one launch at a time */

  void run(Job &j) {
    const unsigned long long extra = j.nblocks - 1;
    const int nh = int(std::min<unsigned long long>(helpers_.size(), extra));
    if (nh > 0) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        job_ = &j;
        wanted_ = nh;
        pending_ = nh;
        ++gen_;
      }
      cv_.notify_all();
    }
    work(j, caller_worker());
    if (nh > 0) {
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return pending_ == 0; });
      job_ = nullptr;
    }
  }

  /* A cooperative launch: every block on its own OS thread, all at once, as
   * the GPU keeps every block of a cooperative grid resident.  The threads
   * are created per launch; their stacks and buffers are kept for the next.
   * Caller holds launch_mu. */
  void run_coresident(Job &j) {
    while (coresident_.size() + 1 < j.nblocks) coresident_.emplace_back(new WorkerCtx());
    std::vector<std::thread> others;
    others.reserve(size_t(j.nblocks - 1));
    for (unsigned long long b = 1; b < j.nblocks; ++b) {
      WorkerCtx *w = coresident_[size_t(b - 1)].get();
      others.emplace_back([&j, b, w] { run_block(*w, j, b); });
    }
    run_block(caller_worker(), j, 0);
    for (auto &t : others) t.join();
  }

  int workers() const { return int(helpers_.size()) + 1; }

  /* Caller holds launch_mu. */
  void resize_locked(int n) {
    if (n < 1) n = settings().default_workers;
    if (n == workers() && !helpers_.empty()) return;
    stop_helpers();
    stop_ = false;
    const unsigned long long g = gen_; /* no launch is in flight: launch_mu is held */
    for (int i = 0; i < n - 1; ++i) helpers_.emplace_back([this, i, g] { helper_main(i, g); });
  }

private:
  static WorkerCtx &caller_worker() {
    thread_local std::unique_ptr<WorkerCtx> w;
    if (!w) w.reset(new WorkerCtx());
    return *w;
  }

  void stop_helpers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto &t : helpers_) t.join();
    helpers_.clear();
  }

  void helper_main(int idx, unsigned long long seen) {
    std::unique_ptr<WorkerCtx> w;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || gen_ != seen; });
      if (stop_) return;
      seen = gen_;
      if (idx >= wanted_) continue;
      Job *j = job_;
      lk.unlock();
      if (!w) w.reset(new WorkerCtx());
      work(*j, *w);
      lk.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> helpers_;
  std::vector<std::unique_ptr<WorkerCtx>> coresident_; /* for the blocks of cooperative launches */
  std::mutex mu_;
  std::condition_variable cv_, done_;
  unsigned long long gen_ = 0;
  Job *job_ = nullptr;
  int wanted_ = 0, pending_ = 0;
  bool stop_ = false;
};

Engine &engine() {
  static Engine e;
  return e;
}

}  // namespace

/* ------------------------------------------------------------------------ */
/* Entry points from kernel code                                             */
/* ------------------------------------------------------------------------ */

namespace {

/* The block's last thread at this_grid().sync() waits for the other blocks. */
void grid_rendezvous(BlockCtx &B, const char *file, int line) {
  GridBarrier &g = *B.job->grid;
  switch (g.arrive_and_wait(file, line)) {
  case GridBarrier::RELEASED:
    return;
  case GridBarrier::BLOCKS_EXITED:
    fail_current(B, fmt("%s:%d: this_grid().sync() reached by only part of the grid: %llu blocks exited before it "
                        "(%s arrived)",
                        file, line, g.exited_blocks(), block_str(B).c_str()));
  case GridBarrier::ABORTED:
    fail_current(
        B, fmt("%s:%d: launch aborted while waiting at this_grid().sync() (%s)", file, line, block_str(B).c_str()));
  }
}

}  // namespace

void grid_barrier(const char *file, int line) {
  BlockCtx &B = current_block("this_grid().sync()");
  if (!B.job->grid)
    fail_current(B, fmt("%s:%d: this_grid().sync() in a kernel not launched cooperatively (launch it with "
                        "cudaLaunchCooperativeKernel or cudaLaunchAttributeCooperative) (%s, thread %s)",
                        file, line, block_str(B).c_str(), tid_str(*B.cur).c_str()));
  (void)block_barrier(BAR_GRID, 1, file, line);
}

bool launch_is_cooperative() { return current_block("grid_group::is_valid()").job->grid != nullptr; }

int block_barrier(int kind, int pred, const char *file, int line) {
  BlockCtx &B = current_block("__syncthreads");
  ThreadRec &t = *B.cur;
  if (B.exited > 0) {
    std::vector<uint32_t> gone;
    for (uint32_t i = 0; i < B.n; ++i)
      if (B.threads[i].state == ST_EXITED) gone.push_back(i);
    fail_current(B, fmt("%s:%d: %s reached by only part of the block: %u threads exited before it (%s, thread %s "
                        "arrived, threads %s exited)",
                        file, line, barrier_name(kind), B.exited, block_str(B).c_str(), tid_str(t).c_str(),
                        threads_str(B, gone).c_str()));
  }
  if (B.bar_arrived == 0) {
    B.bar_kind = kind;
    B.bar_file = file;
    B.bar_line = line;
    B.bar_accum = kind == BAR_AND ? 1 : 0;
  } else if (kind != B.bar_kind || !same_site(file, line, B.bar_file, B.bar_line)) {
    fail_current(B, fmt("%s:%d: threads wait at different barriers: thread %s at %s, %u threads at %s at %s:%d (%s)",
                        file, line, tid_str(t).c_str(), barrier_name(kind), B.bar_arrived, barrier_name(B.bar_kind),
                        B.bar_file, B.bar_line, block_str(B).c_str()));
  }
  const int p = pred != 0;
  if (kind == BAR_COUNT) B.bar_accum += p;
  else if (kind == BAR_AND) B.bar_accum &= p;
  else B.bar_accum |= p;
  if (kind == BAR_GRID && B.bar_arrived + 1 == B.n) grid_rendezvous(B, file, line);
  if (B.n == 1) {
    B.bar_result = B.bar_accum;
    return B.bar_result;
  }
  t.state = ST_BLOCKED;
  t.wait = WAIT_BARRIER;
  t.kind = int16_t(kind);
  t.mask = 0;
  t.file = file;
  t.line = line;
  settle_activemask(B, t.linear >> 5);
  if (++B.bar_arrived == B.n) {
    B.bar_result = B.bar_accum;
    B.bar_arrived = 0;
    for (uint32_t i = 0; i < B.n; ++i) B.threads[i].state = ST_RUNNABLE;
    const uint32_t nw = (B.n + 63) / 64;
    for (uint32_t w = 0; w < nw; ++w) B.runbits[w] = ~uint64_t(0);
    if (B.n & 63) B.runbits[nw - 1] = (uint64_t(1) << (B.n & 63)) - 1;
  }
  yield(B);
  return B.bar_result;
}

namespace {

void complete_collective(BlockCtx &B, uint32_t warp, const WarpGroup &G) {
  ThreadRec *base = &B.threads[warp * 32];
  const unsigned mask = G.kind == COLL_ACTIVEMASK ? G.arrived : G.mask & ~B.warps[warp].exited;
  unsigned long long res[32];
  switch (G.kind) {
  case COLL_SHFL_IDX:
  case COLL_SHFL_UP:
  case COLL_SHFL_DOWN:
  case COLL_SHFL_XOR:
    /* PTX ISA, shfl.sync: each lane computes its source lane j from its
     * own b and c operands. */
    for (unsigned m = mask; m; m &= m - 1) {
      const int lane = __builtin_ctz(m);
      const int bval = base[lane].b & 0x1f;
      const int cval = base[lane].c & 0x1f;
      const int segmask = (base[lane].c >> 8) & 0x1f;
      const int maxLane = (lane & segmask) | (cval & ~segmask);
      const int minLane = lane & segmask;
      int j = lane;
      bool pval = false;
      switch (G.kind) {
      case COLL_SHFL_UP:
        j = lane - bval;
        pval = j >= maxLane;
        break;
      case COLL_SHFL_DOWN:
        j = lane + bval;
        pval = j <= maxLane;
        break;
      case COLL_SHFL_XOR:
        j = lane ^ bval;
        pval = j <= maxLane;
        break;
      default:
        j = minLane | (bval & ~segmask);
        pval = j <= maxLane;
        break;
      }
      if (!pval) j = lane;
      /* A source lane outside the mask does not participate: undefined
       * on the GPU, a poison pattern (all ones, a NaN) here. */
      res[lane] = (mask >> j) & 1u ? base[j].value : ~0ull;
    }
    break;
  case COLL_BALLOT:
  case COLL_ANY:
  case COLL_ALL: {
    unsigned ballot = 0;
    for (unsigned m = mask; m; m &= m - 1) {
      const int lane = __builtin_ctz(m);
      if (base[lane].value) ballot |= 1u << lane;
    }
    const unsigned long long r = G.kind == COLL_BALLOT ? ballot : (G.kind == COLL_ANY ? ballot != 0 : ballot == mask);
    for (unsigned m = mask; m; m &= m - 1) res[__builtin_ctz(m)] = r;
    break;
  }
  case COLL_MATCH_ANY:
  case COLL_MATCH_ALL: {
    bool all_equal = true;
    for (unsigned m = mask; m; m &= m - 1) {
      const int lane = __builtin_ctz(m);
      unsigned same = 0;
      for (unsigned k = mask; k; k &= k - 1) {
        const int other = __builtin_ctz(k);
        if (base[other].value == base[lane].value) same |= 1u << other;
      }
      if (same != mask) all_equal = false;
      res[lane] = same;
    }
    if (G.kind == COLL_MATCH_ALL)
      for (unsigned m = mask; m; m &= m - 1) res[__builtin_ctz(m)] = all_equal ? mask : 0;
    break;
  }
  case COLL_SYNCWARP:
    for (unsigned m = mask; m; m &= m - 1) res[__builtin_ctz(m)] = 0;
    break;
  case COLL_ACTIVEMASK:
    for (unsigned m = mask; m; m &= m - 1) res[__builtin_ctz(m)] = mask;
    break;
  default: { /* __reduce_*_sync */
    const int first = __builtin_ctz(mask);
    uint32_t acc = uint32_t(base[first].value);
    for (unsigned m = mask & (mask - 1); m; m &= m - 1) {
      const uint32_t v = uint32_t(base[__builtin_ctz(m)].value);
      switch (G.kind) {
      case COLL_REDUCE_ADD:
        acc += v;
        break;
      case COLL_REDUCE_MIN:
        acc = std::min(acc, v);
        break;
      case COLL_REDUCE_MAX:
        acc = std::max(acc, v);
        break;
      case COLL_REDUCE_MIN_S:
        acc = uint32_t(std::min(int32_t(acc), int32_t(v)));
        break;
      case COLL_REDUCE_MAX_S:
        acc = uint32_t(std::max(int32_t(acc), int32_t(v)));
        break;
      case COLL_REDUCE_AND:
        acc &= v;
        break;
      case COLL_REDUCE_OR:
        acc |= v;
        break;
      default:
        acc ^= v;
        break;
      }
    }
    for (unsigned m = mask; m; m &= m - 1) res[__builtin_ctz(m)] = acc;
    break;
  }
  }
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    base[lane].value = res[lane];
    make_runnable(B, warp * 32 + uint32_t(lane));
  }
}

std::string lanes_str(unsigned m) {
  std::string s;
  for (; m; m &= m - 1) {
    if (!s.empty()) s += ",";
    s += std::to_string(__builtin_ctz(m));
  }
  return s;
}

}  // namespace

unsigned long long warp_collective(int kind, unsigned mask, unsigned long long value, int b, int c, int size,
                                   const char *file, int line) {
  BlockCtx &B = current_block(collective_name(kind));
  ThreadRec &t = *B.cur;
  const uint32_t lane = t.linear & 31, warp = t.linear >> 5;
  const unsigned bit = 1u << lane;
  WarpState &W = B.warps[warp];
  const char *name = collective_name(kind);
  if (!(mask & bit))
    fail_current(B, fmt("%s:%d: %s(mask 0x%08x) called by lane %u, which is not in the mask (%s, thread %s)", file,
                        line, name, mask, lane, block_str(B).c_str(), tid_str(t).c_str()));
  if (mask & ~W.exists)
    fail_current(B, fmt("%s:%d: %s(mask 0x%08x) names lanes %s of warp %u, which do not exist (the block has %u "
                        "threads) (%s, thread %s)",
                        file, line, name, mask, lanes_str(mask & ~W.exists).c_str(), warp, B.n, block_str(B).c_str(),
                        tid_str(t).c_str()));
  if ((mask & W.exited) && !waits_for_live_lanes_only(kind))
    fail_current(B,
                 fmt("%s:%d: %s(mask 0x%08x) names lanes %s of warp %u, which have exited (%s, thread %s)", file, line,
                     name, mask, lanes_str(mask & W.exited).c_str(), warp, block_str(B).c_str(), tid_str(t).c_str()));
  /* Lanes join the group of exactly their mask.  Groups of different,
   * overlapping masks coexist: `if (lane < 16) shfl(0xffff); shfl(~0u);` is
   * legal, and lanes 16-31 may wait at the second while 0-15 do the first.
   * A mask that never completes is reported when a named lane exits or the
   * block deadlocks. */
  WarpGroup *G = nullptr;
  for (int g = 0; g < W.ngroups; ++g)
    if (W.groups[g].mask == mask) {
      G = &W.groups[g];
      break;
    }
  if (G) {
    if (G->mask != mask || G->kind != kind || G->size != size ||
        (kind != COLL_SYNCWARP && !same_site(file, line, G->file, G->line)))
      fail_current(B, fmt("%s:%d: lanes of one warp meet at different collectives: lane %u in %s(mask 0x%08x), lanes "
                          "%s in %s(mask 0x%08x) at %s:%d (%s, thread %s)",
                          file, line, lane, name, mask, lanes_str(G->arrived).c_str(), collective_name(G->kind),
                          G->mask, G->file, G->line, block_str(B).c_str(), tid_str(t).c_str()));
  } else {
    G = &W.groups[W.ngroups++];
    G->mask = mask;
    G->arrived = 0;
    G->kind = kind;
    G->size = size;
    G->file = file;
    G->line = line;
  }
  t.value = value;
  t.b = b;
  t.c = c;
  t.state = ST_BLOCKED;
  t.wait = WAIT_WARP;
  t.kind = int16_t(kind);
  t.mask = mask;
  t.file = file;
  t.line = line;
  G->arrived |= bit;
  if (G->arrived == (mask & ~W.exited)) {
    complete_collective(B, warp, *G);
    *G = W.groups[--W.ngroups];
  }
  settle_activemask(B, warp);
  yield(B);
  return t.value;
}

namespace {

/* __activemask() waiters of a warp learn their mask once no lane of the warp
 * can run: every lane has exited or waits somewhere, so the lanes waiting at
 * the same call site are exactly those that got there together. */
void settle_activemask(BlockCtx &B, uint32_t warp) {
  WarpState &W = B.warps[warp];
  bool pending = false;
  for (int g = 0; g < W.ngroups && !pending; ++g) pending = W.groups[g].kind == COLL_ACTIVEMASK;
  if (!pending) return;
  const ThreadRec *base = &B.threads[warp * 32];
  for (unsigned m = W.exists & ~W.exited; m; m &= m - 1)
    if (base[__builtin_ctz(m)].state == ST_RUNNABLE) return;
  for (int g = 0; g < W.ngroups; ++g)
    if (W.groups[g].kind == COLL_ACTIVEMASK) {
      complete_collective(B, warp, W.groups[g]);
      W.groups[g--] = W.groups[--W.ngroups];
    }
}

}  // namespace

unsigned active_mask(const char *file, int line) {
  BlockCtx &B = current_block("__activemask");
  ThreadRec &t = *B.cur;
  const uint32_t warp = t.linear >> 5;
  WarpState &W = B.warps[warp];
  WarpGroup *G = nullptr;
  for (int g = 0; g < W.ngroups; ++g)
    if (W.groups[g].kind == COLL_ACTIVEMASK && same_site(file, line, W.groups[g].file, W.groups[g].line)) {
      G = &W.groups[g];
      break;
    }
  if (!G) {
    G = &W.groups[W.ngroups++];
    *G = WarpGroup{0, 0, COLL_ACTIVEMASK, 0, file, line};
  }
  G->arrived |= 1u << (t.linear & 31);
  t.state = ST_BLOCKED;
  t.wait = WAIT_WARP;
  t.kind = int16_t(COLL_ACTIVEMASK);
  t.mask = 0;
  t.file = file;
  t.line = line;
  settle_activemask(B, warp);
  yield(B);
  return unsigned(t.value);
}

void fail_illegal_address(const std::string &m) {
  BlockCtx &B = current_block("a kernel memory access");
  if (!B.failed) B.code = cudaErrorIllegalAddress;
  fail_current(B, m);
}

std::string current_thread_str() {
  BlockCtx &B = current_block("a kernel memory access");
  return block_str(B) + ", thread " + tid_str(*B.cur);
}

void trap(const char *file, int line) {
  BlockCtx &B = current_block("__trap");
  fail_current(
      B, fmt("%s:%d: __trap() called (%s, thread %s)", file, line, block_str(B).c_str(), tid_str(*B.cur).c_str()));
}

/* ------------------------------------------------------------------------ */
/* Launch                                                                    */
/* ------------------------------------------------------------------------ */

cudaError_t run_launch(const launch_desc &d) {
  if (tl_block) { /* dynamic parallelism is not emulated */
    BlockCtx &B = *tl_block;
    fail_current(B, fmt("%s:%d: kernel launch from device code is not supported by the emulation (%s, thread %s)",
                        d.file, d.line, block_str(B).c_str(), tid_str(*B.cur).c_str()));
  }
  const unsigned long long threads = (unsigned long long)d.block.x * d.block.y * d.block.z;
  const unsigned long long blocks = (unsigned long long)d.grid.x * d.grid.y * d.grid.z;
  if (threads == 0 || blocks == 0 || d.block.x > unsigned(kMaxBlockDimX) || d.block.y > unsigned(kMaxBlockDimY) ||
      d.block.z > unsigned(kMaxBlockDimZ) || threads > unsigned(kMaxThreadsPerBlock) || d.grid.x > kMaxGridDimX ||
      d.grid.y > kMaxGridDimY || d.grid.z > kMaxGridDimZ)
    return record_error(cudaErrorInvalidConfiguration);
  if (d.smem > size_t(kernel_max_dynamic_smem(d.kernel))) return record_error(cudaErrorInvalidValue);
  if (!stream_is_valid(d.stream)) return record_error(cudaErrorInvalidResourceHandle);
  if (d.cooperative && blocks > (unsigned long long)blocks_per_sm(d.kernel, int(threads), d.smem) * sm_count())
    return record_error(cudaErrorCooperativeLaunchTooLarge);
  cudaError_t captured;
  if (capture_launch(d, &captured)) return record_error(captured);

  Settings &st = settings();
  Job j;
  j.d = &d;
  j.nblocks = blocks;
  j.nthreads = uint32_t(threads);
  j.schedule = st.schedule.load(std::memory_order_relaxed);
  j.seed = st.seed.load(std::memory_order_relaxed);
  Engine &e = engine();
  {
    std::lock_guard<std::mutex> lk(e.launch_mu);
    memory_launch_begin();
    if (d.cooperative) {
      GridBarrier grid(blocks);
      j.grid = &grid;
      e.run_coresident(j);
      j.grid = nullptr;
    } else {
      e.run(j);
    }
    memory_launch_end();
  }
  if (j.failed) {
    std::string m = j.msg + fmt(" [kernel launched at %s:%d]", d.file, d.line);
    set_diagnostic(m);
    if (st.verbose) std::fprintf(stderr, "bnk_emu: %s\n", m.c_str());
    set_pending_error(j.code);
    return record_error(j.code);
  }
  return cudaSuccess;
}

bool verbose() { return settings().verbose; }

}  // namespace detail
}  // namespace bnk_emu

/* ------------------------------------------------------------------------ */
/* Control API                                                               */
/* ------------------------------------------------------------------------ */

#pragma GCC visibility push(default)
extern "C" {

void bnk_emu_set_schedule(bnk_emu_schedule kind, unsigned long long seed) {
  auto &s = bnk_emu::detail::settings();
  s.schedule.store(kind == BNK_EMU_REVERSE  ? BNK_EMU_REVERSE
                   : kind == BNK_EMU_RANDOM ? BNK_EMU_RANDOM
                                            : BNK_EMU_FORWARD);
  s.seed.store(seed);
}

bnk_emu_schedule bnk_emu_get_schedule(unsigned long long *seed) {
  auto &s = bnk_emu::detail::settings();
  if (seed) *seed = s.seed.load();
  return bnk_emu_schedule(s.schedule.load());
}

void bnk_emu_set_workers(int n) {
  auto &e = bnk_emu::detail::engine();
  std::lock_guard<std::mutex> lk(e.launch_mu);
  e.resize_locked(n);
}

int bnk_emu_get_workers(void) { return bnk_emu::detail::engine().workers(); }

}  // extern "C"
#pragma GCC visibility pop
