#include "cancel.h"

#include "backend.h"

namespace idforge {

namespace {
thread_local const CancelFlag* t_cancel = nullptr;
thread_local bool t_fine = false;
}

const CancelFlag* currentCancel() { return t_cancel; }
bool currentCancelFine() { return t_cancel && t_fine; }

CancelScope::CancelScope(const CancelFlag* flag, bool fine) : prev_(t_cancel), prevFine_(t_fine) {
  t_cancel = flag;
  t_fine = fine;
}
CancelScope::~CancelScope() {
  t_cancel = prev_;
  t_fine = prevFine_;
}

void throwIfCancelled(const CancelFlag* f) {
  if (isCancelled(f)) throw Error("E_ABORTED", "the run was aborted");
}

}  // namespace idforge
