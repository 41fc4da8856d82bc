// Internal interface between the attention dispatcher (attention.cu) and its kernels.
#pragma once

#include "cuda_common.h"
#include "regions.h"

namespace idforge {
namespace cuda {

// The region table of ATTENTION / ATTENTION_BACKWARD (native/regions.h) on the device; table null: none.
struct RegionParams {
  const int32_t* table = nullptr;
  int64_t cols = 0;  // Nk + 4R
  int Nk = 0, R = 0, W = 1, H = 1;
  int* err = nullptr;  // the stream's error flag: bit 4 for an owner outside [−1, R)
};

// Validates attrs.regions' table in[idx] against B, Nq, Nk (E_SHAPE, E_ARGUMENT as the CPU op).
RegionParams regionParams(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, size_t idx, int64_t B,
                          int64_t Nq, int64_t Nk);

// The regions holding query n of batch row b (0 without a table).
__device__ __forceinline__ uint32_t regionsOf(const RegionParams& r, int b, int n) {
  return r.table ? regionsAt(r.table + b * r.cols + r.Nk, r.R, n, r.W, r.H) : 0u;
}

// Whether the regions hide key `key` of batch row b from a query holding `inside`. An owner outside
// [−1, R) (never from lib/regions.ts) flags E_ARGUMENT and hides nothing.
__device__ __forceinline__ bool regionHides(const RegionParams& r, int b, int key, uint32_t inside) {
  if (!r.table) return false;
  const int32_t o = __ldg(r.table + b * r.cols + key);
  if (o < -1 || o >= r.R) {
    atomicOr(r.err, 4);
    return false;
  }
  return !regionSees(o, inside);
}

struct AttnParams {
  const void *q, *k, *v;
  void *o, *p;  // p: captured probabilities [B·H, Nq, Nk] or null
  int B, H, Nq, Nk, d, dv;
  int64_t qRow, kRow, vRow, oRow;  // row strides in elements (H·d or H·dv)
  float scale, scaleLog2;
  int causal;
  RegionParams rg;
};

bool flashSupports(int d, int dv);
void flashAttention(const AttnParams& p, int d, bool capture);  // fp16 only

}  // namespace cuda
}  // namespace idforge
