/**
 * Seeded, platform-independent standard-normal numbers.
 *
 * Algorithm (stable: changing it changes every seeded image):
 *  - the seed (a safe integer or bigint, taken modulo 2^64) is expanded by SplitMix64 into two
 *    64-bit words, which become the four 32-bit state words of xoshiro128** (low word first);
 *  - xoshiro128** (Blackman & Vigna) yields 32-bit outputs;
 *  - two outputs make one double in [0, 1): u = ((a >>> 5) * 2^26 + (b >>> 6)) / 2^53;
 *  - Box–Muller on two such doubles u1, u2: r = sqrt(-2 ln(1 - u1)), z0 = r cos(2π u2),
 *    z1 = r sin(2π u2); z0 then z1 are emitted, each rounded to float32.
 * Only 32-bit integer arithmetic and IEEE double math are involved; V8 implements log/sin/cos
 * with its own fdlibm port, so the same seed gives the same numbers on every platform.
 */
import { integer, invalid } from '../validate.js';

const MASK64 = (1n << 64n) - 1n;

function seedTo64(seed: number | bigint): bigint {
  if (typeof seed === 'bigint') return BigInt.asUintN(64, seed);
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) {
    throw invalid('seed', 'a safe integer or a bigint', seed);
  }
  return BigInt.asUintN(64, BigInt(seed));
}

function splitmix64(state: { s: bigint }): bigint {
  state.s = (state.s + 0x9e3779b97f4a7c15n) & MASK64;
  let z = state.s;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

/** xoshiro128** seeded through SplitMix64; `next()` returns an unsigned 32-bit integer. */
export class Xoshiro128 {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number | bigint) {
    const st = { s: seedTo64(seed) };
    const a = splitmix64(st);
    const b = splitmix64(st);
    this.s0 = Number(a & 0xffffffffn) | 0;
    this.s1 = Number(a >> 32n) | 0;
    this.s2 = Number(b & 0xffffffffn) | 0;
    this.s3 = Number(b >> 32n) | 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // all-zero state is a fixed point
  }

  /** A generator with the given raw state words (for test vectors); the state must not be all zero. */
  static fromState(s0: number, s1: number, s2: number, s3: number): Xoshiro128 {
    const g = new Xoshiro128(0);
    g.s0 = s0 | 0;
    g.s1 = s1 | 0;
    g.s2 = s2 | 0;
    g.s3 = s3 | 0;
    return g;
  }

  next(): number {
    const s1 = this.s1;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = (this.s3 << 11) | (this.s3 >>> 21);
    return result;
  }

  /** A double in [0, 1) with 53 random bits. */
  nextDouble(): number {
    const a = this.next() >>> 5;
    const b = this.next() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }
}

/**
 * An endless standard-normal stream for `seed` (the numbers `randn(seed, n)` returns, in order),
 * as a function, e.g. for `DDIMScheduler.step(..., { rng })`.
 */
export function normalGenerator(seed: number | bigint): () => number {
  const g = new Xoshiro128(seed);
  let spare = NaN;
  let hasSpare = false;
  return () => {
    if (hasSpare) {
      hasSpare = false;
      return spare;
    }
    const u1 = g.nextDouble();
    const u2 = g.nextDouble();
    const r = Math.sqrt(-2 * Math.log(1 - u1));
    const th = 2 * Math.PI * u2;
    spare = Math.fround(r * Math.sin(th));
    hasSpare = true;
    return Math.fround(r * Math.cos(th));
  };
}

/** `n` standard-normal float32 numbers from `seed` (see the module comment for the algorithm). */
export function randn(seed: number | bigint, n: number): Float32Array {
  integer(n, 'n', 0);
  const next = normalGenerator(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = next();
  return out;
}
