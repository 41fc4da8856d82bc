// One variant's Winograd F(m x m, 3 x 3) for 3x3 / stride 1 / pad 1 convolutions (Lavin & Gray
// 2015), included by native/cpu/isa/<isa>.cc inside its namespace on top of gemm_impl.h; the
// whole algorithm (transforms and their driver) compiles per variant, its products on that
// variant's own GEMM block, so no part of it ever mixes two variants' tiles.
//
// With alpha = m + 2, every m x m output tile of every image is
//   Y = Aᵀ [ Σ_c (G g_{o,c} Gᵀ) ⊙ (Bᵀ d_{c,tile} B) ] A,
// so the (alpha^2) element positions t of the transformed domain are independent products
//   M_t[O, tiles] = U_t[O, C] · V_t[C, tiles],
// each an ordinary GEMM. U and V are written by their transforms straight into the panel layouts
// the packed SGEMM consumes, so the GEMMs copy nothing; M_t comes back row-major and the output
// transform adds the bias (per channel or per image) and the residual while scattering tiles into y.
//
// Transforms are lane-parallel: 16 tiles at once for the input and output transforms, one A panel
// (MR output channels) at once for the weight transform, so the inner loops are plain vector
// arithmetic with compile-time coefficients (zero coefficients skipped, unit ones folded).
// Half (float16) weights are converted while being gathered for their transform.
//
// F(2,3) cuts the multiplies 2.25x, F(4,3) 4x; F(4,3) (points 0, ±1, ±2, ∞, as in Lavin) loses a
// little precision, measured by the op table's "wino" cases (test/helpers/opcases-paths.ts).
#pragma once

#include <type_traits>

#include "gemm_impl.h"

namespace idforge {
namespace cpu {
namespace IDFORGE_ISA_NS {

IDFORGE_INLINE int64_t roundUpTo(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
constexpr int64_t lcm(int64_t a, int64_t b) {
  int64_t x = a, y = b;
  while (y) {
    const int64_t t = x % y;
    x = y;
    y = t;
  }
  return a / x * b;
}

// parallel_for without std::function (kernels.h says why).
template <typename F>
void pfor(int64_t n, F&& f, int64_t grain = 0) {
  using Fn = typename std::remove_reference<F>::type;
  parallelForFn(n, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); }, &f, grain);
}

template <int M>
struct Mats;

template <>
struct Mats<2> {
  static constexpr int A = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct Mats<4> {
  static constexpr int A = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float G[6][3] = {{1.f / 4, 0, 0},
                                    {-1.f / 6, -1.f / 6, -1.f / 6},
                                    {-1.f / 6, 1.f / 6, -1.f / 6},
                                    {1.f / 24, 1.f / 12, 1.f / 6},
                                    {1.f / 24, -1.f / 12, 1.f / 6},
                                    {0, 0, 1}};
  static constexpr float AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

// out[:L] = c·in (first term) or out += c·in, with the ±1 coefficients as copies and adds.
template <int L>
IDFORGE_INLINE void addScaled(float* __restrict out, const float* __restrict in, float c, bool first) {
  if (first) {
    if (c == 1.f)
      for (int v = 0; v < L; v++) out[v] = in[v];
    else if (c == -1.f)
      for (int v = 0; v < L; v++) out[v] = -in[v];
    else
      for (int v = 0; v < L; v++) out[v] = c * in[v];
  } else if (c == 1.f) {
    for (int v = 0; v < L; v++) out[v] += in[v];
  } else if (c == -1.f) {
    for (int v = 0; v < L; v++) out[v] -= in[v];
  } else {
    for (int v = 0; v < L; v++) out[v] += c * in[v];
  }
}

// Y[i][j][:] = Σ_k Σ_l P[i][k] X[k][l][:] P[j][l] for R x K coefficients P and L lanes.
template <int R, int K, int L>
inline void xform(const float (&P)[R][K], const float* __restrict X, float* __restrict Y) {
  alignas(64) float T[R * K * L];
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int l = 0; l < K; l++) {
      float* t = T + (i * K + l) * L;
      bool first = true;
#pragma GCC unroll 8
      for (int k = 0; k < K; k++) {
        if (P[i][k] == 0.f) continue;
        addScaled<L>(t, X + (k * K + l) * L, P[i][k], first);
        first = false;
      }
      if (first)
        for (int v = 0; v < L; v++) t[v] = 0.f;
    }
#pragma GCC unroll 8
  for (int i = 0; i < R; i++)
#pragma GCC unroll 8
    for (int j = 0; j < R; j++) {
      float* y = Y + (i * R + j) * L;
      bool first = true;
#pragma GCC unroll 8
      for (int l = 0; l < K; l++) {
        if (P[j][l] == 0.f) continue;
        addScaled<L>(y, T + (i * K + l) * L, P[j][l], first);
        first = false;
      }
      if (first)
        for (int v = 0; v < L; v++) y[v] = 0.f;
    }
}

constexpr int kL = 16;  // tiles per lane group

// Floats between the U_t blocks of a task: mb * kc is a multiple of 4096 bytes, and 16-36 store
// streams that far apart would all land in the same L1 set; one cache line of skew per t spreads them.
inline int64_t uStride(int64_t mb, int64_t kc) { return mb * kc + 16; }

// dst[0, n) = src[0, n) for src 64-byte aligned and just written by vector stores: whole-vector
// loads (memcpy's overlapping unaligned tail load would miss store forwarding and stall).
template <int N>
inline void copyLanes(float* dst, const float* src) {
#if defined(IDFORGE_ISA_AVX512)
  for (int v = 0; v + 16 <= N; v += 16) _mm512_storeu_ps(dst + v, _mm512_load_ps(src + v));
  if (N % 16) _mm512_mask_storeu_ps(dst + N / 16 * 16, __mmask16((1u << (N % 16)) - 1), _mm512_load_ps(src + N / 16 * 16));
#else
  for (int v = 0; v < N; v++) dst[v] = src[v];
#endif
}

#if defined(IDFORGE_ISA_AVX512)
// dst[j * ld + r] = src[r][off + j] for j, r < 16 (src[r] null: zeros; half sources converted).
inline void transpose16(const void* const* src, bool half, int off, float* dst, int ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; i++)
    r[i] = !src[i] ? _mm512_setzero_ps()
           : half  ? vLoadHalf(static_cast<const uint16_t*>(src[i]) + off)
                   : _mm512_loadu_ps(static_cast<const float*>(src[i]) + off);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // Per 128-bit lane: r[4g + c] now holds column (4 * lane + c) of rows 4g .. 4g + 3.
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int c = 0; c < 4; c++) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    _mm512_store_ps(dst + (c + 0) * ld, _mm512_shuffle_f32x4(v0, w0, 0x88));
    _mm512_store_ps(dst + (c + 8) * ld, _mm512_shuffle_f32x4(v0, w0, 0xDD));
    _mm512_store_ps(dst + (c + 4) * ld, _mm512_shuffle_f32x4(v1, w1, 0x88));
    _mm512_store_ps(dst + (c + 12) * ld, _mm512_shuffle_f32x4(v1, w1, 0xDD));
  }
}
#endif

