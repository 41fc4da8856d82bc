#include "program.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace idforge {

namespace {

constexpr size_t kAlign = 256;
size_t alignUp(size_t n) { return (std::max<size_t>(n, 1) + kAlign - 1) / kAlign * kAlign; }
size_t valueBytes(const ValueDesc& v) { return static_cast<size_t>(numel(v.shape)) * dtypeSize(v.dtype); }

bool envFlag(const char* name, int* v) {
  const char* s = std::getenv(name);
  if (!s || !*s) return false;
  *v = (std::strcmp(s, "0") == 0 || std::strcmp(s, "false") == 0 || std::strcmp(s, "off") == 0) ? 0 : 1;
  return true;
}

// IDFORGE_POISON=1 (a debug switch, read once): CPU runs start with every output they allocate
// and the whole arena set to NaN (all bits set), so an element a kernel forgets to write comes out
// non-finite instead of a stale, plausible value. The op table's CPU modes set it.
bool poison(const Backend* be) {
  static const bool on = [] {
    int v = 0;
    return envFlag("IDFORGE_POISON", &v) && v == 1;
  }();
  return on && be->device() == Device::CPU;
}

}  // namespace

Program::Program(Backend* be, std::vector<ValueDesc> values,
                 std::vector<std::pair<int, std::shared_ptr<NTensor>>> consts, std::vector<int> inputs,
                 std::vector<int> outputs, std::vector<OpDesc> ops, int graph)
    : be_(be), values_(std::move(values)), inputs_(std::move(inputs)), outputs_(std::move(outputs)), ops_(std::move(ops)) {
  const int n = static_cast<int>(values_.size());
  auto check = [&](int id, const char* what) {
    if (id < 0 || id >= n) throw Error("E_INTERNAL", std::string("program: ") + what + " refers to an unknown value");
  };
  consts_.assign(n, nullptr);
  producer_.assign(n, -1);
  for (auto& [id, t] : consts) {
    check(id, "a constant");
    if (t->device() != be->device())
      throw Error("E_INTERNAL", "program: a constant lives on another device");
    // float16 weights on a float32 CPU program stay half (halfWeight says where they are read).
    if (halfWeights(t->dtype, values_[id].dtype) && t->shape == values_[id].shape) values_[id].dtype = DType::F16;
    if (t->shape != values_[id].shape || t->dtype != values_[id].dtype)
      throw Error("E_SHAPE", "program: constant " + std::to_string(id) + " is " + shapeStr(t->shape) + " " +
                                 dtypeName(t->dtype) + ", declared " + shapeStr(values_[id].shape) + " " +
                                 dtypeName(values_[id].dtype));
    // A constant uploaded on another stream (another engine's, or the default one): wait for it once.
    const void* q = t->storage->backend->queue();
    if (q && q != be->queue()) t->storage->backend->drain();
    consts_[id] = t;
    producer_[id] = -2;
    constBytes_ += t->bytes();
  }
  for (int id : inputs_) {
    check(id, "an input");
    producer_[id] = -3;
  }
  lastUse_.assign(n, -1);
  constView_.assign(ops_.size(), false);
  for (size_t i = 0; i < ops_.size(); i++) {
    for (size_t slot = 0; slot < ops_[i].in.size(); slot++) {
      int& id = ops_[i].in[slot];
      check(id, "an op input");
      id = halfWeight(i, slot, id);
      if (producer_[id] == -1)
        throw Error("E_INTERNAL", std::string("program: op ") + opName(ops_[i].op) + " reads a value before it is computed");
      lastUse_[id] = static_cast<int>(i);
    }
    for (int id : ops_[i].out) {
      check(id, "an op output");
      if (producer_[id] != -1) throw Error("E_INTERNAL", "program: a value is written twice");
      producer_[id] = static_cast<int>(i);
    }
    // A RESHAPE of a constant (a 1x1 conv kernel used as a linear weight) is a constant itself: a
    // view of the same storage, made once here instead of a copy on every run.
    const OpDesc& op = ops_[i];
    if (op.op == OpCode::RESHAPE && op.in.size() == 1 && op.out.size() == 1 && consts_[op.in[0]]) {
      const auto& src = consts_[op.in[0]];
      int y = op.out[0];
      if (halfWeights(src->dtype, values_[y].dtype)) values_[y].dtype = DType::F16;  // a view of a half weight
      if (values_[y].dtype == src->dtype && numel(values_[y].shape) == numel(src->shape)) {
        auto v = std::make_shared<NTensor>();
        v->storage = src->storage;
        v->dtype = src->dtype;
        v->shape = values_[y].shape;
        consts_[y] = v;
        producer_[y] = -2;
        constView_[i] = true;
      }
    }
  }
  isOutput_.assign(values_.size(), false);
  for (int id : outputs_) {
    check(id, "an output");
    if (producer_[id] == -1) throw Error("E_INTERNAL", "program: an output is never computed");
    isOutput_[id] = true;
  }
  if (graph < 0 && !envFlag("IDFORGE_CUDA_GRAPH", &graph)) graph = 1;
  graphMode_ = graph == 1 && be_->graphsSupported() && !ops_.empty();
  plan();
  int log = 0;
  if (envFlag("IDFORGE_PROGRAM_LOG", &log) && log)
    std::fprintf(stderr, "idforge program: %zu ops, %d values; arena %.1f MiB for %.1f MiB of intermediates; graph %s\n",
                 ops_.size(), int(values_.size()), double(arenaBytes_) / 1048576.0, double(naiveBytes_) / 1048576.0,
                 graphMode_ ? "on" : "off");
  be_->pin();  // last: a constructor that throws has nothing to unpin
}

