// Data-movement ops (UPSAMPLE2X, CONCAT, PERMUTE, RESHAPE, SLICE) and the small index/embedding
// ops (TIMESTEP_EMB, EMBEDDING, INJECT). Movement ops accept any dtype (ids get sliced and
// concatenated too) as long as input and output agree. At the end, their backward ops
// (UPSAMPLE2X_BACKWARD, REDUCE_SUM: the adjoint of broadcasting, INJECT_BACKWARD).
#include <cmath>
#include <cstring>
#include <vector>

#include "ops.h"
#include "parallel.h"

namespace idforge {
namespace cpu {
namespace {

constexpr int64_t kCopyGrain = 1 << 16;  // bytes per parallel chunk of a plain copy

void sameDtype(const char* op, const TensorView& x, const TensorView& o) {
  if (x.dtype != o.dtype)
    throw Error("E_ARGUMENT", std::string(op) + ": out dtype " + dtypeName(o.dtype) + " differs from input dtype " +
                                  dtypeName(x.dtype));
}

// Copies `rows` blocks of `bytes` bytes from src (stride srcStride) to dst (stride dstStride).
void copyRows(char* dst, int64_t dstStride, const char* src, int64_t srcStride, int64_t rows, int64_t bytes) {
  if (rows <= 0 || bytes <= 0) return;
  int64_t grain = std::max<int64_t>(1, kCopyGrain / bytes);
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) std::memcpy(dst + r * dstStride, src + r * srcStride, size_t(bytes));
  };
  if (rows <= grain && rows * bytes < kCopyGrain * 4) body(0, rows);
  else parallel_for(rows, body, grain);
}

}  // namespace

void op_RESHAPE(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "reshape";
  checkArity(op, in, 1, 1, out, 1);
  sameDtype(op, in[0], out[0]);
  checkNumel(op, out[0], in[0].numel(), "out");
  int64_t bytes = in[0].numel() * int64_t(dtypeSize(in[0].dtype));
  if (out[0].data == in[0].data || bytes == 0) return;
  int64_t chunks = (bytes + kCopyGrain - 1) / kCopyGrain;
  copyRows(out[0].as<char>(), kCopyGrain, in[0].as<char>(), kCopyGrain, bytes / kCopyGrain, kCopyGrain);
  if (bytes % kCopyGrain)
    std::memcpy(out[0].as<char>() + (chunks - 1) * kCopyGrain, in[0].as<char>() + (chunks - 1) * kCopyGrain,
                size_t(bytes % kCopyGrain));
}

void op_SLICE(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "slice";
  checkArity(op, in, 1, 1, out, 1);
  sameDtype(op, in[0], out[0]);
  const AxisCopy g = sliceGeometry(a, in[0].shape);
  checkShape(op, out[0], g.out, "out");
  const int64_t inner = g.inner * int64_t(dtypeSize(in[0].dtype)), d = in[0].shape[size_t(g.axis)];
  const int64_t row = (g.end - g.start) * inner;
  copyRows(out[0].as<char>(), row, in[0].as<char>() + g.start * inner, d * inner, g.outer, row);
}

void op_CONCAT(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "concat";
  if (in.empty()) shapeError(op, "needs at least one input");
  checkArity(op, in, in.size(), in.size(), out, 1);
  for (const auto& t : in) sameDtype(op, t, out[0]);
  const AxisCopy g = concatGeometry(a, in);
  checkShape(op, out[0], g.out, "out");
  const int64_t inner = g.inner * int64_t(dtypeSize(out[0].dtype)), rowOut = g.out[size_t(g.axis)] * inner;
  int64_t off = 0;
  for (const auto& t : in) {
    const int64_t row = t.shape[size_t(g.axis)] * inner;
    copyRows(out[0].as<char>() + off, rowOut, t.as<char>(), row, g.outer, row);
    off += row;
  }
}

