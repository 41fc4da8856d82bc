// The vector primitives of one instruction set, for the variant that includes this header (it
// defines IDFORGE_ISA_NS and exactly one of IDFORGE_ISA_SSE2 / _AVX2 / _AVX512 / _NEON). The choice
// follows that macro, not the compiler's __AVX2__-style ones: a -march=native build compiles every
// variant with this CPU's flags, and a forced lower variant must keep its own lane count and tiles.
// Everything here is inside the variant's namespace (see kernels.h on why).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(IDFORGE_ISA_AVX512) || defined(IDFORGE_ISA_AVX2) || defined(IDFORGE_ISA_SSE2)
#include <immintrin.h>
#elif defined(IDFORGE_ISA_NEON)
#include <arm_neon.h>
#else
#error "simd.h: the including variant names no instruction set"
#endif

#if defined(IDFORGE_ISA_AVX512) && !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__) && defined(__F16C__))
#error "the avx512 variant needs -mavx512f -mavx512bw -mavx512vl -mfma -mf16c"
#endif
#if defined(IDFORGE_ISA_AVX2) && !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#error "the avx2 variant needs -mavx2 -mfma -mf16c"
#endif

// GCC 12's avx512fintrin.h seeds results with a self-initialised `__Y = __Y`, which -Wall reports
// as maybe-uninitialized at every inlined call site; the warning is spurious.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define IDFORGE_INLINE __attribute__((always_inline)) inline

