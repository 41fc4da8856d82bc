// ATTENTION: softmax(scale·Q·Kᵀ [+ causal mask]) · V per (batch, head), flash-style; at the end,
// ATTENTION_BACKWARD (probabilities recomputed).
//
// Without capture, no Nq x Nk score matrix exists: each task owns a block of kBq queries of one
// head and streams over kBk-key tiles, keeping a running max m and sum l per query (online
// softmax): O ← O·exp(m_old − m_new) + exp(S − m_new)·V, and O/l at the end. Both products use
// the SGEMM microkernels: Kᵀ and V are packed into B panels once per head (shared by all query
// blocks), Q is packed (and pre-scaled) once per query block, and the probabilities are read by
// the P·V kernel straight from the row-major score tile (compile-time row stride, no repacking).
// With capture, the scores of a query block go to out[1] whole, get an exact softmax there, and
// are then multiplied by V tile by tile.
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"
#include "vmath.h"

namespace idforge {
namespace cpu {
namespace {

constexpr int64_t kBk = kAttnKeys;  // keys per tile: the score tile's row stride (a compile-time constant of the P·V kernel)

// Queries per task: a multiple of both tile heights of the selected kernels, about 64.
int64_t queryBlock() {
  int64_t a = kern().gemm.wide.mr, b = kern().gemm.narrow.mr, x = a, y = b;
  while (y) {
    const int64_t t = x % y;
    x = y;
    y = t;
  }
  const int64_t l = a / x * b;
  return l * std::max<int64_t>(1, 64 / l);
}

// O[Bq x dvPad] += P[Bq x kc] (row stride kBk) · Vpanels[kc][nr] (panel stride kc*nr).
void pv(const GemmTile& t, int64_t bq, int64_t kc, int64_t dvPad, const float* P, const float* V, float* O) {
  kern().gemm.pv(t, bq, kc, dvPad, P, V, O);
}

struct Geometry {
  int64_t B, Nq, Nk, H, d, dv;
  int64_t bq;  // queries per task (queryBlock())
  int64_t nkTiles, nqBlocks;
  GemmTile tS, tO;       // tiles of S = Q·Kᵀ (N = keys) and O = P·V (N = dv)
  int64_t nkPad, dvPad;  // keys padded to tS.nr, dv padded to tO.nr
};

// Scores of query block rows [0, kBq) against keys [k0, k0 + nk): S = Qp · Kᵀ, then masking of
// causal positions with −inf. Returns the number of valid keys per row via `valid`.
void scoreTile(const Geometry& g, const float* Qp, const float* Kt, int64_t k0, int64_t nk, float* S) {
  gemmBlock(g.tS, g.bq, roundUp(nk, g.tS.nr), g.d, Qp, Kt + k0 * g.d, S, kBk, false);
}

inline int64_t validKeys(bool causal, int64_t i, int64_t k0, int64_t nk) {
  if (!causal) return nk;
  int64_t v = i - k0 + 1;
  return v < 0 ? 0 : v > nk ? nk : v;
}

}  // namespace

void op_ATTENTION(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "attention";
  checkArity(op, in, 3, 3, out, a.capture ? 2 : 1);
  for (int i = 0; i < 3; i++) checkDtype(op, in[i], DType::F32, i == 0 ? "q" : i == 1 ? "k" : "v");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape &qs = in[0].shape, &ks = in[1].shape, &vs = in[2].shape;
  if (qs.size() != 3 || ks.size() != 3 || vs.size() != 3)
    shapeError(op, "q " + shapeOf(in[0]) + ", k " + shapeOf(in[1]) + ", v " + shapeOf(in[2]) + " must be [B, N, H*d]");
  Geometry g;
  g.B = qs[0];
  g.Nq = qs[1];
  g.Nk = ks[1];
  g.H = a.heads;
  if (g.H <= 0 || qs[2] % g.H || vs[2] % g.H)
    shapeError(op, "heads " + std::to_string(g.H) + " must divide q " + shapeOf(in[0]) + " and v " + shapeOf(in[2]));
  if (ks[0] != g.B || vs[0] != g.B || vs[1] != g.Nk || ks[2] != qs[2])
    shapeError(op, "q " + shapeOf(in[0]) + ", k " + shapeOf(in[1]) + ", v " + shapeOf(in[2]) +
                       " disagree (k must be [B, Nk, H*d], v [B, Nk, H*dv])");
  if (g.Nk == 0 && g.Nq > 0) shapeError(op, "no keys: k is " + shapeOf(in[1]));
  g.d = qs[2] / g.H;
  g.dv = vs[2] / g.H;
  checkShape(op, out[0], {g.B, g.Nq, vs[2]}, "out");
  if (a.capture) {
    checkDtype(op, out[1], DType::F32, "probabilities");
    checkShape(op, out[1], {g.B * g.H, g.Nq, g.Nk}, "probabilities");
  }
  if (g.B == 0 || g.Nq == 0 || g.dv == 0) return;
  const int64_t kBq = g.bq = queryBlock();
  g.tS = gemmTile(kBq, std::min(g.Nk, kBk));
  g.tO = gemmTile(kBq, g.dv);
  g.nkPad = roundUp(g.Nk, g.tS.nr);
  g.dvPad = roundUp(g.dv, g.tO.nr);
  g.nkTiles = (g.Nk + kBk - 1) / kBk;
  g.nqBlocks = (g.Nq + kBq - 1) / kBq;
  const int64_t BH = g.B * g.H, Hd = g.H * g.d, Hdv = g.H * g.dv;
  const float* q = in[0].as<float>();
  const float* k = in[1].as<float>();
  const float* v = in[2].as<float>();
  float* o = out[0].as<float>();
  float* probs = a.capture ? out[1].as<float>() : nullptr;
  const float scale = float(a.scale);
  const bool causal = a.causal;

  // Kᵀ of each head as B panels [keys/nr][d][nr]; V as per-tile B panels [dv/nr][tile keys][nr].
  const int64_t ktSize = g.nkPad * g.d, vSize = g.Nk * g.dvPad;
  float* packed = static_cast<float*>(alignedAlloc(sizeof(float) * size_t(BH * (ktSize + vSize))));
  struct Free {
    float* p;
    ~Free() { alignedFree(p); }
  } guard{packed};
  parallel_for(BH, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; bh++) {
      int64_t b = bh / g.H, h = bh % g.H;
      float* Kt = packed + bh * (ktSize + vSize);
      float* Vp = Kt + ktSize;
      packB(k + b * g.Nk * Hd + h * g.d, 1, Hd, g.d, g.Nk, g.tS.nr, Kt);
      for (int64_t k0 = 0; k0 < g.Nk; k0 += kBk) {
        int64_t nk = std::min(kBk, g.Nk - k0);
        packB(v + (b * g.Nk + k0) * Hdv + h * g.dv, Hdv, 1, nk, g.dv, g.tO.nr, Vp + k0 * g.dvPad);
      }
    }
  }, 1);

