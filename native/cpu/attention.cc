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
// are then multiplied by V tile by tile. A region table (native/regions.h) masks the few keys its
// regions own, per query row, right after each score tile: no Nq x Nk mask exists either.
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "gemm.h"
#include "gemm_kernels.h"
#include "ops.h"
#include "parallel.h"
#include "../regions.h"
#include "vmath.h"

namespace idforge {
namespace cpu {
namespace {

constexpr int64_t kBk = 256;  // keys per tile: the score tile's row stride (a compile-time constant)
constexpr int64_t lcm(int64_t a, int64_t b) {
  int64_t x = a, y = b;
  while (y) {
    int64_t t = x % y;
    x = y;
    y = t;
  }
  return a / x * b;
}
constexpr int64_t kMRL = lcm(kWideMR, kNarrowMR);
// Queries per task: a multiple of both tile heights, about 64.
constexpr int64_t kBq = kMRL * (64 / kMRL > 0 ? 64 / kMRL : 1);

// O[Bq x dvPad] += P[Bq x kc] (row stride kBk) · Vpanels[kc][nr] (panel stride kc*nr).
template <int MR, int NV>
void pvProduct(int64_t kc, int64_t dvPad, const float* P, const float* V, float* O) {
  constexpr int NR = NV * kLanes;
  for (int64_t j = 0; j < dvPad; j += NR)
    for (int64_t i = 0; i < kBq; i += MR)
      microKernel<MR, NV, kBk, 1>(kc, P + i * kBk, V + j * kc, O + i * dvPad + j, dvPad, true);
}

void pv(const GemmTile& t, int64_t kc, int64_t dvPad, const float* P, const float* V, float* O) {
  if (kc <= 0) return;
  if (t.wide) pvProduct<kWideMR, kWideNV>(kc, dvPad, P, V, O);
  else pvProduct<kNarrowMR, kNarrowNV>(kc, dvPad, P, V, O);
}

struct Geometry {
  int64_t B, Nq, Nk, H, d, dv;
  int64_t nkTiles, nqBlocks;
  GemmTile tS, tO;       // tiles of S = Q·Kᵀ (N = keys) and O = P·V (N = dv)
  int64_t nkPad, dvPad;  // keys padded to tS.nr, dv padded to tO.nr
};

// Scores of query block rows [0, kBq) against keys [k0, k0 + nk): S = Qp · Kᵀ, then masking of
// causal positions with −inf. Returns the number of valid keys per row via `valid`.
void scoreTile(const Geometry& g, const float* Qp, const float* Kt, int64_t k0, int64_t nk, float* S) {
  gemmBlock(g.tS, kBq, roundUp(nk, g.tS.nr), g.d, Qp, Kt + k0 * g.d, S, kBk, false);
}

inline int64_t validKeys(bool causal, int64_t i, int64_t k0, int64_t nk) {
  if (!causal) return nk;
  int64_t v = i - k0 + 1;
  return v < 0 ? 0 : v > nk ? nk : v;
}

// The region table of ATTENTION / ATTENTION_BACKWARD (native/regions.h), read once per op into
// what a score row needs: per query, the few keys its regions hide. Queries holding the same
// regions share one key list, so a row costs a lookup and a store per hidden key (per head and
// tile: at head dim 40 a row's products are ~6k multiply-adds, so anything branchier shows).
class RegionMask {
 public:
  // in[idx] is the table when attrs.regions; otherwise the mask is off (every call a no-op).
  RegionMask(const char* op, const OpAttrs& a, const Views& in, size_t idx, int64_t B, int64_t Nq, int64_t Nk) {
    if (!a.regions) return;
    const int R = regionCount(op, in.size() > idx ? &in[idx] : nullptr, B, Nq, Nk, a.width);
    const int32_t* table = in[idx].as<int32_t>();
    const int64_t cols = in[idx].shape[1];
    on_ = true;
    Nq_ = Nq;
    lists_.emplace_back();  // list 0: nothing hidden
    row_.assign(size_t(B * Nq), 0);
    for (int64_t b = 0; b < B; b++) {
      const auto owned = ownedKeys(op, table + b * cols, b, Nk, R);
      if (!owned.empty()) assignLists(owned, table + b * cols + Nk, R, a.width, Nq / a.width, &row_[size_t(b * Nq)]);
    }
  }
  bool on() const { return on_; }
  // Keys [k0, k0 + nk) that query n of batch row b may not see get `fill` in its score row S.
  void apply(int64_t b, int64_t n, int64_t k0, int64_t nk, float* S, float fill) const {
    if (!on_) return;
    for (int32_t k : lists_[size_t(row_[size_t(b * Nq_ + n)])])
      if (k >= k0 && k < k0 + nk) S[k - k0] = fill;
  }

