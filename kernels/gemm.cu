// LINEAR, MATMUL and CONV2D: all cuBLAS GEMMs (fp16 in, fp32 accumulate on tensor cores; fp32 in
// exact fp32). Row-major tensors are handed to column-major cuBLAS as their transposes, so no
// data is ever transposed. Bias (per channel, or per image for CONV2D) plus residual (the fused
// skip connection, native/fused.h) is written into the output first and the GEMM adds onto it
// (beta = 1), which costs the same traffic as a separate epilogue and one kernel fewer.
#include <algorithm>

#include "cuda_common.h"
#include "fused.h"

namespace idforge {
namespace cuda {

namespace {

int cublasType(DType t) { return t == DType::F16 ? CUDA_R_16F_ : CUDA_R_32F_; }

int checkedInt(OpCode op, int64_t v, const char* what) {
  if (v < 0 || v > 0x7fffffffLL) shapeError(op, std::string(what) + " does not fit cuBLAS's 32-bit sizes");
  return int(v);
}

// Writes what the GEMM accumulates onto (beta = 1): out = bias + residual, the output viewed as
// rows of `len` elements. LINEAR rows are [.., N] with the bias along the row; CONV2D rows are
// the (b, o) planes of H·W pixels with the bias constant per row, bias[r % n] (n = O for a
// per-channel bias, B·O for a per-image [B, O] one, whose index is then the row itself). Either
// part may be absent (null). A fused residual thus costs this one pass, the same traffic as the
// bias fill alone; a separate ADD would read and write the whole output once more. The residual
// may be `out` itself (every element is read before it is written, by the same thread). A 2-D
// grid keeps 64-bit divisions out of the per-element path (they cost more than the store).
template <typename T>
__global__ void fillEpilogue(T* out, const T* __restrict__ bias, const T* res, int64_t rows, int len, int n,
                             int perRow) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    T* o = out + r * len;
    const T* rr = res ? res + r * len : nullptr;
    const float rowVal = perRow && bias ? toF(bias[int(r % n)]) : 0.f;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < len; c += gridDim.x * blockDim.x) {
      float v = perRow ? rowVal : bias ? toF(bias[c]) : 0.f;
      if (rr) v += toF(rr[c]);
      o[c] = fromF<T>(v);
    }
  }
}

template <typename T>
void launchFillEpilogue(const TensorView& out, const void* bias, const void* res, int64_t n, int64_t inner) {
  int64_t total = out.numel();
  bool perRow = inner > 1;
  int64_t len = perRow ? inner : n, rows = total / len;
  dim3 grid{unsigned(std::min<int64_t>(ceilDiv(len, 256), 64)), unsigned(std::min<int64_t>(rows, 65535))};
  fillEpilogue<T><<<grid, 256, 0, ctx().stream>>>(out.as<T>(), static_cast<const T*>(bias), static_cast<const T*>(res),
                                                   rows, int(len), int(n), perRow ? 1 : 0);
  CK_LAUNCH("fillEpilogue");
}

// The bias and residual of a LINEAR / CONV2D (native/fused.h, which both backends share), checked.
struct Epilogue {
  const void* bias = nullptr;
  const void* residual = nullptr;
  bool perImage = false;
  bool any() const { return bias || residual; }
};

Epilogue epilogueOf(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, const TensorView& y, int64_t channels,
                    int64_t images) {
  const FusedOperands f = fusedOperands(in, a, y.shape, channels, images);
  if (!f.error.empty()) shapeError(op, f.error);
  Epilogue e;
  if (f.bias >= 0) {
    expectFloat(op, in[size_t(f.bias)], y.dtype, "b");
    e.bias = in[size_t(f.bias)].data;
    e.perImage = f.biasPerImage;
  }
  if (f.residual >= 0) {
    expectFloat(op, in[size_t(f.residual)], y.dtype, "residual");
    e.residual = in[size_t(f.residual)].data;
  }
  return e;
}

// Fills y with the epilogue. n: the bias length along a row (LINEAR: N, inner = 1) or the number
// of distinct per-row biases (CONV2D: O, or B·O per image; inner = H·W). A residual alone is a
// plain copy (none when it already is y).
void fillEpilogueAny(const TensorView& y, const Epilogue& e, int64_t n, int64_t inner) {
  if (!e.bias) {
    if (e.residual && e.residual != y.data)
      CK(cudaMemcpyAsync(y.data, e.residual, size_t(y.numel()) * dtypeSize(y.dtype), cudaMemcpyDeviceToDevice,
                         ctx().stream));
    return;
  }
  if (y.numel() == 0) return;
  if (y.dtype == DType::F16) launchFillEpilogue<__half>(y, e.bias, e.residual, n, inner);
  else launchFillEpilogue<float>(y, e.bias, e.residual, n, inner);
}

