#include "program.h"

#include <algorithm>

namespace idforge {

Program::Program(Backend* be, std::vector<ValueDesc> values,
                 std::vector<std::pair<int, std::shared_ptr<NTensor>>> consts, std::vector<int> inputs,
                 std::vector<int> outputs, std::vector<OpDesc> ops)
    : be_(be), values_(std::move(values)), inputs_(std::move(inputs)), outputs_(std::move(outputs)), ops_(std::move(ops)) {
  const int n = static_cast<int>(values_.size());
  auto check = [&](int id, const char* what) {
    if (id < 0 || id >= n) throw Error("E_INTERNAL", std::string("program: ") + what + " refers to an unknown value");
  };
  consts_.assign(n, nullptr);
  std::vector<int> producer(n, -1);  // -2 const, -3 input, >= 0 op index
  for (auto& [id, t] : consts) {
    check(id, "a constant");
    if (t->device() != be->device())
      throw Error("E_INTERNAL", "program: a constant lives on another device");
    if (t->shape != values_[id].shape || t->dtype != values_[id].dtype)
      throw Error("E_SHAPE", "program: constant " + std::to_string(id) + " is " + shapeStr(t->shape) + " " +
                                 dtypeName(t->dtype) + ", declared " + shapeStr(values_[id].shape) + " " +
                                 dtypeName(values_[id].dtype));
    consts_[id] = t;
    producer[id] = -2;
    constBytes_ += t->bytes();
  }
  for (int id : inputs_) {
    check(id, "an input");
    producer[id] = -3;
  }
  std::vector<int> lastUse(n, -1);
  for (size_t i = 0; i < ops_.size(); i++) {
    for (int id : ops_[i].in) {
      check(id, "an op input");
      if (producer[id] == -1)
        throw Error("E_INTERNAL", std::string("program: op ") + opName(ops_[i].op) + " reads a value before it is computed");
      lastUse[id] = static_cast<int>(i);
    }
    for (int id : ops_[i].out) {
      check(id, "an op output");
      if (producer[id] != -1) throw Error("E_INTERNAL", "program: a value is written twice");
      producer[id] = static_cast<int>(i);
    }
  }
  isOutput_.assign(n, false);
  for (int id : outputs_) {
    check(id, "an output");
    if (producer[id] == -1) throw Error("E_INTERNAL", "program: an output is never computed");
    isOutput_[id] = true;
  }
  releaseAfter_.assign(ops_.size(), {});
  for (int id = 0; id < n; id++)
    if (producer[id] >= 0 && !isOutput_[id]) {
      // A value nobody reads is released right after the op that made it (e.g. an unused capture).
      int last = lastUse[id] >= 0 ? lastUse[id] : producer[id];
      releaseAfter_[last].push_back(id);
    }
}

std::vector<std::shared_ptr<NTensor>> Program::run(const std::vector<std::shared_ptr<NTensor>>& inputs,
                                                   std::vector<OpTiming>* timings) {
  std::lock_guard<std::mutex> lock(mu_);
  if (inputs.size() != inputs_.size())
    throw Error("E_ARGUMENT", "program expects " + std::to_string(inputs_.size()) + " inputs, got " +
                                  std::to_string(inputs.size()));
  std::vector<std::shared_ptr<NTensor>> live = consts_;
  for (size_t i = 0; i < inputs.size(); i++) {
    const auto& t = inputs[i];
    const auto& d = values_[inputs_[i]];
    if (t->device() != be_->device())
      throw Error("E_ARGUMENT", std::string("program input ") + std::to_string(i) + " is on " +
                                    deviceName(t->device()) + ", the program runs on " + deviceName(be_->device()));
    if (t->shape != d.shape || t->dtype != d.dtype)
      throw Error("E_SHAPE", "program input " + std::to_string(i) + " is " + shapeStr(t->shape) + " " +
                                 dtypeName(t->dtype) + ", expected " + shapeStr(d.shape) + " " + dtypeName(d.dtype));
    live[inputs_[i]] = t;
  }
  std::vector<TensorView> in, out;
  for (size_t i = 0; i < ops_.size(); i++) {
    const OpDesc& op = ops_[i];
    in.clear();
    out.clear();
    for (int id : op.in) in.push_back(live[id]->view());
    for (int id : op.out) {
      auto t = std::make_shared<NTensor>();
      t->dtype = values_[id].dtype;
      t->shape = values_[id].shape;
      t->storage = std::make_shared<Storage>(be_, t->bytes());
      live[id] = t;
      out.push_back(t->view());
    }
    auto t0 = std::chrono::steady_clock::now();
    be_->run(op.op, op.attrs, in, out);
    if (timings) {
      be_->synchronize();
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      timings->push_back({op.op, static_cast<int>(i), ms});
    }
    for (int id : releaseAfter_[i]) live[id].reset();
  }
  be_->synchronize();
  std::vector<std::shared_ptr<NTensor>> result;
  for (int id : outputs_) result.push_back(live[id]);
  return result;
}

}  // namespace idforge
