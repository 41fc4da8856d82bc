// A variant's entry point: the families it implements, written into the kernel table. Included
// last by native/cpu/isa/<isa>.cc (inside nothing: it opens the variant's namespace itself).
#pragma once

#include "gemm_impl.h"
#include "norm_impl.h"
#include "vmath_impl.h"
#include "winograd_impl.h"

namespace idforge {
namespace cpu {
namespace IDFORGE_ISA_NS {

void fill(Kernels& k) {
  k.gemm = GemmKernels{kLanes, GemmTile{kWideMR, kWideNR, true}, GemmTile{kNarrowMR, kNarrowNR, false}, gemmBlock, rowA, pv};
  k.pack = PackKernels{packA, packB, halfToFloat};
  k.vmath = VmathKernels{expSubSum, rowMax, siluScaled, gelu, geglu};
  k.norm = NormKernels{sum, sumSqDev, affine, affineRow};
  k.winograd = WinogradKernels{winogradConv};
  k.peak = PeakKernels{fmaLoop};
}

}  // namespace IDFORGE_ISA_NS
}  // namespace cpu
}  // namespace idforge
