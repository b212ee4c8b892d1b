/*
 * bnk_emu/runtime_cxx.h - the C++ overloads of the CUDA runtime API that
 * nvcc's <cuda_runtime.h> gives host code, for the bnk host emulation.
 *
 * Included by <bnk_emu/device.h>.  They take a kernel by its own pointer
 * type, so that a call written for nvcc compiles unchanged:
 * cudaLaunchCooperativeKernel(k, grid, block, args, smem, stream),
 * cudaLaunchKernelEx(&config, k, args...),
 * cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, threads, smem),
 * cudaFuncGetAttributes(&attr, k), cudaFuncSetAttribute(k, attr, value).
 * The launch calls need the kernel's parameter types to call it: their C
 * symbols (const void *, void **) exist too and fail with
 * cudaErrorInvalidDeviceFunction (docs/emulation.md).
 * Of the launch attributes only cudaLaunchAttributeCooperative has an
 * effect; the others are accepted and ignored.
 */
#ifndef BNK_EMU_RUNTIME_CXX_H
#define BNK_EMU_RUNTIME_CXX_H

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace bnk_emu {
namespace detail {

/* Records e as the calling thread's last error when it is one; returns e (emu/src/runtime.cpp). */
cudaError_t record_error(cudaError_t e);

template <class... P, size_t... I>
inline std::tuple<std::decay_t<P>...> args_from_pointers(void **args, std::index_sequence<I...>) {
  return std::tuple<std::decay_t<P>...>(*static_cast<std::decay_t<P> *>(args[I])...);
}

/* cudaLaunchConfig_t plus the caller's source line (a variadic call cannot
 * take it as a trailing default argument). */
struct launch_config_site {
  const cudaLaunchConfig_t *config;
  const char *file;
  int line;
  launch_config_site(const cudaLaunchConfig_t *c, const char *f = __builtin_FILE(), int l = __builtin_LINE())
      : config(c), file(f), line(l) {}
};

inline bool config_is_cooperative(const cudaLaunchConfig_t &c) {
  for (unsigned i = 0; i < c.numAttrs; ++i)
    if (c.attrs[i].id == cudaLaunchAttributeCooperative && c.attrs[i].val.cooperative) return true;
  return false;
}

}  // namespace detail
}  // namespace bnk_emu

template <class... P>
inline cudaError_t cudaLaunchCooperativeKernel(void (*kernel)(P...), dim3 gridDim, dim3 blockDim, void **args,
                                               size_t sharedMem = 0, cudaStream_t stream = nullptr,
                                               const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  if (sizeof...(P) > 0 && !args) return d::record_error(cudaErrorInvalidValue);
  return d::launch_converted(kernel, gridDim, blockDim, sharedMem, stream, file, line, true,
                             d::args_from_pointers<P...>(args, std::index_sequence_for<P...>{}));
}

template <class... P, class... A>
inline cudaError_t cudaLaunchKernelEx(::bnk_emu::detail::launch_config_site site, void (*kernel)(P...), A &&...args) {
  namespace d = ::bnk_emu::detail;
  static_assert(sizeof...(A) == sizeof...(P), "cudaLaunchKernelEx: wrong number of kernel arguments");
  if (!site.config) return d::record_error(cudaErrorInvalidValue);
  const cudaLaunchConfig_t &c = *site.config;
  if (c.numAttrs && !c.attrs) return d::record_error(cudaErrorInvalidValue);
  return d::launch_converted(kernel, c.gridDim, c.blockDim, c.dynamicSmemBytes, c.stream, site.file, site.line,
                             d::config_is_cooperative(c),
                             std::tuple<std::decay_t<P>...>(d::convert_arg<std::decay_t<P>>(std::forward<A>(args))...));
}

template <class... P>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, void (*kernel)(P...), int blockSize,
                                                                 size_t dynamicSMemSize) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(numBlocks, reinterpret_cast<const void *>(kernel), blockSize,
                                                       dynamicSMemSize);
}

template <class... P>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, void (*kernel)(P...)) {
  return cudaFuncGetAttributes(attr, reinterpret_cast<const void *>(kernel));
}

template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void *>(kernel), attr, value);
}

#endif /* BNK_EMU_RUNTIME_CXX_H */
