// Warp and block reductions of Welford triples and of plain sums.
//
// Every reduction here is deterministic: values are combined along a fixed tree (lanes, then warps, then
// pieces in index order), never with floating-point atomics, so the same inputs give bitwise the same
// result whatever order the hardware (or the emulation's scheduler) runs the threads in.
#pragma once

#include "kernels/common.cuh"

// count, mean and M2 (sum of squared deviations from the mean) of a set of values.
struct bnk_welford {
  float count;
  float mean;
  float m2;
};

static __device__ __forceinline__ bnk_welford bnk_welford_empty() {
  bnk_welford w;
  w.count = 0.0f;
  w.mean = 0.0f;
  w.m2 = 0.0f;
  return w;
}

// Chan, Golub & LeVeque's merge: each side keeps the error of its own mean, so long sums never cancel.
static __device__ __forceinline__ bnk_welford bnk_combine(bnk_welford a, bnk_welford b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  bnk_welford r;
  r.count = a.count + b.count;
  const float delta = b.mean - a.mean;
  const float weight_b = b.count / r.count;
  r.mean = a.mean + delta * weight_b;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * weight_b;
  return r;
}

static __device__ __forceinline__ float bnk_combine(float a, float b) { return a + b; }

static __device__ __forceinline__ float2 bnk_combine(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }

// The triple of the first `rows` rows of v (U rows of V values), by two passes over registers, so that
// folding them into a running triple costs one division per chunk instead of one per value. With rows a
// compile-time U (the full chunks of a loop, after inlining), the row predicates and 1 / count fold away.
template <int U, int V>
static __device__ __forceinline__ bnk_welford bnk_welford_of(const float (&v)[U][V], int rows) {
  float sum = 0.0f;
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (u < rows) sum += v[u][i];
  bnk_welford chunk;
  chunk.count = (float)(rows * V);
  chunk.mean = sum * (1.0f / chunk.count);
  chunk.m2 = 0.0f;
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float d = v[u][i] - chunk.mean;
      if (u < rows) chunk.m2 = fmaf(d, d, chunk.m2);
    }
  return chunk;
}

// A thread's running triple, with the rounding error of its mean carried along (Kahan). One thread folds
// up to thousands of triples into one mean when channels are long; every update rounds the mean, and
// uncompensated those errors add up, to about 1e-5 of the standard deviation over the ~10^3 updates per
// thread of a 2^31-element channel. Compensated, the mean stays within a few ulps.
struct bnk_welford_run {
  bnk_welford w;
  float mean_error;  // by how much w.mean exceeds the exact running mean
};

static __device__ __forceinline__ bnk_welford_run bnk_run_empty() {
  bnk_welford_run run;
  run.w = bnk_welford_empty();
  run.mean_error = 0.0f;
  return run;
}

// Chan's merge of b into the run (an empty run takes b as it is).
static __device__ __forceinline__ void bnk_run_add(bnk_welford_run &run, bnk_welford b) {
  if (b.count == 0.0f) return;
  const float count = run.w.count + b.count;
  const float delta = b.mean - run.w.mean;
  const float weight_b = b.count / count;
  const float step = delta * weight_b - run.mean_error;
  const float mean = run.w.mean + step;
  run.mean_error = (mean - run.w.mean) - step;
  run.w.m2 += b.m2 + delta * delta * run.w.count * weight_b;
  run.w.mean = mean;
  run.w.count = count;
}

static __device__ __forceinline__ bnk_welford bnk_run_result(const bnk_welford_run &run) {
  bnk_welford w = run.w;
  w.mean -= run.mean_error;
  return w;
}

// ---- channels-first: a thread's walk over the runs of one channel, without a division per vector ----
// A channel is N runs of S contiguous elements, C x S apart. When C x S is a multiple of V, every run of
// channel c starts at the same misalignment (c S) mod V, so every one of its runs is a head of h elements
// up to a 16-byte boundary, a body of b whole vectors and a tail of t < V elements: the same h, b and t
// in every run, and b either S / V or S / V - 1 (bnk_run_split). The bodies' vectors, numbered run by run,
// are walked in 16-byte loads: a thread visits vectors j, j + step, j + 2 step, ... (step = the block's
// threads), keeping the element offset of its vector and the vectors left in its run, and moving both by
// constants. The head and tail elements ("peeled") are read one at a time, a run's by one thread
// (bnk_peel_walk). With S a multiple of V (or V = 1) nothing is peeled.

