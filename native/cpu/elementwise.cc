// Elementwise ops: activations, broadcast ADD/MUL, SCALE, and the two sampler updates; at the end,
// the activations' backward ops (GELU/QUICK_GELU/SILU/GEGLU_BACKWARD).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "derivatives.h"
#include "ops.h"
#include "parallel.h"
#include "vmath.h"

namespace idforge {
namespace cpu {
namespace {

void unaryCheck(const char* op, const Views& in, const Views& out) {
  checkArity(op, in, 1, 1, out, 1);
  checkDtype(op, in[0], DType::F32, "x");
  checkDtype(op, out[0], DType::F32, "out");
  if (in[0].shape != out[0].shape) shapeError(op, "out " + shapeOf(out[0]) + " must equal x " + shapeOf(in[0]));
}

}  // namespace

void op_GELU(const OpAttrs&, const Views& in, const Views& out) {
  unaryCheck("gelu", in, out);
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) { geluRow(x + b, y + b, e - b); });
}

void op_QUICK_GELU(const OpAttrs&, const Views& in, const Views& out) {
  unaryCheck("quick_gelu", in, out);
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) { siluScaled(x + b, y + b, e - b, 1.702f); });
}

void op_SILU(const OpAttrs&, const Views& in, const Views& out) {
  unaryCheck("silu", in, out);
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) { siluScaled(x + b, y + b, e - b, 1.f); });
}

void op_RELU(const OpAttrs&, const Views& in, const Views& out) {
  unaryCheck("relu", in, out);
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  // x > 0 ? x : 0 keeps NaN out of a comparison-based max (NaN stays NaN only through x itself).
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) y[i] = x[i] > 0.f ? x[i] : (x[i] != x[i] ? x[i] : 0.f);
  });
}

void op_TANH(const OpAttrs&, const Views& in, const Views& out) {
  unaryCheck("tanh", in, out);
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) y[i] = std::tanh(x[i]);
  });
}

void op_SCALE(const OpAttrs& a, const Views& in, const Views& out) {
  unaryCheck("scale", in, out);
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  const float s = float(a.scale), t = float(a.shift);
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) y[i] = x[i] * s + t;
  });
}

void op_GEGLU(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "geglu";
  checkArity(op, in, 1, 1, out, 1);
  checkDtype(op, in[0], DType::F32, "x");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& xs = in[0].shape;
  if (xs.empty() || xs.back() % 2) shapeError(op, "x " + shapeOf(in[0]) + " needs an even last dimension");
  Shape os = xs;
  os.back() /= 2;
  checkShape(op, out[0], os, "out");
  const int64_t F = os.back(), rows = F ? out[0].numel() / F : 0;
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(F, 1));
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      const float* h = x + r * 2 * F;
      const float* g = h + F;
      float* o = y + r * F;
      gegluRow(h, g, o, F);
    }
  };
  if (rows <= grain) body(0, rows);
  else parallel_for(rows, body, grain);
}

// ---- broadcasting binary ops -------------------------------------------------------------------

