// Internal to the CPU backend: one function per op (grouped into conv.cc, attention.cc, ...),
// plus the argument checks they share. backend.cc dispatches OpCode to these.
#pragma once

#include <string>
#include <vector>

#include "../backend.h"

namespace idforge {
namespace cpu {

using Views = std::vector<TensorView>;

[[noreturn]] void shapeError(const char* op, const std::string& msg);
// in.size() in [minIn, maxIn] and out.size() >= nOut, every present tensor non-null.
void checkArity(const char* op, const Views& in, size_t minIn, size_t maxIn, const Views& out, size_t nOut);
void checkDtype(const char* op, const TensorView& t, DType want, const char* what);
void checkNumel(const char* op, const TensorView& t, int64_t n, const char* what);
void checkShape(const char* op, const TensorView& t, const Shape& s, const char* what);
// An optional input (bias, noise) counts as given when it is present with data.
inline bool given(const Views& in, size_t i) { return in.size() > i && in[i].data != nullptr; }
std::string shapeOf(const TensorView& t);

#define IDFORGE_CPU_OP_DECL(name) void op_##name(const OpAttrs& a, const Views& in, const Views& out);
IDFORGE_OPS(IDFORGE_CPU_OP_DECL)
#undef IDFORGE_CPU_OP_DECL

}  // namespace cpu
}  // namespace idforge
