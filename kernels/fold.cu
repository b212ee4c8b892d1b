// Folding a frozen batch normalization: into per-channel scale and shift (bnk_inference_params), or into
// the weight and bias of the layer before it (bnk_fold_conv, bnk_fold_linear). Both run once, when a model
// is loaded, so they stay plain: one thread per value, fp32 arithmetic, one rounding to the storage type.
#include "kernels/dispatch.cuh"

// gamma / sqrt(var + eps), rounded as the normalize pass rounds it (invstd first, then the product), so
// that bnk_scale_shift with these parameters and bnk_forward_inference scale by the same float.
static __device__ __forceinline__ float frozen_scale(const bnk_frozen_bn &bn, int64_t c) {
  const float invstd = bnk_invstd_of(bn.var[c], bn.eps);
  return bn.gamma != NULL ? invstd * bn.gamma[c] : invstd;
}

static __device__ __forceinline__ float frozen_beta(const bnk_frozen_bn &bn, int64_t c) {
  return bn.beta != NULL ? bn.beta[c] : 0.0f;
}

// One thread per channel. scale and shift may be gamma and beta (each thread reads its channel first).
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    inference_params(int64_t c, bnk_frozen_bn bn, float *scale, float *shift) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= c) return;
  const float k = frozen_scale(bn, channel);
  const float beta = frozen_beta(bn, channel);
  scale[channel] = k;
  shift[channel] = fmaf(-bn.mean[channel], k, beta);
}

// A grid-stride loop over the weight (row k = output channel k, scaled by scale[k]), then over the rows
// for the bias: (b - mean) * scale + beta, with b - mean exact when b and mean are close.
template <typename T, typename B>
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    fold_rows(const T *weight_in, T *weight_out, const float *bias_in, B *bias_out, int64_t rows, int64_t elements,
              bnk_fastdiv row_elements, bnk_frozen_bn bn) {
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < elements; i += step) {
    const int64_t row = (int64_t)bnk_div((uint64_t)i, row_elements);
    weight_out[i] = bnk_from_float<T>(bnk_to_float(weight_in[i]) * frozen_scale(bn, row));
  }
  for (int64_t row = first; row < rows; row += step) {
    const float bias = bias_in != NULL ? bias_in[row] : 0.0f;
    bias_out[row] = bnk_from_float<B>(fmaf(bias - bn.mean[row], frozen_scale(bn, row), frozen_beta(bn, row)));
  }
}

extern "C" cudaError_t bnk__launch_inference_params(int64_t c, bnk_frozen_bn bn, float *scale, float *shift,
                                                    cudaStream_t stream) {
  const dim3 grid((unsigned)((c + BNK_STREAM_THREADS - 1) / BNK_STREAM_THREADS));
  BNK_LAUNCH(inference_params, grid, dim3(BNK_STREAM_THREADS), 0, stream, c, bn, scale, shift);
  return cudaGetLastError();
}

// The bias is float32, or of the weight's type (what cuBLASLt's bias epilogue reads for 16-bit outputs).
extern "C" cudaError_t bnk__launch_fold(int64_t rows, int64_t row_elements, int dtype, const void *weight_in,
                                        void *weight_out, const float *bias_in, void *bias_out, int bias_dtype,
                                        bnk_frozen_bn bn, int64_t blocks, cudaStream_t stream) {
  const bnk_fastdiv row_divisor = bnk_fastdiv_make((uint64_t)row_elements);
  const cudaError_t status =
      bnk_dispatch<0, 1>(dtype, 1, bias_dtype == BNK_FLOAT32, [&](auto type, auto, auto float_bias) {
        using T = typename decltype(type)::type;
        using B = typename std::conditional<decltype(float_bias)::value == 1, float, T>::type;
        auto kernel = fold_rows<T, B>;
        BNK_LAUNCH(kernel, dim3((unsigned)blocks), dim3(BNK_STREAM_THREADS), 0, stream,
                   static_cast<const T *>(weight_in), static_cast<T *>(weight_out), bias_in, static_cast<B *>(bias_out),
                   rows, rows * row_elements, row_divisor, bn);
      });
  return status != cudaSuccess ? status : cudaGetLastError();
}

// Element-wide only; both bias types.
extern "C" cudaError_t bnk__fold_occupancy(bnk_occupancy_table *table) {
  return bnk_for_each_storage([&](auto type, auto, int dtype, int wide) {
    using T = typename decltype(type)::type;
    if (wide) return cudaSuccess;
    int(&row)[BNK_OCCUPANCY_VARIANTS] = table->blocks_per_sm[BNK_FAMILY_FOLD][0][dtype][0];
    const cudaError_t status = bnk_occupancy(fold_rows<T, T>, 0, &row[0]);
    return status != cudaSuccess ? status : bnk_occupancy(fold_rows<T, float>, 0, &row[1]);
  });
}
