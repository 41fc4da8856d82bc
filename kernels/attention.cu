// ATTENTION dispatch. fp16 with head dim 40/64/80/160 → the fused flash kernel
// (attention_flash.cu). Any other head dim (the tiny test model's 4 and 8, the ID encoder's 16)
// and fp32 at small sizes → a generic fused kernel (SIMT, fp32 math, exact enough for 1e-5).
// Large fp32 problems and head dims above 256 (the VAE's single 512-wide head) → the unfused
// path: cuBLAS QKᵀ into an fp32 score buffer, a softmax kernel, cuBLAS P·V. The unfused path is
// also the baseline the benchmark compares against. Every path applies a region table
// (native/regions.h) where it masks scores: per query its regions once, per key the owner.
#include <cfloat>

#include "attention.h"
#include "reduce.cuh"

namespace idforge {
namespace cuda {

namespace {

constexpr int GK = 32;      // keys per tile in the generic kernel (one per lane)
constexpr int GROWS = 4;    // query rows per block (one per warp)


// One warp per query row, lane j scores key j of a 32-key tile shared through smem; the output
// row is spread over the lanes (NACC columns each, dv <= 32·NACC).
template <typename T, int NACC>
__global__ void __launch_bounds__(GROWS * 32) genericKernel(AttnParams p) {
  extern __shared__ float sm[];
  const int d = p.d, dv = p.dv, ks = d + 1;  // +1: lanes read different rows of Ks without bank conflicts
  float* Ks = sm;
  float* Vs = Ks + GK * ks;
  float* Qs = Vs + GK * dv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int row = blockIdx.x * GROWS + warp;
  const bool live = row < p.Nq;
  const uint32_t inside = live ? regionsOf(p.rg, b, row) : 0u;
  const T* qp = static_cast<const T*>(p.q) + (int64_t(b) * p.Nq) * p.qRow + int64_t(h) * d;
  const T* kp = static_cast<const T*>(p.k) + (int64_t(b) * p.Nk) * p.kRow + int64_t(h) * d;
  const T* vp = static_cast<const T*>(p.v) + (int64_t(b) * p.Nk) * p.vRow + int64_t(h) * dv;
  float* q = Qs + warp * d;
  for (int c = lane; c < d; c += 32) q[c] = live ? toF(qp[int64_t(row) * p.qRow + c]) : 0.f;

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int nTiles = (p.Nk + GK - 1) / GK;
  for (int pass = 0; pass < (p.p ? 2 : 1); pass++) {
    for (int j = 0; j < nTiles; j++) {
      const int k0 = j * GK;
      __syncthreads();
      for (int i = threadIdx.x; i < GK * d; i += blockDim.x) {
        int r = i / d, c = i - r * d;
        Ks[r * ks + c] = k0 + r < p.Nk ? toF(kp[int64_t(k0 + r) * p.kRow + c]) : 0.f;
      }
      if (pass == 0)
        for (int i = threadIdx.x; i < GK * dv; i += blockDim.x) {
          int r = i / dv, c = i - r * dv;
          Vs[i] = k0 + r < p.Nk ? toF(vp[int64_t(k0 + r) * p.vRow + c]) : 0.f;
        }
      __syncthreads();
      if (!live) continue;
      const int key = k0 + lane;
      float s = 0.f;
      for (int c = 0; c < d; c++) s += q[c] * Ks[lane * ks + c];
      s *= p.scale;
      if (key >= p.Nk || (p.causal && key > row) || regionHides(p.rg, b, key, inside)) s = -INFINITY;
      if (pass == 1) {  // capture: m and l are final
        if (key < p.Nk) {
          float pr = s == -INFINITY ? 0.f : __expf(s - m) / l;
          static_cast<T*>(p.p)[(int64_t(bh) * p.Nq + row) * p.Nk + key] = fromF<T>(pr);
        }
        continue;
      }
      float mNew = fmaxf(m, warpMax(s));
      float mUse = mNew == -INFINITY ? 0.f : mNew;
      float corr = __expf(m - mUse);
      float e = __expf(s - mUse);
      l = l * corr + warpSum(e);
      m = mNew;
#pragma unroll
      for (int i = 0; i < NACC; i++) acc[i] *= corr;
      for (int jj = 0; jj < GK; jj++) {
        float pj = __shfl_sync(0xffffffff, e, jj);
#pragma unroll
        for (int i = 0; i < NACC; i++) {
          int c = lane + 32 * i;
          if (c < dv) acc[i] += pj * Vs[jj * dv + c];
        }
      }
    }
  }
  if (!live) return;
  T* op = static_cast<T*>(p.o) + (int64_t(b) * p.Nq + row) * p.oRow + int64_t(h) * dv;
  float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int i = 0; i < NACC; i++) {
    int c = lane + 32 * i;
    if (c < dv) op[c] = fromF<T>(acc[i] * inv);
  }
}

template <typename T, int NACC>
void launchGeneric(const AttnParams& p) {
  size_t smem = size_t(GK * (p.d + 1) + GK * p.dv + GROWS * p.d) * sizeof(float);
  auto k = genericKernel<T, NACC>;
  if (smem > 48 * 1024) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid(unsigned((p.Nq + GROWS - 1) / GROWS), unsigned(p.B * p.H));
  k<<<grid, GROWS * 32, smem, ctx().stream>>>(p);
  CK_LAUNCH("genericKernel");
}

template <typename T>
void generic(const AttnParams& p) {
  if (p.dv <= 32) return launchGeneric<T, 1>(p);
  if (p.dv <= 64) return launchGeneric<T, 2>(p);
  if (p.dv <= 128) return launchGeneric<T, 4>(p);
  return launchGeneric<T, 8>(p);
}

// Row-wise softmax of an fp32 score block [heads][rows][Nk] (already scaled), written as T to
// P[head·pHead + r·Nk + key]; qOff is the first query row (for the causal and region masks of
// batch row b). A row whose every key the regions hide comes out 0.
template <typename T>
__global__ void softmaxRows(const float* __restrict__ S, T* __restrict__ P, int rows, int Nk, int64_t pHead,
                            int qOff, int causal, RegionParams rg, int b) {
  __shared__ float red[33];
  const int rr = blockIdx.x, head = blockIdx.y;
  const float* s = S + (int64_t(head) * rows + rr) * Nk;
  T* out = P + int64_t(head) * pHead + int64_t(rr) * Nk;
  const int lim = causal ? min(Nk, qOff + rr + 1) : Nk;
  const uint32_t inside = regionsOf(rg, b, qOff + rr);
  auto score = [&](int i) { return regionHides(rg, b, i, inside) ? -INFINITY : s[i]; };
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) mx = fmaxf(mx, score(i));
  mx = blockReduce(mx, true, red);
  float sum = 0.f;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) sum += __expf(score(i) - mx);
  sum = blockReduce(sum, false, red);
  const bool none = mx == -INFINITY;
  float inv = none ? 0.f : 1.f / sum;
  for (int i = threadIdx.x; i < Nk; i += blockDim.x) {
    const float v = i < lim && !none ? score(i) : -INFINITY;
    out[i] = fromF<T>(v == -INFINITY ? 0.f : __expf(v - mx) * inv);
  }
}

}  // namespace