// U_t for output rows [o0, o0 + mb) (mb a multiple of MR) and input channels [p0, p0 + kc), in
// the driver's A panel layout: Ub[t * ts + (panel * kc + k) * MR + r], ts = uStride(mb, kc). Lanes are the MR rows
// of a panel (padded to whole vectors); the 3x3 kernels of 16 channels are gathered into lane
// order first, in one pass over each row's contiguous 144 floats, then transformed one by one
// (gathering and transforming channel by channel stalls on store forwarding).
template <int M, int MR>
void weightBlock(Operand w, int64_t O, int64_t C, int64_t o0, int64_t mb, int64_t p0, int64_t kc, float* Ub) {
  const int64_t ts = uStride(mb, kc);
  constexpr int A = Mats<M>::A, L = (MR + 15) / 16 * 16, KB = 16;
  alignas(64) float g[KB * 9 * L];
  alignas(64) float u[A * A * L];
  std::memset(g, 0, sizeof(g));
  for (int64_t pnl = 0; pnl < mb / MR; pnl++) {
    const int64_t ob = o0 + pnl * MR, rows = imax<int64_t>(0, imin<int64_t>(MR, O - ob));
    if (rows < MR) std::memset(g, 0, sizeof(g));
    for (int64_t k0 = 0; k0 < kc; k0 += KB) {
      const int kn = int(imin<int64_t>(KB, kc - k0));
#if defined(IDFORGE_ISA_AVX512)
      if (kn == KB) {
        // 16 rows x 144 floats -> [144][16 lanes], as 9 x (lanes / 16) 16x16 transposes.
        for (int r0 = 0; r0 < L; r0 += 16) {
          const void* src[16];
          for (int r = 0; r < 16; r++) {
            const int64_t off = ((ob + r0 + r) * C + p0 + k0) * 9;
            src[r] = r0 + r >= rows ? nullptr
                     : w.half       ? static_cast<const void*>(static_cast<const uint16_t*>(w.p) + off)
                                    : static_cast<const void*>(static_cast<const float*>(w.p) + off);
          }
          for (int q = 0; q < 9; q++) transpose16(src, w.half, q * 16, g + q * 16 * L + r0, L);
        }
        goto transform;
      }
#endif
      for (int64_t r = 0; r < rows; r++) {
        const int64_t off = ((ob + r) * C + p0 + k0) * 9;
        if (w.half) {
          float s[KB * 9];
          const uint16_t* h = static_cast<const uint16_t*>(w.p) + off;
          for (int q = 0; q < kn * 9; q++) s[q] = halfBits(h[q]);
          for (int k = 0; k < kn; k++)
            for (int e = 0; e < 9; e++) g[(k * 9 + e) * L + r] = s[k * 9 + e];
        } else {
          const float* s = static_cast<const float*>(w.p) + off;
          for (int k = 0; k < kn; k++)
            for (int e = 0; e < 9; e++) g[(k * 9 + e) * L + r] = s[k * 9 + e];
        }
      }
#if defined(IDFORGE_ISA_AVX512)
    transform:
#endif
      for (int k = 0; k < kn; k++) {
        xform<A, 3, L>(Mats<M>::G, g + k * 9 * L, u);
        float* d = Ub + (pnl * kc + k0 + k) * MR;
        for (int t = 0; t < A * A; t++) copyLanes<MR>(d + t * ts, u + t * L);
      }
    }
  }
}

