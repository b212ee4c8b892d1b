/*
 * The emulated CUDA runtime: the subset of cuda_runtime_api.h that bnk uses,
 * with the exact names and signatures of the real header.  "Device" memory
 * is host memory; every call executes synchronously in call order, which
 * trivially honours stream order.
 */
#include "internal.h"
#include "memory.h"

#include <bnk_emu/control.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

/* The runtime's opaque handle types, defined here. */
struct CUstream_st {
  unsigned flags;
  int priority;
};
struct CUevent_st {
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point when;
};

namespace bnk_emu {
namespace detail {
namespace {

thread_local cudaError_t tl_last_error = cudaSuccess;
std::atomic<int> g_pending_error{cudaSuccess};

struct Registry {
  std::mutex mu;
  std::unordered_map<void *, size_t> device_allocs;
  std::unordered_set<void *> host_allocs;
  std::unordered_set<cudaStream_t> streams;
  std::unordered_set<cudaEvent_t> events;
  std::unordered_map<const void *, int> max_dyn_smem;
  size_t device_bytes = 0;
  std::string diagnostic;
};

Registry &reg() {
  static Registry *r = new Registry(); /* never destroyed: usable from atexit handlers */
  return *r;
}

std::atomic<bool> g_have_func_attrs{false};

constexpr size_t kTotalGlobalMem = size_t(80) << 30;

}  // namespace

cudaError_t record_error(cudaError_t e) {
  if (e != cudaSuccess) tl_last_error = e;
  return e;
}

void set_pending_error(cudaError_t e) { g_pending_error.store(int(e)); }

cudaError_t take_pending_error() {
  if (g_pending_error.load(std::memory_order_relaxed) == cudaSuccess) return cudaSuccess;
  return cudaError_t(g_pending_error.exchange(cudaSuccess));
}

int kernel_max_dynamic_smem(const void *kernel) {
  if (!g_have_func_attrs.load(std::memory_order_acquire)) return kDefaultSmemPerBlock;
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  auto it = r.max_dyn_smem.find(kernel);
  return it == r.max_dyn_smem.end() ? kDefaultSmemPerBlock : it->second;
}

bool stream_is_valid(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  return r.streams.count(s) != 0;
}

bool stream_is_blocking(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy) return true;
  if (s == cudaStreamPerThread) return false;
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  return r.streams.count(s) != 0 && !(s->flags & cudaStreamNonBlocking);
}

void set_diagnostic(const std::string &msg) {
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  r.diagnostic = msg;
}

}  // namespace detail
}  // namespace bnk_emu

using namespace bnk_emu::detail;

namespace {

inline cudaError_t ret(cudaError_t e) { return record_error(e); }

cudaError_t sync_point() { return ret(take_pending_error()); }

bool kind_valid(cudaMemcpyKind k) { return int(k) >= int(cudaMemcpyHostToHost) && int(k) <= int(cudaMemcpyDefault); }

}  // namespace

#pragma GCC visibility push(default)
extern "C" {

/* --- errors --------------------------------------------------------------- */

cudaError_t cudaGetLastError(void) {
  cudaError_t e = tl_last_error;
  tl_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return tl_last_error; }

#define BNK_EMU_ERRORS(X)                                                                                           \
  X(cudaSuccess, "no error")                                                                                        \
  X(cudaErrorInvalidValue, "invalid argument")                                                                      \
  X(cudaErrorMemoryAllocation, "out of memory")                                                                     \
  X(cudaErrorInitializationError, "initialization error")                                                           \
  X(cudaErrorCudartUnloading, "driver shutting down")                                                               \
  X(cudaErrorInvalidConfiguration, "invalid configuration argument")                                                \
  X(cudaErrorInvalidPitchValue, "invalid pitch argument")                                                           \
  X(cudaErrorInvalidSymbol, "invalid device symbol")                                                                \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                                                        \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                                           \
  X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version")                    \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                                                        \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                                               \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                                                      \
  X(cudaErrorNotReady, "device not ready")                                                                          \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                                            \
  X(cudaErrorLaunchOutOfResources, "too many resources requested for launch")                                       \
  X(cudaErrorLaunchTimeout, "the launch timed out and was terminated")                                              \
  X(cudaErrorAssert, "device-side assert triggered")                                                                \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                                                           \
  X(cudaErrorInvalidDeviceFunction, "invalid device function")                                                      \
  X(cudaErrorNotSupported, "operation not supported")                                                               \
  X(cudaErrorIllegalState, "the operation cannot be performed in the present state")                                \
  X(cudaErrorCooperativeLaunchTooLarge, "too many blocks in cooperative launch")                                    \
  X(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing")                          \
  X(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture")                   \
  X(cudaErrorStreamCaptureUnmatched, "capture was not initiated in this stream")                                    \
  X(cudaErrorStreamCaptureImplicit, "operation would make the legacy stream depend on a capturing blocking stream") \
  X(cudaErrorStreamCaptureWrongThread, "attempt to terminate a thread-local capture sequence from another thread")  \
  X(cudaErrorUnknown, "unknown error")

const char *cudaGetErrorString(cudaError_t error) {
  switch (error) {
#define X(code, text) \
  case code:          \
    return text;
    BNK_EMU_ERRORS(X)
#undef X
  default:
    return "unrecognized error code";
  }
}

const char *cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define X(code, text) \
  case code:          \
    return #code;
    BNK_EMU_ERRORS(X)
#undef X
  default:
    return "cudaErrorUnknown";
  }
}

