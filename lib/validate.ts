// Argument checking for the public API, in one module: every bad value becomes a typed error
// (E_ARGUMENT, or E_SHAPE for sizes) that names the argument and the range it must lie in.
// The option types themselves are in lib/options.ts; model-file checks are in lib/io/.
import { IdforgeError } from './errors.js';
import type { DeviceOptions, EvalSettings, GenerateOptions, LearnOptions, AugmentOptions } from './options.js';
import { Identity } from './identity/identity.js';
import { checkPrompt, MAX_GUIDANCE } from './io/bounds.js';
import { badSampler, isSamplerName, type SamplerName } from './sched/sampler.js';
import { Tensor } from './tensor.js';

/** A value as an error message shows it. */
export function describe(v: unknown): string {
  return typeof v === 'number' ? String(v) : JSON.stringify(v);
}

/** An E_ARGUMENT error, prefixed with the calling API (`where: message`) when given. */
export function argError(msg: string, where?: string): IdforgeError {
  return new IdforgeError('E_ARGUMENT', where ? `${where}: ${msg}` : msg);
}

/** An integer in [min, max]. */
export function integer(v: unknown, what: string, min: number, max = Number.MAX_SAFE_INTEGER, where?: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max)
    throw argError(`${what} must be an integer ${max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`}, got ${describe(v)}`, where);
  return v;
}

/** A finite number ≥ 0 (or > 0 when `positive`). */
export function nonNegative(v: unknown, what: string, opts: { positive?: boolean; where?: string } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (opts.positive && v === 0))
    throw argError(`${what} must be a finite number ${opts.positive ? '> 0' : '≥ 0'}, got ${describe(v)}`, opts.where);
  return v;
}

/** A seed: the given one (a non-negative safe integer) or a random one. */
export function seedOf(v: unknown, where?: string): number {
  const seed = v ?? Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed) || (seed as number) < 0) throw argError(`seed must be a non-negative integer, got ${describe(seed)}`, where);
  return seed as number;
}

/** One of a fixed list of strings. */
export function oneOf<T extends string>(v: unknown, what: string, choices: readonly T[]): T {
  if (!choices.includes(v as T)) throw argError(`${what} must be ${choices.map((c) => `'${c}'`).join(', ').replace(/, ([^,]*)$/, ' or $1')}, got ${describe(v)}`);
  return v as T;
}

/** The device / dtype options every model loader takes (their resolution is lib/runtime/runtime.ts). */
export function validateDevice(o: DeviceOptions): { device: 'auto' | 'cpu' | 'cuda'; dtype: 'float32' | 'float16' | undefined } {
  const device = oneOf(o.device ?? 'auto', 'device', ['auto', 'cpu', 'cuda'] as const);
  const dtype = o.dtype === undefined ? undefined : oneOf(o.dtype, 'dtype', ['float32', 'float16'] as const);
  return { device, dtype };
}

/** `identity` or `identities` as one name → Identity map (undefined when neither is given). */
export function identityMap(o: { identity?: Identity; identities?: Record<string, Identity> | Map<string, Identity> }): Map<string, Identity> | undefined {
  if (o.identity !== undefined && o.identities !== undefined) throw argError('pass either identity or identities, not both');
  if (o.identity !== undefined) {
    if (!(o.identity instanceof Identity)) throw argError('identity must be an Identity');
    return new Map([[o.identity.name ?? 'id', o.identity]]);
  }
  if (o.identities === undefined) return undefined;
  const m = o.identities instanceof Map ? o.identities : new Map(Object.entries(o.identities));
  for (const [k, v] of m) if (!(v instanceof Identity)) throw argError(`identities.${k} must be an Identity`);
  return m;
}

export interface ValidGenerate {
  width: number;
  height: number;
  steps: number;
  guidanceScale: number;
  eta: number;
  seed: number;
  negativePrompt: string;
  identityScale: number;
  sampler: SamplerName;
  numImages: number;
  /** Image-to-image strength (1 without an image). */
  strength: number;
}

function nearest(x: number, m: number): string {
  const lo = Math.max(m, Math.floor(x / m) * m);
  const hi = Math.max(m, Math.ceil(x / m) * m);
  return lo === hi ? `${lo}` : `${lo} or ${hi}`;
}

/** An image side: a positive integer up to 8192 and a multiple of the model's downsampling. */
export function imageSide(v: unknown, what: string, multiple: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 8192)
    throw new IdforgeError('E_SHAPE', `${what} must be a positive integer up to 8192, got ${describe(v)}`);
  if (v % multiple)
    throw new IdforgeError('E_SHAPE', `${what} ${v} is not a multiple of ${multiple} (the VAE × UNet downsampling); nearest valid: ${nearest(v, multiple)}`);
  return v;
}

/**
 * generate()'s options with their defaults; `multiple` is the model's size multiple, `image` the
 * init image's size (image to image: the default width and height).
 */
export function validateGenerate(opts: GenerateOptions, multiple: number, image?: { width: number; height: number }): ValidGenerate {
  if (!opts || typeof opts.prompt !== 'string') throw argError('generate needs a prompt string');
  checkPrompt(opts.prompt, 'prompt'); // huge prompts: a typed error, not a RangeError
  const negativePrompt = checkPrompt(opts.negativePrompt ?? '', 'negativePrompt');
  const width = imageSide(opts.width ?? image?.width ?? 512, 'width', multiple);
  const height = imageSide(opts.height ?? image?.height ?? 512, 'height', multiple);
  if (image && (image.width !== width || image.height !== height))
    throw new IdforgeError('E_SHAPE', `image is ${image.width}x${image.height} but width x height is ${width}x${height}: resize the image or leave width and height out`);
  const steps = integer(opts.steps ?? 50, 'steps', 1, 1000);
  const guidanceScale = nonNegative(opts.guidanceScale ?? 7.5, 'guidanceScale');
  if (guidanceScale > MAX_GUIDANCE) throw argError(`guidanceScale must be a finite number in [0, ${MAX_GUIDANCE}], got ${describe(guidanceScale)}`);
  const eta = opts.eta ?? 0;
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0 || eta > 1) throw argError(`eta must be in [0, 1], got ${describe(eta)}`);
  const seed = seedOf(opts.seed);
  if (opts.latents != null && !(opts.latents instanceof Tensor)) throw argError('latents must be a Tensor'); // null = absent
  const badLatents = opts.latents ? opts.latents.countNonFinite() : 0; // counted where the tensor lives
  if (badLatents) throw argError(`latents hold ${badLatents} NaN/Inf value(s)`);
  if (opts.nonFinite != null && opts.nonFinite !== 'error' && opts.nonFinite !== 'warn')
    throw argError(`nonFinite must be 'error' or 'warn', got ${describe(opts.nonFinite)}`);
  if (opts.captureAttention?.reduce !== undefined && opts.captureAttention.reduce !== 'mean') throw argError("captureAttention.reduce must be 'mean'");
  const identityScale = nonNegative(opts.identityScale ?? 1, 'identityScale');
  const sampler = opts.sampler ?? 'ddim';
  if (!isSamplerName(sampler)) throw badSampler(sampler);
  const numImages = integer(opts.numImages ?? 1, 'numImages', 1, 64);
  if (!Number.isSafeInteger(seed + numImages - 1)) throw argError('seed + numImages − 1 must be a safe integer (image i is seeded with seed + i)');
  if (opts.stepNoise !== undefined && !(opts.stepNoise instanceof Tensor)) throw argError('stepNoise must be a Tensor [steps, numImages, C, h, w]');
  if (opts.strength !== undefined && opts.image === undefined) throw argError('strength applies to image to image: pass an image too');
  const strength = opts.strength ?? (opts.image !== undefined ? 0.8 : 1);
  if (typeof strength !== 'number' || !Number.isFinite(strength) || strength <= 0 || strength > 1) throw argError(`strength must be in (0, 1], got ${describe(strength)}`);
  return { width, height, steps, guidanceScale, eta, seed, negativePrompt, identityScale, sampler, numImages, strength };
}

/** Engine.setLoras' arguments: at most 64 files, each a path and a finite scale (default 1). */
export function validateLoras(loras: unknown, opts: unknown): { loras: { path: string; scale: number }[]; strict: boolean } {
  const where = 'setLoras';
  if (!Array.isArray(loras)) throw argError('expects an array of { path, scale } (an empty one removes every LoRA)', where);
  if (loras.length > 64) throw argError(`takes at most 64 LoRA files, got ${loras.length}`, where);
  const out = loras.map((l: unknown, i) => {
    const o = l as { path?: unknown; scale?: unknown } | null;
    if (o === null || typeof o !== 'object' || typeof o.path !== 'string' || o.path === '') throw argError(`loras[${i}] must be { path: string, scale?: number }`, where);
    const scale = o.scale ?? 1;
    if (typeof scale !== 'number' || !Number.isFinite(scale) || Math.abs(scale) > 1e3) throw argError(`loras[${i}].scale must be a finite number in [−1000, 1000], got ${describe(scale)}`, where);
    return { path: o.path, scale };
  });
  const o = (opts ?? {}) as { strict?: unknown };
  if (typeof o !== 'object' || (o.strict !== undefined && typeof o.strict !== 'boolean')) throw argError('options must be { strict?: boolean }', where);
  return { loras: out, strict: o.strict ?? true };
}

/** The diffusion timestep of predictNoise: a number in [0, T). */
export function timestep(t: unknown, numTrainTimesteps: number): number {
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0 || t >= numTrainTimesteps)
    throw argError(`timestep must be in [0, ${numTrainTimesteps}), got ${describe(t)}`);
  return t;
}

/** Tensor of rank 4 [B, channels, h, w] with h, w positive multiples of `multiple`. */
export function imageTensorShape(x: Tensor, what: string, channels: number, multiple: number): [number, number, number, number] {
  const s = x.shape;
  if (s.length !== 4 || s[1] !== channels || !s[0] || !s[2] || !s[3] || s[2] % multiple || s[3] % multiple)
    throw new IdforgeError('E_SHAPE', `${what} must be [B, ${channels}, h, w]${multiple > 1 ? ` with h and w multiples of ${multiple}` : ''}, got ${JSON.stringify(s)}`);
  return s as [number, number, number, number];
}

/** 77 token ids, integers inside the vocabulary, as an Int32Array. */
export function tokenIds(x: unknown, vocabSize: number): Int32Array {
  if (!(x instanceof Int32Array) && !Array.isArray(x)) throw argError('token ids must be an Int32Array or an array of integers');
  for (const v of x) if (!Number.isInteger(v)) throw argError(`token ids must be integers, got ${describe(v)}`);
  const a = Int32Array.from(x as ArrayLike<number>);
  if (a.length !== 77) throw new IdforgeError('E_SHAPE', `token ids must be 77 long, got ${a.length}`);
  for (const id of a) if (id < 0 || id >= vocabSize) throw argError(`token id ${id} is outside the vocabulary (0..${vocabSize - 1})`);
  return a;
}

/** A UNet context [b, N, D], or key and value contexts of one shape: → [context] or [k, v]. */
export function unetContexts(context: Tensor | { k: Tensor; v: Tensor }, b: number, D: number): Tensor[] {
  const ctxs = context instanceof Tensor ? [context] : [context?.k, context?.v];
  for (const c of ctxs)
    if (!(c instanceof Tensor) || c.shape.length !== 3 || c.shape[0] !== b || c.shape[2] !== D || c.shape[1] !== ctxs[0]!.shape[1])
      throw new IdforgeError('E_SHAPE', `context must be [${b}, N, ${D}], got ${c instanceof Tensor ? JSON.stringify(c.shape) : typeof c}`);
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
  if (o === null || typeof o !== 'object') throw argError('options must be an object', where);
  const steps = integer(o.steps ?? 1000, 'steps', 1, 1e6, where);
  const lr = nonNegative(o.lr ?? 0.005, 'lr', { positive: true, where });
  const lambda = nonNegative(o.lambda ?? 0.003, 'lambda', { where });
  const stages = integer(o.stages ?? 5, 'stages', 1, 1000, where);
  const init = o.init ?? 'person';
  if (typeof init !== 'string' || !init.trim()) throw argError('init must be a word', where);
  const templates = o.templates ?? defaultTemplates;
  if (!Array.isArray(templates) || templates.length === 0) throw argError('templates must be a non-empty array of prompts', where);
  for (const tp of templates)
    if (typeof tp !== 'string' || (tp.match(/<id>/g) ?? []).length !== 1) throw argError(`every template must contain <id> exactly once, got ${JSON.stringify(tp)}`, where);
  const a = o.augment ?? true;
  if (typeof a !== 'boolean' && (typeof a !== 'object' || a === null)) throw argError('augment must be a boolean or { flip, jitter, scale }', where);
  const ao: AugmentOptions = typeof a === 'object' ? a : {};
  const on = a === true;
  const scale = typeof a === 'object' ? (ao.scale ?? [0.1, 1]) : on ? ([0.1, 1] as [number, number]) : false;
  if (scale !== false && (!Array.isArray(scale) || scale.length !== 2 || !(scale[0] > 0) || !(scale[1] <= 1) || scale[0] > scale[1]))
    throw argError('augment.scale must be [min, max] with 0 < min ≤ max ≤ 1, or false', where);
  const augment = { flip: typeof a === 'object' ? ao.flip ?? true : on, jitter: typeof a === 'object' ? ao.jitter ?? true : on, scale };
  if (o.face !== undefined && o.face !== false && (typeof o.face !== 'object' || o.face === null))
    throw argError('face must be false or { faceIndex, noFaceFallback, analyzer }', where);
  const seed = seedOf(o.seed, where);
  return { steps, lr, lambda, stages, init, templates, augment, seed };
}

export type ValidEval = Required<Omit<EvalSettings, 'prompts' | 'seeds'>> & { prompts: string[]; seeds: number[] };

/** evaluate()'s settings with their defaults; `multiple` is the model's size multiple. */
export function validateEvaluate(o: EvalSettings, multiple: number, defaultPrompts: readonly string[]): ValidEval {
  const where = 'evaluate';
  const prompts = [...(o.prompts ?? defaultPrompts)];
  if (!Array.isArray(o.prompts ?? defaultPrompts) || prompts.length === 0 || prompts.some((p) => typeof p !== 'string' || !p.trim()))
    throw argError('prompts must be a non-empty list of non-empty strings', where);
  if (prompts.some((p) => /<id:[^<>]*>/.test(p))) throw argError('prompts name the one identity as <id>, not <id:name>', where);
  const seeds = [...(o.seeds ?? [0])];
  if (seeds.length === 0) throw argError('seeds must be a non-empty list', where);
  seeds.forEach((s, i) => integer(s, `seeds[${i}]`, 0, 2 ** 32 - 1, where));
  const threshold = o.threshold ?? 0.23;
  if (typeof threshold !== 'number' || !(threshold >= -1 && threshold <= 1)) throw argError(`threshold must be a cosine in [-1, 1], got ${describe(threshold)}`, where);
  const negativePrompt = o.negativePrompt ?? '';
  if (typeof negativePrompt !== 'string') throw argError('negativePrompt must be a string', where);
  const baseline = o.baseline ?? true;
  if (typeof baseline !== 'boolean') throw argError('baseline must be a boolean', where);
  return {
    prompts, seeds, threshold, negativePrompt, baseline,
    identityScale: nonNegative(o.identityScale ?? 1, 'identityScale', { where }),
    steps: integer(o.steps ?? 30, 'steps', 1, 1000, where),
    width: imageSide(o.width ?? 512, 'width', multiple),
    height: imageSide(o.height ?? 512, 'height', multiple),
    guidanceScale: nonNegative(o.guidanceScale ?? 7.5, 'guidanceScale', { where }),
  };
}
