// Scalar derivatives shared by the CPU backward ops (elementwise.cc, norm.cc), in double where the
// exact-erf GELU and the sigmoid lose digits in float.
#pragma once

#include <cmath>

namespace idforge {
namespace cpu {

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
// x·Φ(x) (exact erf GELU) and its derivative
inline float geluF(float x) { return float(0.5 * double(x) * (1.0 + std::erf(double(x) * 0.70710678118654752))); }
inline float geluGrad(float x) {
  double xd = x;
  double cdf = 0.5 * (1.0 + std::erf(xd * 0.70710678118654752));
  double pdf = 0.39894228040143268 * std::exp(-0.5 * xd * xd);
  return float(cdf + xd * pdf);
}
// d/dx of x·σ(αx)
inline float siluGrad(float x, double alpha) {
  double s = sigmoid(alpha * x);
  return float(s + alpha * x * s * (1.0 - s));
}

}  // namespace cpu
}  // namespace idforge
