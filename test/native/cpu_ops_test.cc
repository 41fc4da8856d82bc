// Checks every op of the CPU backend against naive double-precision references, on small odd
// shapes (edges of every blocking) and on SD-1.5-shaped tensors (sampled where a full double
// reference would take minutes), then prints GFLOP/s of the heavy kernels.
// Outputs start as NaN so an element the backend forgets to write fails the check.
// Build and run: scripts/test-cpu-ops.sh
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "cpu/winograd.h"

using namespace idforge;

namespace {

int g_failures = 0, g_checks = 0;
std::mt19937_64 g_rng(12345);

struct Tensor {
  Shape shape;
  DType dtype = DType::F32;
  std::vector<float> f;
  std::vector<int32_t> i;
  TensorView view() {
    TensorView v;
    v.shape = shape;
    v.dtype = dtype;
    v.data = dtype == DType::I32 ? static_cast<void*>(i.data()) : static_cast<void*>(f.data());
    return v;
  }
  int64_t n() const { return numel(shape); }
  float& operator[](int64_t k) { return f[size_t(k)]; }
};

// Never zero: magnitudes in [lo, hi] with random signs.
Tensor rnd(Shape s, double lo = 0.05, double hi = 1.0) {
  Tensor t;
  t.shape = s;
  t.f.resize(size_t(numel(s)));
  std::uniform_real_distribution<double> u(lo, hi);
  for (auto& x : t.f) x = float((g_rng() & 1) ? u(g_rng) : -u(g_rng));
  return t;
}

Tensor nans(Shape s) {
  Tensor t;
  t.shape = s;
  t.f.assign(size_t(numel(s)), std::numeric_limits<float>::quiet_NaN());
  return t;
}

Tensor ints(Shape s, std::vector<int32_t> v) {
  Tensor t;
  t.shape = s;
  t.dtype = DType::I32;
  t.i = std::move(v);
  return t;
}

void run(OpCode op, const OpAttrs& a, std::vector<Tensor*> in, std::vector<Tensor*> out) {
  std::vector<TensorView> vi, vo;
  for (auto* t : in) vi.push_back(t ? t->view() : TensorView{});
  for (auto* t : out) vo.push_back(t->view());
  cpuBackend()->run(op, a, vi, vo);
}

// Compares got[idx[k]] with ref[k] (all of got when idx is empty), and requires every element of
// got to be finite (the NaN poison catches unwritten outputs).
void check(const std::string& name, const Tensor& got, const std::vector<double>& ref,
           const std::vector<int64_t>& idx = {}, double tol = 1e-5) {
  g_checks++;
  int64_t nonFinite = 0;
  for (float x : got.f)
    if (!std::isfinite(x)) nonFinite++;
  double num = 0, den = 0;
  size_t n = idx.empty() ? got.f.size() : idx.size();
  bool sizeOk = ref.size() == n;
  for (size_t k = 0; sizeOk && k < n; k++) {
    double g = got.f[size_t(idx.empty() ? int64_t(k) : idx[k])];
    num += (g - ref[k]) * (g - ref[k]);
    den += ref[k] * ref[k];
  }
  double rel = std::sqrt(num / (den > 0 ? den : 1));
  bool ok = sizeOk && nonFinite == 0 && rel <= tol;
  if (!ok) g_failures++;
  std::printf("%s %-58s relL2 %.2e%s%s\n", ok ? "ok  " : "FAIL", name.c_str(), rel,
              nonFinite ? (" non-finite: " + std::to_string(nonFinite)).c_str() : "",
              sizeOk ? "" : " (reference size mismatch)");
}

void expectError(const std::string& name, const std::string& code, const std::function<void()>& fn) {
  g_checks++;
  std::string got = "no error";
  try {
    fn();
  } catch (const Error& e) {
    got = e.code() + ": " + e.what();
    if (e.code() == code) {
      std::printf("ok   %-58s %s\n", name.c_str(), got.c_str());
      return;
    }
  } catch (const std::exception& e) {
    got = std::string("std::exception: ") + e.what();
  }
  g_failures++;
  std::printf("FAIL %-58s expected %s, got %s\n", name.c_str(), code.c_str(), got.c_str());
}

std::vector<int64_t> sample(int64_t n, int64_t count) {
  std::vector<int64_t> v;
  if (count >= n) {
    for (int64_t i = 0; i < n; i++) v.push_back(i);
    return v;
  }
  for (int64_t k = 0; k < count; k++) v.push_back(int64_t(g_rng() % uint64_t(n)));
  return v;
}

std::string S(const Shape& s) { return shapeStr(s); }

// Best of IDFORGE_BENCH_REPS (default 3) runs: the minimum is the least noisy on a shared machine.
double seconds(const std::function<void()>& fn) {
  const char* env = std::getenv("IDFORGE_BENCH_REPS");
  int reps = env && std::atoi(env) > 0 ? std::atoi(env) : 3;
  fn();  // warm-up (thread pool, page faults)
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

// ---- references ------------------------------------------------------------------------------

namespace {

// y[m, n] = sum_k x[m, k] w[n, k] (+ b[n]), for flat output indices idx of [M, N].
std::vector<double> linearRef(Tensor& x, Tensor& w, Tensor* b, int64_t N, int64_t K, const std::vector<int64_t>& idx) {
  std::vector<double> r;
  for (int64_t e : idx) {
    int64_t m = e / N, n = e % N;
    double s = b ? double(b->f[size_t(n)]) : 0.0;
    for (int64_t k = 0; k < K; k++) s += double(x[m * K + k]) * w[n * K + k];
    r.push_back(s);
  }
  return r;
}

std::vector<double> convRef(Tensor& x, Tensor& w, Tensor* b, int64_t s, int64_t p, const Shape& os,
                            const std::vector<int64_t>& idx) {
  const int64_t C = x.shape[1], H = x.shape[2], W = x.shape[3], kh = w.shape[2], kw = w.shape[3];
  const int64_t O = os[1], Ho = os[2], Wo = os[3];
  std::vector<double> r;
  for (int64_t e : idx) {
    int64_t ox = e % Wo, oy = (e / Wo) % Ho, o = (e / (Wo * Ho)) % O, bb = e / (Wo * Ho * O);
    double acc = b ? double(b->f[size_t(o)]) : 0.0;
    for (int64_t c = 0; c < C; c++)
      for (int64_t ky = 0; ky < kh; ky++)
        for (int64_t kx = 0; kx < kw; kx++) {
          int64_t iy = oy * s - p + ky, ix = ox * s - p + kx;
          if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
          acc += double(x[((bb * C + c) * H + iy) * W + ix]) * w[((o * C + c) * kh + ky) * kw + kx];
        }
    r.push_back(acc);
  }
  return r;
}

// Reference attention for rows `rows` (pairs of (b*H + h, i)); returns o values [rows][dv] and,
// when wantP, probabilities [rows][Nk] appended after them.
void attentionRef(Tensor& q, Tensor& k, Tensor& v, int64_t H, double scale, bool causal,
                  const std::vector<std::pair<int64_t, int64_t>>& rows, std::vector<double>& oRef,
                  std::vector<int64_t>& oIdx, std::vector<double>* pRef, std::vector<int64_t>* pIdx) {
  const int64_t Nq = q.shape[1], Nk = k.shape[1], d = q.shape[2] / H, dv = v.shape[2] / H;
  for (auto [bh, i] : rows) {
    int64_t b = bh / H, h = bh % H;
    std::vector<double> s(static_cast<size_t>(Nk));
    double mx = -1e300;
    for (int64_t j = 0; j < Nk; j++) {
      double acc = 0;
      for (int64_t c = 0; c < d; c++) acc += double(q[(b * Nq + i) * H * d + h * d + c]) * k[(b * Nk + j) * H * d + h * d + c];
      s[size_t(j)] = causal && j > i ? -INFINITY : acc * scale;
      mx = std::max(mx, s[size_t(j)]);
    }
    double sum = 0;
    for (auto& x : s) sum += (x = std::exp(x - mx));
    for (auto& x : s) x /= sum;
    for (int64_t c = 0; c < dv; c++) {
      double acc = 0;
      for (int64_t j = 0; j < Nk; j++) acc += s[size_t(j)] * v[(b * Nk + j) * H * dv + h * dv + c];
      oRef.push_back(acc);
      oIdx.push_back((b * Nq + i) * H * dv + h * dv + c);
    }
    if (pRef)
      for (int64_t j = 0; j < Nk; j++) {
        pRef->push_back(s[size_t(j)]);
        pIdx->push_back((bh * Nq + i) * Nk + j);
      }
  }
}

double geluD(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

// ---- op tests ----------------------------------------------------------------------------------

void testLinear(Shape xs, int64_t N, bool bias, int64_t samples = 0) {
  const int64_t K = xs.back();
  Tensor x = rnd(xs), w = rnd({N, K}), b = rnd({N});
  Shape os = xs;
  os.back() = N;
  Tensor y = nans(os);
  run(OpCode::LINEAR, {}, {&x, &w, bias ? &b : nullptr}, {&y});
  auto idx = samples ? sample(y.n(), samples) : sample(y.n(), y.n());
  check("linear x" + S(xs) + " w[" + std::to_string(N) + "," + std::to_string(K) + "]" + (bias ? " +b" : ""), y,
        linearRef(x, w, bias ? &b : nullptr, N, K, idx), samples ? idx : std::vector<int64_t>{});
}

void testMatmul(int64_t B, int64_t M, int64_t K, int64_t N, bool transB, bool bcastB) {
  int64_t BB = bcastB ? 1 : B;
  Tensor a = rnd({B, M, K}), b = transB ? rnd({BB, N, K}) : rnd({BB, K, N}), y = nans({B, M, N});
  OpAttrs at;
  at.transB = transB;
  run(OpCode::MATMUL, at, {&a, &b}, {&y});
  std::vector<double> ref;
  for (int64_t i = 0; i < B; i++)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0;
        int64_t bo = bcastB ? 0 : i * K * N;
        for (int64_t k = 0; k < K; k++) s += double(a[(i * M + m) * K + k]) * (transB ? b[bo + n * K + k] : b[bo + k * N + n]);
        ref.push_back(s);
      }
  check("matmul a[" + std::to_string(B) + "," + std::to_string(M) + "," + std::to_string(K) + "] b" + S(b.shape) +
            (transB ? " transB" : ""),
        y, ref);
}

void testConv(Shape xs, int64_t O, int64_t kh, int64_t kw, int64_t s, int64_t p, bool bias, int64_t samples = 0) {
  Tensor x = rnd(xs), w = rnd({O, xs[1], kh, kw}, 0.05, 1.0 / std::sqrt(double(xs[1] * kh * kw)) + 0.05), b = rnd({O});
  Shape os = {xs[0], O, (xs[2] + 2 * p - kh) / s + 1, (xs[3] + 2 * p - kw) / s + 1};
  Tensor y = nans(os);
  OpAttrs a;
  a.stride = s;
  a.pad = p;
  run(OpCode::CONV2D, a, {&x, &w, bias ? &b : nullptr}, {&y});
  auto idx = sample(y.n(), samples ? samples : y.n());
  check("conv2d x" + S(xs) + " w" + S(w.shape) + " s" + std::to_string(s) + " p" + std::to_string(p) + (bias ? " +b" : ""),
        y, convRef(x, w, bias ? &b : nullptr, s, p, os, idx), samples ? idx : std::vector<int64_t>{});
}

// 3x3 / stride 1 / pad 1 convs, labelled with the path they take (Winograd F(m,3) or im2col).
// silu: activations as after GroupNorm + SiLU (mostly positive, nonzero mean), which cancel less
// kindly in the transforms than zero-mean ones.
void testConv3x3(Shape xs, int64_t O, bool bias, bool silu = false, int64_t samples = 0) {
  Tensor x = rnd(xs), w = rnd({O, xs[1], 3, 3}, 0.05, 1.0 / std::sqrt(double(xs[1] * 9)) + 0.05), b = rnd({O});
  if (silu)
    for (auto& v : x.f) v = float(double(v) * 2.0 / (1.0 + std::exp(-2.0 * double(v))) + 0.3);
  Shape os = {xs[0], O, xs[2], xs[3]};
  Tensor y = nans(os);
  OpAttrs a;
  a.stride = 1;
  a.pad = 1;
  run(OpCode::CONV2D, a, {&x, &w, bias ? &b : nullptr}, {&y});
  const int m = cpu::winogradTile(xs[0], xs[1], xs[2], xs[3], O, 3, 3, 1, 1);
  auto idx = sample(y.n(), samples ? samples : y.n());
  check("conv2d " + std::string(m ? "wino F" + std::to_string(m) : "im2col") + " x" + S(xs) + " O" + std::to_string(O) +
            (bias ? " +b" : "") + (silu ? " silu-x" : ""),
        y, convRef(x, w, bias ? &b : nullptr, 1, 1, os, idx), samples ? idx : std::vector<int64_t>{});
}

// Fused epilogues (native/fused.h): a residual shaped like the output (attrs.residual: the last
// input), and for CONV2D a bias per image [B, O]. How the residual is passed: as the third input
// (no bias), as the fourth after a bias or after an absent (null) bias, or in place (the output
// buffer already holds it).
enum class Res { None, Third, Fourth, FourthNoBias, InPlace };
const char* resName(Res r) {
  switch (r) {
    case Res::None: return "";
    case Res::Third: return " +res(3rd)";
    case Res::Fourth: return " +res";
    case Res::FourthNoBias: return " +res(null b)";
    case Res::InPlace: return " +res(in place)";
  }
  return "";
}

// Runs op with x, w, the bias (or null) and the residual placed as `mode` says, into y.
void runFused(OpCode op, OpAttrs a, Tensor& x, Tensor& w, Tensor* b, Tensor& r, Res mode, Tensor& y) {
  a.residual = mode != Res::None;
  switch (mode) {
    case Res::None: run(op, a, {&x, &w, b}, {&y}); break;
    case Res::Third: run(op, a, {&x, &w, &r}, {&y}); break;
    case Res::Fourth: run(op, a, {&x, &w, b, &r}, {&y}); break;
    case Res::FourthNoBias: run(op, a, {&x, &w, nullptr, &r}, {&y}); break;
    case Res::InPlace:
      y.f = r.f;
      run(op, a, {&x, &w, b, &y}, {&y});
      break;
  }
}

void testLinearFused(Shape xs, int64_t N, bool bias, Res mode, int64_t samples = 0) {
  const int64_t K = xs.back();
  Shape os = xs;
  os.back() = N;
  Tensor x = rnd(xs), w = rnd({N, K}), b = rnd({N}), r = rnd(os), y = nans(os);
  if (mode == Res::Third || mode == Res::FourthNoBias) bias = false;
  runFused(OpCode::LINEAR, {}, x, w, bias ? &b : nullptr, r, mode, y);
  auto idx = sample(y.n(), samples ? samples : y.n());
  auto ref = linearRef(x, w, bias ? &b : nullptr, N, K, idx);
  if (mode != Res::None)
    for (size_t k = 0; k < idx.size(); k++) ref[k] += r[idx[k]];
  check("linear x" + S(xs) + " w[" + std::to_string(N) + "," + std::to_string(K) + "]" + (bias ? " +b" : "") +
            resName(mode),
        y, ref, samples ? idx : std::vector<int64_t>{});
}

// perImage: the bias is [B, O] instead of [O].
void testConvFused(Shape xs, int64_t O, int64_t kh, int64_t kw, int64_t s, int64_t p, bool bias, bool perImage, Res mode,
                   int64_t samples = 0) {
  const int64_t B = xs[0];
  Shape os = {B, O, (xs[2] + 2 * p - kh) / s + 1, (xs[3] + 2 * p - kw) / s + 1};
  Tensor x = rnd(xs), w = rnd({O, xs[1], kh, kw}, 0.05, 1.0 / std::sqrt(double(xs[1] * kh * kw)) + 0.05);
  Tensor b = perImage ? rnd({B, O}) : rnd({O}), r = rnd(os), y = nans(os);
  if (mode == Res::Third || mode == Res::FourthNoBias) bias = false;
  OpAttrs a;
  a.stride = s;
  a.pad = p;
  runFused(OpCode::CONV2D, a, x, w, bias ? &b : nullptr, r, mode, y);
  auto idx = sample(y.n(), samples ? samples : y.n());
  auto ref = convRef(x, w, nullptr, s, p, os, idx);
  const int64_t plane = os[2] * os[3];
  for (size_t k = 0; k < idx.size(); k++) {
    const int64_t o = (idx[k] / plane) % O, bb = idx[k] / (plane * O);
    if (bias) ref[k] += b[perImage ? bb * O + o : o];
    if (mode != Res::None) ref[k] += r[idx[k]];
  }
  const bool wino = kh == 3 && kw == 3 && s == 1 && p == 1 && cpu::winogradTile(B, xs[1], xs[2], xs[3], O, 3, 3, 1, 1);
  check("conv2d " + std::string(wino ? "wino " : "") + "x" + S(xs) + " w" + S(w.shape) + " s" + std::to_string(s) + " p" +
            std::to_string(p) + (bias ? (perImage ? " +b[B,O]" : " +b") : "") + resName(mode),
        y, ref, samples ? idx : std::vector<int64_t>{});
}

// LINEAR transX (x [B, K, R] → y [B, R, N]) / transY (x [B, R, K] → y [B, N, R]) against loops.
void testLinearTrans(bool transX, int64_t B, int64_t K, int64_t R, int64_t N, bool bias, bool residual) {
  Shape xs = transX ? Shape{B, K, R} : Shape{B, R, K};
  Shape os = transX ? Shape{B, R, N} : Shape{B, N, R};
  Tensor x = rnd(xs), w = rnd({N, K}), b = rnd({N}), r = rnd(os), y = nans(os);
  OpAttrs a;
  a.transX = transX;
  a.transY = !transX;
  a.residual = residual;
  if (residual) run(OpCode::LINEAR, a, {&x, &w, bias ? &b : nullptr, &r}, {&y});
  else run(OpCode::LINEAR, a, {&x, &w, bias ? &b : nullptr}, {&y});
  std::vector<double> ref(size_t(numel(os)));
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t ri = 0; ri < R; ri++)
      for (int64_t n = 0; n < N; n++) {
        double acc = bias ? b.f[size_t(n)] : 0.0;
        for (int64_t k = 0; k < K; k++)
          acc += double(transX ? x.f[size_t((bi * K + k) * R + ri)] : x.f[size_t((bi * R + ri) * K + k)]) * w.f[size_t(n * K + k)];
        int64_t o = transX ? (bi * R + ri) * N + n : (bi * N + n) * R + ri;
        if (residual) acc += r.f[size_t(o)];
        ref[size_t(o)] = acc;
      }
  check(std::string("linear ") + (transX ? "transX x" : "transY x") + S(xs) + " w[" + std::to_string(N) + "," +
            std::to_string(K) + "]" + (bias ? " +b" : "") + (residual ? " +res" : ""),
        y, ref);
}

void testFused() {
  for (bool tx : {true, false}) {
    testLinearTrans(tx, 2, 24, 35, 17, true, true);
    testLinearTrans(tx, 1, 8, 5, 3, false, false);
    testLinearTrans(tx, 2, 64, 256, 48, true, false);
    testLinearTrans(tx, 3, 13, 1, 7, false, true);
  }
  {
    Tensor x = rnd({2, 4, 3}), w = rnd({5, 4}), y = nans({2, 3, 5}), yBad = nans({2, 5, 3});
    OpAttrs both;
    both.transX = both.transY = true;
    OpAttrs tx;
    tx.transX = true;
    expectError("linear transX and transY -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, both, {&x, &w}, {&y}); });
    expectError("linear transX wrong out -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, tx, {&x, &w}, {&yBad}); });
    Tensor x2 = rnd({4, 3});
    expectError("linear transX rank 2 -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, tx, {&x2, &w}, {&y}); });
  }
  // LINEAR: the packed-SGEMM path (bias + residual as the values it accumulates onto) and the
  // few-tokens weight-in-place path (added while transposing), every way of passing the residual.
  for (Res m : {Res::Third, Res::Fourth, Res::FourthNoBias, Res::InPlace}) {
    testLinearFused({3, 7, 13}, 17, true, m);
    testLinearFused({2, 77, 768}, 320, true, m, 3000);
    testLinearFused({2, 1280}, 1283, true, m);
    testLinearFused({3, 41, 517}, 1001, true, m, 3000);
  }
  testLinearFused({1, 1, 9}, 5, false, Res::Third);  // one row: a bias-sized residual, flagged as such
  // CONV2D, every path of conv.cc / winograd.cc:
  struct C {
    Shape x;
    int64_t O, k, s, p, samples;
  };
  const C convs[] = {
      {{2, 40, 8, 8}, 32, 1, 1, 0, 0},        // 1x1, per-image GEMMs (large images)
      {{2, 33, 3, 3}, 70, 1, 1, 0, 0},        // 1x1, small images, weight-in-place GEMM + scatter
      {{2, 16, 9, 11}, 20, 3, 1, 1, 0},       // 3x3 im2col, large images
      {{2, 37, 10, 13}, 29, 3, 2, 1, 0},      // 3x3 stride 2
      {{1, 20, 3, 3}, 50, 3, 1, 1, 0},        // small image, batch 1 (accumulates onto y)
      {{2, 37, 4, 5}, 65, 3, 1, 1, 0},        // small images, weight-in-place GEMM + scatter
      {{2, 16, 8, 9}, 150, 3, 1, 1, 0},       // small images, packed GEMM + scatter
      {{2, 37, 13, 11}, 41, 3, 1, 1, 0},      // Winograd F(2,3), edge tiles
      {{2, 37, 27, 29}, 41, 3, 1, 1, 0},      // Winograd F(4,3), edge tiles
      {{2, 1280, 8, 8}, 1280, 3, 1, 1, 3000}, // SD 1.5 shapes: Winograd F(2,3) and F(4,3)
      {{2, 320, 32, 32}, 320, 3, 1, 1, 3000},
      {{2, 640, 32, 32}, 320, 1, 1, 0, 3000}, // resnet conv_shortcut-like 1x1
  };
  for (const C& c : convs) {
    testConvFused(c.x, c.O, c.k, c.k, c.s, c.p, true, true, Res::None, c.samples);
    testConvFused(c.x, c.O, c.k, c.k, c.s, c.p, true, false, Res::Fourth, c.samples);
    testConvFused(c.x, c.O, c.k, c.k, c.s, c.p, true, true, Res::Fourth, c.samples);
    testConvFused(c.x, c.O, c.k, c.k, c.s, c.p, false, false, Res::Third, c.samples);
  }
  testConvFused({2, 37, 13, 11}, 41, 3, 3, 1, 1, true, true, Res::InPlace);
  testConvFused({2, 16, 9, 11}, 20, 3, 3, 1, 1, false, false, Res::FourthNoBias);
  testConvFused({2, 37, 4, 5}, 65, 3, 3, 1, 1, true, true, Res::InPlace);
  testConvFused({1, 4, 1, 1}, 6, 1, 1, 1, 0, false, false, Res::Third);  // one-pixel output: a bias-sized residual

  // Bad bias / residual shapes are E_SHAPE, never a silent broadcast.
  Tensor x = rnd({2, 3, 8}), w = rnd({5, 8}), b = rnd({5}), y = nans({2, 3, 5});
  Tensor rBad = rnd({2, 3, 6}), bBad = rnd({6}), extra = rnd({2, 3, 5});
  OpAttrs res;
  res.residual = true;
  expectError("linear residual of the wrong shape -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, res, {&x, &w, &b, &rBad}, {&y}); });
  expectError("linear 3rd input neither bias nor residual -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, {}, {&x, &w, &rBad}, {&y}); });
  expectError("linear output-shaped 3rd input, no residual flag -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, {}, {&x, &w, &extra}, {&y}); });
  expectError("linear residual flag, no residual -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, res, {&x, &w}, {&y}); });
  expectError("linear bias of the wrong size, with residual -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, res, {&x, &w, &bBad, &extra}, {&y}); });
  expectError("linear 4 inputs, no residual flag -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, {}, {&x, &w, &b, &extra}, {&y}); });
  expectError("linear 5 inputs -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, res, {&x, &w, &b, &extra, &extra}, {&y}); });
  Tensor cx = rnd({2, 3, 6, 6}), cw = rnd({4, 3, 3, 3}), cy = nans({2, 4, 6, 6});
  Tensor cbT = rnd({4, 2}), cb3 = rnd({3, 4}), crBad = rnd({2, 4, 6, 5}), cr = rnd({2, 4, 6, 6}), cb = rnd({4});
  OpAttrs pa;
  pa.pad = 1;
  OpAttrs pr = pa;
  pr.residual = true;
  expectError("conv2d bias [O, B] (transposed) -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::CONV2D, pa, {&cx, &cw, &cbT}, {&cy}); });
  expectError("conv2d bias [3, O] for batch 2 -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::CONV2D, pr, {&cx, &cw, &cb3, &cr}, {&cy}); });
  expectError("conv2d residual of the wrong shape -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::CONV2D, pr, {&cx, &cw, &cb, &crBad}, {&cy}); });
  {
    OpAttrs g2 = pa;
    g2.groups = 2;
    expectError("conv2d groups 2 -> E_SHAPE (groups = 1 only)", "E_SHAPE", [&] { run(OpCode::CONV2D, g2, {&cx, &cw, &cb}, {&cy}); });
  }
  expectError("conv2d 3rd input rank 4, not the output's shape -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::CONV2D, pa, {&cx, &cw, &crBad}, {&cy}); });
  expectError("conv2d residual (flagged, 3rd input) of the wrong shape -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::CONV2D, pr, {&cx, &cw, &crBad}, {&cy}); });
}

void testGroupNorm(Shape xs, int64_t G, bool silu, double offset = 0) {
  Tensor x = rnd(xs), w = rnd({xs[1]}), b = rnd({xs[1]}), y = nans(xs);
  for (auto& v : x.f) v += float(offset);
  OpAttrs a;
  a.groups = G;
  a.eps = 1e-5;
  a.silu = silu;
  run(OpCode::GROUP_NORM, a, {&x, &w, &b}, {&y});
  const int64_t B = xs[0], C = xs[1], Sz = x.n() / (B * C), Cg = C / G;
  std::vector<double> ref(size_t(x.n()));
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t base = (bb * C + g * Cg) * Sz, n = Cg * Sz;
      double m = 0, v = 0;
      for (int64_t i = 0; i < n; i++) m += x[base + i];
      m /= double(n);
      for (int64_t i = 0; i < n; i++) v += (x[base + i] - m) * (x[base + i] - m);
      v /= double(n);
      for (int64_t i = 0; i < n; i++) {
        int64_t c = g * Cg + i / Sz;
        double r = (x[base + i] - m) / std::sqrt(v + 1e-5) * w[c] + b[c];
        ref[size_t(base + i)] = silu ? r / (1 + std::exp(-r)) : r;
      }
    }
  check("group_norm x" + S(xs) + " groups " + std::to_string(G) + (silu ? " +silu" : "") +
            (offset ? " offset " + std::to_string(int(offset)) : ""),
        y, ref);
}

void testLayerNorm(Shape xs) {
  const int64_t C = xs.back();
  Tensor x = rnd(xs), w = rnd({C}), b = rnd({C}), y = nans(xs);
  for (auto& v : x.f) v += 3.f;
  OpAttrs a;
  a.eps = 1e-5;
  run(OpCode::LAYER_NORM, a, {&x, &w, &b}, {&y});
  std::vector<double> ref;
  for (int64_t r = 0; r < x.n() / C; r++) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; c++) m += x[r * C + c];
    m /= double(C);
    for (int64_t c = 0; c < C; c++) v += (x[r * C + c] - m) * (x[r * C + c] - m);
    v /= double(C);
    for (int64_t c = 0; c < C; c++) ref.push_back((x[r * C + c] - m) / std::sqrt(v + 1e-5) * w[c] + b[c]);
  }
  check("layer_norm x" + S(xs), y, ref);
}

void testAttention(int64_t B, int64_t Nq, int64_t Nk, int64_t H, int64_t d, int64_t dv, bool causal, bool capture,
                   int64_t rowsPerHead = 0, double qscale = 1.0) {
  Tensor q = rnd({B, Nq, H * d}, 0.05, qscale), k = rnd({B, Nk, H * d}), v = rnd({B, Nk, H * dv});
  Tensor o = nans({B, Nq, H * dv}), p = nans({B * H, Nq, Nk});
  OpAttrs a;
  a.heads = H;
  a.scale = 1.0 / std::sqrt(double(d));
  a.causal = causal;
  a.capture = capture;
  std::vector<Tensor*> outs = {&o};
  if (capture) outs.push_back(&p);
  run(OpCode::ATTENTION, a, {&q, &k, &v}, outs);
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t bh = 0; bh < B * H; bh++) {
    if (rowsPerHead) {
      for (int64_t r = 0; r < rowsPerHead; r++) rows.push_back({bh, int64_t(g_rng() % uint64_t(Nq))});
      rows.push_back({bh, Nq - 1});
    } else {
      for (int64_t i = 0; i < Nq; i++) rows.push_back({bh, i});
    }
  }
  std::vector<double> oRef, pRef;
  std::vector<int64_t> oIdx, pIdx;
  attentionRef(q, k, v, H, a.scale, causal, rows, oRef, oIdx, capture ? &pRef : nullptr, &pIdx);
  std::string name = "attention q" + S(q.shape) + " k" + S(k.shape) + " v" + S(v.shape) + " H" + std::to_string(H) +
                     (causal ? " causal" : "") + (capture ? " capture" : "");
  check(name, o, oRef, oIdx);
  if (capture) check(name + " probs", p, pRef, pIdx);
}

}  // namespace

namespace {

void testUnary(OpCode op, const char* name, Shape s, const std::function<double(double)>& f, double lo = 0.05,
               double hi = 4.0, OpAttrs a = {}) {
  Tensor x = rnd(s, lo, hi), y = nans(s);
  run(op, a, {&x}, {&y});
  std::vector<double> ref;
  for (float v : x.f) ref.push_back(f(v));
  check(std::string(name) + " x" + S(s), y, ref);
}

void testBinary(OpCode op, const char* name, Shape as, Shape bs) {
  Tensor A = rnd(as), B = rnd(bs);
  size_t R = std::max(as.size(), bs.size());
  Shape os(R);
  auto dimOf = [&](const Shape& s, size_t i) { return i < R - s.size() ? int64_t(1) : s[i - (R - s.size())]; };
  for (size_t i = 0; i < R; i++) os[i] = std::max(dimOf(as, i), dimOf(bs, i));
  Tensor y = nans(os);
  run(op, {}, {&A, &B}, {&y});
  std::vector<double> ref;
  for (int64_t e = 0; e < y.n(); e++) {
    int64_t ia = 0, ib = 0, sa = 1, sb = 1, rem = e;
    for (size_t i = R; i-- > 0;) {
      int64_t c = rem % os[i];
      rem /= os[i];
      int64_t da = dimOf(as, i), db = dimOf(bs, i);
      ia += (da == 1 ? 0 : c) * sa;
      ib += (db == 1 ? 0 : c) * sb;
      sa *= da;
      sb *= db;
    }
    ref.push_back(op == OpCode::ADD ? double(A[ia]) + B[ib] : double(A[ia]) * B[ib]);
  }
  check(std::string(name) + " a" + S(as) + " b" + S(bs), y, ref);
}

void testElementwise() {
  testUnary(OpCode::GELU, "gelu", {3, 37, 29}, geluD);
  testUnary(OpCode::QUICK_GELU, "quick_gelu", {2, 77, 131}, [](double x) { return x / (1 + std::exp(-1.702 * x)); });
  testUnary(OpCode::SILU, "silu", {2, 1281, 33}, [](double x) { return x / (1 + std::exp(-x)); }, 0.05, 30.0);
  testUnary(OpCode::SILU, "silu (SD size)", {2, 320, 64, 64}, [](double x) { return x / (1 + std::exp(-x)); });
  OpAttrs sc;
  sc.scale = 0.18215;
  sc.shift = -0.25;
  testUnary(OpCode::SCALE, "scale", {1, 4, 13, 9}, [](double x) { return x * 0.18215 - 0.25; }, 0.05, 4.0, sc);
  {
    Tensor x = rnd({2, 77, 2 * 51}), y = nans({2, 77, 51});
    run(OpCode::GEGLU, {}, {&x}, {&y});
    std::vector<double> ref;
    for (int64_t r = 0; r < 2 * 77; r++)
      for (int64_t i = 0; i < 51; i++) ref.push_back(double(x[r * 102 + i]) * geluD(x[r * 102 + 51 + i]));
    check("geglu x" + S(x.shape), y, ref);
  }
  {
    Tensor x = rnd({2, 1024, 2 * 1280}, 0.05, 3.0), y = nans({2, 1024, 1280});
    run(OpCode::GEGLU, {}, {&x}, {&y});
    std::vector<double> ref;
    for (int64_t r = 0; r < 2 * 1024; r++)
      for (int64_t i = 0; i < 1280; i++) ref.push_back(double(x[r * 2560 + i]) * geluD(x[r * 2560 + 1280 + i]));
    check("geglu x" + S(x.shape), y, ref);
  }
  testBinary(OpCode::ADD, "add", {3, 5, 7}, {3, 5, 7});
  testBinary(OpCode::ADD, "add", {2, 320, 32, 32}, {2, 320, 1, 1});
  testBinary(OpCode::ADD, "add", {2, 77, 768}, {77, 768});
  testBinary(OpCode::ADD, "add", {1, 5, 1}, {3, 1, 7});
  testBinary(OpCode::ADD, "add", {2, 3, 4, 5}, {5});
  testBinary(OpCode::MUL, "mul", {2, 3, 4, 5}, {3, 1, 5});
  testBinary(OpCode::MUL, "mul", {4, 1}, {1, 9});
  testBinary(OpCode::MUL, "mul", {2, 4096, 320}, {2, 4096, 320});
  {
    Tensor e = rnd({4, 4, 9, 11}), y = nans({2, 4, 9, 11});
    OpAttrs a;
    a.scale = 7.5;
    run(OpCode::CFG, a, {&e}, {&y});
    std::vector<double> ref;
    for (int64_t i = 0; i < y.n(); i++) ref.push_back(double(e[i]) + 7.5 * (double(e[i + y.n()]) - e[i]));
    check("cfg eps" + S(e.shape) + " scale 7.5", y, ref);
  }
  for (bool noise : {false, true}) {
    // SAMPLER_STEP against the naive formula: a second-order step with a clamp, and a noisy one.
    Tensor x = rnd({2, 4, 8, 12}), m = rnd({2, 4, 8, 12}), st = rnd({2, 4, 8, 12}), z = rnd({2, 4, 8, 12});
    Tensor y = nans({2, 4, 8, 12}), x0o = nans({2, 4, 8, 12}), xin = nans({2, 4, 8, 12});
    const std::vector<float> c = noise ? std::vector<float>{0.3f, 1.f, -2.f, 0.f, 1.f, 0.f, -0.8f, 0.f, 0.5f}
                                       : std::vector<float>{0.8f, 1.3f, -0.4f, 0.9f, 0.7f, 0.2f, 0.f, -0.15f, 0.f};
    std::vector<int32_t> bits(9);
    std::memcpy(bits.data(), c.data(), 36);
    Tensor cb = ints({9}, bits);
    run(OpCode::SAMPLER_STEP, {}, {&x, &m, &st, &cb, noise ? &z : nullptr}, {&y, &x0o, &xin});
    std::vector<double> ry, r0, rin;
    for (int64_t i = 0; i < y.n(); i++) {
      double x0 = double(c[1]) * x[i] + double(c[2]) * m[i];
      if (c[3] > 0) x0 = std::min<double>(c[3], std::max<double>(-c[3], x0));
      double v = double(c[4]) * x[i] + double(c[5]) * x0 + double(c[6]) * m[i] + double(c[7]) * st[i] + (noise ? double(c[8]) * z[i] : 0.0);
      ry.push_back(v);
      r0.push_back(x0);
      rin.push_back(double(c[0]) * v);
    }
    const std::string name = noise ? "sampler_step noise" : "sampler_step state clip";
    check(name + " x'", y, ry);
    check(name + " x0", x0o, r0);
    check(name + " next input", xin, rin);
  }
}

void testLayout() {
  {
    Tensor x = rnd({2, 3, 5, 7}), y = nans({2, 3, 10, 14});
    run(OpCode::UPSAMPLE2X, {}, {&x}, {&y});
    std::vector<double> ref;
    for (int64_t p = 0; p < 6; p++)
      for (int64_t i = 0; i < 10; i++)
        for (int64_t j = 0; j < 14; j++) ref.push_back(x[p * 35 + (i / 2) * 7 + j / 2]);
    check("upsample2x x" + S(x.shape), y, ref);
  }
  for (int64_t axis : {0, 1, 3, -1}) {
    Tensor a = rnd({2, 3, 4, 5}), b = rnd({2, 3, 4, 5}), c = rnd({2, 3, 4, 5});
    int64_t ax = axis < 0 ? axis + 4 : axis;
    a.shape[size_t(ax)] = 2;
    a.f.resize(size_t(a.n()));
    c.shape[size_t(ax)] = 1;
    c.f.resize(size_t(c.n()));
    Shape os = b.shape;
    os[size_t(ax)] = 2 + os[size_t(ax)] + 1;
    Tensor y = nans(os);
    OpAttrs at;
    at.axis = axis;
    run(OpCode::CONCAT, at, {&a, &b, &c}, {&y});
    std::vector<double> ref;
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < ax; i++) outer *= os[size_t(i)];
    for (int64_t i = ax + 1; i < 4; i++) inner *= os[size_t(i)];
    for (int64_t o = 0; o < outer; o++)
      for (Tensor* t : {&a, &b, &c}) {
        int64_t row = t->shape[size_t(ax)] * inner;
        for (int64_t i = 0; i < row; i++) ref.push_back((*t)[o * row + i]);
      }
    check("concat 3 inputs axis " + std::to_string(axis) + " out" + S(os), y, ref);
  }
  for (std::vector<int64_t> perm : std::vector<std::vector<int64_t>>{{0, 2, 1}, {2, 0, 1}, {1, 0, 2}, {0, 2, 3, 1}, {3, 2, 1, 0}}) {
    Shape xs = perm.size() == 3 ? Shape{3, 67, 45} : Shape{2, 5, 33, 7};
    Tensor x = rnd(xs);
    Shape os;
    for (auto p : perm) os.push_back(xs[size_t(p)]);
    Tensor y = nans(os);
    OpAttrs at;
    at.perm = perm;
    run(OpCode::PERMUTE, at, {&x}, {&y});
    std::vector<double> ref(size_t(y.n()));
    std::vector<int64_t> xstr(xs.size(), 1);
    for (size_t k = xs.size() - 1; k-- > 0;) xstr[k] = xstr[k + 1] * xs[k + 1];
    for (int64_t e = 0; e < y.n(); e++) {
      int64_t rem = e, off = 0;
      for (size_t i = os.size(); i-- > 0;) {
        off += (rem % os[i]) * xstr[size_t(perm[i])];
        rem /= os[i];
      }
      ref[size_t(e)] = x[off];
    }
    std::string ps;
    for (auto p : perm) ps += std::to_string(p);
    check("permute x" + S(xs) + " perm " + ps, y, ref);
  }
  {
    Tensor x = rnd({2, 4096, 320}), y = nans({2, 320, 4096});
    OpAttrs at;
    at.perm = {0, 2, 1};
    run(OpCode::PERMUTE, at, {&x}, {&y});
    std::vector<double> ref;
    for (int64_t b = 0; b < 2; b++)
      for (int64_t c = 0; c < 320; c++)
        for (int64_t n = 0; n < 4096; n++) ref.push_back(x[(b * 4096 + n) * 320 + c]);
    check("permute x[2, 4096, 320] perm 021", y, ref);
  }
  {
    Tensor x = rnd({2, 3, 35}), y = nans({6, 5, 7});
    run(OpCode::RESHAPE, {}, {&x}, {&y});
    std::vector<double> ref(x.f.begin(), x.f.end());
    check("reshape [2, 3, 35] -> [6, 5, 7]", y, ref);
  }
  for (auto [axis, start, end] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 2, 9}, {2, 0, 3}, {0, 1, 2}, {-1, -3, 5}}) {
    Tensor x = rnd({2, 11, 5});
    int64_t ax = axis < 0 ? axis + 3 : axis, d = x.shape[size_t(ax)];
    int64_t s = start < 0 ? start + d : start, e = end < 0 ? end + d : end;
    Shape os = x.shape;
    os[size_t(ax)] = e - s;
    Tensor y = nans(os);
    OpAttrs at;
    at.axis = axis;
    at.start = start;
    at.end = end;
    run(OpCode::SLICE, at, {&x}, {&y});
    std::vector<double> ref;
    for (int64_t i = 0; i < 2; i++)
      for (int64_t j = 0; j < 11; j++)
        for (int64_t k = 0; k < 5; k++) {
          int64_t c = ax == 0 ? i : ax == 1 ? j : k;
          if (c >= s && c < e) ref.push_back(x[(i * 11 + j) * 5 + k]);
        }
    check("slice x[2, 11, 5] axis " + std::to_string(axis) + " " + std::to_string(start) + ":" + std::to_string(end), y, ref);
  }
  for (auto [dim, flip, shift] : std::vector<std::tuple<int64_t, bool, double>>{{320, true, 0.0}, {33, false, 1.0}}) {
    Tensor t = rnd({3});
    t.f = {981.f, 1.f, 500.5f};
    Tensor y = nans({3, dim});
    OpAttrs at;
    at.dim = dim;
    at.flip = flip;
    at.shift = shift;
    run(OpCode::TIMESTEP_EMB, at, {&t}, {&y});
    std::vector<double> ref;
    int64_t half = dim / 2;
    for (int64_t b = 0; b < 3; b++) {
      std::vector<double> row(size_t(dim), 0.0);
      for (int64_t i = 0; i < half; i++) {
        // Arguments rounded to float32 as the reference implementation (PyTorch float32) does;
        // without it, |t|·ulp(f) ≈ 6e-5 differences in the phase dominate the comparison.
        float f = float(std::exp(double(float(-std::log(10000.0)) * float(i) / float(half - shift))));
        double arg = double(t[b] * f);
        row[size_t(i)] = flip ? std::cos(arg) : std::sin(arg);
        row[size_t(half + i)] = flip ? std::sin(arg) : std::cos(arg);
      }
      ref.insert(ref.end(), row.begin(), row.end());
    }
    check("timestep_emb dim " + std::to_string(dim) + (flip ? " flip" : "") + " shift " + std::to_string(int(shift)), y, ref);
  }
  {
    Tensor ids = ints({2, 5}, {0, 3, 9, 1, 1, 49407 % 10, 2, 4, 8, 6});
    Tensor table = rnd({10, 13}), y = nans({2, 5, 13});
    run(OpCode::EMBEDDING, {}, {&ids, &table}, {&y});
    std::vector<double> ref;
    for (int32_t id : ids.i)
      for (int64_t c = 0; c < 13; c++) ref.push_back(table[id * 13 + c]);
    check("embedding ids[2, 5] table[10, 13]", y, ref);
    Tensor bad = ints({1, 2}, {3, 10});
    Tensor y2 = nans({1, 2, 13});
    expectError("embedding id out of range -> E_ARGUMENT", "E_ARGUMENT", [&] { run(OpCode::EMBEDDING, {}, {&bad, &table}, {&y2}); });
  }
  {
    Tensor x = rnd({2, 6, 9}), vec = rnd({3, 9}), y = nans({2, 6, 9});
    Tensor slots = ints({2, 6}, {-1, 0, -1, -1, 2, -1, 1, -1, -1, -1, -1, 0});
    run(OpCode::INJECT, {}, {&x, &slots, &vec}, {&y});
    std::vector<double> ref;
    for (int64_t r = 0; r < 12; r++)
      for (int64_t c = 0; c < 9; c++) ref.push_back(slots.i[size_t(r)] >= 0 ? vec[slots.i[size_t(r)] * 9 + c] : x[r * 9 + c]);
    check("inject x[2, 6, 9] vectors[3, 9]", y, ref);
    Tensor bad = ints({2, 6}, {-1, 0, -1, -1, 3, -1, 1, -1, -1, -1, -1, 0});
    expectError("inject slot out of range -> E_ARGUMENT", "E_ARGUMENT", [&] { run(OpCode::INJECT, {}, {&x, &bad, &vec}, {&y}); });
  }
}

void testErrors() {
  Tensor x = rnd({2, 3, 8}), w = rnd({5, 7}), y = nans({2, 3, 5});
  expectError("linear K mismatch -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, {}, {&x, &w}, {&y}); });
  Tensor w2 = rnd({5, 8}), y2 = nans({2, 3, 6});
  expectError("linear wrong out shape -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::LINEAR, {}, {&x, &w2}, {&y2}); });
  Tensor a = rnd({2, 3, 4}), b = rnd({2, 5, 6}), c = nans({2, 3, 6});
  expectError("matmul inner mismatch -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::MATMUL, {}, {&a, &b}, {&c}); });
  Tensor cx = rnd({1, 3, 8, 8}), cw = rnd({4, 2, 3, 3}), cy = nans({1, 4, 8, 8});
  OpAttrs pa;
  pa.pad = 1;
  expectError("conv2d channel mismatch -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::CONV2D, pa, {&cx, &cw}, {&cy}); });
  Tensor gx = rnd({1, 6, 4}), gw = rnd({6}), gb = rnd({6}), gy = nans({1, 6, 4});
  OpAttrs ga;
  ga.groups = 4;
  expectError("group_norm groups not dividing C -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::GROUP_NORM, ga, {&gx, &gw, &gb}, {&gy}); });
  Tensor q = rnd({1, 5, 12}), k = rnd({1, 7, 12}), v = rnd({1, 6, 12}), o = nans({1, 5, 12});
  OpAttrs aa;
  aa.heads = 3;
  expectError("attention k/v length mismatch -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::ATTENTION, aa, {&q, &k, &v}, {&o}); });
  Tensor ba = rnd({2, 3}), bb = rnd({4, 3}), bo = nans({4, 3});
  expectError("add non-broadcastable -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::ADD, {}, {&ba, &bb}, {&bo}); });
  Tensor px = rnd({2, 3}), py = nans({3, 2});
  OpAttrs pp;
  pp.perm = {0, 0};
  expectError("permute invalid perm -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::PERMUTE, pp, {&px}, {&py}); });
  Tensor rx = rnd({2, 3}), ry = nans({7});
  expectError("reshape numel mismatch -> E_SHAPE", "E_SHAPE", [&] { run(OpCode::RESHAPE, {}, {&rx}, {&ry}); });
}

// NaN and ±inf inputs must come out as PyTorch's float32 ops give them, not be swallowed by the
// vectorised exp/erf (no fast-math shortcuts).
void testSpecialValues() {
  g_checks++;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  bool ok = true;
  std::string why;
  for (OpCode op : {OpCode::SILU, OpCode::GELU, OpCode::QUICK_GELU}) {
    Tensor x = rnd({40});
    x[3] = nan;
    x[20] = nan;
    x[21] = inf;
    x[22] = -200.f;
    x[23] = 200.f;
    Tensor y = nans({40});
    for (auto& v : y.f) v = 0.f;
    run(op, {}, {&x}, {&y});
    if (!std::isnan(y[3]) || !std::isnan(y[20])) ok = false, why += std::string(opName(op)) + " lost a NaN; ";
    if (!(y[21] == inf)) ok = false, why += std::string(opName(op)) + "(inf) != inf; ";
    if (!(std::fabs(y[22]) < 1e-30f) || !(std::fabs(y[23] - 200.f) < 1e-4f))
      ok = false, why += std::string(opName(op)) + " wrong at +-200; ";
  }
  {
    Tensor q = rnd({1, 3, 4}), k = rnd({1, 20, 4}), v = rnd({1, 20, 4}), o = nans({1, 3, 4});
    q[1 * 4 + 2] = nan;  // query row 1 sees NaN scores: its output must be NaN, the others not
    OpAttrs a;
    a.heads = 1;
    a.scale = 0.5;
    run(OpCode::ATTENTION, a, {&q, &k, &v}, {&o});
    for (int c = 0; c < 4; c++) {
      if (!std::isnan(o[4 + c])) ok = false, why += "attention lost a NaN; ";
      if (!std::isfinite(o[c]) || !std::isfinite(o[8 + c])) ok = false, why += "attention NaN leaked across rows; ";
    }
  }
  if (!ok) g_failures++;
  std::printf("%s special values (NaN, inf, +-200) through silu/gelu/quick_gelu/attention %s\n", ok ? "ok  " : "FAIL",
              why.c_str());
}

void testPool() {
  g_checks++;
  std::vector<int> hit(100000, 0);
  cpu::parallel_for(int64_t(hit.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) hit[size_t(i)]++;
    cpu::parallel_for(4, [&](int64_t, int64_t) {});  // nested: runs inline
  }, 777);
  bool ok = true;
  for (int h : hit) ok = ok && h == 1;
  bool threw = false;
  try {
    cpu::parallel_for(64, [&](int64_t b, int64_t e) {
      if (b <= 32 && 32 < e) throw Error("E_INTERNAL", "boom");
    }, 1);
  } catch (const Error& e) {
    threw = e.code() == "E_INTERNAL";
  }
  ok = ok && threw;
  if (!ok) g_failures++;
  std::printf("%s thread pool (%d threads): coverage, nesting, exception propagation\n", ok ? "ok  " : "FAIL",
              cpu::numThreads());
}

}  // namespace

namespace {

void bench() {
  std::printf("\n-- performance (%d threads, %s microkernel) --\n", cpu::numThreads(), cpu::gemmIsa());
  auto gemmCase = [](const char* name, int64_t M, int64_t N, int64_t K, int64_t batch) {
    Tensor a = rnd({batch, M, K}), b = rnd({batch, K, N}), c = nans({batch, M, N});
    double s = seconds([&] { run(OpCode::MATMUL, {}, {&a, &b}, {&c}); });
    std::printf("sgemm %-32s %8.2f ms  %7.1f GFLOP/s\n", name, s * 1e3, 2.0 * batch * M * N * K / s / 1e9);
  };
  gemmCase("4096x320x320", 4096, 320, 320, 1);
  gemmCase("1024x640x640", 1024, 640, 640, 1);
  gemmCase("2x (320x2880)·(2880x4096)", 320, 4096, 2880, 2);
  {
    Tensor x = rnd({2, 4096, 320}), w = rnd({320, 320}), b = rnd({320}), y = nans({2, 4096, 320});
    double s = seconds([&] { run(OpCode::LINEAR, {}, {&x, &w, &b}, {&y}); });
    std::printf("linear %-31s %8.2f ms  %7.1f GFLOP/s\n", "x[2,4096,320] w[320,320]", s * 1e3, 2.0 * 8192 * 320 * 320 / s / 1e9);
  }
  {
    Tensor x = rnd({2, 4096, 320}), w = rnd({2560, 320}), b = rnd({2560}), y = nans({2, 4096, 2560});
    double s = seconds([&] { run(OpCode::LINEAR, {}, {&x, &w, &b}, {&y}); });
    std::printf("linear %-31s %8.2f ms  %7.1f GFLOP/s\n", "x[2,4096,320] w[2560,320]", s * 1e3, 2.0 * 8192 * 2560 * 320 / s / 1e9);
  }
  auto convCase = [](const char* name, Shape xs, int64_t O, int64_t kk, int64_t st, int64_t p) {
    Tensor x = rnd(xs), w = rnd({O, xs[1], kk, kk}), b = rnd({O});
    int64_t Ho = (xs[2] + 2 * p - kk) / st + 1, Wo = (xs[3] + 2 * p - kk) / st + 1;
    Tensor y = nans({xs[0], O, Ho, Wo});
    OpAttrs a;
    a.stride = st;
    a.pad = p;
    double s = seconds([&] { run(OpCode::CONV2D, a, {&x, &w, &b}, {&y}); });
    double fl = 2.0 * xs[0] * O * Ho * Wo * xs[1] * kk * kk;
    std::printf("conv2d %-31s %8.2f ms  %7.1f GFLOP/s\n", name, s * 1e3, fl / s / 1e9);
  };
  convCase("3x3 [2,320,64,64]->320", {2, 320, 64, 64}, 320, 3, 1, 1);
  convCase("3x3 [2,640,32,32]->640", {2, 640, 32, 32}, 640, 3, 1, 1);
  convCase("3x3 [2,1280,16,16]->1280", {2, 1280, 16, 16}, 1280, 3, 1, 1);
  convCase("3x3 [2,1280,8,8]->1280", {2, 1280, 8, 8}, 1280, 3, 1, 1);
  convCase("3x3 s2 [2,320,64,64]->320", {2, 320, 64, 64}, 320, 3, 2, 1);
  convCase("1x1 [2,640,32,32]->320", {2, 640, 32, 32}, 320, 1, 1, 0);
  auto attnCase = [](const char* name, int64_t Nq, int64_t Nk, int64_t H, int64_t d, bool capture) {
    Tensor q = rnd({2, Nq, H * d}), k = rnd({2, Nk, H * d}), v = rnd({2, Nk, H * d}), o = nans({2, Nq, H * d});
    Tensor p = capture ? nans({2 * H, Nq, Nk}) : Tensor{};
    OpAttrs a;
    a.heads = H;
    a.scale = 1.0 / std::sqrt(double(d));
    a.capture = capture;
    std::vector<Tensor*> outs = {&o};
    if (capture) outs.push_back(&p);
    double s = seconds([&] { run(OpCode::ATTENTION, a, {&q, &k, &v}, outs); });
    std::printf("attention %-28s %8.2f ms  %7.1f GFLOP/s\n", name, s * 1e3, 4.0 * 2 * H * Nq * Nk * d / s / 1e9);
  };
  attnCase("2x8 heads 4096x4096 d=40", 4096, 4096, 8, 40, false);
  attnCase("2x8 heads 1024x1024 d=80", 1024, 1024, 8, 80, false);
  attnCase("2x8 heads 4096x77 d=40", 4096, 77, 8, 40, false);
  attnCase("2x8 heads 4096x77 d=40 capture", 4096, 77, 8, 40, true);
  {
    Tensor x = rnd({2, 320, 64, 64}), w = rnd({320}), b = rnd({320}), y = nans({2, 320, 64, 64});
    OpAttrs a;
    a.groups = 32;
    a.silu = true;
    double s = seconds([&] { run(OpCode::GROUP_NORM, a, {&x, &w, &b}, {&y}); });
    std::printf("group_norm+silu %-22s %8.2f ms\n", "[2,320,64,64] 32 groups", s * 1e3);
  }
  {
    Tensor x = rnd({2, 4096, 2560}), y = nans({2, 4096, 1280});
    double s = seconds([&] { run(OpCode::GEGLU, {}, {&x}, {&y}); });
    std::printf("geglu %-32s %8.2f ms\n", "[2,4096,2560]", s * 1e3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool doBench = true, doTests = true;
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--no-bench") doBench = false;
    if (std::string(argv[i]) == "--bench-only") doTests = false;
  }
  if (!doTests) {
    bench();
    return 0;
  }
  std::printf("-- cpu backend ops vs double-precision references (tolerance: relative L2 1e-5) --\n");
  testPool();
  // LINEAR / MATMUL: odd shapes cross every edge (MR, NR, KC = 256, MC = 168 blocks).
  testLinear({3, 7, 13}, 17, true);
  testLinear({1, 300, 515}, 333, false);
  testLinear({1001, 70}, 45, true);
  testLinear({2, 77, 768}, 320, true);
  testLinear({2, 1}, 1280, true);
  // Few tokens, large weights: the weight-in-place path (yᵀ = w·xᵀ), with odd edges.
  testLinear({2, 1280}, 1283, true);
  testLinear({3, 41, 517}, 1001, false);
  testLinear({2, 64, 1280}, 10240, true, 4000);
  testLinear({2, 4096, 320}, 320, true, 4000);
  testLinear({2, 1024, 640}, 5120, true, 4000);
  testMatmul(3, 19, 35, 23, false, false);
  testMatmul(2, 45, 260, 37, true, false);
  testMatmul(4, 9, 31, 70, false, true);
  testMatmul(16, 64, 40, 77, true, false);
  // CONV2D
  testConv({1, 3, 9, 11}, 5, 3, 3, 1, 1, true);
  testConv({2, 37, 9, 11}, 29, 3, 3, 1, 1, true);
  testConv({2, 37, 10, 13}, 29, 3, 3, 2, 1, false);
  testConv({1, 5, 12, 7}, 6, 5, 3, 2, 2, true);
  testConv({2, 33, 6, 5}, 65, 1, 1, 1, 0, true);
  testConv({1, 4, 7, 7}, 3, 3, 3, 3, 0, true);
  // Small images (Ho*Wo < O/2): one GEMM over all images' columns.
  testConv({2, 37, 4, 5}, 65, 3, 3, 1, 1, true);
  testConv({2, 37, 5, 6}, 96, 3, 3, 2, 1, false);
  testConv({2, 33, 3, 3}, 70, 1, 1, 1, 0, true);
  testConv({1, 20, 3, 3}, 50, 3, 3, 1, 1, true);
  testConv({2, 4, 64, 64}, 320, 3, 3, 1, 1, true, 3000);
  testConv({2, 320, 64, 64}, 320, 3, 3, 1, 1, true, 3000);
  testConv({2, 320, 64, 64}, 320, 3, 3, 2, 1, true, 3000);
  testConv({2, 640, 32, 32}, 320, 1, 1, 1, 0, true, 3000);
  testConv({2, 1280, 4, 4}, 1280, 3, 3, 1, 1, true, 3000);
  testConv({2, 1280, 8, 8}, 1280, 3, 3, 1, 1, true, 3000);
  testConv({1, 2560, 4, 4}, 1283, 3, 3, 1, 1, false, 3000);
  testConv({2, 1280, 8, 8}, 1280, 3, 3, 2, 1, true, 3000);
  testConv({2, 320, 64, 64}, 4, 3, 3, 1, 1, true);
  // 3x3 stride 1 pad 1 with enough channels and pixels: Winograd (native/cpu/winograd.cc).
  testConv3x3({2, 37, 13, 11}, 41, true);          // odd sizes, F(2,3) edge tiles
  testConv3x3({2, 37, 27, 29}, 41, true);          // F(4,3) edge tiles
  testConv3x3({1, 32, 17, 33}, 32, false);
  testConv3x3({2, 33, 31, 35}, 300, true, true);   // F(4,3), O past several row blocks
  testConv3x3({2, 300, 9, 15}, 33, true, true);    // two K slabs, one row block
  testConv3x3({2, 64, 8, 12}, 100, true, true);    // 48 tiles: the narrow (2*MR x 16) GEMM tile
  testConv3x3({2, 320, 32, 32}, 320, true, false, 3000);
  testConv3x3({2, 320, 32, 32}, 320, true, true, 3000);
  testConv3x3({2, 960, 32, 32}, 320, true, true, 3000);
  testConv3x3({2, 640, 16, 16}, 640, true, true, 3000);
  testConv3x3({2, 1920, 16, 16}, 640, true, false, 3000);
  testConv3x3({2, 1280, 16, 16}, 1280, true, true, 3000);
  testConv3x3({2, 1280, 8, 8}, 1280, true, true, 3000);
  // LINEAR / CONV2D with residual and per-image bias
  testFused();
  // Norms
  testGroupNorm({2, 12, 5, 3}, 4, false);
  testGroupNorm({1, 6, 7}, 3, true);
  testGroupNorm({2, 320, 64, 64}, 32, true);
  testGroupNorm({2, 640, 32, 32}, 32, false, 50.0);
  testLayerNorm({3, 7, 33});
  testLayerNorm({2, 4096, 320});
  testLayerNorm({2, 77, 768});
  // Attention: small odd shapes (key tiles of 256, query blocks, dv != d), then SD-1.5 shapes.
  testAttention(2, 67, 300, 3, 8, 12, false, false, 0, 3.0);
  testAttention(2, 67, 300, 3, 8, 12, false, true, 0, 3.0);
  testAttention(1, 130, 130, 2, 16, 16, true, false);
  testAttention(1, 130, 130, 2, 16, 16, true, true);
  testAttention(2, 77, 77, 12, 64, 64, true, false, 0, 2.0);
  testAttention(2, 77, 77, 12, 64, 64, true, true, 0, 2.0);
  testAttention(1, 5, 1, 1, 3, 2, false, true);
  testAttention(2, 4096, 4096, 8, 40, 40, false, false, 6, 4.0);
  testAttention(2, 1024, 1024, 8, 80, 80, false, false, 6, 4.0);
  testAttention(2, 256, 256, 8, 160, 160, false, false, 6, 4.0);
  testAttention(2, 4096, 77, 8, 40, 40, false, false, 6, 4.0);
  testAttention(2, 4096, 77, 8, 40, 40, false, true, 6, 4.0);
  testAttention(2, 1024, 77, 8, 80, 80, false, true, 6, 4.0);
  testElementwise();
  testSpecialValues();
  testLayout();
  testErrors();
  std::printf("\n%d checks, %d failed\n", g_checks, g_failures);
  if (doBench) bench();
  return g_failures ? 1 : 0;
}
