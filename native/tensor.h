// Native-owned tensor memory. A Storage owns one allocation on one backend and reports it in the
// live-byte counters; tensors and program buffers share Storages through shared_ptr so a JS
// dispose() and a running program can never free memory under each other.
#pragma once

#include <memory>

#include "backend.h"

namespace idforge {

struct Storage {
  Backend* backend;
  void* data;
  size_t bytes;
  Storage(Backend* be, size_t n);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct NTensor {
  std::shared_ptr<Storage> storage;
  DType dtype;
  Shape shape;
  Device device() const { return storage->backend->device(); }
  size_t bytes() const { return static_cast<size_t>(numel(shape)) * dtypeSize(dtype); }
  TensorView view() const { return TensorView{storage->data, dtype, shape}; }
};

// New tensor on `be` holding `host` (host bytes of dtype `src`) converted to dtype `dst`.
std::shared_ptr<NTensor> makeTensor(Backend* be, DType dst, const Shape& shape, const void* host, DType src);
// Host copy of t's elements converted to `dst` (float ↔ half ↔ bfloat16, ints ↔ float).
std::vector<uint8_t> readAs(const NTensor& t, DType dst);
// Element conversion between host buffers.
void convert(const void* src, DType st, void* dst, DType dt, size_t n);

}  // namespace idforge
