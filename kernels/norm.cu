// GROUP_NORM (+ fused SiLU) and LAYER_NORM. Statistics are fp32 Welford, merged with Chan's
// formula, so large means (the VAE's activations) do not cancel. GroupNorm splits every group
// over many blocks (a stats pass and an apply pass) because SD has only B·32 groups of up to a
// million elements: one block per group would leave most of the GPU idle.
#include "cuda_common.h"
#include "derivatives.cuh"
#include "reduce.cuh"
#include "welford.cuh"

namespace idforge {
namespace cuda {

namespace {

constexpr int GN_THREADS = 256;


template <typename T>
__global__ void __launch_bounds__(GN_THREADS) gnApply(const T* __restrict__ x, T* __restrict__ y,
                                                     const Welford* __restrict__ part, const T* __restrict__ gamma,
                                                     const T* __restrict__ beta, int64_t groupSize, int64_t chunk,
                                                     int64_t S, int C, int Cg, int G, float eps, int silu) {
  const int group = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  Welford w{0.f, 0.f, 0.f};
  for (int i = threadIdx.x; i < splits; i += GN_THREADS) w = wMerge(w, part[int64_t(group) * splits + i]);
  w = wBlockMerge(w);
  const float mean = w.mean, rstd = rsqrtf(w.m2 / w.n + eps);
  const int c0 = (group % G) * Cg;
  const T* xg = x + int64_t(group) * groupSize;
  T* yg = y + int64_t(group) * groupSize;
  int64_t lo = int64_t(split) * chunk, hi = min(groupSize, lo + chunk);
  // Chunks are < 2^31 elements apart, so the channel of element i needs only a 32-bit division.
  const unsigned uS = unsigned(S);
  for (int64_t i = lo + threadIdx.x; i < hi; i += GN_THREADS) {
    int c = c0 + int(unsigned(i) / uS);
    float v = (toF(xg[i]) - mean) * rstd * toF(gamma[c]) + toF(beta[c]);
    if (silu) v = v / (1.f + __expf(-v));
    yg[i] = fromF<T>(v);
  }
  (void)C;
}

// One warp per row: mean, then the variance of (x − mean) — two cheap re-reads from L1 instead
// of a single-pass formula that loses digits.
template <typename T>
__global__ void layerNorm(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ gamma,
                          const T* __restrict__ beta, int64_t rows, int C, float eps) {
  const int lane = threadIdx.x & 31;
  int64_t row = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float s = 0.f;
  for (int i = lane; i < C; i += 32) s += toF(xr[i]);
  const float mean = warpSum(s) / C;
  float v = 0.f;
  for (int i = lane; i < C; i += 32) {
    float d = toF(xr[i]) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(warpSum(v) / C + eps);
  for (int i = lane; i < C; i += 32) yr[i] = fromF<T>((toF(xr[i]) - mean) * rstd * toF(gamma[i]) + toF(beta[i]));
}

}  // namespace

void opGroupNorm(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::GROUP_NORM;
  if (in.size() < 3) shapeError(op, "expects x, w and b");
  const TensorView &x = in[0], &y = out[0];
  DType dt = y.dtype;
  for (int i = 0; i < 3; i++) expectFloat(op, in[i], dt, i == 0 ? "x" : i == 1 ? "w" : "b");
  if (x.shape.size() < 2) shapeError(op, "x must be [B, C, ..]");
  int64_t B = x.shape[0], C = x.shape[1], G = a.groups;
  if (G < 1 || C % G) shapeError(op, "groups " + std::to_string(G) + " must divide channels " + std::to_string(C));
  if (in[1].numel() != C || in[2].numel() != C) shapeError(op, "w and b must have C elements");
  if (y.shape != x.shape) shapeError(op, "output shape differs from input");
  if (x.numel() == 0) return;
  int64_t S = x.numel() / (B * C), Cg = C / G, groupSize = Cg * S;
  if (groupSize >= (int64_t(1) << 32)) shapeError(op, "a group of 2^32 or more elements is not supported");
  int64_t splits = std::min<int64_t>(1024, std::max<int64_t>(1, ceilDiv(groupSize, 8192)));
  int64_t chunk = ceilDiv(groupSize, splits);
  Scratch part(size_t(B * G * splits) * sizeof(Welford));
  dim3 grid{unsigned(B * G), unsigned(splits)};
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    groupStats<T, GN_THREADS><<<grid, GN_THREADS, 0, ctx().stream>>>(x.as<T>(), part.as<Welford>(), groupSize, chunk);
    CK_LAUNCH("groupStats");
    gnApply<T><<<grid, GN_THREADS, 0, ctx().stream>>>(x.as<T>(), y.as<T>(), part.as<Welford>(), in[1].as<T>(),
                                                      in[2].as<T>(), groupSize, chunk, S, int(C), int(Cg), int(G),
                                                      float(a.eps), a.silu ? 1 : 0);
    CK_LAUNCH("gnApply");
  });
}

void opLayerNorm(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::LAYER_NORM;
  if (in.size() < 3) shapeError(op, "expects x, w and b");
  const TensorView &x = in[0], &y = out[0];
  DType dt = y.dtype;
  for (int i = 0; i < 3; i++) expectFloat(op, in[i], dt, i == 0 ? "x" : i == 1 ? "w" : "b");
  if (x.shape.empty()) shapeError(op, "x must be [.., C]");
  int64_t C = x.shape.back();
  if (in[1].numel() != C || in[2].numel() != C) shapeError(op, "w and b must have C elements");
  if (y.shape != x.shape) shapeError(op, "output shape differs from input");
  if (x.numel() == 0) return;
  int64_t rows = x.numel() / C;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    layerNorm<T><<<unsigned(ceilDiv(rows, 8)), 256, 0, ctx().stream>>>(x.as<T>(), y.as<T>(), in[1].as<T>(),
                                                                       in[2].as<T>(), rows, int(C), float(a.eps));
  });
  CK_LAUNCH("layerNorm");
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts) ------------------------
// GROUP_NORM_BACKWARD: three passes split over many blocks per group like the forward op (Welford
// stats, Σg / Σg·x̂ partials, dx). LAYER_NORM_BACKWARD: one warp per row. Statistics recomputed.

namespace {

using Views = std::vector<TensorView>;

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

void groupNormBackwardOp(const OpAttrs& a, const Views& in, const Views& out) {
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

void layerNormBackwardOp(const OpAttrs& a, const Views& in, const Views& out) {
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

}  // namespace

void opGroupNormBackward(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  groupNormBackwardOp(a, in, out);
}

void opLayerNormBackward(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  layerNormBackwardOp(a, in, out);
}

}  // namespace cuda
}  // namespace idforge
