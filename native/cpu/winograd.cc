// Winograd F(m x m, 3 x 3) for 3x3 / stride 1 / pad 1 convolutions: when to use it (here) and the
// algorithm itself, which compiles per instruction set (isa/winograd_impl.h).
#include "winograd.h"

#include <cstdlib>

#include "isa/kernels.h"

namespace idforge {
namespace cpu {

int winogradTile(int64_t B, int64_t C, int64_t H, int64_t W, int64_t O, int64_t kh, int64_t kw, int64_t stride,
                 int64_t pad) {
  if (kh != 3 || kw != 3 || stride != 1 || pad != 1) return 0;
  // Few channels: the transforms cost as much as the products save.
  if (C < 32 || O < 32) return 0;
  // IDFORGE_WINOGRAD=0 disables Winograd, =2 / =4 forces F(2,3) / F(4,3) wherever it applies.
  static const int forced = [] {
    const char* e = std::getenv("IDFORGE_WINOGRAD");
    if (!e || !*e) return -1;
    const int v = std::atoi(e);
    return v == 0 || v == 2 || v == 4 ? v : -1;
  }();
  if (forced >= 0) return forced;
  // The weights are transformed on every call (once per column chunk): worth it only with enough
  // tiles to share them. Measured on a 2-core AVX-512 machine (SD-1.5 shapes, batch 2): F(2,3)
  // beats im2col from 32 tiles up (8x8 images: ~15%; 16x16: ~2x), loses at 4x4 (8 tiles, 2x
  // slower) and at 8x8 batch 1; F(4,3) beats F(2,3) at 32x32 (128 tiles: 1.3-1.5x) and ties at
  // 16x16, where F(2,3) is kept for its precision.
  const int64_t t4 = B * ((H + 3) / 4) * ((W + 3) / 4), t2 = B * ((H + 1) / 2) * ((W + 1) / 2);
  if (t4 >= 96) return 4;
  if (t2 >= 32) return 2;
  return 0;
}

void conv3x3Winograd(int m, const float* x, Operand w, const Epilogue& e, float* y, int64_t B, int64_t C, int64_t H,
                     int64_t W, int64_t O) {
  kern().winograd.conv(m, x, w, EpilogueData{e.bias, e.biasImageStride, e.residual}, y, B, C, H, W, O);
}

}  // namespace cpu
}  // namespace idforge