// Counts of vectors left in a run are capped here: a piece (< 2^24 values) never walks that far.
#define BNK_RUN_LEFT_CAP ((int32_t)1 << 30)

struct bnk_run_walk {
  bnk_fastdiv run_vectors_div;  // vectors per run: for a thread's start only
  int64_t run_stride;           // elements from a run to the next of the same channel: C x S
  int64_t step_offset;          // elements one step moves the offset within a run
  int64_t wrap_offset;          // elements more when the step crosses into the next run
  int32_t step_left;            // vectors one step takes off the vectors left, modulo a run
  int32_t run_vectors;          // vectors per run, capped
};

struct bnk_run_cursor {
  int64_t offset;  // of the vector, in elements from the tensor's start
  int32_t left;    // vectors from it to the end of its run, capped
};

// The walk of runs of `run_vectors` vectors of `vec` elements, run_stride elements apart. A walk of
// empty runs (no body) is never stepped; it is made as one of 1 vector so that nothing divides by 0.
static inline bnk_run_walk bnk_run_walk_make(int64_t run_stride, int64_t run_vectors, int vec, int step) {
  if (run_vectors < 1) run_vectors = 1;
  bnk_run_walk w;
  w.run_vectors_div = bnk_fastdiv_make((uint64_t)run_vectors);
  w.run_stride = run_stride;
  w.step_offset = (step / run_vectors) * w.run_stride + (step % run_vectors) * vec;
  w.wrap_offset = w.run_stride - run_vectors * vec;
  w.step_left = (int32_t)(step % run_vectors);
  w.run_vectors = (int32_t)(run_vectors < BNK_RUN_LEFT_CAP ? run_vectors : BNK_RUN_LEFT_CAP);
  return w;
}

// The cursor at vector `vector` of the channel whose first body element is at `channel_offset`.
template <int V>
static __device__ __forceinline__ bnk_run_cursor bnk_run_cursor_at(const bnk_run_walk &w, int64_t channel_offset,
                                                                   int64_t vector) {
  const int64_t run = (int64_t)bnk_div((uint64_t)vector, w.run_vectors_div);
  const int64_t within = vector - run * (int64_t)w.run_vectors_div.divisor;
  const int64_t left = (int64_t)w.run_vectors_div.divisor - within;
  bnk_run_cursor cursor;
  cursor.offset = channel_offset + run * w.run_stride + within * V;
  cursor.left = (int32_t)(left < BNK_RUN_LEFT_CAP ? left : BNK_RUN_LEFT_CAP);
  return cursor;
}

static __device__ __forceinline__ void bnk_run_cursor_step(bnk_run_cursor &cursor, const bnk_run_walk &w) {
  cursor.offset += w.step_offset;
  cursor.left -= w.step_left;
  if (cursor.left <= 0) {
    cursor.left += w.run_vectors;
    cursor.offset += w.wrap_offset;
  }
}

// What the channels-first reductions walk, made on the host for a view, a vector width, the block's
// threads and the pieces per channel. The pieces cut each channel's body vectors into equal shares, in
// multiples of 8 elements (so that with S a multiple of V they are the pieces of plan.chunk); the peeled
// elements of run r go to the thread r mod (threads x parts) of the channel's blocks.
struct bnk_channel_runs {
  bnk_run_walk body[2];      // [k]: the walk of runs of S / V - k vectors
  int64_t piece_vectors[2];  // [k]: body vectors per piece
  int64_t runs;              // N: runs per channel
  int32_t remainder;         // S mod V
};

