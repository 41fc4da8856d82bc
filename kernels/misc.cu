// TIMESTEP_EMB, EMBEDDING, INJECT: small index/embedding ops. Bad ids are not checked on the
// host (that would cost a synchronisation per op): the kernel clamps its reads and sets the
// context's error flag, which the next download()/synchronize() turns into E_ARGUMENT.
#include <cmath>

#include "cuda_common.h"

namespace idforge {
namespace cuda {

namespace {

// Mirrors the CPU op step for step: float32 exponent and t·f like diffusers, exp/sin/cos in
// double (not touched by --use_fast_math), IEEE division so the frequencies match bit for bit.
template <typename T>
__global__ void timestepEmb(const T* __restrict__ t, T* __restrict__ y, int B, int dim, float nl, float dn, int flip) {
  int half = dim / 2;
  int n = B * dim;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int b = i / dim, j = i - b * dim;
    float v = 0.f;
    if (j < 2 * half) {
      int k = j < half ? j : j - half;
      float f = float(exp(double(__fdiv_rn(__fmul_rn(nl, float(k)), dn))));
      double arg = double(__fmul_rn(toF(t[b]), f));
      bool first = j < half;
      bool useSin = flip ? !first : first;
      v = float(useSin ? sin(arg) : cos(arg));
    }
    y[i] = fromF<T>(v);
  }
}

template <typename T>
__global__ void embedding(const int32_t* __restrict__ ids, const T* __restrict__ table, T* __restrict__ y, int64_t n,
                          int64_t D, int64_t V, int* err) {
  int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i / D, c = i - r * D;
    int id = ids[r];
    if (id < 0 || id >= V) {
      if (c == 0) *(volatile int*)err = 1;  // plain store: atomics on mapped host memory are not portable
      id = 0;
    }
    y[i] = table[int64_t(id) * D + c];
  }
}

template <typename T>
__global__ void inject(const T* __restrict__ x, const int32_t* __restrict__ slots, const T* __restrict__ vec,
                       T* __restrict__ y, int64_t n, int64_t D, int64_t M, int* err) {
  int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i / D, c = i - r * D;
    int s = slots[r];
    if (s < -1 || s >= M) {
      if (c == 0) *(volatile int*)err = 2;
      s = -1;
    }
    y[i] = s >= 0 ? vec[int64_t(s) * D + c] : x[i];
  }
}

}  // namespace

