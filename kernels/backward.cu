// Backward ops of learning (lib/graph/autodiff.ts emits them; the CPU reference is
// native/cpu/backward.cc): gradients w.r.t. activations only, statistics recomputed from the
// forward inputs. Every kernel computes in fp32 whatever the storage type (long sums in double
// where they feed nothing but an output: REDUCE_SUM, INJECT_BACKWARD). Scratch comes from the
// backend's pool (Scratch), never cudaMalloc, so all of it is capture-safe; sizes are bounded.
//   elementwise   GELU/QUICK_GELU/SILU/GEGLU backward: one grid-stride kernel each
//   UPSAMPLE2X_BACKWARD  2x2 sums, one thread per output
//   REDUCE_SUM    dims collapsed into kept/reduced runs; thread per output (short sums) or a
//                 block per output (long sums), double accumulation
//   GROUP_NORM_BACKWARD  three passes split over many blocks per group like the forward op:
//                 Welford stats, Σg / Σg·x̂ partials, dx
//   LAYER_NORM_BACKWARD  one warp per row
//   CONV2D_BACKWARD_INPUT  cuBLAS col = Wᵀ·dy (fp32 col) + a gather col2im (no atomics), in
//                 image or channel chunks under a scratch budget; 1x1/s1/p0 is one batched GEMM
//   ATTENTION_BACKWARD  per (batch, head chunk, query chunk): cuBLAS S = scale·QKᵀ and
//                 dP = dO·Vᵀ into fp32, a row kernel (softmax, dS = P⊙(dP − rowsum(P⊙dP))),
//                 cuBLAS dQ = dS·K, dK += dSᵀ·Q, dV += Pᵀ·dO
//   INJECT_BACKWARD  thread per (vector, column), deterministic sum over the rows
#include <cstring>

#include "backward.h"
#include "reduce.cuh"
#include "welford.cuh"

namespace idforge {
namespace cuda {

namespace {

using Views = std::vector<TensorView>;

void arity(OpCode op, const Views& in, size_t lo, size_t hi, const Views& out, size_t nOut) {
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

// ---- device math ------------------------------------------------------------------------------

__device__ __forceinline__ float geluF(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
// d/dx of x·Φ(x)
__device__ __forceinline__ float geluGradF(float x) {
  float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
  float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}
// d/dx of x·σ(αx)
__device__ __forceinline__ float siluGradF(float x, float alpha) {
  float s = 1.f / (1.f + expf(-alpha * x));
  return s + alpha * x * s * (1.f - s);
}

// ---- elementwise ------------------------------------------------------------------------------

enum BwdKind { KB_GELU, KB_QGELU, KB_SILU };

template <typename T, int K>
__global__ void unaryBackward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float v = toF(x[i]);
    const float g = K == KB_GELU ? geluGradF(v) : siluGradF(v, K == KB_QGELU ? 1.702f : 1.f);
    dx[i] = fromF<T>(toF(dy[i]) * g);
  }
}

// x[r, 0:F] = h, x[r, F:2F] = gate;  y = h·gelu(gate)
template <typename T>
__global__ void gegluBackward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                              int64_t F) {
  const int64_t n = rows * F, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / F, c = i - r * F;
    const int64_t base = r * 2 * F + c;
    const float h = toF(x[base]), g = toF(x[base + F]), d = toF(dy[i]);
    dx[base] = fromF<T>(d * geluF(g));
    dx[base + F] = fromF<T>(d * h * geluGradF(g));
  }
}

// dy[p, 2H, 2W] → dx[p, H, W]
template <typename T>
__global__ void upsample2xBackward(const T* __restrict__ dy, T* __restrict__ dx, int64_t n, int64_t H, int64_t W) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n; o += stride) {
    const int64_t xx = o % W, t = o / W, y = t % H, p = t / H;
    const T* r0 = dy + (p * 2 * H + 2 * y) * 2 * W + 2 * xx;
    const T* r1 = r0 + 2 * W;
    dx[o] = fromF<T>((toF(r0[0]) + toF(r0[1])) + (toF(r1[0]) + toF(r1[1])));
  }
}

// ---- REDUCE_SUM -------------------------------------------------------------------------------

constexpr int RED_MAXD = 8;
struct RedDims {
  int nk = 0, nr = 0;
  int64_t kExt[RED_MAXD], kStr[RED_MAXD], rExt[RED_MAXD], rStr[RED_MAXD];
};

// Element offset in x of output element o (row-major over the kept runs) / of reduction index n.
__device__ __forceinline__ int64_t decompose(int64_t i, int nd, const int64_t* ext, const int64_t* str) {
  int64_t off = 0;
  for (int k = nd - 1; k >= 0; k--) {
    const int64_t e = ext[k];
    const int64_t q = i / e;
    off += (i - q * e) * str[k];
    i = q;
  }
  return off;
}

