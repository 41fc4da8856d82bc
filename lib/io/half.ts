/**
 * IEEE binary16 (f16) and bfloat16 (bf16) <-> float32 conversion.
 *
 * f16 -> f32 goes through a 65536-entry table built once from the bit layout, so every pattern
 * (subnormals, infinities, NaN payloads) is exact. bf16 is the top half of an f32, so it is a shift.
 * f32 -> f16 rounds to nearest, ties to even, with overflow to infinity, like IEEE and torch.
 */

let f16Table: Float32Array | undefined;

/** Exact value of one binary16 bit pattern (0..65535) as an f32 bit pattern. */
function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) {
    // Inf / NaN: keep the payload so NaN stays NaN (and quiet NaNs stay quiet).
    return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  }
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // Subnormal: normalise. value = mant * 2^-24.
  let e = 113; // 127 - 15 + 1
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  mant &= 0x3ff;
  return (sign | (e << 23) | (mant << 13)) >>> 0;
}

function table(): Float32Array {
  if (!f16Table) {
    const bits = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) bits[h] = f16BitsToF32Bits(h);
    f16Table = new Float32Array(bits.buffer);
  }
  return f16Table;
}

/** Converts f16 bit patterns to float32 (exact). */
export function f16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length < src.length) throw new RangeError('f16ToF32: destination too short');
  const t = table();
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]!]!;
  return dst;
}

/** Converts bf16 bit patterns to float32 (exact: bf16 is a truncated f32). */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length < src.length) throw new RangeError('bf16ToF32: destination too short');
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return dst;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** One f32 bit pattern to an f16 bit pattern, round to nearest even. */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) {
    if (mant === 0) return sign | 0x7c00;
    // NaN: keep the top payload bits, force quiet so it never collapses into Inf.
    return sign | 0x7e00 | (mant >>> 13);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> Inf
  if (e <= 0) {
    // Result is subnormal (or zero) in f16.
    if (e < -10) return sign; // below half of the smallest subnormal: rounds to 0
    const m = mant | 0x800000; // implicit bit
    const shift = 14 - e; // 14..24
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1) === 1)) r++;
    return sign | r; // a carry into bit 10 correctly yields the smallest normal
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1) === 1)) r++; // carry may overflow to Inf: correct
  return sign | r;
}

/** Converts float32 values to f16 bit patterns (round to nearest, ties to even). */
export function f32ToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw new RangeError('f32ToF16: destination too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) dst[i] = f32BitsToF16Bits(bits[i]!);
  return dst;
}

/** Converts float32 values to bf16 bit patterns (round to nearest, ties to even; NaN stays NaN). */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw new RangeError('f32ToBf16: destination too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i]!;
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      dst[i] = (x >>> 16) | 0x40;
      continue;
    }
    dst[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return dst;
}

/** Scalar helpers (tests, debugging). */
export function f16ToNumber(h: number): number {
  return table()[h & 0xffff]!;
}
export function numberToF16(x: number): number {
  f32Scratch[0] = x;
  return f32BitsToF16Bits(u32Scratch[0]!);
}