static inline bnk_channel_runs bnk_channel_runs_make(int64_t n, int64_t c, int64_t s, int vec, int threads,
                                                     int64_t parts) {
  bnk_channel_runs r;
  const int64_t whole = s / vec;
  const int64_t granule = 8 / vec;  // vectors of 8 elements: a multiple of every width
  for (int k = 0; k < 2; ++k) {
    const int64_t vectors = whole - k > 0 ? whole - k : 0;
    r.body[k] = bnk_run_walk_make(c * s, vectors, vec, threads);
    r.piece_vectors[k] = (n * vectors + granule * parts - 1) / (granule * parts) * granule;
  }
  r.runs = n;
  r.remainder = (int32_t)(s % vec);
  return r;
}

// How the runs of one channel split: head elements, body vectors, tail elements, and which body walk.
struct bnk_run_split {
  int64_t body;  // S may pass 2^31
  int32_t head;
  int32_t tail;
  int32_t kind;  // index into bnk_channel_runs::body and piece_vectors
};

// Needs C x S a multiple of V and S >= V (the host's vector choice makes it so), so that the head, the
// elements up to the channel's first 16-byte boundary, lies inside the run.
template <int V>
static __device__ __forceinline__ bnk_run_split bnk_run_split_of(const bnk_channel_runs &runs, int64_t channel,
                                                                 int64_t s) {
  bnk_run_split split;
  split.head = (int32_t)((V - (channel * s) % V) % V);
  split.kind = split.head > runs.remainder ? 1 : 0;
  split.body = s / V - split.kind;
  split.tail = (int32_t)(s - split.head - split.body * V);
  return split;
}

// The walk of the body of the split's channel (a selection, not an indexed load, so that the kernel
// parameters are not copied to local memory).
static __device__ __forceinline__ bnk_run_walk bnk_body_walk(const bnk_channel_runs &runs, const bnk_run_split &split) {
  return split.kind == 0 ? runs.body[0] : runs.body[1];
}

// The peeled elements of runs first, first + step, ... of the channel whose first element is at
// channel_offset: element(slot, offset) for each of a run's head elements (slots [0, V - 1)) and tail
// elements (slots [V - 1, 2 V - 2)), then run_done() once per run. bnk_peeled_slot says which slots a
// run fills.
template <int V, typename Element, typename RunDone>
static __device__ __forceinline__ void bnk_peel_walk(const bnk_channel_runs &runs, const bnk_run_split &split,
                                                     int64_t channel_offset, int64_t run_stride, int64_t first,
                                                     int64_t step, Element &&element, RunDone &&run_done) {
  if (V == 1 || split.head + split.tail == 0) return;
  const int64_t tail_start = split.head + split.body * V;
  int64_t offset = channel_offset + first * run_stride;
  const int64_t offset_step = step * run_stride;
  for (int64_t r = first; r < runs.runs; r += step, offset += offset_step) {
#pragma unroll
    for (int j = 0; j < V - 1; ++j)
      if (j < split.head) element(j, offset + j);
#pragma unroll
    for (int j = 0; j < V - 1; ++j)
      if (j < split.tail) element(V - 1 + j, offset + tail_start + j);
    run_done();
  }
}

template <int V>
static __device__ __forceinline__ bool bnk_peeled_slot(const bnk_run_split &split, int slot) {
  return slot < V - 1 ? slot < split.head : slot - (V - 1) < split.tail;
}

// ---- channels-last: V channels of one thread, which has seen the same rows of each ----

// V channels' triples sharing one count.
template <int V>
struct bnk_welford_vec {
  float count;
  float mean[V];
  float m2[V];
};

// V channels' running triples with their means' rounding errors (Kahan, as bnk_welford_run).
template <int V>
struct bnk_welford_vec_run {
  bnk_welford_vec<V> w;
  float mean_error[V];
};

// The backward's two sums of V channels: sum dy and sum dy * (x - mean).
template <int V>
struct bnk_sums_vec {
  float dy[V];
  float dy_xmu[V];
};

template <int V>
static __device__ __forceinline__ bnk_welford_vec<V> bnk_welford_vec_empty() {
  bnk_welford_vec<V> w;
  w.count = 0.0f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    w.mean[i] = 0.0f;
    w.m2[i] = 0.0f;
  }
  return w;
}

