/*
 * bnk_emu/device.h - device-side view of the bnk host emulation of CUDA.
 *
 * Included (instead of <cuda_runtime.h>) by kernel sources compiled as C++17
 * by the host compiler when BNK_EMULATION is defined.  After this header the
 * usual CUDA device vocabulary is available: execution-space qualifiers,
 * __shared__, threadIdx/blockIdx/blockDim/gridDim, barriers, warp
 * collectives, atomics, the common intrinsics, CUDA's vector and half types,
 * and BNK_EMU_LAUNCH() to launch a kernel.
 *
 * See docs/emulation.md for the execution model.
 */
#ifndef BNK_EMU_DEVICE_H
#define BNK_EMU_DEVICE_H

#ifndef __cplusplus
#error "bnk_emu/device.h is C++ only (kernel sources are compiled as C++17)"
#endif

/* Standard headers first: some libstdc++ headers spell GNU attributes with
 * identifiers that CUDA turns into macros (see __noinline__ at the end). */
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

/* Qualifiers that must be defined before the CUDA headers: when not compiled
 * by nvcc, crt/host_defines.h keeps an existing definition. */
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __constant__
#define __constant__
#endif
#ifndef __managed__
#define __managed__
#endif
/* Shared memory is per block.  A block's fibers never leave the OS worker
 * thread that runs the block, and a worker runs one block at a time, so
 * thread-local storage with static duration is exactly per-block storage.
 * The TLS of wrapped kernel files is linked into one section (emu/shared.ld)
 * that the engine fills with 0xff at every block start. */
#ifndef __shared__
#define __shared__ static thread_local
#endif

#include <cuda_runtime_api.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

/* If a CUDA header was included before this one, __shared__ may already be
 * defined (as nothing): shared memory must be per block, so insist. */
#undef __shared__
#define __shared__ static thread_local

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif

/* ------------------------------------------------------------------------ */
/* Built-in variables                                                        */
/* ------------------------------------------------------------------------ */

/* Per OS worker; the scheduler rewrites threadIdx on every fiber switch and
 * the other three when a worker starts a block. */
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread dim3 blockDim;
extern __thread dim3 gridDim;
static constexpr int warpSize = 32;

