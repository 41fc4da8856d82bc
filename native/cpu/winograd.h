// Winograd F(m x m, 3 x 3) convolution for 3x3, stride 1, pad 1 convs (the bulk of a UNet's FLOPs).
#pragma once

#include <cstdint>

#include "isa/kernels.h"
#include "ops.h"

namespace idforge {
namespace cpu {

// Output tile size m (2 or 4) Winograd would use for this CONV2D, or 0 when the im2col path is
// the better (or the only) choice. Only kh = kw = 3, stride 1, pad 1 qualify.
int winogradTile(int64_t B, int64_t C, int64_t H, int64_t W, int64_t O, int64_t kh, int64_t kw, int64_t stride,
                 int64_t pad);

// y[B, O, H, W] = conv3x3(x[B, C, H, W], w[O, C, 3, 3], stride 1, pad 1) + bias + residual (the
// epilogue, added by the output transform; either part may be absent),
// computed with Winograd F(m x m, 3 x 3), m = 2 or 4 (w float32 or half): weights and inputs are transformed
// (weights on every call: a CPU op sees raw pointers only, so no transform is cached), the
// (m+2)^2 products U_t[O, C] · V_t[C, tiles] run on the packed SGEMM, outputs transformed back.
void conv3x3Winograd(int m, const float* x, Operand w, const Epilogue& e, float* y, int64_t B, int64_t C,
                     int64_t H, int64_t W, int64_t O);

}  // namespace cpu
}  // namespace idforge
