// From the run-time dtype, vector width and variant (epilogue kind, gradient source, ...) of a launch to
// the kernel template instantiated for them: one helper instead of a switch ladder per launcher.
//
//   bnk_dispatch<BNK_EPILOGUE_NONE, BNK_EPILOGUE_RELU>(dtype, vec, kind, [&](auto type, auto vec, auto kind) {
//     using T = typename decltype(type)::type;
//     launch<T, decltype(vec)::value, decltype(kind)::value>(...);
//   });
//
// vec is the storage type's 16-byte width (bnk_vec_width) or 1. Returns cudaErrorInvalidValue, launching
// nothing, when a value is not one of those listed.
#pragma once

#include <type_traits>

#include "kernels/common.cuh"

template <typename T>
struct bnk_type_tag {
  using type = T;
};
template <int N>
using bnk_int_tag = std::integral_constant<int, N>;

// f(bnk_int_tag<K>{}) for the first K of Ks equal to value.
template <int... Ks, typename F>
static cudaError_t bnk_dispatch_value(int value, F &&f) {
  bool found = false;
  ((!found && value == Ks ? (f(bnk_int_tag<Ks>{}), found = true) : false), ...);
  return found ? cudaSuccess : cudaErrorInvalidValue;
}

// f(bnk_type_tag<T>{}, bnk_int_tag<V>{}) for dtype's storage type T and V = vec.
template <typename F>
static cudaError_t bnk_dispatch_storage(int dtype, int vec, F &&f) {
  const auto with_type = [&](auto type) {
    using T = typename decltype(type)::type;
    return bnk_dispatch_value<bnk_vec_width<T>::value, 1>(vec, [&](auto width) { f(type, width); });
  };
  switch (dtype) {
  case BNK_FLOAT32:
    return with_type(bnk_type_tag<float>{});
  case BNK_FLOAT16:
    return with_type(bnk_type_tag<__half>{});
  case BNK_BFLOAT16:
    return with_type(bnk_type_tag<__nv_bfloat16>{});
  default:
    return cudaErrorInvalidValue;
  }
}

// f(bnk_type_tag<T>{}, bnk_int_tag<V>{}, bnk_int_tag<K>{}): storage type, vector width and variant K of Ks.
template <int... Ks, typename F>
static cudaError_t bnk_dispatch(int dtype, int vec, int variant, F &&f) {
  cudaError_t status = cudaSuccess;
  const cudaError_t found = bnk_dispatch_storage(dtype, vec, [&](auto type, auto width) {
    status = bnk_dispatch_value<Ks...>(variant, [&](auto kind) { f(type, width, kind); });
  });
  return found != cudaSuccess ? found : status;
}

// ---- every instantiation, for tables indexed by them (the context's occupancy table) ----

// f(bnk_int_tag<K>{}) for each K of Ks in turn, until one returns an error, which it returns.
template <int... Ks, typename F>
static cudaError_t bnk_for_each_value(F &&f) {
  cudaError_t status = cudaSuccess;
  ((status = status == cudaSuccess ? f(bnk_int_tag<Ks>{}) : status), ...);
  return status;
}

// f(bnk_type_tag<T>{}, bnk_int_tag<V>{}, dtype, wide) for every storage type and both of its vector widths (V = 1,
// wide 0; V = its 16-byte width, wide 1), until one returns an error, which it returns.
template <typename F>
static cudaError_t bnk_for_each_storage(F &&f) {
  const auto with_type = [&](auto type, int dtype) {
    using T = typename decltype(type)::type;
    const cudaError_t status = f(type, bnk_int_tag<1>{}, dtype, 0);
    return status != cudaSuccess ? status : f(type, bnk_int_tag<bnk_vec_width<T>::value>{}, dtype, 1);
  };
  cudaError_t status = with_type(bnk_type_tag<float>{}, BNK_FLOAT32);
  if (status == cudaSuccess) status = with_type(bnk_type_tag<__half>{}, BNK_FLOAT16);
  if (status == cudaSuccess) status = with_type(bnk_type_tag<__nv_bfloat16>{}, BNK_BFLOAT16);
  return status;
}

// Blocks of BNK_STREAM_THREADS threads of `kernel` that one SM holds at once with `dynamic_shared` bytes each.
template <typename... P>
static cudaError_t bnk_occupancy(void (*kernel)(P...), size_t dynamic_shared, int *blocks_per_sm) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, BNK_STREAM_THREADS, dynamic_shared);
}
