// Vectorised float math for the CPU ops (internal): the selected variant's kernels
// (isa/vmath_impl.h: a SIMD exp with Cephes' range reduction and polynomial, ~2 ulp, NaN
// propagating and ±inf handled; erf for the exact GELU), called through the kernel table.
#pragma once

#include <cstdint>

#include "isa/kernels.h"

namespace idforge {
namespace cpu {

// y[i] = exp(x[i] - sub), returning the sum of the results (accumulated in float lanes).
inline float expSubSum(const float* x, float* y, int64_t n, float sub) { return kern().vmath.expSubSum(x, y, n, sub); }
// Maximum of x[0..n) (n > 0); NaN-agnostic like a plain comparison loop.
inline float rowMax(const float* x, int64_t n) { return kern().vmath.rowMax(x, n); }
// y = x * sigmoid(alpha * x) elementwise (SiLU: alpha = 1, QuickGELU: alpha = 1.702).
inline void siluScaled(const float* x, float* y, int64_t n, float alpha) { kern().vmath.siluScaled(x, y, n, alpha); }
// y = gelu(x) (exact, erf-based)
inline void geluRow(const float* x, float* y, int64_t n) { kern().vmath.gelu(x, y, n); }
// o = h * gelu(g)
inline void gegluRow(const float* h, const float* g, float* o, int64_t n) { kern().vmath.geglu(h, g, o, n); }

}  // namespace cpu
}  // namespace idforge
