/*
 * Stream capture and CUDA graphs in the bnk host emulation.
 *
 * While a stream captures, the launches (cooperative ones too),
 * cudaMemsetAsync and cudaMemcpyAsync issued into it are recorded with
 * their arguments instead of run; cudaGraphLaunch replays them in order.
 * The calls that the GPU refuses during a capture fail with its error codes
 * and invalidate the capture.  See docs/emulation.md, "Stream capture and
 * graphs".
 */
#include "internal.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

namespace bnk_emu {
namespace detail {
namespace {

/* One recorded operation.  A kernel node owns a copy of its arguments. */
struct Node {
  enum Kind { KERNEL, MEMSET, MEMCPY } kind;
  launch_desc launch{};
  void *dst = nullptr;
  const void *src = nullptr;
  int value = 0;
  size_t count = 0;

  Node(Kind k) : kind(k) {}
  Node(const Node &o) : kind(o.kind), launch(o.launch), dst(o.dst), src(o.src), value(o.value), count(o.count) {
    if (kind == KERNEL) launch.ctx = launch.clone_ctx(o.launch.ctx);
  }
  Node &operator=(const Node &) = delete;
  ~Node() {
    if (kind == KERNEL && launch.ctx) launch.destroy_ctx(launch.ctx);
  }
};

}  // namespace
}  // namespace detail
}  // namespace bnk_emu

struct CUgraph_st {
  std::vector<std::unique_ptr<bnk_emu::detail::Node>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::unique_ptr<bnk_emu::detail::Node>> nodes;
};