// col[b][(c·kh + i)·kw + j][p − p0] = x[b][c][oy·s − pad + i][ox·s − pad + j] (zero outside).
// grid.y walks the C·kh·kw rows (one 32-bit decomposition per block), grid.z the images, threads
// the pixels: writes are coalesced and the per-element work is one division by Wo.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ col, int C, int H, int W, int kh, int kw,
                       int stride, int pad, int Wo, int p0, int P, int rows) {
  const int b = blockIdx.z;
  const T* xb = x + int64_t(b) * C * H * W;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    int j = r % kw, ii = (r / kw) % kh, c = r / (kw * kh);
    const T* xc = xb + int64_t(c) * H * W;
    T* out = col + (int64_t(b) * rows + r) * P;
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < P; q += gridDim.x * blockDim.x) {
      int p = q + p0, oy = p / Wo, ox = p - oy * Wo;
      int iy = oy * stride - pad + ii, ix = ox * stride - pad + j;
      out[q] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix] : fromF<T>(0.f);
    }
  }
}

}  // namespace

void gemm(bool transA, bool transB, int m, int n, int k, float alpha, const void* A, int lda, long long strideA,
          const void* B, int ldb, long long strideB, float beta, void* C, int ldc, long long strideC, int batch,
          DType abType, DType cType) {
  Context& c = ctx();
  int at = cublasType(abType), ct = cublasType(cType);
  if (batch == 1) {
    CKB(c.api->gemmEx(c.blas, transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
                      A, at, lda, B, at, ldb, &beta, C, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    CKB(c.api->gemmStridedBatchedEx(c.blas, transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    m, n, k, &alpha, A, at, lda, strideA, B, at, ldb, strideB, &beta, C, ct, ldc,
                                    strideC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

// An empty reduction (K = 0 or C = 0): the product is zero, so y is the epilogue alone (already
// written) or zeros. cuBLAS would reject the zero leading dimensions.
bool emptyProduct(const TensorView& y, int64_t k, bool epilogue) {
  if (y.numel() > 0 && k > 0) return false;
  if (y.numel() > 0 && !epilogue) CK(cudaMemsetAsync(y.data, 0, size_t(y.numel()) * dtypeSize(y.dtype), ctx().stream));
  return true;
}

// LINEAR with transX (x [B, K, R] → y [B, R, N]) or transY (x [B, R, K] → y [B, N, R]): one
// strided-batched GEMM with the transposes in cuBLAS's operand flags, so the token ↔ image layout
// change of proj_in / proj_out costs no PERMUTE pass.
void linearTransposed(const OpAttrs& a, const std::vector<TensorView>& in, const TensorView& y) {
  const OpCode op = OpCode::LINEAR;
  const TensorView &x = in[0], &w = in[1];
  const DType dt = y.dtype;
  if (a.transX && a.transY) shapeError(op, "transX and transY cannot both be set");
  if (x.shape.size() != 3) shapeError(op, std::string(a.transX ? "transX" : "transY") + " needs x of rank 3, got " + shapeStr(x.shape));
  const int64_t B = x.shape[0], K = a.transX ? x.shape[1] : x.shape[2], R = a.transX ? x.shape[2] : x.shape[1];
  if (w.shape.size() != 2 || w.shape[1] != K)
    shapeError(op, "w " + shapeStr(w.shape) + " must be [N, " + std::to_string(K) + "] for x " + shapeStr(x.shape) +
                       (a.transX ? " (transX)" : " (transY)"));
  const int64_t N = w.shape[0];
  const Shape ys = a.transX ? Shape{B, R, N} : Shape{B, N, R};
  if (y.shape != ys) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(ys));
  const Epilogue e = epilogueOf(op, a, in, y, N, 0);
  // transX: rows of N with the bias along them; transY: (b, n) planes of R with bias[n] each.
  if (a.transX) fillEpilogueAny(y, e, N, 1);
  else fillEpilogueAny(y, e, N, R);
  if (emptyProduct(y, K, e.any())) return;
  const float beta = e.any() ? 1.f : 0.f;
  const int n32 = checkedInt(op, N, "N"), r32 = checkedInt(op, R, "R"), k32 = checkedInt(op, K, "K"),
            b32 = checkedInt(op, B, "batch");
  if (a.transX) {
    // Column-major: y_b (N × R, ld N) = op(w)(N × K) · op(x_b)(K × R); w is col-major K × N (T),
    // x_b is col-major R × K (T).
    gemm(true, true, n32, r32, k32, 1.f, w.data, k32, 0, x.data, r32, K * R, beta, y.data, n32, R * N, b32, dt, dt);
  } else {
    // Column-major: y_b (R × N, ld R) = op(x_b)(R × K) · op(w)(K × N); x_b is col-major K × R (T),
    // w is col-major K × N (N).
    gemm(true, false, r32, n32, k32, 1.f, x.data, k32, R * K, w.data, k32, 0, beta, y.data, r32, N * R, b32, dt, dt);
  }
}

void opLinear(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::LINEAR;
  if (in.size() < 2) shapeError(op, "expects x, w, optional b and optional residual");
  const TensorView &x = in[0], &w = in[1], &y = out[0];
  DType dt = y.dtype;
  expectFloat(op, x, dt, "x");
  expectFloat(op, w, dt, "w");
  if (a.transX || a.transY) return linearTransposed(a, in, y);
  if (w.shape.size() != 2 || x.shape.empty()) shapeError(op, "w must be [N, K], x [.., K]");
  int64_t N = w.shape[0], K = w.shape[1];
  if (x.shape.back() != K) shapeError(op, "x " + shapeStr(x.shape) + " does not end in K of w " + shapeStr(w.shape));
  Shape ys = x.shape;
  ys.back() = N;
  if (y.shape != ys) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(ys));
  // Rows from the output: with K = 0 the input has no elements to count them by.
  const int64_t R = N ? y.numel() / N : 0;
  const Epilogue e = epilogueOf(op, a, in, y, N, 0);
  fillEpilogueAny(y, e, N, 1);
  if (emptyProduct(y, K, e.any())) return;
  // yᵀ[N, R] = wᵀ·xᵀ in column-major terms: A = w (stored [N,K] = col-major K×N, transposed).
  gemm(true, false, checkedInt(op, N, "N"), checkedInt(op, R, "rows"), checkedInt(op, K, "K"), 1.f, w.data,
       int(K), 0, x.data, int(K), 0, e.any() ? 1.f : 0.f, y.data, int(N), 0, 1, dt, dt);
}

void opMatmul(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::MATMUL;
  if (in.size() < 2) shapeError(op, "expects a and b");
  const TensorView &A = in[0], &B = in[1], &Y = out[0];
  DType dt = Y.dtype;
  expectFloat(op, A, dt, "a");
  expectFloat(op, B, dt, "b");
  if (A.shape.size() < 2 || B.shape.size() < 2) shapeError(op, "a and b need at least 2 dims");
  int64_t M = A.shape[A.shape.size() - 2], K = A.shape.back();
  int64_t Kb = a.transB ? B.shape.back() : B.shape[B.shape.size() - 2];
  int64_t N = a.transB ? B.shape[B.shape.size() - 2] : B.shape.back();
  if (Kb != K) shapeError(op, "inner dims differ: a " + shapeStr(A.shape) + ", b " + shapeStr(B.shape) + (a.transB ? " (transB)" : ""));
  // Batch = product of the leading dims (as the CPU op): a rank-2 b (linear backward's
  // matmul(dy, W)) is batch 1 and broadcast over a's batch.
  int64_t Ba = 1, Bb = 1;
  for (size_t i = 0; i + 2 < A.shape.size(); i++) Ba *= A.shape[i];
  for (size_t i = 0; i + 2 < B.shape.size(); i++) Bb *= B.shape[i];
  int64_t batch = Ba > Bb ? Ba : Bb;
  if ((Ba != batch && Ba != 1) || (Bb != batch && Bb != 1))
    shapeError(op, "batch dims do not match: a " + shapeStr(A.shape) + ", b " + shapeStr(B.shape));
  if (Y.numel() != batch * M * N || Y.shape.back() != N)
    shapeError(op, "output " + shapeStr(Y.shape) + " is not [batch, M, N] = [" + std::to_string(batch) + ", " +
                       std::to_string(M) + ", " + std::to_string(N) + "]");
  if (Y.numel() == 0) return;
  if (K == 0) {  // empty inner dim: the product is zero
    CK(cudaMemsetAsync(Y.data, 0, size_t(Y.numel()) * dtypeSize(dt), ctx().stream));
    return;
  }
  // A b shared by the whole batch: a's rows are contiguous, so the batch folds into M (one GEMM).
  int64_t rows = M;
  if (Bb == 1 && Ba == batch) rows = M * batch, batch = 1;
  // Yᵀ = op(B)ᵀ·Aᵀ: column-major B is [N, K] (ld N), or with transB [K, N] stored as [N][K] (ld K).
  gemm(a.transB, false, checkedInt(op, N, "N"), checkedInt(op, rows, "M"), checkedInt(op, K, "K"), 1.f, B.data,
       a.transB ? int(K) : int(N), Bb == 1 ? 0 : K * N, A.data, int(K), Ba == 1 ? 0 : M * K, 0.f, Y.data, int(N),
       M * N, checkedInt(op, batch, "batch"), dt, dt);
}

void opConv2d(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::CONV2D;
  if (in.size() < 2) shapeError(op, "expects x, w, optional b and optional residual");
  const TensorView &x = in[0], &w = in[1], &y = out[0];
  DType dt = y.dtype;
  expectFloat(op, x, dt, "x");
  expectFloat(op, w, dt, "w");
  if (a.groups != 1) shapeError(op, "only groups = 1 is supported");
  if (x.shape.size() != 4 || w.shape.size() != 4) shapeError(op, "x must be [B, C, H, W] and w [O, C, kh, kw]");
  int64_t Bn = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  int64_t O = w.shape[0], kh = w.shape[2], kw = w.shape[3];
  if (w.shape[1] != C) shapeError(op, "w " + shapeStr(w.shape) + " does not take " + std::to_string(C) + " channels");
  int64_t s = a.stride, pad = a.pad;
  if (s < 1 || pad < 0) shapeError(op, "stride must be >= 1 and pad >= 0");
  // As the CPU op: C++ division rounds toward zero, so an input smaller than the kernel would
  // otherwise still give Ho = 1.
  if (kh < 1 || kw < 1 || H + 2 * pad < kh || W + 2 * pad < kw)
    shapeError(op, "input " + shapeStr(x.shape) + " with pad " + std::to_string(pad) + " is smaller than the kernel " +
                       shapeStr(w.shape));
  int64_t Ho = (H + 2 * pad - kh) / s + 1, Wo = (W + 2 * pad - kw) / s + 1;
  Shape ys = {Bn, O, Ho, Wo};
  if (Ho < 1 || Wo < 1 || y.shape != ys) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(ys));
  int64_t HWo = Ho * Wo;
  const Epilogue e = epilogueOf(op, a, in, y, O, Bn);
  if (HWo > 0) fillEpilogueAny(y, e, e.perImage ? Bn * O : O, HWo);
  if (emptyProduct(y, C, e.any())) return;
  float beta = e.any() ? 1.f : 0.f;
  int64_t CK_ = C * kh * kw;
  size_t es = dtypeSize(dt);
  if (kh == 1 && kw == 1 && s == 1 && pad == 0) {
    // yᵀ[b] (HW × O, col-major) = xᵀ[b] (HW × C) · wᵀ (C × O): a plain batched GEMM.
    gemm(false, false, checkedInt(op, HWo, "H·W"), checkedInt(op, O, "O"), checkedInt(op, C, "C"), 1.f, x.data,
         int(HWo), C * HWo, w.data, int(C), 0, beta, y.data, int(HWo), O * HWo, checkedInt(op, Bn, "batch"), dt, dt);
    return;
  }
  // im2col in slices small enough for a bounded scratch buffer (the VAE's 512×512 convs would
  // otherwise need gigabytes): whole images when they fit, else pixel ranges of one image.
  const int64_t budget = int64_t(256) << 20;
  int64_t perImage = CK_ * HWo * int64_t(es);
  // (at most 65535 images a chunk: they are grid.z of the im2col launch)
  int64_t nb = perImage > 0 ? std::max<int64_t>(1, std::min<int64_t>({Bn, budget / perImage, int64_t(65535)})) : 1;
  int64_t P = nb > 1 || perImage <= budget ? HWo : std::max<int64_t>(256, budget / (CK_ * int64_t(es)));
  if (P > HWo) P = HWo;
  Scratch col(size_t(CK_ * P * nb) * es);
  for (int64_t b0 = 0; b0 < Bn; b0 += nb) {
    int64_t nbb = std::min(nb, Bn - b0);
    for (int64_t p0 = 0; p0 < HWo; p0 += P) {
      int64_t Pc = std::min(P, HWo - p0);
      if (H * W >= (int64_t(1) << 31) || HWo >= (int64_t(1) << 31) || CK_ >= (int64_t(1) << 31))
        shapeError(op, "image too large for 32-bit pixel indexing");
      // ~4 pixels per thread: one pixel per thread made the launch block-scheduling bound.
      dim3 grid{unsigned(std::min<int64_t>(ceilDiv(Pc, 1024), 1024)), unsigned(std::min<int64_t>(CK_, 65535)),
                unsigned(nbb)};
      dispatchFloat(op, dt, [&](auto tag) {
        using T = decltype(tag);
        im2col<T><<<grid, 256, 0, ctx().stream>>>(x.as<T>() + b0 * C * H * W, col.as<T>(), int(C), int(H), int(W),
                                                   int(kh), int(kw), int(s), int(pad), int(Wo), int(p0), int(Pc),
                                                   int(CK_));
      });
      CK_LAUNCH("im2col");
      // yᵀ[b][p0:p0+Pc, :] = colᵀ (Pc × CK) · wᵀ (CK × O)
      char* yb = static_cast<char*>(y.data) + size_t((b0 * O * HWo + p0) * int64_t(es));
      gemm(false, false, checkedInt(op, Pc, "pixels"), checkedInt(op, O, "O"), checkedInt(op, CK_, "C·kh·kw"), 1.f,
           col.p, int(Pc), CK_ * Pc, w.data, int(CK_), 0, beta, yb, int(HWo), O * HWo, int(nbb), dt, dt);
    }
  }
}

// ---- backward (a vector-Jacobian product for lib/graph/autodiff.ts) ------------------------
// CONV2D_BACKWARD_INPUT: cuBLAS col = Wᵀ·dy (fp32 col) + a gather col2im (no atomics), in image or
// channel chunks under a scratch budget; 1x1/s1/p0 is one batched GEMM.

using Views = std::vector<TensorView>;

namespace {

// ---- CONV2D_BACKWARD_INPUT --------------------------------------------------------------------

// dx[b][c][y][x] = Σ_{ky,kx} col[b][(c·kh + ky)·kw + kx][oy·Wo + ox] over y = oy·s − pad + ky,
// x = ox·s − pad + kx (the adjoint of im2col, as a gather: no atomics, every dx element written
// once). grid.y = channel in the chunk, grid.z = image in the chunk, threads walk the pixels.
template <typename T>
__global__ void col2im(const float* __restrict__ col, T* __restrict__ dx, int H, int W, int kh, int kw, int s,
                       int pad, int Ho, int Wo, int64_t dxImage, int64_t colImage) {
  const int c = blockIdx.y, b = blockIdx.z;
  const int HW = H * W;
  const int64_t HWo = int64_t(Ho) * Wo;
  const float* cb = col + int64_t(b) * colImage + int64_t(c) * kh * kw * HWo;
  T* xb = dx + int64_t(b) * dxImage + int64_t(c) * HW;
  for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < HW; q += gridDim.x * blockDim.x) {
    const int y = q / W, xx = q - y * W;
    float acc = 0.f;
    for (int ky = 0; ky < kh; ky++) {
      const int ty = y + pad - ky;
      if (ty < 0) break;  // decreasing in ky
      if (ty % s) continue;
      const int oy = ty / s;
      if (oy >= Ho) continue;
      for (int kx = 0; kx < kw; kx++) {
        const int tx = xx + pad - kx;
        if (tx < 0) break;
        if (tx % s) continue;
        const int ox = tx / s;
        if (ox >= Wo) continue;
        acc += cb[(int64_t(ky) * kw + kx) * HWo + int64_t(oy) * Wo + ox];
      }
    }
    xb[q] = fromF<T>(acc);
  }
}

}  // namespace

void conv2dBackwardInputBudget(const OpAttrs& a, const Views& in, const Views& out, int64_t budget) {
  const OpCode op = OpCode::CONV2D_BACKWARD_INPUT;
  arity(op, in, 2, 2, out, 1);
  const TensorView &dy = in[0], &w = in[1], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, dy, dt, "dy");
  expectFloat(op, w, dt, "w");
  const Shape &ds = dy.shape, &ws = w.shape, &xs = dx.shape;
  if (ds.size() != 4 || ws.size() != 4 || xs.size() != 4 || ds[1] != ws[0] || xs[1] != ws[1] || ds[0] != xs[0])
    shapeError(op, "dy " + shapeStr(ds) + ", w " + shapeStr(ws) + ", dx " + shapeStr(xs));
  const int64_t B = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0], kh = ws[2], kw = ws[3];
  const int64_t Ho = ds[2], Wo = ds[3], s = a.stride, p = a.pad;
  if (s < 1 || p < 0) shapeError(op, "stride must be >= 1 and pad >= 0");
  if (kh < 1 || kw < 1) shapeError(op, "empty kernel " + shapeStr(ws));
  if ((H + 2 * p - kh) / s + 1 != Ho || (W + 2 * p - kw) / s + 1 != Wo)
    shapeError(op, "dy " + shapeStr(ds) + " is not the output size of dx " + shapeStr(xs));
  if (!dx.numel()) return;
  if (!dy.numel()) {  // O = 0 (or no output pixels): nothing flows back
    zeroFill(dx);
    return;
  }
  const int64_t HW = H * W, HWo = Ho * Wo, KK = kh * kw, CK_ = C * KK;
  if (HW >= (int64_t(1) << 31) || HWo >= (int64_t(1) << 31) || CK_ >= (int64_t(1) << 31) || B > 65535)
    shapeError(op, "too large for 32-bit pixel indexing");
  cudaStream_t st = ctx().stream;
  if (kh == 1 && kw == 1 && s == 1 && p == 0) {
    // dxᵀ[b] (HW × C, col-major) = dyᵀ[b] (HW × O) · W (O × C): W stored [O][C] is col-major C × O.
    gemm(false, true, toInt(op, HWo, "H·W"), toInt(op, C, "C"), toInt(op, O, "O"), 1.f, dy.data, int(HWo), O * HWo,
         w.data, int(C), 0, 0.f, dx.data, int(HWo), C * HWo, toInt(op, B, "batch"), dt, dt);
    return;
  }
  // col (fp32) in image chunks (all channels) when an image fits the budget, else in channel
  // chunks of one image: dx channels depend only on their own col rows, so chunks never overlap.
  const int64_t perImage = CK_ * HWo * 4;
  int64_t nb = 1, Cc = C;
  if (perImage <= budget) nb = std::max<int64_t>(1, std::min<int64_t>(B, budget / perImage));
  else Cc = std::max<int64_t>(1, std::min<int64_t>(C, budget / (KK * HWo * 4)));
  Scratch col(size_t(nb * Cc * KK * HWo) * 4);
  const size_t es = dtypeSize(dt);
  for (int64_t b0 = 0; b0 < B; b0 += nb) {
    const int64_t nbb = std::min(nb, B - b0);
    for (int64_t c0 = 0; c0 < C; c0 += Cc) {
      const int64_t cc = std::min(Cc, C - c0), rowsC = cc * KK;
      // colᵀ (HWo × rowsC, col-major) = dyᵀ (HWo × O) · W[:, c0·KK : (c0+cc)·KK] (O × rowsC)
      const char* dyb = static_cast<const char*>(dy.data) + size_t(b0 * O * HWo) * es;
      const char* wc = static_cast<const char*>(w.data) + size_t(c0 * KK) * es;
      gemm(false, true, int(HWo), toInt(op, rowsC, "C·kh·kw"), toInt(op, O, "O"), 1.f, dyb, int(HWo), O * HWo, wc,
           int(CK_), 0, 0.f, col.p, int(HWo), rowsC * HWo, int(nbb), dt, DType::F32);
      dim3 grid{unsigned(std::min<int64_t>(ceilDiv(HW, 256), 1024)), unsigned(cc), unsigned(nbb)};
      if (cc > 65535) shapeError(op, "too many channels for one launch");
      dispatchFloat(op, dt, [&](auto tag) {
        using T = decltype(tag);
        col2im<T><<<grid, 256, 0, st>>>(col.as<float>(), dx.as<T>() + b0 * C * HW + c0 * HW, int(H), int(W), int(kh),
                                        int(kw), int(s), int(p), int(Ho), int(Wo), C * HW, rowsC * HWo);
      });
      CK_LAUNCH("col2im");
    }
  }
}

void opConv2dBackwardInput(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  conv2dBackwardInputBudget(a, in, out, int64_t(256) << 20);
}

}  // namespace cuda
}  // namespace idforge