namespace idforge {
namespace cpu {
namespace IDFORGE_ISA_NS {

template <typename T>
IDFORGE_INLINE T imin(T a, T b) { return b < a ? b : a; }
template <typename T>
IDFORGE_INLINE T imax(T a, T b) { return a < b ? b : a; }

// IEEE half → float, exact (subnormals, ±inf, NaN), for the scalar paths.
IDFORGE_INLINE float halfBits(uint16_t h) {
  const uint32_t s = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0x1f) bits = s | 0x7f800000u | (m << 13);
  else if (e) bits = s | ((e + 112u) << 23) | (m << 13);
  else if (!m) bits = s;
  else {
    // subnormal: value m·2^-24, normalised
    int sh = 0;
    uint32_t mm = m;
    while (!(mm & 0x400u)) { mm <<= 1; sh++; }
    bits = s | (uint32_t(113 - sh) << 23) | ((mm & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#if defined(IDFORGE_ISA_AVX512)
constexpr int kLanes = 16;
using VecF = __m512;
IDFORGE_INLINE VecF vZero() { return _mm512_setzero_ps(); }
IDFORGE_INLINE VecF vSet(float v) { return _mm512_set1_ps(v); }
IDFORGE_INLINE VecF vLoad(const float* p) { return _mm512_loadu_ps(p); }
IDFORGE_INLINE void vStore(float* p, VecF v) { _mm512_storeu_ps(p, v); }
IDFORGE_INLINE VecF vBroadcast(const float* p) { return _mm512_set1_ps(*p); }
IDFORGE_INLINE VecF vFma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
IDFORGE_INLINE VecF vFnma(VecF a, VecF b, VecF c) { return _mm512_fnmadd_ps(a, b, c); }  // c − a·b
IDFORGE_INLINE VecF vAdd(VecF a, VecF b) { return _mm512_add_ps(a, b); }
IDFORGE_INLINE VecF vSub(VecF a, VecF b) { return _mm512_sub_ps(a, b); }
IDFORGE_INLINE VecF vMul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
IDFORGE_INLINE VecF vDiv(VecF a, VecF b) { return _mm512_div_ps(a, b); }
IDFORGE_INLINE VecF vMax(VecF a, VecF b) { return _mm512_max_ps(a, b); }  // NaN in b passes
IDFORGE_INLINE VecF vMin(VecF a, VecF b) { return _mm512_min_ps(a, b); }
IDFORGE_INLINE VecF vAbs(VecF a) { return _mm512_abs_ps(a); }
IDFORGE_INLINE VecF vCopySign(VecF mag, VecF sign) {
  const __m512i m = _mm512_set1_epi32(int(0x80000000u));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), _mm512_and_si512(_mm512_castps_si512(sign), m)));
}
IDFORGE_INLINE float vSum(VecF v) { return _mm512_reduce_add_ps(v); }
IDFORGE_INLINE float vMaxAll(VecF v) { return _mm512_reduce_max_ps(v); }
IDFORGE_INLINE VecF vLoadHalf(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
IDFORGE_INLINE VecF vExp(VecF x) {
  // max/min return their second operand when either is NaN, so NaN passes through.
  x = _mm512_max_ps(_mm512_set1_ps(-104.f), x);
  x = _mm512_min_ps(_mm512_set1_ps(89.f), x);
  const VecF n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  VecF r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  VecF p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  // scalef does the 2^n scaling with correct overflow to inf and gradual underflow to 0.
  return _mm512_scalef_ps(p, n);
}
// Register tiles: 28 accumulators of the 32 zmm registers either way; wide for large N, narrow
// where N is small or padding N to 32 would waste more than 16 lanes (attention's dv = 40, 80).
constexpr int kWideMR = 14, kWideNV = 2, kNarrowMR = 28, kNarrowNV = 1;

#elif defined(IDFORGE_ISA_AVX2)
constexpr int kLanes = 8;
using VecF = __m256;
IDFORGE_INLINE VecF vZero() { return _mm256_setzero_ps(); }
IDFORGE_INLINE VecF vSet(float v) { return _mm256_set1_ps(v); }
IDFORGE_INLINE VecF vLoad(const float* p) { return _mm256_loadu_ps(p); }
IDFORGE_INLINE void vStore(float* p, VecF v) { _mm256_storeu_ps(p, v); }
IDFORGE_INLINE VecF vBroadcast(const float* p) { return _mm256_broadcast_ss(p); }
IDFORGE_INLINE VecF vFma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
IDFORGE_INLINE VecF vFnma(VecF a, VecF b, VecF c) { return _mm256_fnmadd_ps(a, b, c); }
IDFORGE_INLINE VecF vAdd(VecF a, VecF b) { return _mm256_add_ps(a, b); }
IDFORGE_INLINE VecF vSub(VecF a, VecF b) { return _mm256_sub_ps(a, b); }
IDFORGE_INLINE VecF vMul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
IDFORGE_INLINE VecF vDiv(VecF a, VecF b) { return _mm256_div_ps(a, b); }
IDFORGE_INLINE VecF vMax(VecF a, VecF b) { return _mm256_max_ps(a, b); }
IDFORGE_INLINE VecF vMin(VecF a, VecF b) { return _mm256_min_ps(a, b); }
IDFORGE_INLINE VecF vAbs(VecF a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
IDFORGE_INLINE VecF vCopySign(VecF mag, VecF sign) { return _mm256_or_ps(mag, _mm256_and_ps(sign, _mm256_set1_ps(-0.f))); }
IDFORGE_INLINE float vSum(VecF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
IDFORGE_INLINE float vMaxAll(VecF v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)));
}
IDFORGE_INLINE VecF vLoadHalf(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
IDFORGE_INLINE VecF vRound(VecF x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n for integral n in [-126, 127].
IDFORGE_INLINE VecF vPow2(VecF n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
// x > t ? a : (x < lo ? 0 : b)
IDFORGE_INLINE VecF vClampSelect(VecF x, float lo, float t, VecF a, VecF b) {
  const VecF y = _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_set1_ps(t), _CMP_GT_OQ));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_LT_OQ), y);
}
constexpr int kWideMR = 6, kWideNV = 2, kNarrowMR = 12, kNarrowNV = 1;

#elif defined(IDFORGE_ISA_SSE2)
constexpr int kLanes = 4;
using VecF = __m128;
IDFORGE_INLINE VecF vZero() { return _mm_setzero_ps(); }
IDFORGE_INLINE VecF vSet(float v) { return _mm_set1_ps(v); }
IDFORGE_INLINE VecF vLoad(const float* p) { return _mm_loadu_ps(p); }
IDFORGE_INLINE void vStore(float* p, VecF v) { _mm_storeu_ps(p, v); }
IDFORGE_INLINE VecF vBroadcast(const float* p) { return _mm_load1_ps(p); }
// No FMA before AVX2: a multiply and an add (two roundings).
IDFORGE_INLINE VecF vFma(VecF a, VecF b, VecF c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
IDFORGE_INLINE VecF vFnma(VecF a, VecF b, VecF c) { return _mm_sub_ps(c, _mm_mul_ps(a, b)); }
IDFORGE_INLINE VecF vAdd(VecF a, VecF b) { return _mm_add_ps(a, b); }
IDFORGE_INLINE VecF vSub(VecF a, VecF b) { return _mm_sub_ps(a, b); }
IDFORGE_INLINE VecF vMul(VecF a, VecF b) { return _mm_mul_ps(a, b); }
IDFORGE_INLINE VecF vDiv(VecF a, VecF b) { return _mm_div_ps(a, b); }
IDFORGE_INLINE VecF vMax(VecF a, VecF b) { return _mm_max_ps(a, b); }
IDFORGE_INLINE VecF vMin(VecF a, VecF b) { return _mm_min_ps(a, b); }
IDFORGE_INLINE VecF vAbs(VecF a) { return _mm_andnot_ps(_mm_set1_ps(-0.f), a); }
IDFORGE_INLINE VecF vCopySign(VecF mag, VecF sign) { return _mm_or_ps(mag, _mm_and_ps(sign, _mm_set1_ps(-0.f))); }
IDFORGE_INLINE float vSum(VecF s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
IDFORGE_INLINE float vMaxAll(VecF s) {
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)));
}
IDFORGE_INLINE VecF vLoadHalf(const uint16_t* p) {
  return _mm_setr_ps(halfBits(p[0]), halfBits(p[1]), halfBits(p[2]), halfBits(p[3]));
}
// Round to nearest through the integer conversion (MXCSR's default mode; |x| < 2^31 here).
IDFORGE_INLINE VecF vRound(VecF x) { return _mm_cvtepi32_ps(_mm_cvtps_epi32(x)); }
IDFORGE_INLINE VecF vPow2(VecF n) {
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
}
IDFORGE_INLINE VecF vClampSelect(VecF x, float lo, float t, VecF a, VecF b) {
  const VecF gt = _mm_cmpgt_ps(x, _mm_set1_ps(t));
  const VecF y = _mm_or_ps(_mm_and_ps(gt, a), _mm_andnot_ps(gt, b));
  return _mm_andnot_ps(_mm_cmplt_ps(x, _mm_set1_ps(lo)), y);
}
// 16 xmm registers: 12 accumulators, the B vectors and a broadcast.
constexpr int kWideMR = 6, kWideNV = 2, kNarrowMR = 12, kNarrowNV = 1;

#elif defined(IDFORGE_ISA_NEON)
constexpr int kLanes = 4;
using VecF = float32x4_t;
IDFORGE_INLINE VecF vZero() { return vdupq_n_f32(0.f); }
IDFORGE_INLINE VecF vSet(float v) { return vdupq_n_f32(v); }
IDFORGE_INLINE VecF vLoad(const float* p) { return vld1q_f32(p); }
IDFORGE_INLINE void vStore(float* p, VecF v) { vst1q_f32(p, v); }
IDFORGE_INLINE VecF vBroadcast(const float* p) { return vld1q_dup_f32(p); }
IDFORGE_INLINE VecF vFma(VecF a, VecF b, VecF c) { return vfmaq_f32(c, a, b); }
IDFORGE_INLINE VecF vFnma(VecF a, VecF b, VecF c) { return vfmsq_f32(c, a, b); }
IDFORGE_INLINE VecF vAdd(VecF a, VecF b) { return vaddq_f32(a, b); }
IDFORGE_INLINE VecF vSub(VecF a, VecF b) { return vsubq_f32(a, b); }
IDFORGE_INLINE VecF vMul(VecF a, VecF b) { return vmulq_f32(a, b); }
IDFORGE_INLINE VecF vDiv(VecF a, VecF b) { return vdivq_f32(a, b); }
// fmax/fmin return the number when one operand is NaN; vmaxq/vminq return NaN: NaN passes.
IDFORGE_INLINE VecF vMax(VecF a, VecF b) { return vmaxq_f32(a, b); }
IDFORGE_INLINE VecF vMin(VecF a, VecF b) { return vminq_f32(a, b); }
IDFORGE_INLINE VecF vAbs(VecF a) { return vabsq_f32(a); }
IDFORGE_INLINE VecF vCopySign(VecF mag, VecF sign) { return vbslq_f32(vdupq_n_u32(0x80000000u), sign, mag); }
IDFORGE_INLINE float vSum(VecF v) { return vaddvq_f32(v); }
IDFORGE_INLINE float vMaxAll(VecF v) { return vmaxvq_f32(v); }
IDFORGE_INLINE VecF vLoadHalf(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
IDFORGE_INLINE VecF vRound(VecF x) { return vrndnq_f32(x); }
IDFORGE_INLINE VecF vPow2(VecF n) {
  return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23));
}
IDFORGE_INLINE VecF vClampSelect(VecF x, float lo, float t, VecF a, VecF b) {
  const VecF y = vbslq_f32(vcgtq_f32(x, vdupq_n_f32(t)), a, b);
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), vcltq_f32(x, vdupq_n_f32(lo))));
}
// 32 q registers: 24 accumulators either way (12 rows x 2 vectors, 24 x 1); NR = 8 and 4 divide
// attention's key tile, which a 3-vector tile (12) would not.
constexpr int kWideMR = 12, kWideNV = 2, kNarrowMR = 24, kNarrowNV = 1;
#endif

