// SAMPLER_STEP as one kernel: every sampler's update (native/backend.h) with the coefficients read
// from device memory, so one captured CUDA graph serves every step of every sampler.
#include "cuda_common.h"

namespace idforge {
namespace cuda {

namespace {

template <typename T>
__global__ void samplerStep(const T* __restrict__ x, const T* __restrict__ m, const T* __restrict__ s,
                            const SamplerCoefs* __restrict__ cp, const T* __restrict__ z, T* __restrict__ y,
                            T* __restrict__ x0o, T* __restrict__ xin, int64_t n) {
  const SamplerCoefs c = *cp;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float xi = toF(x[i]), mi = toF(m[i]);
    float x0 = c.cx * xi + c.ce * mi;
    if (c.clip > 0.f) x0 = fminf(fmaxf(x0, -c.clip), c.clip);
    float v = c.px * xi + c.p0 * x0 + c.pe * mi + c.pp * toF(s[i]);
    if (z) v += c.pn * toF(z[i]);
    y[i] = fromF<T>(v);
    x0o[i] = fromF<T>(x0);
    xin[i] = fromF<T>(c.next_in * v);
  }
}

}  // namespace

void opSamplerStep(const OpAttrs&, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::SAMPLER_STEP;
  if (in.size() < 4 || out.size() != 3) shapeError(op, "expects x, m, state, coefficients, noise? and three outputs");
  DType dt = out[0].dtype;
  const char* names[] = {"sample", "model output", "state"};
  for (int k = 0; k < 3; k++) {
    expectFloat(op, in[k], dt, names[k]);
    if (in[k].shape != in[0].shape || out[k].shape != in[0].shape || out[k].dtype != dt)
      shapeError(op, std::string(names[k]) + " and the outputs must have the sample's shape");
  }
  if (in[3].dtype != DType::I32 || in[3].shape != Shape{kSamplerCoefs})
    shapeError(op, "coefficients must be int32 [9] (float32 bits)");
  bool noisy = in.size() > 4 && in[4].data;
  if (noisy) {
    expectFloat(op, in[4], dt, "noise");
    if (in[4].shape != in[0].shape) shapeError(op, "noise must have the sample's shape");
  }
  int64_t n = in[0].numel();
  if (!n) return;
  dispatchFloat(op, dt, [&](auto tag) {
    using T = decltype(tag);
    samplerStep<T><<<gridFor(n, 256), 256, 0, ctx().stream>>>(
        in[0].as<T>(), in[1].as<T>(), in[2].as<T>(), in[3].as<SamplerCoefs>(), noisy ? in[4].as<T>() : nullptr,
        out[0].as<T>(), out[1].as<T>(), out[2].as<T>(), n);
  });
  CK_LAUNCH("samplerStep");
}

}  // namespace cuda
}  // namespace idforge
