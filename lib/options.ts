// Argument checking for Engine.generate / encodeText: every bad value becomes a typed error that
// names the argument (and, for sizes, the nearest valid ones).
import { IdforgeError } from './errors.js';
import { checkPrompt, MAX_GUIDANCE } from './io/bounds.js'; // [safety]
import { checkInputFinite } from './numeric.js'; // [safety]
import type { GenerateOptions } from './engine.js';
import { Identity } from './identity/identity.js';
import { Tensor } from './tensor.js';

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
}

function nearest(x: number, m: number): string {
  const lo = Math.max(m, Math.floor(x / m) * m);
  const hi = Math.max(m, Math.ceil(x / m) * m);
  return lo === hi ? `${lo}` : `${lo} or ${hi}`;
}

export function validateGenerate(opts: GenerateOptions, multiple: number, schedule?: { timesteps(steps: number): unknown }): ValidGenerate {
  if (!opts || typeof opts.prompt !== 'string')
    throw new IdforgeError('E_ARGUMENT', 'generate needs a prompt string');
  checkPrompt(opts.prompt, 'prompt'); // [safety] huge prompts: a typed error, not a RangeError
  const negativePrompt = checkPrompt(opts.negativePrompt ?? '', 'negativePrompt'); // [safety]
  const width = opts.width ?? 512;
  const height = opts.height ?? 512;
  for (const [k, v] of [['width', width], ['height', height]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v > 8192)
      throw new IdforgeError('E_SHAPE', `${k} must be a positive integer up to 8192, got ${describe(v)}`);
    if (v % multiple)
      throw new IdforgeError('E_SHAPE', `${k} ${v} is not a multiple of ${multiple} (the VAE × UNet downsampling); nearest valid: ${nearest(v, multiple)}`);
  }
  const steps = opts.steps ?? 50;
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000)
    throw new IdforgeError('E_ARGUMENT', `steps must be an integer in [1, 1000], got ${describe(steps)}`);
  schedule?.timesteps(steps); // [safety] E_ARGUMENT now when this schedule cannot give `steps` steps
  const guidanceScale = opts.guidanceScale ?? 7.5;
  if (typeof guidanceScale !== 'number' || !Number.isFinite(guidanceScale) || guidanceScale < 0 || guidanceScale > MAX_GUIDANCE) // [safety] bound
    throw new IdforgeError('E_ARGUMENT', `guidanceScale must be a finite number in [0, ${MAX_GUIDANCE}], got ${describe(guidanceScale)}`);
  const eta = opts.eta ?? 0;
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0 || eta > 1)
    throw new IdforgeError('E_ARGUMENT', `eta must be in [0, 1], got ${describe(eta)}`);
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new IdforgeError('E_ARGUMENT', `seed must be a non-negative integer, got ${describe(seed)}`);
  if (opts.latents != null && !(opts.latents instanceof Tensor)) // [safety] null = absent, as for every other option
    throw new IdforgeError('E_ARGUMENT', 'latents must be a Tensor');
  if (opts.latents && opts.latents.countNonFinite()) checkInputFinite(opts.latents.toFloat32(), 'latents'); // [safety]
  if (opts.nonFinite != null && opts.nonFinite !== 'error' && opts.nonFinite !== 'warn') // [safety]
    throw new IdforgeError('E_ARGUMENT', `nonFinite must be 'error' or 'warn', got ${describe(opts.nonFinite)}`);
  return { width, height, steps, guidanceScale, eta, seed, negativePrompt };
}
