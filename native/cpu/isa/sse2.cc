// The sse2 variant of the CPU kernels (kernels.h). Compiled with its own flags: none (x86-64's baseline)
// (CMakeLists.txt, binding.gyp); select.cc calls fill() only on a CPU (and OS) that has them.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define IDFORGE_ISA_NS sse2
#define IDFORGE_ISA_SSE2 1
#include "table_impl.h"
#else
namespace idforge::cpu::sse2 {
void fill(Kernels&) {}
}  // namespace idforge::cpu::sse2
#endif
