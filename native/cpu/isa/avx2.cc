// The avx2 variant of the CPU kernels (kernels.h). Compiled with its own flags: -mavx2 -mfma -mf16c
// (CMakeLists.txt, binding.gyp); select.cc calls fill() only on a CPU (and OS) that has them.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define IDFORGE_ISA_NS avx2
#define IDFORGE_ISA_AVX2 1
#include "table_impl.h"
#else
namespace idforge::cpu::avx2 {
void fill(Kernels&) {}
}  // namespace idforge::cpu::avx2
#endif