/* --- device ------------------------------------------------------------- */

cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return ret(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  if (!device) return ret(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice); }

cudaError_t cudaDeviceSynchronize(void) {
  const cudaError_t refused = capture_refuses(CAPTURE_DEVICE_SYNC, nullptr);
  return refused != cudaSuccess ? ret(refused) : sync_point();
}

cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaDriverGetVersion(int *driverVersion) {
  if (!driverVersion) return ret(cudaErrorInvalidValue);
  *driverVersion = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *runtimeVersion) {
  if (!runtimeVersion) return ret(cudaErrorInvalidValue);
  *runtimeVersion = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
  if (!value) return ret(cudaErrorInvalidValue);
  if (device != 0) return ret(cudaErrorInvalidDevice);
  int v;
  switch (attr) {
  case cudaDevAttrMaxThreadsPerBlock:
    v = kMaxThreadsPerBlock;
    break;
  case cudaDevAttrMaxBlockDimX:
    v = kMaxBlockDimX;
    break;
  case cudaDevAttrMaxBlockDimY:
    v = kMaxBlockDimY;
    break;
  case cudaDevAttrMaxBlockDimZ:
    v = kMaxBlockDimZ;
    break;
  case cudaDevAttrMaxGridDimX:
    v = int(kMaxGridDimX);
    break;
  case cudaDevAttrMaxGridDimY:
    v = int(kMaxGridDimY);
    break;
  case cudaDevAttrMaxGridDimZ:
    v = int(kMaxGridDimZ);
    break;
  case cudaDevAttrMaxSharedMemoryPerBlock:
    v = kDefaultSmemPerBlock;
    break;
  case cudaDevAttrMaxSharedMemoryPerBlockOptin:
    v = kOptinSmemPerBlock;
    break;
  case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
    v = kSmemPerSM;
    break;
  case cudaDevAttrReservedSharedMemoryPerBlock:
    v = kReservedSmemPerBlock;
    break;
  case cudaDevAttrTotalConstantMemory:
    v = 65536;
    break;
  case cudaDevAttrWarpSize:
    v = 32;
    break;
  case cudaDevAttrMaxPitch:
    v = 2147483647;
    break;
  case cudaDevAttrMaxRegistersPerBlock:
    v = kRegsPerBlock;
    break;
  case cudaDevAttrMaxRegistersPerMultiprocessor:
    v = kRegsPerSM;
    break;
  case cudaDevAttrClockRate:
    v = 1980000;
    break;
  case cudaDevAttrMemoryClockRate:
    v = 2619000;
    break;
  case cudaDevAttrGlobalMemoryBusWidth:
    v = 5120;
    break;
  case cudaDevAttrTextureAlignment:
    v = 512;
    break;
  case cudaDevAttrTexturePitchAlignment:
    v = 32;
    break;
  case cudaDevAttrSurfaceAlignment:
    v = 512;
    break;
  case cudaDevAttrGpuOverlap:
    v = 1;
    break;
  case cudaDevAttrMultiProcessorCount:
    v = sm_count();
    break;
  case cudaDevAttrKernelExecTimeout:
    v = 0;
    break;
  case cudaDevAttrIntegrated:
    v = 0;
    break;
  case cudaDevAttrCanMapHostMemory:
    v = 1;
    break;
  case cudaDevAttrComputeMode:
    v = cudaComputeModeDefault;
    break;
  case cudaDevAttrConcurrentKernels:
    v = 1;
    break;
  case cudaDevAttrEccEnabled:
    v = 1;
    break;
  case cudaDevAttrPciBusId:
    v = 1;
    break;
  case cudaDevAttrPciDeviceId:
    v = 0;
    break;
  case cudaDevAttrPciDomainId:
    v = 0;
    break;
  case cudaDevAttrTccDriver:
    v = 0;
    break;
  case cudaDevAttrL2CacheSize:
    v = 50 * 1024 * 1024;
    break;
  case cudaDevAttrMaxPersistingL2CacheSize:
    v = 0;
    break;
  case cudaDevAttrMaxAccessPolicyWindowSize:
    v = 0;
    break;
  case cudaDevAttrMaxThreadsPerMultiProcessor:
    v = kMaxThreadsPerSM;
    break;
  case cudaDevAttrMaxBlocksPerMultiprocessor:
    v = kMaxBlocksPerSM;
    break;
  case cudaDevAttrAsyncEngineCount:
    v = 2;
    break;
  case cudaDevAttrUnifiedAddressing:
    v = 1;
    break;
  case cudaDevAttrComputeCapabilityMajor:
    v = 9;
    break;
  case cudaDevAttrComputeCapabilityMinor:
    v = 0;
    break;
  case cudaDevAttrStreamPrioritiesSupported:
    v = 1;
    break;
  case cudaDevAttrGlobalL1CacheSupported:
    v = 1;
    break;
  case cudaDevAttrLocalL1CacheSupported:
    v = 1;
    break;
  case cudaDevAttrManagedMemory:
    v = 1;
    break;
  case cudaDevAttrIsMultiGpuBoard:
    v = 0;
    break;
  case cudaDevAttrMultiGpuBoardGroupID:
    v = 0;
    break;
  case cudaDevAttrHostNativeAtomicSupported:
    v = 0;
    break;
  case cudaDevAttrSingleToDoublePrecisionPerfRatio:
    v = 2;
    break;
  case cudaDevAttrPageableMemoryAccess:
    v = 0;
    break;
  case cudaDevAttrConcurrentManagedAccess:
    v = 1;
    break;
  case cudaDevAttrComputePreemptionSupported:
    v = 1;
    break;
  case cudaDevAttrCanUseHostPointerForRegisteredMem:
    v = 1;
    break;
  case cudaDevAttrCooperativeLaunch:
    v = 1;
    break;
  case cudaDevAttrMemoryPoolsSupported:
    v = 1;
    break;
  case cudaDevAttrClusterLaunch:
    v = 0;
    break; /* clusters are not emulated */
  default:
    return ret(cudaErrorInvalidValue);
  }
  *value = v;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
  if (!prop) return ret(cudaErrorInvalidValue);
  if (device != 0) return ret(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof *prop);
  std::strncpy(prop->name, "bnk_emu host emulation (H100-like)", sizeof prop->name - 1);
  prop->totalGlobalMem = kTotalGlobalMem;
  prop->sharedMemPerBlock = size_t(kDefaultSmemPerBlock);
  prop->regsPerBlock = kRegsPerBlock;
  prop->warpSize = 32;
  prop->memPitch = 2147483647;
  prop->maxThreadsPerBlock = kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = kMaxBlockDimX;
  prop->maxThreadsDim[1] = kMaxBlockDimY;
  prop->maxThreadsDim[2] = kMaxBlockDimZ;
  prop->maxGridSize[0] = int(kMaxGridDimX);
  prop->maxGridSize[1] = int(kMaxGridDimY);
  prop->maxGridSize[2] = int(kMaxGridDimZ);
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->texturePitchAlignment = 32;
  prop->multiProcessorCount = sm_count();
  prop->cooperativeLaunch = 1;
  prop->canMapHostMemory = 1;
  prop->concurrentKernels = 1;
  prop->ECCEnabled = 1;
  prop->asyncEngineCount = 2;
  prop->unifiedAddressing = 1;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 50 * 1024 * 1024;
  prop->maxThreadsPerMultiProcessor = kMaxThreadsPerSM;
  prop->streamPrioritiesSupported = 1;
  prop->globalL1CacheSupported = 1;
  prop->localL1CacheSupported = 1;
  prop->sharedMemPerMultiprocessor = size_t(kSmemPerSM);
  prop->regsPerMultiprocessor = kRegsPerSM;
  prop->managedMemory = 1;
  prop->concurrentManagedAccess = 1;
  prop->computePreemptionSupported = 1;
  prop->sharedMemPerBlockOptin = size_t(kOptinSmemPerBlock);
  prop->maxBlocksPerMultiProcessor = kMaxBlocksPerSM;
  prop->reservedSharedMemPerBlock = size_t(kReservedSmemPerBlock);
  prop->memoryPoolsSupported = 1;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free, size_t *total) {
  if (!free || !total) return ret(cudaErrorInvalidValue);
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  *total = kTotalGlobalMem;
  *free = r.device_bytes < kTotalGlobalMem ? kTotalGlobalMem - r.device_bytes : 0;
  return cudaSuccess;
}

