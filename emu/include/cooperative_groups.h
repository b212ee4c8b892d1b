/*
 * <cooperative_groups.h> for the bnk host emulation of CUDA.
 *
 * bnk_cuda_emu puts emu/include ahead of the CUDA toolkit's include
 * directory, so a kernel's #include <cooperative_groups.h> resolves here in
 * the emulation build and to NVIDIA's header under nvcc.  The subset:
 * this_grid() (sync, thread_rank, size, num_threads, num_blocks, block_rank,
 * is_valid, block_index, dim_blocks) and this_thread_block() (sync,
 * thread_rank, size, num_threads, group_index, thread_index, dim_threads),
 * and the free function sync(group).  See docs/emulation.md.
 */
#ifndef BNK_EMU_COOPERATIVE_GROUPS_H
#define BNK_EMU_COOPERATIVE_GROUPS_H

#include <bnk_emu/device.h>

namespace cooperative_groups {

class thread_block {
public:
  void sync(const char *file = __builtin_FILE(), int line = __builtin_LINE()) const { __syncthreads(file, line); }
  unsigned thread_rank() const { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
  unsigned num_threads() const { return blockDim.x * blockDim.y * blockDim.z; }
  unsigned size() const { return num_threads(); }
  dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
  dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
  dim3 dim_threads() const { return blockDim; }
  dim3 group_dim() const { return blockDim; }
};

class grid_group {
public:
  /* Every thread of the grid waits here; only in a cooperative launch. */
  void sync(const char *file = __builtin_FILE(), int line = __builtin_LINE()) const {
    ::bnk_emu::detail::grid_barrier(file, line);
  }
  bool is_valid() const { return ::bnk_emu::detail::launch_is_cooperative(); }
  unsigned long long block_rank() const {
    return blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
  }
  unsigned long long num_blocks() const { return (unsigned long long)gridDim.x * gridDim.y * gridDim.z; }
  unsigned long long thread_rank() const {
    return block_rank() * (blockDim.x * blockDim.y * blockDim.z) + this_block_rank();
  }
  unsigned long long num_threads() const { return num_blocks() * (blockDim.x * blockDim.y * blockDim.z); }
  unsigned long long size() const { return num_threads(); }
  dim3 block_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
  dim3 dim_blocks() const { return gridDim; }
  dim3 group_dim() const { return gridDim; }

private:
  static unsigned this_block_rank() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
};

inline thread_block this_thread_block() { return thread_block(); }
inline grid_group this_grid() { return grid_group(); }

inline void sync(const thread_block &g, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  g.sync(file, line);
}
inline void sync(const grid_group &g, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  g.sync(file, line);
}

}  // namespace cooperative_groups

#endif /* BNK_EMU_COOPERATIVE_GROUPS_H */