namespace {

template <typename T>
void permuteImpl(const T* x, T* y, const std::vector<int64_t>& od, const std::vector<int64_t>& is) {
  // y has dims od (row-major); element y[i0..iR-1] = x[sum ik * is[k]]. Tiles over the last two
  // output dims keep both the reads and the writes within a few cache lines.
  const int R = int(od.size());
  const int64_t n1 = od[R - 1], s1 = is[R - 1];
  const int64_t n2 = R >= 2 ? od[R - 2] : 1, s2 = R >= 2 ? is[R - 2] : 0;
  int64_t outer = 1;
  for (int k = 0; k < R - 2; k++) outer *= od[k];
  constexpr int64_t TB = 32;
  const int64_t t2 = (n2 + TB - 1) / TB, t1 = (n1 + TB - 1) / TB;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      int64_t o = t / (t2 * t1), r = t % (t2 * t1), i0 = (r / t1) * TB, j0 = (r % t1) * TB;
      int64_t base = 0, rem = o;
      for (int k = R - 3; k >= 0; k--) {
        base += (rem % od[k]) * is[k];
        rem /= od[k];
      }
      T* yo = y + o * n2 * n1;
      int64_t i1 = std::min(n2, i0 + TB), j1 = std::min(n1, j0 + TB);
      for (int64_t i = i0; i < i1; i++) {
        const T* xi = x + base + i * s2;
        T* yi = yo + i * n1;
        if (s1 == 1)
          for (int64_t j = j0; j < j1; j++) yi[j] = xi[j];
        else
          for (int64_t j = j0; j < j1; j++) yi[j] = xi[j * s1];
      }
    }
  };
  int64_t tiles = outer * t2 * t1;
  if (tiles * TB * TB < 1 << 15) body(0, tiles);
  else parallel_for(tiles, body, std::max<int64_t>(1, tiles / (8 * numThreads())));
}

}  // namespace

void op_PERMUTE(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "permute";
  checkArity(op, in, 1, 1, out, 1);
  sameDtype(op, in[0], out[0]);
  const Shape& xs = in[0].shape;
  const size_t R = xs.size();
  if (a.perm.size() != R) shapeError(op, "perm has " + std::to_string(a.perm.size()) + " entries for x " + shapeOf(in[0]));
  std::vector<bool> seen(R, false);
  Shape os(R);
  for (size_t i = 0; i < R; i++) {
    int64_t p = a.perm[i] < 0 ? a.perm[i] + int64_t(R) : a.perm[i];
    if (p < 0 || p >= int64_t(R) || seen[size_t(p)]) shapeError(op, "perm is not a permutation of 0.." + std::to_string(R - 1));
    seen[size_t(p)] = true;
    os[i] = xs[size_t(p)];
  }
  checkShape(op, out[0], os, "out");
  if (in[0].numel() == 0) return;
  std::vector<int64_t> xstr(R);
  for (size_t k = R, s = 1; k-- > 0;) {
    xstr[k] = int64_t(s);
    s *= size_t(xs[k]);
  }
  // Output dims with their input strides; drop size-1 dims and merge runs that stay contiguous.
  std::vector<int64_t> od, is;
  for (size_t i = 0; i < R; i++) {
    int64_t p = a.perm[i] < 0 ? a.perm[i] + int64_t(R) : a.perm[i];
    if (os[i] == 1) continue;
    if (!od.empty() && is.back() == xstr[size_t(p)] * os[i]) {
      od.back() *= os[i];
      is.back() = xstr[size_t(p)];
    } else {
      od.push_back(os[i]);
      is.push_back(xstr[size_t(p)]);
    }
  }
  if (od.empty()) {
    od.push_back(1);
    is.push_back(1);
  }
  switch (dtypeSize(in[0].dtype)) {
    case 1: permuteImpl(in[0].as<uint8_t>(), out[0].as<uint8_t>(), od, is); break;
    case 2: permuteImpl(in[0].as<uint16_t>(), out[0].as<uint16_t>(), od, is); break;
    case 4: permuteImpl(in[0].as<uint32_t>(), out[0].as<uint32_t>(), od, is); break;
    default: permuteImpl(in[0].as<uint64_t>(), out[0].as<uint64_t>(), od, is); break;
  }
}

void op_UPSAMPLE2X(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "upsample2x";
  checkArity(op, in, 1, 1, out, 1);
  checkDtype(op, in[0], DType::F32, "x");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& xs = in[0].shape;
  if (xs.size() != 4) shapeError(op, "x " + shapeOf(in[0]) + " must be [B, C, H, W]");
  checkShape(op, out[0], {xs[0], xs[1], 2 * xs[2], 2 * xs[3]}, "out");
  const int64_t planes = xs[0] * xs[1], H = xs[2], W = xs[3];
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {  // r = input row over all planes
      const float* xr = x + r * W;
      float* y0 = y + (r / H) * 4 * H * W + (r % H) * 4 * W;
      for (int64_t j = 0; j < W; j++) y0[2 * j] = y0[2 * j + 1] = xr[j];
      std::memcpy(y0 + 2 * W, y0, sizeof(float) * size_t(2 * W));
    }
  };
  int64_t rows = planes * H, grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1));
  if (rows <= grain) body(0, rows);
  else parallel_for(rows, body, grain);
}