namespace bnk_emu {
namespace detail {
namespace {

struct Capture {
  cudaStream_t stream;
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  unsigned long long id;
  cudaGraph_t graph;
  bool invalidated;
};

struct CaptureRegistry {
  std::mutex mu;
  std::vector<Capture> captures;
  std::unordered_set<cudaGraph_t> graphs;
  std::unordered_set<cudaGraphExec_t> execs;
  unsigned long long next_id = 1;
};

CaptureRegistry &captures() {
  static CaptureRegistry *r = new CaptureRegistry(); /* never destroyed: usable at exit */
  return *r;
}

bool is_legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy; }

/* Callers hold the registry's mutex. */
Capture *find_capture(CaptureRegistry &r, cudaStream_t s) {
  for (Capture &c : r.captures)
    if (c.stream == s) return &c;
  return nullptr;
}

/* Work on the legacy default stream waits for every blocking stream, so it
 * would join a capturing blocking stream: the GPU refuses it. */
cudaError_t refuse_implicit_join(CaptureRegistry &r, cudaStream_t s) {
  if (!is_legacy(s)) return cudaSuccess;
  bool refused = false;
  for (Capture &c : r.captures)
    if (stream_is_blocking(c.stream)) {
      c.invalidated = true;
      refused = true;
    }
  return refused ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}

/* If s captures, records the node that make() builds and returns true with
 * *result the outcome; an operation that the GPU refuses returns true with
 * its error.  false: run the operation. */
template <class Make>
bool record(cudaStream_t s, Make make, cudaError_t *result) {
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  if (r.captures.empty()) return false;
  if (Capture *c = find_capture(r, s)) {
    if (c->invalidated) {
      *result = cudaErrorStreamCaptureInvalidated;
    } else {
      c->graph->nodes.push_back(make());
      *result = cudaSuccess;
    }
    return true;
  }
  *result = refuse_implicit_join(r, s);
  return *result != cudaSuccess;
}

/* Refuses a call that the GPU does not allow while a capture in global mode
 * (any thread's) or thread-local mode (this thread's) is under way. */
cudaError_t refuse_unsafe(CaptureRegistry &r) {
  bool refused = false;
  for (Capture &c : r.captures)
    if (c.mode == cudaStreamCaptureModeGlobal ||
        (c.mode == cudaStreamCaptureModeThreadLocal && c.thread == std::this_thread::get_id())) {
      c.invalidated = true;
      refused = true;
    }
  return refused ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

bool valid_mode(cudaStreamCaptureMode m) {
  return m == cudaStreamCaptureModeGlobal || m == cudaStreamCaptureModeThreadLocal || m == cudaStreamCaptureModeRelaxed;
}

std::vector<std::unique_ptr<Node>> copy_nodes(const std::vector<std::unique_ptr<Node>> &from) {
  std::vector<std::unique_ptr<Node>> to;
  to.reserve(from.size());
  for (const auto &n : from) to.emplace_back(new Node(*n));
  return to;
}

cudaError_t run_node(const Node &n, cudaStream_t stream) {
  switch (n.kind) {
  case Node::KERNEL: {
    launch_desc d = n.launch;
    d.stream = stream;
    return run_launch(d);
  }
  case Node::MEMSET:
    if (n.count) std::memset(n.dst, n.value, n.count);
    return cudaSuccess;
  case Node::MEMCPY:
    if (n.count) std::memmove(n.dst, n.src, n.count);
    return cudaSuccess;
  }
  return cudaErrorUnknown;
}

}  // namespace

bool capture_launch(const launch_desc &d, cudaError_t *result) {
  return record(
      d.stream,
      [&d] {
        std::unique_ptr<Node> n(new Node(Node::KERNEL));
        n->launch = d;
        n->launch.ctx = d.clone_ctx(d.ctx);
        return n;
      },
      result);
}

bool capture_memset(void *dst, int value, size_t count, cudaStream_t s, cudaError_t *result) {
  return record(
      s,
      [&] {
        std::unique_ptr<Node> n(new Node(Node::MEMSET));
        n->dst = dst;
        n->value = value;
        n->count = count;
        return n;
      },
      result);
}

bool capture_memcpy(void *dst, const void *src, size_t count, cudaStream_t s, cudaError_t *result) {
  return record(
      s,
      [&] {
        std::unique_ptr<Node> n(new Node(Node::MEMCPY));
        n->dst = dst;
        n->src = src;
        n->count = count;
        return n;
      },
      result);
}

cudaError_t capture_refuses(capture_call call, cudaStream_t s) {
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  if (r.captures.empty()) return cudaSuccess;
  switch (call) {
  case CAPTURE_UNSAFE_CALL: {
    const cudaError_t e = refuse_unsafe(r);
    return e != cudaSuccess || !s ? e : refuse_implicit_join(r, s);
  }
  case CAPTURE_DEVICE_SYNC:
    for (Capture &c : r.captures) c.invalidated = true;
    return cudaErrorStreamCaptureUnsupported;
  case CAPTURE_STREAM_SYNC:
    if (Capture *c = find_capture(r, s)) {
      c->invalidated = true;
      return cudaErrorStreamCaptureUnsupported;
    }
    return refuse_implicit_join(r, s);
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace bnk_emu

using namespace bnk_emu::detail;

#pragma GCC visibility push(default)
extern "C" {

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  if (!valid_mode(mode)) return record_error(cudaErrorInvalidValue);
  if (is_legacy(stream)) return record_error(cudaErrorStreamCaptureUnsupported);
  if (!stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  if (find_capture(r, stream)) return record_error(cudaErrorIllegalState);
  cudaGraph_t g = new CUgraph_st();
  r.graphs.insert(g);
  r.captures.push_back(Capture{stream, mode, std::this_thread::get_id(), r.next_id++, g, false});
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph) {
  if (!pGraph) return record_error(cudaErrorInvalidValue);
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  Capture *c = find_capture(r, stream);
  if (!c) return record_error(is_legacy(stream) ? cudaErrorStreamCaptureUnsupported : cudaErrorIllegalState);
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return record_error(cudaErrorStreamCaptureWrongThread);
  const Capture ended = *c;
  r.captures.erase(r.captures.begin() + (c - r.captures.data()));
  if (ended.invalidated) {
    r.graphs.erase(ended.graph);
    delete ended.graph;
    *pGraph = nullptr;
    return record_error(cudaErrorStreamCaptureInvalidated);
  }
  *pGraph = ended.graph;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *pCaptureStatus) {
  if (!pCaptureStatus) return record_error(cudaErrorInvalidValue);
  if (!stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  if (is_legacy(stream))
    for (const Capture &c : r.captures)
      if (stream_is_blocking(c.stream)) return record_error(cudaErrorStreamCaptureImplicit);
  const Capture *c = find_capture(r, stream);
  *pCaptureStatus = !c ? cudaStreamCaptureStatusNone
                       : (c->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive);
  return cudaSuccess;
}

cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, enum cudaStreamCaptureStatus *captureStatus_out,
                                     unsigned long long *id_out, cudaGraph_t *graph_out,
                                     const cudaGraphNode_t **dependencies_out, const cudaGraphEdgeData **edgeData_out,
                                     size_t *numDependencies_out) {
  const cudaError_t e = cudaStreamIsCapturing(stream, captureStatus_out);
  if (e != cudaSuccess) return e;
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  const Capture *c = find_capture(r, stream);
  if (id_out && c) *id_out = c->id;
  if (graph_out) *graph_out = c ? c->graph : nullptr;
  /* Graph nodes have no handles here: the emulation reports no dependencies. */
  if (dependencies_out) *dependencies_out = nullptr;
  if (edgeData_out) *edgeData_out = nullptr;
  if (numDependencies_out) *numDependencies_out = 0;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph, unsigned long long flags) {
  (void)flags; /* every flag's effect (auto-free, upload, priority) is moot in the emulation */
  if (!pGraphExec) return record_error(cudaErrorInvalidValue);
  CaptureRegistry &r = captures();
  std::lock_guard<std::mutex> lk(r.mu);
  if (!graph || !r.graphs.count(graph)) return record_error(cudaErrorInvalidValue);
  for (const Capture &c : r.captures)
    if (c.graph == graph) return record_error(cudaErrorInvalidValue); /* still being captured */
  cudaGraphExec_t x = new CUgraphExec_st();
  x->nodes = copy_nodes(graph->nodes);
  r.execs.insert(x);
  *pGraphExec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *pGraphExec, cudaGraph_t graph, unsigned long long flags) {
  return cudaGraphInstantiate(pGraphExec, graph, flags);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
  if (!stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
  CaptureRegistry &r = captures();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (!graphExec || !r.execs.count(graphExec)) return record_error(cudaErrorInvalidValue);
    /* A graph launched into a capturing stream would become a child graph node: not emulated. */
    if (Capture *c = find_capture(r, stream)) {
      c->invalidated = true;
      return record_error(cudaErrorStreamCaptureUnsupported);
    }
    const cudaError_t e = refuse_implicit_join(r, stream);
    if (e != cudaSuccess) return record_error(e);
  }
  /* Replayed outside the mutex: a kernel may use the runtime. */
  for (const auto &n : graphExec->nodes) {
    const cudaError_t e = run_node(*n, stream);
    if (e != cudaSuccess) return record_error(e);
  }
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
  CaptureRegistry &r = captures();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (!graphExec || r.execs.erase(graphExec) == 0) return record_error(cudaErrorInvalidValue);
  }
  delete graphExec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  CaptureRegistry &r = captures();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (!graph || !r.graphs.count(graph)) return record_error(cudaErrorInvalidValue);
    for (const Capture &c : r.captures)
      if (c.graph == graph) return record_error(cudaErrorInvalidValue);
    r.graphs.erase(graph);
  }
  delete graph;
  return cudaSuccess;
}

}  // extern "C"
#pragma GCC visibility pop
