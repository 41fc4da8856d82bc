// One variant's normalisation loops (included by native/cpu/isa/<isa>.cc inside its namespace).
// Statistics are accumulated in double over float data (norm.cc says why); the affine passes are
// plain loops the compiler vectorises for the variant's width.
#pragma once

#include "simd.h"
#include "vmath_impl.h"

namespace idforge {
namespace cpu {
namespace IDFORGE_ISA_NS {

double sum(const float* x, int64_t n) {
  int64_t i = 0;
  double s = 0;
#if defined(IDFORGE_ISA_AVX512)
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  }
  s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#else
  double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) p[k] += x[i + k];
  s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
#endif
  for (; i < n; i++) s += x[i];
  return s;
}

double sumSqDev(const float* x, int64_t n, double mean) {
  int64_t i = 0;
  double s = 0;
#if defined(IDFORGE_ISA_AVX512)
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  const __m512d m = _mm512_set1_pd(mean);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), m);
    const __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), m);
    a0 = _mm512_fmadd_pd(d0, d0, a0);
    a1 = _mm512_fmadd_pd(d1, d1, a1);
  }
  s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#else
  double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      const double d = x[i + k] - mean;
      p[k] += d * d;
    }
  s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
#endif
  for (; i < n; i++) {
    const double d = x[i] - mean;
    s += d * d;
  }
  return s;
}

void affine(const float* x, float* y, int64_t n, float mean, float sc, float sh, bool silu) {
  for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * sc + sh;
  if (silu) siluScaled(y, y, n, 1.f);
}

void affineRow(const float* x, float* y, int64_t n, float mean, float rstd, const float* w, const float* b) {
  for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

}  // namespace IDFORGE_ISA_NS
}  // namespace cpu
}  // namespace idforge
