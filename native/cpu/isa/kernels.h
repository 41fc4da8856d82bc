// The CPU backend's kernel table: the hot loops (GEMM micro-kernels and packing, Winograd, vector
// math, norms, attention's P·V), compiled once per instruction set, each variant in its own
// translation unit with its own flags (native/cpu/isa/<isa>.cc), and chosen once at load
// (select.cc: CPUID + XGETBV on x86-64, NEON on arm64; IDFORGE_CPU_ISA forces a lower variant).
//
// This header is the whole boundary between the baseline code (drivers, shape checks, thread pool)
// and the variants, so it holds plain data and function pointers only: no templates, no inline
// functions a variant calls (Operand's converting constructors are for baseline callers), nothing a
// variant could emit as a shared (COMDAT) symbol that the linker might then hand to baseline code
// compiled for a lesser CPU (test/isa.test.ts checks the objects for that).
#pragma once

#include <cstddef>
#include <cstdint>

namespace idforge {
namespace cpu {

// Register tile of the packed SGEMM: wide (MR x 2 vectors) or narrow (2·MR x 1 vector).
struct GemmTile {
  int mr, nr;
  bool wide;
};

// A read-only matrix operand in float32 or IEEE half (float16 weights on the CPU: converted to
// float32 while being packed, so the micro-kernels only ever see float32).
struct Operand {
  const void* p = nullptr;
  bool half = false;
  Operand() = default;
  Operand(const float* f) : p(f) {}
  Operand(const uint16_t* h) : p(h), half(true) {}
};

// LINEAR / CONV2D's epilogue as the variants see it (ops.h's Epilogue without its helpers).
struct EpilogueData {
  const float* bias;
  int64_t biasImageStride;
  const float* residual;
};

// One family per struct: a variant replaces a family whole or not at all, so a family whose
// entries depend on each other (a GEMM's tile sizes and its micro-kernels) never mixes variants.
struct GemmKernels {
  int lanes;
  GemmTile wide, narrow;
  // C[mc x nc] (row stride ldc) = (acc ? C : 0) + A·B over one kc slab of packed panels.
  void (*block)(const GemmTile& t, int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C,
                int64_t ldc, bool acc);
  // gemmRowA's rows [0, m) (any m): A read in place (row-major, row stride lda; a half A is
  // converted sliver by sliver into scratch, kKC·wide.mr floats) times the packed B slab Bs
  // (N columns in wide.nr panels).
  void (*rowA)(int64_t m, int64_t N, int64_t kc, Operand A, int64_t lda, const float* Bs, float* C, int64_t ldc,
               bool acc, float* scratch);
  // O[rows x dvPad] += P[rows x kc] (row stride kAttnKeys) · V panels [dvPad/nr][kc][nr], rows a
  // multiple of t.mr: attention's probabilities times values, straight from the score tile.
  void (*pv)(const GemmTile& t, int64_t rows, int64_t kc, int64_t dvPad, const float* P, const float* V, float* O);
};

struct PackKernels {
  // mc x kc block X(i, k) = X[i*rs + k*cs] into mr-row panels dst[(panel*kc + k)*mr + r].
  void (*packA)(Operand X, int64_t rs, int64_t cs, int64_t mc, int64_t kc, int mr, float* dst);
  // kc x nc block X(k, j) = X[k*rs + j*cs] into nr-column panels dst[(panel*kc + k)*nr + c].
  void (*packB)(Operand X, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int nr, float* dst);
  // dst[i] = float(src[i]) for IEEE half src.
  void (*halfToFloat)(const uint16_t* src, float* dst, int64_t n);
};

struct VmathKernels {
  float (*expSubSum)(const float* x, float* y, int64_t n, float sub);  // y = exp(x − sub), returns Σy
  float (*rowMax)(const float* x, int64_t n);
  void (*siluScaled)(const float* x, float* y, int64_t n, float alpha);  // x·σ(alpha·x)
  void (*gelu)(const float* x, float* y, int64_t n);                     // exact (erf) GELU
  void (*geglu)(const float* h, const float* g, float* o, int64_t n);   // h·gelu(g)
};

struct NormKernels {
  double (*sum)(const float* x, int64_t n);                      // in double
  double (*sumSqDev)(const float* x, int64_t n, double mean);   // Σ(x − mean)² in double
  // y = (x − mean)·sc + sh, then SiLU when silu (a group norm's channel).
  void (*affine)(const float* x, float* y, int64_t n, float mean, float sc, float sh, bool silu);
  // y = (x − mean)·rstd·w + b (a layer norm's row).
  void (*affineRow)(const float* x, float* y, int64_t n, float mean, float rstd, const float* w, const float* b);
};

struct WinogradKernels {
  // y = conv3x3(x, w) (stride 1, pad 1) + epilogue with F(m x m, 3 x 3), m = 2 or 4 (winograd.h).
  void (*conv)(int m, const float* x, Operand w, const EpilogueData& e, float* y, int64_t B, int64_t C, int64_t H,
               int64_t W, int64_t O);
};

struct PeakKernels {
  // iters rounds of independent FMA chains (a multiply and an add where there is no FMA) on this
  // variant's vectors: the FLOPs done (2 per lane per multiply-add); *sink keeps them from being
  // optimised away. The bench's yardstick of what the variant's instructions can do at most.
  double (*fmaLoop)(int64_t iters, float* sink);
};

enum class Isa : int { SSE2 = 0, AVX2 = 1, AVX512 = 2, NEON = 3 };

struct Kernels {
  Isa isa;
  const char* name;  // "sse2" | "avx2" | "avx512" | "neon": backends().cpu.isa
  GemmKernels gemm;
  PackKernels pack;
  VmathKernels vmath;
  NormKernels norm;
  WinogradKernels winograd;
  PeakKernels peak;
};

// The selected table (select.cc). Chosen on first use; when the choice failed (a bad
// IDFORGE_CPU_ISA) it is the baseline table and isaError() says why: the CPU backend refuses to
// run (E_BACKEND) before any kernel is called.
const Kernels& kern();
// Empty when the selection succeeded, else the E_BACKEND message.
const char* isaError();
// What this CPU supports, best first ("avx512, avx2, sse2"): for messages and backends().
const char* isaAvailable();

// Blocking constants every variant's tiles must divide (simd.h asserts it): the GEMM's K slab and
// row block (gemm.h: blocks start at multiples of MR), attention's key tile (the score tile's row
// stride, a compile-time constant of the P·V kernel, padded to whole NR panels).
constexpr int64_t kGemmKC = 256, kGemmMC = 336;
constexpr int64_t kAttnKeys = 256;

// Baseline services a variant may call (defined in gemm.cc / parallel.cc; never inline).
void* alignedAlloc(size_t bytes);
void alignedFree(void* p);
float* threadScratch(int slot, size_t n);
int numThreads();
// parallel_for (parallel.h) without std::function: fn(ctx, begin, end) over disjoint ranges of [0, n).
void parallelForFn(int64_t n, void (*fn)(void* ctx, int64_t b, int64_t e), void* ctx, int64_t grain);

// Each variant's entry point (native/cpu/isa/<isa>.cc): overwrites the families it implements.
// A variant built for another architecture (neon on x86-64) leaves the table as it is.
namespace sse2 { void fill(Kernels& k); }
namespace avx2 { void fill(Kernels& k); }
namespace avx512 { void fill(Kernels& k); }
namespace neon { void fill(Kernels& k); }

}  // namespace cpu
}  // namespace idforge