namespace bnk_emu {
namespace detail {

/* Kinds of block barrier (one hardware barrier; the kinds must not mix). */
enum barrier_kind : int { BAR_SYNC = 0, BAR_COUNT, BAR_AND, BAR_OR, BAR_GRID /* this_grid().sync() */ };

/* Kinds of warp collective. */
enum collective_kind : int {
  COLL_SHFL_IDX = 0,
  COLL_SHFL_UP,
  COLL_SHFL_DOWN,
  COLL_SHFL_XOR,
  COLL_BALLOT,
  COLL_ANY,
  COLL_ALL,
  COLL_SYNCWARP,
  COLL_MATCH_ANY,
  COLL_MATCH_ALL,
  COLL_REDUCE_ADD,
  COLL_REDUCE_MIN,
  COLL_REDUCE_MAX,
  COLL_REDUCE_MIN_S,
  COLL_REDUCE_MAX_S,
  COLL_REDUCE_AND,
  COLL_REDUCE_OR,
  COLL_REDUCE_XOR,
  COLL_ACTIVEMASK, /* not a collective on the GPU: how the emulation finds the lanes that arrive together */
  COLL_KIND_COUNT
};

/* Engine entry points used from kernel code (emu/src/engine.cpp). */
int block_barrier(int kind, int pred, const char *file, int line);
/* value: the caller's operand (bytes of T in the low bytes); b: lane, delta
 * or lane mask; c: the PTX clamp/segmask operand; size: operand bytes (used
 * by match).  Returns the caller's result. */
unsigned long long warp_collective(int kind, unsigned mask, unsigned long long value, int b, int c, int size,
                                   const char *file, int line);
unsigned active_mask(const char *file, int line);
/* this_grid().sync(): a block barrier followed by a rendezvous of every
 * block of a cooperative launch. */
void grid_barrier(const char *file, int line);
/* Whether the running launch is cooperative (grid_group::is_valid()). */
bool launch_is_cooperative();
[[noreturn]] void trap(const char *file, int line);

extern __thread void *dynamic_shared_base;

template <class T>
inline unsigned long long pack(const T &v) {
  static_assert(std::is_trivially_destructible<T>::value, "warp collective operand must be a plain value type");
  static_assert(sizeof(T) <= 8, "warp collective operand must be at most 8 bytes");
  unsigned long long bits = 0;
  std::memcpy(&bits, static_cast<const void *>(&v), sizeof(T));
  return bits;
}

template <class T>
inline T unpack(unsigned long long bits, const T &like) {
  T r(like);
  std::memcpy(static_cast<void *>(&r), &bits, sizeof(T));
  return r;
}

inline int shfl_c(int width, bool up) {
  const int seg = (warpSize - width) << 8;
  return up ? seg : (seg | 0x1f);
}

/* --- atomics helpers ---------------------------------------------------- */
template <class T, class U>
inline T unpack_bits(U bits) {
  T r;
  std::memcpy(static_cast<void *>(&r), &bits, sizeof(T));
  return r;
}

inline float flush_subnormal(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }

/* The GPU's float-to-integer conversions (cvt.rni/rzi/rmi/rpi.s32.f32 ...)
 * saturate to the destination's range and turn NaN into 0, where a C++ cast
 * is undefined.  r is already rounded to an integer value. */
template <class I, class F>
inline I saturate_to(F r) {
  static_assert(std::is_integral<I>::value && std::is_floating_point<F>::value, "saturate_to<integer>(floating)");
  if (std::isnan(r)) return 0;
  if (r <= F(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  /* max() + 1 is a power of two, exactly representable; max() itself may round up to it. */
  if (r >= F(2) * F(std::numeric_limits<I>::max() / 2 + 1)) return std::numeric_limits<I>::max();
  return I(r);
}

template <class T, class F>
inline T cas_loop(T *address, F op) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "unsupported atomic width");
  using U = std::conditional_t<sizeof(T) == 2, unsigned short,
                               std::conditional_t<sizeof(T) == 4, unsigned int, unsigned long long>>;
  U *p = reinterpret_cast<U *>(static_cast<void *>(address));
  U old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T old_val = unpack_bits<T, U>(old_bits);
    T new_val = op(old_val);
    U new_bits;
    std::memcpy(&new_bits, static_cast<const void *>(&new_val), sizeof(U));
    if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old_val;
  }
}

}  // namespace detail

/* ------------------------------------------------------------------------ */
/* Launch                                                                    */
/* ------------------------------------------------------------------------ */

namespace detail {

struct launch_desc {
  void (*invoke)(void *ctx); /* runs the kernel body for the current fiber */
  void *ctx;
  const void *kernel; /* the kernel's address, as cudaFuncSetAttribute sees it */
  dim3 grid;
  dim3 block;
  size_t smem;
  cudaStream_t stream;
  const char *file;
  int line;
  bool cooperative = false; /* every block co-resident, this_grid().sync() allowed */
  /* A heap copy of ctx that owns the arguments, and its destructor: how a
   * stream capture keeps a launch to replay it (emu/src/graph.cpp). */
  void *(*clone_ctx)(const void *ctx) = nullptr;
  void (*destroy_ctx)(void *ctx) = nullptr;
};

/* Checks the configuration, runs the grid (or records it into a capturing
 * stream), records the last error. */
cudaError_t run_launch(const launch_desc &d);

template <class P, class A>
inline P convert_arg(A &&a) {
  return std::forward<A>(a); /* implicit conversion, as in a function call */
}

template <class Fn, class Tuple>
struct invocation {
  Fn fn;
  Tuple args;
  static void run(void *self) {
    invocation *inv = static_cast<invocation *>(self);
    /* Every CUDA thread receives its own by-value copy of each parameter. */
    std::apply(inv->fn, inv->args);
  }
  static void *clone(const void *self) { return new invocation(*static_cast<const invocation *>(self)); }
  static void destroy(void *self) { delete static_cast<invocation *>(self); }
};

/* Launches kernel with arguments already converted to its parameter types. */
template <class... P>
inline cudaError_t launch_converted(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                    const char *file, int line, bool cooperative,
                                    std::tuple<std::decay_t<P>...> &&args) {
  using tuple_type = std::tuple<std::decay_t<P>...>;
  using inv_type = invocation<void (*)(P...), tuple_type>;
  inv_type inv{kernel, std::move(args)};
  launch_desc d{&inv_type::run, &inv, reinterpret_cast<const void *>(kernel), grid, block, smem, stream, file, line};
  d.cooperative = cooperative;
  d.clone_ctx = &inv_type::clone;
  d.destroy_ctx = &inv_type::destroy;
  return run_launch(d);
}

}  // namespace detail

