// ADAM_STEP as one kernel (native/backend.h): the optimizer update of one parameter, with the
// coefficients and the squared global gradient norm read from device memory, so a training step
// program replays unchanged while the step count and learning rate move. Float32 only: training
// runs in float32. No __restrict__: the outputs may be the inputs (an update in place).
#include "cuda_common.h"

namespace idforge {
namespace cuda {

namespace {

__global__ void adamStep(const float* p, const float* g, const float* m, const float* v,
                         const AdamCoefs* __restrict__ cp, const float* __restrict__ gsq, float* po, float* mo,
                         float* vo, int64_t n) {
  const AdamCoefs c = *cp;
  float s = 1.f;
  bool skip = false;
  if (gsq) {
    const float q = *gsq;
    skip = !isfinite(q);
    if (!skip && c.clip > 0.f && q > 0.f) s = fminf(1.f, c.clip / sqrtf(q));
  }
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float pi = p[i], mi0 = m[i], vi0 = v[i];
    if (skip) {  // a failed step changes nothing
      po[i] = pi;
      mo[i] = mi0;
      vo[i] = vi0;
      continue;
    }
    const float gi = s * g[i];
    const float mi = c.beta1 * mi0 + (1.f - c.beta1) * gi;
    const float vi = c.beta2 * vi0 + (1.f - c.beta2) * gi * gi;
    po[i] = pi - (c.lr * (mi / c.c1)) / (sqrtf(vi / c.c2) + c.eps);
    mo[i] = mi;
    vo[i] = vi;
  }
}

}  // namespace

void opAdamStep(const OpAttrs&, const std::vector<TensorView>& in, const std::vector<TensorView>& out) {
  const OpCode op = OpCode::ADAM_STEP;
  arity(op, in, 5, 6, out, 3);
  const char* names[] = {"parameter", "gradient", "first moment", "second moment"};
  for (int k = 0; k < 4; k++) {
    if (in[k].dtype != DType::F32) shapeError(op, std::string(names[k]) + " must be float32 (training runs in float32)");
    if (in[k].shape != in[0].shape) shapeError(op, std::string(names[k]) + " must have the parameter's shape");
  }
  for (int k = 0; k < 3; k++)
    if (out[k].dtype != DType::F32 || out[k].shape != in[0].shape) shapeError(op, "the outputs must be float32 with the parameter's shape");
  if (in[4].dtype != DType::I32 || in[4].shape != Shape{kAdamCoefs}) shapeError(op, "coefficients must be int32 [8] (float32 bits)");
  const bool clipped = in.size() > 5 && in[5].data;
  if (clipped && (in[5].dtype != DType::F32 || in[5].shape != Shape{1}))
    shapeError(op, "the squared gradient norm must be float32 [1]");
  const int64_t n = in[0].numel();
  if (!n) return;
  adamStep<<<gridFor(n, 256), 256, 0, ctx().stream>>>(
      in[0].as<float>(), in[1].as<float>(), in[2].as<float>(), in[3].as<float>(), in[4].as<AdamCoefs>(),
      clipped ? in[5].as<float>() : nullptr, out[0].as<float>(), out[1].as<float>(), out[2].as<float>(), n);
  CK_LAUNCH("adamStep");
}

}  // namespace cuda
}  // namespace idforge