  parallel_for(BH * g.nqBlocks, [&](int64_t t0, int64_t t1) {
    float* Qp = threadScratch(2, size_t(kBq * g.d));
    float* S = threadScratch(3, size_t(kBq * kBk));
    float* O = threadScratch(4, size_t(kBq * g.dvPad));
    float* stats = threadScratch(5, size_t(2 * kBq));
    float *m = stats, *l = stats + kBq;
    for (int64_t task = t0; task < t1; task++) {
      const int64_t bh = task / g.nqBlocks, i0 = (task % g.nqBlocks) * kBq, b = bh / g.H, h = bh % g.H;
      const int64_t nq = std::min(kBq, g.Nq - i0);
      const float* Kt = packed + bh * (ktSize + vSize);
      const float* Vp = Kt + ktSize;
      // Packed, pre-scaled Q block (rows past Nq are zero and their results dropped).
      {
        const float* qb = q + (b * g.Nq + i0) * Hd + h * g.d;
        const int mr = g.tS.mr;
        for (int64_t r0 = 0; r0 < kBq; r0 += mr)
          for (int64_t kk = 0; kk < g.d; kk++)
            for (int64_t r = 0; r < mr; r++)
              Qp[(r0 * g.d) + kk * mr + r] = r0 + r < nq ? scale * qb[(r0 + r) * Hd + kk] : 0.f;
      }
      std::memset(O, 0, sizeof(float) * size_t(kBq * g.dvPad));
      // Causal: key tiles past the block's last query contribute nothing.
      const int64_t kEnd = causal ? std::min(g.Nk, i0 + nq) : g.Nk;
      if (!probs) {
        for (int64_t r = 0; r < kBq; r++) {
          m[r] = -INFINITY;
          l[r] = 0.f;
        }
        for (int64_t k0 = 0; k0 < kEnd; k0 += kBk) {
          const int64_t nk = std::min(kBk, g.Nk - k0);
          scoreTile(g, Qp, Kt, k0, nk, S);
          for (int64_t r = 0; r < kBq; r++) {
            float* Sr = S + r * kBk;
            const int64_t cnt = validKeys(causal, i0 + r, k0, nk);
            if (cnt > 0) {
              float mt = rowMax(Sr, cnt), mn = mt > m[r] ? mt : m[r];
              float corr = m[r] == -INFINITY ? 0.f : std::exp(m[r] - mn);
              l[r] = l[r] * corr + expSubSum(Sr, Sr, cnt, mn);
              m[r] = mn;
              if (corr != 1.f) {
                float* Or = O + r * g.dvPad;
                for (int64_t c = 0; c < g.dvPad; c++) Or[c] *= corr;
              }
            }
            for (int64_t c = cnt; c < nk; c++) Sr[c] = 0.f;
          }
          pv(g.tO, kBq, nk, g.dvPad, S, Vp + k0 * g.dvPad, O);
        }
        for (int64_t r = 0; r < nq; r++) {
          const float inv = 1.f / l[r];
          const float* Or = O + r * g.dvPad;
          float* orow = o + (b * g.Nq + i0 + r) * Hdv + h * g.dv;
          for (int64_t c = 0; c < g.dv; c++) orow[c] = Or[c] * inv;
        }
      } else {
        float* P = probs + (bh * g.Nq + i0) * g.Nk;
        for (int64_t k0 = 0; k0 < g.Nk; k0 += kBk) {
          const int64_t nk = std::min(kBk, g.Nk - k0);
          if (k0 < kEnd) scoreTile(g, Qp, Kt, k0, nk, S);
          for (int64_t r = 0; r < nq; r++) {
            const int64_t cnt = k0 < kEnd ? validKeys(causal, i0 + r, k0, nk) : 0;
            float* Pr = P + r * g.Nk + k0;
            std::memcpy(Pr, S + r * kBk, sizeof(float) * size_t(cnt));
            for (int64_t c = cnt; c < nk; c++) Pr[c] = -INFINITY;
          }
        }
        // Exact softmax in place, as torch.softmax computes it: exp(s − max) / sum.
        for (int64_t r = 0; r < nq; r++) {
          float* Pr = P + r * g.Nk;
          const int64_t cnt = validKeys(causal, i0 + r, 0, g.Nk);
          const float mx = rowMax(Pr, cnt);
          const float inv = 1.f / expSubSum(Pr, Pr, cnt, mx);
          for (int64_t c = 0; c < cnt; c++) Pr[c] *= inv;
          for (int64_t c = cnt; c < g.Nk; c++) Pr[c] = 0.f;
        }
        for (int64_t k0 = 0; k0 < kEnd; k0 += kBk) {
          const int64_t nk = std::min(kBk, g.Nk - k0);
          for (int64_t r = 0; r < kBq; r++) {
            float* Sr = S + r * kBk;
            if (r < nq) std::memcpy(Sr, P + r * g.Nk + k0, sizeof(float) * size_t(nk));
            else std::memset(Sr, 0, sizeof(float) * size_t(nk));
          }
          pv(g.tO, kBq, nk, g.dvPad, S, Vp + k0 * g.dvPad, O);
        }
        for (int64_t r = 0; r < nq; r++)
          std::memcpy(o + (b * g.Nq + i0 + r) * Hdv + h * g.dv, O + r * g.dvPad, sizeof(float) * size_t(g.dv));
      }
    }
  }, 1);
}