bool Program::halfWeights(DType stored, DType declared) const {
  return stored == DType::F16 && declared == DType::F32 && be_->device() == Device::CPU && be_->computeType() == DType::F32;
}

// A half weight is read as such where the backend's op takes one (LINEAR's and CONV2D's w: converted
// to float32 inside the GEMM packing); anywhere else the op gets a float32 copy, made here once per
// program and constant (a bias folded into a sum, a weight a backward op reads).
int Program::halfWeight(size_t op, size_t slot, int id) {
  if (!consts_[id] || values_[id].dtype != DType::F16 || consts_[id]->dtype != DType::F16 || be_->device() != Device::CPU ||
      be_->computeType() != DType::F32 || be_->readsHalfWeight(ops_[op].op, slot) || ops_[op].op == OpCode::RESHAPE)
    return id;
  auto it = shadow_.find(id);
  if (it != shadow_.end()) return it->second;
  const NTensor& h = *consts_[id];
  auto t = std::make_shared<NTensor>();
  t->dtype = DType::F32;
  t->shape = h.shape;
  t->storage = std::make_shared<Storage>(be_, t->bytes());
  convert(h.storage->data, DType::F16, t->storage->data, DType::F32, size_t(numel(h.shape)));
  const int s = static_cast<int>(values_.size());
  values_.push_back({DType::F32, h.shape});
  consts_.push_back(t);
  producer_.push_back(-2);
  lastUse_.push_back(-1);
  constBytes_ += t->bytes();
  shadow_[id] = s;
  return s;
}

Program::~Program() {
  if (graph_) {
    try {
      be_->destroyGraph(graph_);
    } catch (...) {
    }
    graph_ = nullptr;
  }
  arena_.reset();
  be_->unpin();
}

