// Native CUDA checks against the CPU backend (the reference), in fp32 and fp16: the kernel paths
// only a native call can force, bad ids raised at synchronisation, and the stream stress check;
// plus attention benchmarks (fused vs unfused cuBLAS baseline). Every op's own cases are the op
// table's (test/helpers/opcases.ts, run on CUDA by test/ops-cuda.test.ts).
// Inputs are random and never zero; outputs are poisoned with NaN before each run so an
// unwritten element fails. Built and run by scripts/cuda-ops-test.sh (for test/cuda-native.test.ts;
// with --bench for scripts/gpu-bench.sh); on a machine without a GPU it prints cudaInfo()'s reason
// and exits 0.
//
//   cuda_ops_test [--json out.json] [--bench] [--only substring]
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "cuda_common.h"

using namespace idforge;

namespace {

uint64_t rngState = 0x9e3779b97f4a7c15ull;
double urand() {
  rngState ^= rngState << 13;
  rngState ^= rngState >> 7;
  rngState ^= rngState << 17;
  return double(rngState >> 11) / double(1ull << 53);
}
// Never zero: |v| in [0.1·amp, amp], random sign, plus an offset.
float nz(float amp = 1.f, float offset = 0.f) {
  float m = float(0.1 + 0.9 * urand()) * amp;
  return (urand() < 0.5 ? -m : m) + offset;
}

struct HostTensor {
  Shape shape;
  bool ids = false;  // int32
  std::vector<float> f;
  std::vector<int32_t> i;
};

HostTensor randT(Shape s, float amp = 1.f, float offset = 0.f) {
  HostTensor t;
  t.shape = s;
  t.f.resize(size_t(numel(s)));
  for (auto& v : t.f) v = nz(amp, offset);
  return t;
}
HostTensor idsT(Shape s, std::function<int32_t(int64_t)> gen) {
  HostTensor t;
  t.shape = s;
  t.ids = true;
  t.i.resize(size_t(numel(s)));
  for (size_t k = 0; k < t.i.size(); k++) t.i[k] = gen(int64_t(k));
  return t;
}

struct Case {
  std::string name;
  OpCode op;
  OpAttrs a;
  std::vector<HostTensor> in;
  std::vector<Shape> out;
  std::string path;  // which CUDA path this is expected to take (for the report)
  // Runs the CUDA side instead of Backend::run (to force a kernel path).
  std::function<void(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&)> custom;
  double tolF32 = 1e-5, tolF16 = 2e-3;
};

struct Result {
  std::string name, dtype, path, note;
  double rel = 0, maxAbs = 0;
  int64_t nans = 0;
  bool pass = false;
};

std::vector<Result> results;

float roundHalf(float v) { return __half2float(__float2half_rn(v)); }

Result runCase(const Case& c, DType dt) {
  Result r;
  r.name = c.name;
  r.dtype = dtypeName(dt);
  r.path = c.path;
  Backend* gpu = cudaBackend(dt);
  Backend* cpu = cpuBackend();
  std::vector<std::vector<float>> cpuIn(c.in.size());
  std::vector<TensorView> cin, gin, cout, gout;
  std::vector<void*> gbufs;
  auto galloc = [&](size_t bytes) {
    void* p = gpu->alloc(bytes ? bytes : 1);
    gbufs.push_back(p);
    return p;
  };
  size_t es = dtypeSize(dt);
  for (size_t k = 0; k < c.in.size(); k++) {
    const HostTensor& h = c.in[k];
    TensorView cv, gv;
    cv.shape = gv.shape = h.shape;
    if (h.ids) {
      cv.dtype = gv.dtype = DType::I32;
      cv.data = const_cast<int32_t*>(h.i.data());
      gv.data = galloc(h.i.size() * 4);
      gpu->upload(gv.data, h.i.data(), h.i.size() * 4);
    } else {
      cpuIn[k] = h.f;
      if (dt == DType::F16)
        for (auto& v : cpuIn[k]) v = roundHalf(v);  // both sides see the same fp16 values
      cv.dtype = DType::F32;
      cv.data = cpuIn[k].data();
      gv.dtype = dt;
      gv.data = galloc(h.f.size() * es);
      if (dt == DType::F16) {
        std::vector<__half> hv(h.f.size());
        for (size_t j = 0; j < hv.size(); j++) hv[j] = __float2half_rn(h.f[j]);
        gpu->upload(gv.data, hv.data(), hv.size() * 2);
      } else {
        gpu->upload(gv.data, h.f.data(), h.f.size() * 4);
      }
    }
    cin.push_back(cv);
    gin.push_back(gv);
  }
  std::vector<std::vector<float>> cpuOut(c.out.size());
  for (size_t k = 0; k < c.out.size(); k++) {
    cpuOut[k].assign(size_t(numel(c.out[k])), NAN);
    TensorView cv{cpuOut[k].data(), DType::F32, c.out[k]};
    TensorView gv{galloc(size_t(numel(c.out[k])) * es), dt, c.out[k]};
    CK(cudaMemsetAsync(gv.data, 0xff, size_t(numel(c.out[k])) * es, cuda::ctx().stream));  // NaN in f16 and f32
    cout.push_back(cv);
    gout.push_back(gv);
  }
  try {
    cpu->run(c.op, c.a, cin, cout);
  } catch (const std::exception& e) {
    r.note = std::string("cpu reference failed: ") + e.what();
    for (void* p : gbufs) gpu->release(p, 0);
    return r;
  }
  try {
    if (c.custom) c.custom(c.a, gin, gout);
    else gpu->run(c.op, c.a, gin, gout);
    gpu->synchronize();
  } catch (const std::exception& e) {
    r.note = std::string("cuda failed: ") + e.what();
    for (void* p : gbufs) gpu->release(p, 0);
    return r;
  }
  double num = 0, den = 0;
  for (size_t k = 0; k < c.out.size(); k++) {
    size_t n = cpuOut[k].size();
    std::vector<float> g(n);
    if (dt == DType::F16) {
      std::vector<__half> hv(n);
      gpu->download(hv.data(), gout[k].data, n * 2);
      for (size_t j = 0; j < n; j++) g[j] = __half2float(hv[j]);
    } else {
      gpu->download(g.data(), gout[k].data, n * 4);
    }
    for (size_t j = 0; j < n; j++) {
      double ref = cpuOut[k][j], v = g[j];
      if (std::isnan(v) || std::isinf(v)) {
        r.nans++;
        continue;
      }
      double d = v - ref;
      num += d * d;
      den += ref * ref;
      r.maxAbs = std::max(r.maxAbs, std::fabs(d));
    }
  }
  for (void* p : gbufs) gpu->release(p, 0);
  r.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  double tol = dt == DType::F16 ? c.tolF16 : c.tolF32;
  r.pass = r.nans == 0 && r.rel <= tol;
  return r;
}

std::vector<Case> buildCases() {
  std::vector<Case> cs;
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  // Every op at SD 1.5, odd and kernel-path shapes is a case of the op table (test/helpers/opcases.ts,
  // run on CUDA by test/ops-cuda.test.ts). Here: the paths only a native call can force (the
  // unfused and generic attention kernels, the scratch-budget chunking of the backward ops).
  auto att = [&](std::string n, int B, int H, int Nq, int Nk, int d, int dv, bool causal, bool capture,
                 std::string path, bool forceUnfused = false, bool forceGeneric = false) {
    OpAttrs a;
    a.heads = H;
    a.scale = 1.0 / std::sqrt(double(d));
    a.causal = causal;
    a.capture = capture;
    std::vector<Shape> outs = {{B, Nq, int64_t(H) * dv}};
    if (capture) outs.push_back({int64_t(B) * H, Nq, Nk});
    Case c{n, OpCode::ATTENTION, a,
           {randT({B, Nq, int64_t(H) * d}), randT({B, Nk, int64_t(H) * d}), randT({B, Nk, int64_t(H) * dv})},
           outs, path};
    if (forceUnfused) c.custom = cuda::attentionUnfused;
    if (forceGeneric) c.custom = cuda::attentionGenericForTest;
    add(c);
  };
  auto convb = [&](std::string n, Shape x, Shape w, int s, int p, int64_t budget = 0) {
    int64_t Ho = (x[2] + 2 * p - w[2]) / s + 1, Wo = (x[3] + 2 * p - w[3]) / s + 1;
    OpAttrs a;
    a.stride = s;
    a.pad = p;
    Case c{n, OpCode::CONV2D_BACKWARD_INPUT, a,
           {randT({x[0], w[0], Ho, Wo}), randT(w, float(1.0 / std::sqrt(double(w[0] * w[2] * w[3]))))}, {x},
           w[2] == 1 && w[3] == 1 && s == 1 && p == 0 ? "cublas 1x1" : budget ? "col chunks+col2im" : "cublas+col2im"};
    if (budget)
      c.custom = [budget](const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
        cuda::conv2dBackwardInputBudget(a, in, out, budget);
      };
    add(c);
  };
  auto attb = [&](std::string n, int B, int H, int Nq, int Nk, int d, int dv, bool causal, bool dp, int64_t budget = 0) {
    OpAttrs a;
    a.heads = H;
    a.scale = 1.0 / std::sqrt(double(d));
    a.causal = causal;
    std::vector<HostTensor> in = {randT({B, Nq, int64_t(H) * d}), randT({B, Nk, int64_t(H) * d}),
                                  randT({B, Nk, int64_t(H) * dv}), randT({B, Nq, int64_t(H) * dv})};
    if (dp) in.push_back(randT({int64_t(B) * H, Nq, Nk}));
    Case c{n, OpCode::ATTENTION_BACKWARD, a, in,
           {{B, Nq, int64_t(H) * d}, {B, Nk, int64_t(H) * d}, {B, Nk, int64_t(H) * dv}},
           budget ? "cublas, query chunks" : "cublas per head chunk"};
    if (budget)
      c.custom = [budget](const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
        cuda::attentionBackwardBudget(a, in, out, budget);
      };
    add(c);
  };
  att("attn forced unfused N1024 d40 H8", 1, 8, 1024, 1024, 40, 40, false, false, "unfused", true);
  att("attn forced unfused capture causal", 1, 2, 300, 300, 40, 40, true, true, "unfused", true);
  att("attn forced generic N1024 d80", 1, 8, 1024, 1024, 80, 80, false, false, "generic", false, true);
  att("attn forced generic cross d160 capture", 1, 8, 256, 77, 160, 160, false, true, "generic", false, true);
  convb("conv_backward channel chunks [1,70,24,24]←32", {1, 70, 24, 24}, {32, 70, 3, 3}, 1, 1, int64_t(9) * 576 * 4 * 16);
  convb("conv_backward image chunks [3,16,20,20]←8", {3, 16, 20, 20}, {8, 16, 3, 3}, 1, 1, int64_t(144) * 400 * 4 * 2);
  attb("attn_backward query chunks N1000 d64 H2 causal dp", 1, 2, 1000, 1000, 64, 64, true, true, int64_t(1) << 20);
  attb("attn_backward query chunks Nq300 Nk77 d40 H3 B2", 2, 3, 300, 77, 40, 40, false, false, int64_t(77) * 12 * 50);
  return cs;
}

// ---- benchmarks ---------------------------------------------------------------------------------

struct DevT {
  TensorView v;
  explicit DevT(Shape s, DType dt) {
    v.shape = s;
    v.dtype = dt;
    size_t n = size_t(numel(s));
    v.data = cuda::ctx().alloc(n * dtypeSize(dt));
    std::vector<__half> h(n);
    for (auto& x : h) x = __float2half_rn(nz());
    CK(cudaMemcpy(v.data, h.data(), n * 2, cudaMemcpyHostToDevice));
  }
  ~DevT() { cuda::ctx().release(v.data); }
};

double timeMs(const std::function<void()>& f) {
  cudaStream_t s = cuda::ctx().stream;
  for (int i = 0; i < 3; i++) f();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, s));
  f();
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float one = 0;
  CK(cudaEventElapsedTime(&one, a, b));
  int iters = std::max(3, std::min(200, int(100.0 / std::max(one, 0.001f))));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; i++) f();
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return double(ms) / iters;
}