template <typename T>
__global__ void reduceSerial(const T* __restrict__ x, T* __restrict__ y, RedDims d, int64_t nOut, int64_t nRed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < nOut; o += stride) {
    const int64_t base = decompose(o, d.nk, d.kExt, d.kStr);
    double s = 0;
    for (int64_t n = 0; n < nRed; n++) s += toF(x[base + decompose(n, d.nr, d.rExt, d.rStr)]);
    y[o] = fromF<T>(float(s));
  }
}

template <typename T>
__global__ void reduceBlock(const T* __restrict__ x, T* __restrict__ y, RedDims d, int64_t nOut, int64_t nRed) {
  __shared__ double red[32];
  for (int64_t o = blockIdx.x; o < nOut; o += gridDim.x) {  // uniform across the block
    const int64_t base = decompose(o, d.nk, d.kExt, d.kStr);
    double s = 0;
    for (int64_t n = threadIdx.x; n < nRed; n += blockDim.x) s += toF(x[base + decompose(n, d.nr, d.rExt, d.rStr)]);
    s = warpSum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
      const int nw = blockDim.x >> 5;
      double v = threadIdx.x < nw ? red[threadIdx.x] : 0.0;
      v = warpSum(v);
      if (threadIdx.x == 0) y[o] = fromF<T>(float(v));
    }
    __syncthreads();  // red is rewritten by the next output
  }
}

// ---- INJECT_BACKWARD --------------------------------------------------------------------------

template <typename T>
__global__ void injectBackward(const T* __restrict__ dy, const int32_t* __restrict__ slots, T* __restrict__ dv,
                               int64_t rows, int64_t D, int64_t M, int* err) {
  const int64_t n = M * D, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t m = i / D, c = i - m * D;
    double s = 0;
    for (int64_t r = 0; r < rows; r++)
      if (int64_t(slots[r]) == m) s += toF(dy[r * D + c]);
    dv[i] = fromF<T>(float(s));
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    bool bad = false;
    for (int64_t r = 0; r < rows; r++) bad |= int64_t(slots[r]) >= M;
    if (bad) atomicOr(err, 2);
  }
}

// ---- norms ------------------------------------------------------------------------------------

// Block-wide sum of two floats; every thread gets the result.
__device__ float2 blockSum2(float a, float b) {
  __shared__ float2 red[32];
  __shared__ float2 total;
  a = warpSum(a);
  b = warpSum(b);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = make_float2(a, b);
  __syncthreads();
  if (threadIdx.x < 32) {
    const int nw = blockDim.x >> 5;
    float2 v = threadIdx.x < nw ? red[threadIdx.x] : make_float2(0.f, 0.f);
    v.x = warpSum(v.x);
    v.y = warpSum(v.y);
    if (threadIdx.x == 0) total = v;
  }
  __syncthreads();
  return total;
}

constexpr int GN_THREADS = 256;


struct GnbArgs {
  int64_t groupSize, chunk;
  unsigned S;  // spatial size (groupSize < 2^32, so S fits)
  int Cg, G;
  float eps;
  int silu;
};

// Mean and 1/std of the block's group from the per-split Welford partials (all threads call).
__device__ __forceinline__ void gnbGroupStats(const Welford* part, int group, int splits, float eps, float& mean,
                                              float& rstd) {
  Welford w{0.f, 0.f, 0.f};
  for (int i = threadIdx.x; i < splits; i += blockDim.x) w = wMerge(w, part[int64_t(group) * splits + i]);
  w = wBlockMerge(w);
  mean = w.mean;
  rstd = rsqrtf(w.m2 / w.n + eps);
}

// g = dy·w (·silu'(pre)), x̂ = (x − μ)·r for element i of a group starting at channel c0.
template <typename T>
__device__ __forceinline__ void gnbElem(const T* xg, const T* dg, const T* __restrict__ gamma,
                                        const T* __restrict__ beta, int64_t i, int c0, unsigned S, float mean,
                                        float rstd, int silu, float& g, float& xh) {
  const int c = c0 + int(unsigned(i) / S);
  const float wc = toF(gamma[c]);
  xh = (toF(xg[i]) - mean) * rstd;
  g = toF(dg[i]);
  if (silu) g *= siluGradF(xh * wc + toF(beta[c]), 1.f);
  g *= wc;
}