// Static buffer plan. Arena values: op results (and, in graph mode, the inputs and the outputs,
// which are then copied in and out so that a captured graph sees fixed addresses). A RESHAPE whose
// input and output are both arena values is an alias: the output uses the input's buffer, the
// buffer's lifetime is the union, and the op is skipped. Lifetimes are inclusive op-index ranges
// [first writer, last reader] (inputs start at 0, outputs end past the last op), so an op's
// outputs never share memory with its inputs. Placement is greedy best-fit, largest first.
void Program::plan() {
  const int n = static_cast<int>(values_.size());
  const int nOps = static_cast<int>(ops_.size());
  auto inArena = [&](int id) {
    int p = producer_[id];
    if (p >= 0) return !isOutput_[id] || graphMode_;
    return p == -3 && graphMode_;
  };
  root_.resize(n);
  for (int id = 0; id < n; id++) root_[id] = id;
  skip_ = constView_;
  for (int i = 0; i < nOps; i++) {
    const OpDesc& op = ops_[i];
    if (op.op != OpCode::RESHAPE || op.in.size() != 1 || op.out.size() != 1) continue;
    int x = op.in[0], y = op.out[0];
    if (!inArena(x) || !inArena(y) || values_[x].dtype != values_[y].dtype || valueBytes(values_[x]) != valueBytes(values_[y]))
      continue;
    root_[y] = root_[x];
    skip_[i] = true;
  }
  std::vector<int> start(n, -1), end(n, -1);
  std::vector<size_t> size(n, 0);
  for (int id = 0; id < n; id++) {
    if (!inArena(id)) continue;
    naiveBytes_ += alignUp(valueBytes(values_[id]));
    int r = root_[id];
    int s = producer_[id] >= 0 ? producer_[id] : 0;
    int e = std::max(s, lastUse_[id]);
    if (isOutput_[id]) e = nOps;
    if (start[r] < 0 || s < start[r]) start[r] = s;
    end[r] = std::max(end[r], e);
    size[r] = std::max(size[r], alignUp(valueBytes(values_[id])));
  }
  std::vector<int> order;
  for (int id = 0; id < n; id++)
    if (inArena(id) && root_[id] == id) order.push_back(id);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (size[a] != size[b]) return size[a] > size[b];
    return start[a] < start[b];
  });
  offset_.assign(n, -1);
  std::vector<int> placed;
  std::vector<std::pair<int64_t, int64_t>> busy;  // [offset, end) of placed values alive at the same time
  for (int id : order) {
    busy.clear();
    for (int p : placed)
      if (start[p] <= end[id] && start[id] <= end[p]) busy.push_back({offset_[p], offset_[p] + int64_t(size[p])});
    std::sort(busy.begin(), busy.end());
    int64_t best = -1, bestGap = INT64_MAX, cursor = 0;
    for (auto& [b, e] : busy) {
      if (b > cursor) {
        int64_t gap = b - cursor;
        if (gap >= int64_t(size[id]) && gap < bestGap) {
          best = cursor;
          bestGap = gap;
        }
      }
      cursor = std::max(cursor, e);
    }
    if (best < 0) best = cursor;
    offset_[id] = best;
    arenaBytes_ = std::max(arenaBytes_, size_t(best) + size[id]);
    placed.push_back(id);
  }
  for (int id = 0; id < n; id++)
    if (inArena(id)) offset_[id] = offset_[root_[id]];
}

void Program::prepare() {
  if (arenaBytes_ > 0) arena_ = std::make_shared<Storage>(be_, arenaBytes_);
  char* base = arena_ ? static_cast<char*>(arena_->data) : nullptr;
  in_.assign(ops_.size(), {});
  out_.assign(ops_.size(), {});
  dynamic_.clear();
  auto viewOf = [&](int i, int id, bool isOut, int index) {
    TensorView v{nullptr, values_[id].dtype, values_[id].shape};
    if (consts_[id]) v.data = consts_[id]->storage->data;
    else if (offset_[id] >= 0) v.data = base + offset_[id];
    else dynamic_.push_back({i, id, isOut, index});
    return v;
  };
  for (size_t i = 0; i < ops_.size(); i++) {
    if (skip_[i]) continue;
    for (size_t k = 0; k < ops_[i].in.size(); k++) in_[i].push_back(viewOf(int(i), ops_[i].in[k], false, int(k)));
    for (size_t k = 0; k < ops_[i].out.size(); k++) out_[i].push_back(viewOf(int(i), ops_[i].out[k], true, int(k)));
  }
  live_.assign(values_.size(), nullptr);
  prepared_ = true;
}

void Program::runOps(std::vector<OpTiming>* timings, const CancelFlag* cancel) {
  // Profiling: device events between ops where the backend has them (no host synchronisation, so
  // the queue stays full and small ops are not charged the round trip), else a synchronised
  // host clock around each op.
  const bool onDevice = timings && be_->beginTimings(ops_.size() + 1);
  std::vector<int> timed;
  // Once a run starts updating in place (an optimizer step writing its own inputs), it is not
  // interrupted: a stop half-way would leave some parameters stepped and others not.
  std::optional<CancelScope> committed;
  for (size_t i = 0; i < ops_.size(); i++) {
    if (skip_[i]) continue;
    if (!committed && updatesInPlace(ops_[i].op)) committed.emplace(nullptr, false);
    if (!committed) throwIfCancelled(cancel);
    if (onDevice) {
      be_->mark();
      timed.push_back(static_cast<int>(i));
    }
    auto t0 = std::chrono::steady_clock::now();
    be_->run(ops_[i].op, ops_[i].attrs, in_[i], out_[i]);
    opsDone_.store(static_cast<int64_t>(i) + 1, std::memory_order_relaxed);
    if (timings && !onDevice) {
      be_->synchronize();
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      timings->push_back({ops_[i].op, static_cast<int>(i), ms});
    }
  }
  if (onDevice) {
    be_->mark();
    std::vector<double> ms = be_->endTimings();
    for (size_t k = 0; k < timed.size() && k < ms.size(); k++) timings->push_back({ops_[timed[k]].op, timed[k], ms[k]});
  }
}