void opMisc(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const TensorView& y = out[0];
  DType dt = y.dtype;
  cudaStream_t st = ctx().stream;
  if (op == OpCode::TIMESTEP_EMB) {
    if (in.empty()) shapeError(op, "expects t");
    const TensorView& t = in[0];
    expectFloat(op, t, dt, "t");
    if (t.shape.size() != 1) shapeError(op, "t " + shapeStr(t.shape) + " must be [B]");
    int64_t B = t.shape[0], dim = a.dim, half = dim / 2;
    if (dim <= 0) shapeError(op, "dim must be positive");
    if (y.shape != Shape{B, dim}) shapeError(op, "output " + shapeStr(y.shape) + ", expected [B, dim]");
    double denom = double(half) - a.shift;
    if (half > 0 && denom == 0.0) throw Error("E_ARGUMENT", "timestep_emb: half - shift is zero");
    if (!B) return;
    float nl = float(-std::log(a.maxPeriod)), dn = float(denom);
    dispatchFloat(op, dt, [&](auto tag) {
      using T = decltype(tag);
      timestepEmb<T><<<gridFor(B * dim, 256), 256, 0, st>>>(t.as<T>(), y.as<T>(), int(B), int(dim), nl, dn, a.flip);
    });
    CK_LAUNCH("timestepEmb");
    return;
  }
  if (op == OpCode::EMBEDDING) {
    if (in.size() < 2) shapeError(op, "expects ids and table");
    const TensorView &ids = in[0], &tb = in[1];
    if (ids.dtype != DType::I32) shapeError(op, "ids must be int32");
    expectFloat(op, tb, dt, "table");
    if (tb.shape.size() != 2) shapeError(op, "table " + shapeStr(tb.shape) + " must be [V, D]");
    Shape os = ids.shape;
    os.push_back(tb.shape[1]);
    if (y.shape != os) shapeError(op, "output " + shapeStr(y.shape) + ", expected " + shapeStr(os));
    int64_t n = ids.numel(), D = tb.shape[1];
    if (!n || !D) return;
    dispatchFloat(op, dt, [&](auto tag) {
      using T = decltype(tag);
      embedding<T><<<gridFor(n * D, 256), 256, 0, st>>>(ids.as<int32_t>(), tb.as<T>(), y.as<T>(), n, D, tb.shape[0],
                                                        ctx().errFlagDev);
    });
    CK_LAUNCH("embedding");
    return;
  }
  if (op == OpCode::INJECT) {
    if (in.size() < 3) shapeError(op, "expects x, slots and vectors");
    const TensorView &x = in[0], &sl = in[1], &v = in[2];
    expectFloat(op, x, dt, "x");
    expectFloat(op, v, dt, "vectors");
    if (sl.dtype != DType::I32) shapeError(op, "slots must be int32");
    if (x.shape.size() != 3) shapeError(op, "x must be [B, N, D]");
    int64_t D = x.shape[2];
    if (sl.shape != Shape{x.shape[0], x.shape[1]}) shapeError(op, "slots must be [B, N]");
    if (v.shape.size() != 2 || v.shape[1] != D) shapeError(op, "vectors must be [M, D]");
    if (y.shape != x.shape) shapeError(op, "output shape differs from x");
    int64_t n = x.shape[0] * x.shape[1];
    if (!n || !D) return;
    dispatchFloat(op, dt, [&](auto tag) {
      using T = decltype(tag);
      inject<T><<<gridFor(n * D, 256), 256, 0, st>>>(x.as<T>(), sl.as<int32_t>(), v.as<T>(), y.as<T>(), n, D,
                                                     v.shape[0], ctx().errFlagDev);
    });
    CK_LAUNCH("inject");
    return;
  }
  shapeError(op, "not a misc op");
}

// ---- backward (vector-Jacobian products for lib/graph/autodiff.ts) ------------------------
// INJECT_BACKWARD: a thread per (vector, column), a deterministic sum over the rows.

namespace {

using Views = std::vector<TensorView>;

// ---- INJECT_BACKWARD --------------------------------------------------------------------------

template <typename T>
__global__ void injectBackward(const T* __restrict__ dy, const int32_t* __restrict__ slots, T* __restrict__ dv,
                               int64_t rows, int64_t D, int64_t M, int* err) {
  const int64_t n = M * D, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t m = i / D, c = i - m * D;
    double s = 0;
    for (int64_t r = 0; r < rows; r++)
      if (int64_t(slots[r]) == m) s += toF(dy[r * D + c]);
    dv[i] = fromF<T>(float(s));
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    bool bad = false;
    for (int64_t r = 0; r < rows; r++) bad |= int64_t(slots[r]) >= M;
    if (bad) atomicOr(err, 2);
  }
}

void injectBackwardOp(const Views& in, const Views& out) {
  const OpCode op = OpCode::INJECT_BACKWARD;
  arity(op, in, 2, 2, out, 1);
  const TensorView &dy = in[0], &sl = in[1], &dv = out[0];
  DType dt = dv.dtype;
  expectFloat(op, dy, dt, "dy");
  if (sl.dtype != DType::I32) shapeError(op, "slots must be int32");
  const Shape& ys = dy.shape;
  if (ys.size() != 3 || sl.shape != Shape{ys[0], ys[1]} || dv.shape.size() != 2 || dv.shape[1] != ys[2])
    shapeError(op, "dy " + shapeStr(ys) + ", slots " + shapeStr(sl.shape) + ", dvectors " + shapeStr(dv.shape));
  const int64_t rows = ys[0] * ys[1], D = ys[2], M = dv.shape[0];
  if (!rows) {
    zeroFill(dv);
    return;
  }
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    injectBackward<T><<<gridFor(M * D, 128), 128, 0, ctx().stream>>>(dy.as<T>(), sl.as<int32_t>(), dv.as<T>(), rows,
                                                                      D, M, ctx().errFlagDev);
  });
  CK_LAUNCH("injectBackward");
}

}  // namespace

void opInjectBackward(const OpAttrs&, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  injectBackwardOp(in, out);
}

}  // namespace cuda
}  // namespace idforge
