// Internal interface between the attention dispatcher (attention.cu) and its kernels.
#pragma once

#include "cuda_common.h"

namespace idforge {
namespace cuda {

struct AttnParams {
  const void *q, *k, *v;
  void *o, *p;  // p: captured probabilities [B·H, Nq, Nk] or null
  int B, H, Nq, Nk, d, dv;
  int64_t qRow, kRow, vRow, oRow;  // row strides in elements (H·d or H·dv)
  float scale, scaleLog2;
  int causal;
};

bool flashSupports(int d, int dv);
void flashAttention(const AttnParams& p, int d, bool capture);  // fp16 only

}  // namespace cuda
}  // namespace idforge
