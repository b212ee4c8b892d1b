/* Internal interfaces shared by the emulated runtime and the execution engine. */
#ifndef BNK_EMU_INTERNAL_H
#define BNK_EMU_INTERNAL_H

#include <bnk_emu/device.h>

#include <condition_variable>
#include <mutex>
#include <string>

namespace bnk_emu {
namespace detail {

/* --- device limits (an H100-like device) ---------------------------------- */
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxBlockDimX = 1024, kMaxBlockDimY = 1024, kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimX = 2147483647u, kMaxGridDimY = 65535u, kMaxGridDimZ = 65535u;
constexpr int kDefaultSmemPerBlock = 49152; /* 48 KiB without opt-in */
constexpr int kOptinSmemPerBlock = 232448;  /* 227 KiB */
constexpr int kSmemPerSM = 233472;          /* 228 KiB */
constexpr int kReservedSmemPerBlock = 1024;
constexpr int kNumSMs = 132; /* the default; sm_count() is the emulated device's */
constexpr int kMaxThreadsPerSM = 2048;
constexpr int kMaxBlocksPerSM = 32;
constexpr int kRegsPerBlock = 65536, kRegsPerSM = 65536;

/* --- errors ------------------------------------------------------------- */
/* Records e as the calling host thread's last error when it is an error;
 * returns e. */
cudaError_t record_error(cudaError_t e);
/* Error of a failed launch, reported (once) by the next synchronising call. */
void set_pending_error(cudaError_t e);
cudaError_t take_pending_error();

/* --- kernel attributes and streams -------------------------------------- */
int kernel_max_dynamic_smem(const void *kernel);
bool stream_is_valid(cudaStream_t s);
/* A stream that synchronises with the legacy default stream (created without cudaStreamNonBlocking). */
bool stream_is_blocking(cudaStream_t s);

/* --- cooperative launches (cooperative.cpp) ------------------------------ */
/* SMs of the emulated device: env BNK_EMU_SMS, bnk_emu_set_sm_count(). */
int sm_count();

/* The rendezvous of the blocks of one cooperative launch at this_grid().sync().
 * Every block runs on its own OS thread, so a waiting block blocks its thread. */
class GridBarrier {
public:
  enum Outcome { RELEASED, ABORTED, BLOCKS_EXITED };
  explicit GridBarrier(unsigned long long nblocks) : nblocks_(nblocks) {}
  /* Called by a block once all its threads arrived; returns when every block
   * arrived, when the launch is aborted, or at once if a block has exited. */
  Outcome arrive_and_wait(const char *file, int line);
  /* Called when a block's last thread exits.  Returns the number of blocks
   * waiting at the barrier (a misuse if not 0) and where they wait. */
  unsigned long long block_exited(const char **file, int *line);
  unsigned long long exited_blocks();
  void abort();

private:
  std::mutex mu_;
  std::condition_variable cv_;
  const unsigned long long nblocks_;
  unsigned long long arrived_ = 0, exited_ = 0, generation_ = 0;
  bool aborted_ = false;
  const char *file_ = nullptr;
  int line_ = 0;
};

/* --- kernel resources and occupancy (kernel_resources.cpp) ---------------- */
/* Resident blocks per SM for a launch of func, from its sm_90 resource usage
 * when the generated table knows it, else from the estimate (docs). */
int blocks_per_sm(const void *func, int block_threads, size_t dynamic_smem);

/* --- stream capture (graph.cpp) ------------------------------------------- */
/* An operation into a capturing stream is recorded (true, *result =
 * cudaSuccess) or refused as the GPU refuses it (true, *result = the error,
 * the capture invalidated); false: run it now. */
bool capture_launch(const launch_desc &d, cudaError_t *result);
bool capture_memset(void *dst, int value, size_t count, cudaStream_t s, cudaError_t *result);
bool capture_memcpy(void *dst, const void *src, size_t count, cudaStream_t s, cudaError_t *result);
enum capture_call {
  CAPTURE_UNSAFE_CALL, /* cudaMalloc, cudaFree, cudaMemcpy, cudaMemset: refused in global mode */
  CAPTURE_DEVICE_SYNC, /* cudaDeviceSynchronize: refused during any capture */
  CAPTURE_STREAM_SYNC  /* cudaStreamSynchronize, cudaStreamQuery: refused on a capturing stream */
};
/* The error the GPU reports for call (on stream s, nullptr if none) while a
 * stream captures, invalidating the capture; cudaSuccess if allowed. */
cudaError_t capture_refuses(capture_call call, cudaStream_t s);

/* --- diagnostics -------------------------------------------------------- */
void set_diagnostic(const std::string &msg);
bool verbose();

}  // namespace detail
}  // namespace bnk_emu

#endif
