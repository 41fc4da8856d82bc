// The CPU backend: float32 everywhere, host memory, ops run synchronously on the thread pool.
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#include "../backend.h"
#include "../fused.h"
#include "gemm.h"
#include "isa/kernels.h"
#include "parallel.h"
#include "ops.h"

namespace idforge {
namespace cpu {

void shapeError(const char* op, const std::string& msg) { throw Error("E_SHAPE", std::string(op) + ": " + msg); }

std::string shapeOf(const TensorView& t) { return shapeStr(t.shape); }

void checkArity(const char* op, const Views& in, size_t minIn, size_t maxIn, const Views& out, size_t nOut) {
  if (in.size() < minIn || in.size() > maxIn)
    shapeError(op, "expected " + std::to_string(minIn) + (maxIn != minIn ? ".." + std::to_string(maxIn) : "") +
                       " inputs, got " + std::to_string(in.size()));
  if (out.size() < nOut)
    shapeError(op, "expected " + std::to_string(nOut) + " outputs, got " + std::to_string(out.size()));
  for (size_t i = 0; i < minIn; i++)
    if (!in[i].data && in[i].numel() > 0) shapeError(op, "input " + std::to_string(i) + " has no data");
  for (size_t i = 0; i < nOut; i++)
    if (!out[i].data && out[i].numel() > 0) shapeError(op, "output " + std::to_string(i) + " has no data");
  for (const auto& t : in)
    for (auto d : t.shape)
      if (d < 0) shapeError(op, "negative dimension in " + shapeOf(t));
  for (const auto& t : out)
    for (auto d : t.shape)
      if (d < 0) shapeError(op, "negative dimension in " + shapeOf(t));
}

void checkDtype(const char* op, const TensorView& t, DType want, const char* what) {
  if (t.dtype != want)
    throw Error("E_ARGUMENT", std::string(op) + ": " + what + " must be " + dtypeName(want) + ", got " +
                               dtypeName(t.dtype));
}

Operand weightOperand(const char* op, const TensorView& t, const char* what) {
  if (t.dtype == DType::F16) return Operand(t.as<const uint16_t>());
  checkDtype(op, t, DType::F32, what);
  return Operand(t.as<const float>());
}

void checkF32(const char* op, const Views& in, const Views& out) {
  for (size_t i = 0; i < in.size(); i++) checkDtype(op, in[i], DType::F32, "input");
  for (size_t i = 0; i < out.size(); i++) checkDtype(op, out[i], DType::F32, "output");
}

void checkNumel(const char* op, const TensorView& t, int64_t n, const char* what) {
  if (t.numel() != n)
    shapeError(op, std::string(what) + " " + shapeOf(t) + " must have " + std::to_string(n) + " elements");
}

void checkShape(const char* op, const TensorView& t, const Shape& s, const char* what) {
  if (t.shape != s) shapeError(op, std::string(what) + " is " + shapeOf(t) + ", expected " + shapeStr(s));
}

Epilogue epilogueOf(const char* op, const OpAttrs& a, const Views& in, const TensorView& out, int64_t channels,
                    int64_t images) {
  const FusedOperands f = fusedOperands(in, a, out.shape, channels, images);
  if (!f.error.empty()) shapeError(op, f.error);
  Epilogue e;
  if (f.bias >= 0) {
    checkDtype(op, in[size_t(f.bias)], DType::F32, "b");
    e.bias = in[size_t(f.bias)].as<float>();
    e.biasImageStride = f.biasPerImage ? channels : 0;
  }
  if (f.residual >= 0) {
    checkDtype(op, in[size_t(f.residual)], DType::F32, "residual");
    e.residual = in[size_t(f.residual)].as<float>();
  }
  return e;
}

namespace {

class CpuBackend : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  DType computeType() const override { return DType::F32; }
  bool readsHalfWeight(OpCode op, size_t slot) const override {
    return slot == 1 && (op == OpCode::LINEAR || op == OpCode::CONV2D || op == OpCode::EMBEDDING);
  }
  void* alloc(size_t bytes) override { return alignedAlloc(bytes); }
  void release(void* p, size_t) override { alignedFree(p); }
  void upload(void* dst, const void* host, size_t bytes) override {
    if (bytes) std::memcpy(dst, host, bytes);
  }
  void download(void* host, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(host, src, bytes);
  }
  int64_t countNonFinite(const TensorView& t) override {
    const int64_t n = t.numel();
    std::atomic<int64_t> bad{0};
    // Float bit patterns: every exponent bit set is Inf or NaN (F16: 0x7c00, BF16: 0x7f80).
    auto count = [&](auto* p, auto mask) {
      forChunks(n, [&](int64_t b, int64_t e) {
        int64_t k = 0;
        for (int64_t i = b; i < e; i++) k += (p[i] & mask) == mask;
        if (k) bad.fetch_add(k, std::memory_order_relaxed);
      });
    };
    switch (t.dtype) {
      case DType::F32: count(static_cast<const uint32_t*>(t.data), uint32_t(0x7f800000u)); break;
      case DType::F16: count(static_cast<const uint16_t*>(t.data), uint16_t(0x7c00u)); break;
      case DType::BF16: count(static_cast<const uint16_t*>(t.data), uint16_t(0x7f80u)); break;
      default: break;
    }
    return bad.load();
  }
  void run(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in,
           const std::vector<TensorView>& out) override {
    switch (op) {
#define IDFORGE_CPU_OP_CASE(name) \
  case OpCode::name:              \
    op_##name(a, in, out);        \
    return;
      IDFORGE_OPS(IDFORGE_CPU_OP_CASE)
#undef IDFORGE_CPU_OP_CASE
    }
    throw Error("E_ARGUMENT", "cpu: unknown op code " + std::to_string(int(op)));
  }
};

}  // namespace
}  // namespace cpu

CpuPeak cpuPeak(double seconds) {
  if (*cpu::isaError()) throw Error("E_BACKEND", cpu::isaError());
  using clock = std::chrono::steady_clock;
  const auto loop = cpu::kern().peak.fmaLoop;
  const int T = cpu::numThreads();
  std::vector<float> sink(size_t(T) * 16);
  // Calibrate on one thread, then every thread runs its share at once for about `seconds`.
  int64_t iters = 1 << 16;
  for (;;) {
    const auto t0 = clock::now();
    loop(iters, sink.data());
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    if (s > 0.02 || iters > (int64_t(1) << 40)) {
      iters = std::max<int64_t>(1, int64_t(double(iters) * std::max(seconds, 0.01) / s));
      break;
    }
    iters *= 4;
  }
  // The best of five rounds: on a shared machine a round another process interrupts reads low.
  iters = std::max<int64_t>(1, iters / 5);
  double best = 0;
  for (int round = 0; round < 5; round++) {
    std::vector<double> flops(size_t(T), 0.0);
    const auto t0 = clock::now();
    cpu::parallel_for(T, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) flops[size_t(t)] = loop(iters, sink.data() + t * 16);
    }, 1);
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    double total = 0;
    for (double f : flops) total += f;
    best = std::max(best, total / s / 1e9);
  }
  return CpuPeak{best, T};
}

CpuIsa cpuIsa() { return CpuIsa{cpu::kern().name, cpu::isaAvailable(), cpu::isaError()}; }

Backend* cpuBackend() {
  if (*cpu::isaError()) throw Error("E_BACKEND", cpu::isaError());
  static cpu::CpuBackend b;
  return &b;
}

}  // namespace idforge
