// Regional prompting: each region's tokens confined to a box of the image through cross-attention
// (native/regions.h states the rule and the table; the ATTENTION op applies it). Here: the region
// type and the host side of the table a UNet program takes as an input.

/** Token indices of the context confined to a box [x0, y0, x1, y1) in fractions of the image's width and height. */
export interface Region {
  tokens: readonly number[];
  box: readonly [number, number, number, number];
}

/**
 * Regions one table holds. Every UNet program with regions takes a table of this capacity, so one
 * compiled program serves 1 to REGION_CAPACITY regions (per-call regions are an input, never a
 * recompile); unused slots own no token and cost nothing.
 */
export const REGION_CAPACITY = 8;

/** Columns of a table for `keys` context tokens: the owner of each key, then 4 box values per region. */
export const regionColumns = (keys: number, capacity = REGION_CAPACITY): number => keys + 4 * capacity;

/**
 * The int32 region table [rows, regionColumns(keys, capacity)] (row-major): row i confines
 * `regions` when confined[i], else nothing (the unconditional rows of classifier-free guidance).
 * Regions are assumed valid (lib/validate.ts regionList) and at most `capacity`.
 */
export function regionTable(regions: readonly Region[], keys: number, confined: readonly boolean[], capacity = REGION_CAPACITY): Int32Array {
  const cols = regionColumns(keys, capacity);
  const table = new Int32Array(confined.length * cols).fill(-1);
  const boxes = new Float32Array(table.buffer);
  confined.forEach((on, row) => {
    const base = row * cols;
    table.fill(0, base + keys, base + cols); // empty boxes (+0.0 bits) for unused slots
    if (!on) return;
    regions.forEach((r, i) => {
      for (const t of r.tokens) table[base + t] = i;
      r.box.forEach((v, c) => (boxes[base + keys + 4 * i + c] = v));
    });
  });
  return table;
}