template <typename T>
__global__ void __launch_bounds__(GN_THREADS) gnbSums(const T* __restrict__ dy, const T* __restrict__ x,
                                                     const Welford* __restrict__ part, const T* __restrict__ gamma,
                                                     const T* __restrict__ beta, float2* __restrict__ sums,
                                                     GnbArgs a) {
  const int group = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  float mean, rstd;
  gnbGroupStats(part, group, splits, a.eps, mean, rstd);
  const int c0 = (group % a.G) * a.Cg;
  const T* xg = x + int64_t(group) * a.groupSize;
  const T* dg = dy + int64_t(group) * a.groupSize;
  const int64_t lo = int64_t(split) * a.chunk, hi = min(a.groupSize, lo + a.chunk);
  float sg = 0.f, sgx = 0.f;
  for (int64_t i = lo + threadIdx.x; i < hi; i += GN_THREADS) {
    float g, xh;
    gnbElem(xg, dg, gamma, beta, i, c0, a.S, mean, rstd, a.silu, g, xh);
    sg += g;
    sgx += g * xh;
  }
  float2 t = blockSum2(sg, sgx);
  if (threadIdx.x == 0) sums[int64_t(group) * splits + split] = t;
}

template <typename T>
__global__ void __launch_bounds__(GN_THREADS) gnbApply(const T* __restrict__ dy, const T* __restrict__ x,
                                                      const Welford* __restrict__ part, const T* __restrict__ gamma,
                                                      const T* __restrict__ beta,
                                                      const float2* __restrict__ sums, T* __restrict__ dx,
                                                      GnbArgs a) {
  const int group = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  float mean, rstd;
  gnbGroupStats(part, group, splits, a.eps, mean, rstd);
  float sg = 0.f, sgx = 0.f;
  for (int i = threadIdx.x; i < splits; i += GN_THREADS) {
    float2 v = sums[int64_t(group) * splits + i];
    sg += v.x;
    sgx += v.y;
  }
  float2 t = blockSum2(sg, sgx);
  const float inv = 1.f / float(a.groupSize);
  const float mg = t.x * inv, mgx = t.y * inv;
  const int c0 = (group % a.G) * a.Cg;
  const T* xg = x + int64_t(group) * a.groupSize;
  const T* dg = dy + int64_t(group) * a.groupSize;
  T* og = dx + int64_t(group) * a.groupSize;
  const int64_t lo = int64_t(split) * a.chunk, hi = min(a.groupSize, lo + a.chunk);
  for (int64_t i = lo + threadIdx.x; i < hi; i += GN_THREADS) {
    float g, xh;
    gnbElem(xg, dg, gamma, beta, i, c0, a.S, mean, rstd, a.silu, g, xh);
    og[i] = fromF<T>(rstd * (g - mg - xh * mgx));
  }
}

// One warp per row (8 rows per 256-thread block), like the forward op.
template <typename T>
__global__ void layerNormBackward(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ gamma,
                                  T* __restrict__ dx, int64_t rows, int C, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* xr = x + row * C;
  const T* dr = dy + row * C;
  T* o = dx + row * C;
  float s = 0.f;
  for (int i = lane; i < C; i += 32) s += toF(xr[i]);
  const float mean = warpSum(s) / float(C);
  float v = 0.f;
  for (int i = lane; i < C; i += 32) {
    float d = toF(xr[i]) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(warpSum(v) / float(C) + eps);
  float sg = 0.f, sgx = 0.f;
  for (int i = lane; i < C; i += 32) {
    float g = toF(dr[i]) * toF(gamma[i]);
    float xh = (toF(xr[i]) - mean) * rstd;
    sg += g;
    sgx += g * xh;
  }
  const float mg = warpSum(sg) / float(C), mgx = warpSum(sgx) / float(C);
  for (int i = lane; i < C; i += 32) {
    float g = toF(dr[i]) * toF(gamma[i]);
    float xh = (toF(xr[i]) - mean) * rstd;
    o[i] = fromF<T>(rstd * (g - mg - xh * mgx));
  }
}

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

// ---- ATTENTION_BACKWARD -----------------------------------------------------------------------

// One block per (query row, head) of a chunk. S (already scaled) and dP are fp32 [head][rows][Nk];
// dpIn (optional, T) is the incoming gradient on the probabilities, head stride dpHead, row
// stride Nk. Writes P and dS·scale (T) where dS = P ⊙ (dP + dp − Σ P⊙(dP + dp)). For T = float
// P aliases S and dS aliases dP: each element is read and written by the same thread, after the
// reductions (no __restrict__ on those).
template <typename T>
__global__ void attnBackwardRows(const float* S, const float* dP, const T* __restrict__ dpIn, T* P, T* dS, int rows,
                                 int Nk, int64_t dpHead, int qOff, int causal, float scale) {
  __shared__ float red[33];
  const int rr = blockIdx.x, head = blockIdx.y;
  const int64_t off = (int64_t(head) * rows + rr) * Nk;
  const float* s = S + off;
  const float* g = dP + off;
  T* po = P + off;
  T* so = dS + off;
  const T* dp = dpIn ? dpIn + int64_t(head) * dpHead + int64_t(rr) * Nk : nullptr;
  const int lim = causal ? min(Nk, qOff + rr + 1) : Nk;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) mx = fmaxf(mx, s[i]);
  mx = blockReduce(mx, true, red);
  float sum = 0.f;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) sum += expf(s[i] - mx);
  sum = blockReduce(sum, false, red);
  const float inv = 1.f / sum;
  float dot = 0.f;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) {
    float gi = g[i] + (dp ? toF(dp[i]) : 0.f);
    dot += expf(s[i] - mx) * inv * gi;
  }
  dot = blockReduce(dot, false, red);
  for (int i = threadIdx.x; i < Nk; i += blockDim.x) {
    const float p = i < lim ? expf(s[i] - mx) * inv : 0.f;
    const float gi = g[i] + (dp ? toF(dp[i]) : 0.f);
    po[i] = fromF<T>(p);
    so[i] = fromF<T>(p * (gi - dot) * scale);
  }
}

