// Vector-Jacobian products of the forward ops (lib/graph/autodiff.ts emits them): gradients with
// respect to activations only — weights are frozen constants, so there are no dW/db reductions.
// Statistics (norms, softmax) are recomputed from the forward inputs instead of being saved by the
// forward op: the forward ops stay untouched and the recompute costs less than the products.
// Reductions accumulate in double where a long sum feeds a subtraction (norm backward).
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"

namespace idforge {
namespace cpu {
namespace {

void f32(const char* op, const Views& in, const Views& out) {
  for (size_t i = 0; i < in.size(); i++) checkDtype(op, in[i], DType::F32, "input");
  for (size_t i = 0; i < out.size(); i++) checkDtype(op, out[i], DType::F32, "output");
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
// d/dx of x·Φ(x) (exact erf GELU)
inline float geluGrad(float x) {
  double xd = x;
  double cdf = 0.5 * (1.0 + std::erf(xd * 0.70710678118654752));
  double pdf = 0.39894228040143268 * std::exp(-0.5 * xd * xd);
  return float(cdf + xd * pdf);
}
inline float geluF(float x) { return float(0.5 * double(x) * (1.0 + std::erf(double(x) * 0.70710678118654752))); }
// d/dx of x·σ(αx)
inline float siluGrad(float x, double alpha) {
  double s = sigmoid(alpha * x);
  return float(s + alpha * x * s * (1.0 - s));
}

// Elementwise backward: in x, dy (same shape) → dx.
template <typename G>
void unaryBackward(const char* op, const Views& in, const Views& out, G grad) {
  checkArity(op, in, 2, 2, out, 1);
  f32(op, in, out);
  if (in[1].shape != in[0].shape || out[0].shape != in[0].shape)
    shapeError(op, "x " + shapeOf(in[0]) + ", dy " + shapeOf(in[1]) + " and dx " + shapeOf(out[0]) + " must match");
  const float* x = in[0].as<float>();
  const float* dy = in[1].as<float>();
  float* dx = out[0].as<float>();
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) dx[i] = dy[i] * grad(x[i]);
  });
}

}  // namespace

void op_GELU_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  unaryBackward("gelu_backward", in, out, [](float x) { return geluGrad(x); });
}
void op_QUICK_GELU_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  unaryBackward("quick_gelu_backward", in, out, [](float x) { return siluGrad(x, 1.702); });
}
void op_SILU_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  unaryBackward("silu_backward", in, out, [](float x) { return siluGrad(x, 1.0); });
}

void op_GEGLU_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "geglu_backward";
  checkArity(op, in, 2, 2, out, 1);
  f32(op, in, out);
  const Shape& xs = in[0].shape;
  if (xs.empty() || xs.back() % 2) shapeError(op, "x " + shapeOf(in[0]) + " must be [.., 2F]");
  const int64_t F = xs.back() / 2, rows = F ? in[0].numel() / (2 * F) : 0;
  Shape ys = xs;
  ys.back() = F;
  checkShape(op, in[1], ys, "dy");
  checkShape(op, out[0], xs, "dx");
  const float* x = in[0].as<float>();
  const float* dy = in[1].as<float>();
  float* dx = out[0].as<float>();
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* h = x + r * 2 * F;
      const float* gt = h + F;
      const float* d = dy + r * F;
      float* o = dx + r * 2 * F;
      for (int64_t j = 0; j < F; j++) {
        o[j] = d[j] * geluF(gt[j]);
        o[F + j] = d[j] * h[j] * geluGrad(gt[j]);
      }
    }
  });
}

// 2x2 sums: the adjoint of nearest-neighbour upsampling.
void op_UPSAMPLE2X_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "upsample2x_backward";
  checkArity(op, in, 1, 1, out, 1);
  f32(op, in, out);
  const Shape& s = in[0].shape;
  if (s.size() != 4 || s[2] % 2 || s[3] % 2) shapeError(op, "dy " + shapeOf(in[0]) + " must be [B, C, 2H, 2W]");
  const int64_t H = s[2] / 2, W = s[3] / 2, planes = s[0] * s[1];
  checkShape(op, out[0], {s[0], s[1], H, W}, "dx");
  const float* dy = in[0].as<float>();
  float* dx = out[0].as<float>();
  parallel_for(planes, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
      for (int64_t y = 0; y < H; y++) {
        const float* r0 = dy + (p * 2 * H + 2 * y) * 2 * W;
        const float* r1 = r0 + 2 * W;
        float* o = dx + (p * H + y) * W;
        for (int64_t x = 0; x < W; x++) o[x] = (r0[2 * x] + r0[2 * x + 1]) + (r1[2 * x] + r1[2 * x + 1]);
      }
  });
}

