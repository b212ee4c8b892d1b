/* The interface between host/ (C11) and kernels/ (CUDA): plain C types, extern "C" launchers.
 * Internal to the library: nothing here is installed. */
#ifndef BNK_KERNELS_LAUNCHERS_H
#define BNK_KERNELS_LAUNCHERS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of the streaming kernels. */
#define BNK_STREAM_THREADS 256
/* Loads in flight per thread in the streaming loops: enough independent 16-byte loads to cover latency.
 * The channels-last reductions fold that many rows at once, which the plan counts. */
#define BNK_UNROLL 4

/* A BN tensor reduced to what the kernels need: x[n][c][s] when channels-first, x[n][c] with n = N x
 * spatial when channels-last (a channels-first tensor with one spatial element is channels-last too).
 * Each channel has n x s elements. */
typedef struct bnk_view {
  int64_t n;
  int64_t c;
  int64_t s;
  int channels_last;
  int dtype; /* bnk_dtype */
} bnk_view;

/* How a per-channel reduction (and the channels-last elementwise pass) splits the tensor into blocks.
 * Every channel's data is cut into `parts` pieces; each block reduces one piece of one channel
 * (channels-first) or one piece of rows of a tile of channels (channels-last), and writes one partial
 * result per channel and piece to the workspace. The pieces are merged in a fixed order, by the last block
 * of each group to finish or by a second kernel (bnk_merge_groups). */
typedef struct bnk_reduce_plan {
  int vec;     /* elements per access: 16 bytes when alignment allows, else 1 */
  int threads; /* per block */
  int64_t blocks;
  int64_t parts;         /* pieces per channel = partial results per channel */
  int64_t chunk;         /* channels-first: elements of one channel per piece (a multiple of vec) */
  int tile_x;            /* channels-last: threads across channels (each owns vec channels) */
  int tile_y;            /* channels-last: threads down the rows */
  int64_t tiles;         /* channels-last: tiles of tile_x * vec channels */
  int64_t rows_per_part; /* channels-last: rows of one piece */
  /* persistent kernels: vectors (channels-first) or rows (channels-last) per thread cached in dynamic shared
   * memory beyond its registers' cache (bnk_persistent_shared_bytes); 0 elsewhere */
  int shared_depth;
} bnk_reduce_plan;

/* The merge inside a reduction kernel. A group is what one merge covers: a channel (channels-first) or a
 * tile of channels (channels-last), each of `parts` pieces. Given counters, the reduction kernels count
 * every piece written on its group's counter, and the block that completes a group merges it, in the same
 * launch and in the same order (so to the same bits) as the separate merge kernel, which runs when the
 * counters are NULL. Counters: 1 + bnk_merge_groups unsigned integers, zero on entry and zero again when the
 * launch ends (the block that completes a counter resets it), so that a call replayed from a graph finds them
 * zero. One pool of BNK_MERGE_COUNTERS per context (host/context.c): calls of a context run one at a time.
 *
 * Channels-first, the last block of a channel merges its pieces, a warp per channel. Channels-last, where a
 * tile's hundreds of pieces times up to 256 channels would keep one SM busy for tens of microseconds, the
 * merge has two levels: the pieces of a tile fall into bands of bnk_merge_band_pieces consecutive pieces
 * (at most BNK_MERGE_BANDS bands); the last block of a band merges the band's pieces, a thread per channel,
 * into the workspace's band partials; the last of the tile's bands to be merged merges the band partials in
 * order and finishes the channels. The counters of tile t are then [1 + t (bands + 1) + band] and, for the
 * tile, [1 + t (bands + 1) + bands]. */
#define BNK_MERGE_COUNTERS 16384
#define BNK_MERGE_BANDS 16
/* Consecutive pieces of one band: as few bands as keep each at most BNK_MERGE_BANDS; with as many bands as
 * pieces per band, both levels take about sqrt(parts) steps. */
