/* Internal interfaces shared by the emulated runtime and the execution engine. */
#ifndef BNK_EMU_INTERNAL_H
#define BNK_EMU_INTERNAL_H

#include <bnk_emu/device.h>

#include <string>

namespace bnk_emu {
namespace detail {

/* --- device limits (an H100-like device) ---------------------------------- */
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxBlockDimX = 1024, kMaxBlockDimY = 1024, kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimX = 2147483647u, kMaxGridDimY = 65535u, kMaxGridDimZ = 65535u;
constexpr int kDefaultSmemPerBlock = 49152;   /* 48 KiB without opt-in */
constexpr int kOptinSmemPerBlock = 232448;    /* 227 KiB */
constexpr int kSmemPerSM = 233472;            /* 228 KiB */
constexpr int kReservedSmemPerBlock = 1024;
constexpr int kNumSMs = 132;
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

/* --- diagnostics -------------------------------------------------------- */
void set_diagnostic(const std::string &msg);
bool verbose();

}  // namespace detail
}  // namespace bnk_emu

#endif