/* --- memory --------------------------------------------------------------- */

cudaError_t cudaMalloc(void **devPtr, size_t size) {
  if (!devPtr) return ret(cudaErrorInvalidValue);
  *devPtr = nullptr;
  const cudaError_t refused = capture_refuses(CAPTURE_UNSAFE_CALL, nullptr);
  if (refused != cudaSuccess) return ret(refused);
  if (size == 0) return cudaSuccess;
  if (size > kTotalGlobalMem) return ret(cudaErrorMemoryAllocation);
  const size_t rounded = (size + 255) / 256 * 256;
  void *p = tracked_alloc(size, ALLOC_DEVICE); /* between redzones, poisoned (docs/emulation.md, "Memcheck") */
  if (!p) return ret(cudaErrorMemoryAllocation);
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  r.device_allocs.emplace(p, rounded);
  r.device_bytes += rounded;
  *devPtr = p;
  return cudaSuccess;
}

cudaError_t cudaMallocManaged(void **devPtr, size_t size, unsigned int flags) {
  (void)flags;
  return cudaMalloc(devPtr, size);
}

cudaError_t cudaMallocAsync(void **devPtr, size_t size, cudaStream_t hStream) {
  if (!stream_is_valid(hStream)) return ret(cudaErrorInvalidResourceHandle);
  return cudaMalloc(devPtr, size);
}