static inline int64_t bnk_merge_band_pieces(int64_t parts) { return (parts + BNK_MERGE_BANDS - 1) / BNK_MERGE_BANDS; }
static inline int64_t bnk_merge_bands(int64_t parts) {
  const int64_t per_band = bnk_merge_band_pieces(parts);
  return (parts + per_band - 1) / per_band;
}
/* Counters after [0] (groups merged so far) that a call's merge inside its reduction takes. */
static inline int64_t bnk_merge_groups(const bnk_view *view, const bnk_reduce_plan *plan) {
  return view->channels_last ? plan->tiles * (bnk_merge_bands(plan->parts) + 1) : view->c;
}
/* Channels of one group: what the block that completes it merges. */
static inline int64_t bnk_merge_group_channels(const bnk_view *view, const bnk_reduce_plan *plan) {
  const int64_t tile = (int64_t)plan->tile_x * plan->vec;
  return view->channels_last ? (view->c < tile ? view->c : tile) : 1;
}

/* ---- occupancy: how many blocks of each streaming kernel an SM holds at once ----
 * Queried once per context (cudaOccupancyMaxActiveBlocksPerMultiprocessor, at BNK_STREAM_THREADS threads and
 * the most dynamic shared memory the launch uses) and cached there; the plans size their grids from it. */
typedef enum bnk_kernel_family {
  BNK_FAMILY_STATS = 0,         /* stats_channels_first / _last; variant 0 */
  BNK_FAMILY_BACKWARD_SUMS = 1, /* backward_sums_channels_*; variant: the bnk_grad_source */
  BNK_FAMILY_NORMALIZE = 2,     /* normalize_channels_*; variant: bnk_normalize_variant */
  BNK_FAMILY_DX = 3,            /* backward_dx_channels_*; variant: the bnk_grad_source */
  BNK_FAMILY_FOLD = 4, /* fold_rows, at [0][dtype][0]; variant: 1 for a float32 bias, 0 for the weight's type */
  BNK_FAMILIES = 5
} bnk_kernel_family;
#define BNK_OCCUPANCY_VARIANTS 6
/* The normalize kernel's variant: its epilogue kind (bnk_epilogue_kind), plus 3 when it derives invstd from a
 * variance (inference) rather than reading it. */
static inline int bnk_normalize_variant(int epilogue_kind, int from_variance) {
  return epilogue_kind + (from_variance ? 3 : 0);
}
/* blocks_per_sm[family][channels_last][dtype][vec is the 16-byte width][variant]; 0 where no such kernel
 * exists. */
typedef struct bnk_occupancy_table {
  int blocks_per_sm[BNK_FAMILIES][2][3][2][BNK_OCCUPANCY_VARIANTS];
} bnk_occupancy_table;
/* Each fills its families' entries: statistics (kernels/stats.cu), backward sums and dx (kernels/backward.cu),
 * normalize (kernels/normalize.cu), folding (kernels/fold.cu). */
cudaError_t bnk__stats_occupancy(bnk_occupancy_table *table);
cudaError_t bnk__backward_occupancy(bnk_occupancy_table *table);
cudaError_t bnk__normalize_occupancy(bnk_occupancy_table *table);
cudaError_t bnk__fold_occupancy(bnk_occupancy_table *table);

/* Elements per 16-byte access for a dtype. */
int bnk__dtype_vec(int dtype);
/* The plan for a view whose tensors allow `vec`-wide access, on a device with sm_count SMs, each of which
 * holds blocks_per_sm blocks of the reduction kernel at once: pieces enough for one full wave. A channels-last
 * tile is at most max_tile_vectors vectors across (at most BNK_STREAM_THREADS): bnk_reduction_tile_vectors for
 * the two-pass reductions, BNK_STREAM_THREADS for the elementwise passes and the persistent kernels. */
bnk_reduce_plan bnk__plan_reduce(const bnk_view *view, int vec, int sm_count, int blocks_per_sm, int max_tile_vectors);
/* A two-pass reduction's channels-last tile has at most a channel per thread of its block, so that each level of
 * its merge is one pass of the block's threads over the tile's channels. */
