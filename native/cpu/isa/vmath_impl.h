// One variant's vector math (included by native/cpu/isa/<isa>.cc inside its namespace): libm's
// expf is accurate but scalar, and softmax and SiLU call exp hundreds of millions of times per UNet
// pass, so exp (simd.h's vExp: Cephes, ~2 ulp) and erf get vector versions here. Tails shorter
// than a vector use libm (C functions, never std:: inlines: kernels.h says why).
#pragma once

#include <math.h>

#include "simd.h"

namespace idforge {
namespace cpu {
namespace IDFORGE_ISA_NS {

// y[i] = exp(x[i] - sub), returning the sum of the results (accumulated in float lanes).
float expSubSum(const float* x, float* y, int64_t n, float sub) {
  int64_t i = 0;
  VecF acc = vZero();
  const VecF vs = vSet(sub);
  for (; i + kLanes <= n; i += kLanes) {
    const VecF e = vExp(vSub(vLoad(x + i), vs));
    vStore(y + i, e);
    acc = vAdd(acc, e);
  }
#if defined(IDFORGE_ISA_AVX512)
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    const VecF e = _mm512_maskz_mov_ps(m, vExp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vs)));
    _mm512_mask_storeu_ps(y + i, m, e);
    acc = vAdd(acc, e);
    i = n;
  }
#endif
  float s = vSum(acc);
  for (; i < n; i++) {
    y[i] = expf(x[i] - sub);
    s += y[i];
  }
  return s;
}

// Maximum of x[0..n) (n > 0); NaN-agnostic like a plain comparison loop.
float rowMax(const float* x, int64_t n) {
  int64_t i = 0;
  float m = -INFINITY;
  if (n >= kLanes) {
    VecF vm = vSet(-INFINITY);
    for (; i + kLanes <= n; i += kLanes) vm = vMax(vm, vLoad(x + i));
    m = vMaxAll(vm);
  }
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

// y = x * sigmoid(alpha * x) elementwise (SiLU: alpha = 1, QuickGELU: alpha = 1.702).
void siluScaled(const float* x, float* y, int64_t n, float alpha) {
  int64_t i = 0;
  const VecF va = vSet(-alpha), one = vSet(1.f);
  for (; i + kLanes <= n; i += kLanes) {
    const VecF v = vLoad(x + i);
    vStore(y + i, vDiv(v, vAdd(one, vExp(vMul(va, v)))));
  }
  for (; i < n; i++) y[i] = x[i] / (1.f + expf(-alpha * x[i]));
}

IDFORGE_INLINE float geluExact(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): the formula PyTorch's own vectorised CPU
// GELU uses, so exact-GELU layers round like the PyTorch reference; libm's erff is ~10x slower.
IDFORGE_INLINE VecF vErf(VecF x) {
  const VecF one = vSet(1.f);
  const VecF ax = vAbs(x);
  const VecF t = vDiv(one, vFma(vSet(0.3275911f), ax, one));
  VecF r = vFma(vSet(1.061405429f), t, vSet(-1.453152027f));
  r = vFma(r, t, vSet(1.421413741f));
  r = vFma(r, t, vSet(-0.284496736f));
  r = vFma(r, t, vSet(0.254829592f));
  const VecF e = vExp(vMul(vSub(vZero(), ax), ax));
  const VecF y = vFnma(vMul(t, e), r, one);  // 1 - r·t·exp(-x²), for |x|
  return vCopySign(y, x);                    // erf is odd; NaN in x stays NaN through t
}
IDFORGE_INLINE VecF vGelu(VecF x) {
  const VecF e = vErf(vMul(x, vSet(0.70710678118654752f)));
  return vMul(vMul(x, vSet(0.5f)), vAdd(e, vSet(1.f)));
}

void gelu(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vStore(y + i, vGelu(vLoad(x + i)));
  for (; i < n; i++) y[i] = geluExact(x[i]);
}

void geglu(const float* h, const float* g, float* o, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vStore(o + i, vMul(vLoad(h + i), vGelu(vLoad(g + i))));
  for (; i < n; i++) o[i] = h[i] * geluExact(g[i]);
}

}  // namespace IDFORGE_ISA_NS
}  // namespace cpu
}  // namespace idforge
