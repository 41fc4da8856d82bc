#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../backend.h"
#include "parallel.h"

namespace idforge {
namespace cpu {

void* alignedAlloc(size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  void* p = n ? std::aligned_alloc(64, n) : std::aligned_alloc(64, 64);
  if (!p) throw Error("E_OOM", "cpu: cannot allocate " + std::to_string(bytes) + " bytes");
  return p;
}

void alignedFree(void* p) { std::free(p); }

namespace {
struct Scratch {
  float* p[8] = {};
  size_t n[8] = {};
  ~Scratch() {
    for (auto q : p) std::free(q);
  }
};
thread_local Scratch t_scratch;
}  // namespace

float* threadScratch(int slot, size_t n) {
  Scratch& s = t_scratch;
  if (s.n[slot] < n) {
    std::free(s.p[slot]);
    s.p[slot] = nullptr;
    s.n[slot] = 0;
    s.p[slot] = static_cast<float*>(alignedAlloc(n * sizeof(float)));
    s.n[slot] = n;
  }
  return s.p[slot];
}

GemmTile gemmTile(int64_t M, int64_t N) {
  (void)M;
  const GemmKernels& k = kern().gemm;
  // Pick the tile that pads N the least; on ties the wide one (fewer loads per FMA).
  const int64_t pw = roundUp(N, k.wide.nr), pn = roundUp(N, k.narrow.nr);
  return pn * 8 < pw * 7 ? k.narrow : k.wide;
}

const float* StridedA::get(int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* scratch) const {
  packA(offset(x_, i0 * rs_ + p0 * cs_), rs_, cs_, mc, kc, mr_, scratch);
  return scratch;
}

const float* StridedB::get(int64_t p0, int64_t kc, int64_t j0, int64_t nc, float* scratch) const {
  packB(offset(x_, p0 * rs_ + j0 * cs_), rs_, cs_, kc, nc, nr_, scratch);
  return scratch;
}

PackedA::PackedA(Operand x, int64_t rs, int64_t cs, int64_t M, int64_t K, int mr)
    : M_(M), K_(K), Mpad_(roundUp(M, mr)), mr_(mr) {
  data_ = static_cast<float*>(alignedAlloc(sizeof(float) * size_t(std::max<int64_t>(1, Mpad_ * K))));
  // Slab p0 holds all row panels for K range [p0, p0+kc), so a block (i0, p0) is contiguous.
  int64_t slabs = (K + kKC - 1) / kKC, panels = Mpad_ / mr;
  parallel_for(slabs * panels, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      int64_t p0 = (t / panels) * kKC, i0 = (t % panels) * mr;
      int64_t kc = std::min(kKC, K - p0), mc = std::min<int64_t>(mr, M - i0);
      packA(offset(x, i0 * rs + p0 * cs), rs, cs, mc, kc, mr, data_ + p0 * Mpad_ + i0 * kc);
    }
  });
}

PackedA::~PackedA() { alignedFree(data_); }

const float* PackedA::get(int64_t i0, int64_t, int64_t p0, int64_t kc, float*) const {
  return data_ + p0 * Mpad_ + i0 * kc;
}