static inline int bnk_reduction_tile_vectors(int vec) { return BNK_STREAM_THREADS / vec; }
/* Whether the reductions (statistics, backward sums) can read `view` in accesses of vec elements, given
 * aligned pointers: channels-last when C is a multiple of vec; channels-first when S is, or when C x S is
 * and S >= vec, the head and tail of each run then read element by element (kernels/reduce.cuh). */
int bnk__reduce_vec_fits(const bnk_view *view, int vec);
/* The widest access of the reductions that every pointer's alignment and bnk__reduce_vec_fits allow. */
int bnk__choose_vec(const bnk_view *view, const void *const *pointers, int count);
/* The widest access that every pointer's alignment allows where the contiguous extent (S channels-first, C
 * channels-last) is whole vectors: what the persistent kernels walk. */
int bnk__choose_whole_run_vec(const bnk_view *view, const void *const *pointers, int count);
/* Blocks of BNK_STREAM_THREADS for a grid-stride loop over `items`: one per item, at most
 * `resident_blocks` (the blocks of BNK_STREAM_THREADS the GPU holds at once). */
int64_t bnk__plan_grid_stride_blocks(int64_t items, int64_t resident_blocks);

/* Longest run the channels-first elementwise walk counts exactly; longer runs are counted as this long,
 * which is exact within a block because no block's piece is longer than half of it. */
#define BNK_RUN_CAP ((int32_t)1 << 30)

/* How an elementwise pass (normalize, dx) covers a tensor, computed once on the host
 * (host/plan_elementwise.c) and handed to the launcher.
 *
 * Channels-first: a flat walk over the tensor in memory order, in vectors of `vec` elements whatever S is
 * (only the last vector of the tensor may be partial). A tile is BNK_STREAM_THREADS consecutive vectors,
 * one per thread; block b walks the tiles_per_block tiles from b * tiles_per_block. The block first puts
 * the parameters of the runs (of S elements, one channel each) its piece touches into a table in shared
 * memory, then each thread follows its position with a run counter advanced by constants (no division
 * in the loop): from one of its vectors to the next, BNK_STREAM_THREADS * vec elements, it moves
 * run_step runs and left_step elements. A vector that straddles a run boundary is done element by
 * element.
 *
 * Channels-last: the tiling of bnk__plan_reduce (`tiling`); each thread keeps the parameters of its vec
 * channels in registers. */
typedef struct bnk_elementwise_plan {
  int vec;
  int64_t blocks;
  int threads;
  /* channels-first */
  int64_t elements;
  int tiles_per_block;
  int table_runs; /* entries of the per-block run table (16 bytes each, dynamic shared memory) */
  int32_t run_step;
  int32_t left_step;
  int32_t run_length; /* S, capped at BNK_RUN_CAP */
  /* channels-last */
  bnk_reduce_plan tiling;
  /* 1: every mask word is built by one warp (bnk_mask_word), so the mask needs no memset and no atomics;
   * 0: bits are ORed in atomically into a mask the launcher zeroes first. */
  int mask_words;
} bnk_elementwise_plan;

/* Most entries of a block's run table the channels-first elementwise plan aims for (16 bytes each); a block's
 * piece is cut shorter rather than exceed it, down to one tile. */
#define BNK_TABLE_TARGET 512
/* The most entries a block's table holds: BNK_TABLE_TARGET, or the runs of one tile where S is so small that a
 * tile touches more (S = 1: a run per element). The channels-first normalize and dx kernels' occupancy is
 * queried with this much dynamic shared memory, so that no launch's grid exceeds the blocks an SM holds. */
#define BNK_TABLE_MAX(vec) \
  (BNK_STREAM_THREADS * (vec) > BNK_TABLE_TARGET ? BNK_STREAM_THREADS * (vec) : BNK_TABLE_TARGET)

