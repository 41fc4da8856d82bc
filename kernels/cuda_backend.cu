// The CUDA backend objects, the stream contexts (one per engine: stream, cuBLAS handle, error
// flag), the shared caching allocator and cudaInfo(). Ops live in one .cu per family; this file
// only dispatches.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "cuda_common.h"

namespace idforge {
namespace cuda {

[[noreturn]] void throwCuda(cudaError_t e, const char* what, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream o;
  o << "CUDA error in " << what << ": " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e) << ") at "
    << (base ? base + 1 : file) << ":" << line;
  if (e == cudaErrorMemoryAllocation) throw Error("E_OOM", o.str());
  throw Error("E_BACKEND", o.str());
}

[[noreturn]] void throwCublas(int status, const char* what, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  static const std::unordered_map<int, const char*> names = {
      {1, "NOT_INITIALIZED"}, {3, "ALLOC_FAILED"},    {7, "INVALID_VALUE"},   {8, "ARCH_MISMATCH"},
      {11, "MAPPING_ERROR"},  {13, "EXECUTION_FAILED"}, {14, "INTERNAL_ERROR"}, {15, "NOT_SUPPORTED"},
      {16, "LICENSE_ERROR"}};
  auto it = names.find(status);
  std::ostringstream o;
  o << "cuBLAS error in " << what << ": CUBLAS_STATUS_" << (it == names.end() ? "UNKNOWN" : it->second) << " ("
    << status << ") at " << (base ? base + 1 : file) << ":" << line;
  throw Error(status == 3 ? "E_OOM" : "E_BACKEND", o.str());
}

[[noreturn]] void shapeError(OpCode op, const std::string& msg) {
  throw Error("E_SHAPE", std::string("cuda ") + opName(op) + ": " + msg);
}

void expectFloat(OpCode op, const TensorView& t, DType dt, const char* name) {
  if (t.dtype != dt)
    shapeError(op, std::string(name) + " is " + dtypeName(t.dtype) + ", expected " + dtypeName(dt) + " like the output");
}

void arity(OpCode op, const std::vector<TensorView>& in, size_t lo, size_t hi, const std::vector<TensorView>& out,
           size_t nOut) {
  if (in.size() < lo || in.size() > hi || out.size() < nOut)
    shapeError(op, "expects " + std::to_string(lo) + (hi > lo ? "-" + std::to_string(hi) : std::string()) +
                       " inputs and " + std::to_string(nOut) + " output(s), got " + std::to_string(in.size()) +
                       " and " + std::to_string(out.size()));
  for (size_t i = 0; i < lo; i++)
    if (!in[i].data && in[i].numel() > 0) shapeError(op, "input " + std::to_string(i) + " has no data");
  for (size_t i = 0; i < nOut; i++)
    if (!out[i].data && out[i].numel() > 0) shapeError(op, "output " + std::to_string(i) + " has no data");
}

int toInt(OpCode op, int64_t v, const char* what) {
  if (v < 0 || v > 0x7fffffffLL) shapeError(op, std::string(what) + " does not fit 32 bits");
  return int(v);
}

void zeroFill(const TensorView& t) {
  size_t bytes = size_t(t.numel()) * dtypeSize(t.dtype);
  if (bytes) CK(cudaMemsetAsync(t.data, 0, bytes, ctx().stream));
}

namespace {

__global__ void probeKernel(int* p) {
  if (p) *p = 1;
}

// Size buckets: 4 per power of two above 4 KiB keep rounding waste under 25% while letting a
// freed buffer serve any request that rounds to the same bucket.
size_t bucketOf(size_t bytes) {
  if (bytes <= 4096) return bytes <= 512 ? 512 : ((bytes + 511) / 512) * 512;
  size_t p = 1;
  while (p * 2 <= bytes) p *= 2;
  size_t step = p / 4;
  return ((bytes + step - 1) / step) * step;
}

struct Pool {
  std::mutex mu;
  // Free buffers per owning context (the stream that last used them) and bucket.
  std::unordered_map<const Context*, std::unordered_map<size_t, std::vector<void*>>> freeLists;
  struct Live {
    size_t bucket;
    const Context* owner;
  };
  std::unordered_map<void*, Live> live;
  size_t cachedBytes = 0, liveBytes = 0;
  // Graph capture (see poolBeginCapture): the capturing thread's buffers and their free list.
  bool capturing = false;
  std::thread::id capThread;
  std::unordered_map<size_t, std::vector<void*>> capFree;
  std::unordered_set<void*> capOwned;

