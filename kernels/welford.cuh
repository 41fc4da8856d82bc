// Welford mean/variance merging shared by the norm kernels (forward in norm.cu, backward in
// backward.cu): statistics in fp32 with a numerically stable merge of partial results.
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

}  // namespace
}  // namespace cuda
}  // namespace idforge