void op_TIMESTEP_EMB(const OpAttrs& a, const Views& in, const Views& out) {
  const char* op = "timestep_emb";
  checkArity(op, in, 1, 1, out, 1);
  checkDtype(op, in[0], DType::F32, "t");
  checkDtype(op, out[0], DType::F32, "out");
  if (in[0].shape.size() != 1) shapeError(op, "t " + shapeOf(in[0]) + " must be [B]");
  const int64_t B = in[0].shape[0], dim = a.dim, half = dim / 2;
  if (dim <= 0) shapeError(op, "dim must be positive, got " + std::to_string(dim));
  checkShape(op, out[0], {B, dim}, "out");
  const double denom = double(half) - a.shift;
  if (half > 0 && denom == 0.0) throw Error("E_ARGUMENT", "timestep_emb: half - shift is zero");
  const float* t = in[0].as<float>();
  float* y = out[0].as<float>();
  // The same float32 steps as diffusers' get_timestep_embedding (exponent, exp, t*freq are float32
  // tensors there); only sin/cos are evaluated in double and rounded once.
  const float nl = float(-std::log(a.maxPeriod)), dn = float(denom);
  for (int64_t b = 0; b < B; b++) {
    float* yb = y + b * dim;
    for (int64_t i = 0; i < half; i++) {
      float f = std::exp(nl * float(i) / dn);
      float arg = t[b] * f;
      float s = float(std::sin(double(arg))), c = float(std::cos(double(arg)));
      yb[i] = a.flip ? c : s;
      yb[half + i] = a.flip ? s : c;
    }
    if (dim % 2) yb[dim - 1] = 0.f;
  }
}

void op_EMBEDDING(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "embedding";
  checkArity(op, in, 2, 2, out, 1);
  checkDtype(op, in[0], DType::I32, "ids");
  const Operand tb = weightOperand(op, in[1], "table");
  checkDtype(op, out[0], DType::F32, "out");
  if (in[1].shape.size() != 2) shapeError(op, "table " + shapeOf(in[1]) + " must be [V, D]");
  const int64_t V = in[1].shape[0], D = in[1].shape[1], n = in[0].numel();
  Shape os = in[0].shape;
  os.push_back(D);
  checkShape(op, out[0], os, "out");
  const int32_t* ids = in[0].as<int32_t>();
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= V)
      throw Error("E_ARGUMENT", "embedding: id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                    " is outside the table of " + std::to_string(V) + " rows");
  float* y = out[0].as<float>();
  for (int64_t i = 0; i < n; i++) {
    const int64_t row = int64_t(ids[i]) * D;
    if (tb.half) kern().pack.halfToFloat(static_cast<const uint16_t*>(tb.p) + row, y + i * D, D);
    else std::memcpy(y + i * D, static_cast<const float*>(tb.p) + row, sizeof(float) * size_t(D));
  }
}

void op_INJECT(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "inject";
  checkArity(op, in, 3, 3, out, 1);
  checkDtype(op, in[0], DType::F32, "x");
  checkDtype(op, in[1], DType::I32, "slots");
  checkDtype(op, in[2], DType::F32, "vectors");
  checkDtype(op, out[0], DType::F32, "out");
  const Shape& xs = in[0].shape;
  if (xs.size() != 3) shapeError(op, "x " + shapeOf(in[0]) + " must be [B, N, D]");
  const int64_t D = xs[2];
  checkShape(op, in[1], {xs[0], xs[1]}, "slots");
  if (in[2].shape.size() != 2 || in[2].shape[1] != D)
    shapeError(op, "vectors " + shapeOf(in[2]) + " must be [M, " + std::to_string(D) + "]");
  checkShape(op, out[0], xs, "out");
  const int64_t M = in[2].shape[0], n = xs[0] * xs[1];
  const int32_t* slots = in[1].as<int32_t>();
  for (int64_t i = 0; i < n; i++)
    if (slots[i] < -1 || slots[i] >= M)
      throw Error("E_ARGUMENT", "inject: slot " + std::to_string(slots[i]) + " at position " + std::to_string(i) +
                                    " is neither -1 nor a row of the " + std::to_string(M) + " vectors");
  const float* x = in[0].as<float>();
  const float* v = in[2].as<float>();
  float* y = out[0].as<float>();
  for (int64_t i = 0; i < n; i++) {
    const float* src = slots[i] >= 0 ? v + int64_t(slots[i]) * D : x + i * D;
    if (src != y + i * D) std::memcpy(y + i * D, src, sizeof(float) * size_t(D));
  }
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts) --------------------------------