/* The plan of an elementwise pass over `view` whose tensors are `pointers` (NULL entries ignored), on a
 * GPU of sm_count SMs, each of which holds blocks_per_sm[0] blocks of the pass's element-wide kernel and
 * blocks_per_sm[1] of its 16-byte one at once (the channels-last tiling of bnk__plan_reduce with those). */
bnk_elementwise_plan bnk__plan_elementwise(const bnk_view *view, const void *const *pointers, int count, int sm_count,
                                           const int blocks_per_sm[2]);
/* The most pieces per channel of any plan for this view, given the most blocks per SM of the reduction's
 * element-wide [0] and 16-byte [1] kernels over their variants: the launch picks its vector width from the
 * pointers' alignment and its variant from the epilogue, which a workspace size query cannot know. */
int64_t bnk__plan_parts_bound(const bnk_view *view, int sm_count, const int blocks_per_sm[2]);

/* Workspace of the statistics: per-channel arrays, then per-piece partials; 256-byte aligned arrays.
 * The per-channel part is the same for every plan of a view, so the normalize pass can find it. */
typedef struct bnk_stats_workspace {
  float *shift;  /* K[c]: one sample of the channel, subtracted before accumulating (exactness) */
  float *dmean;  /* mean[c] - K[c] */
  float *invstd; /* bnk_invstd_of(var[c], eps) */
  float *count;  /* [parts][c] */
  float *mean;   /* [parts][c], relative to shift */
  float *m2;     /* [parts][c] */
  /* channels-last: each band's merged pieces (bnk_merge_bands), [BNK_MERGE_BANDS][c] */
  float *band_count;
  float *band_mean;
  float *band_m2;
} bnk_stats_workspace;

size_t bnk__stats_workspace_bytes(const bnk_view *view, int64_t parts);
bnk_stats_workspace bnk__stats_workspace_carve(void *base, const bnk_view *view, int64_t parts);

/* Running-statistics update of the training forward. */
typedef struct bnk_running_update {
  float *running_mean; /* NULL: not tracked */
  float *running_var;
  int64_t *num_batches_tracked; /* incremented when not NULL */
  float momentum;               /* weight of the batch; ignored when cumulative */
  int cumulative;               /* weight 1 / num_batches_tracked */
} bnk_running_update;

/* Batch statistics of x: stats kernel (pieces, merged in it when `counters` is not NULL, see
 * bnk_merge_groups), else stats kernel then merge kernel. Fills ws.shift/dmean/invstd, save_mean/save_invstd
 * when not NULL, and applies `running`. rank_partials, when not NULL, receives the batch's count[c], mean[c],
 * m2[c] (3 x C doubles) for merging across ranks. */
cudaError_t bnk__launch_batch_stats(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                    bnk_stats_workspace ws, float eps, bnk_running_update running, float *save_mean,
                                    float *save_invstd, double *rank_partials, unsigned *counters, cudaStream_t stream);

/* Per-channel parameters of the elementwise pass
 *   y = ((x - shift[c]) - dmean[c]) * invstd[c] * gamma[c] + beta[c],
 * where invstd[c] = bnk_invstd_of(variance[c], eps) when `variance` is given instead of `invstd`. */
typedef struct bnk_normalize_params {
  const float *shift;  /* NULL: 0 */
  const float *dmean;  /* NULL: 0 */
  const float *invstd; /* exactly one of invstd and variance is not NULL */
  const float *variance;
  float eps;
  const float *gamma; /* NULL: 1 */
  const float *beta;  /* NULL: 0 */
} bnk_normalize_params;

/* Workspace of the backward: per-channel coefficients of the dx pass, then per-piece partial sums;
 * 256-byte aligned arrays. */
