// Elementwise ops: GELU (erf), QUICK_GELU, SILU, RELU, TANH, SCALE, GEGLU, broadcast ADD/MUL and CFG.
// All math in fp32 whatever the storage type; 4-wide vector loads wherever sizes and alignment
// allow, since these ops are purely bandwidth-bound.
#include "cuda_common.h"
#include "derivatives.cuh"

namespace idforge {
namespace cuda {

namespace {

enum UnaryKind { K_GELU, K_QGELU, K_SILU, K_RELU, K_TANH, K_SCALE };

__device__ __forceinline__ float geluErf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

template <int K>
__device__ __forceinline__ float unary(float x, float s, float t) {
  if (K == K_GELU) return geluErf(x);
  if (K == K_QGELU) return x / (1.f + __expf(-1.702f * x));
  if (K == K_SILU) return x / (1.f + __expf(-x));
  if (K == K_RELU) return x > 0.f ? x : (x != x ? x : 0.f);
  if (K == K_TANH) return tanhf(x);
  return x * s + t;
}

// 4 consecutive elements as one 16-byte (fp32) or 8-byte (fp16) access.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load4(const __half* p, float (&v)[4]) {
  uint2 q = *reinterpret_cast<const uint2*>(p);
  float2 a = __half22float2(*reinterpret_cast<__half2*>(&q.x)), b = __half22float2(*reinterpret_cast<__half2*>(&q.y));
  v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(__half* p, const float (&v)[4]) {
  __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
  uint2 q;
  q.x = *reinterpret_cast<uint32_t*>(&a);
  q.y = *reinterpret_cast<uint32_t*>(&b);
  *reinterpret_cast<uint2*>(p) = q;
}

template <typename T, int K>
__global__ void unaryKernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, float s, float t, int vec) {
  int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (vec) {
    for (int64_t i = i0; i < n / 4; i += stride) {
      float v[4];
      load4(x + 4 * i, v);
#pragma unroll
      for (int k = 0; k < 4; k++) v[k] = unary<K>(v[k], s, t);
      store4(y + 4 * i, v);
    }
  } else {
    for (int64_t i = i0; i < n; i += stride) y[i] = fromF<T>(unary<K>(toF(x[i]), s, t));
  }
}

template <typename T>
__global__ void gegluKernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t F, int vec) {
  int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (vec) {
    int64_t F4 = F / 4, n = rows * F4;
    for (int64_t i = i0; i < n; i += stride) {
      int64_t r = i / F4, c = (i - r * F4) * 4;
      float h[4], g[4];
      load4(x + r * 2 * F + c, h);
      load4(x + r * 2 * F + F + c, g);
#pragma unroll
      for (int k = 0; k < 4; k++) h[k] *= geluErf(g[k]);
      store4(y + r * F + c, h);
    }
  } else {
    int64_t n = rows * F;
    for (int64_t i = i0; i < n; i += stride) {
      int64_t r = i / F, c = i - r * F;
      y[i] = fromF<T>(toF(x[r * 2 * F + c]) * geluErf(toF(x[r * 2 * F + F + c])));
    }
  }
}

bool aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// ---- broadcasting ----

struct Bcast {
  int rank = 0;
  int64_t dim[8], sa[8], sb[8];
};

template <int OP>
__device__ __forceinline__ float bin(float a, float b) { return OP == 0 ? a + b : a * b; }

template <typename T, int OP>
__global__ void binSame(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n, int vec) {
  int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (vec) {
    for (int64_t i = i0; i < n / 4; i += stride) {
      float u[4], v[4];
      load4(a + 4 * i, u);
      load4(b + 4 * i, v);
#pragma unroll
      for (int k = 0; k < 4; k++) u[k] = bin<OP>(u[k], v[k]);
      store4(y + 4 * i, u);
    }
  } else {
    for (int64_t i = i0; i < n; i += stride) y[i] = fromF<T>(bin<OP>(toF(a[i]), toF(b[i])));
  }
}

// Two collapsed dims with 32-bit indexing: covers bias rows ([N, C] + [C]), per-channel adds
// ([B·C, HW] + [B·C, 1]) and scalars, i.e. every broadcast the SD graphs make.
template <typename T, int OP>
__global__ void bin2(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, unsigned d1, unsigned n,
                     unsigned a0, unsigned a1, unsigned b0, unsigned b1) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    unsigned r = i / d1, c = i - r * d1;
    y[i] = fromF<T>(bin<OP>(toF(a[r * a0 + c * a1]), toF(b[r * b0 + c * b1])));
  }
}