  // Gives every cached buffer back to the driver. Called with `lock` held; the cudaFree calls
  // (each waits for the whole device) run with it released, so other threads' allocations do not
  // stall behind them. Not while a capture is open anywhere: a device-wide wait would invalidate it.
  void trim(std::unique_lock<std::mutex>& lock) {
    if (capturing) return;
    auto lists = std::move(freeLists);
    freeLists.clear();
    cachedBytes = 0;
    lock.unlock();
    for (auto& owner : lists)
      for (auto& kv : owner.second)
        for (void* p : kv.second) cudaFree(p);
    lock.lock();
  }
};
Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: the driver may be gone at exit
  return *p;
}

std::string initError;
const Cublas* gApi = nullptr;
int gSms = 0;

// Finds the driver, a device this build can run on and cuBLAS; sets initError when not.
bool initDevice() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    // Without libcuda the runtime only says "driver version is insufficient": name the real cause.
    void* drv = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!drv) initError = "no NVIDIA driver found (libcuda.so.1 cannot be loaded)";
    else initError = std::string("no usable CUDA driver (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
    if (drv) dlclose(drv);
    cudaGetLastError();
    return false;
  }
  if (n == 0) {
    initError = "no CUDA device found";
    return false;
  }
  cudaFuncAttributes fa;
  e = cudaFuncGetAttributes(&fa, probeKernel);
  if (e != cudaSuccess) {
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    std::ostringstream o;
    o << "GPU " << p.name << " (sm_" << p.major << p.minor << ") cannot run this build's kernels ("
      << cudaGetErrorString(e) << "); rebuild with IDFORGE_CUDA_ARCHS=" << p.major << p.minor
      << " (sm_80 or newer is required)";
    initError = o.str();
    cudaGetLastError();
    return false;
  }
  std::string why;
  const Cublas* api = loadCublas(&why);
  if (!api) {
    initError = why;
    return false;
  }
  try {
    CK(cudaSetDevice(0));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    gSms = p.multiProcessorCount;
  } catch (const Error& err) {
    initError = std::string("CUDA initialisation failed: ") + err.what();
    return false;
  }
  gApi = api;
  return true;
}

void requireDevice() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] { ok = initDevice(); });
  if (!ok) throw Error("E_BACKEND", initError);
}

// A new stream context; throws E_BACKEND / E_OOM. Contexts are never destroyed (a released one is
// handed to the next engine), so a tensor or program never outlives the stream it refers to.
Context* newContext(int id) {
  auto* c = new Context();
  c->id = id;
  c->api = gApi;
  c->sms = gSms;
  try {
    CK(cudaSetDevice(0));
    CK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CKB(gApi->create(&c->blas));
    CKB(gApi->setStream(c->blas, reinterpret_cast<CUstream_st*>(c->stream)));
    // fp32 accumulation also inside split-K reductions (fp16 outputs would otherwise allow fp16).
    CKB(gApi->setMathMode(c->blas, CUBLAS_DEFAULT_MATH | 16));
    CK(cudaHostAlloc(&c->errFlagHost, sizeof(int), cudaHostAllocMapped));
    *c->errFlagHost = 0;
    CK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&c->errFlagDev), c->errFlagHost, 0));
  } catch (...) {  // nothing half-made stays behind
    if (c->errFlagHost) cudaFreeHost(c->errFlagHost);
    if (c->blas && gApi->destroy) gApi->destroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    delete c;
    throw;
  }
  return c;
}

// The registry of stream contexts: index = stream id; 0 is the default context.
constexpr int kMaxStreams = 256;
struct Registry {
  std::mutex mu;
  std::vector<Context*> contexts;
  std::vector<bool> inUse;
};
Registry& registry() {
  static auto* r = new Registry();  // never destroyed: the driver may be gone at exit
  return *r;
}

Context* contextById(int id) {
  requireDevice();
  Registry& R = registry();
  std::lock_guard<std::mutex> lock(R.mu);
  if (R.contexts.empty()) {
    try {
      R.contexts.push_back(newContext(0));
    } catch (const Error& err) {
      throw Error("E_BACKEND", std::string("CUDA initialisation failed: ") + err.what());
    }
    R.inUse.push_back(true);
  }
  if (id < 0 || id >= int(R.contexts.size()) || !R.inUse[size_t(id)])
    throw Error("E_ARGUMENT", "CUDA stream " + std::to_string(id) + " does not exist (it was released or never created)");
  return R.contexts[size_t(id)];
}