typedef struct bnk_backward_workspace {
  float *dy_scale; /* dx = dy * dy_scale[c] + (x - mean[c]) * xmu_scale[c] + bias[c] */
  float *xmu_scale;
  float *bias;
  float *sum_dy;     /* [parts][c] */
  float *sum_dy_xmu; /* [parts][c]: sum of dy * (x - mean[c]) */
  /* channels-last: each band's merged pieces (bnk_merge_bands), [BNK_MERGE_BANDS][c] */
  float *band_sum_dy;
  float *band_sum_dy_xmu;
} bnk_backward_workspace;

size_t bnk__backward_workspace_bytes(const bnk_view *view, int64_t parts);
bnk_backward_workspace bnk__backward_workspace_carve(void *base, const bnk_view *view, int64_t parts);

/* The per-channel statistics the backward differentiates through: the batch statistics that the training
 * forward saved, or the running statistics (frozen) of the inference forward. */
typedef struct bnk_backward_stats {
  const float *mean;   /* save_mean or running_mean */
  const float *invstd; /* save_invstd; NULL: bnk_invstd_of(variance[c], eps) */
  const float *variance;
  float eps;
  const float *gamma; /* NULL: 1 */
} bnk_backward_stats;

/* The backward's per-channel sums over (x, dy): reduction kernel (pieces of `plan`, merged in it when
 * `counters` is not NULL, see bnk_merge_groups), else reduction kernel then merge kernel. The merge writes dbeta =
 * sum(dy) and dgamma = invstd * sum(dy * (x - mean)) when not NULL, and the dx coefficients of the training backward to
 * ws. x may be NULL when dgamma is NULL. */
cudaError_t bnk__launch_backward_reduce(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                        const void *dy, bnk_backward_stats stats, bnk_backward_workspace ws,
                                        float *dgamma, float *dbeta, unsigned *counters, cudaStream_t stream);

/* The elementwise pass writing dx, on `plan` (of x, dy and dx). With `coefficients` (training), dx = dy *
 * dy_scale[c] + (x - mean[c]) * xmu_scale[c] + bias[c] from bnk__launch_backward_reduce; with NULL (frozen
 * statistics), dx = dy * gamma[c] * invstd[c] and x must be NULL, so that it is not read. dx may equal dy. */
cudaError_t bnk__launch_backward_dx(const bnk_view *view, const bnk_elementwise_plan *plan, const void *x,
                                    const void *dy, void *dx, bnk_backward_stats stats,
                                    const bnk_backward_workspace *coefficients, cudaStream_t stream);

/* ---- fused epilogues and folding (kernels/normalize.cu, kernels/backward.cu, kernels/fold.cu) ---- */

/* Bytes of the ReLU bit mask of a tensor of `elements` elements: bit i of byte i / 8 is element i in memory
 * order, in whole 32-bit words (the forward writes whole words). */
static inline size_t bnk_mask_bytes(int64_t elements) { return (size_t)((elements + 31) / 32) * 4; }

/* The epilogue of the normalize pass: kind (a bnk_epilogue_kind) gives y = bn(x), relu(bn(x)) or
 * relu(bn(x) + z). When mask is not NULL, its bit i becomes (y_i > 0) of y as stored, and the padding bits of
 * its last word 0. */
typedef struct bnk_epilogue_args {
  int kind;
  const void *z;  /* ADD_RELU: the residual, x's view and dtype */
  uint32_t *mask; /* 4-byte aligned, bnk_mask_bytes() long, or NULL */
} bnk_epilogue_args;

/* The elementwise pass with bnk_normalize_params on `plan` (of x, y and z), through a fused epilogue (NULL:
 * the plain pass). The mask is zeroed first only when plan->mask_words is 0. */
cudaError_t bnk__launch_normalize_ex(const bnk_view *view, const bnk_elementwise_plan *plan, const void *x, void *y,
                                     bnk_normalize_params params, const bnk_epilogue_args *epilogue,
                                     cudaStream_t stream);