// Sums x over the dims where out (right-aligned, missing leading dims = 1) has extent 1.
void op_REDUCE_SUM(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "reduce_sum";
  checkArity(op, in, 1, 1, out, 1);
  f32(op, in, out);
  const Shape& xs = in[0].shape;
  const Shape& os0 = out[0].shape;
  if (os0.size() > xs.size()) shapeError(op, "out " + shapeOf(out[0]) + " has more dims than x " + shapeOf(in[0]));
  const size_t r = xs.size();
  Shape os(r - os0.size(), 1);
  os.insert(os.end(), os0.begin(), os0.end());
  for (size_t i = 0; i < r; i++)
    if (os[i] != xs[i] && os[i] != 1) shapeError(op, "x " + shapeOf(in[0]) + " does not reduce to " + shapeOf(out[0]));
  // Strides of x; out element o sums x over the reduced dims.
  std::vector<int64_t> xstr(r, 1), kept, red;
  for (size_t i = r; i-- > 1;) xstr[i - 1] = xstr[i] * xs[i];
  for (size_t i = 0; i < r; i++) (os[i] == xs[i] ? kept : red).push_back(int64_t(i));
  int64_t nOut = out[0].numel(), nRed = 1;
  for (auto i : red) nRed *= xs[size_t(i)];
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  parallel_for(nOut, [&](int64_t o0, int64_t o1) {
    std::vector<int64_t> idx(red.size());
    for (int64_t o = o0; o < o1; o++) {
      int64_t base = 0, rem = o;
      for (size_t k = kept.size(); k-- > 0;) {
        int64_t d = xs[size_t(kept[k])];
        base += (rem % d) * xstr[size_t(kept[k])];
        rem /= d;
      }
      double s = 0;
      std::fill(idx.begin(), idx.end(), 0);
      int64_t off = 0;
      for (int64_t n = 0; n < nRed; n++) {
        s += x[base + off];
        for (size_t k = red.size(); k-- > 0;) {
          size_t dim = size_t(red[k]);
          off += xstr[dim];
          if (++idx[k] < xs[dim]) break;
          off -= idx[k] * xstr[dim];
          idx[k] = 0;
        }
      }
      y[o] = float(s);
    }
  });
}

// dx of y = silu?(gn(x)·w + b) given dy. Per group: xh = (x − μ)·r; g = dy·w (·silu'(y_pre));
// dx = r·(g − mean(g) − xh·mean(g·xh)).
void op_GROUP_NORM_BACKWARD(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "group_norm_backward";
  checkArity(op, in, 4, 4, out, 1);
  f32(op, in, out);
  const Shape& xs = in[1].shape;
  if (xs.size() < 2) shapeError(op, "x " + shapeOf(in[1]) + " must be [B, C, ..]");
  const int64_t B = xs[0], C = xs[1], G = a.groups;
  if (G <= 0 || C % G) shapeError(op, "channels do not split into groups");
  checkShape(op, in[0], xs, "dy");
  checkNumel(op, in[2], C, "w");
  checkNumel(op, in[3], C, "b");
  checkShape(op, out[0], xs, "dx");
  const int64_t S = (B > 0 && C > 0) ? in[1].numel() / (B * C) : 0, Cg = C / G, n = Cg * S;
  const float* dy = in[0].as<float>();
  const float* x = in[1].as<float>();
  const float* w = in[2].as<float>();
  const float* bb = in[3].as<float>();
  float* dx = out[0].as<float>();
  const bool silu = a.silu;
  parallel_for(B * G, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xg = x + t * n;
      const float* dg = dy + t * n;
      float* og = dx + t * n;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < n; i++) mean += xg[i];
      mean /= double(n);
      for (int64_t i = 0; i < n; i++) var += (xg[i] - mean) * (xg[i] - mean);
      var /= double(n);
      const double rstd = 1.0 / std::sqrt(var + a.eps);
      const int64_t c0 = (t % G) * Cg;
      double sg = 0, sgx = 0;
      // First pass: g into og, sums.
      for (int64_t c = 0; c < Cg; c++) {
        const double wc = w[c0 + c], bc = bb[c0 + c];
        for (int64_t s = 0; s < S; s++) {
          int64_t i = c * S + s;
          double xh = (xg[i] - mean) * rstd;
          double g = dg[i];
          if (silu) g *= siluGrad(float(xh * wc + bc), 1.0);
          g *= wc;
          og[i] = float(g);
          sg += g;
          sgx += g * xh;
        }
      }
      const double mg = sg / double(n), mgx = sgx / double(n);
      for (int64_t i = 0; i < n; i++) {
        double xh = (xg[i] - mean) * rstd;
        og[i] = float(rstd * (og[i] - mg - xh * mgx));
      }
    }
  }, 1);
}