// The rules of run()'s `into`: one entry per output, each on this device with the output's shape
// and dtype, computed by an op (not an input or a constant), no storage twice; an input's storage
// only when the output's op updates in place and nothing reads that input after it.
void Program::checkInto(const std::vector<std::shared_ptr<NTensor>>& inputs,
                        const std::vector<std::shared_ptr<NTensor>>& into) const {
  if (into.size() != outputs_.size())
    throw Error("E_ARGUMENT", "program.run: `into` has " + std::to_string(into.size()) + " entries, the program has " +
                                  std::to_string(outputs_.size()) + " outputs");
  for (size_t k = 0; k < into.size(); k++) {
    const auto& t = into[k];
    if (!t) continue;
    const int id = outputs_[k];
    const std::string what = "program.run: `into` entry " + std::to_string(k);
    if (t->device() != be_->device()) throw Error("E_ARGUMENT", what + " is on " + deviceName(t->device()) + ", the program runs on " + deviceName(be_->device()));
    if (t->shape != values_[id].shape || t->dtype != values_[id].dtype)
      throw Error("E_SHAPE", what + " is " + shapeStr(t->shape) + " " + dtypeName(t->dtype) + ", the output is " +
                                 shapeStr(values_[id].shape) + " " + dtypeName(values_[id].dtype));
    if (producer_[id] < 0) throw Error("E_ARGUMENT", what + ": that output is an input or a constant of the program");
    for (size_t j = 0; j < k; j++)
      if (into[j] && into[j]->storage == t->storage) throw Error("E_ARGUMENT", what + " is also entry " + std::to_string(j));
    for (size_t i = 0; i < inputs.size(); i++) {
      if (inputs[i]->storage != t->storage) continue;
      const int op = producer_[id];
      if (!updatesInPlace(ops_[op].op) || lastUse_[inputs_[i]] > op)
        throw Error("E_ARGUMENT", what + " is input " + std::to_string(i) + ", which " + opName(ops_[op].op) +
                                      " cannot update in place" + (updatesInPlace(ops_[op].op) ? " (a later op reads it)" : ""));
    }
  }
}

