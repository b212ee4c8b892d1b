// Shared by every kernel file: the CUDA/emulation switch, launch macros, storage-type conversion,
// 16-byte vector access and division by run-time invariant integers.
#pragma once

#ifdef BNK_EMULATION
#include <bnk_emu/device.h>
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#include <stdint.h>

#include <type_traits>

#include "bnk.h"
#include "kernels/launchers.h"

// One macro so that the same launcher source runs on the GPU and on the host emulation; the kernel's
// arguments follow the launch configuration, so that a launch reads (and formats) as one call.
// Dynamic shared memory (the launch's smem bytes) as a `type *name`, 16-byte aligned.
#ifdef BNK_EMULATION
#define BNK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  BNK_EMU_LAUNCH(kernel, grid, block, smem, stream)(__VA_ARGS__)
#define BNK_DYNAMIC_SHARED(type, name) type *name = static_cast<type *>(BNK_EMU_DYNAMIC_SHARED())
#else
#define BNK_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define BNK_DYNAMIC_SHARED(type, name)                          \
  extern __shared__ __align__(16) unsigned char name##_bytes[]; \
  type *name = reinterpret_cast<type *>(name##_bytes)
#endif

// Threads per block of the streaming kernels: 8 blocks of 256 fill an H100 SM's 2048 thread slots.
#define BNK_BLOCK_THREADS 256
#define BNK_WARP 32
#define BNK_FULL_MASK 0xffffffffu
// Blocks of BNK_STREAM_THREADS that the widest elementwise kernels must fit per SM (__launch_bounds__):
// two cap them at 128 registers, the budget's occupancy floor of 0.25.
#define BNK_MIN_RESIDENT_BLOCKS 2
// Steps in flight of the channels-last elementwise kernels that hold the most per step (8 channels'
// parameters, and two 8-wide inputs or a mask to decode): half of BNK_UNROLL, so that they fit 128
// registers without spilling; 2 steps of 2 inputs are still 4 16-byte loads in flight per thread.
template <int V, bool HEAVY>
struct bnk_tile_unroll {
  static constexpr int value = V == 8 && HEAVY ? BNK_UNROLL / 2 : BNK_UNROLL;
};

// ---- storage types: loads convert to fp32 once, stores round once (to nearest even) ----

static __device__ __forceinline__ float bnk_to_float(float v) { return v; }
static __device__ __forceinline__ float bnk_to_float(__half v) { return __half2float(v); }
static __device__ __forceinline__ float bnk_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
static __device__ __forceinline__ T bnk_from_float(float v);
template <>
__device__ __forceinline__ float bnk_from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half bnk_from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 bnk_from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Elements per 16-byte access for a storage type: 4 floats or 8 halves.
template <typename T>
struct bnk_vec_width {
  static constexpr int value = 16 / (int)sizeof(T);
};

// V consecutive elements starting at p. A 16-byte access when V * sizeof(T) == 16 (the caller
// guarantees 16-byte alignment then); element-wise otherwise, which also serves V == 1. Plain coherent
// loads, never the read-only path (ld.global.nc): the elementwise passes may write in place (y == x,
// dx == dy, y == z), and a non-coherent load of a buffer the same kernel writes is undefined on a GPU.
// So no __restrict__ here, which would let nvcc prove the data read-only and emit LDG.*.CONSTANT.
// The V values of a 16-byte vector as floats (exact). A bf16 is the upper half of its float: shifting and
// masking each 32-bit word takes 1 instruction per value where nvcc's conversion took 1.5 (a PRMT to move
// the upper value down first), and keeps nvcc from unpacking each value into a register of its own.
template <typename T, int V>
static __device__ __forceinline__ void bnk_unpack_vector(uint4 raw, float (&out)[V]) {
  static_assert(V * sizeof(T) == 16, "a 16-byte vector");
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[2 * k] = __uint_as_float(words[k] << 16);
      out[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    }
  } else {
    union {
      uint4 raw;
      T elem[V];
    } u;
    u.raw = raw;
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = bnk_to_float(u.elem[i]);
  }
}

template <typename T, int V>
static __device__ __forceinline__ void bnk_load(const T *p, float (&out)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    bnk_unpack_vector<T, V>(*reinterpret_cast<const uint4 *>(p), out);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = bnk_to_float(p[i]);
  }
}

