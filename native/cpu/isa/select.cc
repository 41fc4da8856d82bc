// Chooses the CPU kernels once per process: the best variant this CPU and its OS support, or the
// one IDFORGE_CPU_ISA names (to force a lower one: tests, benchmarks, a misbehaving CPU).
// x86-64: CPUID says what the CPU implements, XGETBV whether the OS saves the wider registers on a
// context switch (AVX needs XCR0's SSE and YMM state bits, AVX-512 also its opmask and ZMM ones);
// a CPU can have AVX-512 that the OS leaves off. arm64: NEON is part of the base architecture.
// The table starts from the lowest variant and each higher one chosen overwrites the families it
// implements, so a family a variant lacks falls back to the next lower one.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace idforge {
namespace cpu {
namespace {

struct Selection {
  Kernels table{};
  std::string error, available;
};

#if defined(__x86_64__) || defined(_M_X64)
uint64_t xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

// Variants this CPU supports, lowest first.
std::vector<Isa> supported() {
  std::vector<Isa> v{Isa::SSE2};  // every x86-64 CPU has SSE2
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return v;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return v;
  const uint64_t x = xcr0();
  if ((x & 0x6) != 0x6) return v;  // the OS does not save YMM state
  unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
  if (__get_cpuid_max(0, nullptr) >= 7) __cpuid_count(7, 0, a7, b7, c7, d7);
  const bool avx2 = b7 & (1u << 5), f = b7 & (1u << 16), bw = b7 & (1u << 30), vl = b7 & (1u << 31);
  if (!(avx2 && fma && f16c)) return v;
  v.push_back(Isa::AVX2);
  if (f && bw && vl && (x & 0xe6) == 0xe6) v.push_back(Isa::AVX512);
  return v;
}
#elif defined(__aarch64__)
std::vector<Isa> supported() { return {Isa::NEON}; }
#else
std::vector<Isa> supported() { return {}; }
#endif

const char* nameOf(Isa i) {
  switch (i) {
    case Isa::SSE2: return "sse2";
    case Isa::AVX2: return "avx2";
    case Isa::AVX512: return "avx512";
    case Isa::NEON: return "neon";
  }
  return "?";
}

void fillUpTo(Kernels& k, Isa chosen) {
  if (chosen == Isa::NEON) {
    neon::fill(k);
    return;
  }
  sse2::fill(k);
  if (chosen == Isa::SSE2) return;
  avx2::fill(k);
  if (chosen == Isa::AVX2) return;
  avx512::fill(k);
}

Selection select() {
  Selection s;
  const std::vector<Isa> have = supported();
  for (size_t i = have.size(); i-- > 0;) s.available += std::string(nameOf(have[i])) + (i ? ", " : "");
  if (have.empty()) {
    s.error = "the idforge CPU backend has kernels for x86-64 and arm64 only, not for this architecture";
    s.table.name = "none";
    return s;
  }
  Isa chosen = have.back();
  const char* env = std::getenv("IDFORGE_CPU_ISA");
  if (env && *env && std::strcmp(env, "auto") != 0) {
    bool known = false, found = false;
    for (Isa i : {Isa::SSE2, Isa::AVX2, Isa::AVX512, Isa::NEON}) known |= std::strcmp(env, nameOf(i)) == 0;
    for (Isa i : have)
      if (std::strcmp(env, nameOf(i)) == 0) {
        chosen = i;
        found = true;
      }
    if (!found) {
      s.error = std::string("IDFORGE_CPU_ISA=") + env +
                (known ? ": this CPU (or its OS) does not support it" : " is not an instruction set (sse2, avx2, avx512, neon or auto)") +
                "; this CPU has " + s.available;
      chosen = have.front();
    }
  }
  fillUpTo(s.table, chosen);
  s.table.isa = chosen;
  s.table.name = nameOf(chosen);
  return s;
}

const Selection& selection() {
  static const Selection s = select();
  return s;
}

}  // namespace

const Kernels& kern() { return selection().table; }
const char* isaError() { return selection().error.c_str(); }
const char* isaAvailable() { return selection().available.c_str(); }

}  // namespace cpu
}  // namespace idforge
