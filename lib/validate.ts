// Argument checking, in one style: the one error maker (`invalid`: which argument, what it must
// be, what it was) and the shared predicates every entry's resolver (resolveX beside its entry)
// builds on. Every bad value becomes a typed error (E_ARGUMENT, or E_SHAPE for sizes) that names the
// argument, what it must be and what it got. Model-file checks are in lib/io/ (E_MODEL_FORMAT).
import { IdforgeError } from './errors.js';

const SHOWN = Symbol('shown');

/** "a Map", "an Int32Array". */
const article = (name: string) => `${/^[AEIOU]/i.test(name) ? 'an' : 'a'} ${name}`;

/** A "got" that an error message shows as this text, as it is (e.g. `shown('3 NaN values')`). */
export function shown(text: string): { [SHOWN]: string } {
  return { [SHOWN]: text };
}

/** A value as an error message shows it: short, whatever it is. */
export function describe(v: unknown): string {
  if (v !== null && typeof v === 'object' && SHOWN in v) return String((v as { [SHOWN]: string })[SHOWN]);
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (v === null || typeof v !== 'object') return typeof v === 'function' ? 'a function' : String(v);
  if (ArrayBuffer.isView(v)) return `${article(v.constructor.name)} of ${(v as unknown as ArrayLike<unknown>).length}`;
  const shape = (v as { shape?: unknown }).shape;
  if (Array.isArray(shape) && typeof (v as { dtype?: unknown }).dtype === 'string') return `a ${(v as { dtype: string }).dtype} tensor ${JSON.stringify(shape)}`;
  let json: string | undefined;
  try {
    json = JSON.stringify(v);
  } catch {
    // a cycle: described by its kind below
  }
  if (json !== undefined && json.length <= 80 && (Array.isArray(v) || Object.getPrototypeOf(v) === Object.prototype)) return json;
  if (Array.isArray(v)) return `an array of ${v.length}`;
  const name = (v as object).constructor?.name;
  return name && name !== 'Object' ? article(name) : 'an object';
}

export interface InvalidOptions {
  /** The API the argument belongs to: the message starts `where: `. */
  where?: string;
  /** E_ARGUMENT (default), or E_SHAPE for sizes and shapes. */
  code?: 'E_ARGUMENT' | 'E_SHAPE';
  cause?: unknown;
}

/**
 * THE argument-error maker: `[where: ]name must be expected[, got describe(got)]`. Leave `got`
 * undefined for a rule that names no value (e.g. two options that exclude each other).
 */
export function invalid(name: string, expected: string, got?: unknown, o: InvalidOptions = {}): IdforgeError {
  const msg = `${name} must be ${expected}${got === undefined ? '' : `, got ${describe(got)}`}`;
  return new IdforgeError(o.code ?? 'E_ARGUMENT', o.where ? `${o.where}: ${msg}` : msg, o.cause === undefined ? undefined : { cause: o.cause });
}

/** An integer in [min, max]. */
export function integer(v: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER, where?: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max)
    throw invalid(name, `an integer ${max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`}`, v, { where });
  return v;
}

/** A finite number ≥ 0 (or > 0 when `positive`). */
export function nonNegative(v: unknown, name: string, opts: { positive?: boolean; where?: string } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (opts.positive && v === 0))
    throw invalid(name, `a finite number ${opts.positive ? '> 0' : '≥ 0'}`, v, { where: opts.where });
  return v;
}

/** A finite number in [lo, hi], or (lo, hi] with `above: true` (lo itself refused). */
export function numberIn(v: unknown, name: string, lo: number, hi: number, opts: { above?: boolean; where?: string } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (opts.above && v === lo))
    throw invalid(name, `a finite number in ${opts.above ? '(' : '['}${lo}, ${hi}]`, v, { where: opts.where });
  return v;
}

/** A seed: the given one (a non-negative safe integer) or a random one. */
export function seedOf(v: unknown, where?: string): number {
  const seed = v ?? Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed) || (seed as number) < 0) throw invalid('seed', 'a non-negative integer', seed, { where });
  return seed as number;
}

/** One of a fixed list of strings. */
export function oneOf<T extends string>(v: unknown, name: string, choices: readonly T[], where?: string): T {
  if (!choices.includes(v as T)) throw invalid(name, choices.map((c) => `'${c}'`).join(', ').replace(/, ([^,]*)$/, ' or $1'), v, { where });
  return v as T;
}

/** A boolean. */
export function bool(v: unknown, name: string, where?: string): boolean {
  if (typeof v !== 'boolean') throw invalid(name, 'a boolean', v, { where });
  return v;
}

/** A string (non-empty with `nonEmpty`: whitespace alone counts as empty). */
export function text(v: unknown, name: string, opts: { nonEmpty?: boolean; where?: string } = {}): string {
  if (typeof v !== 'string' || (opts.nonEmpty && !v.trim())) throw invalid(name, opts.nonEmpty ? 'a non-empty string' : 'a string', v, { where: opts.where });
  return v;
}

/** An options object (absent: `{}`); anything else (null, a number, an array) is refused. */
export function options<T extends object>(v: T | undefined, name: string, where?: string): T {
  if (v === undefined) return {} as T;
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw invalid(name, 'an object', v, { where });
  return v;
}

/** The device / dtype options every model loader takes (their resolution is lib/runtime/runtime.ts). */
export function validateDevice(o: { device?: unknown; dtype?: unknown }): { device: 'auto' | 'cpu' | 'cuda'; dtype: 'float32' | 'float16' | undefined } {
  const device = oneOf(o.device ?? 'auto', 'device', ['auto', 'cpu', 'cuda'] as const);
  const dtype = o.dtype === undefined ? undefined : oneOf(o.dtype, 'dtype', ['float32', 'float16'] as const);
  return { device, dtype };
}

function nearest(x: number, m: number): string {
  const lo = Math.max(m, Math.floor(x / m) * m);
  const hi = Math.max(m, Math.ceil(x / m) * m);
  return lo === hi ? `${lo}` : `${lo} or ${hi}`;
}

/** An image side: a positive integer up to 8192 and a multiple of the model's downsampling. */
export function imageSide(v: unknown, what: string, multiple: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 8192)
    throw invalid(what, 'a positive integer up to 8192', v, { code: 'E_SHAPE' });
  if (v % multiple)
    throw invalid(what, `a multiple of ${multiple} (the VAE × UNet downsampling; nearest valid: ${nearest(v, multiple)})`, v, { code: 'E_SHAPE' });
  return v;
}

/** A tensor of rank 4 [B, channels, h, w] with h, w positive multiples of `multiple`. */
export function imageTensorShape(x: { readonly shape: readonly number[] }, what: string, channels: number, multiple: number): [number, number, number, number] {
  const s = x.shape;
  if (s.length !== 4 || s[1] !== channels || !s[0] || !s[2] || !s[3] || s[2] % multiple || s[3] % multiple)
    throw invalid(what, `[B, ${channels}, h, w]${multiple > 1 ? ` with h and w multiples of ${multiple}` : ''}`, s, { code: 'E_SHAPE' });
  return s as [number, number, number, number];
}
