// GROUP_NORM (+ fused SiLU) and LAYER_NORM. Statistics are fp32 Welford, merged with Chan's
// formula, so large means (the VAE's activations) do not cancel. GroupNorm splits every group
// over many blocks (a stats pass and an apply pass) because SD has only B·32 groups of up to a
// million elements: one block per group would leave most of the GPU idle.
#include "cuda_common.h"
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

}  // namespace cuda
}  // namespace idforge
