// Synchronized batch normalization: merging the partial statistics of several ranks (GPUs) into the
// statistics of the whole batch. The local pieces come from the ordinary statistics kernels; what crosses
// the wire is one (count, mean, M2) triple per channel and rank, in double.
#include "kernels/common.cuh"

// One thread per channel merges the ranks' triples in rank order: the same order, so the same bits, on
// every rank that runs it. Chan's merge in double keeps every rank's mean and M2 exact enough that the
// result matches a single device's statistics of the whole batch.
static __global__ void __launch_bounds__(BNK_STREAM_THREADS)
    merge_rank_stats(int64_t c, int ranks, const double *gathered, float eps, bnk_running_update running,
                     float *mean_out, float *invstd_out) {
  const int64_t channel = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= c) return;
  double count = 0.0, mean = 0.0, m2 = 0.0;
  for (int r = 0; r < ranks; ++r) {
    const double *rank = gathered + (int64_t)r * 3 * c;
    const double rank_count = rank[channel];
    if (rank_count == 0.0) continue;  // a rank with an empty share
    const double total = count + rank_count;
    const double delta = rank[c + channel] - mean;
    mean += delta * (rank_count / total);
    m2 += rank[2 * c + channel] + delta * delta * count * (rank_count / total);
    count = total;
  }
  const float var = count > 0.0 ? (float)(m2 / count) : 0.0f;
  const float invstd = bnk_invstd_of(var, eps);
  mean_out[channel] = (float)mean;
  invstd_out[channel] = invstd;
  // The unbiased variance needs two values; with fewer the running statistics stay as they were.
  if (running.running_mean != NULL && count > 1.0) {
    const float weight =
        running.cumulative ? 1.0f / (float)bnk_next_count(*running.num_batches_tracked) : running.momentum;
    const float unbiased_var = (float)(m2 / (count - 1.0));
    running.running_mean[channel] = (1.0f - weight) * running.running_mean[channel] + weight * (float)mean;
    running.running_var[channel] = (1.0f - weight) * running.running_var[channel] + weight * unbiased_var;
  }
}

// Runs after every thread of merge_rank_stats has read the old value (stream order).
static __global__ void count_batch(int64_t *num_batches_tracked) {
  *num_batches_tracked = bnk_next_count(*num_batches_tracked);
}

static __global__ void store_value(float *destination, float value) { *destination = value; }

extern "C" cudaError_t bnk__launch_merge_ranks(int64_t c, int ranks, const double *gathered, float eps,
                                               bnk_running_update running, float *mean_out, float *invstd_out,
                                               cudaStream_t stream) {
  const dim3 grid((unsigned)((c + BNK_STREAM_THREADS - 1) / BNK_STREAM_THREADS));
  BNK_LAUNCH(merge_rank_stats, grid, dim3(BNK_STREAM_THREADS), 0, stream, c, ranks, gathered, eps, running, mean_out,
             invstd_out);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || running.num_batches_tracked == NULL) return status;
  return bnk__launch_count_batch(running.num_batches_tracked, stream);
}

extern "C" cudaError_t bnk__launch_store_value(float *destination, float value, cudaStream_t stream) {
  BNK_LAUNCH(store_value, dim3(1), dim3(1), 0, stream, destination, value);
  return cudaGetLastError();
}

extern "C" cudaError_t bnk__launch_count_batch(int64_t *num_batches_tracked, cudaStream_t stream) {
  BNK_LAUNCH(count_batch, dim3(1), dim3(1), 0, stream, num_batches_tracked);
  return cudaGetLastError();
}