// dst[r·ldDst + c] = src[r·cols + c]
template <typename T>
__global__ void storeRows(const float* __restrict__ src, T* __restrict__ dst, int64_t rows, int64_t cols,
                          int64_t ldDst) {
  const int64_t n = rows * cols, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[r * ldDst + c] = fromF<T>(src[i]);
  }
}

// ---- host side --------------------------------------------------------------------------------

void elementwise(OpCode op, const Views& in, const Views& out) {
  arity(op, in, 2, 2, out, 1);
  const TensorView &x = in[0], &dy = in[1], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, x, dt, "x");
  expectFloat(op, dy, dt, "dy");
  if (dy.shape != x.shape || dx.shape != x.shape)
    shapeError(op, "x " + shapeStr(x.shape) + ", dy " + shapeStr(dy.shape) + " and dx " + shapeStr(dx.shape) +
                       " must match");
  const int64_t n = x.numel();
  if (!n) return;
  cudaStream_t st = ctx().stream;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    const unsigned grid = gridFor(n, 256);
    if (op == OpCode::GELU_BACKWARD)
      unaryBackward<T, KB_GELU><<<grid, 256, 0, st>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), n);
    else if (op == OpCode::QUICK_GELU_BACKWARD)
      unaryBackward<T, KB_QGELU><<<grid, 256, 0, st>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), n);
    else
      unaryBackward<T, KB_SILU><<<grid, 256, 0, st>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), n);
  });
  CK_LAUNCH("unaryBackward");
}

void geglu(const Views& in, const Views& out) {
  const OpCode op = OpCode::GEGLU_BACKWARD;
  arity(op, in, 2, 2, out, 1);
  const TensorView &x = in[0], &dy = in[1], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, x, dt, "x");
  expectFloat(op, dy, dt, "dy");
  if (x.shape.empty() || x.shape.back() % 2) shapeError(op, "x " + shapeStr(x.shape) + " must be [.., 2F]");
  const int64_t F = x.shape.back() / 2;
  Shape ys = x.shape;
  ys.back() = F;
  if (dy.shape != ys) shapeError(op, "dy " + shapeStr(dy.shape) + ", expected " + shapeStr(ys));
  if (dx.shape != x.shape) shapeError(op, "dx " + shapeStr(dx.shape) + ", expected " + shapeStr(x.shape));
  if (!F || !x.numel()) return;
  const int64_t rows = x.numel() / (2 * F);
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    gegluBackward<T><<<gridFor(rows * F, 256), 256, 0, ctx().stream>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), rows, F);
  });
  CK_LAUNCH("gegluBackward");
}

void upsample(const Views& in, const Views& out) {
  const OpCode op = OpCode::UPSAMPLE2X_BACKWARD;
  arity(op, in, 1, 1, out, 1);
  const TensorView &dy = in[0], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, dy, dt, "dy");
  const Shape& s = dy.shape;
  if (s.size() != 4 || s[2] % 2 || s[3] % 2) shapeError(op, "dy " + shapeStr(s) + " must be [B, C, 2H, 2W]");
  const int64_t H = s[2] / 2, W = s[3] / 2;
  Shape xs = {s[0], s[1], H, W};
  if (dx.shape != xs) shapeError(op, "dx " + shapeStr(dx.shape) + ", expected " + shapeStr(xs));
  const int64_t n = dx.numel();
  if (!n) return;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    upsample2xBackward<T><<<gridFor(n, 256), 256, 0, ctx().stream>>>(dy.as<T>(), dx.as<T>(), n, H, W);
  });
  CK_LAUNCH("upsample2xBackward");
}

