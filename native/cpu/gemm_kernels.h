// Register-blocked SGEMM microkernels (internal to native/cpu). A microkernel computes one
// MR x NR tile of C from an A sliver and a packed B panel ([kc][NR], NR contiguous floats per k).
// A is addressed as A[i*ARS + k*ACS]: packed panels use ARS=1, ACS=MR; attention passes its own
// row-major score buffer with a compile-time row stride so no repacking is needed.
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

// GCC 12's avx512fintrin.h seeds results with a self-initialised `__Y = __Y`, which -Wall reports
// as maybe-uninitialized at every inlined call site; the warning is spurious.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace idforge {
namespace cpu {

#if defined(__AVX512F__)
#define IDFORGE_GEMM_ISA "avx512"
constexpr int kLanes = 16;
using VecF = __m512;
inline VecF vZero() { return _mm512_setzero_ps(); }
inline VecF vLoad(const float* p) { return _mm512_loadu_ps(p); }
inline void vStore(float* p, VecF v) { _mm512_storeu_ps(p, v); }
inline VecF vBroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline VecF vFma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline VecF vAdd(VecF a, VecF b) { return _mm512_add_ps(a, b); }
// Two tile shapes, both 28 accumulators of the 32 zmm registers: wide for large N, narrow
// where N is small or padding N to 32 would waste more than 16 lanes (attention's dv = 40, 80).
constexpr int kWideMR = 14, kWideNV = 2;
constexpr int kNarrowMR = 28, kNarrowNV = 1;
#elif defined(__AVX2__) && defined(__FMA__)
#define IDFORGE_GEMM_ISA "avx2"
constexpr int kLanes = 8;
using VecF = __m256;
inline VecF vZero() { return _mm256_setzero_ps(); }
inline VecF vLoad(const float* p) { return _mm256_loadu_ps(p); }
inline void vStore(float* p, VecF v) { _mm256_storeu_ps(p, v); }
inline VecF vBroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline VecF vFma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline VecF vAdd(VecF a, VecF b) { return _mm256_add_ps(a, b); }
constexpr int kWideMR = 6, kWideNV = 2;
constexpr int kNarrowMR = 12, kNarrowNV = 1;
#else
#define IDFORGE_GEMM_ISA "portable"
#define IDFORGE_GEMM_PORTABLE 1
// Plain arrays GCC vectorises at -O3; sized for 16 SSE registers.
constexpr int kLanes = 4;
constexpr int kWideMR = 4, kWideNV = 2;
constexpr int kNarrowMR = 8, kNarrowNV = 1;
#endif

constexpr int kWideNR = kWideNV * kLanes;
constexpr int kNarrowNR = kNarrowNV * kLanes;
constexpr int kMaxMR = kWideMR > kNarrowMR ? kWideMR : kNarrowMR;
constexpr int kMaxNR = kWideNR > kNarrowNR ? kWideNR : kNarrowNR;

// C[MR x NR] (row stride ldc) = (accumulate ? C : 0) + sum_k A(i, k) * B[k*NR + j], with
// A(i, k) = A[i*ars + k*ACS]. The sum is formed from zero and C added once at the end, not FMA'd
// onto C: C may hold a bias plus a fused residual (a skip connection, typically much larger than
// the product), and accumulating onto it would round every FMA at the residual's magnitude.
// Always inlined, so that a compile-time row stride (packed panels) folds into the addressing
// as if it were a template argument.
template <int MR, int NV, int ACS>
__attribute__((always_inline)) inline void microTile(int64_t kc, const float* __restrict A, int64_t ars,
                                                     const float* __restrict B, float* __restrict C, int64_t ldc,
                                                     bool accumulate) {
  constexpr int NR = NV * kLanes;
#ifndef IDFORGE_GEMM_PORTABLE
  VecF c[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) c[i][v] = vZero();
  for (int64_t k = 0; k < kc; k++) {
    VecF b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) b[v] = vLoad(B + k * NR + v * kLanes);
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++) {
      VecF a = vBroadcast(A + i * ars + k * ACS);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) c[i][v] = vFma(a, b[v], c[i][v]);
    }
  }
  if (accumulate) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) vStore(C + i * ldc + v * kLanes, vAdd(vLoad(C + i * ldc + v * kLanes), c[i][v]));
  } else {
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) vStore(C + i * ldc + v * kLanes, c[i][v]);
  }
#else
  float c[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) c[i][j] = 0.f;
  for (int64_t k = 0; k < kc; k++) {
    const float* b = B + k * NR;
    for (int i = 0; i < MR; i++) {
      float a = A[i * ars + k * ACS];
      for (int j = 0; j < NR; j++) c[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + c[i][j] : c[i][j];
#endif
}

// Packed A panels: A(i, k) = A[i*ARS + k*ACS].
template <int MR, int NV, int ARS, int ACS>
inline void microKernel(int64_t kc, const float* __restrict A, const float* __restrict B,
                        float* __restrict C, int64_t ldc, bool accumulate) {
  microTile<MR, NV, ACS>(kc, A, ARS, B, C, ldc, accumulate);
}

// A row-major in place (A(i, k) = A[i*lda + k], runtime lda): for weight-bound products (small
// images, few tokens) where packing the weights would cost more than multiplying them.
template <int MR, int NV>
inline void microKernelRowA(int64_t kc, const float* __restrict A, int64_t lda, const float* __restrict B,
                            float* __restrict C, int64_t ldc, bool accumulate) {
  microTile<MR, NV, 1>(kc, A, lda, B, C, ldc, accumulate);
}

// Same, for a tile cut by the edge of C: computes the full tile into a scratch buffer (A and B
// are zero-padded) and writes only m x n elements.
template <int MR, int NV, int ARS, int ACS>
inline void microKernelEdge(int64_t kc, const float* A, const float* B, float* C, int64_t ldc,
                            int64_t m, int64_t n, bool accumulate) {
  constexpr int NR = NV * kLanes;
  alignas(64) float t[MR * NR];
  microKernel<MR, NV, ARS, ACS>(kc, A, B, t, NR, false);
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + t[i * NR + j] : t[i * NR + j];
}

}  // namespace cpu
}  // namespace idforge
