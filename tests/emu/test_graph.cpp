/* Stream capture and graphs: capture records launches (cooperative ones too), cudaMemsetAsync and
 * cudaMemcpyAsync with their arguments; replay runs them in order; the calls the GPU refuses during a
 * capture fail with its error and invalidate the capture. */
#include "emu_test.h"

#include <cooperative_groups.h>

#include <random>

namespace {

__global__ void axpy(float a, const float *x, float *y, int n) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) y[i] = a * x[i] + y[i];
}

/* y[i] = x[i] + sum of x over the grid: needs the grid barrier. */
__global__ void add_grid_sum(const float *x, float *y, float *total, int n) {
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int i = int(grid.thread_rank());
  if (i == 0) *total = 0.0f;
  grid.sync();
  if (i < n) atomicAdd(total, x[i]);
  grid.sync();
  if (i < n) y[i] = x[i] + *total;
}

std::vector<float> random_vector(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (float &e : v) e = dist(rng);
  return v;
}

struct stream_guard {
  cudaStream_t s = nullptr;
  explicit stream_guard(unsigned flags = cudaStreamNonBlocking) {
    cr_assert_eq(cudaStreamCreateWithFlags(&s, flags), cudaSuccess);
  }
  ~stream_guard() { cudaStreamDestroy(s); }
};

cudaStreamCaptureStatus status_of(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  cr_assert_eq(cudaStreamIsCapturing(s, &st), cudaSuccess);
  return st;
}

}  // namespace

TestSuite(graph, .timeout = 60);

