// Warp- and block-wide reductions shared by the kernels (attention.cu, norm.cu: forward and backward).
#pragma once

#include <cmath>

namespace idforge {
namespace cuda {
namespace {

template <typename F>
__device__ __forceinline__ F warpSum(F v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// Block-wide sum or max (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `red` is a __shared__ float[33] owned by the caller; safe to call back to back.
__device__ float blockReduce(float v, bool isMax, float* red) {
  v = isMax ? warpMax(v) : warpSum(v);
  __syncthreads();  // a previous call's readers of red[32] are done
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int nw = blockDim.x >> 5;
    float r = threadIdx.x < nw ? red[threadIdx.x] : (isMax ? -INFINITY : 0.f);
    r = isMax ? warpMax(r) : warpSum(r);
    if (threadIdx.x == 0) red[32] = r;
  }
  __syncthreads();
  return red[32];
}

}  // namespace
}  // namespace cuda
}  // namespace idforge
