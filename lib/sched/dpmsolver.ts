/**
 * DPM-Solver++ 2M, with or without Karras sigmas: diffusers 0.21.4's DPMSolverMultistepScheduler
 * with algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint", lower_order_final
 * (the first step run and, under 15 steps, the last are first order), lambda_min_clipped −inf.
 *
 * With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = ln α_t − ln σ_t, from timestep s = t_i to t = t_{i+1}
 * (0 after the last), h = λ_t − λ_s and A = α_t·(e^{−h} − 1):
 *   first order:  x' = (σ_t/σ_s)·x − A·x0
 *   second order: x' = (σ_t/σ_s)·x − A·D0 − ½A·D1,  D0 = x0, D1 = (x0 − x0_prev)/r,
 *                 r = (λ_s − λ_{t_{i−1}})/h
 * Karras sigmas only move the timesteps in 0.21.4 (the update reads α, σ at integer timesteps).
 */
import type { DDIMScheduler } from './ddim.js';
import { fold, roundHalfEven, vpPrediction, type Sampler, type SamplerName } from './sampler.js';

/** DPM-Solver's timesteps (set_timesteps) for `steps` on `base`'s schedule. */
function dpmTimesteps(base: DDIMScheduler, steps: number, karras: boolean): number[] {
  const N = base.numTrainTimesteps;
  const last = N; // lambda_min_clipped = −inf clips nothing
  let ts: number[];
  if (karras) {
    ts = karrasTimesteps(base.alphasCumprod, steps);
  } else {
    switch (base.spacing ?? 'linspace') {
      case 'linspace': {
        const step = (last - 1) / steps;
        ts = [];
        for (let i = steps; i >= 1; i--) ts.push(roundHalfEven(i === steps ? last - 1 : i * step));
        break;
      }
      case 'leading': {
        const ratio = Math.floor(last / (steps + 1));
        ts = [];
        for (let i = steps; i >= 1; i--) ts.push(i * ratio + base.config.stepsOffset);
        break;
      }
      case 'trailing': {
        const ratio = N / steps;
        ts = [];
        for (let v = last, i = 0; v > 0; i++, v = last - i * ratio) ts.push(roundHalfEven(v) - 1);
        break;
      }
    }
  }
  // np.unique(..., return_index) in first-seen order: duplicates appear only near N steps.
  return ts.filter((t, i) => ts.indexOf(t) === i);
}

/** float32 σ(t) = ((1 − ᾱ)/ᾱ)^½ as torch computes it. */
export function trainSigmas(ac: Float32Array): Float32Array {
  return Float32Array.from(ac, (a) => Math.sqrt(Math.fround(Math.fround(1 - a) / a)));
}

/**
 * 0.21.4's Karras path: _convert_to_karras reads in_sigmas[-1] (the LARGEST σ) as sigma_min, so
 * its ramp ascends; _sigma_to_t maps each σ to a fractional timestep, rounded, then flipped.
 */
function karrasTimesteps(ac: Float32Array, steps: number): number[] {
  const sig = trainSigmas(ac);
  const logS = Float32Array.from(sig, (s) => Math.log(s));
  const sMin = sig[sig.length - 1]!;
  const sMax = sig[0]!;
  const rho = 7;
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    const ramp = steps === 1 ? 0 : i / (steps - 1);
    const maxInv = sMax ** (1 / rho);
    const minInv = sMin ** (1 / rho);
    const s = (maxInv + ramp * (minInv - maxInv)) ** rho;
    out.push(roundHalfEven(sigmaToT(s, logS)));
  }
  return out.reverse();
}

/** diffusers' _sigma_to_t: piecewise-linear interpolation of log σ over the training timesteps. */
export function sigmaToT(sigma: number, logSigmas: Float32Array): number {
  const ls = Math.log(sigma);
  const n = logSigmas.length;
  let low = 0;
  let count = 0;
  let best = -1;
  // argmax of the cumulative count of (ls − logσ_j ≥ 0): its first maximum
  for (let j = 0; j < n; j++) {
    if (ls - logSigmas[j]! >= 0) count++;
    if (count > best) {
      best = count;
      low = j;
    }
  }
  low = Math.min(low, n - 2);
  const lo = logSigmas[low]!;
  const hi = logSigmas[low + 1]!;
  const w = Math.min(1, Math.max(0, (lo - ls) / (lo - hi)));
  return (1 - w) * low + w * (low + 1);
}

export function dpmSolverSampler(base: DDIMScheduler, steps: number, karras: boolean): Sampler {
  const ac = base.alphasCumprod;
  const ts = dpmTimesteps(base, steps, karras);
  const alpha = (t: number) => Math.sqrt(ac[t]!);
  const sigma = (t: number) => Math.sqrt(1 - ac[t]!);
  const lambda = (t: number) => Math.log(alpha(t)) - Math.log(sigma(t));
  const type = base.config.predictionType;
  const name: SamplerName = karras ? 'dpmpp-2m-karras' : 'dpmpp-2m';
  return {
    name,
    timesteps: ts,
    initNoiseSigma: 1,
    stochastic: false,
    coefficients(i, first) {
      const s = ts[i]!;
      const t = i === ts.length - 1 ? 0 : ts[i + 1]!;
      const p = vpPrediction(type, alpha(s), sigma(s));
      const h = lambda(t) - lambda(s);
      const A = alpha(t) * Math.expm1(-h);
      const ratio = sigma(t) / sigma(s);
      const lowerFinal = i === ts.length - 1 && ts.length < 15;
      if (first || lowerFinal) return fold(p, { ux: ratio, u0: -A, ue: 0 });
      const r = (lambda(s) - lambda(ts[i - 1]!)) / h;
      return fold(p, { ux: ratio, u0: -A - (0.5 * A) / r, ue: 0, pp: (0.5 * A) / r });
    },
    noiseScales(i) {
      return { a: alpha(ts[i]!), b: sigma(ts[i]!) };
    },
  };
}
