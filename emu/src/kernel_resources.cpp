/*
 * Occupancy of the emulated device from each kernel's real sm_90 resource
 * usage.  The GPU build's registers, static shared memory and local memory
 * per kernel are a generated table (kernel_resources_sm90.inc, written by
 * emu/tools/kernel_resources.py from `cuobjdump -res-usage`), keyed by the
 * kernel's mangled name.  The emulation finds a launched kernel's name from
 * its address in the ELF symbol table of the object that holds it: the host
 * build mangles a kernel exactly as nvcc names its device code.  A kernel
 * without an entry (a test's own) keeps the estimate of 32 registers and no
 * static shared memory.  See docs/emulation.md, "Cooperative launches".
 */
#include "internal.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace bnk_emu {
namespace detail {
namespace {

struct KernelResources {
  const char *name;
  int registers;    /* per thread */
  int shared_bytes; /* static shared memory per block */
  int local_bytes;  /* per thread (spills, stack arrays) */
};

const KernelResources kTable[] = {
#include "kernel_resources_sm90.inc"
};

constexpr int kAssumedRegisters = 32;
constexpr int kRegisterUnit = 256; /* registers are allocated per warp in units of 256 */

/* Function symbols of every loaded object, by run-time address. */
class SymbolIndex {
public:
  /* The symbol at exactly addr, or "" if none. */
  std::string name_at(const void *addr) {
    std::lock_guard<std::mutex> lk(mu_);
    Object where{reinterpret_cast<uintptr_t>(addr), nullptr, 0};
    dl_iterate_phdr(&find_object, &where);
    if (where.path && loaded_.insert(where.path).second) load(where.path, where.bias);
    auto it = names_.find(reinterpret_cast<uintptr_t>(addr));
    return it == names_.end() ? std::string() : it->second;
  }

private:
  struct Object {
    uintptr_t addr;
    const char *path;
    uintptr_t bias;
  };

  static int find_object(struct dl_phdr_info *info, size_t, void *data) {
    Object &o = *static_cast<Object *>(data);
    for (int i = 0; i < info->dlpi_phnum; ++i) {
      const ElfW(Phdr) &ph = info->dlpi_phdr[i];
      const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
      if (ph.p_type == PT_LOAD && o.addr >= start && o.addr < start + ph.p_memsz) {
        o.path = info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name : "/proc/self/exe";
        o.bias = info->dlpi_addr;
        return 1;
      }
    }
    return 0;
  }

  /* Reads the .symtab (or, stripped, the .dynsym) of an ELF64 file. */
  void load(const char *path, uintptr_t bias) {
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    void *map = MAP_FAILED;
    if (fstat(fd, &st) == 0 && size_t(st.st_size) >= sizeof(ElfW(Ehdr)))
      map = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return;
    const size_t size = size_t(st.st_size);
    const char *base = static_cast<const char *>(map);
    const ElfW(Ehdr) &eh = *reinterpret_cast<const ElfW(Ehdr) *>(base);
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
        eh.e_shoff + size_t(eh.e_shnum) * sizeof(ElfW(Shdr)) <= size) {
      const ElfW(Shdr) *sh = reinterpret_cast<const ElfW(Shdr) *>(base + eh.e_shoff);
      for (unsigned want : {unsigned(SHT_SYMTAB), unsigned(SHT_DYNSYM)}) {
        for (unsigned i = 0; i < eh.e_shnum; ++i) {
          if (sh[i].sh_type != want || sh[i].sh_link >= eh.e_shnum) continue;
          const ElfW(Shdr) &strtab = sh[sh[i].sh_link];
          if (sh[i].sh_offset + sh[i].sh_size > size || strtab.sh_offset + strtab.sh_size > size) continue;
          const ElfW(Sym) *sym = reinterpret_cast<const ElfW(Sym) *>(base + sh[i].sh_offset);
          const size_t count = sh[i].sh_size / sizeof(ElfW(Sym));
          for (size_t k = 0; k < count; ++k) {
            if (ELF64_ST_TYPE(sym[k].st_info) != STT_FUNC || sym[k].st_value == 0 || sym[k].st_name >= strtab.sh_size)
              continue;
            names_.emplace(bias + sym[k].st_value, std::string(base + strtab.sh_offset + sym[k].st_name));
          }
        }
        if (!names_.empty()) break;
      }
    }
    munmap(map, size);
  }