template <int V>
static __device__ __forceinline__ bnk_welford_vec_run<V> bnk_run_vec_empty() {
  bnk_welford_vec_run<V> run;
  run.w = bnk_welford_vec_empty<V>();
#pragma unroll
  for (int i = 0; i < V; ++i) run.mean_error[i] = 0.0f;
  return run;
}

template <int V>
static __device__ __forceinline__ bnk_sums_vec<V> bnk_sums_vec_empty() {
  bnk_sums_vec<V> s;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    s.dy[i] = 0.0f;
    s.dy_xmu[i] = 0.0f;
  }
  return s;
}

// Chan's merge of every channel, with the one division that the shared count allows.
template <int V>
static __device__ __forceinline__ bnk_welford_vec<V> bnk_combine(const bnk_welford_vec<V> &a,
                                                                 const bnk_welford_vec<V> &b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  bnk_welford_vec<V> r;
  r.count = a.count + b.count;
  const float weight_b = b.count / r.count;
  const float cross = a.count * weight_b;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const float delta = b.mean[i] - a.mean[i];
    r.mean[i] = fmaf(delta, weight_b, a.mean[i]);
    r.m2[i] = fmaf(delta * delta, cross, a.m2[i] + b.m2[i]);
  }
  return r;
}

template <int V>
static __device__ __forceinline__ bnk_sums_vec<V> bnk_combine(const bnk_sums_vec<V> &a, const bnk_sums_vec<V> &b) {
  bnk_sums_vec<V> r;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    r.dy[i] = a.dy[i] + b.dy[i];
    r.dy_xmu[i] = a.dy_xmu[i] + b.dy_xmu[i];
  }
  return r;
}

// Channel i's mean and M2 over the first `rows` (at least 1) rows of v (U rows of V channels), by two passes over
// registers. With rows a compile-time U (full chunks, after inlining) the predicates fold away.
template <int U, int V>
static __device__ __forceinline__ void bnk_chunk_channel(const float (&v)[U][V], int rows, int i, float inv_count,
                                                         float *mean, float *m2) {
  // From the first row, not from 0.0f + it: nvcc keeps that addition (it would turn -0 into +0).
  float sum = v[0][i];
#pragma unroll
  for (int u = 1; u < U; ++u)
    if (u < rows) sum += v[u][i];
  *mean = sum * inv_count;
  float squares = 0.0f;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const float d = v[u][i] - *mean;
    if (u < rows) squares = fmaf(d, d, squares);
  }
  *m2 = squares;
}

// One step of a run: the weight of a chunk of `count` values, with the one division that all V channels share.
typedef struct bnk_run_step {
  float total, weight, cross;
} bnk_run_step;

template <int V>
static __device__ __forceinline__ bnk_run_step bnk_run_step_for(const bnk_welford_vec_run<V> &run, float count) {
  bnk_run_step step;
  step.total = run.w.count + count;
  step.weight = count / step.total;
  step.cross = run.w.count * step.weight;
  return step;
}

// Chan's merge of channel i's chunk (mean, m2) into the run, the mean compensated (Kahan).
template <int V>
static __device__ __forceinline__ void bnk_run_merge_channel(bnk_welford_vec_run<V> &run, const bnk_run_step &step,
                                                             int i, float mean, float m2) {
  const float delta = mean - run.w.mean[i];
  const float change = fmaf(delta, step.weight, -run.mean_error[i]);
  const float merged = run.w.mean[i] + change;
  run.mean_error[i] = (merged - run.w.mean[i]) - change;
  run.w.m2[i] = fmaf(delta * delta, step.cross, run.w.m2[i] + m2);
  run.w.mean[i] = merged;
}

// Folds the first `rows` (at least 1) rows of v (U rows of V channels, shifted) into the run: each channel's
// chunk, then its merge, channel by channel (which keeps few values live: the persistent kernels sit at 128
// registers), with one division for all V channels instead of one per element.
template <int U, int V>
static __device__ __forceinline__ void bnk_run_add_rows(bnk_welford_vec_run<V> &run, const float (&v)[U][V], int rows) {
  const bnk_run_step step = bnk_run_step_for(run, (float)rows);
  const float inv_count = 1.0f / (float)rows;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    float mean, m2;
    bnk_chunk_channel<U, V>(v, rows, i, inv_count, &mean, &m2);
    bnk_run_merge_channel(run, step, i, mean, m2);
  }
  run.w.count = step.total;
}