/* Where the backward through a ReLU epilogue finds which elements the ReLU passed (y > 0). */
typedef enum bnk_grad_source { BNK_GRAD_PLAIN = 0, BNK_GRAD_FROM_Y = 1, BNK_GRAD_FROM_MASK = 2 } bnk_grad_source;

/* The backward's view of an epilogue: every pass reads g = (y > 0 ? dy : 0) in place of dy, and the first
 * pass over the tensor writes g to dz when dz is not NULL (the gradient of the residual of ADD_RELU). */
typedef struct bnk_grad_epilogue_args {
  int source;           /* bnk_grad_source */
  const void *y;        /* FROM_Y: the forward's output */
  const uint32_t *mask; /* FROM_MASK: the forward's mask */
  void *dz;             /* NULL: not written */
} bnk_grad_epilogue_args;

/* bnk__launch_backward_reduce and bnk__launch_backward_dx through an epilogue (NULL: plain). The dx pass may
 * have dx NULL when it only writes dz. */
cudaError_t bnk__launch_backward_reduce_ex(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                           const void *dy, bnk_backward_stats stats, bnk_backward_workspace ws,
                                           float *dgamma, float *dbeta, const bnk_grad_epilogue_args *epilogue,
                                           unsigned *counters, cudaStream_t stream);
cudaError_t bnk__launch_backward_dx_ex(const bnk_view *view, const bnk_elementwise_plan *plan, const void *x,
                                       const void *dy, void *dx, bnk_backward_stats stats,
                                       const bnk_backward_workspace *coefficients,
                                       const bnk_grad_epilogue_args *epilogue, cudaStream_t stream);

/* A batch normalization with frozen statistics, per channel (every array of length C, float32). */
typedef struct bnk_frozen_bn {
  const float *gamma; /* NULL: 1 */
  const float *beta;  /* NULL: 0 */
  const float *mean;
  const float *var;
  float eps;
} bnk_frozen_bn;

/* scale[c] = gamma[c] * bnk_invstd_of(var[c], eps), shift[c] = beta[c] - mean[c] * scale[c]. */
cudaError_t bnk__launch_inference_params(int64_t c, bnk_frozen_bn bn, float *scale, float *shift, cudaStream_t stream);

/* Folds bn into the layer before it, whose weight is `rows` output channels of row_elements contiguous
 * values each (dtype): weight_out[k][i] = weight_in[k][i] * scale[k] and bias_out[k] = (bias_in[k] -
 * mean[k]) * scale[k] + beta[k], in fp32, bias_in NULL meaning 0 and bias_out of bias_dtype. In place is
 * allowed (each element is read and written by the same thread). `blocks` of BNK_STREAM_THREADS walk the
 * weight (bnk__plan_grid_stride_blocks). */
cudaError_t bnk__launch_fold(int64_t rows, int64_t row_elements, int dtype, const void *weight_in, void *weight_out,
                             const float *bias_in, void *bias_out, int bias_dtype, bnk_frozen_bn bn, int64_t blocks,
                             cudaStream_t stream);

/* ---- the persistent training forward (kernels/persistent.cu, host/persistent.c) ---- */

/* Vectors of x that each thread of the persistent forward keeps in registers across its grid barriers. */
#define BNK_PERSISTENT_CACHE 8

/* Vectors of the gated gradient and as many of x - mean that each thread of the persistent backward keeps in
 * registers across its grid barriers: the same registers as the forward's cache of x. */
#define BNK_PERSISTENT_BACKWARD_CACHE 4

/* Vectors per thread of a team kernel (below) of a persistent kernel that caches `cache` vectors of `vec`
 * elements: the element-wide kernels (vec 1) cache 4 x as many, in the registers that a 16-byte fp32 vector
 * takes (their SASS has them to spare), so that the channels of ResNet-50's 7 x 7 layers at batch 32 (1568
 * elements, read element by element: 49 is odd) fit a block of the backward too. */
#define BNK_PERSISTENT_TEAM_CACHE(cache, vec) ((vec) == 1 ? 4 * (cache) : (cache))

