// Fused fp16 attention, FlashAttention-2 style: one block of 4 or 8 warps per (batch·head, 16
// query rows per warp); K/V tiles of 64 keys stream through shared memory (cp.async, double-buffered), scores
// and probabilities never leave registers (mma.sync m16n8k16, fp32 accumulation, online softmax
// in exp2 units). Head dims 40, 64, 80 and 160 are instantiated (40 pads its k-dim to 48 with
// zeros). With capture a second pass recomputes the scores and writes exp(s − lse): layers that
// do not capture run the one-pass kernel and pay nothing for it. A region table masks scores like
// the causal mask does (native/regions.h: the query's regions once per row, the key's owner per score).
#include <cfloat>
#include <mutex>

#include "attention.h"

namespace idforge {
namespace cuda {

namespace {

constexpr int BN = 64;

// W warps, 16 query rows each. 8 warps halve the K/V traffic from L2 per FLOP (each block
// streams the head's whole K and V), which is what limits long sequences; 4 warps make more
// blocks when there are too few query tiles to fill the GPU.
template <int D, int W>
struct Cfg {
  static constexpr int BM = 16 * W, THREADS = 32 * W;
  static constexpr int DP = (D + 15) / 16 * 16;  // k-dim of QKᵀ, padded to the mma's 16
  static constexpr int STR = DP + 8;             // smem row stride (halves): +16 bytes keeps ldmatrix conflict-free
  static constexpr int KSTEPS = DP / 16;
  static constexpr int NBO = D / 8;              // 8-wide output column blocks
  static constexpr int CHUNKS = D / 8;           // 16-byte chunks per row
  static constexpr int SMEM = (BM + 4 * BN) * STR * 2;
};

__device__ __forceinline__ uint32_t smemAddr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm4(uint32_t* r, uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm4t(uint32_t* r, uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm2t(uint32_t* r, uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// rows [r0, r0 + rows) of a [N, rowStride] fp16 matrix (D columns from col0) into smem; rows past
// N are zero-filled so that masked keys contribute 0·V, never 0·garbage.
template <int D, int W, int ROWS>
__device__ __forceinline__ void loadTile(__half* dst, const __half* src, int64_t rowStride, int r0, int N) {
  constexpr int C = Cfg<D, W>::CHUNKS;
  for (int i = threadIdx.x; i < ROWS * C; i += Cfg<D, W>::THREADS) {
    int r = i / C, ch = i - r * C;
    bool ok = r0 + r < N;
    const __half* s = ok ? src + int64_t(r0 + r) * rowStride + ch * 8 : src;
    cpAsync16(smemAddr(dst + r * Cfg<D, W>::STR + ch * 8), s, ok);
  }
}

// S = Q·Kᵀ for this warp's 16 rows and the 64 keys of the tile in Ks (in exp2 units).
template <int D>
__device__ __forceinline__ void scores(float (&s)[BN / 8][4], const uint32_t (&qf)[Cfg<D, 4>::KSTEPS][4],
                                       const __half* Ks, int lane) {
  using C = Cfg<D, 4>;  // the k-dim layout does not depend on the warp count
#pragma unroll
  for (int nb = 0; nb < BN / 8; nb++) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
  for (int ks = 0; ks < C::KSTEPS; ks++) {
#pragma unroll
    for (int np = 0; np < BN / 16; np++) {
      uint32_t b[4];
      int row = np * 16 + (lane & 7) + ((lane >> 4) << 3);
      int col = ks * 16 + (((lane >> 3) & 1) << 3);
      ldsm4(b, smemAddr(Ks + row * C::STR + col));
      mma(s[2 * np], qf[ks], b[0], b[1]);
      mma(s[2 * np + 1], qf[ks], b[2], b[3]);
    }
  }
}

template <int D, bool CAPTURE, int W>
__global__ void __launch_bounds__(32 * W) flashKernel(AttnParams p) {
  using C = Cfg<D, W>;
  constexpr int BM = C::BM, THREADS = C::THREADS;
  extern __shared__ __align__(16) unsigned char smemRaw[];
  __half* Qs = reinterpret_cast<__half*>(smemRaw);
  __half* Ks = Qs + BM * C::STR;  // [2][BN][STR]
  __half* Vs = Ks + 2 * BN * C::STR;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int q0 = blockIdx.x * BM;
  const __half* qp = static_cast<const __half*>(p.q) + int64_t(b) * p.Nq * p.qRow + h * D;
  const __half* kp = static_cast<const __half*>(p.k) + int64_t(b) * p.Nk * p.kRow + h * D;
  const __half* vp = static_cast<const __half*>(p.v) + int64_t(b) * p.Nk * p.vRow + h * D;

  if (C::DP != D) {  // the k-dim padding columns of Q and K are never written by cp.async
    for (int r = threadIdx.x; r < BM + 2 * BN; r += THREADS)
      for (int c = D; c < C::DP; c++) Qs[r * C::STR + c] = __float2half(0.f);
  }
  loadTile<D, W, BM>(Qs, qp, p.qRow, q0, p.Nq);
  loadTile<D, W, BN>(Ks, kp, p.kRow, 0, p.Nk);
  loadTile<D, W, BN>(Vs, vp, p.vRow, 0, p.Nk);
  cpCommit();

  const int nkTiles = (p.Nk + BN - 1) / BN;
  const int nTiles = p.causal ? min(nkTiles, (min(q0 + BM, p.Nq) - 1) / BN + 1) : nkTiles;
  const int rowA = q0 + warp * 16 + g;  // this thread's rows: rowA and rowA + 8
  const uint32_t inside[2] = {rowA < p.Nq ? regionsOf(p.rg, b, rowA) : 0u, rowA + 8 < p.Nq ? regionsOf(p.rg, b, rowA + 8) : 0u};

  uint32_t qf[C::KSTEPS][4];
  float acc[C::NBO][4];
#pragma unroll
  for (int i = 0; i < C::NBO; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int j = 0; j < nTiles; j++) {
    const int st = j & 1;
    if (j + 1 < nTiles) {
      loadTile<D, W, BN>(Ks + (st ^ 1) * BN * C::STR, kp, p.kRow, (j + 1) * BN, p.Nk);
      loadTile<D, W, BN>(Vs + (st ^ 1) * BN * C::STR, vp, p.vRow, (j + 1) * BN, p.Nk);
      cpCommit();
      cpWait<1>();
    } else {
      cpWait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int ks = 0; ks < C::KSTEPS; ks++)
        ldsm4(qf[ks], smemAddr(Qs + (warp * 16 + (lane & 15)) * C::STR + ks * 16 + ((lane >> 4) << 3)));
    }
    float s[BN / 8][4];
    scores<D>(s, qf, Ks + st * BN * C::STR, lane);

    const int kv0 = j * BN;
    const bool needMask = kv0 + BN > p.Nk || (p.causal && kv0 + BN - 1 > q0) || p.rg.table;
#pragma unroll
    for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        float v = s[nb][c] * p.scaleLog2;
        if (needMask) {
          int key = kv0 + nb * 8 + 2 * t + (c & 1);
          int row = rowA + ((c >> 1) << 3);
          if (key >= p.Nk || (p.causal && key > row) || regionHides(p.rg, b, key, inside[c >> 1])) v = -INFINITY;
        }
        s[nb][c] = v;
      }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < BN / 8; nb++) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
      float mNew = fmaxf(m[r], mx);
      float mUse = mNew == -INFINITY ? 0.f : mNew;  // a row masked so far must give 0, not NaN
      float corr = exp2f(m[r] - mUse);
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < BN / 8; nb++) {
        s[nb][2 * r] = exp2f(s[nb][2 * r] - mUse);
        s[nb][2 * r + 1] = exp2f(s[nb][2 * r + 1] - mUse);
        sum += s[nb][2 * r] + s[nb][2 * r + 1];
      }
      l[r] = l[r] * corr + sum;  // per-thread partial row sum; the quad is reduced once at the end
      m[r] = mNew;
#pragma unroll
      for (int i = 0; i < C::NBO; i++) {
        acc[i][2 * r] *= corr;
        acc[i][2 * r + 1] *= corr;
      }
    }
    // O += P·V: the score accumulators are already laid out as the mma's A fragments.
    const __half* Vt = Vs + st * BN * C::STR;
#pragma unroll
    for (int kb = 0; kb < BN / 16; kb++) {
      uint32_t a[4] = {pack(s[2 * kb][0], s[2 * kb][1]), pack(s[2 * kb][2], s[2 * kb][3]),
                       pack(s[2 * kb + 1][0], s[2 * kb + 1][1]), pack(s[2 * kb + 1][2], s[2 * kb + 1][3])};
      const int key = kb * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
      for (int np = 0; np < C::NBO / 2; np++) {
        uint32_t bv[4];
        ldsm4t(bv, smemAddr(Vt + key * C::STR + np * 16 + ((lane >> 4) << 3)));
        mma(acc[2 * np], a, bv[0], bv[1]);
        mma(acc[2 * np + 1], a, bv[2], bv[3]);
      }
      if (C::NBO & 1) {
        uint32_t bv[2];
        ldsm2t(bv, smemAddr(Vt + key * C::STR + (C::NBO - 1) * 8));
        mma(acc[C::NBO - 1], a, bv[0], bv[1]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites the stage just read
  }

  __half* op = static_cast<__half*>(p.o) + int64_t(b) * p.Nq * p.oRow + h * D;
  float lse[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float L = l[r];
    L += __shfl_xor_sync(0xffffffff, L, 1);
    L += __shfl_xor_sync(0xffffffff, L, 2);
    float inv = L > 0.f ? 1.f / L : 0.f;
    lse[r] = (m[r] == -INFINITY ? 0.f : m[r]) + log2f(L > 0.f ? L : 1.f);
    int row = rowA + r * 8;
    if (row < p.Nq) {
#pragma unroll
      for (int i = 0; i < C::NBO; i++)
        *reinterpret_cast<__half2*>(op + int64_t(row) * p.oRow + i * 8 + 2 * t) =
            __floats2half2_rn(acc[i][2 * r] * inv, acc[i][2 * r + 1] * inv);
    }
  }
  if (!CAPTURE) return;

  // Probabilities: recompute each score tile and normalise with the row's log-sum-exp. Every
  // key tile is visited so that causally masked entries are written as zeros.
  __half* pp = static_cast<__half*>(p.p) + int64_t(bh) * p.Nq * p.Nk;
  for (int j = 0; j < nkTiles; j++) {
    loadTile<D, W, BN>(Ks, kp, p.kRow, j * BN, p.Nk);
    cpCommit();
    cpWait<0>();
    __syncthreads();
    float s[BN / 8][4];
    scores<D>(s, qf, Ks, lane);
    const int kv0 = j * BN;
#pragma unroll
    for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        int key = kv0 + nb * 8 + 2 * t + (c & 1);
        int row = rowA + ((c >> 1) << 3);
        if (row < p.Nq && key < p.Nk) {
          float v = (p.causal && key > row) || regionHides(p.rg, b, key, inside[c >> 1])
                        ? 0.f
                        : exp2f(s[nb][c] * p.scaleLog2 - lse[c >> 1]);
          pp[int64_t(row) * p.Nk + key] = __float2half_rn(v);
        }
      }
    __syncthreads();
  }
}

template <int D, bool CAP, int W>
void launchW(const AttnParams& p) {
  using C = Cfg<D, W>;
  auto k = flashKernel<D, CAP, W>;
  // The opt-in above 48 KiB is per kernel, once per process; engines on other threads may get here
  // at the same time (call_once retries after a throw).
  static std::once_flag configured;
  std::call_once(configured, [&] { CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM)); });
  dim3 grid(unsigned((p.Nq + C::BM - 1) / C::BM), unsigned(p.B * p.H));
  k<<<grid, C::THREADS, C::SMEM, ctx().stream>>>(p);
  CK_LAUNCH("flashKernel");
}

// 8 warps only where the register budget still leaves 16+ warps per SM in flight (d 40: 85
// registers) or where 4-warp blocks were already limited to 8 warps per SM (d 160: 2 blocks of
// 107 KiB smem). At d 64/80 an 8-warp block would halve the resident warps: measured slower on
// the H100 (d 80, N 4096: 174 vs 193 TFLOP/s).
template <int D, bool CAP>
void launch(const AttnParams& p) {
  int64_t tiles8 = int64_t((p.Nq + 127) / 128) * p.B * p.H;
  if ((D == 40 || D == 160) && tiles8 >= ctx().sms) launchW<D, CAP, 8>(p);
  else launchW<D, CAP, 4>(p);
}

}  // namespace

bool flashSupports(int d, int dv) { return d == dv && (d == 40 || d == 64 || d == 80 || d == 160); }

void flashAttention(const AttnParams& p, int d, bool capture) {
  switch (d) {
    case 40: return capture ? launch<40, true>(p) : launch<40, false>(p);
    case 64: return capture ? launch<64, true>(p) : launch<64, false>(p);
    case 80: return capture ? launch<80, true>(p) : launch<80, false>(p);
    case 160: return capture ? launch<160, true>(p) : launch<160, false>(p);
  }
  throw Error("E_BACKEND", "flashAttention: unsupported head dim " + std::to_string(d));
}

}  // namespace cuda
}  // namespace idforge
