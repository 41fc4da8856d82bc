// CUDA graphs for Program (native/program.cc): once a program's buffers are fixed (its arena), its
// whole op sequence is captured from its engine's stream into one graph and replayed with a single
// cudaGraphLaunch, which removes the per-op launch and host overhead (~700 ops per UNet step).
//
// Capture safety of the ops: scratch buffers (im2col, split-K Welford partials, unfused attention
// scores) come from the caching pool; while capturing, the pool gives the capturing thread
// buffers that belong to the capture and that the graph keeps afterwards (cuda_backend.cu), so no
// cudaMalloc is needed on a warm pool (Program captures on its second run) and no captured address
// is ever handed to anyone else. cuBLAS gets a fixed workspace (per stream context) before the
// first capture. The error flag is mapped host memory, written by kernels inside the graph and read
// after the run's synchronisation as before. Other threads' work on the captured stream waits on
// that stream's gate while the capture is open, so it cannot be recorded into the graph; other
// engines' streams go on (captures are relaxed-mode and per stream).
#include <cstdio>
#include <mutex>
#include <shared_mutex>

#include "cuda_common.h"

namespace idforge {
namespace cuda {

namespace {

// One capture at a time in the process (the pool keeps one capture's buffers apart).
std::mutex& captureMutex() {
  static auto* m = new std::mutex();
  return *m;
}
thread_local bool tlsCapturing = false;
thread_local Context* tlsCaptured = nullptr;  // the context whose gate this thread holds

struct Graph {
  cudaGraphExec_t exec = nullptr;
  std::vector<void*> scratch;  // pool buffers whose addresses the graph uses
};

void releaseAll(const std::vector<void*>& v) {
  for (void* p : v) {
    try {
      ctx().release(p);
    } catch (...) {
    }
  }
}

// cuBLAS needs a user workspace to be capture-safe without restricting its algorithms; one per
// stream context (its handle), set before its first capture and kept with the context.
void ensureWorkspace(Context& c) {
  if (c.workspaceSet) return;
  if (!c.api->setWorkspace) {
    c.workspaceSet = true;
    return;
  }
  const size_t bytes = size_t(32) << 20;
  void* ws = c.alloc(bytes);  // kept with the context (contexts are recycled, never destroyed)
  try {
    CK(cudaStreamSynchronize(c.stream));
    CKB(c.api->setWorkspace(c.blas, ws, bytes));
  } catch (...) {
    c.release(ws);
    throw;
  }
  c.workspaceSet = true;  // only now: a failed attempt (e.g. out of memory) is retried next capture
}

void endLocked() {
  tlsCapturing = false;
  Context* c = tlsCaptured;
  tlsCaptured = nullptr;
  c->gate.unlock();
  captureMutex().unlock();
}

}  // namespace

bool capturingHere() { return tlsCapturing; }

void graphBeginCapture() {
  Context& c = ctx();
  if (tlsCapturing) throw Error("E_INTERNAL", "nested graph capture");
  captureMutex().lock();
  c.gate.lock();
  try {
    ensureWorkspace(c);
  } catch (...) {
    c.gate.unlock();
    captureMutex().unlock();
    throw;
  }
  tlsCapturing = true;
  tlsCaptured = &c;
  poolBeginCapture();
  // Relaxed: a pool miss (cudaMalloc) or a kernel attribute set during the capture is allowed.
  cudaError_t e = cudaStreamBeginCapture(c.stream, cudaStreamCaptureModeRelaxed);
  if (e != cudaSuccess) {
    cudaGetLastError();
    releaseAll(poolEndCapture());
    endLocked();
    throwCuda(e, "cudaStreamBeginCapture", __FILE__, __LINE__);
  }
}

void* graphEndCapture(std::string* why) {
  Context& c = ctx();
  if (!tlsCapturing) {
    if (why) *why = "no capture in progress";
    return nullptr;
  }
  cudaGraph_t g = nullptr;
  cudaError_t e = cudaStreamEndCapture(c.stream, &g);
  std::vector<void*> owned = poolEndCapture();
  endLocked();
  if (e != cudaSuccess || !g) {
    if (why) *why = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
    cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    releaseAll(owned);
    return nullptr;
  }
  cudaGraphExec_t x = nullptr;
  e = cudaGraphInstantiate(&x, g, 0);
  cudaGraphDestroy(g);
  if (e != cudaSuccess || !x) {
    if (why) *why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
    cudaGetLastError();
    releaseAll(owned);
    return nullptr;
  }
  auto* r = new Graph();
  r->exec = x;
  r->scratch = std::move(owned);
  return r;
}

void graphAbortCapture() {
  if (!tlsCapturing) return;
  Context& c = ctx();
  cudaGraph_t g = nullptr;
  cudaStreamEndCapture(c.stream, &g);
  if (g) cudaGraphDestroy(g);
  cudaGetLastError();
  releaseAll(poolEndCapture());
  endLocked();
}

void graphLaunch(void* g) { CK(cudaGraphLaunch(static_cast<Graph*>(g)->exec, ctx().stream)); }

void graphDestroy(void* p) {
  auto* g = static_cast<Graph*>(p);
  if (!g) return;
  Context& c = ctx();
  {
    StreamGate gate(c);
    cudaStreamSynchronize(c.stream);  // a replay may still read or write the scratch
  }
  cudaGraphExecDestroy(g->exec);
  releaseAll(g->scratch);
  delete g;
}

}  // namespace cuda
}  // namespace idforge