void attentionUnfusedParams(const AttnParams& p, DType dt) {
  size_t es = dtypeSize(dt);
  const int64_t budget = int64_t(512) << 20;
  int64_t perElem = 4 + (p.p ? 0 : int64_t(es));
  int64_t perHead = int64_t(p.Nq) * p.Nk * perElem;
  int Hc = 1, Qc = p.Nq;
  if (perHead <= budget) Hc = int(std::max<int64_t>(1, std::min<int64_t>(p.H, budget / perHead)));
  else Qc = int(std::max<int64_t>(1, std::min<int64_t>(p.Nq, budget / (int64_t(p.Nk) * perElem))));
  Scratch S(size_t(Hc) * Qc * p.Nk * 4);
  Scratch P(p.p ? 0 : size_t(Hc) * Qc * p.Nk * es);
  const char* q = static_cast<const char*>(p.q);
  const char* k = static_cast<const char*>(p.k);
  const char* v = static_cast<const char*>(p.v);
  char* o = static_cast<char*>(p.o);
  for (int b = 0; b < p.B; b++)
    for (int h0 = 0; h0 < p.H; h0 += Hc)
      for (int q0 = 0; q0 < p.Nq; q0 += Qc) {
        int hc = std::min(Hc, p.H - h0), qc = std::min(Qc, p.Nq - q0);
        // Sᵀ (Nk × qc, col-major) = K_h (as Kᵀ) · Q_hᵀ: heads are strided by d inside a row.
        gemm(true, false, p.Nk, qc, p.d, p.scale, k + (int64_t(b) * p.Nk * p.kRow + int64_t(h0) * p.d) * es,
             int(p.kRow), p.d, q + ((int64_t(b) * p.Nq + q0) * p.qRow + int64_t(h0) * p.d) * es, int(p.qRow), p.d,
             0.f, S.p, p.Nk, int64_t(qc) * p.Nk, hc, dt, DType::F32);
        char* pt;
        int64_t pHead;
        if (p.p) {
          pt = static_cast<char*>(p.p) + ((int64_t(b) * p.H + h0) * p.Nq + q0) * p.Nk * es;
          pHead = int64_t(p.Nq) * p.Nk;
        } else {
          pt = static_cast<char*>(P.p);
          pHead = int64_t(qc) * p.Nk;
        }
        dim3 grid{unsigned(qc), unsigned(hc)};
        int threads = p.Nk >= 1024 ? 256 : 128;
        dispatchFloat(OpCode::ATTENTION, dt, [&](auto tag) {
          using T = decltype(tag);
          softmaxRows<T><<<grid, threads, 0, ctx().stream>>>(S.as<float>(), reinterpret_cast<T*>(pt), qc, p.Nk,
                                                             pHead, q0, p.causal, p.rg, b);
        });
        CK_LAUNCH("softmaxRows");
        // O_hᵀ (dv × qc) = V_hᵀ (dv × Nk) · Pᵀ (Nk × qc)
        gemm(false, false, p.dv, qc, p.Nk, 1.f, v + (int64_t(b) * p.Nk * p.vRow + int64_t(h0) * p.dv) * es,
             int(p.vRow), p.dv, pt, p.Nk, pHead, 0.f,
             o + ((int64_t(b) * p.Nq + q0) * p.oRow + int64_t(h0) * p.dv) * es, int(p.oRow), p.dv, hc, dt, dt);
      }
}

