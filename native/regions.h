// ATTENTION's optional region table (backend.h), stated once for both backends
// (native/cpu/attention.cc, kernels/attention*.cu); lib/graph/regions.ts packs it:
//   int32 [B, Nk + 4R], R ≤ kMaxRegions. Row b: the owner of each of the Nk keys (a region index
//   in [0, R), or −1: seen by every query), then R boxes [x0, y0, x1, y1) as float32 bits, in
//   fractions of the query grid's width and height.
// Query n of the H × W grid (W = attrs.width, H = Nq / W) is cell (i, j) = (n / W, n % W) with
// centre ((j + ½) / W, (i + ½) / H), divided in float32 (round to nearest, also under CUDA's fast
// math); it sees a key owned by region r only if that centre lies in box r. The grid is a
// layer's, the boxes the image's: one table serves every cross-attention layer of a UNet.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "backend.h"

#if defined(__CUDACC__)
#define IDFORGE_HD __host__ __device__
#else
#define IDFORGE_HD
#endif

namespace idforge {

constexpr int kMaxRegions = 32;  // the regions holding one query fit a 32-bit mask

IDFORGE_HD inline float regionFloat(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

IDFORGE_HD inline float cellCentre(int64_t cell, int64_t cells) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(float(cell) + 0.5f, float(cells));
#else
  return (float(cell) + 0.5f) / float(cells);
#endif
}

// Whether box b (4 float32 bits) spans centre c along x (axis 0) or y (axis 1): [b0, b2) or [b1, b3).
IDFORGE_HD inline bool boxSpans(const int32_t* b, int axis, float c) {
  return c >= regionFloat(b[axis]) && c < regionFloat(b[axis + 2]);
}

// Bit r set: box r (boxes: R × 4 float32 bits) holds the centre of query n of an H × W grid.
IDFORGE_HD inline uint32_t regionsAt(const int32_t* boxes, int R, int64_t n, int64_t W, int64_t H) {
  const int64_t i = n / W, j = n - i * W;
  const float cx = cellCentre(j, W), cy = cellCentre(i, H);
  uint32_t m = 0;
  for (int r = 0; r < R; r++)
    if (boxSpans(boxes + 4 * r, 0, cx) && boxSpans(boxes + 4 * r, 1, cy)) m |= 1u << r;
  return m;
}

// The same rule split by axis (box membership is a column test and a row test): bit r of
// cols[j] / rows[i] says whether box r holds column j's / row i's centre; query (i, j) holds
// rows[i] & cols[j]. What a backend uses to set up a whole grid in O(R·(H + W)).
inline void regionAxes(const int32_t* boxes, int R, int64_t W, int64_t H, uint32_t* cols, uint32_t* rows) {
  for (int64_t j = 0; j < W; j++) cols[j] = 0;
  for (int64_t i = 0; i < H; i++) rows[i] = 0;
  for (int r = 0; r < R; r++) {
    for (int64_t j = 0; j < W; j++)
      if (boxSpans(boxes + 4 * r, 0, cellCentre(j, W))) cols[j] |= 1u << r;
    for (int64_t i = 0; i < H; i++)
      if (boxSpans(boxes + 4 * r, 1, cellCentre(i, H))) rows[i] |= 1u << r;
  }
}

// Whether a query holding regions `inside` sees a key owned by `owner` (−1: every query does).
IDFORGE_HD inline bool regionSees(int32_t owner, uint32_t inside) { return owner < 0 || ((inside >> owner) & 1u); }

// Both backends' check of a table t for B rows, Nq queries and Nk keys on a width-wide grid: its
// region count R, or Error E_ARGUMENT (not int32) / E_SHAPE. The owners are checked where the
// table lives (the CPU op reads them; CUDA kernels flag a bad one).
inline int regionCount(const char* op, const TensorView* t, int64_t B, int64_t Nq, int64_t Nk, int64_t width) {
  const std::string o(op);
  if (!t || !t->data) throw Error("E_SHAPE", o + ": attrs.regions is set but the region table is missing");
  if (t->dtype != DType::I32) throw Error("E_ARGUMENT", o + ": region table must be int32, got " + dtypeName(t->dtype));
  const Shape& s = t->shape;
  const int64_t extra = s.size() == 2 ? s[1] - Nk : -1;
  if (s.size() != 2 || s[0] != B || extra < 0 || extra % 4 || extra / 4 > kMaxRegions)
    throw Error("E_SHAPE", o + ": region table " + shapeStr(s) + " must be [B, Nk + 4R] = [" + std::to_string(B) + ", " +
                               std::to_string(Nk) + " + 4R] with R <= " + std::to_string(kMaxRegions));
  if (width <= 0 || Nq % width)
    throw Error("E_SHAPE", o + ": attrs.width " + std::to_string(width) + " (the query grid's) must divide the " +
                               std::to_string(Nq) + " queries");
  return int(extra / 4);
}

}  // namespace idforge