/* Which threads of a channels-first persistent kernel own a channel whole, given its `vec`-wide access and
 * `cache` vectors per thread (BNK_PERSISTENT_TEAM_CACHE of them in a team): a warp when the channel fits the
 * warp's cache (32), else the block when it fits the block's (BNK_STREAM_THREADS), else none (0): the channel
 * is cut into pieces over several blocks, which meet at grid barriers. Channels-last kernels always cut (0). A
 * team that owns its channels needs no grid barrier, so its grid is not bounded by co-residency: any C fits. */
static inline int bnk_persistent_team(const bnk_view *view, int vec, int cache) {
  const int64_t m = view->n * view->s;
  const int64_t team_vectors = (int64_t)BNK_PERSISTENT_TEAM_CACHE(cache, vec) * vec;
  if (view->channels_last) return 0;
  if (m <= 32 * team_vectors) return 32;
  return m <= BNK_STREAM_THREADS * team_vectors ? BNK_STREAM_THREADS : 0;
}

/* The second cache level of the persistent kernels that cut channels into pieces (not the teams): each thread
 * caches up to `shared_depth` further vectors (rows) in dynamic shared memory, laid out [depth][thread], where
 * the registers' cache is too small for the tensor. A block takes at most BNK_PERSISTENT_SHARED_LIMIT bytes of
 * it, so that two blocks per SM still fit an sm_90 SM's 228 KiB beside the kernels' static shared memory (at
 * most 18.1 KiB, the 16-bit channels-last tile reduce) and the 1 KiB the runtime reserves per block: the
 * kernels are register-bound at 2 blocks per SM, and a deeper cache at 1 block would hold less. */
#define BNK_PERSISTENT_SHARED_LIMIT (92 * 1024)

/* Bytes a thread's shared slot takes per cached vector of `vec` elements of `element_bytes` each: the forward
 * keeps what it keeps in registers (cached_vector: x - K as floats, or 16 raw bytes of a 16-bit vector), the
 * backward g and x as stored (each exact in the storage type; x - mean is computed again from x, to the same
 * bits). */
static inline int bnk_persistent_slot_bytes(int backward, int element_bytes, int vec) {
  return backward ? 2 * element_bytes * vec : vec == 1 ? 4 : 16;
}

/* The deepest second level within BNK_PERSISTENT_SHARED_LIMIT: 23 vectors for the forward's 16-byte ones, 92
 * for its elements; 11 for the backward's 16-byte vectors, 46 for fp32 elements and 92 for 16-bit ones. */
static inline int bnk_persistent_max_shared_depth(int backward, int element_bytes, int vec) {
  return BNK_PERSISTENT_SHARED_LIMIT / (BNK_STREAM_THREADS * bnk_persistent_slot_bytes(backward, element_bytes, vec));
}

/* Dynamic shared memory per block of a persistent kernel with a second level `depth` deep. */
static inline size_t bnk_persistent_shared_bytes(int backward, int element_bytes, int vec, int depth) {
  return (size_t)depth * BNK_STREAM_THREADS * (size_t)bnk_persistent_slot_bytes(backward, element_bytes, vec);
}

/* The plan of a persistent kernel: bnk__plan_reduce's tiling with every thread's share of a piece at most
 * `cache` + `shared_depth` vectors (channels-first) or rows (channels-last), the first `cache` in registers, the
 * rest in shared memory; BNK_STREAM_THREADS per block. Returns whether its blocks fit the co-resident grid,
 * blocks_per_sm x sm_count. With a team (bnk_persistent_team, which `cache` alone decides), parts is 1, the
 * shared depth 0, and blocks is a grid-stride grid over the channels, at most the co-resident grid and at
 * least 1 block: it always fits. */
int bnk__plan_persistent(const bnk_view *view, int vec, int cache, int shared_depth, int sm_count, int blocks_per_sm,
                         bnk_reduce_plan *plan);

