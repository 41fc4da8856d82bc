// Packed, cache-blocked SGEMM for the CPU backend (row-major, float32).
//
// Blocking follows the usual GotoBLAS/BLIS scheme: K is cut into kKC-deep slabs, A is packed into
// MR-row panels ([kc][MR]) and B into NR-column panels ([kc][NR]), and a register-blocked
// micro-kernel multiplies one A panel by one B panel. The kernels and packing come from the kernel
// table of the selected instruction set (isa/kernels.h: kern()); this file is the driver that is
// the same for every variant. Operands are supplied by
// GemmA/GemmB so that callers can pack straight from their own layouts (im2col for convolution,
// transposed weights for linear layers) or hand over data packed once and reused (conv weights).
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa/kernels.h"

namespace idforge {
namespace cpu {

constexpr int64_t kKC = kGemmKC;  // depth of a K slab: an NR-wide B panel (32 KiB) stays in L1
constexpr int64_t kMC = kGemmMC;  // rows of A per L2-resident block (a multiple of every variant's MR)
constexpr int64_t kNCMax = 2048;

// Register tile of the selected variant: wide (MR x 2 vectors, 14 x 32 on AVX-512) or narrow
// (2·MR x 1 vector), whichever pads N the least.
GemmTile gemmTile(int64_t M, int64_t N);

inline int64_t roundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// An operand `elems` elements further on (float or half alike).
inline Operand offset(Operand x, int64_t elems) {
  x.p = x.half ? static_cast<const void*>(static_cast<const uint16_t*>(x.p) + elems)
               : static_cast<const void*>(static_cast<const float*>(x.p) + elems);
  return x;
}

// Packs the mc x kc block X(i, k) = X[i*rs + k*cs] into ceil(mc/mr) panels laid out as
// dst[(panel*kc + k)*mr + r], zero-filling rows past mc (a half X is converted to float32).
inline void packA(Operand X, int64_t rs, int64_t cs, int64_t mc, int64_t kc, int mr, float* dst) {
  kern().pack.packA(X, rs, cs, mc, kc, mr, dst);
}
// Packs the kc x nc block X(k, j) = X[k*rs + j*cs] into ceil(nc/nr) panels laid out as
// dst[(panel*kc + k)*nr + c], zero-filling columns past nc.
inline void packB(Operand X, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int nr, float* dst) {
  kern().pack.packB(X, rs, cs, kc, nc, nr, dst);
}

// C[mc x nc] (row stride ldc) = (accumulate ? C : 0) + Apanels · Bpanels over a kc-deep slab.
inline void gemmBlock(const GemmTile& t, int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp,
                      float* C, int64_t ldc, bool accumulate) {
  kern().gemm.block(t, mc, nc, kc, Ap, Bp, C, ldc, accumulate);
}

// Where the driver gets packed slabs from. get() returns panels for the requested block, either
// packed into `scratch` (sized by the driver) or pointing into data packed beforehand.
// Blocks always start at multiples of kKC in K and of MR (A) / NR (B) in M / N.
class GemmA {
 public:
  virtual ~GemmA() = default;
  virtual bool prepacked() const { return false; }
  virtual const float* get(int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* scratch) const = 0;
};
class GemmB {
 public:
  virtual ~GemmB() = default;
  virtual const float* get(int64_t p0, int64_t kc, int64_t j0, int64_t nc, float* scratch) const = 0;
};

class StridedA : public GemmA {
 public:
  StridedA(Operand x, int64_t rs, int64_t cs, int mr) : x_(x), rs_(rs), cs_(cs), mr_(mr) {}
  const float* get(int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* scratch) const override;

 private:
  Operand x_;
  int64_t rs_, cs_;
  int mr_;
};

class StridedB : public GemmB {
 public:
  StridedB(Operand x, int64_t rs, int64_t cs, int nr) : x_(x), rs_(rs), cs_(cs), nr_(nr) {}
  const float* get(int64_t p0, int64_t kc, int64_t j0, int64_t nc, float* scratch) const override;

 private:
  Operand x_;
  int64_t rs_, cs_;
  int nr_;
};

// All of A packed once (in parallel), for an A reused across several products (conv weights
// across the images of a batch).
class PackedA : public GemmA {
 public:
  PackedA(Operand x, int64_t rs, int64_t cs, int64_t M, int64_t K, int mr);
  ~PackedA() override;
  PackedA(const PackedA&) = delete;
  PackedA& operator=(const PackedA&) = delete;
  bool prepacked() const override { return true; }
  const float* get(int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* scratch) const override;

 private:
  float* data_ = nullptr;
  int64_t M_, K_, Mpad_;
  int mr_;
};

// C[M x N] (row stride ldc) = (accumulate ? C : 0) + A·B, parallel over blocks of C.
void gemm(int64_t M, int64_t N, int64_t K, const GemmTile& t, const GemmA& A, const GemmB& B, float* C,
          int64_t ldc, bool accumulate);

// C[M x N] (row stride ldc) = (accumulate ? C : 0) + A·B with A row-major [M x K] (row stride
// lda) read in place, never packed. For weight-bound products with few columns (N <= 128: convs
// on 8x8 and 4x4 images, linears over few tokens with the weight as A): the weights are then
// read exactly once, straight from memory, instead of being copied first. B is packed whole, once.
void gemmRowA(int64_t M, int64_t N, int64_t K, Operand A, int64_t lda, const GemmB& B, float* C, int64_t ldc,
              bool accumulate);
constexpr int64_t kRowANMax = 128;
inline int rowANr() { return kern().gemm.wide.nr; }

// Convenience: A(i, k) = A[i*rsa + k*csa], B(k, j) = B[k*rsb + j*csb].
void sgemm(int64_t M, int64_t N, int64_t K, Operand A, int64_t rsa, int64_t csa, Operand B, int64_t rsb,
           int64_t csb, float* C, int64_t ldc, bool accumulate);

// alignedAlloc (64-byte aligned; throws Error("E_OOM")), alignedFree and threadScratch (a
// per-thread buffer, slot 0..7, of at least n floats, reused across calls) are declared in
// isa/kernels.h: the variants use them too.

}  // namespace cpu
}  // namespace idforge