void op_LAYER_NORM_BACKWARD(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "layer_norm_backward";
  checkArity(op, in, 3, 3, out, 1);
  f32(op, in, out);
  const Shape& xs = in[1].shape;
  if (xs.empty()) shapeError(op, "x must be [.., C]");
  const int64_t C = xs.back(), rows = C ? in[1].numel() / C : 0;
  checkShape(op, in[0], xs, "dy");
  checkNumel(op, in[2], C, "w");
  checkShape(op, out[0], xs, "dx");
  const float* dy = in[0].as<float>();
  const float* x = in[1].as<float>();
  const float* w = in[2].as<float>();
  float* dx = out[0].as<float>();
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* xr = x + r * C;
      const float* dr = dy + r * C;
      float* o = dx + r * C;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < C; i++) mean += xr[i];
      mean /= double(C);
      for (int64_t i = 0; i < C; i++) var += (xr[i] - mean) * (xr[i] - mean);
      var /= double(C);
      const double rstd = 1.0 / std::sqrt(var + a.eps);
      double sg = 0, sgx = 0;
      for (int64_t i = 0; i < C; i++) {
        double g = double(dr[i]) * w[i];
        double xh = (xr[i] - mean) * rstd;
        sg += g;
        sgx += g * xh;
      }
      const double mg = sg / double(C), mgx = sgx / double(C);
      for (int64_t i = 0; i < C; i++) {
        double xh = (xr[i] - mean) * rstd;
        o[i] = float(rstd * (double(dr[i]) * w[i] - mg - xh * mgx));
      }
    }
  });
}

// dx of a convolution (groups 1) w.r.t. its input: col = Wᵀ·dy per image, then col2im (the
// adjoint of im2col), i.e. a transposed convolution. out carries the input's shape.
void op_CONV2D_BACKWARD_INPUT(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "conv2d_backward_input";
  checkArity(op, in, 2, 2, out, 1);
  f32(op, in, out);
  const Shape &ds = in[0].shape, &ws = in[1].shape, &xs = out[0].shape;
  if (ds.size() != 4 || ws.size() != 4 || xs.size() != 4 || ds[1] != ws[0] || xs[1] != ws[1] || ds[0] != xs[0])
    shapeError(op, "dy " + shapeOf(in[0]) + ", w " + shapeOf(in[1]) + ", dx " + shapeOf(out[0]));
  const int64_t B = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0], kh = ws[2], kw = ws[3];
  const int64_t Ho = ds[2], Wo = ds[3], s = a.stride, p = a.pad;
  if ((H + 2 * p - kh) / s + 1 != Ho || (W + 2 * p - kw) / s + 1 != Wo)
    shapeError(op, "dy " + shapeOf(in[0]) + " is not the output size of dx " + shapeOf(out[0]));
  const int64_t CK = C * kh * kw, HWo = Ho * Wo;
  const float* dy = in[0].as<float>();
  const float* w = in[1].as<float>();
  float* dx = out[0].as<float>();
  const bool direct = kh == 1 && kw == 1 && s == 1 && p == 0;
  std::vector<float> col(direct ? 0 : size_t(CK * HWo));
  for (int64_t b = 0; b < B; b++) {
    float* xb = dx + b * C * H * W;
    float* cb = direct ? xb : col.data();
    // col[i, j] = Σ_o w[o, i] · dy[o, j]
    sgemm(CK, HWo, O, w, 1, CK, dy + b * O * HWo, HWo, 1, cb, HWo, false);
    if (direct) continue;
    parallel_for(C, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; c++) {
        float* xc = xb + c * H * W;
        std::memset(xc, 0, sizeof(float) * size_t(H * W));
        for (int64_t ky = 0; ky < kh; ky++)
          for (int64_t kx = 0; kx < kw; kx++) {
            const float* cr = cb + ((c * kh + ky) * kw + kx) * HWo;
            for (int64_t oy = 0; oy < Ho; oy++) {
              int64_t y = oy * s - p + ky;
              if (y < 0 || y >= H) continue;
              float* xr = xc + y * W;
              const float* crr = cr + oy * Wo;
              for (int64_t ox = 0; ox < Wo; ox++) {
                int64_t xx = ox * s - p + kx;
                if (xx >= 0 && xx < W) xr[xx] += crr[ox];
              }
            }
          }
      }
    });
  }
}

