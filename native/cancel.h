// Cooperative cancellation of a native run. JS owns a token (an AbortSignal listener flips its
// flag); Program::run installs it as the current thread's token, checks it between ops, and the CPU
// thread pool checks the dispatching thread's token before every chunk, so a long op stops within
// one chunk. A cancelled run throws Error("E_ABORTED"). Nothing here knows about N-API.
#pragma once

#include <atomic>
#include <memory>

namespace idforge {

using CancelFlag = std::atomic<bool>;

// The token of the run executing on this thread (nullptr outside a cancellable run).
const CancelFlag* currentCancel();

// Whether the current run asked for fine-grained checks: the CPU pool then sub-splits its chunks
// (timing-dependent partitions: fine for ops whose items are independent, but an op that sums
// per-chunk partials, like ATTENTION_BACKWARD, would no longer be bit-reproducible). Runs with a
// caller's AbortSignal ask for it; the teardown-only token of every run does not.
bool currentCancelFine();

// Installs `flag` as this thread's token for the scope's lifetime (nesting restores the outer one).
class CancelScope {
 public:
  explicit CancelScope(const CancelFlag* flag, bool fine = true);
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  const CancelFlag* prev_;
  bool prevFine_;
};

inline bool isCancelled(const CancelFlag* f) { return f && f->load(std::memory_order_relaxed); }
// Throws Error("E_ABORTED") when `f` is set.
void throwIfCancelled(const CancelFlag* f);

}  // namespace idforge