cudaError_t cudaFree(void *devPtr) {
  const cudaError_t refused = capture_refuses(CAPTURE_UNSAFE_CALL, nullptr);
  if (refused != cudaSuccess) return ret(refused);
  if (!devPtr) return cudaSuccess;
  Registry &r = reg();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.device_allocs.find(devPtr);
    if (it == r.device_allocs.end()) return ret(cudaErrorInvalidValue);
    r.device_bytes -= it->second;
    r.device_allocs.erase(it);
  }
  tracked_free(devPtr);
  return cudaSuccess;
}

cudaError_t cudaFreeAsync(void *devPtr, cudaStream_t hStream) {
  if (!stream_is_valid(hStream)) return ret(cudaErrorInvalidResourceHandle);
  return cudaFree(devPtr);
}

cudaError_t cudaMallocHost(void **ptr, size_t size) {
  if (!ptr) return ret(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  void *p = tracked_alloc(size, ALLOC_HOST);
  if (!p) return ret(cudaErrorMemoryAllocation);
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  r.host_allocs.insert(p);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **pHost, size_t size, unsigned int flags) {
  (void)flags;
  return cudaMallocHost(pHost, size);
}

cudaError_t cudaFreeHost(void *ptr) {
  if (!ptr) return cudaSuccess;
  Registry &r = reg();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (r.host_allocs.erase(ptr) == 0) return ret(cudaErrorInvalidValue);
  }
  tracked_free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
  if (!kind_valid(kind)) return ret(cudaErrorInvalidMemcpyDirection);
  if (count && (!dst || !src)) return ret(cudaErrorInvalidValue);
  const cudaError_t refused = capture_refuses(CAPTURE_UNSAFE_CALL, cudaStreamLegacy);
  if (refused != cudaSuccess) return ret(refused);
  const cudaError_t pending = sync_point(); /* a synchronous copy waits for prior work */
  if (pending != cudaSuccess) return pending;
  if (count) std::memmove(dst, src, count);
  traffic_copy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, cudaStream_t stream) {
  if (!kind_valid(kind)) return ret(cudaErrorInvalidMemcpyDirection);
  if (count && (!dst || !src)) return ret(cudaErrorInvalidValue);
  if (!stream_is_valid(stream)) return ret(cudaErrorInvalidResourceHandle);
  cudaError_t captured;
  if (capture_memcpy(dst, src, count, stream, &captured)) return ret(captured);
  if (count) std::memmove(dst, src, count);
  traffic_copy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count) {
  if (count && !devPtr) return ret(cudaErrorInvalidValue);
  const cudaError_t refused = capture_refuses(CAPTURE_UNSAFE_CALL, cudaStreamLegacy);
  if (refused != cudaSuccess) return ret(refused);
  if (count) std::memset(devPtr, value, count);
  traffic_copy(devPtr, nullptr, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream) {
  if (count && !devPtr) return ret(cudaErrorInvalidValue);
  if (!stream_is_valid(stream)) return ret(cudaErrorInvalidResourceHandle);
  cudaError_t captured;
  if (capture_memset(devPtr, value, count, stream, &captured)) return ret(captured);
  if (count) std::memset(devPtr, value, count);
  return cudaSuccess;
}

/* --- streams ------------------------------------------------------------ */

cudaError_t cudaStreamCreateWithPriority(cudaStream_t *pStream, unsigned int flags, int priority) {
  if (!pStream) return ret(cudaErrorInvalidValue);
  if (flags & ~unsigned(cudaStreamNonBlocking)) return ret(cudaErrorInvalidValue);
  cudaStream_t s = new CUstream_st{flags, priority};
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  r.streams.insert(s);
  *pStream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags) {
  return cudaStreamCreateWithPriority(pStream, flags, 0);
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream) { return cudaStreamCreateWithPriority(pStream, 0, 0); }

cudaError_t cudaDeviceGetStreamPriorityRange(int *leastPriority, int *greatestPriority) {
  if (leastPriority) *leastPriority = 0;
  if (greatestPriority) *greatestPriority = -5;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread)
    return ret(cudaErrorInvalidResourceHandle);
  Registry &r = reg();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (r.streams.erase(stream) == 0) return ret(cudaErrorInvalidResourceHandle);
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!stream_is_valid(stream)) return ret(cudaErrorInvalidResourceHandle);
  const cudaError_t refused = capture_refuses(CAPTURE_STREAM_SYNC, stream);
  return refused != cudaSuccess ? ret(refused) : sync_point();
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (!stream_is_valid(stream)) return ret(cudaErrorInvalidResourceHandle);
  const cudaError_t refused = capture_refuses(CAPTURE_STREAM_SYNC, stream);
  if (refused != cudaSuccess) return ret(refused);
  return cudaSuccess; /* all work is already complete */
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  (void)flags;
  if (!stream_is_valid(stream)) return ret(cudaErrorInvalidResourceHandle);
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  if (!r.events.count(event)) return ret(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

/* --- events ------------------------------------------------------------- */

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  if (!event) return ret(cudaErrorInvalidValue);
  const unsigned known = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if (flags & ~known) return ret(cudaErrorInvalidValue);
  cudaEvent_t e = new CUevent_st{flags, false, {}};
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  r.events.insert(e);
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  Registry &r = reg();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (!event || r.events.erase(event) == 0) return ret(cudaErrorInvalidResourceHandle);
  }
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!stream_is_valid(stream)) return ret(cudaErrorInvalidResourceHandle);
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  if (!event || !r.events.count(event)) return ret(cudaErrorInvalidResourceHandle);
  event->recorded = true;
  event->when = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  if (!event || !r.events.count(event)) return ret(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  {
    Registry &r = reg();
    std::lock_guard<std::mutex> lk(r.mu);
    if (!event || !r.events.count(event)) return ret(cudaErrorInvalidResourceHandle);
  }
  return sync_point();
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return ret(cudaErrorInvalidValue);
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  if (!start || !end || !r.events.count(start) || !r.events.count(end)) return ret(cudaErrorInvalidResourceHandle);
  if ((start->flags | end->flags) & cudaEventDisableTiming) return ret(cudaErrorInvalidResourceHandle);
  if (!start->recorded || !end->recorded) return ret(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
  return cudaSuccess;
}

/* --- kernels ------------------------------------------------------------ */

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
  if (!func) return ret(cudaErrorInvalidDeviceFunction);
  switch (attr) {
  case cudaFuncAttributeMaxDynamicSharedMemorySize: {
    if (value < 0 || value > kOptinSmemPerBlock) return ret(cudaErrorInvalidValue);
    Registry &r = reg();
    std::lock_guard<std::mutex> lk(r.mu);
    r.max_dyn_smem[func] = value;
    g_have_func_attrs.store(true, std::memory_order_release);
    return cudaSuccess;
  }
  case cudaFuncAttributePreferredSharedMemoryCarveout:
    if (value < -1 || value > 100) return ret(cudaErrorInvalidValue);
    return cudaSuccess;
  default:
    return cudaSuccess; /* accepted, no effect in the emulation */
  }
}

/* --- control API (bnk_emu/control.h) -------------------------------------- */

const char *bnk_emu_last_diagnostic(void) {
  Registry &r = reg();
  std::lock_guard<std::mutex> lk(r.mu);
  return r.diagnostic.c_str();
}

void bnk_emu_clear_diagnostic(void) { set_diagnostic(std::string()); }

}  // extern "C"
#pragma GCC visibility pop