void reduceSum(const Views& in, const Views& out) {
  const OpCode op = OpCode::REDUCE_SUM;
  arity(op, in, 1, 1, out, 1);
  const TensorView &x = in[0], &y = out[0];
  DType dt = y.dtype;
  expectFloat(op, x, dt, "x");
  const Shape& xs = x.shape;
  const Shape& os0 = y.shape;
  if (os0.size() > xs.size()) shapeError(op, "out " + shapeStr(os0) + " has more dims than x " + shapeStr(xs));
  const size_t r = xs.size();
  Shape os(r - os0.size(), 1);
  os.insert(os.end(), os0.begin(), os0.end());
  for (size_t i = 0; i < r; i++)
    if (os[i] != xs[i] && os[i] != 1) shapeError(op, "x " + shapeStr(xs) + " does not reduce to " + shapeStr(os0));
  const int64_t nOut = y.numel();
  if (!nOut) return;
  // Collapse: drop extent-1 dims, merge neighbouring dims of the same kind (x is contiguous, so
  // neighbours once the 1s are gone are always mergeable).
  std::vector<int64_t> xstr(r, 1);
  for (size_t i = r; i-- > 1;) xstr[i - 1] = xstr[i] * xs[i];
  struct Run {
    bool kept;
    int64_t ext, str;
  };
  std::vector<Run> runs;
  for (size_t i = 0; i < r; i++) {
    if (xs[i] == 1) continue;
    bool kept = os[i] == xs[i];
    if (!runs.empty() && runs.back().kept == kept) {
      runs.back().ext *= xs[i];
      runs.back().str = xstr[i];
    } else {
      runs.push_back({kept, xs[i], xstr[i]});
    }
  }
  RedDims d;
  int64_t nRed = 1;
  for (const Run& u : runs) {
    if (u.kept) {
      if (d.nk == RED_MAXD) shapeError(op, "too many alternating kept/reduced dims");
      d.kExt[d.nk] = u.ext;
      d.kStr[d.nk++] = u.str;
    } else {
      if (d.nr == RED_MAXD) shapeError(op, "too many alternating kept/reduced dims");
      d.rExt[d.nr] = u.ext;
      d.rStr[d.nr++] = u.str;
      nRed *= u.ext;
    }
  }
  cudaStream_t st = ctx().stream;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    if (nRed <= 64) {
      reduceSerial<T><<<gridFor(nOut, 256), 256, 0, st>>>(x.as<T>(), y.as<T>(), d, nOut, nRed);
    } else {
      const int threads = nRed >= 4096 ? 256 : 128;
      const unsigned grid = unsigned(std::min<int64_t>(nOut, int64_t(1) << 20));
      reduceBlock<T><<<grid, threads, 0, st>>>(x.as<T>(), y.as<T>(), d, nOut, nRed);
    }
  });
  CK_LAUNCH("reduceSum");
}

void groupNorm(const OpAttrs& a, const Views& in, const Views& out) {
  const OpCode op = OpCode::GROUP_NORM_BACKWARD;
  arity(op, in, 4, 4, out, 1);
  const TensorView &dy = in[0], &x = in[1], &w = in[2], &b = in[3], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, dy, dt, "dy");
  expectFloat(op, x, dt, "x");
  expectFloat(op, w, dt, "w");
  expectFloat(op, b, dt, "b");
  if (x.shape.size() < 2) shapeError(op, "x " + shapeStr(x.shape) + " must be [B, C, ..]");
  const int64_t B = x.shape[0], C = x.shape[1], G = a.groups;
  if (G <= 0 || C % G) shapeError(op, "groups " + std::to_string(G) + " must divide channels " + std::to_string(C));
  if (dy.shape != x.shape) shapeError(op, "dy " + shapeStr(dy.shape) + ", expected " + shapeStr(x.shape));
  if (w.numel() != C || b.numel() != C) shapeError(op, "w and b must have C elements");
  if (dx.shape != x.shape) shapeError(op, "dx " + shapeStr(dx.shape) + ", expected " + shapeStr(x.shape));
  if (!x.numel()) return;
  const int64_t S = x.numel() / (B * C), Cg = C / G, groupSize = Cg * S;
  if (groupSize >= (int64_t(1) << 32)) shapeError(op, "a group of 2^32 or more elements is not supported");
  if (B * G > 0x7fffffffLL) shapeError(op, "too many groups");
  const int64_t splits = std::min<int64_t>(1024, std::max<int64_t>(1, ceilDiv(groupSize, 8192)));
  GnbArgs ga;
  ga.groupSize = groupSize;
  ga.chunk = ceilDiv(groupSize, splits);
  ga.S = unsigned(S);
  ga.Cg = int(Cg);
  ga.G = int(G);
  ga.eps = float(a.eps);
  ga.silu = a.silu ? 1 : 0;
  Scratch part(size_t(B * G * splits) * sizeof(Welford));
  Scratch sums(size_t(B * G * splits) * sizeof(float2));
  dim3 grid{unsigned(B * G), unsigned(splits)};
  cudaStream_t st = ctx().stream;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    groupStats<T, GN_THREADS><<<grid, GN_THREADS, 0, st>>>(x.as<T>(), part.as<Welford>(), groupSize, ga.chunk);
    CK_LAUNCH("groupStats");
    gnbSums<T><<<grid, GN_THREADS, 0, st>>>(dy.as<T>(), x.as<T>(), part.as<Welford>(), w.as<T>(), b.as<T>(),
                                            sums.as<float2>(), ga);
    CK_LAUNCH("gnbSums");
    gnbApply<T><<<grid, GN_THREADS, 0, st>>>(dy.as<T>(), x.as<T>(), part.as<Welford>(), w.as<T>(), b.as<T>(),
                                             sums.as<float2>(), dx.as<T>(), ga);
    CK_LAUNCH("gnbApply");
  });
}