template <typename T, int OP>
__global__ void binGeneral(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n, Bcast p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, oa = 0, ob = 0;
    for (int k = p.rank - 1; k >= 0; k--) {
      int64_t q = rem / p.dim[k], ix = rem - q * p.dim[k];
      rem = q;
      oa += ix * p.sa[k];
      ob += ix * p.sb[k];
    }
    y[i] = fromF<T>(bin<OP>(toF(a[oa]), toF(b[ob])));
  }
}

Bcast plan(OpCode op, const TensorView& A, const TensorView& B, const TensorView& O) {
  const Shape &as = A.shape, &bs = B.shape;
  size_t R = std::max(as.size(), bs.size());
  Shape want(R);
  std::vector<int64_t> da(R), db(R);
  for (size_t i = 0; i < R; i++) {
    da[i] = i < R - as.size() ? 1 : as[i - (R - as.size())];
    db[i] = i < R - bs.size() ? 1 : bs[i - (R - bs.size())];
    if (da[i] != db[i] && da[i] != 1 && db[i] != 1) shapeError(op, "cannot broadcast " + shapeStr(as) + " with " + shapeStr(bs));
    want[i] = da[i] == 1 ? db[i] : da[i];
  }
  if (O.shape != want) shapeError(op, "output " + shapeStr(O.shape) + " is not the broadcast shape " + shapeStr(want));
  std::vector<int64_t> xa(R), xb(R);
  int64_t ca = 1, cb = 1;
  for (size_t k = R; k-- > 0;) {
    xa[k] = da[k] == 1 ? 0 : ca;
    xb[k] = db[k] == 1 ? 0 : cb;
    ca *= da[k];
    cb *= db[k];
  }
  std::vector<int64_t> md, ma, mb;  // merge neighbours contiguous for both operands
  for (size_t k = 0; k < R; k++) {
    if (want[k] == 1) continue;
    if (!md.empty() && ma.back() == xa[k] * want[k] && mb.back() == xb[k] * want[k]) {
      md.back() *= want[k];
      ma.back() = xa[k];
      mb.back() = xb[k];
    } else {
      md.push_back(want[k]);
      ma.push_back(xa[k]);
      mb.push_back(xb[k]);
    }
  }
  if (md.empty()) md = {1}, ma = {0}, mb = {0};
  if (md.size() > 8) shapeError(op, "more than 8 non-mergeable broadcast dimensions");
  Bcast p;
  p.rank = int(md.size());
  for (int k = 0; k < p.rank; k++) p.dim[k] = md[k], p.sa[k] = ma[k], p.sb[k] = mb[k];
  return p;
}

template <typename T, int OP>
void runBinary(const T* a, const T* b, T* y, int64_t n, const Bcast& p) {
  cudaStream_t s = ctx().stream;
  if (p.rank == 1 && p.sa[0] == 1 && p.sb[0] == 1) {
    int vec = n % 4 == 0 && aligned(a, 16) && aligned(b, 16) && aligned(y, 16);
    binSame<T, OP><<<gridFor(vec ? n / 4 : n, 256), 256, 0, s>>>(a, b, y, n, vec);
  } else if (p.rank <= 2 && n < (int64_t(1) << 31)) {
    bool two = p.rank == 2;
    unsigned d1 = unsigned(two ? p.dim[1] : p.dim[0]);
    bin2<T, OP><<<gridFor(n, 256), 256, 0, s>>>(a, b, y, d1, unsigned(n), unsigned(two ? p.sa[0] : 0),
                                                unsigned(two ? p.sa[1] : p.sa[0]), unsigned(two ? p.sb[0] : 0),
                                                unsigned(two ? p.sb[1] : p.sb[0]));
  } else {
    binGeneral<T, OP><<<gridFor(n, 256), 256, 0, s>>>(a, b, y, n, p);
  }
  CK_LAUNCH("binary");
}