  std::mutex mu_;
  std::unordered_set<std::string> loaded_;
  std::unordered_map<uintptr_t, std::string> names_;
};

SymbolIndex &symbols() {
  static SymbolIndex *s = new SymbolIndex(); /* never destroyed: usable at exit */
  return *s;
}

/* The table entry of the kernel at func, or nullptr. */
const KernelResources *resources_of(const void *func) {
  static const std::unordered_map<std::string, const KernelResources *> by_name = [] {
    std::unordered_map<std::string, const KernelResources *> m;
    for (const KernelResources &k : kTable) m.emplace(k.name, &k);
    return m;
  }();
  if (by_name.empty()) return nullptr;
  const std::string name = symbols().name_at(func);
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : it->second;
}

int registers_per_warp(int registers) { return (registers * 32 + kRegisterUnit - 1) / kRegisterUnit * kRegisterUnit; }

int max_threads_per_block(int registers) {
  return std::min(kMaxThreadsPerBlock, kRegsPerBlock / registers_per_warp(registers) * 32);
}

/* Every occupancy query since the process started: what tests count to see that the library caches them. */
std::atomic<unsigned long long> occupancy_queries{0};

}  // namespace

int blocks_per_sm(const void *func, int block_threads, size_t dynamic_smem) {
  const KernelResources *k = resources_of(func);
  const int registers = k ? k->registers : kAssumedRegisters;
  const size_t static_smem = k ? size_t(k->shared_bytes) : 0;
  if (block_threads <= 0 || block_threads > max_threads_per_block(registers) ||
      dynamic_smem > size_t(kernel_max_dynamic_smem(func)))
    return 0;
  const int warps = (block_threads + 31) / 32;
  int blocks = std::min(kMaxBlocksPerSM, (kMaxThreadsPerSM / 32) / warps);
  blocks = std::min(blocks, kRegsPerSM / (registers_per_warp(registers) * warps));
  const size_t per_block = static_smem + dynamic_smem + size_t(kReservedSmemPerBlock);
  return std::min<int>(blocks, int(size_t(kSmemPerSM) / per_block));
}

}  // namespace detail
}  // namespace bnk_emu

using namespace bnk_emu::detail;

#pragma GCC visibility push(default)
extern "C" {

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, const void *func) {
  if (!attr) return record_error(cudaErrorInvalidValue);
  if (!func) return record_error(cudaErrorInvalidDeviceFunction);
  const KernelResources *k = resources_of(func);
  std::memset(attr, 0, sizeof *attr);
  attr->numRegs = k ? k->registers : kAssumedRegisters;
  attr->sharedSizeBytes = k ? size_t(k->shared_bytes) : 0;
  attr->localSizeBytes = k ? size_t(k->local_bytes) : 0;
  attr->maxThreadsPerBlock = max_threads_per_block(attr->numRegs);
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  attr->maxDynamicSharedSizeBytes = kernel_max_dynamic_smem(func);
  attr->preferredShmemCarveout = -1;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, const void *func, int blockSize,
                                                          size_t dynamicSMemSize) {
  if (!numBlocks || blockSize <= 0) return record_error(cudaErrorInvalidValue);
  if (!func) return record_error(cudaErrorInvalidDeviceFunction);
  occupancy_queries.fetch_add(1, std::memory_order_relaxed);
  *numBlocks = blocks_per_sm(func, blockSize, dynamicSMemSize);
  return cudaSuccess;
}

unsigned long long bnk_emu_occupancy_queries(void) { return occupancy_queries.load(std::memory_order_relaxed); }

}  // extern "C"
#pragma GCC visibility pop
