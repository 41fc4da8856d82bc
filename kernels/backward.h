// The backward ops of learning (vector-Jacobian products, see the IDFORGE_OPS comment in
// native/backend.h and the CPU reference in native/cpu/backward.cc) on the CUDA backend.
#pragma once

#include "cuda_common.h"

namespace idforge {
namespace cuda {

// GELU_BACKWARD, QUICK_GELU_BACKWARD, SILU_BACKWARD, GEGLU_BACKWARD, UPSAMPLE2X_BACKWARD,
// REDUCE_SUM, GROUP_NORM_BACKWARD, LAYER_NORM_BACKWARD, CONV2D_BACKWARD_INPUT,
// ATTENTION_BACKWARD, INJECT_BACKWARD.
void opBackward(OpCode, const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&);

// ATTENTION_BACKWARD with an explicit scratch budget in bytes (the harness forces the
// query-chunked path with a small one; opBackward uses 512 MiB).
void attentionBackwardBudget(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&,
                             int64_t budgetBytes);
// CONV2D_BACKWARD_INPUT with an explicit im2col scratch budget (forces the channel-chunked path).
void conv2dBackwardInputBudget(const OpAttrs&, const std::vector<TensorView>&, const std::vector<TensorView>&,
                               int64_t budgetBytes);

}  // namespace cuda
}  // namespace idforge