template <int M>
void run(const float* x, Operand w, const EpilogueData& e, float* y, int64_t B, int64_t C, int64_t H, int64_t W,
         int64_t O) {
  constexpr int A = Mats<M>::A, AA = A * A;
  const int64_t tH = (H + M - 1) / M, tW = (W + M - 1) / M, tPer = tH * tW, NT = B * tPer;
  const GemmTile tile = tileFor(NT);
  const int64_t nr = tile.nr, mr = tile.mr;
  // Columns padded to whole lane groups and whole B panels.
  const int64_t Npad = roundUpTo(NT, lcm(nr, kL)), groups = Npad / kL;
  const size_t vN = size_t(AA * C * Npad), mN = size_t(AA * O * Npad);
  // One growing buffer per thread (tens of MB: allocating it per call would page-fault it all in).
  float* V = threadScratch(7, vN + mN);
  float* Mo = V + vN;

  // Per tile: offset of its input origin (may be negative: pad) and which of the alpha rows and
  // columns of its input patch lie inside the image.
  struct Lane {
    int64_t in, out;  // x offset of patch origin (image, row, col); y offset of output tile origin
    int64_t img;
    uint16_t rows, cols;  // bitmasks of in-image patch rows / cols
    uint8_t orows, ocols;  // output rows / cols of the tile inside the image
    bool interior;
  };
  Lane* lanes = static_cast<Lane*>(alignedAlloc(sizeof(Lane) * size_t(Npad)));
  struct Free {
    void* p;
    ~Free() { alignedFree(p); }
  } guard{lanes};
  for (int64_t n = 0; n < Npad; n++) {
    Lane& L = lanes[n];
    if (n >= NT) {
      L = Lane{0, 0, 0, 0, 0, 0, 0, false};
      continue;
    }
    const int64_t b = n / tPer, ty = (n % tPer) / tW, tx = n % tW;
    const int64_t iy0 = ty * M - 1, ix0 = tx * M - 1;
    L.in = b * C * H * W + iy0 * W + ix0;
    L.out = b * O * H * W + ty * M * W + tx * M;
    L.img = b;
    L.rows = L.cols = 0;
    for (int i = 0; i < A; i++) {
      if (iy0 + i >= 0 && iy0 + i < H) L.rows |= uint16_t(1u << i);
      if (ix0 + i >= 0 && ix0 + i < W) L.cols |= uint16_t(1u << i);
    }
    L.interior = L.rows == (1u << A) - 1 && L.cols == (1u << A) - 1;
    L.orows = uint8_t(imin<int64_t>(M, H - ty * M));
    L.ocols = uint8_t(imin<int64_t>(M, W - tx * M));
  }

  // Input transform: V_t[c][n] in B panel layout.
  pfor(groups * C, [&](int64_t ib, int64_t ie) {
    alignas(64) float d[AA * kL];
    alignas(64) float v[AA * kL];
    for (int64_t it = ib; it < ie; it++) {
      const int64_t g = it / C, c = it % C, n0 = g * kL;
      const Lane* ln = lanes + n0;
      const float* xc = x + c * H * W;
      for (int l = 0; l < kL; l++) {
        const Lane& L = ln[l];
        const float* p = xc + L.in;
        if (L.interior) {
          for (int i = 0; i < A; i++)
            for (int j = 0; j < A; j++) d[(i * A + j) * kL + l] = p[i * W + j];
        } else {
          for (int i = 0; i < A; i++)
            for (int j = 0; j < A; j++)
              d[(i * A + j) * kL + l] = ((L.rows >> i) & (L.cols >> j) & 1) ? p[i * W + j] : 0.f;
        }
      }
      xform<A, A, kL>(Mats<M>::BT, d, v);
      const int64_t p0 = c / kKC * kKC, kc = imin(kKC, C - p0);
      // 16 columns: one run within a B panel when nr >= 16, else 16 / nr runs (portable builds).
      for (int64_t l = 0; l < kL;) {
        const int64_t n = n0 + l, run = imin<int64_t>(kL - l, nr - n % nr);
        const int64_t off = p0 * Npad + (n / nr) * nr * kc + (c - p0) * nr + n % nr;
        for (int t = 0; t < AA; t++) std::memcpy(V + t * C * Npad + off, v + t * kL + l, sizeof(float) * size_t(run));
        l += run;
      }
    }
  });

  // The AA products, fused with the weight transform: a task owns a block of mb output rows (and
  // a column chunk), transforms its weights one K slab at a time into L2-resident panels for all
  // t and multiplies them right away, so U never goes to memory.
  {
    const int T = numThreads();
    const int64_t mb = imax<int64_t>(1, 112 / mr) * mr;
    const int64_t rowBlocks = (O + mb - 1) / mb, nPanels = Npad / nr;
    int64_t colChunks = 1;
    if (T > 1 && rowBlocks < 2 * T) colChunks = imin<int64_t>(nPanels, (2 * T + rowBlocks - 1) / rowBlocks);
    const int64_t nChunk = (nPanels + colChunks - 1) / colChunks * nr;
    colChunks = (Npad + nChunk - 1) / nChunk;
    pfor(rowBlocks * colChunks, [&](int64_t tb, int64_t te) {
      float* Ub = threadScratch(6, size_t(AA * uStride(mb, kKC)));
      for (int64_t task = tb; task < te; task++) {
        const int64_t o0 = (task / colChunks) * mb, j0 = (task % colChunks) * nChunk;
        const int64_t mc = imin(mb, O - o0), nc = imin(nChunk, NT - j0);
        if (nc <= 0) continue;
        for (int64_t p0 = 0; p0 < C; p0 += kKC) {
          const int64_t kc = imin(kKC, C - p0);
          if (mr == kWideMR)
            weightBlock<M, kWideMR>(w, O, C, o0, mb, p0, kc, Ub);
          else
            weightBlock<M, kNarrowMR>(w, O, C, o0, mb, p0, kc, Ub);
          for (int t = 0; t < AA; t++)
            gemmBlock(tile, mc, nc, kc, Ub + t * uStride(mb, kc), V + t * C * Npad + p0 * Npad + j0 * kc,
                      Mo + t * O * Npad + o0 * Npad + j0, Npad, p0 > 0);
        }
      }
    }, 1);
  }
  // Output transform (+ bias + residual) into y.
  const int64_t ogroups = (NT + kL - 1) / kL;
  pfor(ogroups * O, [&](int64_t ib, int64_t ie) {
    alignas(64) float m[AA * kL];
    alignas(64) float r[M * M * kL];
    for (int64_t it = ib; it < ie; it++) {
      const int64_t g = it / O, o = it % O, n0 = g * kL;
      const int lanesN = int(imin<int64_t>(kL, NT - n0));
      for (int t = 0; t < AA; t++) {
        const float* s = Mo + (t * O + o) * Npad + n0;
        if (lanesN == kL)
          std::memcpy(m + t * kL, s, sizeof(float) * kL);
        else
          for (int l = 0; l < kL; l++) m[t * kL + l] = l < lanesN ? s[l] : 0.f;
      }
      xform<M, A, kL>(Mats<M>::AT, m, r);
      float* yo = y + o * H * W;
      const float* ro = e.residual ? e.residual + o * H * W : nullptr;
      for (int l = 0; l < lanesN; l++) {
        const Lane& L = lanes[n0 + l];
        const float bv = e.bias ? e.bias[L.img * e.biasImageStride + o] : 0.f;
        float* dst = yo + L.out;
        if (ro) {
          const float* res = ro + L.out;
          for (int i = 0; i < L.orows; i++)
            for (int j = 0; j < L.ocols; j++) dst[i * W + j] = r[(i * M + j) * kL + l] + bv + res[i * W + j];
        } else {
          for (int i = 0; i < L.orows; i++)
            for (int j = 0; j < L.ocols; j++) dst[i * W + j] = r[(i * M + j) * kL + l] + bv;
        }
      }
    }
  });
}


void winogradConv(int m, const float* x, Operand w, const EpilogueData& e, float* y, int64_t B, int64_t C, int64_t H,
                  int64_t W, int64_t O) {
  if (m == 4) run<4>(x, w, e, y, B, C, H, W, O);
  else run<2>(x, w, e, y, B, C, H, W, O);
}

}  // namespace IDFORGE_ISA_NS
}  // namespace cpu
}  // namespace idforge
