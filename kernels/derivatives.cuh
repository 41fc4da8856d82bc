// Device derivatives shared by the CUDA backward ops (elementwise.cu, norm.cu), in fp32.
#pragma once

namespace idforge {
namespace cuda {

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

}  // namespace cuda
}  // namespace idforge
