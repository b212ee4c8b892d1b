// The per-channel affine of the forward's elementwise pass and its fused epilogue: shared by the two-pass
// normalize kernels (normalize.cu) and the persistent forward (persistent.cu), so that both compute y with
// the same operations, bit for bit, from the same statistics.
#pragma once

#include "kernels/common.cuh"

struct bnk_channel_affine {
  float shift;
  float dmean;
  float scale;
  float beta;
};

template <bool FROM_VARIANCE>
static __device__ __forceinline__ bnk_channel_affine channel_affine(const bnk_normalize_params &p, int64_t c) {
  bnk_channel_affine a;
  const float invstd = FROM_VARIANCE ? bnk_invstd_of(p.variance[c], p.eps) : p.invstd[c];
  a.shift = p.shift != NULL ? p.shift[c] : 0.0f;
  a.dmean = p.dmean != NULL ? p.dmean[c] : 0.0f;
  a.scale = p.gamma != NULL ? invstd * p.gamma[c] : invstd;
  a.beta = p.beta != NULL ? p.beta[c] : 0.0f;
  return a;
}

static __device__ __forceinline__ float apply_affine(float x, const bnk_channel_affine &a) {
  return fmaf((x - a.shift) - a.dmean, a.scale, a.beta);
}

template <int EPILOGUE>
static __device__ __forceinline__ float apply_epilogue(float bn, float z) {
  if constexpr (EPILOGUE == BNK_EPILOGUE_ADD_RELU) return bnk_relu(bn + z);
  else if constexpr (EPILOGUE == BNK_EPILOGUE_RELU) return bnk_relu(bn);
  else return bn;
}