namespace {

AttnParams makeParams(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::ATTENTION;
  if (in.size() < 3 || in.size() > (a.regions ? 4u : 3u)) shapeError(op, "expects q, k, v and, with attrs.regions, the region table");
  const TensorView &q = in[0], &k = in[1], &v = in[2], &o = out[0];
  DType dt = o.dtype;
  expectFloat(op, q, dt, "q");
  expectFloat(op, k, dt, "k");
  expectFloat(op, v, dt, "v");
  if (q.shape.size() != 3 || k.shape.size() != 3 || v.shape.size() != 3)
    shapeError(op, "q, k, v must be [B, N, H·d]");
  int64_t H = a.heads;
  if (H < 1 || q.shape[2] % H || k.shape[2] % H || v.shape[2] % H) shapeError(op, "heads must divide the last dims");
  if (k.shape[2] != q.shape[2]) shapeError(op, "q and k last dims differ: " + shapeStr(q.shape) + " vs " + shapeStr(k.shape));
  if (k.shape[0] != q.shape[0] || v.shape[0] != q.shape[0] || v.shape[1] != k.shape[1])
    shapeError(op, "batch or key counts differ: q " + shapeStr(q.shape) + ", k " + shapeStr(k.shape) + ", v " + shapeStr(v.shape));
  Shape os = {q.shape[0], q.shape[1], v.shape[2]};
  if (o.shape != os) shapeError(op, "output " + shapeStr(o.shape) + ", expected " + shapeStr(os));
  AttnParams p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.o = o.data;
  p.B = int(q.shape[0]);
  p.H = int(H);
  p.Nq = int(q.shape[1]);
  p.Nk = int(k.shape[1]);
  p.d = int(q.shape[2] / H);
  p.dv = int(v.shape[2] / H);
  p.qRow = q.shape[2];
  p.kRow = k.shape[2];
  p.vRow = v.shape[2];
  p.oRow = v.shape[2];
  p.scale = float(a.scale);
  p.scaleLog2 = float(a.scale * 1.4426950408889634);
  p.causal = a.causal ? 1 : 0;
  p.rg = regionParams(op, a, in, 3, p.B, p.Nq, p.Nk);
  if (a.capture) {
    if (out.size() < 2 || !out[1].data) shapeError(op, "capture needs a second output for the probabilities");
    expectFloat(op, out[1], dt, "p");
    if (out[1].numel() != int64_t(p.B) * H * p.Nq * p.Nk)
      shapeError(op, "probabilities output " + shapeStr(out[1].shape) + " is not [B·H, Nq, Nk]");
    p.p = out[1].data;
  }
  return p;
}

bool aligned16(const void* x) { return (reinterpret_cast<uintptr_t>(x) & 15) == 0; }

}  // namespace

