// Data movement: UPSAMPLE2X, CONCAT, PERMUTE, RESHAPE, SLICE. Like the CPU ops they move bytes
// of any dtype; contiguous row copies go through cudaMemcpy2DAsync (the copy engine's strided
// path), permutes through a 32×32 shared-memory transpose when they reduce to one.
#include "cuda_common.h"
#include "reduce.cuh"

namespace idforge {
namespace cuda {

namespace {

void sameDtype(OpCode op, const TensorView& x, const TensorView& o) {
  if (x.dtype != o.dtype)
    throw Error("E_ARGUMENT", std::string("cuda ") + opName(op) + ": out dtype " + dtypeName(o.dtype) +
                                  " differs from input dtype " + dtypeName(x.dtype));
}

void copyRows(void* dst, int64_t dstPitch, const void* src, int64_t srcPitch, int64_t rows, int64_t bytes) {
  if (rows <= 0 || bytes <= 0) return;
  if (rows == 1 || (dstPitch == bytes && srcPitch == bytes)) {
    CK(cudaMemcpyAsync(dst, src, size_t(rows * bytes), cudaMemcpyDeviceToDevice, ctx().stream));
    return;
  }
  CK(cudaMemcpy2DAsync(dst, size_t(dstPitch), src, size_t(srcPitch), size_t(bytes), size_t(rows),
                       cudaMemcpyDeviceToDevice, ctx().stream));
}

template <typename E>
__global__ void upsample2x(const E* __restrict__ x, E* __restrict__ y, int64_t planesH, int W, int H) {
  int64_t n = planesH * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i / W;
    int j = int(i - r * W);
    E v = x[i];
    // input row r = plane·H + h → output rows 2h and 2h+1 of the same plane, each 2W wide
    E* y0 = y + (r / H) * 4 * int64_t(H) * W + (r % H) * 4 * int64_t(W) + 2 * j;
    y0[0] = v;
    y0[1] = v;
    y0[2 * W] = v;
    y0[2 * W + 1] = v;
  }
}

struct PermPlan {
  int rank;
  int64_t od[8], is[8];
};

template <typename E>
__global__ void permuteGeneral(const E* __restrict__ x, E* __restrict__ y, int64_t n, PermPlan p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, off = 0;
    for (int k = p.rank - 1; k >= 0; k--) {
      int64_t q = rem / p.od[k];
      off += (rem - q * p.od[k]) * p.is[k];
      rem = q;
    }
    y[i] = x[off];
  }
}

// y[a][c][r] = x[a][r][c] for x [A, R, C]: reads and writes both coalesced through a padded tile.
template <typename E>
__global__ void transpose(const E* __restrict__ x, E* __restrict__ y, int R, int C) {
  __shared__ E tile[32][33];
  const int64_t a = blockIdx.z;
  const E* xa = x + a * int64_t(R) * C;
  E* ya = y + a * int64_t(R) * C;
  int r0 = blockIdx.y * 32, c0 = blockIdx.x * 32;
  for (int k = threadIdx.y; k < 32; k += 8) {
    int r = r0 + k, c = c0 + threadIdx.x;
    if (r < R && c < C) tile[k][threadIdx.x] = xa[int64_t(r) * C + c];
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += 8) {
    int c = c0 + k, r = r0 + threadIdx.x;
    if (r < R && c < C) ya[int64_t(c) * R + r] = tile[threadIdx.x][k];
  }
}

template <typename F>
void bySize(OpCode op, size_t es, F&& f) {
  switch (es) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
  }
  shapeError(op, "unsupported element size");
}

}  // namespace

