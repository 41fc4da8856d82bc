// CONV2D as GEMM: out[O, Ho*Wo] = W[O, C*kh*kw] · col[C*kh*kw, Ho*Wo]. The im2col matrix is never
// built whole: each GEMM task packs the K-slab x column-block it needs straight from the image, so
// it lives in L2 instead of memory. Two schedules, picked by which operand is bigger:
//  - large images (Ho*Wo >= O/2): one GEMM per image, weights packed once per call and shared by
//    the images, tasks split the columns (so no task packs the same im2col block twice);
//  - small images (the 16x16 .. 4x4 levels, O up to 1280): one GEMM over the columns of all images,
//    tasks split the rows and pack their own weight rows, so the (large) weights are packed
//    exactly once and the (small) im2col blocks are the ones repacked.
// 3x3 / stride 1 / pad 1 convs with enough channels and pixels go to Winograd instead
// (winograd.cc; winogradTile() decides, IDFORGE_WINOGRAD=0 forces this im2col path).
// Bias (per channel or per image) and residual (native/fused.h) are what the GEMM accumulates
// onto, or are added while the result is scattered / transformed into y: never an extra pass.
// At the end, CONV2D_BACKWARD_INPUT: a transposed convolution (col = Wᵀ·dy, then col2im).
#include <cstring>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"
#include "winograd.h"

namespace idforge {
namespace cpu {
namespace {

class Im2colB : public GemmB {
 public:
  // Columns j of all images: image j / (Ho*Wo), x images C*H*W floats apart.
  Im2colB(const float* x, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t stride, int64_t pad,
          int64_t Ho, int64_t Wo, int nr)
      : x_(x), C_(C), H_(H), W_(W), kh_(kh), kw_(kw), s_(stride), p_(pad), Ho_(Ho), Wo_(Wo), nr_(nr) {}

  const float* get(int64_t p0, int64_t kc, int64_t j0, int64_t nc, float* dst) const override {
    for (int64_t jp = 0; jp < nc; jp += nr_) {
      float* panel = dst + jp * kc;
      const int64_t ncols = std::min<int64_t>(nr_, nc - jp), jbase = j0 + jp;
      int64_t c = p0 / (kh_ * kw_), ky = (p0 / kw_) % kh_, kx = p0 % kw_;
      for (int64_t k = 0; k < kc; k++) {
        float* d = panel + k * nr_;
        int64_t col = 0, j = jbase;
        while (col < ncols) {
          // A run ends with its output row, hence never crosses into the next image.
          const int64_t img = j / (Ho_ * Wo_), jj = j % (Ho_ * Wo_);
          const float* plane = x_ + (img * C_ + c) * H_ * W_;
          const int64_t oy = jj / Wo_, ox = jj % Wo_, run = std::min(ncols - col, Wo_ - ox);
          const int64_t iy = oy * s_ - p_ + ky;
          if (iy < 0 || iy >= H_) {
            std::memset(d + col, 0, sizeof(float) * size_t(run));
          } else {
            const float* row = plane + iy * W_;
            const int64_t ix0 = ox * s_ - p_ + kx;  // ix = ix0 + t*s for t in [0, run)
            // t range with 0 <= ix < W
            int64_t tlo = ix0 >= 0 ? 0 : (-ix0 + s_ - 1) / s_;
            int64_t thi = ix0 >= W_ ? 0 : std::min(run, (W_ - 1 - ix0) / s_ + 1);
            if (thi < tlo) thi = tlo;
            tlo = std::min(tlo, run);
            for (int64_t t = 0; t < tlo; t++) d[col + t] = 0.f;
            if (s_ == 1)
              std::memcpy(d + col + tlo, row + ix0 + tlo, sizeof(float) * size_t(thi - tlo));
            else
              for (int64_t t = tlo; t < thi; t++) d[col + t] = row[ix0 + t * s_];
            for (int64_t t = thi; t < run; t++) d[col + t] = 0.f;
          }
          col += run;
          j += run;
        }
        for (; col < nr_; col++) d[col] = 0.f;
        if (++kx == kw_) {
          kx = 0;
          if (++ky == kh_) {
            ky = 0;
            c++;
          }
        }
      }
    }
    return dst;
  }

