/** Numeric comparison helpers shared by the tests. */

type Num = ArrayLike<number>;

function checkLengths(a: Num, b: Num): void {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
}

/** Relative L2 error ‖out − ref‖ / ‖ref‖ (float64 accumulation). `ref` all zero → ‖out‖. */
export function relL2(out: Num, ref: Num): number {
  checkLengths(out, ref);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = out[i]! - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  if (Number.isNaN(num)) return NaN;
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Largest |out − ref|. */
export function maxAbs(out: Num, ref: Num): number {
  checkLengths(out, ref);
  let m = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(out[i]! - ref[i]!);
    if (!(d <= m)) m = d; // NaN propagates
  }
  return m;
}

/** Largest |out − ref| / |ref| over entries with ref ≠ 0. */
export function maxRel(out: Num, ref: Num): number {
  checkLengths(out, ref);
  let m = 0;
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === 0) continue;
    const d = Math.abs(out[i]! - ref[i]!) / Math.abs(ref[i]!);
    if (!(d <= m)) m = d;
  }
  return m;
}