std::string benchJson;

void benchAttention() {
  const int B = 2, H = 8;
  std::printf("\nattention fp16, B=%d H=%d (TFLOP/s = 4·B·H·Nq·Nk·d / time)\n", B, H);
  std::printf("%-26s %10s %10s %10s %10s\n", "shape", "fused ms", "fused TF", "unfused ms", "unfused TF");
  Backend* gpu = cudaBackend(DType::F16);
  struct S { int nq, nk, d; bool cap; };
  std::vector<S> shapes;
  for (int n : {4096, 1024, 256, 64})
    for (int d : {40, 80, 160}) shapes.push_back({n, n, d, false});
  shapes.push_back({4096, 77, 40, false});
  shapes.push_back({4096, 77, 40, true});
  shapes.push_back({1024, 77, 80, false});
  shapes.push_back({1024, 77, 80, true});
  for (const S& s : shapes) {
    DevT q({B, s.nq, H * s.d}, DType::F16), k({B, s.nk, H * s.d}, DType::F16), v({B, s.nk, H * s.d}, DType::F16);
    DevT o({B, s.nq, H * s.d}, DType::F16);
    OpAttrs a;
    a.heads = H;
    a.scale = 1.0 / std::sqrt(double(s.d));
    a.capture = s.cap;
    std::vector<TensorView> outs = {o.v};
    std::unique_ptr<DevT> p;
    if (s.cap) {
      p.reset(new DevT({B * H, s.nq, s.nk}, DType::F16));
      outs.push_back(p->v);
    }
    std::vector<TensorView> ins = {q.v, k.v, v.v};
    double fused = timeMs([&] { gpu->run(OpCode::ATTENTION, a, ins, outs); });
    double unf = timeMs([&] { cuda::attentionUnfused(a, ins, outs); });
    double flops = 4.0 * B * H * double(s.nq) * s.nk * s.d;
    char name[64];
    std::snprintf(name, sizeof name, "Nq%d Nk%d d%d%s", s.nq, s.nk, s.d, s.cap ? " cap" : "");
    std::printf("%-26s %10.4f %10.1f %10.4f %10.1f\n", name, fused, flops / fused * 1e-9, unf, flops / unf * 1e-9);
    char js[512];
    std::snprintf(js, sizeof js,
                  "%s{\"kind\":\"attention\",\"B\":%d,\"H\":%d,\"Nq\":%d,\"Nk\":%d,\"d\":%d,\"capture\":%s,"
                  "\"fused_ms\":%.5f,\"fused_tflops\":%.2f,\"unfused_ms\":%.5f,\"unfused_tflops\":%.2f}",
                  benchJson.empty() ? "" : ",\n", B, H, s.nq, s.nk, s.d, s.cap ? "true" : "false", fused,
                  flops / fused * 1e-9, unf, flops / unf * 1e-9);
    benchJson += js;
  }
}