namespace {

struct Bcast {
  int rank = 0;
  int64_t dim[8], sa[8], sb[8];  // collapsed output dims and element strides of a and b (0 = broadcast)
};

Bcast planBroadcast(const char* op, const TensorView& A, const TensorView& B, const TensorView& O) {
  const Shape &as = A.shape, &bs = B.shape, &os = O.shape;
  size_t R = std::max(as.size(), bs.size());
  Shape want(R);
  for (size_t i = 0; i < R; i++) {
    int64_t da = i < R - as.size() ? 1 : as[i - (R - as.size())];
    int64_t db = i < R - bs.size() ? 1 : bs[i - (R - bs.size())];
    if (da != db && da != 1 && db != 1)
      shapeError(op, "cannot broadcast " + shapeOf(A) + " with " + shapeOf(B));
    want[i] = da == 1 ? db : da;
  }
  if (os != want)
    shapeError(op, "out " + shapeOf(O) + " must be the broadcast shape " + shapeStr(want) + " of " + shapeOf(A) +
                       " and " + shapeOf(B));
  // Full-rank strides, then merge neighbours that are contiguous for both operands.
  std::vector<int64_t> d(R), xa(R), xb(R);
  int64_t ca = 1, cb = 1;
  for (size_t k = R; k-- > 0;) {
    int64_t da = k < R - as.size() ? 1 : as[k - (R - as.size())];
    int64_t db = k < R - bs.size() ? 1 : bs[k - (R - bs.size())];
    d[k] = want[k];
    xa[k] = da == 1 ? 0 : ca;
    xb[k] = db == 1 ? 0 : cb;
    ca *= da;
    cb *= db;
  }
  Bcast p;
  std::vector<int64_t> md, ma, mb;
  for (size_t k = 0; k < R; k++) {
    if (d[k] == 1) continue;
    if (!md.empty() && ma.back() == xa[k] * d[k] && mb.back() == xb[k] * d[k]) {
      md.back() *= d[k];
      ma.back() = xa[k];
      mb.back() = xb[k];
    } else {
      md.push_back(d[k]);
      ma.push_back(xa[k]);
      mb.push_back(xb[k]);
    }
  }
  if (md.empty()) {
    md.push_back(1);
    ma.push_back(0);
    mb.push_back(0);
  }
  if (md.size() > 8) shapeError(op, "more than 8 non-mergeable broadcast dimensions");
  p.rank = int(md.size());
  for (int k = 0; k < p.rank; k++) {
    p.dim[k] = md[k];
    p.sa[k] = ma[k];
    p.sb[k] = mb[k];
  }
  return p;
}

template <typename F>
void binaryOp(const char* op, const Views& in, const Views& out, F f) {
  checkArity(op, in, 2, 2, out, 1);
  checkDtype(op, in[0], DType::F32, "a");
  checkDtype(op, in[1], DType::F32, "b");
  checkDtype(op, out[0], DType::F32, "out");
  Bcast p = planBroadcast(op, in[0], in[1], out[0]);
  const float* A = in[0].as<float>();
  const float* B = in[1].as<float>();
  float* O = out[0].as<float>();
  const int R = p.rank;
  const int64_t inner = p.dim[R - 1], ia = p.sa[R - 1], ib = p.sb[R - 1];
  forChunks(out[0].numel(), [&](int64_t b, int64_t e) {
    // Multi-index of element b, then walk rows of the innermost dimension.
    int64_t idx[8], offA = 0, offB = 0, rem = b;
    for (int k = R - 1; k >= 0; k--) {
      idx[k] = rem % p.dim[k];
      rem /= p.dim[k];
      offA += idx[k] * p.sa[k];
      offB += idx[k] * p.sb[k];
    }
    int64_t pos = b;
    while (pos < e) {
      int64_t n = std::min(inner - idx[R - 1], e - pos);
      const float* a = A + offA;
      const float* bb = B + offB;
      float* o = O + pos;
      if (ia == 1 && ib == 1)
        for (int64_t i = 0; i < n; i++) o[i] = f(a[i], bb[i]);
      else if (ia == 1 && ib == 0)
        for (int64_t i = 0; i < n; i++) o[i] = f(a[i], bb[0]);
      else if (ia == 0 && ib == 1)
        for (int64_t i = 0; i < n; i++) o[i] = f(a[0], bb[i]);
      else
        for (int64_t i = 0; i < n; i++) o[i] = f(a[i * ia], bb[i * ib]);
      pos += n;
      offA += n * ia;
      offB += n * ib;
      idx[R - 1] += n;
      // Carry into the outer dimensions.
      for (int k = R - 1; k > 0 && idx[k] == p.dim[k]; k--) {
        offA -= idx[k] * p.sa[k];
        offB -= idx[k] * p.sb[k];
        idx[k] = 0;
        idx[k - 1]++;
        offA += p.sa[k - 1];
        offB += p.sb[k - 1];
      }
    }
  });
}

}  // namespace

void op_ADD(const OpAttrs&, const Views& in, const Views& out) {
  binaryOp("add", in, out, [](float x, float y) { return x + y; });
}

void op_MUL(const OpAttrs&, const Views& in, const Views& out) {
  binaryOp("mul", in, out, [](float x, float y) { return x * y; });
}

// ---- sampler updates ---------------------------------------------------------------------------

void op_CFG(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "cfg";
  checkArity(op, in, 1, 1, out, 1);
  checkDtype(op, in[0], DType::F32, "eps");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& es = in[0].shape;
  if (es.empty() || es[0] % 2) shapeError(op, "eps " + shapeOf(in[0]) + " needs an even first dimension [2B, ..]");
  Shape os = es;
  os[0] /= 2;
  checkShape(op, out[0], os, "out");
  const int64_t n = out[0].numel();
  const float* u = in[0].as<float>();
  const float* c = u + n;
  float* o = out[0].as<float>();
  const float s = float(a.scale);
  // Same expression and rounding as diffusers: uncond + scale * (text - uncond).
  forChunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) o[i] = u[i] + s * (c[i] - u[i]);
  });
}