// Gradients of o = softmax(scale·q·kᵀ)·v per (batch, head), probabilities recomputed. An optional
// 5th input dp[B·H, Nq, Nk] is an incoming gradient on the probabilities themselves (captured maps
// in a loss). dP = dO·Vᵀ + dp;  dS = P ⊙ (dP − rowsum(P ⊙ dP));  dQ = scale·dS·K;
// dK = scale·dSᵀ·Q;  dV = Pᵀ·dO. Query rows are processed in blocks; dK/dV are accumulated per
// worker and summed under a lock.
void op_ATTENTION_BACKWARD(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "attention_backward";
  checkArity(op, in, 4, 5, out, 3);
  f32(op, in, out);
  const Shape &qs = in[0].shape, &ks = in[1].shape, &vs = in[2].shape;
  if (qs.size() != 3 || ks.size() != 3 || vs.size() != 3 || qs[0] != ks[0] || ks[0] != vs[0] || ks[1] != vs[1] ||
      qs[2] != ks[2])
    shapeError(op, "q " + shapeOf(in[0]) + ", k " + shapeOf(in[1]) + ", v " + shapeOf(in[2]));
  const int64_t B = qs[0], Nq = qs[1], Nk = ks[1], H = a.heads;
  if (H <= 0 || qs[2] % H || vs[2] % H) shapeError(op, "widths do not split into heads");
  const int64_t d = qs[2] / H, dv = vs[2] / H, Wq = qs[2], Wv = vs[2];
  checkShape(op, in[3], {B, Nq, Wv}, "do");
  const bool hasDp = given(in, 4);
  if (hasDp) checkShape(op, in[4], {B * H, Nq, Nk}, "dp");
  checkShape(op, out[0], qs, "dq");
  checkShape(op, out[1], ks, "dk");
  checkShape(op, out[2], vs, "dv");
  const float* q = in[0].as<float>();
  const float* k = in[1].as<float>();
  const float* v = in[2].as<float>();
  const float* dO = in[3].as<float>();
  const float* dp = hasDp ? in[4].as<float>() : nullptr;
  float* dq = out[0].as<float>();
  float* dk = out[1].as<float>();
  float* dvv = out[2].as<float>();
  std::memset(dk, 0, sizeof(float) * size_t(out[1].numel()));
  std::memset(dvv, 0, sizeof(float) * size_t(out[2].numel()));
  const float scale = float(a.scale);
  constexpr int64_t kQ = 64;
  const int64_t qBlocks = (Nq + kQ - 1) / kQ;
  std::mutex mu;
  for (int64_t bh = 0; bh < B * H; bh++) {
    const int64_t b = bh / H, h = bh % H;
    const float* qb = q + b * Nq * Wq + h * d;
    const float* kb = k + b * Nk * Wq + h * d;
    const float* vb = v + b * Nk * Wv + h * dv;
    const float* ob = dO + b * Nq * Wv + h * dv;
    float* dqb = dq + b * Nq * Wq + h * d;
    float* dkb = dk + b * Nk * Wq + h * d;
    float* dvb = dvv + b * Nk * Wv + h * dv;
    parallel_for(qBlocks, [&](int64_t j0, int64_t j1) {
      std::vector<float> P(size_t(kQ * Nk)), dP(size_t(kQ * Nk)), accK(size_t(Nk * d), 0.f), accV(size_t(Nk * dv), 0.f);
      for (int64_t j = j0; j < j1; j++) {
        const int64_t i0 = j * kQ, m = std::min(kQ, Nq - i0);
        // S = Q·Kᵀ (unscaled), then the softmax in place.
        sgemm(m, Nk, d, qb + i0 * Wq, Wq, 1, kb, 1, Wq, P.data(), Nk, false);
        for (int64_t i = 0; i < m; i++) {
          float* pr = P.data() + i * Nk;
          int64_t valid = a.causal ? std::min(Nk, i0 + i + 1) : Nk;
          float mx = -INFINITY;
          for (int64_t c = 0; c < valid; c++) mx = std::max(mx, pr[c] * scale);
          double sum = 0;
          for (int64_t c = 0; c < valid; c++) {
            pr[c] = std::exp(pr[c] * scale - mx);
            sum += pr[c];
          }
          float inv = float(1.0 / sum);
          for (int64_t c = 0; c < valid; c++) pr[c] *= inv;
          for (int64_t c = valid; c < Nk; c++) pr[c] = 0.f;
        }
        // dP = dO·Vᵀ (+ dp)
        sgemm(m, Nk, dv, ob + i0 * Wv, Wv, 1, vb, 1, Wv, dP.data(), Nk, false);
        for (int64_t i = 0; i < m; i++) {
          float* pr = P.data() + i * Nk;
          float* gr = dP.data() + i * Nk;
          if (dp) {
            const float* in4 = dp + (bh * Nq + i0 + i) * Nk;
            for (int64_t c = 0; c < Nk; c++) gr[c] += in4[c];
          }
          double dot = 0;
          for (int64_t c = 0; c < Nk; c++) dot += double(pr[c]) * gr[c];
          for (int64_t c = 0; c < Nk; c++) gr[c] = pr[c] * (gr[c] - float(dot)) * scale;  // dS·scale
        }
        // dQ rows = (scale·dS)·K
        sgemm(m, d, Nk, dP.data(), Nk, 1, kb, Wq, 1, dqb + i0 * Wq, Wq, false);
        // dK += (scale·dS)ᵀ·Q;  dV += Pᵀ·dO
        sgemm(Nk, d, m, dP.data(), 1, Nk, qb + i0 * Wq, Wq, 1, accK.data(), d, true);
        sgemm(Nk, dv, m, P.data(), 1, Nk, ob + i0 * Wv, Wv, 1, accV.data(), dv, true);
      }
      std::lock_guard<std::mutex> lock(mu);
      for (int64_t r = 0; r < Nk; r++) {
        for (int64_t c = 0; c < d; c++) dkb[r * Wq + c] += accK[size_t(r * d + c)];
        for (int64_t c = 0; c < dv; c++) dvb[r * Wv + c] += accV[size_t(r * dv + c)];
      }
    });
  }
}