void gemm(int64_t M, int64_t N, int64_t K, const GemmTile& t, const GemmA& A, const GemmB& B, float* C, int64_t ldc,
          bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; i++) std::memset(C + i * ldc, 0, sizeof(float) * size_t(N));
    return;
  }
  const int64_t mPanels = (M + t.mr - 1) / t.mr, nPanels = (N + t.nr - 1) / t.nr;
  const int T = numThreads();
  // Two tasks per thread balance the dynamic schedule; tiny products are not worth a dispatch.
  int64_t target = (T > 1 && double(M) * N * K > 4e5) ? 2 * T : 1;
  // Split C into tm x tn tasks. Every extra row split repacks B and every extra column split
  // repacks A (unless prepacked): pick the grid with the least packing, costed in multiply-adds
  // (packing a float costs about as much as 16 of them), plus idle time when too few tasks.
  int64_t tm = 1, tn = 1;
  double best = -1;
  for (int64_t m = 1; m <= std::min(mPanels, target); m++) {
    int64_t n = std::min(nPanels, (target + m - 1) / m);
    double cost = 16.0 * (double(m) * double(N) * double(K) + (A.prepacked() ? 0.0 : double(n) * double(M) * double(K)));
    if (m * n < target) cost += double(M) * double(N) * double(K) * double(target - m * n) / double(2 * target);
    if (best < 0 || cost < best) {
      best = cost;
      tm = m;
      tn = n;
    }
  }
  tn = std::max(tn, (N + kNCMax - 1) / kNCMax);
  const int64_t mChunk = (mPanels + tm - 1) / tm * t.mr, nChunk = (nPanels + tn - 1) / tn * t.nr;
  tm = (M + mChunk - 1) / mChunk;
  tn = (N + nChunk - 1) / nChunk;
  const GemmTile tile = t;
  auto task = [&](int64_t b, int64_t e) {
    float* bufB = threadScratch(0, size_t(kKC * nChunk));
    float* bufA = A.prepacked() ? nullptr : threadScratch(1, size_t(kKC * kMC));
    for (int64_t id = b; id < e; id++) {
      int64_t i0 = (id / tn) * mChunk, j0 = (id % tn) * nChunk;
      int64_t mc = std::min(mChunk, M - i0), nc = std::min(nChunk, N - j0);
      for (int64_t p0 = 0; p0 < K; p0 += kKC) {
        int64_t kc = std::min(kKC, K - p0);
        const float* Bp = B.get(p0, kc, j0, nc, bufB);
        for (int64_t i1 = i0; i1 < i0 + mc; i1 += kMC) {
          int64_t m1 = std::min(kMC, i0 + mc - i1);
          const float* Ap = A.get(i1, m1, p0, kc, bufA);
          gemmBlock(tile, m1, nc, kc, Ap, Bp, C + i1 * ldc + j0, ldc, accumulate || p0 > 0);
        }
      }
    }
  };
  if (tm * tn == 1)
    task(0, 1);
  else
    parallel_for(tm * tn, task, 1);
}

void gemmRowA(int64_t M, int64_t N, int64_t K, Operand A, int64_t lda, const GemmB& B, float* C, int64_t ldc,
              bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; i++) std::memset(C + i * ldc, 0, sizeof(float) * size_t(N));
    return;
  }
  const GemmKernels& gk = kern().gemm;
  const int64_t MR = gk.wide.mr, NR = gk.wide.nr;
  const int64_t nPad = roundUp(N, NR), mPanels = (M + MR - 1) / MR, slabs = (K + kKC - 1) / kKC;
  const int T = numThreads();
  const bool par = T > 1 && double(M) * N * K > 4e5;
  // B is small here (N <= kRowANMax): pack all of it once, shared by the row tasks, so no task
  // repacks it (for an im2col B that would cost as much as the product).
  float* Bp = static_cast<float*>(alignedAlloc(sizeof(float) * size_t(K * nPad)));
  struct Free {
    float* p;
    ~Free() { alignedFree(p); }
  } guard{Bp};
  auto packSlabs = [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; s++) {
      const int64_t p0 = s * kKC, kc = std::min(kKC, K - p0);
      float* dst = Bp + p0 * nPad;
      const float* src = B.get(p0, kc, 0, N, dst);
      if (src != dst) std::memcpy(dst, src, sizeof(float) * size_t(kc * nPad));
    }
  };
  if (par && slabs > 1) parallel_for(slabs, packSlabs, 1);
  else packSlabs(0, slabs);
  const int64_t tasks = std::min<int64_t>(mPanels, par ? 4 * T : 1);
  const int64_t mChunk = (mPanels + tasks - 1) / tasks * MR;
  auto task = [&](int64_t b, int64_t e) {
    float* scratch = threadScratch(1, size_t(kKC * MR));
    for (int64_t id = b; id < e; id++) {
      const int64_t i0 = id * mChunk, i1 = std::min(M, i0 + mChunk);
      for (int64_t p0 = 0; p0 < K; p0 += kKC) {
        const int64_t kc = std::min(kKC, K - p0);
        gk.rowA(i1 - i0, N, kc, offset(A, i0 * lda + p0), lda, Bp + p0 * nPad, C + i0 * ldc, ldc, accumulate || p0 > 0,
                scratch);
      }
    }
  };
  const int64_t nt = (mPanels * MR + mChunk - 1) / mChunk;
  if (nt <= 1) task(0, 1);
  else parallel_for(nt, task, 1);
}

void sgemm(int64_t M, int64_t N, int64_t K, Operand A, int64_t rsa, int64_t csa, Operand B, int64_t rsb,
           int64_t csb, float* C, int64_t ldc, bool accumulate) {
  GemmTile t = gemmTile(M, N);
  StridedA a(A, rsa, csa, t.mr);
  StridedB b(B, rsb, csb, t.nr);
  gemm(M, N, K, t, a, b, C, ldc, accumulate);
}

}  // namespace cpu
}  // namespace idforge
