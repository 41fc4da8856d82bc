/**
 * No silent garbage: the checks that turn NaN / Inf into a typed E_NUMERIC error (or, where the
 * caller opts in, a warning). Weights are checked as they are uploaded (a device-side count, one
 * pass), latents after every denoising step; the message names what broke and its likely cause.
 */
import { IdforgeError } from './errors.js';
import type { Tensor } from './tensor.js';

function countHost(x: Float32Array): number {
  let n = 0;
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) n++;
  return n;
}

/** E_NUMERIC when an uploaded weight holds NaN/Inf (in the file, or past float16's range). */
export function checkWeightFinite(t: Tensor, component: string, name: string, file: string): void {
  const bad = t.countNonFinite();
  if (bad === 0) return;
  const dtype = t.dtype;
  throw new IdforgeError(
    'E_NUMERIC',
    `${component} weight '${name}' (${file}) holds ${bad} NaN/Inf value(s) of ${t.size}` +
      (dtype === 'float16' ? ' in float16 (NaN/Inf in the file, or values beyond float16\'s ±65504: try dtype float32)' : ' (the checkpoint is corrupt)'),
  );
}

/** What a generation's settings make likely when its latents go non-finite. */
export interface NumericContext {
  step: number;
  steps: number;
  timestep: number;
  guidanceScale: number;
  dtype: string;
}

/**
 * After a denoising step: E_NUMERIC when the latents hold NaN/Inf (the image would be black), or
 * a warning string when `mode` is 'warn'; undefined when all are finite.
 */
export function checkLatentsFinite(latents: Float32Array | Tensor, ctx: NumericContext, mode: 'error' | 'warn' = 'error'): string | undefined {
  const bad = latents instanceof Float32Array ? countHost(latents) : latents.countNonFinite();
  if (bad === 0) return undefined;
  const causes: string[] = [];
  if (ctx.guidanceScale > 20) causes.push(`the guidance scale ${ctx.guidanceScale} is very high`);
  if (ctx.dtype === 'float16') causes.push('float16 overflow (try dtype float32)');
  causes.push('non-finite input latents or a broken model (weights or config: norm eps, scheduler betas)');
  const msg = `latents hold ${bad} NaN/Inf value(s) after step ${ctx.step}/${ctx.steps} (timestep ${ctx.timestep}); likely cause: ${causes.join('; or ')}`;
  if (mode === 'warn') return msg;
  throw new IdforgeError('E_NUMERIC', msg);
}

/** Cosine of two vectors (0 when either is zero): CLIP-T and face-embedding similarity. */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new IdforgeError('E_SHAPE', `cosine of vectors of lengths ${a.length} and ${b.length}`);
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return aa === 0 || bb === 0 ? 0 : ab / Math.sqrt(aa * bb);
}