void benchOps() {
  std::printf("\nSD 1.5 op timings, fp16, batch 2 (UNet at 64x64 latents)\n");
  Backend* gpu = cudaBackend(DType::F16);
  auto one = [&](const char* name, OpCode op, OpAttrs a, std::vector<Shape> ins, std::vector<Shape> outs,
                 double flops, double bytes) {
    std::vector<std::unique_ptr<DevT>> keep;
    std::vector<TensorView> iv, ov;
    for (auto& s : ins) keep.emplace_back(new DevT(s, DType::F16)), iv.push_back(keep.back()->v);
    for (auto& s : outs) keep.emplace_back(new DevT(s, DType::F16)), ov.push_back(keep.back()->v);
    double ms = timeMs([&] { gpu->run(op, a, iv, ov); });
    std::printf("%-44s %9.4f ms  %8.1f TFLOP/s  %7.0f GB/s\n", name, ms, flops / ms * 1e-9, bytes / ms * 1e-6);
    char js[512];
    std::snprintf(js, sizeof js, ",\n{\"kind\":\"op\",\"name\":\"%s\",\"ms\":%.5f,\"tflops\":%.2f,\"gbps\":%.1f}", name,
                  ms, flops / ms * 1e-9, bytes / ms * 1e-6);
    benchJson += js;
  };
  auto convF = [](double B, double C, double O, double HW, double k) { return 2 * B * C * O * HW * k * k; };
  OpAttrs c3;
  c3.pad = 1;
  one("conv3x3 [2,320,64,64]→320", OpCode::CONV2D, c3, {{2, 320, 64, 64}, {320, 320, 3, 3}, {320}}, {{2, 320, 64, 64}}, convF(2, 320, 320, 4096, 3), 0);
  one("conv3x3 [2,640,32,32]→640", OpCode::CONV2D, c3, {{2, 640, 32, 32}, {640, 640, 3, 3}, {640}}, {{2, 640, 32, 32}}, convF(2, 640, 640, 1024, 3), 0);
  one("conv3x3 [2,1280,16,16]→1280", OpCode::CONV2D, c3, {{2, 1280, 16, 16}, {1280, 1280, 3, 3}, {1280}}, {{2, 1280, 16, 16}}, convF(2, 1280, 1280, 256, 3), 0);
  one("conv3x3 [2,1280,8,8]→1280", OpCode::CONV2D, c3, {{2, 1280, 8, 8}, {1280, 1280, 3, 3}, {1280}}, {{2, 1280, 8, 8}}, convF(2, 1280, 1280, 64, 3), 0);
  one("linear [2·4096,320]→2560 (geglu proj)", OpCode::LINEAR, {}, {{2, 4096, 320}, {2560, 320}, {2560}}, {{2, 4096, 2560}}, 2.0 * 8192 * 320 * 2560, 0);
  OpAttrs g;
  g.groups = 32;
  g.silu = true;
  g.eps = 1e-5;
  double gnB = 2.0 * 2 * 320 * 4096 * 2;
  one("group_norm+silu [2,320,64,64]", OpCode::GROUP_NORM, g, {{2, 320, 64, 64}, {320}, {320}}, {{2, 320, 64, 64}}, 0, gnB);
  one("layer_norm [2,4096,320]", OpCode::LAYER_NORM, {}, {{2, 4096, 320}, {320}, {320}}, {{2, 4096, 320}}, 0, gnB);
  one("geglu [2,4096,2560]→1280", OpCode::GEGLU, {}, {{2, 4096, 2560}}, {{2, 4096, 1280}}, 0, 2.0 * 8192 * 3840);
  one("add [2,320,64,64]+[2,320,1,1]", OpCode::ADD, {}, {{2, 320, 64, 64}, {2, 320, 1, 1}}, {{2, 320, 64, 64}}, 0, gnB);
  OpAttrs pm;
  pm.perm = {0, 2, 3, 1};
  one("permute (0,2,3,1) [2,320,64,64]", OpCode::PERMUTE, pm, {{2, 320, 64, 64}}, {{2, 64, 64, 320}}, 0, gnB);
}

