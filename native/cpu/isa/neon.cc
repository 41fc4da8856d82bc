// The NEON variant of the CPU kernels (kernels.h) for arm64, where NEON (Advanced SIMD) is part of
// the base architecture: no extra flags. On other architectures fill() leaves the table alone.
#include "kernels.h"

#if defined(__aarch64__)
#define IDFORGE_ISA_NS neon
#define IDFORGE_ISA_NEON 1
#include "table_impl.h"
#else
namespace idforge::cpu::neon {
void fill(Kernels&) {}
}  // namespace idforge::cpu::neon
#endif