void layerNorm(const OpAttrs& a, const Views& in, const Views& out) {
  const OpCode op = OpCode::LAYER_NORM_BACKWARD;
  arity(op, in, 3, 3, out, 1);
  const TensorView &dy = in[0], &x = in[1], &w = in[2], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, dy, dt, "dy");
  expectFloat(op, x, dt, "x");
  expectFloat(op, w, dt, "w");
  if (x.shape.empty()) shapeError(op, "x must be [.., C]");
  const int64_t C = x.shape.back();
  if (dy.shape != x.shape) shapeError(op, "dy " + shapeStr(dy.shape) + ", expected " + shapeStr(x.shape));
  if (w.numel() != C) shapeError(op, "w must have C elements");
  if (dx.shape != x.shape) shapeError(op, "dx " + shapeStr(dx.shape) + ", expected " + shapeStr(x.shape));
  if (!x.numel()) return;
  toInt(op, C, "C");
  const int64_t rows = x.numel() / C;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    layerNormBackward<T><<<unsigned(ceilDiv(rows, 8)), 256, 0, ctx().stream>>>(dy.as<T>(), x.as<T>(), w.as<T>(),
                                                                              dx.as<T>(), rows, int(C),
                                                                              float(a.eps));
  });
  CK_LAUNCH("layerNormBackward");
}

void injectB(const Views& in, const Views& out) {
  const OpCode op = OpCode::INJECT_BACKWARD;
  arity(op, in, 2, 2, out, 1);
  const TensorView &dy = in[0], &sl = in[1], &dv = out[0];
  DType dt = dv.dtype;
  expectFloat(op, dy, dt, "dy");
  if (sl.dtype != DType::I32) shapeError(op, "slots must be int32");
  const Shape& ys = dy.shape;
  if (ys.size() != 3 || sl.shape != Shape{ys[0], ys[1]} || dv.shape.size() != 2 || dv.shape[1] != ys[2])
    shapeError(op, "dy " + shapeStr(ys) + ", slots " + shapeStr(sl.shape) + ", dvectors " + shapeStr(dv.shape));
  const int64_t rows = ys[0] * ys[1], D = ys[2], M = dv.shape[0];
  if (!rows) {
    zeroFill(dv);
    return;
  }
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    injectBackward<T><<<gridFor(M * D, 128), 128, 0, ctx().stream>>>(dy.as<T>(), sl.as<int32_t>(), dv.as<T>(), rows,
                                                                      D, M, ctx().errFlagDev);
  });
  CK_LAUNCH("injectBackward");
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

