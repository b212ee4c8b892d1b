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