void opLayout(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  if (in.empty()) shapeError(op, "expects an input");
  const TensorView &x = in[0], &y = out[0];
  const int64_t es = int64_t(dtypeSize(x.dtype));
  cudaStream_t st = ctx().stream;
  switch (op) {
    case OpCode::RESHAPE: {
      sameDtype(op, x, y);
      if (y.numel() != x.numel()) shapeError(op, "output " + shapeStr(y.shape) + " has a different element count than " + shapeStr(x.shape));
      if (y.data != x.data && x.numel()) CK(cudaMemcpyAsync(y.data, x.data, size_t(x.numel() * es), cudaMemcpyDeviceToDevice, st));
      return;
    }
    case OpCode::SLICE: {
      sameDtype(op, x, y);
      const AxisCopy g = sliceGeometry(a, x.shape);
      if (y.shape != g.out) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(g.out));
      const int64_t inner = g.inner * es, d = x.shape[size_t(g.axis)], row = (g.end - g.start) * inner;
      copyRows(y.data, row, static_cast<const char*>(x.data) + g.start * inner, d * inner, g.outer, row);
      return;
    }
    case OpCode::CONCAT: {
      for (const auto& t : in) sameDtype(op, t, y);
      const AxisCopy g = concatGeometry(a, in);
      if (y.shape != g.out) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(g.out));
      const int64_t inner = g.inner * es, rowOut = g.out[size_t(g.axis)] * inner;
      int64_t off = 0;
      for (const auto& t : in) {
        const int64_t row = t.shape[size_t(g.axis)] * inner;
        copyRows(static_cast<char*>(y.data) + off, rowOut, t.data, row, g.outer, row);
        off += row;
      }
      return;
    }
    case OpCode::UPSAMPLE2X: {
      sameDtype(op, x, y);
      if (x.shape.size() != 4) shapeError(op, "x must be [B, C, H, W]");
      Shape os = {x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3]};
      if (y.shape != os) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(os));
      int64_t planesH = x.shape[0] * x.shape[1] * x.shape[2];
      int W = int(x.shape[3]), H = int(x.shape[2]);
      if (!x.numel()) return;
      bySize(op, size_t(es), [&](auto tag) {
        using E = decltype(tag);
        upsample2x<E><<<gridFor(x.numel(), 256), 256, 0, st>>>(x.as<E>(), y.as<E>(), planesH, W, H);
      });
      CK_LAUNCH("upsample2x");
      return;
    }
    case OpCode::PERMUTE: {
      sameDtype(op, x, y);
      const Shape& xs = x.shape;
      const size_t R = xs.size();
      if (a.perm.size() != R) shapeError(op, "perm has " + std::to_string(a.perm.size()) + " entries for x " + shapeStr(xs));
      std::vector<bool> seen(R, false);
      Shape os(R);
      std::vector<int64_t> perm(R);
      for (size_t i = 0; i < R; i++) {
        int64_t p = a.perm[i] < 0 ? a.perm[i] + int64_t(R) : a.perm[i];
        if (p < 0 || p >= int64_t(R) || seen[size_t(p)]) shapeError(op, "perm is not a permutation");
        seen[size_t(p)] = true;
        perm[i] = p;
        os[i] = xs[size_t(p)];
      }
      if (y.shape != os) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(os));
      int64_t n = x.numel();
      if (!n) return;
      std::vector<int64_t> xstr(R);
      for (size_t k = R, s = 1; k-- > 0;) {
        xstr[k] = int64_t(s);
        s *= size_t(xs[k]);
      }
      std::vector<int64_t> od, is;  // output dims with input strides, size-1 dropped, runs merged
      for (size_t i = 0; i < R; i++) {
        if (os[i] == 1) continue;
        int64_t str = xstr[size_t(perm[i])];
        if (!od.empty() && is.back() == str * os[i]) {
          od.back() *= os[i];
          is.back() = str;
        } else {
          od.push_back(os[i]);
          is.push_back(str);
        }
      }
      if (od.empty()) od = {1}, is = {1};
      if (od.size() == 1) {  // the permutation only moved size-1 dims
        CK(cudaMemcpyAsync(y.data, x.data, size_t(n * es), cudaMemcpyDeviceToDevice, st));
        return;
      }
      size_t r = od.size();
      // [A, C, R] out of x [A, R, C]: out dims (A?, C, R) with input strides (R·C, 1, C)
      bool tr = is[r - 2] == 1 && is[r - 1] == od[r - 2] && (r == 2 || (r == 3 && is[0] == od[1] * od[2]));
      if (tr && od[r - 1] < 65536LL * 32 && od[r - 2] < 65536LL * 32 && (r == 2 || od[0] < 65536)) {
        int Rr = int(od[r - 1]), Cc = int(od[r - 2]);
        int A = r == 3 ? int(od[0]) : 1;
        dim3 grid{unsigned(ceilDiv(Cc, 32)), unsigned(ceilDiv(Rr, 32)), unsigned(A)};
        bySize(op, size_t(es), [&](auto tag) {
          using E = decltype(tag);
          transpose<E><<<grid, dim3(32, 8), 0, st>>>(x.as<E>(), y.as<E>(), Rr, Cc);
        });
        CK_LAUNCH("transpose");
        return;
      }
      if (r > 8) shapeError(op, "more than 8 non-mergeable dims");
      PermPlan p;
      p.rank = int(r);
      for (size_t k = 0; k < r; k++) p.od[k] = od[k], p.is[k] = is[k];
      bySize(op, size_t(es), [&](auto tag) {
        using E = decltype(tag);
        permuteGeneral<E><<<gridFor(n, 256), 256, 0, st>>>(x.as<E>(), y.as<E>(), n, p);
      });
      CK_LAUNCH("permute");
      return;
    }
    default: shapeError(op, "not a layout op");
  }
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts) ------------------------
// UPSAMPLE2X_BACKWARD: 2x2 sums, one thread per output. REDUCE_SUM: dims collapsed into kept /
// reduced runs; a thread per output (short sums) or a block per output (long sums), double sums.

