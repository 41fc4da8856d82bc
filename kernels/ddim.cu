// DDIM_STEP as one kernel: x0 from (sample, eps), then the step to the previous sample, with the
// coefficients computed once on the host in double exactly like the CPU op.
#include <cmath>

#include "cuda_common.h"

namespace idforge {
namespace cuda {

namespace {

template <typename T>
__global__ void ddimStep(const T* __restrict__ x, const T* __restrict__ e, const T* __restrict__ z, T* __restrict__ y,
                         int64_t n, double ca, double rsa, double cp, double cd, double sg) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    double ei = toF(e[i]);
    double x0 = (double(toF(x[i])) - ca * ei) * rsa;
    double v = cp * x0 + cd * ei;
    if (z) v += sg * double(toF(z[i]));
    y[i] = fromF<T>(float(v));
  }
}

}  // namespace

void opDdimStep(const OpAttrs& a, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::DDIM_STEP;
  if (in.size() < 2) shapeError(op, "expects sample, eps and optional noise");
  const TensorView& y = out[0];
  DType dt = y.dtype;
  expectFloat(op, in[0], dt, "sample");
  expectFloat(op, in[1], dt, "eps");
  if (in[1].shape != in[0].shape || y.shape != in[0].shape) shapeError(op, "sample, eps and out must have one shape");
  bool noisy = in.size() > 2 && in[2].data;
  if (noisy) {
    expectFloat(op, in[2], dt, "noise");
    if (in[2].shape != in[0].shape) shapeError(op, "noise must have the sample's shape");
  }
  if (!(a.a_t > 0.0)) throw Error("E_ARGUMENT", "ddim_step: a_t must be > 0, got " + std::to_string(a.a_t));
  double rest = 1.0 - a.a_prev - a.sigma * a.sigma;
  double ca = std::sqrt(1.0 - a.a_t), rsa = 1.0 / std::sqrt(a.a_t), cp = std::sqrt(a.a_prev);
  double cd = std::sqrt(rest > 0.0 ? rest : 0.0), sg = a.sigma;
  int64_t n = y.numel();
  if (!n) return;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    ddimStep<T><<<gridFor(n, 256), 256, 0, ctx().stream>>>(in[0].as<T>(), in[1].as<T>(),
                                                            noisy ? in[2].as<T>() : nullptr, y.as<T>(), n, ca, rsa, cp,
                                                            cd, sg);
  });
  CK_LAUNCH("ddimStep");
}

}  // namespace cuda
}  // namespace idforge