std::vector<std::shared_ptr<NTensor>> Program::run(const std::vector<std::shared_ptr<NTensor>>& inputs,
                                                   std::vector<OpTiming>* timings, const CancelFlag* cancel,
                                                   bool fine, const std::vector<std::shared_ptr<NTensor>>* into) {
  std::lock_guard<std::mutex> lock(mu_);
  throwIfCancelled(cancel);  // aborted while waiting for the program's lock
  CancelScope scope(cancel, fine);  // the CPU pool checks it per chunk
  opsDone_.store(0, std::memory_order_relaxed);
  if (inputs.size() != inputs_.size())
    throw Error("E_ARGUMENT", "program expects " + std::to_string(inputs_.size()) + " inputs, got " +
                                  std::to_string(inputs.size()));
  for (size_t i = 0; i < inputs.size(); i++) {
    const auto& t = inputs[i];
    const auto& d = values_[inputs_[i]];
    if (t->device() != be_->device())
      throw Error("E_ARGUMENT", std::string("program input ") + std::to_string(i) + " is on " +
                                    deviceName(t->device()) + ", the program runs on " + deviceName(be_->device()));
    if (t->shape != d.shape || t->dtype != d.dtype)
      throw Error("E_SHAPE", "program input " + std::to_string(i) + " is " + shapeStr(t->shape) + " " +
                                 dtypeName(t->dtype) + ", expected " + shapeStr(d.shape) + " " + dtypeName(d.dtype));
  }
  if (into) checkInto(inputs, *into);
  // Inputs made on another stream (e.g. a tensor of another engine, still being uploaded): their
  // stream finishes first. The run itself ends with a synchronisation of this program's stream,
  // so nothing of it is pending when those tensors are released to their own stream's pool.
  auto drainOther = [&](const std::shared_ptr<NTensor>& t) {
    const void* q = t->storage->backend->queue();
    if (q && q != be_->queue()) t->storage->backend->drain();
  };
  for (const auto& t : inputs) drainOther(t);
  if (into)
    for (const auto& t : *into)
      if (t) drainOther(t);
  auto intoOf = [&](size_t k) { return into && (*into)[k] ? (*into)[k] : nullptr; };
  auto fresh = [&](int id) {  // a new tensor for output value id
    auto t = std::make_shared<NTensor>();
    t->dtype = values_[id].dtype;
    t->shape = values_[id].shape;
    t->storage = std::make_shared<Storage>(be_, t->bytes());
    return t;
  };
  if (!prepared_) prepare();
  char* base = arena_ ? static_cast<char*>(arena_->data) : nullptr;
  auto arenaView = [&](int id) { return TensorView{base + offset_[id], values_[id].dtype, values_[id].shape}; };
  struct Clear {  // the run's own tensors are not kept past the run
    std::vector<std::shared_ptr<NTensor>>& v;
    ~Clear() { std::fill(v.begin(), v.end(), nullptr); }
  } clear{live_};
  for (size_t i = 0; i < inputs.size(); i++) live_[inputs_[i]] = inputs[i];
  std::vector<std::shared_ptr<NTensor>> result;
  try {
    if (graphMode_) {
      // Inputs are arena regions: copy them in (a RESHAPE is a plain device copy).
      for (size_t i = 0; i < inputs.size(); i++)
        if (offset_[inputs_[i]] >= 0) be_->run(OpCode::RESHAPE, OpAttrs{}, {inputs[i]->view()}, {arenaView(inputs_[i])});
    } else {
      for (size_t k = 0; k < outputs_.size(); k++)
        if (auto t = intoOf(k)) live_[outputs_[k]] = t;
      for (int id : outputs_)
        if (producer_[id] >= 0 && !live_[id]) {
          auto t = fresh(id);
          live_[id] = t;
          if (poison(be_)) std::memset(t->storage->data, 0xff, t->bytes());  // fresh outputs only
        }
      if (poison(be_) && arena_) std::memset(arena_->data, 0xff, arenaBytes_);
      for (const Slot& s : dynamic_)
        (s.isOut ? out_ : in_)[s.op][s.index].data = live_[s.value]->storage->data;
    }
    bool wantGraph = graphMode_ && !graphFailed_ && !timings;
    auto fallBack = [&](const std::string& why) {
      graphFailed_ = true;
      std::fprintf(stderr, "idforge: CUDA graph disabled for a program of %zu ops, running op by op: %s\n",
                   ops_.size(), why.c_str());
    };
    if (wantGraph && graph_) {
      be_->launchGraph(graph_);
    } else if (wantGraph && runs_ >= 1) {
      // Capture on the second run: the first, eager one has set up every lazily created resource
      // (kernel attributes, pooled scratch buffers, cuBLAS state) and reported any shape error.
      bool captured = false;
      try {
        be_->beginCapture();
        try {
          runOps(nullptr, nullptr);  // a capture only records launches: never interrupted half-way
        } catch (...) {
          be_->abortCapture();
          throw;
        }
        std::string why;
        graph_ = be_->endCapture(&why);
        if (graph_) captured = true;
        else fallBack(why);
      } catch (const std::exception& e) {
        fallBack(e.what());
      }
      if (captured) be_->launchGraph(graph_);
      else runOps(nullptr, cancel);
    } else {
      runOps(timings, cancel);
    }
    for (size_t k = 0; k < outputs_.size(); k++) {
      const int id = outputs_[k];
      if (consts_[id]) {
        result.push_back(consts_[id]);
      } else if (producer_[id] == -3 || !graphMode_) {
        result.push_back(live_[id]);
      } else {
        // Graph mode: outputs live in the arena; hand JS a copy (into the caller's tensor if given).
        auto t = intoOf(k);
        if (!t) t = fresh(id);
        be_->run(OpCode::RESHAPE, OpAttrs{}, {arenaView(id)}, {t->view()});
        result.push_back(t);
      }
    }
    be_->synchronize();
  } catch (...) {
    // What this run queued may still be executing (and may still flag a kernel error): wait for
    // it and forget such flags, so neither reaches the stream's next, valid call.
    try {
      be_->discardPending();
    } catch (...) {
    }
    throw;
  }
  runs_++;
  return result;
}

}  // namespace idforge
