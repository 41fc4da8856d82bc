/**
 * Noise schedules, bit-compatible with diffusers 0.21.4 running on PyTorch (CPU, float32).
 *
 * Everything returned is float32, produced with the same roundings torch applies, so that
 * `alphas_cumprod` matches a diffusers-built scheduler bit for bit (checked against the golden).
 */
import { invalid, shown } from '../validate.js';

const f32 = Math.fround;

/**
 * `torch.linspace(start, end, n, dtype=torch.float32)` as torch's CPU kernel computes it:
 * start/end are rounded to float32, the step is `(end - start) / (n - 1)` in double, element
 * `i < n/2` is `start + step*i`, the rest `end - step*(n-1-i)` (double, then float32). The kernel
 * is vectorized (8 floats, two vectors per iteration): inside a vector the base element is
 * rounded to float32 first and lane k is `f32(base + k*step)`; the tail that does not fill two
 * vectors is computed element by element. Reproducing this matters: it moves a few betas by one
 * float32 ulp, which alphas_cumprod carries to the end.
 */
export function torchLinspaceF32(start: number, end: number, n: number): Float32Array {
  if (!Number.isInteger(n) || n < 1) throw invalid('n', 'a positive integer', n, { where: 'linspace' });
  const out = new Float32Array(n);
  const s = f32(start);
  const e = f32(end);
  if (n === 1) {
    out[0] = s;
    return out;
  }
  const step = (e - s) / (n - 1);
  const halfway = Math.floor(n / 2);
  const at = (idx: number): number => (idx < halfway ? s + step * idx : e - step * (n - idx - 1));
  const VEC = 8;
  let i = 0;
  for (; i <= n - 2 * VEC; i += 2 * VEC) {
    for (const j of [i, i + VEC]) {
      const base = f32(at(j));
      for (let k = 0; k < VEC; k++) out[j + k] = base + k * step; // the Float32Array store rounds
    }
  }
  for (; i < n; i++) out[i] = at(i);
  return out;
}

/** diffusers' `betas_for_alpha_bar` (cosine / exp), computed in double, stored as float32. */
export function betasForAlphaBar(n: number, maxBeta = 0.999, transform: 'cosine' | 'exp' = 'cosine'): Float32Array {
  const alphaBar =
    transform === 'cosine'
      ? (t: number) => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2
      : (t: number) => Math.exp(t * -12.0);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t1 = i / n;
    const t2 = (i + 1) / n;
    out[i] = Math.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta);
  }
  return out;
}

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';

/** Betas as diffusers' DDIMScheduler.__init__ builds them (float32). */
export function makeBetas(opts: {
  numTrainTimesteps: number;
  betaStart: number;
  betaEnd: number;
  betaSchedule: string;
  trainedBetas?: ArrayLike<number> | null;
}): Float32Array {
  const n = opts.numTrainTimesteps;
  if (opts.trainedBetas != null) {
    const tb = opts.trainedBetas;
    if (tb.length !== n) {
      throw invalid('trained_betas', `num_train_timesteps (${n}) entries`, shown(`${tb.length} entries`));
    }
    const out = Float32Array.from(tb);
    for (const b of out) {
      if (!Number.isFinite(b)) throw invalid('trained_betas', 'finite numbers', b);
    }
    return out;
  }
  switch (opts.betaSchedule) {
    case 'linear':
      return torchLinspaceF32(opts.betaStart, opts.betaEnd, n);
    case 'scaled_linear': {
      const r = torchLinspaceF32(Math.sqrt(opts.betaStart), Math.sqrt(opts.betaEnd), n);
      for (let i = 0; i < n; i++) r[i] = r[i]! * r[i]!;
      return r;
    }
    case 'squaredcos_cap_v2':
      return betasForAlphaBar(n);
    default:
      throw invalid('beta_schedule', 'linear, scaled_linear or squaredcos_cap_v2', opts.betaSchedule);
  }
}

/**
 * `torch.cumprod(1.0 - betas, dim=0)` in float32: alphas are rounded to float32, the CPU
 * kernel accumulates the running product in double and rounds each output to float32.
 */
export function alphasCumprodF32(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]!);
    out[i] = acc;
  }
  return out;
}

/**
 * diffusers' `rescale_zero_terminal_snr` (arXiv:2305.08891 Algorithm 1), float32 step by step.
 */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const n = betas.length;
  const ac = alphasCumprodF32(betas);
  const sq = Float32Array.from(ac, (a) => Math.sqrt(a));
  const s0 = sq[0]!;
  const sT = sq[n - 1]!;
  const scale = f32(s0 / f32(s0 - sT));
  const bar = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = f32(f32(sq[i]! - sT) * scale);
    bar[i] = v * v;
  }
  const out = new Float32Array(n);
  out[0] = f32(1 - bar[0]!);
  for (let i = 1; i < n; i++) out[i] = f32(1 - f32(bar[i]! / bar[i - 1]!));
  return out;
}

/**
 * DDPM's forward process (diffusers' scheduler.add_noise), the training input of both trainings:
 * z_t = √ᾱ_t·z0 + √(1 − ᾱ_t)·ε per batch row (row i at timestep timesteps[i]; z0 and noise hold
 * the rows one after another), with the scales rounded to float32 as torch does.
 */
export function addNoise(alphasCumprod: Float32Array, z0: Float32Array, noise: Float32Array, timesteps: readonly number[]): Float32Array {
  const n = z0.length / timesteps.length;
  const out = new Float32Array(z0.length);
  timesteps.forEach((t, i) => {
    const a = alphasCumprod[t]!;
    const sa = f32(Math.sqrt(a));
    const sb = f32(Math.sqrt(1 - a));
    for (let j = i * n; j < (i + 1) * n; j++) out[j] = sa * z0[j]! + sb * noise[j]!;
  });
  return out;
}