// Gradient w.r.t. the injected vectors: dvec[m] = Σ of dy rows whose slot is m.
void op_INJECT_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "inject_backward";
  checkArity(op, in, 2, 2, out, 1);
  checkDtype(op, in[0], DType::F32, "dy");
  checkDtype(op, in[1], DType::I32, "slots");
  checkDtype(op, out[0], DType::F32, "dvectors");
  const Shape& ys = in[0].shape;
  if (ys.size() != 3 || in[1].shape != Shape{ys[0], ys[1]} || out[0].shape.size() != 2 || out[0].shape[1] != ys[2])
    shapeError(op, "dy " + shapeOf(in[0]) + ", slots " + shapeOf(in[1]) + ", dvectors " + shapeOf(out[0]));
  const int64_t rows = ys[0] * ys[1], D = ys[2], M = out[0].shape[0];
  const float* dy = in[0].as<float>();
  const int32_t* sl = in[1].as<int32_t>();
  float* o = out[0].as<float>();
  std::vector<double> acc(size_t(M * D), 0.0);
  for (int64_t r = 0; r < rows; r++) {
    int32_t s = sl[r];
    if (s < 0) continue;
    if (s >= M) throw Error("E_ARGUMENT", std::string(op) + ": slot " + std::to_string(s) + " out of range");
    for (int64_t c = 0; c < D; c++) acc[size_t(s * D + c)] += dy[r * D + c];
  }
  for (int64_t i = 0; i < M * D; i++) o[i] = float(acc[size_t(i)]);
}

}  // namespace cpu
}  // namespace idforge