// The pair type of a 16-bit storage type, its rounding of two floats, and its compare with 0 (HSET2: 0xFFFF per
// half that is > 0; NaN is not).
template <typename T>
struct bnk_pair;
template <>
struct bnk_pair<__half> {
  typedef __half2 type;
  static __device__ __forceinline__ type round(float low, float high) { return __floats2half2_rn(low, high); }
  static __device__ __forceinline__ unsigned positive(type pair) { return __hgt2_mask(pair, __float2half2_rn(0.0f)); }
};
template <>
struct bnk_pair<__nv_bfloat16> {
  typedef __nv_bfloat162 type;
  static __device__ __forceinline__ type round(float low, float high) { return __floats2bfloat162_rn(low, high); }
  static __device__ __forceinline__ unsigned positive(type pair) {
    return __hgt2_mask(pair, __float2bfloat162_rn(0.0f));
  }
};

// Two values rounded into a 16-bit pair, low element first: the one conversion that both a store and the
// ReLU mask's compare (bnk_positive_pair) use, so that nvcc converts each pair once (for bf16 it emitted the
// scalar and the pair conversions separately).
template <typename T>
static __device__ __forceinline__ unsigned bnk_round_pair(float low, float high) {
  union {
    typename bnk_pair<T>::type pair;
    unsigned bits;
  } u;
  u.pair = bnk_pair<T>::round(low, high);
  return u.bits;
}

// A 16-byte vector of V values, each rounded once.
template <typename T, int V>
static __device__ __forceinline__ uint4 bnk_round_vector(const float (&in)[V]) {
  static_assert(V * sizeof(T) == 16, "a 16-byte vector");
  union {
    uint4 raw;
    T elem[V];
    unsigned pair[4];
  } u;
  if constexpr (sizeof(T) == 2) {
#pragma unroll
    for (int k = 0; k < 4; ++k) u.pair[k] = bnk_round_pair<T>(in[2 * k], in[2 * k + 1]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) u.elem[i] = bnk_from_float<T>(in[i]);
  }
  return u.raw;
}

template <typename T, int V>
static __device__ __forceinline__ void bnk_store(T *p, const float (&in)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    *reinterpret_cast<uint4 *>(p) = bnk_round_vector<T, V>(in);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = bnk_from_float<T>(in[i]);
  }
}

// The first `count` of V elements (count <= V), the rest left 0: the partial vector at the end of a tensor
// whose size is not a multiple of V. count == V is the full access above.
template <typename T, int V>
static __device__ __forceinline__ void bnk_load_first(const T *p, int count, float (&out)[V]) {
  if (count == V) {
    bnk_load<T, V>(p, out);
    return;
  }
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = i < count ? bnk_to_float(p[i]) : 0.0f;
}

template <typename T, int V>
static __device__ __forceinline__ void bnk_store_first(T *p, int count, const float (&in)[V]) {
  if (count == V) {
    bnk_store<T, V>(p, in);
    return;
  }
#pragma unroll
  for (int i = 0; i < V; ++i)
    if (i < count) p[i] = bnk_from_float<T>(in[i]);
}

// num_batches_tracked + 1 in two's complement: a counter the caller left at INT64_MAX wraps, as PyTorch's
// int64 counter does in practice, where a signed `+ 1` would be undefined behaviour (the API fuzzer found it).
static __device__ __forceinline__ int64_t bnk_next_count(int64_t count) { return (int64_t)((uint64_t)count + 1u); }

// ---- the inverse standard deviation: every kernel derives invstd here and nowhere else ----
// 1 / sqrt(var + eps), except that a zero variance with eps = 0 gives 0 rather than inf: PyTorch's rule,
// under which a constant channel normalizes to beta and passes no gradient (docs/semantics.md).
static __host__ __device__ __forceinline__ float bnk_invstd_of(float var, float eps) {
  return var != 0.0f || eps != 0.0f ? 1.0f / sqrtf(var + eps) : 0.0f;
}

