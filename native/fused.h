// LINEAR and CONV2D take, after x and w, an optional bias and an optional residual (backend.h).
// The operand order is stated here, once, for both backends (native/cpu and kernels/gemm.cu) and
// for lib/graph/graph.ts (fusedOperands there reads the same order):
//   x, w, then the bias when the op has one, then the residual when attrs.residual is set
//   (the residual is always the last input). A bias passed as a view without data is absent.
// Nothing is inferred from shapes: a bias has one value per output channel (N or O elements; a
// CONV2D bias may instead be per image, [B, O]: the UNet folds its time embedding into conv1's
// bias this way) and a residual has exactly the output's shape, else the op throws E_SHAPE.
#pragma once

#include <string>
#include <vector>

#include "backend.h"

namespace idforge {

struct FusedOperands {
  int bias = -1;              // index into the op's inputs, -1 when absent
  int residual = -1;          // likewise
  bool biasPerImage = false;  // CONV2D bias [B, O]
  std::string error;          // a shape problem: the caller throws E_SHAPE with this message
};

// channels: N (LINEAR) or O (CONV2D); images: B for CONV2D (enables the [B, O] bias), 0 for LINEAR.
inline FusedOperands fusedOperands(const std::vector<TensorView>& in, const OpAttrs& a, const Shape& out,
                                   int64_t channels, int64_t images) {
  FusedOperands f;
  const size_t fixed = a.residual ? 3 : 2;  // x, w (, residual)
  if (in.size() < fixed || in.size() > fixed + 1) {
    f.error = std::string("expected x, w, an optional bias") + (a.residual ? " and the residual" : "") + ": " +
              std::to_string(fixed) + " or " + std::to_string(fixed + 1) + " inputs, got " + std::to_string(in.size());
    return f;
  }
  if (in.size() == fixed + 1 && in[2].data != nullptr) f.bias = 2;
  if (a.residual) f.residual = int(in.size()) - 1;
  if (f.bias >= 0) {
    const TensorView& b = in[size_t(f.bias)];
    if (b.numel() == channels) {
      // one value per channel
    } else if (images > 0 && b.shape == Shape{images, channels}) {
      f.biasPerImage = true;
    } else {
      f.error = "bias " + shapeStr(b.shape) + " must have " + std::to_string(channels) + " elements" +
                (images > 0 ? " or be [" + std::to_string(images) + ", " + std::to_string(channels) + "]" : "");
    }
  }
  if (f.residual >= 0 && in[size_t(f.residual)].shape != out)
    f.error = "residual " + shapeStr(in[size_t(f.residual)].shape) + " must have the output's shape " + shapeStr(out);
  return f;
}

}  // namespace idforge