// 2x2 sums: the adjoint of nearest-neighbour upsampling.
void op_UPSAMPLE2X_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "upsample2x_backward";
  checkArity(op, in, 1, 1, out, 1);
  checkF32(op, in, out);
  const Shape& s = in[0].shape;
  if (s.size() != 4 || s[2] % 2 || s[3] % 2) shapeError(op, "dy " + shapeOf(in[0]) + " must be [B, C, 2H, 2W]");
  const int64_t H = s[2] / 2, W = s[3] / 2, planes = s[0] * s[1];
  checkShape(op, out[0], {s[0], s[1], H, W}, "dx");
  const float* dy = in[0].as<float>();
  float* dx = out[0].as<float>();
  parallel_for(planes, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
      for (int64_t y = 0; y < H; y++) {
        const float* r0 = dy + (p * 2 * H + 2 * y) * 2 * W;
        const float* r1 = r0 + 2 * W;
        float* o = dx + (p * H + y) * W;
        for (int64_t x = 0; x < W; x++) o[x] = (r0[2 * x] + r0[2 * x + 1]) + (r1[2 * x] + r1[2 * x + 1]);
      }
  });
}

// Sums x over the dims where out (right-aligned, missing leading dims = 1) has extent 1.
void op_REDUCE_SUM(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "reduce_sum";
  checkArity(op, in, 1, 1, out, 1);
  checkF32(op, in, out);
  const Shape& xs = in[0].shape;
  const Shape& os0 = out[0].shape;
  if (os0.size() > xs.size()) shapeError(op, "out " + shapeOf(out[0]) + " has more dims than x " + shapeOf(in[0]));
  const size_t r = xs.size();
  Shape os(r - os0.size(), 1);
  os.insert(os.end(), os0.begin(), os0.end());
  for (size_t i = 0; i < r; i++)
    if (os[i] != xs[i] && os[i] != 1) shapeError(op, "x " + shapeOf(in[0]) + " does not reduce to " + shapeOf(out[0]));
  // Strides of x; out element o sums x over the reduced dims.
  std::vector<int64_t> xstr(r, 1), kept, red;
  for (size_t i = r; i-- > 1;) xstr[i - 1] = xstr[i] * xs[i];
  for (size_t i = 0; i < r; i++) (os[i] == xs[i] ? kept : red).push_back(int64_t(i));
  int64_t nOut = out[0].numel(), nRed = 1;
  for (auto i : red) nRed *= xs[size_t(i)];
  const float* x = in[0].as<float>();
  float* y = out[0].as<float>();
  parallel_for(nOut, [&](int64_t o0, int64_t o1) {
    std::vector<int64_t> idx(red.size());
    for (int64_t o = o0; o < o1; o++) {
      int64_t base = 0, rem = o;
      for (size_t k = kept.size(); k-- > 0;) {
        int64_t d = xs[size_t(kept[k])];
        base += (rem % d) * xstr[size_t(kept[k])];
        rem /= d;
      }
      double s = 0;
      std::fill(idx.begin(), idx.end(), 0);
      int64_t off = 0;
      for (int64_t n = 0; n < nRed; n++) {
        s += x[base + off];
        for (size_t k = red.size(); k-- > 0;) {
          size_t dim = size_t(red[k]);
          off += xstr[dim];
          if (++idx[k] < xs[dim]) break;
          off -= idx[k] * xstr[dim];
          idx[k] = 0;
        }
      }
      y[o] = float(s);
    }
  });
}

// Gradient w.r.t. the injected vectors: dvec[m] = Σ of dy rows whose slot is m.
void op_INJECT_BACKWARD(const OpAttrs&, const Views& in, const Views& out) {
  const char* op = "inject_backward";
  checkArity(op, in, 2, 2, out, 1);
  checkDtype(op, in[0], DType::F32, "dy");
  checkDtype(op, in[1], DType::I32, "slots");
  checkDtype(op, out[0], DType::F32, "dvectors");
  const Shape& ys = in[0].shape;
  if (ys.size() != 3 || in[1].shape != Shape{ys[0], ys[1]} || out[0].shape.size() != 2 || out[0].shape[1] != ys[2])
    shapeError(op, "dy " + shapeOf(in[0]) + ", slots " + shapeOf(in[1]) + ", dvectors " + shapeOf(out[0]));
  const int64_t rows = ys[0] * ys[1], D = ys[2], M = out[0].shape[0];
  const float* dy = in[0].as<float>();
  const int32_t* sl = in[1].as<int32_t>();
  float* o = out[0].as<float>();
  std::vector<double> acc(size_t(M * D), 0.0);
  for (int64_t r = 0; r < rows; r++) {
    int32_t s = sl[r];
    if (s < 0) continue;
    if (s >= M) throw Error("E_ARGUMENT", std::string(op) + ": slot " + std::to_string(s) + " out of range");
    for (int64_t c = 0; c < D; c++) acc[size_t(s * D + c)] += dy[r * D + c];
  }
  for (int64_t i = 0; i < M * D; i++) o[i] = float(acc[size_t(i)]);
}

}  // namespace cpu
}  // namespace idforge