thread_local Context* tlsCtx = nullptr;
thread_local std::vector<cudaEvent_t> tlsEvents;  // profiling marks (CudaBackend::beginTimings)
thread_local size_t tlsMarks = 0;

// Binds a context to the calling thread for the duration of a backend call: every op, scratch
// buffer and cuBLAS call in it goes to that context's stream.
struct Bind {
  Context* prev;
  explicit Bind(Context* c) : prev(tlsCtx) { tlsCtx = c; }
  ~Bind() { tlsCtx = prev; }
  Bind(const Bind&) = delete;
  Bind& operator=(const Bind&) = delete;
};

}  // namespace

Context& ctx() {
  if (tlsCtx) return *tlsCtx;
  return *contextById(0);
}

void* Context::alloc(size_t bytes) {
  Pool& P = pool();
  size_t b = bucketOf(bytes ? bytes : 1);
  std::unique_lock<std::mutex> lock(P.mu);
  const bool cap = P.capturing && std::this_thread::get_id() == P.capThread;
  if (cap) {  // graph capture: reuse the capture's own released buffers first (stream order holds)
    auto ci = P.capFree.find(b);
    if (ci != P.capFree.end() && !ci->second.empty()) {
      void* q = ci->second.back();
      ci->second.pop_back();
      return q;
    }
  }
  auto& mine = P.freeLists[this];
  auto it = mine.find(b);
  void* p = nullptr;
  if (it != mine.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    P.cachedBytes -= b;
  } else {
    cudaError_t e = cudaMalloc(&p, b);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: give the cache back to the driver and try once more
      P.trim(lock);
      e = cudaMalloc(&p, b);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t freeB = 0, totalB = 0;
      cudaMemGetInfo(&freeB, &totalB);
      std::ostringstream o;
      o << "CUDA out of memory allocating " << b << " bytes (" << (b >> 20) << " MiB): " << cudaGetErrorString(e)
        << "; idforge holds " << (P.liveBytes >> 20) << " MiB, the device has " << (freeB >> 20) << " of "
        << (totalB >> 20) << " MiB free";
      throw Error(e == cudaErrorMemoryAllocation ? "E_OOM" : "E_BACKEND", o.str());
    }
  }
  P.live[p] = Pool::Live{b, this};
  P.liveBytes += b;
  if (cap) P.capOwned.insert(p);
  return p;
}

void Context::release(void* p) {
  if (!p) return;
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  auto it = P.live.find(p);
  if (it == P.live.end()) throw Error("E_BACKEND", "cuda release: pointer was not allocated by this backend");
  if (P.capturing && P.capOwned.count(p)) {  // stays with the capture (its address is in the graph)
    P.capFree[it->second.bucket].push_back(p);
    return;
  }
  size_t b = it->second.bucket;
  const Context* owner = it->second.owner;
  P.live.erase(it);
  P.liveBytes -= b;
  P.freeLists[owner][b].push_back(p);
  P.cachedBytes += b;
}

void poolBeginCapture() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  P.capturing = true;
  P.capThread = std::this_thread::get_id();
  P.capFree.clear();
  P.capOwned.clear();
}

std::vector<void*> poolEndCapture() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mu);
  std::vector<void*> owned;
  for (auto& kv : P.capFree)
    for (void* p : kv.second) owned.push_back(p);
  // Buffers taken during the capture and still held are ordinary allocations from now on.
  P.capFree.clear();
  P.capOwned.clear();
  P.capturing = false;
  return owned;
}

void Context::discardDeferredErrors() { __atomic_store_n(errFlagHost, 0, __ATOMIC_RELEASE); }

// The flag belongs to the stream, not to a call: threads sharing a stream (stream 0, or two runs
// of one engine at once) take it atomically, so exactly one call reports a flagged error.
void Context::checkDeferredErrors() {
  int f = __atomic_exchange_n(errFlagHost, 0, __ATOMIC_ACQ_REL);
  if (!f) return;
  if (f & 1) throw Error("E_ARGUMENT", "EMBEDDING: a token id is out of range of the embedding table");
  if (f & 2) throw Error("E_ARGUMENT", "INJECT: a slot index is out of range of the injected vectors");
  if (f & 4) throw Error("E_ARGUMENT", "ATTENTION: a region table gives a key an owner outside [-1, R)");
  throw Error("E_ARGUMENT", "a CUDA kernel flagged invalid input");
}