// The chunk of the first `rows` rows of v as a whole, for callers that pair chunks before the run takes them.
template <int U, int V>
static __device__ __forceinline__ bnk_welford_vec<V> bnk_chunk_of_rows(const float (&v)[U][V], int rows) {
  bnk_welford_vec<V> chunk;
  chunk.count = (float)rows;
  const float inv_count = 1.0f / chunk.count;
#pragma unroll
  for (int i = 0; i < V; ++i) bnk_chunk_channel<U, V>(v, rows, i, inv_count, &chunk.mean[i], &chunk.m2[i]);
  return chunk;
}

// Chan's merge of two chunks of the same count, which needs no division: the run then takes one merge (and
// its division) per two chunks.
template <int V>
static __device__ __forceinline__ bnk_welford_vec<V> bnk_chunk_pair(const bnk_welford_vec<V> &a,
                                                                    const bnk_welford_vec<V> &b) {
  bnk_welford_vec<V> r;
  r.count = a.count + b.count;
  const float cross = a.count * 0.5f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const float delta = b.mean[i] - a.mean[i];
    r.mean[i] = fmaf(delta, 0.5f, a.mean[i]);
    r.m2[i] = fmaf(delta * delta, cross, a.m2[i] + b.m2[i]);
  }
  return r;
}

// Folds a chunk into the run of the values less `shift` (V of them). Only the chunk's mean is shifted, so a
// caller whose values sum exactly within a chunk (16-bit storage: 8 or 11 significant bits) passes them
// unshifted with its K and saves a subtraction per element; a caller that shifted them passes NULL.
template <int V>
static __device__ __forceinline__ void bnk_run_add_chunk(bnk_welford_vec_run<V> &run, const bnk_welford_vec<V> &chunk,
                                                         const float *shift) {
  const bnk_run_step step = bnk_run_step_for(run, chunk.count);
#pragma unroll
  for (int i = 0; i < V; ++i)
    bnk_run_merge_channel(run, step, i, shift != NULL ? chunk.mean[i] - shift[i] : chunk.mean[i], chunk.m2[i]);
  run.w.count = step.total;
}

template <int V>
static __device__ __forceinline__ bnk_welford_vec<V> bnk_run_result(const bnk_welford_vec_run<V> &run) {
  bnk_welford_vec<V> w = run.w;
#pragma unroll
  for (int i = 0; i < V; ++i) w.mean[i] -= run.mean_error[i];
  return w;
}

// A struct of floats seen as its fields, for the generic shuffle and shared-memory moves below.
template <typename S>
struct bnk_fields {
  static constexpr int count = (int)(sizeof(S) / sizeof(float));
};

template <typename S>
static __device__ __forceinline__ S bnk_shfl_down_fields(unsigned mask, const S &v, int offset) {
  S r;
  const float *in = reinterpret_cast<const float *>(&v);
  float *out = reinterpret_cast<float *>(&r);
#pragma unroll
  for (int k = 0; k < bnk_fields<S>::count; ++k) out[k] = __shfl_down_sync(mask, in[k], offset);
  return r;
}

// shared holds field k of slot j at k * slots + j: consecutive slots are consecutive words, so the threads
// of a warp, which move consecutive slots, hit distinct banks.
template <typename S>
static __device__ __forceinline__ void bnk_store_fields(float *shared, int slots, int slot, const S &v) {
  const float *in = reinterpret_cast<const float *>(&v);
#pragma unroll
  for (int k = 0; k < bnk_fields<S>::count; ++k) shared[k * slots + slot] = in[k];
}

template <typename S>
static __device__ __forceinline__ S bnk_load_fields(const float *shared, int slots, int slot) {
  S r;
  float *out = reinterpret_cast<float *>(&r);
#pragma unroll
  for (int k = 0; k < bnk_fields<S>::count; ++k) out[k] = shared[k * slots + slot];
  return r;
}

