#include "tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace idforge {

Storage::Storage(Backend* be, size_t n) : backend(be), data(nullptr), bytes(n) {
  data = be->alloc(n == 0 ? 1 : n);
  addLiveBytes(be->device(), static_cast<int64_t>(n));
}

Storage::~Storage() {
  backend->release(data, bytes == 0 ? 1 : bytes);
  addLiveBytes(backend->device(), -static_cast<int64_t>(bytes));
}

static inline float halfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 1;
      while (!(mant & 0x400)) { mant <<= 1; exp--; }
      mant &= 0x3ff;
      bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, overflow to inf, NaN preserved.
static inline uint16_t floatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
  if (absx < 0x38800000u) {                                               // subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t e = absx >> 23, m = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14 + (112 - e) ... shift into 10-bit subnormal mantissa
    uint32_t mant = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (mant & 1))) mant++;
    return static_cast<uint16_t>(sign | mant);
  }
  uint32_t e = (absx >> 23) - 112, m = absx & 0x7fffffu;
  uint32_t h = (e << 10) | (m >> 13), rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
  return static_cast<uint16_t>(sign | h);
}

static inline float bf16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t floatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);
  uint32_t lsb = (x >> 16) & 1;
  return static_cast<uint16_t>((x + 0x7fff + lsb) >> 16);
}

static double loadAsDouble(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return halfToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::U8: return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

static void storeFromDouble(void* p, DType t, size_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = floatToHalf(static_cast<float>(v)); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = floatToBf16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
  }
}

void convert(const void* src, DType st, void* dst, DType dt, size_t n) {
  if (st == dt) {
    std::memcpy(dst, src, n * dtypeSize(st));
    return;
  }
  // Hot paths for weight loading: half/bfloat16 → float and back without the double detour.
  if (dt == DType::F32 && st == DType::F16) {
    auto s = static_cast<const uint16_t*>(src);
    auto d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; i++) d[i] = halfToFloat(s[i]);
    return;
  }
  if (dt == DType::F16 && st == DType::F32) {
    auto s = static_cast<const float*>(src);
    auto d = static_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; i++) d[i] = floatToHalf(s[i]);
    return;
  }
  // Integer targets take only values they can hold exactly (a float→int cast out of range is
  // undefined behaviour in C++, and silently rounding a fractional id is a bug either way).
  if (dt == DType::I32 || dt == DType::I64 || dt == DType::U8) {
    const double lo = dt == DType::U8 ? 0.0 : dt == DType::I32 ? -2147483648.0 : -9007199254740992.0;
    const double hi = dt == DType::U8 ? 255.0 : dt == DType::I32 ? 2147483647.0 : 9007199254740992.0;
    for (size_t i = 0; i < n; i++) {
      double v = loadAsDouble(src, st, i);
      if (!std::isfinite(v) || v != std::floor(v))
        throw Error("E_ARGUMENT", "cannot convert the non-integer value " + std::to_string(v) + " to " + dtypeName(dt));
      if (v < lo || v > hi)
        throw Error("E_ARGUMENT", "the value " + std::to_string(v) + " is out of the range of " + std::string(dtypeName(dt)));
    }
  }
  if (dt == DType::I32 && st == DType::I64) {
    auto s = static_cast<const int64_t*>(src);
    for (size_t i = 0; i < n; i++)
      if (s[i] > std::numeric_limits<int32_t>::max() || s[i] < std::numeric_limits<int32_t>::min())
        throw Error("E_ARGUMENT", "int64 value out of int32 range");
  }
  for (size_t i = 0; i < n; i++) storeFromDouble(dst, dt, i, loadAsDouble(src, st, i));
}

std::shared_ptr<NTensor> makeTensor(Backend* be, DType dst, const Shape& shape, const void* host, DType src) {
  for (auto d : shape)
    if (d < 0) throw Error("E_SHAPE", "negative dimension in shape " + shapeStr(shape));
  auto t = std::make_shared<NTensor>();
  t->dtype = dst;
  t->shape = shape;
  size_t n = static_cast<size_t>(numel(shape));
  t->storage = std::make_shared<Storage>(be, n * dtypeSize(dst));
  if (host) {
    if (be->device() == Device::CPU) {
      convert(host, src, t->storage->data, dst, n);
    } else {
      std::vector<uint8_t> tmp(n * dtypeSize(dst));
      convert(host, src, tmp.data(), dst, n);
      be->upload(t->storage->data, tmp.data(), tmp.size());
    }
  }
  return t;
}

std::vector<uint8_t> readAs(const NTensor& t, DType dst) {
  size_t n = static_cast<size_t>(numel(t.shape));
  std::vector<uint8_t> out(n * dtypeSize(dst));
  if (t.device() == Device::CPU) {
    convert(t.storage->data, t.dtype, out.data(), dst, n);
  } else {
    std::vector<uint8_t> raw(t.bytes());
    t.storage->backend->download(raw.data(), t.storage->data, raw.size());
    convert(raw.data(), t.dtype, out.data(), dst, n);
  }
  return out;
}

}  // namespace idforge
