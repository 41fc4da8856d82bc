// Data movement: UPSAMPLE2X, CONCAT, PERMUTE, RESHAPE, SLICE. Like the CPU ops they move bytes
// of any dtype; contiguous row copies go through cudaMemcpy2DAsync (the copy engine's strided
// path), permutes through a 32×32 shared-memory transpose when they reduce to one.
#include "cuda_common.h"

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

}  // namespace cuda
}  // namespace idforge
