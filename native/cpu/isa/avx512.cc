// The avx512 variant of the CPU kernels (kernels.h). Compiled with its own flags: -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c
// (CMakeLists.txt, binding.gyp); select.cc calls fill() only on a CPU (and OS) that has them.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define IDFORGE_ISA_NS avx512
#define IDFORGE_ISA_AVX512 1
#include "table_impl.h"
#else
namespace idforge::cpu::avx512 {
void fill(Kernels&) {}
}  // namespace idforge::cpu::avx512
#endif