namespace {

class CudaBackend : public Backend {
 public:
  CudaBackend(DType t, Context* c) : compute_(t), c_(c) {}
  Device device() const override { return Device::CUDA; }
  DType computeType() const override { return compute_; }
  const void* queue() const override { return c_; }
  void* alloc(size_t bytes) override {
    Bind b(c_);
    return c_->alloc(bytes);
  }
  void release(void* p, size_t) override {
    Bind b(c_);
    c_->release(p);
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    Bind b(c_);
    StreamGate g(*c_);
    // Pageable source: the call returns once the host bytes are staged, so the caller may reuse them.
    CK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, c_->stream));
  }
  void download(void* host, const void* src, size_t bytes) override {
    Bind b(c_);
    StreamGate g(*c_);
    CK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, c_->stream));
    CK(cudaStreamSynchronize(c_->stream));
    c_->checkDeferredErrors();
  }
  int64_t countNonFinite(const TensorView& t) override {
    Bind b(c_);
    StreamGate g(*c_);
    int64_t n = cuda::countNonFinite(t);
    c_->checkDeferredErrors();
    return n;
  }
  void synchronize() override {
    Bind b(c_);
    StreamGate g(*c_);
    CK(cudaStreamSynchronize(c_->stream));
    c_->checkDeferredErrors();
  }
  void drain() override {
    StreamGate g(*c_);
    CK(cudaStreamSynchronize(c_->stream));
  }
  void discardPending() override {
    {
      StreamGate g(*c_);
      cudaStreamSynchronize(c_->stream);
      cudaGetLastError();
    }
    c_->discardDeferredErrors();
  }
  void pin() override { c_->pins.fetch_add(1); }
  void unpin() override { c_->pins.fetch_sub(1); }
  // Op timing by events (thread-local: a profiling run is one thread's sequence of calls).
  bool beginTimings(size_t marks) override {
    Bind b(c_);
    while (tlsEvents.size() < marks) {
      cudaEvent_t e;
      CK(cudaEventCreate(&e));
      tlsEvents.push_back(e);
    }
    tlsMarks = 0;
    return true;
  }
  void mark() override {
    if (tlsMarks >= tlsEvents.size()) throw Error("E_INTERNAL", "more timing marks than prepared");
    StreamGate g(*c_);
    CK(cudaEventRecord(tlsEvents[tlsMarks++], c_->stream));
  }
  std::vector<double> endTimings() override {
    synchronize();
    std::vector<double> ms;
    for (size_t k = 0; k + 1 < tlsMarks; k++) {
      float t = 0;
      CK(cudaEventElapsedTime(&t, tlsEvents[k], tlsEvents[k + 1]));
      ms.push_back(double(t));
    }
    tlsMarks = 0;
    return ms;
  }
  void run(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in,
           const std::vector<TensorView>& out) override {
    if (out.empty()) shapeError(op, "no output tensor");
    Bind bind(c_);
    StreamGate g(*c_);
    switch (op) {
      case OpCode::LINEAR: return opLinear(a, in, out);
      case OpCode::MATMUL: return opMatmul(a, in, out);
      case OpCode::CONV2D: return opConv2d(a, in, out);
      case OpCode::ATTENTION: return opAttention(a, in, out);
      case OpCode::GROUP_NORM: return opGroupNorm(a, in, out);
      case OpCode::LAYER_NORM: return opLayerNorm(a, in, out);
      case OpCode::GEGLU:
      case OpCode::GELU:
      case OpCode::QUICK_GELU:
      case OpCode::SILU:
      case OpCode::RELU:
      case OpCode::TANH:
      case OpCode::SCALE: return opUnary(op, a, in, out);
      case OpCode::ADD:
      case OpCode::MUL:
      case OpCode::CFG: return opBinary(op, a, in, out);
      case OpCode::UPSAMPLE2X:
      case OpCode::CONCAT:
      case OpCode::PERMUTE:
      case OpCode::RESHAPE:
      case OpCode::SLICE: return opLayout(op, a, in, out);
      case OpCode::TIMESTEP_EMB:
      case OpCode::EMBEDDING:
      case OpCode::INJECT: return opMisc(op, a, in, out);
      case OpCode::SAMPLER_STEP: return opSamplerStep(a, in, out);
      case OpCode::ADAM_STEP: return opAdamStep(a, in, out);
      case OpCode::GELU_BACKWARD:
      case OpCode::QUICK_GELU_BACKWARD:
      case OpCode::SILU_BACKWARD:
      case OpCode::GEGLU_BACKWARD: return opActivationBackward(op, a, in, out);
      case OpCode::UPSAMPLE2X_BACKWARD:
      case OpCode::REDUCE_SUM: return opLayoutBackward(op, a, in, out);
      case OpCode::GROUP_NORM_BACKWARD: return opGroupNormBackward(a, in, out);
      case OpCode::LAYER_NORM_BACKWARD: return opLayerNormBackward(a, in, out);
      case OpCode::CONV2D_BACKWARD_INPUT: return opConv2dBackwardInput(a, in, out);
      case OpCode::ATTENTION_BACKWARD: return opAttentionBackward(a, in, out);
      case OpCode::INJECT_BACKWARD: return opInjectBackward(a, in, out);
    }
    throw Error("E_BACKEND", std::string(opName(op)) + " is not implemented by the CUDA backend");
  }

  // CUDA graphs (cuda_graph.cu), captured from and replayed on this backend's stream.
  bool graphsSupported() const override { return true; }
  void beginCapture() override {
    Bind b(c_);
    graphBeginCapture();
  }
  void* endCapture(std::string* why) override {
    Bind b(c_);
    return graphEndCapture(why);
  }
  void abortCapture() override {
    Bind b(c_);
    graphAbortCapture();
  }
  void launchGraph(void* g) override {
    Bind b(c_);
    StreamGate gate(*c_);
    graphLaunch(g);
  }
  void destroyGraph(void* g) override {
    Bind b(c_);
    graphDestroy(g);
  }

 private:
  DType compute_;
  Context* c_;
};

}  // namespace
}  // namespace cuda

