// Argument checking, in one style: the one error maker (`invalid`: which argument, what it must
// be, what it was) and the shared predicates every entry's resolver (resolveX beside its entry)
// builds on. Every bad value becomes a typed error (E_ARGUMENT, or E_SHAPE for sizes) that names the
// argument, what it must be and what it got. Model-file checks are in lib/io/ (E_MODEL_FORMAT).
import { IdforgeError } from './errors.js';
import type { DeviceOptions, EvalSettings, LearnOptions, AugmentOptions } from './options.js';
import { Tensor } from './tensor.js';

const SHOWN = Symbol('shown');

/** A "got" that an error message shows as this text, as it is (e.g. `shown('3 NaN values')`). */
export function shown(text: string): { [SHOWN]: string } {
  return { [SHOWN]: text };
}

/** A value as an error message shows it: short, whatever it is. */
export function describe(v: unknown): string {
  if (v !== null && typeof v === 'object' && SHOWN in v) return String((v as { [SHOWN]: string })[SHOWN]);
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (v === null || typeof v !== 'object') return typeof v === 'function' ? 'a function' : String(v);
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of ${(v as unknown as ArrayLike<unknown>).length}`;
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
  return name && name !== 'Object' ? `a ${name}` : 'an object';
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

/**
 * @deprecated an E_ARGUMENT with a free-form message: use invalid(name, expected, got). Kept until
 * lib/learn/learn.ts moves to invalid().
 */
export function argError(msg: string, where?: string): IdforgeError {
  return new IdforgeError('E_ARGUMENT', where ? `${where}: ${msg}` : msg);
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
export function validateDevice(o: DeviceOptions): { device: 'auto' | 'cpu' | 'cuda'; dtype: 'float32' | 'float16' | undefined } {
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

/** The diffusion timestep of predictNoise: a number in [0, T). */
export function timestep(t: unknown, numTrainTimesteps: number): number {
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0 || t >= numTrainTimesteps)
    throw invalid('timestep', `a number in [0, ${numTrainTimesteps})`, t);
  return t;
}

/** Tensor of rank 4 [B, channels, h, w] with h, w positive multiples of `multiple`. */
export function imageTensorShape(x: Tensor, what: string, channels: number, multiple: number): [number, number, number, number] {
  const s = x.shape;
  if (s.length !== 4 || s[1] !== channels || !s[0] || !s[2] || !s[3] || s[2] % multiple || s[3] % multiple)
    throw invalid(what, `[B, ${channels}, h, w]${multiple > 1 ? ` with h and w multiples of ${multiple}` : ''}`, s, { code: 'E_SHAPE' });
  return s as [number, number, number, number];
}

/** 77 token ids, integers inside the vocabulary, as an Int32Array. */
export function tokenIds(x: unknown, vocabSize: number): Int32Array {
  if (!(x instanceof Int32Array) && !Array.isArray(x)) throw invalid('token ids', 'an Int32Array or an array of integers', x);
  for (const v of x) if (!Number.isInteger(v)) throw invalid('token ids', 'integers', v);
  const a = Int32Array.from(x as ArrayLike<number>);
  if (a.length !== 77) throw invalid('token ids', '77 long', shown(`${a.length}`), { code: 'E_SHAPE' });
  for (const id of a) if (id < 0 || id >= vocabSize) throw invalid('a token id', `inside the vocabulary (0..${vocabSize - 1})`, id);
  return a;
}

/** A UNet context [b, N, D], or key and value contexts of one shape: → [context] or [k, v]. */
export function unetContexts(context: Tensor | { k: Tensor; v: Tensor }, b: number, D: number): Tensor[] {
  const ctxs = context instanceof Tensor ? [context] : [context?.k, context?.v];
  for (const c of ctxs)
    if (!(c instanceof Tensor) || c.shape.length !== 3 || c.shape[0] !== b || c.shape[2] !== D || c.shape[1] !== ctxs[0]!.shape[1])
      throw invalid('context', `[${b}, N, ${D}] (key and value contexts of one shape)`, c instanceof Tensor ? c.shape : c, { code: 'E_SHAPE' });
  return ctxs as Tensor[];
}

/** The SeFi-IDE learning options with their defaults (lib/learn/learn.ts). */
export interface ValidLearn {
  steps: number;
  lr: number;
  lambda: number;
  stages: number;
  init: string;
  templates: readonly string[];
  augment: Required<AugmentOptions>;
  seed: number;
}

export function validateLearn(o: LearnOptions, defaultTemplates: readonly string[]): ValidLearn {
  const where = 'learnIdentity';
  options(o, 'options', where);
  const steps = integer(o.steps ?? 1000, 'steps', 1, 1e6, where);
  const lr = nonNegative(o.lr ?? 0.005, 'lr', { positive: true, where });
  const lambda = nonNegative(o.lambda ?? 0.003, 'lambda', { where });
  const stages = integer(o.stages ?? 5, 'stages', 1, 1000, where);
  const init = o.init ?? 'person';
  text(init, 'init', { nonEmpty: true, where });
  const templates = o.templates ?? defaultTemplates;
  if (!Array.isArray(templates) || templates.length === 0) throw invalid('templates', 'a non-empty array of prompts', templates, { where });
  for (const tp of templates)
    if (typeof tp !== 'string' || (tp.match(/<id>/g) ?? []).length !== 1) throw invalid('every template', 'a string with <id> exactly once', tp, { where });
  const a = o.augment ?? true;
  if (typeof a !== 'boolean' && (typeof a !== 'object' || a === null)) throw invalid('augment', 'a boolean or { flip, jitter, scale }', a, { where });
  const ao: AugmentOptions = typeof a === 'object' ? a : {};
  const on = a === true;
  const scale = typeof a === 'object' ? (ao.scale ?? [0.1, 1]) : on ? ([0.1, 1] as [number, number]) : false;
  if (scale !== false && (!Array.isArray(scale) || scale.length !== 2 || !(scale[0] > 0) || !(scale[1] <= 1) || scale[0] > scale[1]))
    throw invalid('augment.scale', '[min, max] with 0 < min ≤ max ≤ 1, or false', scale, { where });
  const augment = { flip: typeof a === 'object' ? ao.flip ?? true : on, jitter: typeof a === 'object' ? ao.jitter ?? true : on, scale };
  if (o.face !== undefined && o.face !== false && (typeof o.face !== 'object' || o.face === null))
    throw invalid('face', 'false or { faceIndex, noFaceFallback, analyzer }', o.face, { where });
  const seed = seedOf(o.seed, where);
  return { steps, lr, lambda, stages, init, templates, augment, seed };
}

export type ValidEval = Required<Omit<EvalSettings, 'prompts' | 'seeds'>> & { prompts: string[]; seeds: number[] };

/** evaluate()'s settings with their defaults; `multiple` is the model's size multiple. */
export function validateEvaluate(o: EvalSettings, multiple: number, defaultPrompts: readonly string[]): ValidEval {
  const where = 'evaluate';
  const prompts = [...(o.prompts ?? defaultPrompts)];
  if (!Array.isArray(o.prompts ?? defaultPrompts) || prompts.length === 0 || prompts.some((p) => typeof p !== 'string' || !p.trim()))
    throw invalid('prompts', 'a non-empty list of non-empty strings', o.prompts, { where });
  if (prompts.some((p) => /<id:[^<>]*>/.test(p))) throw invalid('prompts', 'written with <id> for the one identity, not <id:name>', prompts.find((p) => /<id:[^<>]*>/.test(p)), { where });
  const seeds = [...(o.seeds ?? [0])];
  if (seeds.length === 0) throw invalid('seeds', 'a non-empty list', o.seeds, { where });
  seeds.forEach((s, i) => integer(s, `seeds[${i}]`, 0, 2 ** 32 - 1, where));
  const threshold = o.threshold ?? 0.23;
  if (typeof threshold !== 'number' || !(threshold >= -1 && threshold <= 1)) throw invalid('threshold', 'a cosine in [-1, 1]', threshold, { where });
  const negativePrompt = text(o.negativePrompt ?? '', 'negativePrompt', { where });
  const baseline = bool(o.baseline ?? true, 'baseline', where);
  return {
    prompts, seeds, threshold, negativePrompt, baseline,
    identityScale: nonNegative(o.identityScale ?? 1, 'identityScale', { where }),
    steps: integer(o.steps ?? 30, 'steps', 1, 1000, where),
    width: imageSide(o.width ?? 512, 'width', multiple),
    height: imageSide(o.height ?? 512, 'height', multiple),
    guidanceScale: nonNegative(o.guidanceScale ?? 7.5, 'guidanceScale', { where }),
  };
}