 private:
  using Owned = std::vector<std::pair<int32_t, int32_t>>;  // (key, region)

  // The keys a batch row's regions own (E_ARGUMENT for an owner outside [−1, R)).
  static Owned ownedKeys(const char* op, const int32_t* owner, int64_t b, int64_t Nk, int R) {
    Owned owned;
    for (int64_t k = 0; k < Nk; k++) {
      if (owner[k] < -1 || owner[k] >= R)
        throw Error("E_ARGUMENT", std::string(op) + ": region table row " + std::to_string(b) + " gives key " +
                                      std::to_string(k) + " owner " + std::to_string(owner[k]) + ", not in [-1, " +
                                      std::to_string(R) + ")");
      if (owner[k] >= 0) owned.push_back({int32_t(k), owner[k]});
    }
    return owned;
  }

  // Each query of an H × W grid gets the list of the owned keys its regions hide (queries holding
  // the same regions share one list; neighbours mostly do, so the last one is tried first).
  void assignLists(const Owned& owned, const int32_t* boxes, int R, int64_t W, int64_t H, int32_t* row) {
    std::vector<uint32_t> colMask(static_cast<size_t>(W)), rowMask(static_cast<size_t>(H));
    regionAxes(boxes, R, W, H, colMask.data(), rowMask.data());
    std::vector<std::pair<uint32_t, int32_t>> seen;  // (regions held, list)
    uint32_t last = ~0u;
    int32_t list = 0;
    for (int64_t n = 0; n < W * H; n++) {
      const uint32_t inside = rowMask[size_t(n / W)] & colMask[size_t(n % W)];
      if (inside != last) {
        last = inside;
        list = -1;
        for (const auto& [m, l] : seen)
          if (m == inside) list = l;
        if (list < 0) {
          std::vector<int32_t> hidden;
          for (const auto& [k, o] : owned)
            if (!regionSees(o, inside)) hidden.push_back(k);
          list = hidden.empty() ? 0 : int32_t(lists_.size());
          if (list) lists_.push_back(std::move(hidden));
          seen.push_back({inside, list});
        }
      }
      row[n] = list;
    }
  }