RegionParams regionParams(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, size_t idx, int64_t B,
                          int64_t Nq, int64_t Nk) {
  RegionParams r;
  if (!a.regions) return r;
  r.R = regionCount(opName(op), in.size() > idx ? &in[idx] : nullptr, B, Nq, Nk, a.width);
  r.table = in[idx].as<int32_t>();
  r.cols = in[idx].shape[1];
  r.Nk = int(Nk);
  r.W = int(a.width);
  r.H = int(Nq / a.width);
  r.err = ctx().errFlagDev;
  return r;
}

void opAttention(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  AttnParams p = makeParams(a, in, out);
  DType dt = out[0].dtype;
  if (p.Nq == 0 || p.B == 0) return;
  if (p.Nk == 0) shapeError(OpCode::ATTENTION, "no keys");
  bool flash = dt == DType::F16 && flashSupports(p.d, p.dv) && aligned16(p.q) && aligned16(p.k) && aligned16(p.v) &&
               p.qRow % 8 == 0 && p.vRow % 8 == 0;
  if (flash) return flashAttention(p, p.d, p.p != nullptr);
  int64_t work = int64_t(p.B) * p.H * p.Nq * p.Nk;
  bool small = work <= (int64_t(1) << 22) || (dt == DType::F16 && work <= (int64_t(1) << 26));
  if (p.d <= 256 && p.dv <= 256 && small) {
    if (dt == DType::F16) generic<__half>(p);
    else generic<float>(p);
    return;
  }
  attentionUnfusedParams(p, dt);
}

void attentionUnfused(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  AttnParams p = makeParams(a, in, out);
  if (p.Nq == 0 || p.B == 0) return;
  attentionUnfusedParams(p, out[0].dtype);
}

void attentionGenericForTest(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  AttnParams p = makeParams(a, in, out);
  if (p.d > 256 || p.dv > 256) shapeError(OpCode::ATTENTION, "generic kernel takes head dims <= 256");
  if (out[0].dtype == DType::F16) generic<__half>(p);
  else generic<float>(p);
}

// ---- backward (a vector-Jacobian product for lib/graph/autodiff.ts) ------------------------
// ATTENTION_BACKWARD per (batch, head chunk, query chunk): cuBLAS S = scale·QKᵀ and dP = dO·Vᵀ
// into fp32, a row kernel (softmax, dS = P⊙(dP − rowsum(P⊙dP))), cuBLAS dQ = dS·K, dK += dSᵀ·Q,
// dV += Pᵀ·dO. Probabilities recomputed, never stored by the forward op.

using Views = std::vector<TensorView>;

