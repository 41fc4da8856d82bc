// countNonFinite: how many elements of a float tensor are NaN or ±Inf (weights on upload, latents
// every step). One grid-stride pass, a per-block count in shared memory, one atomicAdd per block.
#include "cuda_common.h"

namespace idforge {
namespace cuda {

namespace {

// Bit test, not isfinite(): immune to --use_fast_math. mask = the dtype's exponent bits.
template <typename U>
__global__ void countNonFiniteKernel(const U* __restrict__ x, int64_t n, U mask, unsigned long long* out) {
  __shared__ unsigned int blockCount;
  if (threadIdx.x == 0) blockCount = 0;
  __syncthreads();
  unsigned int k = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    k += (x[i] & mask) == mask;
  if (k) atomicAdd(&blockCount, k);
  __syncthreads();
  if (threadIdx.x == 0 && blockCount) atomicAdd(out, (unsigned long long)blockCount);
}

}  // namespace

int64_t countNonFinite(const TensorView& t) {
  const int64_t n = t.numel();
  if (n == 0 || (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)) return 0;
  Context& c = ctx();
  Scratch acc(sizeof(unsigned long long));
  CK(cudaMemsetAsync(acc.p, 0, sizeof(unsigned long long), c.stream));
  const unsigned grid = gridFor(n, 256, 4096);
  auto* out = acc.as<unsigned long long>();
  if (t.dtype == DType::F32)
    countNonFiniteKernel<uint32_t><<<grid, 256, 0, c.stream>>>(t.as<uint32_t>(), n, 0x7f800000u, out);
  else
    countNonFiniteKernel<uint16_t><<<grid, 256, 0, c.stream>>>(t.as<uint16_t>(), n,
                                                               uint16_t(t.dtype == DType::F16 ? 0x7c00u : 0x7f80u), out);
  CK_LAUNCH("countNonFinite");
  unsigned long long host = 0;
  CK(cudaMemcpyAsync(&host, out, sizeof host, cudaMemcpyDeviceToHost, c.stream));
  CK(cudaStreamSynchronize(c.stream));
  return int64_t(host);
}

}  // namespace cuda
}  // namespace idforge
