// GROUP_NORM (optionally fused with SiLU) and LAYER_NORM, and their backward ops at the end. Statistics are accumulated in double
// over float data, two-pass (mean, then squared deviations), so they match PyTorch's float32
// results to rounding even for large groups (320 channels x 64x64) and offset-heavy activations.
// The forward loops are the selected variant's (isa/norm_impl.h).
#include <cmath>

#include "derivatives.h"
#include "ops.h"
#include "parallel.h"
#include "isa/kernels.h"

namespace idforge {
namespace cpu {
namespace {

// Mean and 1/√(var + eps) of n floats in double: the statistics the backward ops recompute from
// the forward input (two passes, as the forward reference does).
inline void meanRstd(const float* x, int64_t n, double eps, double* mean, double* rstd) {
  double m = 0, v = 0;
  for (int64_t i = 0; i < n; i++) m += x[i];
  m /= double(n);
  for (int64_t i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
  v /= double(n);
  *mean = m;
  *rstd = 1.0 / std::sqrt(v + eps);
}

}  // namespace

void op_GROUP_NORM(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "group_norm";
  checkArity(op, in, 3, 3, out, 1);
  for (int i = 0; i < 3; i++) checkDtype(op, in[i], DType::F32, i == 0 ? "x" : i == 1 ? "w" : "b");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& xs = in[0].shape;
  if (xs.size() < 2) shapeError(op, "x " + shapeOf(in[0]) + " must be [B, C, ..]");
  const int64_t B = xs[0], C = xs[1], G = a.groups;
  if (G <= 0 || C % G) shapeError(op, "channels " + std::to_string(C) + " of x " + shapeOf(in[0]) +
                                          " are not divisible into " + std::to_string(G) + " groups");
  checkNumel(op, in[1], C, "w");
  checkNumel(op, in[2], C, "b");
  checkShape(op, out[0], xs, "out");
  const int64_t S = (B > 0 && C > 0) ? in[0].numel() / (B * C) : 0, Cg = C / G, n = Cg * S;
  const float* x = in[0].as<float>();
  const float* w = in[1].as<float>();
  const float* bb = in[2].as<float>();
  float* y = out[0].as<float>();
  const double eps = a.eps;
  const bool silu = a.silu;
  parallel_for(B * G, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xg = x + t * n;
      float* yg = y + t * n;
      const NormKernels& k = kern().norm;
      double mean = n ? k.sum(xg, n) / double(n) : 0.0;
      double var = n ? k.sumSqDev(xg, n, mean) / double(n) : 0.0;
      float rstd = float(1.0 / std::sqrt(var + eps));
      int64_t c0 = (t % G) * Cg;
      for (int64_t c = 0; c < Cg; c++) k.affine(xg + c * S, yg + c * S, S, float(mean), rstd * w[c0 + c], bb[c0 + c], silu);
    }
  }, 1);
}

void op_LAYER_NORM(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "layer_norm";
  checkArity(op, in, 3, 3, out, 1);
  for (int i = 0; i < 3; i++) checkDtype(op, in[i], DType::F32, i == 0 ? "x" : i == 1 ? "w" : "b");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& xs = in[0].shape;
  if (xs.empty()) shapeError(op, "x " + shapeOf(in[0]) + " must be [.., C]");
  const int64_t C = xs.back(), rows = C ? in[0].numel() / C : 0;
  checkNumel(op, in[1], C, "w");
  checkNumel(op, in[2], C, "b");
  checkShape(op, out[0], xs, "out");
  const float* x = in[0].as<float>();
  const float* w = in[1].as<float>();
  const float* bb = in[2].as<float>();
  float* y = out[0].as<float>();
  const double eps = a.eps;
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      const NormKernels& k = kern().norm;
      double mean = k.sum(xr, C) / double(C);
      double var = k.sumSqDev(xr, C, mean) / double(C);
      k.affineRow(xr, yr, C, float(mean), float(1.0 / std::sqrt(var + eps)), w, bb);
    }
  };
  int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1));
  if (rows <= grain) body(0, rows);
  else parallel_for(rows, body, grain);
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts): statistics recomputed from the
// forward inputs; long sums feeding a subtraction accumulate in double -----------------------------

// dx of y = silu?(gn(x)·w + b) given dy. Per group: xh = (x − μ)·r; g = dy·w (·silu'(y_pre));
// dx = r·(g − mean(g) − xh·mean(g·xh)).
void op_GROUP_NORM_BACKWARD(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "group_norm_backward";
  checkArity(op, in, 4, 4, out, 1);
  checkF32(op, in, out);
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
      double mean, rstd;
      meanRstd(xg, n, a.eps, &mean, &rstd);
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
  checkF32(op, in, out);
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
      double mean, rstd;
      meanRstd(xr, C, a.eps, &mean, &rstd);
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

}  // namespace cpu
}  // namespace idforge