namespace {

using Views = std::vector<TensorView>;

// dy[p, 2H, 2W] → dx[p, H, W]
template <typename T>
__global__ void upsample2xBackward(const T* __restrict__ dy, T* __restrict__ dx, int64_t n, int64_t H, int64_t W) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n; o += stride) {
    const int64_t xx = o % W, t = o / W, y = t % H, p = t / H;
    const T* r0 = dy + (p * 2 * H + 2 * y) * 2 * W + 2 * xx;
    const T* r1 = r0 + 2 * W;
    dx[o] = fromF<T>((toF(r0[0]) + toF(r0[1])) + (toF(r1[0]) + toF(r1[1])));
  }
}

// ---- REDUCE_SUM -------------------------------------------------------------------------------

constexpr int RED_MAXD = 8;
struct RedDims {
  int nk = 0, nr = 0;
  int64_t kExt[RED_MAXD], kStr[RED_MAXD], rExt[RED_MAXD], rStr[RED_MAXD];
};

// Element offset in x of output element o (row-major over the kept runs) / of reduction index n.
__device__ __forceinline__ int64_t decompose(int64_t i, int nd, const int64_t* ext, const int64_t* str) {
  int64_t off = 0;
  for (int k = nd - 1; k >= 0; k--) {
    const int64_t e = ext[k];
    const int64_t q = i / e;
    off += (i - q * e) * str[k];
    i = q;
  }
  return off;
}

template <typename T>
__global__ void reduceSerial(const T* __restrict__ x, T* __restrict__ y, RedDims d, int64_t nOut, int64_t nRed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < nOut; o += stride) {
    const int64_t base = decompose(o, d.nk, d.kExt, d.kStr);
    double s = 0;
    for (int64_t n = 0; n < nRed; n++) s += toF(x[base + decompose(n, d.nr, d.rExt, d.rStr)]);
    y[o] = fromF<T>(float(s));
  }
}

template <typename T>
__global__ void reduceBlock(const T* __restrict__ x, T* __restrict__ y, RedDims d, int64_t nOut, int64_t nRed) {
  __shared__ double red[32];
  for (int64_t o = blockIdx.x; o < nOut; o += gridDim.x) {  // uniform across the block
    const int64_t base = decompose(o, d.nk, d.kExt, d.kStr);
    double s = 0;
    for (int64_t n = threadIdx.x; n < nRed; n += blockDim.x) s += toF(x[base + decompose(n, d.nr, d.rExt, d.rStr)]);
    s = warpSum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
      const int nw = blockDim.x >> 5;
      double v = threadIdx.x < nw ? red[threadIdx.x] : 0.0;
      v = warpSum(v);
      if (threadIdx.x == 0) y[o] = fromF<T>(float(v));
    }
    __syncthreads();  // red is rewritten by the next output
  }
}