void attentionBackwardBudget(const OpAttrs& a, const Views& in, const Views& out, int64_t budget) {
  const OpCode op = OpCode::ATTENTION_BACKWARD;
  arity(op, in, 4, 5, out, 3);
  const TensorView &q = in[0], &k = in[1], &v = in[2], &dO = in[3];
  const TensorView &dq = out[0], &dk = out[1], &dv = out[2];
  DType dt = dq.dtype;
  expectFloat(op, q, dt, "q");
  expectFloat(op, k, dt, "k");
  expectFloat(op, v, dt, "v");
  expectFloat(op, dO, dt, "do");
  expectFloat(op, dk, dt, "dk");
  expectFloat(op, dv, dt, "dv");
  const Shape &qs = q.shape, &ks = k.shape, &vs = v.shape;
  if (qs.size() != 3 || ks.size() != 3 || vs.size() != 3 || qs[0] != ks[0] || ks[0] != vs[0] || ks[1] != vs[1] ||
      qs[2] != ks[2])
    shapeError(op, "q " + shapeStr(qs) + ", k " + shapeStr(ks) + ", v " + shapeStr(vs));
  const int64_t B = qs[0], Nq = qs[1], Nk = ks[1], H = a.heads;
  if (H <= 0 || qs[2] % H || vs[2] % H) shapeError(op, "widths do not split into heads");
  const int64_t d = qs[2] / H, dvw = vs[2] / H, Wq = qs[2], Wv = vs[2];
  if (dO.shape != Shape{B, Nq, Wv}) shapeError(op, "do " + shapeStr(dO.shape) + ", expected [B, Nq, H·dv]");
  const bool hasDp = in.size() > 4 && in[4].data != nullptr;
  if (hasDp) {
    expectFloat(op, in[4], dt, "dp");
    if (in[4].shape != Shape{B * H, Nq, Nk}) shapeError(op, "dp " + shapeStr(in[4].shape) + ", expected [B·H, Nq, Nk]");
  }
  if (dq.shape != qs || dk.shape != ks || dv.shape != vs)
    shapeError(op, "dq " + shapeStr(dq.shape) + ", dk " + shapeStr(dk.shape) + ", dv " + shapeStr(dv.shape) +
                       " must match q, k, v");
  if (!B) return;
  if (!Nq) {  // no queries: no gradient reaches k or v
    zeroFill(dk);
    zeroFill(dv);
    return;
  }
  if (!Nk) {
    zeroFill(dq);
    return;
  }
  if (!d || !dvw) shapeError(op, "zero-width heads are not supported");
  toInt(op, Nq, "Nq");
  toInt(op, Nk, "Nk");
  toInt(op, B * H, "B·H");
  toInt(op, Wq, "H·d");
  toInt(op, Wv, "H·dv");
  const bool f16 = dt == DType::F16;
  const size_t es = dtypeSize(dt);
  // fp32 S and dP; fp16 also keeps P and dS·scale as fp16 GEMM operands.
  const int64_t perElem = 8 + (f16 ? 2 * int64_t(es) : 0);
  const int64_t perHead = Nq * Nk * perElem;
  int64_t Hc = 1, Qc = Nq;
  if (perHead <= budget) Hc = std::max<int64_t>(1, std::min<int64_t>(H, budget / perHead));
  else Qc = std::max<int64_t>(1, std::min<int64_t>(Nq, budget / (Nk * perElem)));
  const bool qChunked = Qc < Nq;  // then Hc = 1
  // fp16 with query chunks: dK/dV accumulate over the chunks in fp32, stored once at the end.
  const bool acc32 = qChunked && f16;
  const size_t blk = size_t(Hc * Qc * Nk);
  Scratch S(blk * 4), dP(blk * 4);
  Scratch Ph(f16 ? blk * es : 0), dSh(f16 ? blk * es : 0);
  Scratch accK(acc32 ? size_t(Nk * d) * 4 : 0), accV(acc32 ? size_t(Nk * dvw) * 4 : 0);
  void* Pt = f16 ? Ph.p : S.p;
  void* dSt = f16 ? dSh.p : dP.p;
  const char* qp = static_cast<const char*>(q.data);
  const char* kp = static_cast<const char*>(k.data);
  const char* vp = static_cast<const char*>(v.data);
  const char* op_ = static_cast<const char*>(dO.data);
  const char* dpp = hasDp ? static_cast<const char*>(in[4].data) : nullptr;
  char* dqp = static_cast<char*>(dq.data);
  char* dkp = static_cast<char*>(dk.data);
  char* dvp = static_cast<char*>(dv.data);
  cudaStream_t st = ctx().stream;
  const int iNk = int(Nk), iD = int(d), iDv = int(dvw), iWq = int(Wq), iWv = int(Wv);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h0 = 0; h0 < H; h0 += Hc) {
      const int64_t hc = std::min(Hc, H - h0);
      const char* kb = kp + size_t(b * Nk * Wq + h0 * d) * es;    // K_h rows, head h0
      const char* vb = vp + size_t(b * Nk * Wv + h0 * dvw) * es;  // V_h rows
      char* dkb = dkp + size_t(b * Nk * Wq + h0 * d) * es;
      char* dvb = dvp + size_t(b * Nk * Wv + h0 * dvw) * es;
      for (int64_t q0 = 0; q0 < Nq; q0 += Qc) {
        const int64_t qc = std::min(Qc, Nq - q0);
        const long long cStride = qc * Nk;  // one head's block in S / dP / P / dS
        const char* qb = qp + size_t((b * Nq + q0) * Wq + h0 * d) * es;
        const char* ob = op_ + size_t((b * Nq + q0) * Wv + h0 * dvw) * es;
        char* dqb = dqp + size_t((b * Nq + q0) * Wq + h0 * d) * es;
        // S (qc × Nk row-major = Nk × qc col-major) = scale · K_h Q_hᵀ, heads strided by d in a row.
        gemm(true, false, iNk, int(qc), iD, float(a.scale), kb, iWq, d, qb, iWq, d, 0.f, S.p, iNk, cStride, int(hc),
             dt, DType::F32);
        // dP = dO_h V_hᵀ
        gemm(true, false, iNk, int(qc), iDv, 1.f, vb, iWv, dvw, ob, iWv, dvw, 0.f, dP.p, iNk, cStride, int(hc), dt,
             DType::F32);
        dim3 grid{unsigned(qc), unsigned(hc)};
        const int threads = Nk >= 1024 ? 256 : 128;
        dispatchFloat(op, dt, [&](auto tag) {
          using T = decltype(tag);
          const T* dpb = dpp ? reinterpret_cast<const T*>(dpp + size_t(((b * H + h0) * Nq + q0) * Nk) * es) : nullptr;
          attnBackwardRows<T><<<grid, threads, 0, st>>>(S.as<float>(), dP.as<float>(), dpb, static_cast<T*>(Pt),
                                                        static_cast<T*>(dSt), int(qc), iNk, Nq * Nk, int(q0),
                                                        a.causal ? 1 : 0, float(a.scale));
        });
        CK_LAUNCH("attnBackwardRows");
        // dQ_h (qc × d) = (scale·dS) K_h: col-major dQᵀ (d × qc) = K_hᵀ (d × Nk) · dSᵀ (Nk × qc).
        gemm(false, false, iD, int(qc), iNk, 1.f, kb, iWq, d, dSt, iNk, cStride, 0.f, dqb, iWq, d, int(hc), dt, dt);
        // dK_h (Nk × d) += (scale·dS)ᵀ Q_h: col-major dKᵀ (d × Nk) = Q_hᵀ (d × qc) · dS (qc × Nk).
        // dV_h (Nk × dv) += Pᵀ dO_h.
        const float beta = q0 == 0 ? 0.f : 1.f;
        if (acc32) {
          gemm(false, true, iD, iNk, int(qc), 1.f, qb, iWq, d, dSt, iNk, cStride, beta, accK.p, iD, Nk * d, int(hc),
               dt, DType::F32);
          gemm(false, true, iDv, iNk, int(qc), 1.f, ob, iWv, dvw, Pt, iNk, cStride, beta, accV.p, iDv, Nk * dvw,
               int(hc), dt, DType::F32);
        } else {
          gemm(false, true, iD, iNk, int(qc), 1.f, qb, iWq, d, dSt, iNk, cStride, beta, dkb, iWq, d, int(hc), dt, dt);
          gemm(false, true, iDv, iNk, int(qc), 1.f, ob, iWv, dvw, Pt, iNk, cStride, beta, dvb, iWv, dvw, int(hc), dt,
               dt);
        }
      }
      if (acc32) {  // hc = 1 here
        dispatchFloat(op, dt, [&](auto tag) {
          using T = decltype(tag);
          storeRows<T><<<gridFor(Nk * d, 256), 256, 0, st>>>(accK.as<float>(), reinterpret_cast<T*>(dkb), Nk, d, Wq);
          CK_LAUNCH("storeRows");
          storeRows<T><<<gridFor(Nk * dvw, 256), 256, 0, st>>>(accV.as<float>(), reinterpret_cast<T*>(dvb), Nk, dvw,
                                                               Wv);
          CK_LAUNCH("storeRows");
        });
      }
    }
}

void opBackward(OpCode op, const OpAttrs& a, const Views& in, const Views& out) {
  switch (op) {
    case OpCode::GELU_BACKWARD:
    case OpCode::QUICK_GELU_BACKWARD:
    case OpCode::SILU_BACKWARD: return elementwise(op, in, out);
    case OpCode::GEGLU_BACKWARD: return geglu(in, out);
    case OpCode::UPSAMPLE2X_BACKWARD: return upsample(in, out);
    case OpCode::REDUCE_SUM: return reduceSum(in, out);
    case OpCode::GROUP_NORM_BACKWARD: return groupNorm(a, in, out);
    case OpCode::LAYER_NORM_BACKWARD: return layerNorm(a, in, out);
    case OpCode::CONV2D_BACKWARD_INPUT: return conv2dBackwardInputBudget(a, in, out, int64_t(256) << 20);
    case OpCode::ATTENTION_BACKWARD: return attentionBackwardBudget(a, in, out, int64_t(512) << 20);
    case OpCode::INJECT_BACKWARD: return injectB(in, out);
    default: break;
  }
  shapeError(op, "not a backward op");
}

}  // namespace cuda
}  // namespace idforge
