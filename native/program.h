// A compiled graph: the op list built in TypeScript (lib/graph), validated once, with buffer
// lifetimes planned so that every intermediate is released right after its last reader. run() is
// one native call per graph evaluation (a whole UNet step), executed off the JS thread.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "tensor.h"

namespace idforge {

struct ValueDesc {
  DType dtype;
  Shape shape;
};

struct OpDesc {
  OpCode op;
  OpAttrs attrs;
  std::vector<int> in, out;
};

struct OpTiming {
  OpCode op;
  int index;
  double ms;
};

class Program {
 public:
  Program(Backend* be, std::vector<ValueDesc> values, std::vector<std::pair<int, std::shared_ptr<NTensor>>> consts,
          std::vector<int> inputs, std::vector<int> outputs, std::vector<OpDesc> ops);
  // Runs the graph. Inputs must match the declared dtypes/shapes and live on this backend's device.
  // With `timings`, each op is synchronised and timed (for the benchmark harness only).
  std::vector<std::shared_ptr<NTensor>> run(const std::vector<std::shared_ptr<NTensor>>& inputs,
                                            std::vector<OpTiming>* timings);
  Backend* backend() const { return be_; }
  size_t inputCount() const { return inputs_.size(); }
  size_t constBytes() const { return constBytes_; }

 private:
  Backend* be_;
  std::vector<ValueDesc> values_;
  std::vector<std::shared_ptr<NTensor>> consts_;  // indexed by value id, null when not a constant
  std::vector<int> inputs_, outputs_;
  std::vector<OpDesc> ops_;
  std::vector<std::vector<int>> releaseAfter_;  // op index → values whose last reader it is
  std::vector<bool> isOutput_;
  size_t constBytes_ = 0;
  std::mutex mu_;  // one run at a time per program: the buffers are per-run but the backend stream is shared
};

}  // namespace idforge
