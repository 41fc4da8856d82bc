// Welford mean/variance merging shared by the norm kernels (norm.cu, forward and backward):
// statistics in fp32 with a numerically stable merge of partial results, and the
// group-norm statistics kernel both use. Needs cuda_common.h (toF) first.
#pragma once

namespace idforge {
namespace cuda {
namespace {

struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford wMerge(Welford a, Welford b) {
  float n = a.n + b.n;
  if (n == 0.f) return a;
  float delta = b.mean - a.mean, wb = b.n / n;
  return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

__device__ __forceinline__ Welford wWarpMerge(Welford w) {
  for (int o = 16; o; o >>= 1) {
    Welford x{__shfl_xor_sync(0xffffffff, w.n, o), __shfl_xor_sync(0xffffffff, w.mean, o),
              __shfl_xor_sync(0xffffffff, w.m2, o)};
    w = wMerge(w, x);
  }
  return w;
}

// Block-wide merge; every thread gets the result. The leading barrier makes it safe to call back
// to back (the shared slots of the previous call may still be being read).
__device__ Welford wBlockMerge(Welford w) {
  __shared__ Welford red[32];
  __shared__ Welford total;
  w = wWarpMerge(w);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = w;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int nw = blockDim.x >> 5;
    Welford v = threadIdx.x < nw ? red[threadIdx.x] : Welford{0.f, 0.f, 0.f};
    v = wWarpMerge(v);
    if (threadIdx.x == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Group-norm statistics, split: block (group, split) merges elements [split·chunk, +chunk) of
// its group (groupSize contiguous elements) into part[group · gridDim.y + split]. Used by the
// forward and the backward group norm (norm.cu), which merge the parts themselves.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) groupStats(const T* __restrict__ x, Welford* __restrict__ part,
                                                      int64_t groupSize, int64_t chunk) {
  const int group = blockIdx.x, split = blockIdx.y;
  const T* xg = x + int64_t(group) * groupSize;
  const int64_t lo = int64_t(split) * chunk, hi = min(groupSize, lo + chunk);
  Welford w{0.f, 0.f, 0.f};
  for (int64_t i = lo + threadIdx.x; i < hi; i += THREADS) {
    float v = toF(xg[i]);
    w.n += 1.f;
    float d = v - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (v - w.mean);
  }
  w = wBlockMerge(w);
  if (threadIdx.x == 0) part[int64_t(group) * gridDim.y + split] = w;
}

}  // namespace
}  // namespace cuda
}  // namespace idforge