template <typename T>
__global__ void cfgKernel(const T* __restrict__ e, T* __restrict__ y, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float u = toF(e[i]), c = toF(e[n + i]);
    y[i] = fromF<T>(u + s * (c - u));  // diffusers' expression, same rounding as the CPU op
  }
}

}  // namespace

void opUnary(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  if (in.empty()) shapeError(op, "expects one input");
  const TensorView &x = in[0], &y = out[0];
  DType dt = y.dtype;
  expectFloat(op, x, dt, "x");
  if (op == OpCode::GEGLU) {
    if (x.shape.empty() || x.shape.back() % 2) shapeError(op, "x " + shapeStr(x.shape) + " needs an even last dim");
    Shape os = x.shape;
    os.back() /= 2;
    if (y.shape != os) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(os));
    int64_t F = os.back(), rows = F ? y.numel() / F : 0;
    if (!rows) return;
    int vec = F % 4 == 0 && aligned(x.data, 16) && aligned(y.data, 16);
    dispatchFloat(op, dt, [&](auto tag) {
      using T = decltype(tag);
      gegluKernel<T><<<gridFor(vec ? rows * F / 4 : rows * F, 256), 256, 0, ctx().stream>>>(x.as<T>(), y.as<T>(),
                                                                                            rows, F, vec);
    });
    CK_LAUNCH("geglu");
    return;
  }
  if (y.shape != x.shape) shapeError(op, "output " + shapeStr(y.shape) + " must equal x " + shapeStr(x.shape));
  int64_t n = x.numel();
  if (!n) return;
  int vec = n % 4 == 0 && aligned(x.data, 16) && aligned(y.data, 16);
  float s = float(a.scale), t = float(a.shift);
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    unsigned g = gridFor(vec ? n / 4 : n, 256);
    cudaStream_t st = ctx().stream;
    switch (op) {
      case OpCode::GELU: unaryKernel<T, K_GELU><<<g, 256, 0, st>>>(x.as<T>(), y.as<T>(), n, s, t, vec); break;
      case OpCode::QUICK_GELU: unaryKernel<T, K_QGELU><<<g, 256, 0, st>>>(x.as<T>(), y.as<T>(), n, s, t, vec); break;
      case OpCode::SILU: unaryKernel<T, K_SILU><<<g, 256, 0, st>>>(x.as<T>(), y.as<T>(), n, s, t, vec); break;
      case OpCode::RELU: unaryKernel<T, K_RELU><<<g, 256, 0, st>>>(x.as<T>(), y.as<T>(), n, s, t, vec); break;
      case OpCode::TANH: unaryKernel<T, K_TANH><<<g, 256, 0, st>>>(x.as<T>(), y.as<T>(), n, s, t, vec); break;
      default: unaryKernel<T, K_SCALE><<<g, 256, 0, st>>>(x.as<T>(), y.as<T>(), n, s, t, vec); break;
    }
  });
  CK_LAUNCH("unary");
}

void opBinary(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const TensorView& y = out[0];
  DType dt = y.dtype;
  if (op == OpCode::CFG) {
    if (in.empty()) shapeError(op, "expects eps");
    const TensorView& e = in[0];
    expectFloat(op, e, dt, "eps");
    if (e.shape.empty() || e.shape[0] % 2) shapeError(op, "eps " + shapeStr(e.shape) + " needs an even first dim [2B, ..]");
    Shape os = e.shape;
    os[0] /= 2;
    if (y.shape != os) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(os));
    int64_t n = y.numel();
    if (!n) return;
    dispatchFloat(op, dt, [&](auto tag) {
      using T = decltype(tag);
      cfgKernel<T><<<gridFor(n, 256), 256, 0, ctx().stream>>>(e.as<T>(), y.as<T>(), n, float(a.scale));
    });
    CK_LAUNCH("cfg");
    return;
  }
  if (in.size() < 2) shapeError(op, "expects a and b");
  expectFloat(op, in[0], dt, "a");
  expectFloat(op, in[1], dt, "b");
  Bcast p = plan(op, in[0], in[1], y);
  int64_t n = y.numel();
  if (!n) return;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    if (op == OpCode::ADD) runBinary<T, 0>(in[0].as<T>(), in[1].as<T>(), y.as<T>(), n, p);
    else runBinary<T, 1>(in[0].as<T>(), in[1].as<T>(), y.as<T>(), n, p);
  });
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts) ------------------------
// GELU/QUICK_GELU/SILU/GEGLU backward: one grid-stride kernel each, fp32 math.