// ---- the channels-last tiling of bnk_reduce_plan ----
// Block b covers tile (b % tiles) of tile_x * V channels over the rows of piece (b / tiles); thread
// (tx, ty) owns V channels, from *channel0 (>= C for the idle threads of the last tile), and walks rows
// ty, ty + tile_y, ... of the piece.
template <int V>
static __device__ __forceinline__ void bnk_tile_position(int tile_x, int64_t tiles, int64_t *part, int *ty,
                                                         int64_t *channel0) {
  const int64_t block = blockIdx.x;
  *part = block / tiles;
  *ty = (int)threadIdx.x / tile_x;
  *channel0 = ((block % tiles) * tile_x + (int)threadIdx.x % tile_x) * V;
}

// ---- division by a run-time invariant divisor, for index arithmetic in hot loops ----
// 64-bit integer division is a long subroutine on the GPU; a multiply-high and a shift are not.
// Valid for dividends below 2^63 and divisors in [1, 2^63) (Granlund & Montgomery, round-up variant).
typedef struct bnk_fastdiv {
  uint64_t divisor;
  uint64_t magic;
  unsigned shift;
} bnk_fastdiv;

static __host__ __device__ __forceinline__ uint64_t bnk_div(uint64_t n, const bnk_fastdiv &d) {
#ifdef __CUDA_ARCH__
  uint64_t high = __umul64hi(n, d.magic);
#else
  uint64_t high = (uint64_t)(((unsigned __int128)n * d.magic) >> 64);
#endif
  return (high + n) >> d.shift;
}

static __host__ __device__ __forceinline__ uint64_t bnk_mod(uint64_t n, const bnk_fastdiv &d) {
  return n - bnk_div(n, d) * d.divisor;
}

static inline bnk_fastdiv bnk_fastdiv_make(uint64_t divisor) {
  bnk_fastdiv d;
  d.divisor = divisor;
  d.shift = 0;
  while (d.shift < 63 && (1ull << d.shift) < divisor) ++d.shift;
  unsigned __int128 numerator = (unsigned __int128)((1ull << d.shift) - divisor) << 64;
  d.magic = (uint64_t)(numerator / divisor) + 1;
  return d;
}

// ---- fused epilogues (docs/semantics.md, "Fused epilogues") ----
// The forward's epilogue kind is a bnk_epilogue_kind; the backward reads the ReLU's decision back from y
// or from the bit mask the forward wrote (bnk_grad_source, launchers.h), or reads nothing (plain).

// ReLU that lets NaN through, as PyTorch's does (max(NaN, 0) would hide it).
static __device__ __forceinline__ float bnk_relu(float v) { return v < 0.0f ? 0.0f : v; }

// Bit i is set when element i, as stored in T, is > 0: the decision the backward sees when it reads y, so
// that the mask path and the y path agree bit for bit (a positive fp32 value may round to 0 in fp16).
// 16-bit storage compares the rounded pair at once (HSET2: 0xFFFF per half that is > 0, NaN not), and
// each pair's two halves give its two bits: about 1 instruction per element where converting each rounded
// value back to fp32, comparing and setting its bit took 4.
template <typename T>
static __device__ __forceinline__ unsigned bnk_positive_pair(float low, float high) {
  union {
    unsigned bits;
    typename bnk_pair<T>::type pair;
  } u;
  u.bits = bnk_round_pair<T>(low, high);
  return bnk_pair<T>::positive(u.pair);
}

template <typename T, int V>
static __device__ __forceinline__ unsigned bnk_positive_bits(const float (&v)[V]) {
  unsigned bits = 0;
  if constexpr (sizeof(T) == 2 && V % 2 == 0) {
    static_assert(V <= 16, "a pair's bits are taken from both halves of a 32-bit word");
    // Pair k's mask is 0xFFFF per positive half: bit 2k of its low half is element 2k, bit 2k + 1 of its
    // high half element 2k + 1. Gather those positions of every pair, then fold the high half down.
    unsigned gathered = 0;
#pragma unroll
    for (int k = 0; k < V / 2; ++k) gathered |= bnk_positive_pair<T>(v[2 * k], v[2 * k + 1]) & (0x00030003u << (2 * k));
    bits = (gathered & 0x5555u) | ((gathered >> 16) & 0xAAAAu);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (bnk_to_float(bnk_from_float<T>(v[i])) > 0.0f) bits |= 1u << i;
  }
  return bits;
}

