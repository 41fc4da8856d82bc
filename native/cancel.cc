#include "cancel.h"

#include "backend.h"

namespace idforge {

namespace {
thread_local const CancelFlag* t_cancel = nullptr;
}

const CancelFlag* currentCancel() { return t_cancel; }

CancelScope::CancelScope(const CancelFlag* flag) : prev_(t_cancel) { t_cancel = flag; }
CancelScope::~CancelScope() { t_cancel = prev_; }

void throwIfCancelled(const CancelFlag* f) {
  if (isCancelled(f)) throw Error("E_ABORTED", "the run was aborted");
}

}  // namespace idforge
