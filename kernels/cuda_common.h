// Shared pieces of the CUDA backend: error checking, the stream contexts (stream, cuBLAS
// handle, error flag), the caching allocator, dtype dispatch and small device helpers. Included by every
// kernels/*.cu; nothing here is visible outside kernels/.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "cublas_loader.h"

namespace idforge {
namespace cuda {

[[noreturn]] void throwCuda(cudaError_t e, const char* what, const char* file, int line);
[[noreturn]] void throwCublas(int status, const char* what, const char* file, int line);

// Every CUDA runtime call goes through CK so a failure becomes E_BACKEND naming the call.
#define CK(call)                                                              \
  do {                                                                        \
    cudaError_t e_ = (call);                                                  \
    if (e_ != cudaSuccess) ::idforge::cuda::throwCuda(e_, #call, __FILE__, __LINE__); \
  } while (0)
#define CKB(call)                                                             \
  do {                                                                        \
    int s_ = (call);                                                          \
    if (s_ != 0) ::idforge::cuda::throwCublas(s_, #call, __FILE__, __LINE__); \
  } while (0)
// Launch errors (bad grid, missing kernel image) are reported by cudaGetLastError right away;
// faults inside kernels surface at the next synchronising call, which is checked too.
#define CK_LAUNCH(name) CK(cudaGetLastError())

// A stream context: one per engine (cudaCreateStream) plus the default one (id 0) for tensors
// made outside an engine. Each has its own stream, cuBLAS handle (and capture workspace) and
// device-side error flag, so two engines run concurrently and one engine's bad input is never
// reported by another's call. The device, the loaded cuBLAS and the caching pool are shared; a
// pooled buffer returns to the free list of the context that allocated it, so stream order
// alone makes its reuse safe.
struct Context {
  int id = 0;
  // Programs compiled on this stream (Program pins its backend for its lifetime, in-flight runs
  // included): a released stream is handed to another engine only once nothing pins it.
  std::atomic<int> pins{0};
  // The stream gate: shared by every call that queues work on this stream, exclusive while a
  // thread captures it into a CUDA graph, so no other thread's work lands in the graph.
  std::shared_mutex gate;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  const Cublas* api = nullptr;
  int sms = 0;
  bool workspaceSet = false;  // cuBLAS workspace for graph capture (cuda_graph.cu)
  // Device-side error flag (pinned, mapped): kernels that find bad ids set it instead of
  // faulting; it is read after the next synchronisation, which costs nothing extra.
  int* errFlagHost = nullptr;
  int* errFlagDev = nullptr;
  void* alloc(size_t bytes);
  void release(void* p);
  void checkDeferredErrors();  // after a sync: throws E_ARGUMENT if a kernel flagged bad input
  void discardDeferredErrors();  // forgets a flag (after a failed run, whose error was reported)
};
// The context the calling thread works in: the one a CudaBackend bound for the duration of its
// call (see Bind in cuda_backend.cu), else the default context. Throws E_BACKEND when no usable
// device / cuBLAS.
Context& ctx();  // throws E_BACKEND when no usable device / cuBLAS

// CUDA graph capture (cuda_graph.cu). One capture at a time in the process: while a thread
// captures, buffers it takes from the pool belong to the capture (reused only inside it, then
// kept by the graph: their addresses are baked in), and other threads' work on the captured
// stream waits on that stream's gate, so nothing foreign lands in the graph. Other streams go on.
void poolBeginCapture();
std::vector<void*> poolEndCapture();  // the capture's buffers, all released by now: the graph keeps them
bool capturingHere();                 // this thread is capturing
struct StreamGate {
  std::shared_mutex* gate;
  explicit StreamGate(Context& c) : gate(capturingHere() ? nullptr : &c.gate) {
    if (gate) gate->lock_shared();
  }
  ~StreamGate() {
    if (gate) gate->unlock_shared();
  }
  StreamGate(const StreamGate&) = delete;
  StreamGate& operator=(const StreamGate&) = delete;
};
void graphBeginCapture();
void* graphEndCapture(std::string* why);
void graphAbortCapture();
void graphLaunch(void* g);
void graphDestroy(void* g);

// RAII scratch memory from the pool; stream ordering makes immediate reuse safe.
struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes) : p(bytes ? ctx().alloc(bytes) : nullptr) {}
  ~Scratch() {
    if (p) ctx().release(p);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
};

[[noreturn]] void shapeError(OpCode op, const std::string& msg);
void expectFloat(OpCode op, const TensorView& t, DType dt, const char* name);
// in.size() in [lo, hi], out.size() >= nOut, the required tensors non-null (E_SHAPE otherwise).
void arity(OpCode op, const std::vector<TensorView>& in, size_t lo, size_t hi, const std::vector<TensorView>& out,
           size_t nOut);
int toInt(OpCode op, int64_t v, const char* what);  // E_SHAPE past 32 bits
void zeroFill(const TensorView& t);                  // on the stream

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline unsigned gridFor(int64_t n, int threads, int64_t cap = 65535LL * 32) {
  int64_t g = ceilDiv(n, threads);
  if (g < 1) g = 1;
  return unsigned(g < cap ? g : cap);
}

// Float tensors are F32 or F16; kernels are templated on the element type and compute in fp32.
template <typename T> __device__ __forceinline__ float toF(T v);
template <> __device__ __forceinline__ float toF<float>(float v) { return v; }
template <> __device__ __forceinline__ float toF<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T fromF(float v);
template <> __device__ __forceinline__ float fromF<float>(float v) { return v; }
template <> __device__ __forceinline__ __half fromF<__half>(float v) { return __float2half_rn(v); }

// Calls f.template operator()<T>() with T = float or __half after the dtype.
template <typename F>
void dispatchFloat(OpCode op, DType dt, F&& f) {
  if (dt == DType::F32) f(float{});
  else if (dt == DType::F16) f(__half{});
  else shapeError(op, std::string("expected a float32 or float16 tensor, got ") + dtypeName(dt));
}

// Op entry points, one family per .cu (see cuda_backend.cu for the dispatch table).
void opLinear(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opMatmul(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opConv2d(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opAttention(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opGroupNorm(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opLayerNorm(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opUnary(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opBinary(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opLayout(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opMisc(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opSamplerStep(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opAdamStep(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
// Backward ops (vector-Jacobian products), each next to its forward family.
void opActivationBackward(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opLayoutBackward(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opInjectBackward(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opGroupNormBackward(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opLayerNormBackward(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opConv2dBackwardInput(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
void opAttentionBackward(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
// ATTENTION_BACKWARD / CONV2D_BACKWARD_INPUT with an explicit scratch budget in bytes (the native
// test harness forces the query-chunked / channel-chunked paths with a small one).
void attentionBackwardBudget(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&,
                             int64_t budgetBytes);
void conv2dBackwardInputBudget(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&,
                               int64_t budgetBytes);
// NaN/Inf elements of a float tensor on the current context's stream (finite.cu); synchronises it.
int64_t countNonFinite(const TensorView& t);

// Exposed for the benchmark harness: the unfused cuBLAS QKᵀ → softmax → PV path.
void attentionUnfused(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);

// Strided-batched GEMM in cuBLAS's column-major terms; T selects the data type, accumulation is
// fp32 (tensor cores for fp16, exact fp32 FMA for fp32). cType lets fp16 inputs produce fp32.
void gemm(bool transA, bool transB, int m, int n, int k, float alpha, const void* A, int lda,
          long long strideA, const void* B, int ldb, long long strideB, float beta, void* C, int ldc,
          long long strideC, int batch, DType abType, DType cType);

}  // namespace cuda
}  // namespace idforge

namespace idforge {
namespace cuda {
// Forces the generic fused kernel (the harness checks it on shapes the dispatcher would route elsewhere).
void attentionGenericForTest(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);
}  // namespace cuda
}  // namespace idforge