void upsampleBackwardOp(const Views& in, const Views& out) {
  const OpCode op = OpCode::UPSAMPLE2X_BACKWARD;
  arity(op, in, 1, 1, out, 1);
  const TensorView &dy = in[0], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, dy, dt, "dy");
  const Shape& s = dy.shape;
  if (s.size() != 4 || s[2] % 2 || s[3] % 2) shapeError(op, "dy " + shapeStr(s) + " must be [B, C, 2H, 2W]");
  const int64_t H = s[2] / 2, W = s[3] / 2;
  Shape xs = {s[0], s[1], H, W};
  if (dx.shape != xs) shapeError(op, "dx " + shapeStr(dx.shape) + ", expected " + shapeStr(xs));
  const int64_t n = dx.numel();
  if (!n) return;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    upsample2xBackward<T><<<gridFor(n, 256), 256, 0, ctx().stream>>>(dy.as<T>(), dx.as<T>(), n, H, W);
  });
  CK_LAUNCH("upsample2xBackward");
}

void reduceSumOp(const Views& in, const Views& out) {
  const OpCode op = OpCode::REDUCE_SUM;
  arity(op, in, 1, 1, out, 1);
  const TensorView &x = in[0], &y = out[0];
  DType dt = y.dtype;
  expectFloat(op, x, dt, "x");
  const Shape& xs = x.shape;
  const Shape& os0 = y.shape;
  if (os0.size() > xs.size()) shapeError(op, "out " + shapeStr(os0) + " has more dims than x " + shapeStr(xs));
  const size_t r = xs.size();
  Shape os(r - os0.size(), 1);
  os.insert(os.end(), os0.begin(), os0.end());
  for (size_t i = 0; i < r; i++)
    if (os[i] != xs[i] && os[i] != 1) shapeError(op, "x " + shapeStr(xs) + " does not reduce to " + shapeStr(os0));
  const int64_t nOut = y.numel();
  if (!nOut) return;
  // Collapse: drop extent-1 dims, merge neighbouring dims of the same kind (x is contiguous, so
  // neighbours once the 1s are gone are always mergeable).
  std::vector<int64_t> xstr(r, 1);
  for (size_t i = r; i-- > 1;) xstr[i - 1] = xstr[i] * xs[i];
  struct Run {
    bool kept;
    int64_t ext, str;
  };
  std::vector<Run> runs;
  for (size_t i = 0; i < r; i++) {
    if (xs[i] == 1) continue;
    bool kept = os[i] == xs[i];
    if (!runs.empty() && runs.back().kept == kept) {
      runs.back().ext *= xs[i];
      runs.back().str = xstr[i];
    } else {
      runs.push_back({kept, xs[i], xstr[i]});
    }
  }
  RedDims d;
  int64_t nRed = 1;
  for (const Run& u : runs) {
    if (u.kept) {
      if (d.nk == RED_MAXD) shapeError(op, "too many alternating kept/reduced dims");
      d.kExt[d.nk] = u.ext;
      d.kStr[d.nk++] = u.str;
    } else {
      if (d.nr == RED_MAXD) shapeError(op, "too many alternating kept/reduced dims");
      d.rExt[d.nr] = u.ext;
      d.rStr[d.nr++] = u.str;
      nRed *= u.ext;
    }
  }
  cudaStream_t st = ctx().stream;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    if (nRed <= 64) {
      reduceSerial<T><<<gridFor(nOut, 256), 256, 0, st>>>(x.as<T>(), y.as<T>(), d, nOut, nRed);
    } else {
      const int threads = nRed >= 4096 ? 256 : 128;
      const unsigned grid = unsigned(std::min<int64_t>(nOut, int64_t(1) << 20));
      reduceBlock<T><<<grid, threads, 0, st>>>(x.as<T>(), y.as<T>(), d, nOut, nRed);
    }
  });
  CK_LAUNCH("reduceSum");
}

}  // namespace

void opLayoutBackward(OpCode op, const OpAttrs&, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  if (op == OpCode::REDUCE_SUM) return reduceSumOp(in, out);
  upsampleBackwardOp(in, out);
}

}  // namespace cuda
}  // namespace idforge