// Merges the states of a channels-last tile's tile_y rows of threads (thread = ty * tile_x + tx) into
// threads [0, tile_x), along a fixed tree: when tile_x < 32 (a power of two, as the plan makes it), the
// 32 / tile_x rows a warp holds by shuffles, then the rows left (one per warp, or tile_y when tile_x is a
// multiple of 32) through shared memory in the conflict-free [field][slot] layout. Every thread of the
// block calls it, with blockDim.x == tile_x * tile_y a multiple of 32; shared holds
// bnk_fields<S>::count * blockDim.x floats. Other threads return partial states.
template <typename S>
static __device__ __forceinline__ S bnk_tile_reduce(S v, float *shared, int tile_x, int tile_y) {
  const int thread = (int)threadIdx.x;
  const int lane = thread % BNK_WARP;
  int rows = tile_y, row = thread / tile_x;
  if (tile_x < BNK_WARP) {
    for (int offset = BNK_WARP / 2; offset >= tile_x; offset /= 2)
      v = bnk_combine(v, bnk_shfl_down_fields(BNK_FULL_MASK, v, offset));
    rows = tile_y * tile_x / BNK_WARP;
    row = thread / BNK_WARP;
  }
  if (rows == 1) return v;
  const bool holder = tile_x >= BNK_WARP || lane < tile_x;
  const int slots = rows * tile_x;
  const int slot = row * tile_x + thread % tile_x;
  if (holder) bnk_store_fields(shared, slots, slot, v);
  for (int stride = 1; stride < rows; stride *= 2) {
    __syncthreads();
    if (holder && row % (2 * stride) == 0 && row + stride < rows) {
      v = bnk_combine(v, bnk_load_fields<S>(shared, slots, slot + stride * tile_x));
      bnk_store_fields(shared, slots, slot, v);
    }
  }
  return v;
}

// ---- the merge of a group's pieces by the last of its blocks to finish ----
// A group is what one merge covers: a channel (channels-first) or a tile of channels (channels-last), cut
// into `pieces` pieces, one block each. Each block writes its piece's partials, then counts itself on the
// group's counter; the block that brings the count to `pieces` sees every piece written and merges them in
// index order, exactly as a separate merge kernel would, so the result does not depend on which block that
// is. It puts the counter back to 0, ready for the next call (or graph replay) on the same stream.
//
// The fences are where the CUDA memory model needs them, not where the emulation does (x86 is strongly
// ordered, so the emulation passes without them): plain stores of a block's partials may become visible to
// other SMs after its atomic does, and plain loads of the last block may be satisfied before its atomic.
//  * Every thread that wrote partials fences before the barrier: a gpu-scope fence orders its own stores
//    before everything it does after (release), and the barrier then orders them before thread 0's atomic.
//  * Thread 0 fences again after its atomic when it is last, and every thread of the last block fences
//    after the barrier that tells it so (acquire): the loads of other blocks' partials come after the
//    atomic that observed their counts. The partials are read with plain coherent loads (never .nc).
// Every thread of the block calls it, after writing its partials; it returns the same answer to all.
static __device__ __forceinline__ bool bnk_last_of_group(unsigned *counter, int64_t pieces) {
  __threadfence();
  __syncthreads();
  int last = 0;
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == (unsigned)(pieces - 1);
    if (last) {
      __threadfence();
      // No other block of this call touches the counter again; the next launch sees 0.
      *counter = 0u;
    }
  }
  last = __syncthreads_or(last);
  if (last) __threadfence();
  return last != 0;
}

// ---- the two levels of the channels-last merge (kernels/launchers.h, bnk_merge_band_pieces) ----
// A thread folds a channel's pieces alone, so their loads are issued BNK_MERGE_BATCH at a time ahead of the
// folds, which stay in index order. 4, not 8: the merge is inlined into the reductions, and 8 triples in flight
// (with their addresses) took the statistics kernels from 64 to 106-110 registers, half their resident blocks.
#define BNK_MERGE_BATCH 4