// The mask word of a group of 32 / V consecutive lanes that hold 32 consecutive elements starting at a
// multiple of 32 (V bits each, lane order = memory order): built inside the warp, so no memset and no
// atomics. Every lane of the group calls it with the same control flow (lanes without elements pass 0);
// every lane gets the word and the group's first lane stores it. V == 1: the warp's ballot is the word.
// V > 1: each lane shifts its V bits into place and the group ORs them with log2(32 / V) shuffles, fewer
// instructions than V ballots and a bit transpose. WHOLE_WARP: every lane of the warp calls it together
// (the flat walk), so the shuffles name the full warp; a group's mask instead costs nvcc a convergence check
// (MATCH, REDUX, VOTE and a branch) per call.
template <int V, bool WHOLE_WARP = false>
static __device__ __forceinline__ unsigned bnk_mask_word(unsigned bits) {
  if constexpr (V == 1) {
    return __ballot_sync(BNK_FULL_MASK, bits != 0);
  } else {
    constexpr int G = 32 / V;
    const int lane = (int)(threadIdx.x % BNK_WARP);
    const unsigned group = WHOLE_WARP ? BNK_FULL_MASK : ((1u << G) - 1u) << (lane & ~(G - 1));
    unsigned word = bits << (V * (lane % G));
#pragma unroll
    for (int offset = 1; offset < G; offset *= 2) word |= __shfl_xor_sync(group, word, offset);
    return word;
  }
}

// Whether this lane stores its group's word (bnk_mask_word).
template <int V>
static __device__ __forceinline__ bool bnk_mask_word_owner() {
  return threadIdx.x % (32 / V) == 0;
}

// Sets the bits of elements element .. element + V - 1 in a mask the launcher zeroed, where a warp does
// not own whole words (bnk_elementwise_plan.mask_words == 0: channels-last tiles whose rows are not
// whole words). V divides 32 and element is a multiple of V, so the bits lie in one word. Threads whose
// elements share a word combine with an integer OR: the result does not depend on their order.
template <int V>
static __device__ __forceinline__ void bnk_mask_set(uint32_t *mask, int64_t element, unsigned bits) {
  if (bits != 0) atomicOr(mask + element / 32, bits << (element % 32));
}

template <int V>
static __device__ __forceinline__ unsigned bnk_mask_get(const uint32_t *mask, int64_t element) {
  const unsigned word = mask[element / 32] >> (element % 32);
  return V == 32 ? word : word & ((1u << V) - 1u);
}

// dy where the forward's ReLU passed its input (y > 0), else 0: from the first `count` of V elements of y
// or from the mask (bits past the tensor's end read 0 and are never used).
template <int GRAD, typename T, int V>
static __device__ __forceinline__ void bnk_gate_gradient(float (&dy)[V], const T *y, const uint32_t *mask,
                                                         int64_t element, int count) {
  if constexpr (GRAD == BNK_GRAD_FROM_Y) {
    float vy[V];
    bnk_load_first<T, V>(y + element, count, vy);
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (!(vy[i] > 0.0f)) dy[i] = 0.0f;
  } else if constexpr (GRAD == BNK_GRAD_FROM_MASK) {
    const unsigned bits = bnk_mask_get<V>(mask, element);
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (!((bits >> i) & 1u)) dy[i] = 0.0f;
  }
}

template <int GRAD, typename T, int V>
static __device__ __forceinline__ void bnk_gate_gradient(float (&dy)[V], const T *y, const uint32_t *mask,
                                                         int64_t element) {
  bnk_gate_gradient<GRAD, T, V>(dy, y, mask, element, V);
}

// ---- the load-then-consume loop of the streaming kernels ----
// Steps begin, begin + stride, ... below end, U (BNK_UNROLL unless given) at a time: the loads of U steps
// are issued before the first of them is consumed, so that that many independent accesses per thread are
// in flight. load(u, step) and consume(u, step) get the slot u < U of the step's registers and the step;
// steps are consumed in order. Lanes that take part in a warp collective inside consume must run the same
// number of steps.
template <int U = BNK_UNROLL, typename I, typename Load, typename Consume>
static __device__ __forceinline__ void bnk_walk(I begin, I end, I stride, Load &&load, Consume &&consume) {
  for (I first = begin; first < end; first += U * stride) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const I step = first + u * stride;
      if (step < end) load(u, step);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const I step = first + u * stride;
      if (step < end) consume(u, step);
    }
  }
}