namespace {

using Views = std::vector<TensorView>;

// ---- elementwise ------------------------------------------------------------------------------

enum BwdKind { KB_GELU, KB_QGELU, KB_SILU };

template <typename T, int K>
__global__ void unaryBackward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float v = toF(x[i]);
    const float g = K == KB_GELU ? geluGradF(v) : siluGradF(v, K == KB_QGELU ? 1.702f : 1.f);
    dx[i] = fromF<T>(toF(dy[i]) * g);
  }
}

// x[r, 0:F] = h, x[r, F:2F] = gate;  y = h·gelu(gate)
template <typename T>
__global__ void gegluBackward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                              int64_t F) {
  const int64_t n = rows * F, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / F, c = i - r * F;
    const int64_t base = r * 2 * F + c;
    const float h = toF(x[base]), g = toF(x[base + F]), d = toF(dy[i]);
    dx[base] = fromF<T>(d * geluF(g));
    dx[base + F] = fromF<T>(d * h * geluGradF(g));
  }
}

void activationBackward(OpCode op, const Views& in, const Views& out) {
  arity(op, in, 2, 2, out, 1);
  const TensorView &x = in[0], &dy = in[1], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, x, dt, "x");
  expectFloat(op, dy, dt, "dy");
  if (dy.shape != x.shape || dx.shape != x.shape)
    shapeError(op, "x " + shapeStr(x.shape) + ", dy " + shapeStr(dy.shape) + " and dx " + shapeStr(dx.shape) +
                       " must match");
  const int64_t n = x.numel();
  if (!n) return;
  cudaStream_t st = ctx().stream;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    const unsigned grid = gridFor(n, 256);
    if (op == OpCode::GELU_BACKWARD)
      unaryBackward<T, KB_GELU><<<grid, 256, 0, st>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), n);
    else if (op == OpCode::QUICK_GELU_BACKWARD)
      unaryBackward<T, KB_QGELU><<<grid, 256, 0, st>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), n);
    else
      unaryBackward<T, KB_SILU><<<grid, 256, 0, st>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), n);
  });
  CK_LAUNCH("unaryBackward");
}

void gegluBackwardOp(const Views& in, const Views& out) {
  const OpCode op = OpCode::GEGLU_BACKWARD;
  arity(op, in, 2, 2, out, 1);
  const TensorView &x = in[0], &dy = in[1], &dx = out[0];
  DType dt = dx.dtype;
  expectFloat(op, x, dt, "x");
  expectFloat(op, dy, dt, "dy");
  if (x.shape.empty() || x.shape.back() % 2) shapeError(op, "x " + shapeStr(x.shape) + " must be [.., 2F]");
  const int64_t F = x.shape.back() / 2;
  Shape ys = x.shape;
  ys.back() = F;
  if (dy.shape != ys) shapeError(op, "dy " + shapeStr(dy.shape) + ", expected " + shapeStr(ys));
  if (dx.shape != x.shape) shapeError(op, "dx " + shapeStr(dx.shape) + ", expected " + shapeStr(x.shape));
  if (!F || !x.numel()) return;
  const int64_t rows = x.numel() / (2 * F);
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    gegluBackward<T><<<gridFor(rows * F, 256), 256, 0, ctx().stream>>>(x.as<T>(), dy.as<T>(), dx.as<T>(), rows, F);
  });
  CK_LAUNCH("gegluBackward");
}

}  // namespace

void opActivationBackward(OpCode op, const OpAttrs&, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  if (op == OpCode::GEGLU_BACKWARD) return gegluBackwardOp(in, out);
  activationBackward(op, in, out);
}

}  // namespace cuda
}  // namespace idforge