Test(graph, captured_work_is_recorded_not_run_and_replays_in_order) {
  const int n = 1000;
  const std::vector<float> x0 = random_vector(n, 1), y0 = random_vector(n, 2);
  dev_buf<float> x(x0), y(n), staged(n);
  std::vector<float> expect_host(y0);
  stream_guard st;
  cr_assert_eq(status_of(st.s), cudaStreamCaptureStatusNone);
  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cr_assert_eq(status_of(st.s), cudaStreamCaptureStatusActive);
  cudaStreamCaptureStatus info = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  cudaGraph_t during = nullptr;
  cr_assert_eq(cudaStreamGetCaptureInfo(st.s, &info, &id, &during, nullptr, nullptr, nullptr), cudaSuccess);
  cr_assert_eq(info, cudaStreamCaptureStatusActive);
  cr_assert_neq(id, 0ull);
  cr_assert_not_null(during);
  /* y = y0 (copied from a host buffer at replay time), then y = 2x + y, y = -0.5x + y. */
  cr_assert_eq(cudaMemsetAsync(y.p, 0, n * sizeof(float), st.s), cudaSuccess);
  cr_assert_eq(cudaMemcpyAsync(y.p, staged.p, n * sizeof(float), cudaMemcpyDeviceToDevice, st.s), cudaSuccess);
  BNK_EMU_LAUNCH(axpy, (n + 255) / 256, 256, 0, st.s)(2.0f, x.p, y.p, n);
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
  BNK_EMU_LAUNCH(axpy, (n + 127) / 128, 128, 0, st.s)(-0.5f, x.p, y.p, n);
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
  cudaGraph_t graph = nullptr;
  cr_assert_eq(cudaStreamEndCapture(st.s, &graph), cudaSuccess);
  cr_assert_eq(graph, during);
  cr_assert_eq(status_of(st.s), cudaStreamCaptureStatusNone);
  /* Nothing ran: y still holds cudaMalloc's poison. */
  for (float v : y.download()) cr_assert(std::isnan(v));

  cudaGraphExec_t exec = nullptr;
  cr_assert_eq(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  cr_assert_eq(cudaGraphDestroy(graph), cudaSuccess, "the executable graph owns its own copy");
  for (int replay = 0; replay < 3; ++replay) {
    staged.upload(y0); /* read by the copy node when it runs, not when it was captured */
    y.upload(random_vector(n, 100 + replay));
    cr_assert_eq(cudaGraphLaunch(exec, st.s), cudaSuccess, "%s", bnk_emu_last_diagnostic());
    cr_assert_eq(cudaStreamSynchronize(st.s), cudaSuccess);
    const std::vector<float> got = y.download();
    for (int i = 0; i < n; ++i) {
      const float ref = -0.5f * x0[size_t(i)] + (2.0f * x0[size_t(i)] + y0[size_t(i)]);
      cr_assert_eq(got[size_t(i)], ref, "replay %d, element %d: %g vs %g", replay, i, double(got[size_t(i)]),
                   double(ref));
    }
  }
  cr_assert_eq(cudaGraphExecDestroy(exec), cudaSuccess);
  cr_assert_eq(cudaGraphExecDestroy(exec), cudaErrorInvalidValue);
  cr_assert_eq(cudaGraphDestroy(graph), cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

Test(graph, cooperative_launch_is_captured_and_replayed) {
  bnk_emu_set_sm_count(1);
  const int n = 512;
  const std::vector<float> x0 = random_vector(n, 5);
  dev_buf<float> x(x0), y(n), total(1);
  stream_guard st;
  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  float *xp = x.p, *yp = y.p, *tp = total.p;
  int nn = n;
  void *args[] = {&xp, &yp, &tp, &nn};
  cr_assert_eq(cudaLaunchCooperativeKernel(add_grid_sum, dim3(4), dim3(128), args, 0, st.s), cudaSuccess);
  cudaGraph_t graph = nullptr;
  cr_assert_eq(cudaStreamEndCapture(st.s, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  cr_assert_eq(cudaGraphInstantiateWithFlags(&exec, graph, 0), cudaSuccess);
  float sum_ref = 0.0f;
  for (bnk_emu_schedule s : kAllSchedules) {
    bnk_emu_set_schedule(s, 9);
    cr_assert_eq(cudaMemset(y.p, 0xff, n * sizeof(float)), cudaSuccess);
    cr_assert_eq(cudaGraphLaunch(exec, st.s), cudaSuccess, "%s", bnk_emu_last_diagnostic());
    cr_assert_eq(cudaStreamSynchronize(st.s), cudaSuccess);
    const std::vector<float> got = y.download();
    const float sum = total.download()[0];
    double ref = 0.0;
    for (float v : x0) ref += v;
    cr_assert_float_eq(double(sum), ref, 1e-3);
    if (s == BNK_EMU_FORWARD) sum_ref = sum;
    for (int i = 0; i < n; ++i) cr_assert_eq(got[size_t(i)], x0[size_t(i)] + sum);
    (void)sum_ref;
  }
  cr_assert_eq(cudaGraphExecDestroy(exec), cudaSuccess);
  cr_assert_eq(cudaGraphDestroy(graph), cudaSuccess);
}

/* Each refused call fails as on the GPU, invalidates the capture, and EndCapture then returns no graph. */
static void expect_refused_then_invalidated(cudaStream_t s, cudaError_t got, cudaError_t want) {
  cr_assert_eq(got, want, "got %s, expected %s", cudaGetErrorName(got), cudaGetErrorName(want));
  cr_assert_eq(status_of(s), cudaStreamCaptureStatusInvalidated);
  /* Work issued into an invalidated capture is refused too. */
  cr_assert_eq(cudaMemsetAsync(nullptr, 0, 0, s), cudaErrorStreamCaptureInvalidated);
  cudaGraph_t g = reinterpret_cast<cudaGraph_t>(0x1);
  cr_assert_eq(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  cr_assert_null(g);
  cr_assert_eq(status_of(s), cudaStreamCaptureStatusNone);
  (void)cudaGetLastError();
}

Test(graph, calls_the_gpu_refuses_during_a_global_capture) {
  stream_guard st;
  dev_buf<float> buf(16);
  float host[16] = {0};
  void *p = nullptr;

  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  expect_refused_then_invalidated(st.s, cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  cr_assert_null(p);

  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  expect_refused_then_invalidated(st.s, cudaMemcpy(host, buf.p, sizeof host, cudaMemcpyDeviceToHost),
                                  cudaErrorStreamCaptureUnsupported);

  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  expect_refused_then_invalidated(st.s, cudaMemset(buf.p, 0, 64), cudaErrorStreamCaptureUnsupported);

  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  expect_refused_then_invalidated(st.s, cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);

  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  expect_refused_then_invalidated(st.s, cudaStreamSynchronize(st.s), cudaErrorStreamCaptureUnsupported);

  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  expect_refused_then_invalidated(st.s, cudaFree(buf.p), cudaErrorStreamCaptureUnsupported);

  /* The refused calls did nothing: the buffer is still allocated and usable. */
  cr_assert_eq(cudaMemset(buf.p, 0, 64), cudaSuccess);
}

Test(graph, legacy_stream_work_joins_a_capturing_blocking_stream) {
  stream_guard blocking(cudaStreamDefault);
  dev_buf<float> x(64), y(64);
  cr_assert_eq(cudaStreamBeginCapture(blocking.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  BNK_EMU_LAUNCH(axpy, 1, 64, 0, 0)(1.0f, x.p, y.p, 64);
  expect_refused_then_invalidated(blocking.s, cudaGetLastError(), cudaErrorStreamCaptureImplicit);

  cr_assert_eq(cudaStreamBeginCapture(blocking.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  expect_refused_then_invalidated(blocking.s, cudaMemsetAsync(y.p, 0, 64, cudaStreamLegacy),
                                  cudaErrorStreamCaptureImplicit);
  /* Relaxed mode allows cudaMalloc; a non-blocking stream does not join the legacy stream. */
  stream_guard other;
  cr_assert_eq(cudaStreamBeginCapture(other.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  void *p = nullptr;
  cr_assert_eq(cudaMalloc(&p, 64), cudaSuccess);
  cr_assert_eq(cudaFree(p), cudaSuccess);
  BNK_EMU_LAUNCH(axpy, 1, 64, 0, 0)(1.0f, x.p, y.p, 64);
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
  cr_assert_eq(status_of(other.s), cudaStreamCaptureStatusActive);
  cudaGraph_t g = nullptr;
  cr_assert_eq(cudaStreamEndCapture(other.s, &g), cudaSuccess);
  cr_assert_eq(cudaGraphDestroy(g), cudaSuccess);
}

Test(graph, capture_argument_errors) {
  stream_guard st;
  cudaGraph_t g = nullptr;
  cr_assert_eq(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureMode(7)), cudaErrorInvalidValue);
  cr_assert_eq(cudaStreamEndCapture(st.s, &g), cudaErrorIllegalState, "not capturing");
  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cr_assert_eq(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal), cudaErrorIllegalState, "twice");
  cudaGraphExec_t x = nullptr;
  cudaGraph_t during = nullptr;
  cr_assert_eq(cudaStreamGetCaptureInfo(st.s, nullptr, nullptr, &during, nullptr, nullptr, nullptr),
               cudaErrorInvalidValue);
  cudaStreamCaptureStatus stat;
  cr_assert_eq(cudaStreamGetCaptureInfo(st.s, &stat, nullptr, &during, nullptr, nullptr, nullptr), cudaSuccess);
  cr_assert_eq(cudaGraphInstantiate(&x, during, 0), cudaErrorInvalidValue, "a graph still being captured");
  cr_assert_eq(cudaStreamEndCapture(st.s, &g), cudaSuccess);
  cr_assert_eq(cudaGraphInstantiate(nullptr, g, 0), cudaErrorInvalidValue);
  cr_assert_eq(cudaGraphInstantiate(&x, g, 0), cudaSuccess);
  cr_assert_eq(cudaGraphLaunch(x, st.s), cudaSuccess, "an empty graph");
  cr_assert_eq(cudaGraphLaunch(nullptr, st.s), cudaErrorInvalidValue);
  cr_assert_eq(cudaGraphExecDestroy(x), cudaSuccess);
  cr_assert_eq(cudaGraphDestroy(g), cudaSuccess);
  (void)cudaGetLastError();
}
