// LINEAR and CONV2D take, after x and w, an optional bias and an optional residual (backend.h).
// Which trailing input is which is decided here, once, for both backends (native/cpu and
// kernels/gemm.cu); lib/graph/graph.ts (fusedInputs) emits inputs in this order and
// lib/graph/autodiff.ts reads them back by the same shapes. The op list carries no flag for it
// (OpAttrs has no such attribute), so the rule is by position and shape:
//   - four inputs: in[2] is the bias, in[3] the residual; either may be absent (no data);
//   - three inputs: in[2] is the residual when it has exactly the output's shape, else the bias.
//     A one-row output ([N], [1, N], [1, O, 1, 1]) has a bias-sized residual: both readings then
//     add the same values, so taking it as the bias is no ambiguity.
// A bias has one value per output channel (N or O elements); a CONV2D bias may instead be
// per image, [B, O] (the UNet folds its time embedding into conv1's bias this way).
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
inline FusedOperands fusedOperands(const std::vector<TensorView>& in, const Shape& out, int64_t channels,
                                   int64_t images) {
  FusedOperands f;
  auto present = [&](size_t i) { return in.size() > i && in[i].data != nullptr; };
  const int64_t outN = numel(out);
  if (in.size() > 4) {
    f.error = "expected at most 4 inputs (x, w, bias, residual), got " + std::to_string(in.size());
    return f;
  }
  if (in.size() == 3 && present(2)) {
    if (in[2].shape == out && outN != channels) f.residual = 2;
    else f.bias = 2;
  } else if (in.size() >= 4) {
    if (present(2)) f.bias = 2;
    if (present(3)) f.residual = 3;
  }
  if (f.bias >= 0) {
    const TensorView& b = in[size_t(f.bias)];
    if (b.numel() == channels) {
      // one value per channel
    } else if (images > 0 && b.shape == Shape{images, channels}) {
      f.biasPerImage = true;
    } else {
      f.error = "bias " + shapeStr(b.shape) + " must have " + std::to_string(channels) + " elements" +
                (images > 0 ? " or be [" + std::to_string(images) + ", " + std::to_string(channels) + "]" : "") +
                (in.size() == 3 ? " (a residual must have the output's shape " + shapeStr(out) + ")" : "");
    }
  }
  if (f.residual >= 0 && in[size_t(f.residual)].shape != out)
    f.error = "residual " + shapeStr(in[size_t(f.residual)].shape) + " must have the output's shape " + shapeStr(out);
  return f;
}

}  // namespace idforge