// Streams under load: 4 threads, each on a stream of its own (cudaCreateStream), run a fused
// LINEAR (+b +residual, fp16) 60 times with pool churn (buffers released and taken again each
// round); one of them also captures its op into a CUDA graph and replays it. Meanwhile a fifth
// thread raises an out-of-range EMBEDDING id on its own stream over and over. Every worker's
// result must match the CPU op, and none of them may see that error; the erring thread must see
// it every time; and released streams are handed out again.
Result streamStress() {
  Result r;
  r.name = "4 streams × 60 fused linears + graph replay, bad ids on a 5th stream";
  r.dtype = "float16";
  HostTensor x = randT({2, 1024, 320}), w = randT({320, 320}, 0.05f), b = randT({320}), res = randT({2, 1024, 320});
  OpAttrs fusedRes;
  fusedRes.residual = true;
  const size_t n = size_t(2 * 1024 * 320);
  std::vector<float> ref(n);
  {
    Backend* cpu = cpuBackend();
    cpu->run(OpCode::LINEAR, fusedRes, {{x.f.data(), DType::F32, x.shape}, {w.f.data(), DType::F32, w.shape},
                                  {b.f.data(), DType::F32, b.shape}, {res.f.data(), DType::F32, res.shape}},
             {{ref.data(), DType::F32, {2, 1024, 320}}});
  }
  auto half = [](const HostTensor& t) {
    std::vector<__half> h(t.f.size());
    for (size_t i = 0; i < h.size(); i++) h[i] = __float2half_rn(t.f[i]);
    return h;
  };
  const auto hx = half(x), hw = half(w), hb = half(b), hr = half(res);
  constexpr int kThreads = 4, kRounds = 60;
  std::vector<int> ids;
  for (int i = 0; i <= kThreads; i++) ids.push_back(cudaCreateStream());
  std::vector<double> err(kThreads, -1);
  std::vector<std::string> why(kThreads);
  int badSeen = 0, badRuns = 0;
  std::string badWhy;
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; t++)
    pool.emplace_back([&, t] {
      Backend* be = cudaBackend(DType::F16, ids[size_t(t)]);
      try {
        auto up = [&](const std::vector<__half>& h) {
          void* p = be->alloc(h.size() * 2);
          be->upload(p, h.data(), h.size() * 2);
          return p;
        };
        void *dx = up(hx), *dw = up(hw), *db = up(hb), *dr = up(hr);
        std::vector<TensorView> in = {{dx, DType::F16, x.shape}, {dw, DType::F16, w.shape}, {db, DType::F16, b.shape}, {dr, DType::F16, res.shape}};
        void* out = nullptr;
        void* graph = nullptr;
        const std::vector<TensorView> o = {{nullptr, DType::F16, {2, 1024, 320}}};
        for (int k = 0; k < kRounds; k++) {
          if (graph) {  // replays write the buffer the graph was captured with: `out` stays
            be->launchGraph(graph);
            continue;
          }
          if (out) be->release(out, n * 2);
          out = be->alloc(n * 2);
          std::vector<TensorView> ov = o;
          ov[0].data = out;
          if (t == 0 && k == kRounds / 2) {  // thread 0: capture once (after 30 eager rounds), then replay
            be->beginCapture();
            try {
              be->run(OpCode::LINEAR, fusedRes, in, ov);
            } catch (...) {
              be->abortCapture();
              throw;
            }
            std::string whyNot;
            graph = be->endCapture(&whyNot);
            if (!graph) throw Error("E_BACKEND", "capture failed: " + whyNot);
            be->launchGraph(graph);
            continue;
          }
          be->run(OpCode::LINEAR, fusedRes, in, ov);
        }
        be->synchronize();
        std::vector<__half> got(n);
        be->download(got.data(), out, n * 2);  // for thread 0: what the last replay wrote
        double num = 0, den = 0;
        for (size_t i = 0; i < n; i++) {
          double d = double(__half2float(got[i])) - ref[i];
          num += d * d;
          den += double(ref[i]) * ref[i];
        }
        err[size_t(t)] = std::sqrt(num / den);
        if (graph) be->destroyGraph(graph);
        for (void* p : {dx, dw, db, dr, out}) be->release(p, 0);
      } catch (const std::exception& e) {
        why[size_t(t)] = e.what();
      }
    });
  std::thread bad([&] {
    Backend* be = cudaBackend(DType::F32, ids[kThreads]);
    std::vector<int32_t> badIds = {1, 5000, 2};
    std::vector<float> tab(40, 0.5f);
    void* di = be->alloc(12);
    void* dt = be->alloc(160);
    void* dout = be->alloc(48);
    be->upload(di, badIds.data(), 12);
    be->upload(dt, tab.data(), 160);
    for (int k = 0; k < 200; k++) {
      badRuns++;
      try {
        be->run(OpCode::EMBEDDING, {}, {{di, DType::I32, {1, 3}}, {dt, DType::F32, {10, 4}}}, {{dout, DType::F32, {1, 3, 4}}});
        be->synchronize();
      } catch (const Error& e) {
        if (e.code() == "E_ARGUMENT") badSeen++;
        else badWhy = e.what();
      }
    }
    for (void* p : {di, dt, dout}) be->release(p, 0);
  });
  for (auto& th : pool) th.join();
  bad.join();
  r.pass = badSeen == badRuns && badWhy.empty();
  r.note = "bad ids reported " + std::to_string(badSeen) + "/" + std::to_string(badRuns) + (badWhy.empty() ? "" : " (" + badWhy + ")");
  for (int t = 0; t < kThreads; t++) {
    r.rel = std::max(r.rel, err[size_t(t)]);
    if (!why[size_t(t)].empty() || !(err[size_t(t)] >= 0 && err[size_t(t)] <= 2e-3)) {
      r.pass = false;
      r.note += "; stream " + std::to_string(ids[size_t(t)]) + ": " + (why[size_t(t)].empty() ? "rel " + std::to_string(err[size_t(t)]) : why[size_t(t)]);
    }
  }
  for (int id : ids) cudaReleaseStream(id);
  std::vector<int> again;
  for (int i = 0; i <= kThreads; i++) again.push_back(cudaCreateStream());
  bool reused = again == ids;
  for (int id : again) cudaReleaseStream(id);
  if (!reused) {
    r.pass = false;
    r.note += "; released streams were not handed out again";
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string jsonPath, only;
  bool bench = false;
  for (int i = 1; i < argc; i++) {
    std::string s = argv[i];
    if (s == "--json" && i + 1 < argc) jsonPath = argv[++i];
    else if (s == "--bench") bench = true;
    else if (s == "--only" && i + 1 < argc) only = argv[++i];
  }
  CudaInfo info = cudaInfo();
  std::printf("cudaInfo: compiled=%d available=%d device='%s' reason='%s'\n", info.compiled, info.available,
              info.device.c_str(), info.reason.c_str());
  if (!info.available) {
    try {
      cudaBackend(DType::F16);
      std::printf("FAIL: cudaBackend did not throw without a device\n");
      return 1;
    } catch (const Error& e) {
      std::printf("cudaBackend throws %s: %s\nno GPU: nothing else to check\n", e.code().c_str(), e.what());
      return 0;
    }
  }
  std::printf("cuBLAS: %s\n\n", cuda::ctx().api->path.c_str());
  int fails = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (const Case& c : buildCases()) {
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    for (DType dt : {DType::F32, DType::F16}) {
      Result r = runCase(c, dt);
      results.push_back(r);
      if (!r.pass) fails++;
      std::printf("%-4s %-44s %-8s rel %.3e  max %.3e  nan %lld  %s %s\n", r.pass ? "ok" : "FAIL", r.name.c_str(),
                  r.dtype.c_str(), r.rel, r.maxAbs, (long long)r.nans, r.path.c_str(), r.note.c_str());
      std::fflush(stdout);
    }
  }
  // Bad ids must surface as E_ARGUMENT at the next synchronisation, not as a fault.
  {
    Backend* gpu = cudaBackend(DType::F32);
    Case c{"embedding bad id", OpCode::EMBEDDING, {}, {idsT({1, 3}, [](int64_t k) { return k == 1 ? 5000 : 1; }), randT({10, 4})}, {{1, 3, 4}}, ""};
    Result r;
    r.name = "embedding out-of-range id → E_ARGUMENT";
    r.dtype = "float32";
    void* ids = gpu->alloc(12);
    void* tb = gpu->alloc(160);
    void* out = gpu->alloc(48);
    gpu->upload(ids, c.in[0].i.data(), 12);
    gpu->upload(tb, c.in[1].f.data(), 160);
    try {
      gpu->run(OpCode::EMBEDDING, {}, {{ids, DType::I32, {1, 3}}, {tb, DType::F32, {10, 4}}}, {{out, DType::F32, {1, 3, 4}}});
      gpu->synchronize();
      r.note = "no error raised";
    } catch (const Error& e) {
      r.pass = e.code() == "E_ARGUMENT";
      r.note = e.code() + ": " + e.what();
    }
    gpu->release(ids, 12);
    gpu->release(tb, 160);
    gpu->release(out, 48);
    results.push_back(r);
    if (!r.pass) fails++;
    std::printf("%-4s %s  %s\n", r.pass ? "ok" : "FAIL", r.name.c_str(), r.note.c_str());
  }
  // INJECT_BACKWARD with a slot beyond the vectors: E_ARGUMENT at the next synchronisation.
  {
    Backend* gpu = cudaBackend(DType::F32);
    Result r;
    r.name = "inject_backward out-of-range slot → E_ARGUMENT";
    r.dtype = "float32";
    std::vector<int32_t> sl = {0, 7, -1};
    std::vector<float> dy(12, 1.f);
    void* slots = gpu->alloc(12);
    void* d = gpu->alloc(48);
    void* out = gpu->alloc(32);
    gpu->upload(slots, sl.data(), 12);
    gpu->upload(d, dy.data(), 48);
    try {
      gpu->run(OpCode::INJECT_BACKWARD, {}, {{d, DType::F32, {1, 3, 4}}, {slots, DType::I32, {1, 3}}}, {{out, DType::F32, {2, 4}}});
      gpu->synchronize();
      r.note = "no error raised";
    } catch (const Error& e) {
      r.pass = e.code() == "E_ARGUMENT";
      r.note = e.code() + ": " + e.what();
    }
    gpu->release(slots, 12);
    gpu->release(d, 48);
    gpu->release(out, 32);
    results.push_back(r);
    if (!r.pass) fails++;
    std::printf("%-4s %s  %s\n", r.pass ? "ok" : "FAIL", r.name.c_str(), r.note.c_str());
  }
  {
    Result r = streamStress();
    results.push_back(r);
    if (!r.pass) fails++;
    std::printf("%-4s %s  max rel %.3e  %s\n", r.pass ? "ok" : "FAIL", r.name.c_str(), r.rel, r.note.c_str());
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\n%d of %zu checks failed (%.1f s)\n", fails, results.size(), secs);
  if (bench) {
    benchAttention();
    benchOps();
  }
  if (!jsonPath.empty()) {
    FILE* f = std::fopen(jsonPath.c_str(), "w");
    if (f) {
      std::fprintf(f, "{\"device\":\"%s\",\"cublas\":\"%s\",\"checks\":[\n", info.device.c_str(), cuda::ctx().api->path.c_str());
      for (size_t i = 0; i < results.size(); i++) {
        const Result& r = results[i];
        std::string note;
        for (char ch : r.note) note += (ch == '"' || ch == '\\') ? '\'' : (ch == '\n' ? ' ' : ch);
        std::fprintf(f, "%s{\"name\":\"%s\",\"dtype\":\"%s\",\"path\":\"%s\",\"rel_l2\":%.4e,\"max_abs\":%.4e,\"nan\":%lld,\"pass\":%s,\"note\":\"%s\"}",
                     i ? ",\n" : "", r.name.c_str(), r.dtype.c_str(), r.path.c_str(), r.rel, r.maxAbs,
                     (long long)r.nans, r.pass ? "true" : "false", note.c_str());
      }
      std::fprintf(f, "\n],\"bench\":[\n%s\n]}\n", benchJson.c_str());
      std::fclose(f);
    }
  }
  return fails ? 1 : 0;
}