/* Blocks of the persistent forward kernel for this dtype, layout, vector width, epilogue kind, team
 * (bnk_persistent_team) and shared depth that one SM holds at once (cudaOccupancyMaxActiveBlocksPerMultiprocessor
 * with bnk_persistent_shared_bytes of dynamic shared memory). */
cudaError_t bnk__persistent_forward_occupancy(const bnk_view *view, int vec, int epilogue, int team, int shared_depth,
                                              int *blocks_per_sm);

/* The training forward in one cooperative launch of plan->blocks blocks: the work of bnk__launch_batch_stats
 * (ws, running, save_mean, save_invstd) and of bnk__launch_normalize_ex with the batch statistics, x read once.
 * The launcher does not clear the mask: the kernel does, before its grid barrier (or, with a team, assigns every
 * bit). */
cudaError_t bnk__launch_persistent_forward(const bnk_view *view, const bnk_reduce_plan *plan, const void *x, void *y,
                                           bnk_stats_workspace ws, float eps, bnk_running_update running,
                                           float *save_mean, float *save_invstd, const float *gamma, const float *beta,
                                           const bnk_epilogue_args *epilogue, cudaStream_t stream);

/* ---- the persistent backward (kernels/persistent_backward.cu, host/persistent.c) ---- */

/* Blocks of the persistent backward kernel for this dtype, layout, vector width, gradient source (a
 * bnk_grad_source), team (bnk_persistent_team) and shared depth that one SM holds at once
 * (cudaOccupancyMaxActiveBlocksPerMultiprocessor with bnk_persistent_shared_bytes of dynamic shared memory). */
cudaError_t bnk__persistent_backward_occupancy(const bnk_view *view, int vec, int source, int team, int shared_depth,
                                               int *blocks_per_sm);

/* The backward in one launch of plan->blocks blocks, cooperative unless a team owns each channel (bnk__plan_persistent
 * with BNK_PERSISTENT_BACKWARD_CACHE): the work of bnk__launch_backward_reduce_ex (ws, dgamma, dbeta, dz through the
 * epilogue) and of bnk__launch_backward_dx_ex, x and dy read once. Frozen statistics (stats of the running
 * statistics): dx = g gamma invstd, and x may be NULL when dgamma is. dx may be NULL (not written) or dy. */
cudaError_t bnk__launch_persistent_backward(const bnk_view *view, const bnk_reduce_plan *plan, const void *x,
                                            const void *dy, void *dx, bnk_backward_stats stats, int frozen,
                                            bnk_backward_workspace ws, float *dgamma, float *dbeta,
                                            const bnk_grad_epilogue_args *epilogue, cudaStream_t stream);

/* ---- synchronized batch normalization (kernels/sync.cu, kernels/backward.cu) ---- */

/* Merges `ranks` partial triples laid out rank-major ([rank][count | mean | m2][c], doubles) in rank order
 * into mean_out/invstd_out, applies `running` with the total count, and then counts the batch in
 * running.num_batches_tracked when not NULL. */
cudaError_t bnk__launch_merge_ranks(int64_t c, int ranks, const double *gathered, float eps, bnk_running_update running,
                                    float *mean_out, float *invstd_out, cudaStream_t stream);
/* *destination = value, in stream order (graph-capturable, unlike a copy from host memory). */
cudaError_t bnk__launch_store_value(float *destination, float value, cudaStream_t stream);
/* *num_batches_tracked += 1, in stream order: how the training forward counts an empty batch. */
cudaError_t bnk__launch_count_batch(int64_t *num_batches_tracked, cudaStream_t stream);
/* The dgamma, dbeta and dx coefficients of the training backward from sums added over every rank:
 * sums = [sum dy (C) | sum dy * xhat (C) | M]. */
cudaError_t bnk__launch_backward_gradients_from_sums(int64_t c, const float *sums, bnk_backward_stats stats,
                                                     bnk_backward_workspace ws, float *dgamma, float *dbeta,
                                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