namespace {

// ---- ATTENTION_BACKWARD -----------------------------------------------------------------------

// One block per (query row, head) of a chunk. S (already scaled) and dP are fp32 [head][rows][Nk];
// dpIn (optional, T) is the incoming gradient on the probabilities, head stride dpHead, row
// stride Nk. Writes P and dS·scale (T) where dS = P ⊙ (dP + dp − Σ P⊙(dP + dp)). For T = float
// P aliases S and dS aliases dP: each element is read and written by the same thread, after the
// reductions (no __restrict__ on those).
template <typename T>
__global__ void attnBackwardRows(const float* S, const float* dP, const T* __restrict__ dpIn, T* P, T* dS, int rows,
                                 int Nk, int64_t dpHead, int qOff, int causal, float scale, RegionParams rg, int b) {
  __shared__ float red[33];
  const int rr = blockIdx.x, head = blockIdx.y;
  const int64_t off = (int64_t(head) * rows + rr) * Nk;
  const float* s = S + off;
  const float* g = dP + off;
  T* po = P + off;
  T* so = dS + off;
  const T* dp = dpIn ? dpIn + int64_t(head) * dpHead + int64_t(rr) * Nk : nullptr;
  const int lim = causal ? min(Nk, qOff + rr + 1) : Nk;
  const uint32_t inside = regionsOf(rg, b, qOff + rr);
  auto score = [&](int i) { return regionHides(rg, b, i, inside) ? -INFINITY : s[i]; };
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) mx = fmaxf(mx, score(i));
  mx = blockReduce(mx, true, red);
  float sum = 0.f;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) sum += expf(score(i) - mx);
  sum = blockReduce(sum, false, red);
  const bool none = mx == -INFINITY;  // the regions hid every key: P = 0
  const float inv = none ? 0.f : 1.f / sum;
  auto prob = [&](int i) {
    const float v = i < lim && !none ? score(i) : -INFINITY;
    return v == -INFINITY ? 0.f : expf(v - mx) * inv;
  };
  float dot = 0.f;
  for (int i = threadIdx.x; i < lim; i += blockDim.x) {
    float gi = g[i] + (dp ? toF(dp[i]) : 0.f);
    dot += prob(i) * gi;
  }
  dot = blockReduce(dot, false, red);
  for (int i = threadIdx.x; i < Nk; i += blockDim.x) {
    const float p = prob(i);
    const float gi = g[i] + (dp ? toF(dp[i]) : 0.f);
    po[i] = fromF<T>(p);
    so[i] = fromF<T>(p * (gi - dot) * scale);
  }
}

// dst[r·ldDst + c] = src[r·cols + c]
template <typename T>
__global__ void storeRows(const float* __restrict__ src, T* __restrict__ dst, int64_t rows, int64_t cols,
                          int64_t ldDst) {
  const int64_t n = rows * cols, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[r * ldDst + c] = fromF<T>(src[i]);
  }
}

}  // namespace