 private:
  const float* x_;
  int64_t C_, H_, W_, kh_, kw_, s_, p_, Ho_, Wo_;
  int nr_;
};

}  // namespace

// Image b's output planes before its GEMM accumulates onto them: y[o] = bias(b, o) + residual[o]
// over the N pixels of each plane (one pass; a residual that is y itself is left in place).
void fillPlanes(float* yb, int64_t b, int64_t O, int64_t N, const Epilogue& e) {
  const float* rb = e.residual ? e.residual + b * O * N : nullptr;
  auto body = [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; o++) {
      float* d = yb + o * N;
      const float bv = e.biasAt(b, o);
      if (!rb) {
        std::fill(d, d + N, bv);
      } else {
        const float* r = rb + o * N;
        if (!e.bias) {
          if (r != d) std::memcpy(d, r, sizeof(float) * size_t(N));
        } else {
          for (int64_t j = 0; j < N; j++) d[j] = r[j] + bv;
        }
      }
    }
  };
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
  if (O <= grain) body(0, O);
  else parallel_for(O, body, grain);
}

void op_CONV2D(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "conv2d";
  checkArity(op, in, 2, 4, out, 1);
  checkDtype(op, in[0], DType::F32, "x");
  const Operand w = weightOperand(op, in[1], "w");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& xs = in[0].shape;
  const Shape& ws = in[1].shape;
  if (xs.size() != 4) shapeError(op, "x " + shapeOf(in[0]) + " must be [B, C, H, W]");
  if (ws.size() != 4 || ws[1] != xs[1])
    shapeError(op, "w " + shapeOf(in[1]) + " must be [O, " + std::to_string(xs[1]) + ", kh, kw] for x " + shapeOf(in[0]) +
                       " (groups = 1 only)");
  if (a.groups != 1) shapeError(op, "only groups = 1 is supported");
  const int64_t B = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0], kh = ws[2], kw = ws[3];
  const int64_t s = a.stride, p = a.pad;
  if (s < 1 || p < 0) shapeError(op, "stride must be >= 1 and pad >= 0");
  const int64_t Ho = (H + 2 * p - kh) / s + 1, Wo = (W + 2 * p - kw) / s + 1;
  if (kh < 1 || kw < 1 || H + 2 * p < kh || W + 2 * p < kw)
    shapeError(op, "kernel " + shapeOf(in[1]) + " does not fit x " + shapeOf(in[0]) + " with pad " + std::to_string(p));
  checkShape(op, out[0], {B, O, Ho, Wo}, "out");
  const Epilogue e = epilogueOf(op, a, in, out[0], O, B);
  const int64_t K = C * kh * kw, N = Ho * Wo;
  float* y = out[0].as<float>();
  if (B == 0 || O == 0 || N == 0) return;
  const float* x = in[0].as<float>();
  if (const int m = winogradTile(B, C, H, W, O, kh, kw, s, p)) {
    conv3x3Winograd(m, x, w, e, y, B, C, H, W, O);
    return;
  }
  const bool direct = kh == 1 && kw == 1 && s == 1 && p == 0;
  if (2 * N >= O) {
    GemmTile t = gemmTile(O, N);
    PackedA wA(w, K, 1, O, K, t.mr);
    for (int64_t b = 0; b < B; b++) {
      float* yb = y + b * O * N;
      const float* xb = x + b * C * H * W;
      if (e.any()) fillPlanes(yb, b, O, N, e);
      if (direct) {
        StridedB xB(xb, H * W, 1, t.nr);
        gemm(O, N, K, t, wA, xB, yb, N, e.any());
      } else {
        Im2colB col(xb, C, H, W, kh, kw, s, p, Ho, Wo, t.nr);
        gemm(O, N, K, t, wA, col, yb, N, e.any());
      }
    }
    return;
  }
  const int64_t NB = N * B;
  // Few columns in all (8x8 and 4x4 images): multiply the weights in place, unpacked.
  const bool rowA = NB <= kRowANMax;
  GemmTile t = gemmTile(O, NB);
  StridedA wA(w, K, 1, t.mr);
  Im2colB col(x, C, H, W, kh, kw, s, p, Ho, Wo, rowA ? rowANr() : t.nr);
  auto product = [&](float* dst, bool acc) {
    if (rowA) gemmRowA(O, NB, K, w, K, col, dst, NB, acc);
    else gemm(O, NB, K, t, wA, col, dst, NB, acc);
  };
  if (B == 1) {
    if (e.any()) fillPlanes(y, 0, O, N, e);
    product(y, e.any());
    return;
  }
  // [O, B*N] result, then scattered to [B, O, N] with the bias and residual (small: these images
  // are small).
  float* tmp = static_cast<float*>(alignedAlloc(sizeof(float) * size_t(O * NB)));
  struct Free {
    float* p;
    ~Free() { alignedFree(p); }
  } guard{tmp};
  product(tmp, false);
  for (int64_t b = 0; b < B; b++)
    for (int64_t o = 0; o < O; o++) {
      const float* src = tmp + o * NB + b * N;
      float* dst = y + (b * O + o) * N;
      const float add = e.biasAt(b, o);
      if (e.residual) {
        const float* r = e.residual + (b * O + o) * N;
        for (int64_t j = 0; j < N; j++) dst[j] = src[j] + add + r[j];
      } else {
        for (int64_t j = 0; j < N; j++) dst[j] = src[j] + add;
      }
    }
}

// ---- backward (a vector-Jacobian product for lib/graph/autodiff.ts; weights are frozen) -----------

// dx of a convolution (groups 1) w.r.t. its input: col = Wᵀ·dy per image, then col2im (the
// adjoint of im2col), i.e. a transposed convolution. out carries the input's shape.
void op_CONV2D_BACKWARD_INPUT(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "conv2d_backward_input";
  checkArity(op, in, 2, 2, out, 1);
  checkF32(op, in, out);
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

}  // namespace cpu
}  // namespace idforge
