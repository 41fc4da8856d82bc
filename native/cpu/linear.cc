// LINEAR (+ bias + residual, native/fused.h) and MATMUL on top of the packed SGEMM.
#include <cstring>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"

namespace idforge {
namespace cpu {

// Writes what the GEMM then accumulates onto: y[r][n] = bias[n] + residual[r][n] (either may be
// absent; a residual that is y itself needs no copy). One pass, the same traffic the bias fill
// alone cost, so the fused add is free of the extra read-modify-write a separate ADD would do.
static void fillRows(float* y, int64_t rows, int64_t n, const Epilogue& e) {
  auto body = [&](int64_t b, int64_t end) {
    for (int64_t r = b; r < end; r++) {
      float* yr = y + r * n;
      const float* rr = e.residual ? e.residual + r * n : nullptr;
      if (!rr) std::memcpy(yr, e.bias, sizeof(float) * size_t(n));
      else if (!e.bias) {
        if (rr != yr) std::memcpy(yr, rr, sizeof(float) * size_t(n));
      } else {
        for (int64_t j = 0; j < n; j++) yr[j] = rr[j] + e.bias[j];
      }
    }
  };
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
  if (rows <= grain) body(0, rows);
  else parallel_for(rows, body, grain);
}

// LINEAR with transX (x [B, K, R] → y [B, R, N]) or transY (x [B, R, K] → y [B, N, R]): the
// same product with other strides, so the layout change costs nothing.
static void linearTransposed(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "linear";
  const Shape& xs = in[0].shape;
  const Shape& ws = in[1].shape;
  if (a.transX && a.transY) shapeError(op, "transX and transY cannot both be set");
  if (xs.size() != 3) shapeError(op, std::string(a.transX ? "transX" : "transY") + " needs x of rank 3, got " + shapeOf(in[0]));
  const int64_t B = xs[0], K = a.transX ? xs[1] : xs[2], R = a.transX ? xs[2] : xs[1];
  if (ws.size() != 2 || ws[1] != K)
    shapeError(op, "w " + shapeOf(in[1]) + " must be [N, " + std::to_string(K) + "] for x " + shapeOf(in[0]) +
                       (a.transX ? " (transX)" : " (transY)"));
  const int64_t N = ws[0];
  const Shape os = a.transX ? Shape{B, R, N} : Shape{B, N, R};
  checkShape(op, out[0], os, "out");
  const Epilogue e = epilogueOf(op, a, in, out[0], N, 0);
  const float* x = in[0].as<float>();
  const Operand w = weightOperand(op, in[1], "w");
  float* y = out[0].as<float>();
  for (int64_t b = 0; b < B; b++) {
    const float* xb = x + b * K * R;
    float* yb = y + b * R * N;
    if (a.transX) {
      // y_b[r][n] = Σ_k x_b[k][r] · w[n][k]: A(r, k) = x_b[k·R + r], B(k, n) = w[n·K + k].
      if (e.any()) fillRows(yb, R, N, e.residual ? Epilogue{e.bias, 0, e.residual + b * R * N} : e);
      sgemm(R, N, K, xb, 1, R, w, 1, K, yb, N, e.any());
    } else {
      // y_b[n][r] = Σ_k w[n][k] · x_b[r][k]: A(n, k) = w[n·K + k], B(k, r) = x_b[r·K + k].
      if (e.any()) fillPlanes(yb, b, N, R, e);
      sgemm(N, R, K, w, K, 1, xb, 1, K, yb, R, e.any());
    }
  }
}

void op_LINEAR(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "linear";
  checkArity(op, in, 2, 4, out, 1);
  checkDtype(op, in[0], DType::F32, "x");
  const Operand w = weightOperand(op, in[1], "w");
  checkDtype(op, out[0], DType::F32, "out");
  if (a.transX || a.transY) return linearTransposed(a, in, out);
  const Shape& xs = in[0].shape;
  const Shape& ws = in[1].shape;
  if (xs.empty()) shapeError(op, "x " + shapeOf(in[0]) + " must be [.., K]");
  if (ws.size() != 2 || ws[1] != xs.back())
    shapeError(op, "w " + shapeOf(in[1]) + " must be [N, " + std::to_string(xs.back()) + "] for x " + shapeOf(in[0]));
  const int64_t K = xs.back(), N = ws[0];
  Shape os = xs;
  os.back() = N;
  checkShape(op, out[0], os, "out");
  const Epilogue e = epilogueOf(op, a, in, out[0], N, 0);
  float* y = out[0].as<float>();
  // Rows from the output: with K = 0 the input has no elements to count them by.
  const int64_t M = N ? out[0].numel() / N : 0;
  if (M > 0 && M <= kRowANMax && double(N) * double(K) >= 262144.0) {
    // Few tokens: yᵀ = w · xᵀ with the weight read in place (packing it would cost about as much
    // as the product), then transposed into y with the bias and residual.
    float* yt = static_cast<float*>(alignedAlloc(sizeof(float) * size_t(N * M)));
    struct Free {
      float* p;
      ~Free() { alignedFree(p); }
    } guard{yt};
    StridedB xT(in[0].as<float>(), 1, K, rowANr());
    gemmRowA(N, M, K, w, K, xT, yt, M, false);
    const float* bv = e.bias;
    const float* rv = e.residual;
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++)
        y[m * N + n] = yt[n * M + m] + (bv ? bv[n] : 0.f) + (rv ? rv[m * N + n] : 0.f);
    return;
  }
  if (e.any()) fillRows(y, M, N, e);
  // y = x · wᵀ: B(k, j) = w[j*K + k].
  sgemm(M, N, K, in[0].as<float>(), K, 1, w, 1, K, y, N, e.any());
}

void op_MATMUL(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "matmul";
  checkArity(op, in, 2, 2, out, 1);
  checkDtype(op, in[0], DType::F32, "a");
  checkDtype(op, in[1], DType::F32, "b");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& as = in[0].shape;
  const Shape& bs = in[1].shape;
  if (as.size() < 2 || bs.size() < 2) shapeError(op, "a " + shapeOf(in[0]) + " and b " + shapeOf(in[1]) + " must be [B, M, K] / [B, K, N]");
  const int64_t M = as[as.size() - 2], K = as.back();
  const int64_t bK = a.transB ? bs.back() : bs[bs.size() - 2], N = a.transB ? bs[bs.size() - 2] : bs.back();
  int64_t BA = 1, BB = 1;
  for (size_t i = 0; i + 2 < as.size(); i++) BA *= as[i];
  for (size_t i = 0; i + 2 < bs.size(); i++) BB *= bs[i];
  if (bK != K || (BB != BA && BB != 1))
    shapeError(op, "a " + shapeOf(in[0]) + " and b " + shapeOf(in[1]) + (a.transB ? " (transB)" : "") +
                       " do not multiply");
  Shape os(as.begin(), as.end() - 1);
  os.push_back(N);
  checkShape(op, out[0], os, "out");
  const float* A = in[0].as<float>();
  const float* B = in[1].as<float>();
  float* C = out[0].as<float>();
  const int64_t sb = BB == 1 ? 0 : K * N;
  const int64_t rsb = a.transB ? 1 : N, csb = a.transB ? K : 1;
  auto one = [&](int64_t i) { sgemm(M, N, K, A + i * M * K, K, 1, B + i * sb, rsb, csb, C + i * M * N, N, false); };
  // Many small products (attention-like batches) parallelise better across the batch.
  if (BA >= numThreads() && double(M) * N * K < 3e7)
    parallel_for(BA, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) one(i);
    }, 1);
  else
    for (int64_t i = 0; i < BA; i++) one(i);
}

}  // namespace cpu
}  // namespace idforge