// ---- backward (a vector-Jacobian product for lib/graph/autodiff.ts) -------------------------------

// Gradients of o = softmax(scale·q·kᵀ)·v per (batch, head), probabilities recomputed. An optional
// 5th input dp[B·H, Nq, Nk] is an incoming gradient on the probabilities themselves (captured maps
// in a loss). dP = dO·Vᵀ + dp;  dS = P ⊙ (dP − rowsum(P ⊙ dP));  dQ = scale·dS·K;
// dK = scale·dSᵀ·Q;  dV = Pᵀ·dO. Query rows are processed in blocks; dK/dV are accumulated per
// worker and summed under a lock.
void op_ATTENTION_BACKWARD(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "attention_backward";
  checkArity(op, in, 4, 5, out, 3);
  checkF32(op, in, out);
  const Shape &qs = in[0].shape, &ks = in[1].shape, &vs = in[2].shape;
  if (qs.size() != 3 || ks.size() != 3 || vs.size() != 3 || qs[0] != ks[0] || ks[0] != vs[0] || ks[1] != vs[1] ||
      qs[2] != ks[2])
    shapeError(op, "q " + shapeOf(in[0]) + ", k " + shapeOf(in[1]) + ", v " + shapeOf(in[2]));
  const int64_t B = qs[0], Nq = qs[1], Nk = ks[1], H = a.heads;
  if (H <= 0 || qs[2] % H || vs[2] % H) shapeError(op, "widths do not split into heads");
  const int64_t d = qs[2] / H, dv = vs[2] / H, Wq = qs[2], Wv = vs[2];
  checkShape(op, in[3], {B, Nq, Wv}, "do");
  const bool hasDp = given(in, 4);
  if (hasDp) checkShape(op, in[4], {B * H, Nq, Nk}, "dp");
  checkShape(op, out[0], qs, "dq");
  checkShape(op, out[1], ks, "dk");
  checkShape(op, out[2], vs, "dv");
  const float* q = in[0].as<float>();
  const float* k = in[1].as<float>();
  const float* v = in[2].as<float>();
  const float* dO = in[3].as<float>();
  const float* dp = hasDp ? in[4].as<float>() : nullptr;
  float* dq = out[0].as<float>();
  float* dk = out[1].as<float>();
  float* dvv = out[2].as<float>();
  std::memset(dk, 0, sizeof(float) * size_t(out[1].numel()));
  std::memset(dvv, 0, sizeof(float) * size_t(out[2].numel()));
  const float scale = float(a.scale);
  constexpr int64_t kQ = 64;
  const int64_t qBlocks = (Nq + kQ - 1) / kQ;
  std::mutex mu;
  for (int64_t bh = 0; bh < B * H; bh++) {
    const int64_t b = bh / H, h = bh % H;
    const float* qb = q + b * Nq * Wq + h * d;
    const float* kb = k + b * Nk * Wq + h * d;
    const float* vb = v + b * Nk * Wv + h * dv;
    const float* ob = dO + b * Nq * Wv + h * dv;
    float* dqb = dq + b * Nq * Wq + h * d;
    float* dkb = dk + b * Nk * Wq + h * d;
    float* dvb = dvv + b * Nk * Wv + h * dv;
    parallel_for(qBlocks, [&](int64_t j0, int64_t j1) {
      std::vector<float> P(size_t(kQ * Nk)), dP(size_t(kQ * Nk)), accK(size_t(Nk * d), 0.f), accV(size_t(Nk * dv), 0.f);
      for (int64_t j = j0; j < j1; j++) {
        const int64_t i0 = j * kQ, m = std::min(kQ, Nq - i0);
        // S = Q·Kᵀ (unscaled), then the softmax in place.
        sgemm(m, Nk, d, qb + i0 * Wq, Wq, 1, kb, 1, Wq, P.data(), Nk, false);
        for (int64_t i = 0; i < m; i++) {
          float* pr = P.data() + i * Nk;
          int64_t valid = a.causal ? std::min(Nk, i0 + i + 1) : Nk;
          float mx = -INFINITY;
          for (int64_t c = 0; c < valid; c++) mx = std::max(mx, pr[c] * scale);
          double sum = 0;
          for (int64_t c = 0; c < valid; c++) {
            pr[c] = std::exp(pr[c] * scale - mx);
            sum += pr[c];
          }
          float inv = float(1.0 / sum);
          for (int64_t c = 0; c < valid; c++) pr[c] *= inv;
          for (int64_t c = valid; c < Nk; c++) pr[c] = 0.f;
        }
        // dP = dO·Vᵀ (+ dp)
        sgemm(m, Nk, dv, ob + i0 * Wv, Wv, 1, vb, 1, Wv, dP.data(), Nk, false);
        for (int64_t i = 0; i < m; i++) {
          float* pr = P.data() + i * Nk;
          float* gr = dP.data() + i * Nk;
          if (dp) {
            const float* in4 = dp + (bh * Nq + i0 + i) * Nk;
            for (int64_t c = 0; c < Nk; c++) gr[c] += in4[c];
          }
          double dot = 0;
          for (int64_t c = 0; c < Nk; c++) dot += double(pr[c]) * gr[c];
          for (int64_t c = 0; c < Nk; c++) gr[c] = pr[c] * (gr[c] - float(dot)) * scale;  // dS·scale
        }
        // dQ rows = (scale·dS)·K
        sgemm(m, d, Nk, dP.data(), Nk, 1, kb, Wq, 1, dqb + i0 * Wq, Wq, false);
        // dK += (scale·dS)ᵀ·Q;  dV += Pᵀ·dO
        sgemm(Nk, d, m, dP.data(), 1, Nk, qb + i0 * Wq, Wq, 1, accK.data(), d, true);
        sgemm(Nk, dv, m, P.data(), 1, Nk, ob + i0 * Wv, Wv, 1, accV.data(), dv, true);
      }
      std::lock_guard<std::mutex> lock(mu);
      for (int64_t r = 0; r < Nk; r++) {
        for (int64_t c = 0; c < d; c++) dkb[r * Wq + c] += accK[size_t(r * d + c)];
        for (int64_t c = 0; c < dv; c++) dvb[r * Wv + c] += accV[size_t(r * dv + c)];
      }
    });
  }
}

}  // namespace cpu
}  // namespace idforge
