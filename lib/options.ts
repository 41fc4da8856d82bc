// Argument checking for Engine.generate / encodeText: every bad value becomes a typed error that
// names the argument (and, for sizes, the nearest valid ones).
import { IdforgeError } from './errors.js';
import type { GenerateOptions } from './engine.js';
import { Identity } from './identity/identity.js';
import { Tensor } from './tensor.js';
import { badSampler, isSamplerName, type SamplerName } from './sched/sampler.js';

export function identityMap(o: { identity?: Identity; identities?: Record<string, Identity> | Map<string, Identity> }): Map<string, Identity> | undefined {
  if (o.identity !== undefined && o.identities !== undefined)
    throw new IdforgeError('E_ARGUMENT', 'pass either identity or identities, not both');
  if (o.identity !== undefined) {
    if (!(o.identity instanceof Identity)) throw new IdforgeError('E_ARGUMENT', 'identity must be an Identity');
    return new Map([[o.identity.name ?? 'id', o.identity]]);
  }
  if (o.identities === undefined) return undefined;
  const m = o.identities instanceof Map ? o.identities : new Map(Object.entries(o.identities));
  for (const [k, v] of m) if (!(v instanceof Identity)) throw new IdforgeError('E_ARGUMENT', `identities.${k} must be an Identity`);
  return m;
}

export function describe(v: unknown): string {
  return typeof v === 'number' ? String(v) : JSON.stringify(v);
}

export interface ValidGenerate {
  width: number;
  height: number;
  steps: number;
  guidanceScale: number;
  eta: number;
  seed: number;
  negativePrompt: string;
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

/** `size`: the init image's size for image-to-image, the default width and height. */
export function validateGenerate(opts: GenerateOptions, multiple: number, size?: { width: number; height: number }): ValidGenerate {
  if (!opts || typeof opts.prompt !== 'string')
    throw new IdforgeError('E_ARGUMENT', 'generate needs a prompt string');
  const negativePrompt = opts.negativePrompt ?? '';
  if (typeof negativePrompt !== 'string') throw new IdforgeError('E_ARGUMENT', 'negativePrompt must be a string');
  const width = opts.width ?? size?.width ?? 512;
  const height = opts.height ?? size?.height ?? 512;
  if (size && (size.width !== width || size.height !== height))
    throw new IdforgeError('E_SHAPE', `image is ${size.width}x${size.height} but width x height is ${width}x${height}: resize the image or leave width and height out`);
  for (const [k, v] of [['width', width], ['height', height]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v > 8192)
      throw new IdforgeError('E_SHAPE', `${k} must be a positive integer up to 8192, got ${describe(v)}`);
    if (v % multiple)
      throw new IdforgeError('E_SHAPE', `${k} ${v} is not a multiple of ${multiple} (the VAE × UNet downsampling); nearest valid: ${nearest(v, multiple)}`);
  }
  const steps = opts.steps ?? 50;
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000)
    throw new IdforgeError('E_ARGUMENT', `steps must be an integer in [1, 1000], got ${describe(steps)}`);
  const guidanceScale = opts.guidanceScale ?? 7.5;
  if (typeof guidanceScale !== 'number' || !Number.isFinite(guidanceScale) || guidanceScale < 0)
    throw new IdforgeError('E_ARGUMENT', `guidanceScale must be a finite number ≥ 0, got ${describe(guidanceScale)}`);
  const eta = opts.eta ?? 0;
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0 || eta > 1)
    throw new IdforgeError('E_ARGUMENT', `eta must be in [0, 1], got ${describe(eta)}`);
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new IdforgeError('E_ARGUMENT', `seed must be a non-negative integer, got ${describe(seed)}`);
  if (opts.latents !== undefined && !(opts.latents instanceof Tensor))
    throw new IdforgeError('E_ARGUMENT', 'latents must be a Tensor');
  const sampler = opts.sampler ?? 'ddim';
  if (!isSamplerName(sampler)) throw badSampler(sampler);
  const numImages = opts.numImages ?? 1;
  if (!Number.isInteger(numImages) || numImages < 1 || numImages > 64)
    throw new IdforgeError('E_ARGUMENT', `numImages must be an integer in [1, 64], got ${describe(numImages)}`);
  if (!Number.isSafeInteger(seed + numImages - 1))
    throw new IdforgeError('E_ARGUMENT', `seed + numImages − 1 must be a safe integer (image i is seeded with seed + i)`);
  if (opts.stepNoise !== undefined && !(opts.stepNoise instanceof Tensor))
    throw new IdforgeError('E_ARGUMENT', 'stepNoise must be a Tensor [steps, numImages, C, h, w]');
  if (opts.strength !== undefined && opts.image === undefined)
    throw new IdforgeError('E_ARGUMENT', 'strength applies to image-to-image: pass an image too');
  const strength = opts.strength ?? (opts.image !== undefined ? 0.8 : 1);
  if (typeof strength !== 'number' || !Number.isFinite(strength) || strength <= 0 || strength > 1)
    throw new IdforgeError('E_ARGUMENT', `strength must be in (0, 1], got ${describe(strength)}`);
  return { width, height, steps, guidanceScale, eta, seed, negativePrompt, sampler, numImages, strength };
}
