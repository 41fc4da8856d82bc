// Internal to the CPU backend: one function per op (grouped into conv.cc, attention.cc, ...),
// plus the argument checks they share. backend.cc dispatches OpCode to these.
#pragma once

#include <string>
#include <vector>

#include "../backend.h"
#include "isa/kernels.h"

namespace idforge {
namespace cpu {

using Views = std::vector<TensorView>;

[[noreturn]] void shapeError(const char* op, const std::string& msg);
// in.size() in [minIn, maxIn] and out.size() >= nOut, every present tensor non-null.
void checkArity(const char* op, const Views& in, size_t minIn, size_t maxIn, const Views& out, size_t nOut);
void checkDtype(const char* op, const TensorView& t, DType want, const char* what);
// Every input and output float32 (the backward ops).
void checkF32(const char* op, const Views& in, const Views& out);
void checkNumel(const char* op, const TensorView& t, int64_t n, const char* what);
void checkShape(const char* op, const TensorView& t, const Shape& s, const char* what);
// A weight operand (LINEAR's and CONV2D's w, EMBEDDING's table): float32, or IEEE half where the
// program keeps float16 weights on the CPU (native/program.cc); anything else is E_ARGUMENT.
Operand weightOperand(const char* op, const TensorView& t, const char* what);
// An optional input (bias, noise) counts as given when it is present with data.
inline bool given(const Views& in, size_t i) { return in.size() > i && in[i].data != nullptr; }
std::string shapeOf(const TensorView& t);

// What LINEAR and CONV2D add to their product (native/fused.h): a bias, one value per output
// channel or (CONV2D) per image and channel, and a residual shaped like the output. Applied in the
// ops' epilogues (or as the values the GEMM accumulates onto), never as a separate pass.
struct Epilogue {
  const float* bias = nullptr;
  int64_t biasImageStride = 0;  // per-image bias [B, O]: O (image b's row starts at b * O); else 0
  const float* residual = nullptr;
  bool any() const { return bias || residual; }
  float biasAt(int64_t image, int64_t channel) const { return bias ? bias[image * biasImageStride + channel] : 0.f; }
};
// Finds and validates LINEAR / CONV2D's bias and residual (E_SHAPE / E_ARGUMENT on a bad one).
// channels: N or O; images: B for CONV2D, 0 for LINEAR.
Epilogue epilogueOf(const char* op, const OpAttrs& a, const Views& in, const TensorView& out, int64_t channels,
                    int64_t images);
// Image b's O output planes of N elements before a GEMM accumulates onto them: bias(b, o) +
// residual (conv.cc; also LINEAR's transY output, whose planes are the N output channels).
void fillPlanes(float* yb, int64_t b, int64_t O, int64_t N, const Epilogue& e);

#define IDFORGE_CPU_OP_DECL(name) void op_##name(const OpAttrs& a, const Views& in, const Views& out);
IDFORGE_OPS(IDFORGE_CPU_OP_DECL)
#undef IDFORGE_CPU_OP_DECL

}  // namespace cpu
}  // namespace idforge
