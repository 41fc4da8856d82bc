// Vectorised float math for the CPU ops (internal). libm's expf is accurate but scalar: softmax
// and SiLU call exp hundreds of millions of times per UNet pass, so exp gets a SIMD version with
// Cephes' range reduction and polynomial (max error ~2 ulp), NaN propagating and ±inf handled.
#pragma once

#include <cmath>
#include <cstdint>

#include "gemm_kernels.h"

namespace idforge {
namespace cpu {

#if defined(__AVX512F__)
inline __m512 vExp(__m512 x) {
  // max/min return their second operand when either is NaN, so NaN passes through.
  x = _mm512_max_ps(_mm512_set1_ps(-104.f), x);
  x = _mm512_min_ps(_mm512_set1_ps(89.f), x);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  // scalef does the 2^n scaling with correct overflow to inf and gradual underflow to 0.
  return _mm512_scalef_ps(p, n);
}
#elif defined(__AVX2__) && defined(__FMA__)
inline __m256 vExp(__m256 x) {
  __m256 big = _mm256_cmp_ps(x, _mm256_set1_ps(88.3762626647949f), _CMP_GT_OQ);
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365478515625f), x);
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), big);
}
#endif

// y[i] = exp(x[i] - sub), returning the sum of the results (accumulated in float lanes).
inline float expSubSum(const float* x, float* y, int64_t n, float sub) {
  int64_t i = 0;
  float s = 0.f;
#ifndef IDFORGE_GEMM_PORTABLE
  VecF acc = vZero();
#if defined(__AVX512F__)
  __m512 vs = _mm512_set1_ps(sub);
  for (; i + 16 <= n; i += 16) {
    __m512 e = vExp(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs));
    _mm512_storeu_ps(y + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1);
    __m512 e = vExp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vs));
    e = _mm512_maskz_mov_ps(m, e);
    _mm512_mask_storeu_ps(y + i, m, e);
    acc = _mm512_add_ps(acc, e);
    i = n;
  }
  s = _mm512_reduce_add_ps(acc);
#else
  __m256 vs = _mm256_set1_ps(sub);
  for (; i + 8 <= n; i += 8) {
    __m256 e = vExp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, acc);
  for (float v : t) s += v;
#endif
#endif
  for (; i < n; i++) {
    y[i] = std::exp(x[i] - sub);
    s += y[i];
  }
  return s;
}

// Maximum of x[0..n) (n > 0); NaN-agnostic like a plain comparison loop.
inline float rowMax(const float* x, int64_t n) {
  int64_t i = 0;
  float m = -INFINITY;
#if defined(__AVX512F__)
  __m512 vm = _mm512_set1_ps(-INFINITY);
  for (; i + 16 <= n; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
  m = _mm512_reduce_max_ps(vm);
#endif
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

// y = x * sigmoid(alpha * x) elementwise (SiLU: alpha = 1, QuickGELU: alpha = 1.702).
inline void siluScaled(const float* x, float* y, int64_t n, float alpha) {
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 va = _mm512_set1_ps(-alpha), one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(y + i, _mm512_div_ps(v, _mm512_add_ps(one, vExp(_mm512_mul_ps(va, v)))));
  }
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 va = _mm256_set1_ps(-alpha), one = _mm256_set1_ps(1.f);
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(one, vExp(_mm256_mul_ps(va, v)))));
  }
#endif
  for (; i < n; i++) y[i] = x[i] / (1.f + std::exp(-alpha * x[i]));
}

inline float geluExact(float x) { return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f)); }

#if defined(__AVX512F__)
// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): the formula PyTorch's own vectorised CPU
// GELU uses, so exact-GELU layers round like the PyTorch reference; libm's erff is ~10x slower.
inline __m512 vErf(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  __m512 ax = _mm512_abs_ps(x);
  __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, one));
  __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.421413741f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-0.284496736f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(0.254829592f));
  __m512 e = vExp(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), ax), ax));
  __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(t, e), r, one);  // 1 - r·t·exp(-x²), for |x|
  // copy the sign of x (erf is odd); NaN in x stays NaN through t
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(y), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)))));
}
inline __m512 vGelu(__m512 x) {
  __m512 e = vErf(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), _mm512_add_ps(e, _mm512_set1_ps(1.f)));
}
#endif

// y = gelu(x) (exact, erf-based)
inline void geluRow(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, vGelu(_mm512_loadu_ps(x + i)));
#endif
  for (; i < n; i++) y[i] = geluExact(x[i]);
}

// o = h * gelu(g)
inline void gegluRow(const float* h, const float* g, float* o, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(h + i), vGelu(_mm512_loadu_ps(g + i))));
#endif
  for (; i < n; i++) o[i] = h[i] * geluExact(g[i]);
}

}  // namespace cpu
}  // namespace idforge