  bool on_ = false;
  int64_t Nq_ = 0;
  std::vector<std::vector<int32_t>> lists_;  // hidden-key lists (sorted), list 0 empty
  std::vector<int32_t> row_;                 // [B, Nq]: each query's list
};

}  // namespace

void op_ATTENTION(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "attention";
  checkArity(op, in, 3, a.regions ? 4 : 3, out, a.capture ? 2 : 1);
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
  const RegionMask rg(op, a, in, 3, g.B, g.Nq, g.Nk);
  if (g.B == 0 || g.Nq == 0 || g.dv == 0) return;
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
          // The regions' −inf go in for the whole tile first: a scalar store just before a row's
          // vector loads would stall them (no store forwarding), ~30 ns a row at head dim 40.
          for (int64_t r = 0; r < nq && rg.on(); r++) rg.apply(b, i0 + r, k0, nk, S + r * kBk, -INFINITY);
          for (int64_t r = 0; r < kBq; r++) {
            float* Sr = S + r * kBk;
            int64_t cnt = validKeys(causal, i0 + r, k0, nk);
            float mt = cnt > 0 ? rowMax(Sr, cnt) : -INFINITY, mn = mt > m[r] ? mt : m[r];
            if (mn == -INFINITY && rg.on()) cnt = 0;  // every key so far hidden by the regions
            if (cnt > 0) {
              float corr = m[r] == -INFINITY ? 0.f : std::exp(m[r] - mn);
              // A hidden key's exp(−inf) comes out ≤ 1.2e−38 (vExp clamps), under any output's
              // resolution; captured probabilities get exact zeros instead (below).
              l[r] = l[r] * corr + expSubSum(Sr, Sr, cnt, mn);
              m[r] = mn;
              if (corr != 1.f) {
                float* Or = O + r * g.dvPad;
                for (int64_t c = 0; c < g.dvPad; c++) Or[c] *= corr;
              }
            }
            for (int64_t c = cnt; c < nk; c++) Sr[c] = 0.f;
          }
          pv(g.tO, nk, g.dvPad, S, Vp + k0 * g.dvPad, O);
        }
        for (int64_t r = 0; r < nq; r++) {
          const float inv = l[r] == 0.f ? 0.f : 1.f / l[r];  // l = 0: the regions hid every key
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
            rg.apply(b, i0 + r, k0, nk, Pr, -INFINITY);
          }
        }
        // Exact softmax in place, as torch.softmax computes it: exp(s − max) / sum.
        for (int64_t r = 0; r < nq; r++) {
          float* Pr = P + r * g.Nk;
          int64_t cnt = validKeys(causal, i0 + r, 0, g.Nk);
          const float mx = rowMax(Pr, cnt);
          if (mx == -INFINITY && rg.on()) cnt = 0;  // the regions hid every key: p = 0, o = 0
          const float inv = cnt ? 1.f / expSubSum(Pr, Pr, cnt, mx) : 0.f;
          rg.apply(b, i0 + r, 0, g.Nk, Pr, 0.f);  // hidden keys exactly 0, whatever exp(−inf) gave
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
          pv(g.tO, nk, g.dvPad, S, Vp + k0 * g.dvPad, O);
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
// worker and summed under a lock. With a region table (the last input) the recomputed P is the
// forward's masked one, so hidden keys get no gradient from the queries they were hidden from.
void op_ATTENTION_BACKWARD(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "attention_backward";
  checkArity(op, in, a.regions ? 5 : 4, a.regions ? 6 : 5, out, 3);
  const size_t nf = a.regions ? in.size() - 1 : in.size();  // the float inputs (the table is int32)
  checkF32(op, Views(in.begin(), in.begin() + long(nf)), out);
  const Shape &qs = in[0].shape, &ks = in[1].shape, &vs = in[2].shape;
  if (qs.size() != 3 || ks.size() != 3 || vs.size() != 3 || qs[0] != ks[0] || ks[0] != vs[0] || ks[1] != vs[1] ||
      qs[2] != ks[2])
    shapeError(op, "q " + shapeOf(in[0]) + ", k " + shapeOf(in[1]) + ", v " + shapeOf(in[2]));
  const int64_t B = qs[0], Nq = qs[1], Nk = ks[1], H = a.heads;
  if (H <= 0 || qs[2] % H || vs[2] % H) shapeError(op, "widths do not split into heads");
  const int64_t d = qs[2] / H, dv = vs[2] / H, Wq = qs[2], Wv = vs[2];
  checkShape(op, in[3], {B, Nq, Wv}, "do");
  const bool hasDp = nf > 4 && given(in, 4);
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
  const RegionMask rg(op, a, in, nf, B, Nq, Nk);
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
          for (int64_t c = 0; c < valid; c++) pr[c] *= scale;
          rg.apply(b, i0 + i, 0, valid, pr, -INFINITY);
          float mx = -INFINITY;
          for (int64_t c = 0; c < valid; c++) mx = std::max(mx, pr[c]);
          if (mx == -INFINITY && rg.on()) valid = 0;  // every key hidden: P = 0
          double sum = 0;
          for (int64_t c = 0; c < valid; c++) {
            pr[c] = std::exp(pr[c] - mx);
            sum += pr[c];
          }
          float inv = valid ? float(1.0 / sum) : 0.f;
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
