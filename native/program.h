// A compiled graph: the op list built in TypeScript (lib/graph), validated once, with a static
// buffer plan (one arena per program, offsets from value lifetimes, RESHAPEs as aliases) and, on
// backends that have them, the whole op sequence replayed as one captured graph. run() is
// one native call per graph evaluation (a whole UNet step), executed off the JS thread.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "cancel.h"
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
  // graph: 1 = capture the run into a backend graph (CUDA graphs) after one eager run, 0 = never,
  // -1 = IDFORGE_CUDA_GRAPH (0/1) when set, else on wherever the backend supports graphs.
  Program(Backend* be, std::vector<ValueDesc> values, std::vector<std::pair<int, std::shared_ptr<NTensor>>> consts,
          std::vector<int> inputs, std::vector<int> outputs, std::vector<OpDesc> ops, int graph = -1);
  ~Program();
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  // Runs the graph. Inputs must match the declared dtypes/shapes and live on this backend's device.
  // With `timings`, each op is timed (for the benchmark harness only; never a graph): by device
  // events between ops on CUDA, by a synchronised host clock on the CPU.
  // `cancel` (may be null): checked before every op (on CUDA: before every launch; a replayed
  // graph is one launch) and, on the CPU, before every parallel chunk of an op; when set, the run
  // stops with Error("E_ABORTED") and its outputs are freed. From the first op that updates in
  // place (updatesInPlace) on, the run is no longer interrupted: it finishes its update. `fine`:
  // the CPU pool also sub-splits its chunks to check more often (see cancel.h; for a caller's
  // AbortSignal).
  // `into` (may be null; else one entry per output, null for a fresh tensor): tensors the outputs
  // are written to, returned as those outputs. One may be an input of the run only when the op
  // computing that output updates in place (updatesInPlace, backend.h) and reads the input last.
  std::vector<std::shared_ptr<NTensor>> run(const std::vector<std::shared_ptr<NTensor>>& inputs,
                                            std::vector<OpTiming>* timings, const CancelFlag* cancel = nullptr,
                                            bool fine = false,
                                            const std::vector<std::shared_ptr<NTensor>>* into = nullptr);
  Backend* backend() const { return be_; }
  size_t inputCount() const { return inputs_.size(); }
  size_t constBytes() const { return constBytes_; }
  // The static buffer plan: every intermediate lives at a fixed offset of one arena (allocated on
  // the first run, kept until the program is destroyed); intermediateBytes is what one buffer per
  // value would take (256-byte aligned), arenaBytes what the plan takes.
  size_t arenaBytes() const { return arenaBytes_; }
  size_t intermediateBytes() const { return naiveBytes_; }
  // Ops of the current (or last) run done so far, of opsTotal(): read from the JS thread while a
  // run is in flight, for progress during long steps.
  int64_t opsDone() const { return opsDone_.load(std::memory_order_relaxed); }
  int64_t opsTotal() const { return static_cast<int64_t>(ops_.size()); }
  bool graphEnabled() const { return graphMode_ && !graphFailed_; }
  bool graphCaptured() const { return graph_ != nullptr; }

 private:
  // float16 weights on the CPU: whether a constant stored as `stored` serves a value declared
  // `declared` as a half weight, and the value id op `op` reads at input `slot` (a float32 copy of
  // a half weight where the op does not read half).
  bool halfWeights(DType stored, DType declared) const;
  int halfWeight(size_t op, size_t slot, int id);
  void plan();
  void prepare();  // first run: the arena and the per-op views
  void runOps(std::vector<OpTiming>* timings, const CancelFlag* cancel);
  void checkInto(const std::vector<std::shared_ptr<NTensor>>& inputs, const std::vector<std::shared_ptr<NTensor>>& into) const;

  Backend* be_;
  std::vector<ValueDesc> values_;
  std::vector<std::shared_ptr<NTensor>> consts_;  // indexed by value id, null when not a constant
  std::vector<int> inputs_, outputs_;
  std::vector<OpDesc> ops_;
  std::vector<int> producer_;     // -2 const, -3 input, >= 0 op index
  std::vector<int> lastUse_;
  std::vector<bool> isOutput_;
  std::vector<int> root_;         // value → the value whose buffer it uses (itself unless a RESHAPE alias)
  std::vector<int64_t> offset_;   // arena offset of a root, -1 when not in the arena
  std::vector<bool> skip_;        // op → an aliased RESHAPE (nothing to run)
  std::map<int, int> shadow_;     // half weight → its float32 copy (halfWeight)
  std::vector<bool> constView_;   // op → a RESHAPE of a constant, made a constant view at compile time
  size_t constBytes_ = 0, arenaBytes_ = 0, naiveBytes_ = 0;
  bool graphMode_ = false;        // inputs and outputs are arena regions too (copied in / out)
  bool graphFailed_ = false;
  void* graph_ = nullptr;
  int runs_ = 0;
  std::shared_ptr<Storage> arena_;
  // Per-op views, built once; the slots that name a run's own tensors (inputs read in place,
  // fresh outputs) are patched on every run.
  std::vector<std::vector<TensorView>> in_, out_;
  struct Slot {
    int op, value;
    bool isOut;
    int index;
  };
  std::vector<Slot> dynamic_;
  std::vector<std::shared_ptr<NTensor>> live_;  // value → the run's own tensor (dynamic values only)
  bool prepared_ = false;
  std::atomic<int64_t> opsDone_{0};
  std::mutex mu_;  // one run at a time per program: the arena and the backend stream are shared
};

}  // namespace idforge