// fold(run, load(p)) for p = first, ..., end - 1 in order.
template <typename S, typename Run, typename Load, typename Fold>
static __device__ __forceinline__ void bnk_fold_in_order(Run &run, int first, int end, Load &&load, Fold &&fold) {
  for (int p = first; p < end; p += BNK_MERGE_BATCH) {
    S v[BNK_MERGE_BATCH] = {};
#pragma unroll
    for (int u = 0; u < BNK_MERGE_BATCH; ++u)
      if (p + u < end) v[u] = load(p + u);
#pragma unroll
    for (int u = 0; u < BNK_MERGE_BATCH; ++u)
      if (p + u < end) fold(run, v[u]);
  }
}

// What a block does after writing piece `part` of tile `tile` of a channels-last reduction (every thread
// calls it): when it completes its band (pieces [band x band_pieces, ...) of the tile), band_merge(band,
// first, end) merges the band's pieces into the band partials, a thread per channel; when that completes the
// tile's bands, tile_merge() merges the band partials in order and finishes the channels. Returns whether it
// ran tile_merge. The counters of the tile are `tile_counters`: one per band, then the tile's.
template <typename BandMerge, typename TileMerge>
static __device__ __forceinline__ bool bnk_merge_tile_if_last(unsigned *tile_counters, int part, int parts,
                                                              int band_pieces, int bands, BandMerge &&band_merge,
                                                              TileMerge &&tile_merge) {
  const int band = part / band_pieces;
  const int first = band * band_pieces, end = min(parts, first + band_pieces);
  if (!bnk_last_of_group(tile_counters + band, end - first)) return false;
  band_merge(band, first, end);
  if (!bnk_last_of_group(tile_counters + bands, bands)) return false;
  tile_merge();
  return true;
}

static __device__ __forceinline__ float bnk_shfl_down(unsigned mask, float v, int offset) {
  return __shfl_down_sync(mask, v, offset);
}

static __device__ __forceinline__ float2 bnk_shfl_down(unsigned mask, float2 v, int offset) {
  return make_float2(__shfl_down_sync(mask, v.x, offset), __shfl_down_sync(mask, v.y, offset));
}

static __device__ __forceinline__ bnk_welford bnk_shfl_down(unsigned mask, bnk_welford v, int offset) {
  bnk_welford r;
  r.count = __shfl_down_sync(mask, v.count, offset);
  r.mean = __shfl_down_sync(mask, v.mean, offset);
  r.m2 = __shfl_down_sync(mask, v.m2, offset);
  return r;
}

// Reduces the values of lanes [0, lanes) of a warp into lane 0. `mask` names exactly those lanes, all of
// which must call this. Lanes other than 0 return partial results.
template <typename T>
static __device__ __forceinline__ T bnk_warp_reduce(T v, unsigned mask, int lanes) {
  const int lane = (int)(threadIdx.x % BNK_WARP);
#pragma unroll
  for (int offset = BNK_WARP / 2; offset > 0; offset /= 2) {
    const T other = bnk_shfl_down(mask, v, offset);
    if (lane + offset < lanes) v = bnk_combine(v, other);
  }
  return v;
}

// Reduces one value per thread of a one-dimensional block into thread 0 (other threads return partial
// results). Every thread of the block must call it. `shared` is caller-provided storage for BNK_WARP
// values; it may be reused after a __syncthreads() that follows the call.
template <typename T>
static __device__ __forceinline__ T bnk_block_reduce(T v, T *shared) {
  const int thread = (int)threadIdx.x;
  const int threads = (int)blockDim.x;
  const int warp = thread / BNK_WARP;
  const int warps = (threads + BNK_WARP - 1) / BNK_WARP;
  const int lanes = min(BNK_WARP, threads - warp * BNK_WARP);
  const unsigned mask = lanes == BNK_WARP ? BNK_FULL_MASK : (1u << lanes) - 1u;
  v = bnk_warp_reduce(v, mask, lanes);
  if (warps == 1) return v;
  if (thread % BNK_WARP == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) v = bnk_warp_reduce(shared[thread < warps ? thread : 0], BNK_FULL_MASK, warps);
  return v;
}