void attentionBackwardBudget(const OpAttrs& a, const Views& in, const Views& out, int64_t budget) {
  const OpCode op = OpCode::ATTENTION_BACKWARD;
  arity(op, in, a.regions ? 5 : 4, a.regions ? 6 : 5, out, 3);
  const TensorView &q = in[0], &k = in[1], &v = in[2], &dO = in[3];
  const TensorView &dq = out[0], &dk = out[1], &dv = out[2];
  DType dt = dq.dtype;
  expectFloat(op, q, dt, "q");
  expectFloat(op, k, dt, "k");
  expectFloat(op, v, dt, "v");
  expectFloat(op, dO, dt, "do");
  expectFloat(op, dk, dt, "dk");
  expectFloat(op, dv, dt, "dv");
  const Shape &qs = q.shape, &ks = k.shape, &vs = v.shape;
  if (qs.size() != 3 || ks.size() != 3 || vs.size() != 3 || qs[0] != ks[0] || ks[0] != vs[0] || ks[1] != vs[1] ||
      qs[2] != ks[2])
    shapeError(op, "q " + shapeStr(qs) + ", k " + shapeStr(ks) + ", v " + shapeStr(vs));
  const int64_t B = qs[0], Nq = qs[1], Nk = ks[1], H = a.heads;
  if (H <= 0 || qs[2] % H || vs[2] % H) shapeError(op, "widths do not split into heads");
  const int64_t d = qs[2] / H, dvw = vs[2] / H, Wq = qs[2], Wv = vs[2];
  if (dO.shape != Shape{B, Nq, Wv}) shapeError(op, "do " + shapeStr(dO.shape) + ", expected [B, Nq, H·dv]");
  const bool hasDp = in.size() > (a.regions ? 5u : 4u) && in[4].data != nullptr;
  if (hasDp) {
    expectFloat(op, in[4], dt, "dp");
    if (in[4].shape != Shape{B * H, Nq, Nk}) shapeError(op, "dp " + shapeStr(in[4].shape) + ", expected [B·H, Nq, Nk]");
  }
  if (dq.shape != qs || dk.shape != ks || dv.shape != vs)
    shapeError(op, "dq " + shapeStr(dq.shape) + ", dk " + shapeStr(dk.shape) + ", dv " + shapeStr(dv.shape) +
                       " must match q, k, v");
  const RegionParams rg = regionParams(op, a, in, in.size() - 1, B, Nq, Nk);
  if (!B) return;
  if (!Nq) {  // no queries: no gradient reaches k or v
    zeroFill(dk);
    zeroFill(dv);
    return;
  }
  if (!Nk) {
    zeroFill(dq);
    return;
  }
  if (!d || !dvw) shapeError(op, "zero-width heads are not supported");
  toInt(op, Nq, "Nq");
  toInt(op, Nk, "Nk");
  toInt(op, B * H, "B·H");
  toInt(op, Wq, "H·d");
  toInt(op, Wv, "H·dv");
  const bool f16 = dt == DType::F16;
  const size_t es = dtypeSize(dt);
  // fp32 S and dP; fp16 also keeps P and dS·scale as fp16 GEMM operands.
  const int64_t perElem = 8 + (f16 ? 2 * int64_t(es) : 0);
  const int64_t perHead = Nq * Nk * perElem;
  int64_t Hc = 1, Qc = Nq;
  if (perHead <= budget) Hc = std::max<int64_t>(1, std::min<int64_t>(H, budget / perHead));
  else Qc = std::max<int64_t>(1, std::min<int64_t>(Nq, budget / (Nk * perElem)));
  const bool qChunked = Qc < Nq;  // then Hc = 1
  // fp16 with query chunks: dK/dV accumulate over the chunks in fp32, stored once at the end.
  const bool acc32 = qChunked && f16;
  const size_t blk = size_t(Hc * Qc * Nk);
  Scratch S(blk * 4), dP(blk * 4);
  Scratch Ph(f16 ? blk * es : 0), dSh(f16 ? blk * es : 0);
  Scratch accK(acc32 ? size_t(Nk * d) * 4 : 0), accV(acc32 ? size_t(Nk * dvw) * 4 : 0);
  void* Pt = f16 ? Ph.p : S.p;
  void* dSt = f16 ? dSh.p : dP.p;
  const char* qp = static_cast<const char*>(q.data);
  const char* kp = static_cast<const char*>(k.data);
  const char* vp = static_cast<const char*>(v.data);
  const char* op_ = static_cast<const char*>(dO.data);
  const char* dpp = hasDp ? static_cast<const char*>(in[4].data) : nullptr;
  char* dqp = static_cast<char*>(dq.data);
  char* dkp = static_cast<char*>(dk.data);
  char* dvp = static_cast<char*>(dv.data);
  cudaStream_t st = ctx().stream;
  const int iNk = int(Nk), iD = int(d), iDv = int(dvw), iWq = int(Wq), iWv = int(Wv);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h0 = 0; h0 < H; h0 += Hc) {
      const int64_t hc = std::min(Hc, H - h0);
      const char* kb = kp + size_t(b * Nk * Wq + h0 * d) * es;    // K_h rows, head h0
      const char* vb = vp + size_t(b * Nk * Wv + h0 * dvw) * es;  // V_h rows
      char* dkb = dkp + size_t(b * Nk * Wq + h0 * d) * es;
      char* dvb = dvp + size_t(b * Nk * Wv + h0 * dvw) * es;
      for (int64_t q0 = 0; q0 < Nq; q0 += Qc) {
        const int64_t qc = std::min(Qc, Nq - q0);
        const long long cStride = qc * Nk;  // one head's block in S / dP / P / dS
        const char* qb = qp + size_t((b * Nq + q0) * Wq + h0 * d) * es;
        const char* ob = op_ + size_t((b * Nq + q0) * Wv + h0 * dvw) * es;
        char* dqb = dqp + size_t((b * Nq + q0) * Wq + h0 * d) * es;
        // S (qc × Nk row-major = Nk × qc col-major) = scale · K_h Q_hᵀ, heads strided by d in a row.
        gemm(true, false, iNk, int(qc), iD, float(a.scale), kb, iWq, d, qb, iWq, d, 0.f, S.p, iNk, cStride, int(hc),
             dt, DType::F32);
        // dP = dO_h V_hᵀ
        gemm(true, false, iNk, int(qc), iDv, 1.f, vb, iWv, dvw, ob, iWv, dvw, 0.f, dP.p, iNk, cStride, int(hc), dt,
             DType::F32);
        dim3 grid{unsigned(qc), unsigned(hc)};
        const int threads = Nk >= 1024 ? 256 : 128;
        dispatchFloat(op, dt, [&](auto tag) {
          using T = decltype(tag);
          const T* dpb = dpp ? reinterpret_cast<const T*>(dpp + size_t(((b * H + h0) * Nq + q0) * Nk) * es) : nullptr;
          attnBackwardRows<T><<<grid, threads, 0, st>>>(S.as<float>(), dP.as<float>(), dpb, static_cast<T*>(Pt),
                                                        static_cast<T*>(dSt), int(qc), iNk, Nq * Nk, int(q0),
                                                        a.causal ? 1 : 0, float(a.scale), rg, int(b));
        });
        CK_LAUNCH("attnBackwardRows");
        // dQ_h (qc × d) = (scale·dS) K_h: col-major dQᵀ (d × qc) = K_hᵀ (d × Nk) · dSᵀ (Nk × qc).
        gemm(false, false, iD, int(qc), iNk, 1.f, kb, iWq, d, dSt, iNk, cStride, 0.f, dqb, iWq, d, int(hc), dt, dt);
        // dK_h (Nk × d) += (scale·dS)ᵀ Q_h: col-major dKᵀ (d × Nk) = Q_hᵀ (d × qc) · dS (qc × Nk).
        // dV_h (Nk × dv) += Pᵀ dO_h.
        const float beta = q0 == 0 ? 0.f : 1.f;
        if (acc32) {
          gemm(false, true, iD, iNk, int(qc), 1.f, qb, iWq, d, dSt, iNk, cStride, beta, accK.p, iD, Nk * d, int(hc),
               dt, DType::F32);
          gemm(false, true, iDv, iNk, int(qc), 1.f, ob, iWv, dvw, Pt, iNk, cStride, beta, accV.p, iDv, Nk * dvw,
               int(hc), dt, DType::F32);
        } else {
          gemm(false, true, iD, iNk, int(qc), 1.f, qb, iWq, d, dSt, iNk, cStride, beta, dkb, iWq, d, int(hc), dt, dt);
          gemm(false, true, iDv, iNk, int(qc), 1.f, ob, iWv, dvw, Pt, iNk, cStride, beta, dvb, iWv, dvw, int(hc), dt,
               dt);
        }
      }
      if (acc32) {  // hc = 1 here
        dispatchFloat(op, dt, [&](auto tag) {
          using T = decltype(tag);
          storeRows<T><<<gridFor(Nk * d, 256), 256, 0, st>>>(accK.as<float>(), reinterpret_cast<T*>(dkb), Nk, d, Wq);
          CK_LAUNCH("storeRows");
          storeRows<T><<<gridFor(Nk * dvw, 256), 256, 0, st>>>(accV.as<float>(), reinterpret_cast<T*>(dvb), Nk, dvw,
                                                               Wv);
          CK_LAUNCH("storeRows");
        });
      }
    }
}

void opAttentionBackward(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  attentionBackwardBudget(a, in, out, int64_t(512) << 20);
}

}  // namespace cuda
}  // namespace idforge