#if !defined(IDFORGE_ISA_AVX512)
// exp with Cephes' range reduction and polynomial (max error ~2 ulp); NaN propagates, above
// ln(FLT_MAX) gives +inf, below ln(FLT_MIN) gives 0 (a masked −inf logit must weigh exactly 0).
IDFORGE_INLINE VecF vExp(VecF x0) {
  VecF x = vMax(vSet(-87.3365478515625f), x0);
  x = vMin(vSet(88.3762626647949f), x);
  const VecF n = vRound(vMul(x, vSet(1.44269504088896341f)));
  VecF r = vFnma(n, vSet(0.693359375f), x);
  r = vFnma(n, vSet(-2.12194440e-4f), r);
  VecF p = vSet(1.9875691500E-4f);
  p = vFma(p, r, vSet(1.3981999507E-3f));
  p = vFma(p, r, vSet(8.3334519073E-3f));
  p = vFma(p, r, vSet(4.1665795894E-2f));
  p = vFma(p, r, vSet(1.6666665459E-1f));
  p = vFma(p, r, vSet(5.0000001201E-1f));
  p = vFma(p, vMul(r, r), vAdd(r, vSet(1.f)));
  return vClampSelect(x0, -87.3365478515625f, 88.3762626647949f, vSet(INFINITY), vMul(p, vPow2(n)));
}
#endif

constexpr int kWideNR = kWideNV * kLanes;
constexpr int kNarrowNR = kNarrowNV * kLanes;
static_assert(kAttnKeys % kWideNR == 0 && kAttnKeys % kNarrowNR == 0, "attention's key tile must be whole NR panels");
static_assert(kGemmMC % kWideMR == 0 && kGemmMC % kNarrowMR == 0, "GEMM row blocks must be whole MR panels");

}  // namespace IDFORGE_ISA_NS
}  // namespace cpu
}  // namespace idforge