template <class... P>
class launcher {
public:
  using kernel_type = void (*)(P...);

  launcher(kernel_type k, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const char *file, int line)
      : k_(k), grid_(grid), block_(block), smem_(smem), stream_(stream), file_(file), line_(line) {}

  template <class... A>
  void operator()(A &&...a) const {
    static_assert(sizeof...(A) == sizeof...(P), "BNK_EMU_LAUNCH: wrong number of kernel arguments");
    (void)detail::launch_converted(
        k_, grid_, block_, smem_, stream_, file_, line_, false,
        std::tuple<std::decay_t<P>...>(detail::convert_arg<std::decay_t<P>>(std::forward<A>(a))...));
  }

private:
  kernel_type k_;
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
  const char *file_;
  int line_;
};

template <class... P>
inline launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             const char *file, int line) {
  return launcher<P...>(kernel, grid, block, smem, stream, file, line);
}

template <class... P>
inline launcher<P...> launch_at(const char *file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
                                size_t smem = 0, cudaStream_t stream = nullptr) {
  return launcher<P...>(kernel, grid, block, smem, stream, file, line);
}

}  // namespace bnk_emu

/* BNK_EMU_LAUNCH(kernel, grid, block, smem, stream)(args...) stands for
 * kernel<<<grid, block, smem, stream>>>(args...).  Variadic so that a
 * template-id with commas (k<float, 256>) needs no extra parentheses. */
#define BNK_EMU_LAUNCH(...) ::bnk_emu::launch_at(__FILE__, __LINE__, __VA_ARGS__)

/* The block's dynamic shared memory (extern __shared__ T x[] on the GPU). */
#define BNK_EMU_DYNAMIC_SHARED() (::bnk_emu::detail::dynamic_shared_base)

/* ------------------------------------------------------------------------ */
/* Barriers                                                                  */
/* ------------------------------------------------------------------------ */

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  (void)::bnk_emu::detail::block_barrier(::bnk_emu::detail::BAR_SYNC, 1, file, line);
}
inline int __syncthreads_count(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::bnk_emu::detail::block_barrier(::bnk_emu::detail::BAR_COUNT, pred, file, line);
}
inline int __syncthreads_and(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::bnk_emu::detail::block_barrier(::bnk_emu::detail::BAR_AND, pred, file, line);
}
inline int __syncthreads_or(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::bnk_emu::detail::block_barrier(::bnk_emu::detail::BAR_OR, pred, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  (void)::bnk_emu::detail::warp_collective(::bnk_emu::detail::COLL_SYNCWARP, mask, 0, 0, 0, 0, file, line);
}

/* ------------------------------------------------------------------------ */
/* Warp collectives                                                          */
/* ------------------------------------------------------------------------ */

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return d::unpack(d::warp_collective(d::COLL_SHFL_IDX, mask, d::pack(var), srcLane, d::shfl_c(width, false),
                                      int(sizeof(T)), file, line),
                   var);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                        const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return d::unpack(d::warp_collective(d::COLL_SHFL_UP, mask, d::pack(var), int(delta), d::shfl_c(width, true),
                                      int(sizeof(T)), file, line),
                   var);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return d::unpack(d::warp_collective(d::COLL_SHFL_DOWN, mask, d::pack(var), int(delta), d::shfl_c(width, false),
                                      int(sizeof(T)), file, line),
                   var);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize, const char *file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return d::unpack(d::warp_collective(d::COLL_SHFL_XOR, mask, d::pack(var), laneMask, d::shfl_c(width, false),
                                      int(sizeof(T)), file, line),
                   var);
}

inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return unsigned(d::warp_collective(d::COLL_BALLOT, mask, pred != 0, 0, 0, 4, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return int(d::warp_collective(d::COLL_ANY, mask, pred != 0, 0, 0, 4, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return int(d::warp_collective(d::COLL_ALL, mask, pred != 0, 0, 0, 4, file, line));
}
/* The lanes of the caller's warp that reach this call site together with it
 * (docs/emulation.md, "Conformance choices"). */
inline unsigned __activemask(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::bnk_emu::detail::active_mask(file, line);
}

template <class T>
inline unsigned __match_any_sync(unsigned mask, T value, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  return unsigned(d::warp_collective(d::COLL_MATCH_ANY, mask, d::pack(value), 0, 0, int(sizeof(T)), file, line));
}
template <class T>
inline unsigned __match_all_sync(unsigned mask, T value, int *pred, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  namespace d = ::bnk_emu::detail;
  unsigned r = unsigned(d::warp_collective(d::COLL_MATCH_ALL, mask, d::pack(value), 0, 0, int(sizeof(T)), file, line));
  *pred = r != 0;
  return r;
}

#define BNK_EMU_DEFINE_REDUCE(name, kind_u, kind_s)                                                                   \
  inline unsigned name(unsigned mask, unsigned value, const char *file = __builtin_FILE(),                            \
                       int line = __builtin_LINE()) {                                                                 \
    return unsigned(::bnk_emu::detail::warp_collective(::bnk_emu::detail::kind_u, mask, value, 0, 0, 4, file, line)); \
  }                                                                                                                   \
  inline int name(unsigned mask, int value, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {       \
    return int(unsigned(                                                                                              \
        ::bnk_emu::detail::warp_collective(::bnk_emu::detail::kind_s, mask, unsigned(value), 0, 0, 4, file, line)));  \
  }
BNK_EMU_DEFINE_REDUCE(__reduce_add_sync, COLL_REDUCE_ADD, COLL_REDUCE_ADD)
BNK_EMU_DEFINE_REDUCE(__reduce_min_sync, COLL_REDUCE_MIN, COLL_REDUCE_MIN_S)
BNK_EMU_DEFINE_REDUCE(__reduce_max_sync, COLL_REDUCE_MAX, COLL_REDUCE_MAX_S)
#undef BNK_EMU_DEFINE_REDUCE
inline unsigned __reduce_and_sync(unsigned mask, unsigned value, const char *file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return unsigned(
      ::bnk_emu::detail::warp_collective(::bnk_emu::detail::COLL_REDUCE_AND, mask, value, 0, 0, 4, file, line));
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned value, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  return unsigned(
      ::bnk_emu::detail::warp_collective(::bnk_emu::detail::COLL_REDUCE_OR, mask, value, 0, 0, 4, file, line));
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned value, const char *file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return unsigned(
      ::bnk_emu::detail::warp_collective(::bnk_emu::detail::COLL_REDUCE_XOR, mask, value, 0, 0, 4, file, line));
}

/* __trap(): aborts the launch with cudaErrorLaunchFailure and a diagnostic. */
[[noreturn]] inline void __trap(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::bnk_emu::detail::trap(file, line);
}

/* ------------------------------------------------------------------------ */
/* Memory fences and atomics                                                 */
/* ------------------------------------------------------------------------ */

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#define BNK_EMU_ATOMIC_INT_OPS(T)                                                           \
  inline T atomicAdd(T *a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }      \
  inline T atomicExch(T *a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }    \
  inline T atomicAnd(T *a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }      \
  inline T atomicOr(T *a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }        \
  inline T atomicXor(T *a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }      \
  inline T atomicCAS(T *a, T compare, T v) {                                                \
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
    return compare;                                                                         \
  }                                                                                         \
  inline T atomicMin(T *a, T v) {                                                           \
    return ::bnk_emu::detail::cas_loop(a, [v](T old) { return old < v ? old : v; });        \
  }                                                                                         \
  inline T atomicMax(T *a, T v) {                                                           \
    return ::bnk_emu::detail::cas_loop(a, [v](T old) { return old > v ? old : v; });        \
  }

BNK_EMU_ATOMIC_INT_OPS(int)
BNK_EMU_ATOMIC_INT_OPS(unsigned int)
BNK_EMU_ATOMIC_INT_OPS(unsigned long long int)
BNK_EMU_ATOMIC_INT_OPS(long long int)
#undef BNK_EMU_ATOMIC_INT_OPS

inline int atomicSub(int *a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned int atomicSub(unsigned int *a, unsigned int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned short int atomicCAS(unsigned short int *a, unsigned short int compare, unsigned short int v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
inline unsigned int atomicInc(unsigned int *a, unsigned int v) {
  return ::bnk_emu::detail::cas_loop(a, [v](unsigned int old) { return old >= v ? 0u : old + 1u; });
}
inline unsigned int atomicDec(unsigned int *a, unsigned int v) {
  return ::bnk_emu::detail::cas_loop(a, [v](unsigned int old) { return (old == 0u || old > v) ? v : old - 1u; });
}
/* PTX atom.add.f32 flushes subnormal inputs and results to sign-preserving
 * zero; the f64 and 16-bit additions do not. */
inline float atomicAdd(float *a, float v) {
  namespace d = ::bnk_emu::detail;
  return d::cas_loop(a, [v](float old) { return d::flush_subnormal(d::flush_subnormal(old) + d::flush_subnormal(v)); });
}
inline double atomicAdd(double *a, double v) {
  return ::bnk_emu::detail::cas_loop(a, [v](double old) { return old + v; });
}
inline float atomicExch(float *a, float v) {
  return ::bnk_emu::detail::cas_loop(a, [v](float) { return v; });
}
inline __half atomicAdd(__half *a, __half v) {
  /* The exact sum of two halves fits a double: one rounding, as on the GPU. */
  return ::bnk_emu::detail::cas_loop(
      a, [v](__half old) { return __double2half(double(__half2float(old)) + double(__half2float(v))); });
}
inline __half2 atomicAdd(__half2 *a, __half2 v) {
  return ::bnk_emu::detail::cas_loop(a, [v](__half2 old) {
    return __halves2half2(__double2half(double(__low2float(old)) + double(__low2float(v))),
                          __double2half(double(__high2float(old)) + double(__high2float(v))));
  });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16 *a, __nv_bfloat16 v) {
  return ::bnk_emu::detail::cas_loop(a, [v](__nv_bfloat16 old) {
    return __double2bfloat16(double(__bfloat162float(old)) + double(__bfloat162float(v)));
  });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162 *a, __nv_bfloat162 v) {
  return ::bnk_emu::detail::cas_loop(a, [v](__nv_bfloat162 old) {
    return __halves2bfloat162(__double2bfloat16(double(__low2float(old)) + double(__low2float(v))),
                              __double2bfloat16(double(__high2float(old)) + double(__high2float(v))));
  });
}

/* ------------------------------------------------------------------------ */
/* Intrinsics and math                                                       */
/* ------------------------------------------------------------------------ */

template <class T>
inline T __ldg(const T *p) {
  return *p;
}
template <class T>
inline T __ldcg(const T *p) {
  return *p;
}
template <class T>
inline T __ldcs(const T *p) {
  return *p;
}
template <class T>
inline T __ldlu(const T *p) {
  return *p;
}
template <class T>
inline T __ldcv(const T *p) {
  return *p;
}
template <class T>
inline void __stcg(T *p, T v) {
  *p = v;
}
template <class T>
inline void __stcs(T *p, T v) {
  *p = v;
}
template <class T>
inline void __stwb(T *p, T v) {
  *p = v;
}
template <class T>
inline void __stwt(T *p, T v) {
  *p = v;
}

/* Exact host math, not the GPU's approximations (docs/emulation.md). */
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline double rcbrt(double x) { return 1.0 / std::cbrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __dsqrt_rn(double x) { return std::sqrt(x); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float *s, float *c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
inline float saturate(float x) { return __saturatef(x); }

/* Saturating, NaN -> 0, as on the GPU (bnk_emu::detail::saturate_to). */
inline int __float2int_rn(float x) { return ::bnk_emu::detail::saturate_to<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return ::bnk_emu::detail::saturate_to<int>(std::trunc(x)); }
inline int __float2int_rd(float x) { return ::bnk_emu::detail::saturate_to<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return ::bnk_emu::detail::saturate_to<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return ::bnk_emu::detail::saturate_to<unsigned>(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return ::bnk_emu::detail::saturate_to<unsigned>(std::trunc(x)); }
inline unsigned __float2uint_rd(float x) { return ::bnk_emu::detail::saturate_to<unsigned>(std::floor(x)); }
inline unsigned __float2uint_ru(float x) { return ::bnk_emu::detail::saturate_to<unsigned>(std::ceil(x)); }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned x) { return float(x); }
inline float __double2float_rn(double x) { return float(x); }
inline long long __float2ll_rn(float x) { return ::bnk_emu::detail::saturate_to<long long>(std::nearbyint(x)); }
inline long long __double2ll_rn(double x) { return ::bnk_emu::detail::saturate_to<long long>(std::nearbyint(x)); }
inline int __double2int_rn(double x) { return ::bnk_emu::detail::saturate_to<int>(std::nearbyint(x)); }
inline int __double2int_rz(double x) { return ::bnk_emu::detail::saturate_to<int>(std::trunc(x)); }

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline unsigned __float_as_uint(float x) {
  unsigned i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline long long __double_as_longlong(double x) {
  long long i;
  std::memcpy(&i, &x, 8);
  return i;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, 8);
  return d;
}
inline int __double2hiint(double x) { return int((unsigned long long)__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return int((unsigned long long)__double_as_longlong(x) & 0xffffffffu); }
inline double __hiloint2double(int hi, int lo) {
  return __longlong_as_double((long long)(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo));
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
  return ((unsigned long long)__brev(unsigned(x)) << 32) | __brev(unsigned(x >> 32));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return int(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline int __mul24(int a, int b) { return int((unsigned)(((a << 8) >> 8) * ((b << 8) >> 8))); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = ((unsigned long long)hi << 32) | lo;
  return unsigned((v << (shift & 31u)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = ((unsigned long long)hi << 32) | lo;
  return unsigned(v >> (shift & 31u));
}

/* CUDA's global min/max overload set (crt/math_functions.hpp). */
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int min(int a, unsigned int b) { return min(unsigned(a), b); }
inline unsigned int min(unsigned int a, int b) { return min(a, unsigned(b)); }
inline long int min(long int a, long int b) { return a < b ? a : b; }
inline unsigned long int min(unsigned long int a, unsigned long int b) { return a < b ? a : b; }
inline unsigned long int min(long int a, unsigned long int b) { return min((unsigned long)a, b); }
inline unsigned long int min(unsigned long int a, long int b) { return min(a, (unsigned long)b); }
inline long long int min(long long int a, long long int b) { return a < b ? a : b; }
inline unsigned long long int min(unsigned long long int a, unsigned long long int b) { return a < b ? a : b; }
inline unsigned long long int min(long long int a, unsigned long long int b) { return min((unsigned long long)a, b); }
inline unsigned long long int min(unsigned long long int a, long long int b) { return min(a, (unsigned long long)b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double min(float a, double b) { return std::fmin(double(a), b); }
inline double min(double a, float b) { return std::fmin(a, double(b)); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int max(int a, unsigned int b) { return max(unsigned(a), b); }
inline unsigned int max(unsigned int a, int b) { return max(a, unsigned(b)); }
inline long int max(long int a, long int b) { return a > b ? a : b; }
inline unsigned long int max(unsigned long int a, unsigned long int b) { return a > b ? a : b; }
inline unsigned long int max(long int a, unsigned long int b) { return max((unsigned long)a, b); }
inline unsigned long int max(unsigned long int a, long int b) { return max(a, (unsigned long)b); }
inline long long int max(long long int a, long long int b) { return a > b ? a : b; }
inline unsigned long long int max(unsigned long long int a, unsigned long long int b) { return a > b ? a : b; }
inline unsigned long long int max(long long int a, unsigned long long int b) { return max((unsigned long long)a, b); }
inline unsigned long long int max(unsigned long long int a, long long int b) { return max(a, (unsigned long long)b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double max(float a, double b) { return std::fmax(double(a), b); }
inline double max(double a, float b) { return std::fmax(a, double(b)); }

#include <bnk_emu/runtime_cxx.h>

/* Last: libstdc++ spells __attribute__((__noinline__)), which this macro
 * would break; <memory> (the only user in C++17) is included above. */
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

#endif /* BNK_EMU_DEVICE_H */
