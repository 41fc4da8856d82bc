// One variant's SGEMM kernels (included by native/cpu/isa/<isa>.cc inside its namespace, on top of
// simd.h): the register-blocked micro-kernel, the block loop over packed panels, packing (float32
// or half sources), the in-place-A path and attention's P·V product. A micro-kernel computes one
// MR x NR tile of C from an A sliver and a packed B panel ([kc][NR], NR contiguous floats per k).
// A is addressed as A[i*ars + k*ACS]: packed panels use ARS=1, ACS=MR; attention passes its own
// row-major score buffer with a compile-time row stride so no repacking is needed.
#pragma once

#include "kernels.h"
#include "simd.h"

namespace idforge {
namespace cpu {
namespace IDFORGE_ISA_NS {

constexpr int64_t kKC = kGemmKC;  // the depth of a K slab

// C[MR x NR] (row stride ldc) = (accumulate ? C : 0) + sum_k A(i, k) * B[k*NR + j], with
// A(i, k) = A[i*ars + k*ACS]. The sum is formed from zero and C added once at the end, not FMA'd
// onto C: C may hold a bias plus a fused residual (a skip connection, typically much larger than
// the product), and accumulating onto it would round every FMA at the residual's magnitude.
template <int MR, int NV, int ACS>
IDFORGE_INLINE void microTile(int64_t kc, const float* __restrict A, int64_t ars, const float* __restrict B,
                              float* __restrict C, int64_t ldc, bool accumulate) {
  constexpr int NR = NV * kLanes;
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
      const VecF a = vBroadcast(A + i * ars + k * ACS);
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
}

// A tile cut by the edge of C: the full tile into a scratch buffer (A and B are zero-padded),
// then only m x n elements written.
template <int MR, int NV, int ACS>
inline void microTileEdge(int64_t kc, const float* A, int64_t ars, const float* B, float* C, int64_t ldc, int64_t m,
                          int64_t n, bool accumulate) {
  constexpr int NR = NV * kLanes;
  alignas(64) float t[MR * NR];
  microTile<MR, NV, ACS>(kc, A, ars, B, t, NR, false);
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + t[i * NR + j] : t[i * NR + j];
}

template <int MR, int NV>
void blockLoop(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc,
               bool accumulate) {
  constexpr int NR = NV * kLanes;
  // B panel outer: it stays in L1 while the A panels of the block stream from L2.
  for (int64_t j = 0; j < nc; j += NR) {
    const float* b = Bp + j * kc;
    const int64_t n = imin<int64_t>(NR, nc - j);
    for (int64_t i = 0; i < mc; i += MR) {
      const float* a = Ap + i * kc;
      const int64_t m = imin<int64_t>(MR, mc - i);
      if (m == MR && n == NR) microTile<MR, NV, MR>(kc, a, 1, b, C + i * ldc + j, ldc, accumulate);
      else microTileEdge<MR, NV, MR>(kc, a, 1, b, C + i * ldc + j, ldc, m, n, accumulate);
    }
  }
}

void gemmBlock(const GemmTile& t, int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C,
               int64_t ldc, bool accumulate) {
  if (t.wide) blockLoop<kWideMR, kWideNV>(mc, nc, kc, Ap, Bp, C, ldc, accumulate);
  else blockLoop<kNarrowMR, kNarrowNV>(mc, nc, kc, Ap, Bp, C, ldc, accumulate);
}

// Pick the tile that pads N the least; on ties the wide one (fewer loads per FMA).
GemmTile tileFor(int64_t N) {
  const GemmTile wide{kWideMR, kWideNR, true}, narrow{kNarrowMR, kNarrowNR, false};
  const int64_t pw = (N + kWideNR - 1) / kWideNR * kWideNR, pn = (N + kNarrowNR - 1) / kNarrowNR * kNarrowNR;
  return pn * 8 < pw * 7 ? narrow : wide;
}

// ---- packing ---------------------------------------------------------------------------------

// dst[0, n) = X[0, n) as float32 (X float or half, contiguous).
IDFORGE_INLINE void loadRow(Operand X, int64_t off, int64_t n, float* dst) {
  if (!X.half) {
    std::memcpy(dst, static_cast<const float*>(X.p) + off, sizeof(float) * size_t(n));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(X.p) + off;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vStore(dst + i, vLoadHalf(s + i));
  for (; i < n; i++) dst[i] = halfBits(s[i]);
}

IDFORGE_INLINE float at(Operand X, int64_t i) {
  return X.half ? halfBits(static_cast<const uint16_t*>(X.p)[i]) : static_cast<const float*>(X.p)[i];
}

void packA(Operand X, int64_t rs, int64_t cs, int64_t mc, int64_t kc, int mr, float* dst) {
  alignas(64) float row[kKC];
  for (int64_t i0 = 0; i0 < mc; i0 += mr) {
    float* d = dst + i0 * kc;
    const int64_t m = imin<int64_t>(mr, mc - i0);
    if (cs == 1) {
      // Row-major source: read each row contiguously, write with stride mr (the panel is in L1).
      for (int64_t r = 0; r < m; r++) {
        const int64_t off = (i0 + r) * rs;
        if (X.half) {
          for (int64_t k0 = 0; k0 < kc; k0 += kKC) {
            const int64_t n = imin<int64_t>(kKC, kc - k0);
            loadRow(X, off + k0, n, row);
            for (int64_t k = 0; k < n; k++) d[(k0 + k) * mr + r] = row[k];
          }
        } else {
          const float* s = static_cast<const float*>(X.p) + off;
          for (int64_t k = 0; k < kc; k++) d[k * mr + r] = s[k];
        }
      }
      for (int64_t r = m; r < mr; r++)
        for (int64_t k = 0; k < kc; k++) d[k * mr + r] = 0.f;
    } else {
      for (int64_t k = 0; k < kc; k++) {
        const int64_t off = k * cs + i0 * rs;
        int64_t r = 0;
        if (rs == 1) {
          loadRow(X, off, m, d + k * mr);
          r = m;
        } else {
          for (; r < m; r++) d[k * mr + r] = at(X, off + r * rs);
        }
        for (; r < mr; r++) d[k * mr + r] = 0.f;
      }
    }
  }
}

void packB(Operand X, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int nr, float* dst) {
  alignas(64) float col[kKC];
  for (int64_t j0 = 0; j0 < nc; j0 += nr) {
    float* d = dst + j0 * kc;
    const int64_t n = imin<int64_t>(nr, nc - j0);
    if (cs == 1) {
      for (int64_t k = 0; k < kc; k++) {
        float* dk = d + k * nr;
        loadRow(X, k * rs + j0, n, dk);
        for (int64_t c = n; c < nr; c++) dk[c] = 0.f;
      }
    } else {
      // Column-major source (a linear layer's weight as B = Wᵀ): contiguous reads along k.
      for (int64_t c = 0; c < n; c++) {
        const int64_t off = (j0 + c) * cs;
        if (rs == 1 && X.half) {
          for (int64_t k0 = 0; k0 < kc; k0 += kKC) {
            const int64_t len = imin<int64_t>(kKC, kc - k0);
            loadRow(X, off + k0, len, col);
            for (int64_t k = 0; k < len; k++) d[(k0 + k) * nr + c] = col[k];
          }
        } else if (!X.half) {
          const float* s = static_cast<const float*>(X.p) + off;
          for (int64_t k = 0; k < kc; k++) d[k * nr + c] = s[k * rs];
        } else {
          for (int64_t k = 0; k < kc; k++) d[k * nr + c] = at(X, off + k * rs);
        }
      }
      for (int64_t c = n; c < nr; c++)
        for (int64_t k = 0; k < kc; k++) d[k * nr + c] = 0.f;
    }
  }
}

void halfToFloat(const uint16_t* src, float* dst, int64_t n) {
  Operand X;  // (no converting constructor here: kernels.h says why)
  X.p = src;
  X.half = true;
  loadRow(X, 0, n, dst);
}

// ---- A read in place (gemmRowA) and attention's P·V ------------------------------------------

void rowA(int64_t m, int64_t N, int64_t kc, Operand A, int64_t lda, const float* Bs, float* C, int64_t ldc,
          bool acc, float* scratch) {
  constexpr int MR = kWideMR, NV = kWideNV, NR = kWideNR;
  // The A sliver (MR x kc) stays in L1 across the column panels; a half or partial one is
  // converted / zero-padded into scratch first.
  for (int64_t i = 0; i < m; i += MR) {
    const int64_t mi = imin<int64_t>(MR, m - i);
    const bool inPlace = !A.half && mi == MR;
    const float* a = inPlace ? static_cast<const float*>(A.p) + i * lda : scratch;
    if (!inPlace) {
      Operand Ai = A;
      Ai.p = A.half ? static_cast<const void*>(static_cast<const uint16_t*>(A.p) + i * lda)
                    : static_cast<const void*>(static_cast<const float*>(A.p) + i * lda);
      packA(Ai, lda, 1, mi, kc, MR, scratch);
    }
    for (int64_t j = 0; j < N; j += NR) {
      const int64_t n = imin<int64_t>(NR, N - j);
      float* c = C + i * ldc + j;
      const float* b = Bs + j * kc;
      if (inPlace) {
        if (n == NR) microTile<MR, NV, 1>(kc, a, lda, b, c, ldc, acc);
        else microTileEdge<MR, NV, 1>(kc, a, lda, b, c, ldc, MR, n, acc);
      } else {
        if (mi == MR && n == NR) microTile<MR, NV, MR>(kc, a, 1, b, c, ldc, acc);
        else microTileEdge<MR, NV, MR>(kc, a, 1, b, c, ldc, mi, n, acc);
      }
    }
  }
}

template <int MR, int NV>
void pvProduct(int64_t rows, int64_t kc, int64_t dvPad, const float* P, const float* V, float* O) {
  constexpr int NR = NV * kLanes;
  for (int64_t j = 0; j < dvPad; j += NR)
    for (int64_t i = 0; i < rows; i += MR) microTile<MR, NV, 1>(kc, P + i * kAttnKeys, kAttnKeys, V + j * kc, O + i * dvPad + j, dvPad, true);
}

void pv(const GemmTile& t, int64_t rows, int64_t kc, int64_t dvPad, const float* P, const float* V, float* O) {
  if (kc <= 0) return;
  if (t.wide) pvProduct<kWideMR, kWideNV>(rows, kc, dvPad, P, V, O);
  else pvProduct<kNarrowMR, kNarrowNV>(rows, kc, dvPad, P, V, O);
}

// ---- the peak micro-benchmark ----------------------------------------------------------------

// 12 independent chains: two FMA pipes of 4-5 cycles' latency need at least 8-10 in flight, and 12
// accumulators plus two constants fit the 16 registers of SSE2 / AVX2.
double fmaLoop(int64_t iters, float* sink) {
  constexpr int N = 12;
  VecF acc[N];
#pragma GCC unroll 12
  for (int i = 0; i < N; i++) acc[i] = vSet(1.f + 0.001f * float(i));
  VecF a = vSet(0.9999999f), b = vSet(1e-7f);
  // a and b unknown to the compiler, so it cannot fold the chains (it did, for SSE2's mul + add of
  // constants: a stored constant and no loop). No barrier inside the loop: a "memory" clobber there
  // kept acc[] on the stack, a store and a load per FMA (the AVX-512 loop read 88 GFLOP/s where
  // linear layers ran at 208), and a per-register one made GCC spill the array too.
#if defined(__aarch64__)
  __asm__ volatile("" : "+w"(a), "+w"(b));
#else
  __asm__ volatile("" : "+x"(a), "+x"(b));
#endif
  for (int64_t k = 0; k < iters; k++) {
#pragma GCC unroll 12
#if defined(IDFORGE_ISA_NEON)
    for (int i = 0; i < N; i++) acc[i] = vFma(a, b, acc[i]);  // FMLA overwrites its addend: the chain is acc
#else
    for (int i = 0; i < N; i++) acc[i] = vFma(acc[i], a, b);  // not acc += a·b: SSE2's mul would be hoisted
#endif
  }
  VecF s = acc[0];
  for (int i = 1; i < N; i++) s = vAdd(s, acc[i]);
  *sink = vSum(s);
  return 2.0 * kLanes * N * double(iters);
}

}  // namespace IDFORGE_ISA_NS
}  // namespace cpu
}  // namespace idforge