CudaInfo cudaInfo() {
  CudaInfo i;
  i.compiled = true;
  try {
    cuda::ctx();
  } catch (const Error& e) {
    i.available = false;
    i.reason = e.what();
    return i;
  }
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                  double(p.totalGlobalMem) / double(1ull << 30));
    i.device = buf;
  }
  i.available = true;
  return i;
}

Backend* cudaBackend(DType compute, int stream) {
  if (compute != DType::F16 && compute != DType::F32)
    throw Error("E_ARGUMENT", std::string("the CUDA backend computes in float16 or float32, not ") + dtypeName(compute));
  cuda::Context* c = cuda::contextById(stream);  // throws E_BACKEND with the reason
  // One backend object per (stream, dtype), never destroyed: tensors and programs keep raw
  // pointers to them, and they may outlive the driver at process exit.
  static std::mutex mu;
  static auto* backends = new std::unordered_map<int, Backend*>();
  std::lock_guard<std::mutex> lock(mu);
  int key = stream * 2 + (compute == DType::F16 ? 1 : 0);
  auto it = backends->find(key);
  if (it != backends->end()) return it->second;
  Backend* b = new cuda::CudaBackend(compute, c);
  backends->emplace(key, b);
  return b;
}

int cudaCreateStream() {
  cuda::contextById(0);  // the device, cuBLAS and the default context exist first
  cuda::Registry& R = cuda::registry();
  std::lock_guard<std::mutex> lock(R.mu);
  for (size_t i = 1; i < R.contexts.size(); i++) {
    cuda::Context* c = R.contexts[i];
    // Released, and no program of its last engine is left (a run still in flight pins it).
    if (R.inUse[i] || c->pins.load() != 0) continue;
    {
      cuda::StreamGate g(*c);
      cudaStreamSynchronize(c->stream);  // whatever its tensors queued since
    }
    c->discardDeferredErrors();  // a stale flag must not surface in the new owner's calls
    R.inUse[i] = true;
    return int(i);
  }
  if (R.contexts.size() >= size_t(cuda::kMaxStreams))
    throw Error("E_BACKEND", "too many CUDA streams: " + std::to_string(cuda::kMaxStreams - 1) +
                                 " engines hold one each; dispose() engines that are no longer used");
  int id = int(R.contexts.size());
  cuda::Context* c = nullptr;
  try {
    c = cuda::newContext(id);
  } catch (const Error& e) {
    throw Error(e.code(), std::string("cannot create a CUDA stream: ") + e.what());
  }
  R.contexts.push_back(c);
  R.inUse.push_back(true);
  return id;
}

void cudaReleaseStream(int stream) {
  if (stream <= 0) return;  // the default stream stays
  cuda::Context* c = cuda::contextById(stream);
  {
    cuda::StreamGate g(*c);
    cudaStreamSynchronize(c->stream);  // the engine's queued work is done
  }
  cuda::Registry& R = cuda::registry();
  std::lock_guard<std::mutex> lock(R.mu);
  R.inUse[size_t(stream)] = false;
}

}  // namespace idforge