void op_SAMPLER_STEP(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "sampler_step";
  checkArity(op, in, 4, 5, out, 3);
  const char* names[] = {"sample", "model output", "state"};
  for (int k = 0; k < 3; k++) {
    checkDtype(op, in[k], DType::F32, names[k]);
    checkShape(op, in[k], in[0].shape, names[k]);
  }
  checkDtype(op, in[3], DType::I32, "coefficients (float32 bits)");
  checkShape(op, in[3], {kSamplerCoefs}, "coefficients");
  const bool noisy = given(in, 4);
  if (noisy) {
    checkDtype(op, in[4], DType::F32, "noise");
    checkShape(op, in[4], in[0].shape, "noise");
  }
  for (int k = 0; k < 3; k++) {
    checkDtype(op, out[k], DType::F32, "out");
    checkShape(op, out[k], in[0].shape, "out");
  }
  SamplerCoefs c;
  std::memcpy(&c, in[3].data, sizeof c);
  const float* x = in[0].as<float>();
  const float* m = in[1].as<float>();
  const float* s = in[2].as<float>();
  const float* z = noisy ? in[4].as<float>() : nullptr;
  float* y = out[0].as<float>();
  float* x0o = out[1].as<float>();
  float* xin = out[2].as<float>();
  forChunks(in[0].numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      double x0 = c.cx * x[i] + c.ce * m[i];
      if (c.clip > 0.0) x0 = x0 < -c.clip ? -c.clip : x0 > c.clip ? c.clip : x0;
      double v = c.px * x[i] + c.p0 * x0 + c.pe * m[i] + c.pp * s[i];
      if (z) v += c.pn * z[i];
      y[i] = float(v);
      x0o[i] = float(x0);
      xin[i] = float(c.next_in * float(v));
    }
  });
}

// ---- optimizer update ---------------------------------------------------------------------------

void op_ADAM_STEP(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "adam_step";
  checkArity(op, in, 5, 6, out, 3);
  const char* names[] = {"parameter", "gradient", "first moment", "second moment"};
  for (int k = 0; k < 4; k++) {
    checkDtype(op, in[k], DType::F32, names[k]);
    checkShape(op, in[k], in[0].shape, names[k]);
  }
  checkDtype(op, in[4], DType::I32, "coefficients (float32 bits)");
  checkShape(op, in[4], {kAdamCoefs}, "coefficients");
  const bool clipped = given(in, 5);
  if (clipped) {
    checkDtype(op, in[5], DType::F32, "squared gradient norm");
    checkShape(op, in[5], {1}, "squared gradient norm");
  }
  for (int k = 0; k < 3; k++) {
    checkDtype(op, out[k], DType::F32, "out");
    checkShape(op, out[k], in[0].shape, "out");
  }
  AdamCoefs c;
  std::memcpy(&c, in[4].data, sizeof c);
  const int64_t n = in[0].numel();
  const float* p = in[0].as<float>();
  const float* g = in[1].as<float>();
  const float* m = in[2].as<float>();
  const float* v = in[3].as<float>();
  float* po = out[0].as<float>();
  float* mo = out[1].as<float>();
  float* vo = out[2].as<float>();
  double s = 1.0;
  if (clipped) {
    const double gsq = *in[5].as<float>();
    if (!std::isfinite(gsq)) {  // a failed step changes nothing (outputs may be the inputs)
      const int from[3] = {0, 2, 3};  // p', m', v' ← p, m, v
      for (int k = 0; k < 3; k++)
        if (out[k].data != in[from[k]].data) std::memcpy(out[k].data, in[from[k]].data, n * sizeof(float));
      return;
    }
    if (c.clip > 0 && gsq > 0) s = std::min(1.0, double(c.clip) / std::sqrt(gsq));
  }
  // No restrict: out[k] may be in[k]; element i is read completely before it is written.
  forChunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      const double gi = s * g[i];
      const double mi = c.beta1 * double(m[i]) + (1.0 - c.beta1) * gi;
      const double vi = c.beta2 * double(v[i]) + (1.0 - c.beta2) * gi * gi;
      const float mf = float(mi), vf = float(vi);
      po[i] = float(p[i] - (c.lr * (double(mf) / c.c1)) / (std::sqrt(double(vf) / c.c2) + c.eps));
      mo[i] = mf;
      vo[i] = vf;
    }
  });
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts; derivatives.h) ----------------

namespace {

// Elementwise backward: in x, dy (same shape) → dx.
template <typename G>
void unaryBackward(const char* op, const Views& in, const Views& out, G grad) {
  checkArity(op, in, 2, 2, out, 1);
  checkF32(op, in, out);
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
  checkF32(op, in, out);
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

}  // namespace cpu
}  // namespace idforge
