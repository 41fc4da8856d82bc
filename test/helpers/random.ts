/** Seeded random test inputs, shared by the finite-difference and fusion tests. */

/** A seeded uniform generator in [0, 1) (an LCG: fast, reproducible, good enough for test data). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** n seeded random values in ±[0.1, 1]·amp (never zero). */
export function rand(n: number, seed: number, amp = 1): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = amp * (0.1 + 0.9 * r()) * (r() < 0.5 ? -1 : 1);
  return a;
}

/** Elements of a shape. */
export const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
