// Small shared pieces of the backend interface: dtype/op names, shape helpers, live-byte counters.
#include <algorithm>
#include <atomic>
#include <sstream>

#include "backend.h"

namespace idforge {

size_t dtypeSize(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtypeName(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::U8: return "uint8";
  }
  return "?";
}

DType dtypeFromName(const std::string& n) {
  if (n == "float32") return DType::F32;
  if (n == "float16") return DType::F16;
  if (n == "bfloat16") return DType::BF16;
  if (n == "int32") return DType::I32;
  if (n == "int64") return DType::I64;
  if (n == "uint8") return DType::U8;
  throw Error("E_ARGUMENT", "unknown dtype '" + n + "' (expected float32, float16, bfloat16, int32, int64 or uint8)");
}

const char* deviceName(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shapeStr(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); i++) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

static const char* kOpNames[] = {
#define IDFORGE_OP_NAME(name) #name,
    IDFORGE_OPS(IDFORGE_OP_NAME)
#undef IDFORGE_OP_NAME
};

const char* opName(OpCode op) { return kOpNames[static_cast<int>(op)]; }

OpCode opFromName(const std::string& name) {
  std::string up;
  for (char c : name) up += (c >= 'a' && c <= 'z') ? char(c - 32) : c;
  for (size_t i = 0; i < sizeof(kOpNames) / sizeof(kOpNames[0]); i++)
    if (up == kOpNames[i]) return static_cast<OpCode>(i);
  throw Error("E_ARGUMENT", "unknown op '" + name + "'");
}

namespace {

int64_t normAxis(const char* op, int64_t axis, size_t rank) {
  int64_t r = int64_t(rank);
  if (axis < -r || axis >= r)
    throw Error("E_SHAPE", std::string(op) + ": axis " + std::to_string(axis) + " out of range for rank " +
                               std::to_string(rank));
  return axis < 0 ? axis + r : axis;
}

void splitAround(AxisCopy& g, const Shape& s) {
  for (size_t k = size_t(g.axis) + 1; k < s.size(); k++) g.inner *= s[k];
  for (size_t k = 0; k < size_t(g.axis); k++) g.outer *= s[k];
}

}  // namespace

AxisCopy sliceGeometry(const OpAttrs& a, const Shape& xs) {
  AxisCopy g;
  g.axis = normAxis("slice", a.axis, xs.size());
  const int64_t d = xs[size_t(g.axis)];
  int64_t s = a.start < 0 ? a.start + d : a.start, e = a.end < 0 ? a.end + d : a.end;
  g.start = std::max<int64_t>(0, std::min(s, d));
  g.end = std::max<int64_t>(g.start, std::min(e, d));
  g.out = xs;
  g.out[size_t(g.axis)] = g.end - g.start;
  splitAround(g, xs);
  return g;
}

AxisCopy concatGeometry(const OpAttrs& a, const std::vector<TensorView>& in) {
  if (in.empty()) throw Error("E_SHAPE", "concat: needs at least one input");
  const Shape& s0 = in[0].shape;
  AxisCopy g;
  g.axis = normAxis("concat", a.axis, s0.size());
  const size_t ax = size_t(g.axis);
  g.out = s0;
  g.out[ax] = 0;
  for (const auto& t : in) {
    bool ok = t.shape.size() == s0.size();
    for (size_t k = 0; ok && k < s0.size(); k++) ok = k == ax || t.shape[k] == s0[k];
    if (!ok)
      throw Error("E_SHAPE", "concat: input " + shapeStr(t.shape) + " does not match " + shapeStr(s0) + " outside axis " +
                                 std::to_string(ax));
    g.out[ax] += t.shape[ax];
  }
  splitAround(g, s0);
  return g;
}

static std::atomic<int64_t> g_live[2];

int64_t liveBytes(Device d) { return g_live[static_cast<int>(d)].load(); }
void addLiveBytes(Device d, int64_t delta) { g_live[static_cast<int>(d)] += delta; }

#ifndef IDFORGE_WITH_CUDA
CudaInfo cudaInfo() {
  CudaInfo i;
  i.compiled = false;
  i.available = false;
  i.reason = "idforge was built without CUDA (no nvcc at install time, or IDFORGE_CUDA=0)";
  return i;
}
Backend* cudaBackend(DType, int) { throw Error("E_BACKEND", cudaInfo().reason); }
int cudaCreateStream() { throw Error("E_BACKEND", cudaInfo().reason); }
void cudaReleaseStream(int) {}
#endif

}  // namespace idforge
