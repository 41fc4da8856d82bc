/**
 * Euler and Euler ancestral: diffusers 0.21.4's EulerDiscreteScheduler (s_churn 0, linear
 * interpolation, no Karras sigmas) and EulerAncestralDiscreteScheduler. Both work on the
 * variance-exploding sample x = x0 + σ·eps with σ_t = ((1−ᾱ_t)/ᾱ_t)^½ interpolated at fractional
 * timesteps, σ = 0 appended; the UNet sees x/√(σ²+1) (scale_model_input).
 *   Euler:     x' = x + (σ_{i+1} − σ_i)·eps
 *   ancestral: x' = x + (σ_down − σ_i)·eps + σ_up·noise,
 *              σ_up = (σ_{i+1}²(σ_i² − σ_{i+1}²)/σ_i²)^½, σ_down = (σ_{i+1}² − σ_up²)^½
 * init_noise_sigma is max σ for "linspace"/"trailing" spacing, (max σ² + 1)^½ for "leading".
 */
import type { DDIMScheduler } from './ddim.js';
import { trainSigmas } from './dpmsolver.js';
import { invalid } from '../validate.js';
import { fold, roundHalfEven, type Prediction, type Sampler } from './sampler.js';

/** The timesteps (float32 values, as diffusers keeps them) and σ (float32, with the final 0). */
export function eulerSchedule(base: DDIMScheduler, steps: number): { timesteps: number[]; sigmas: Float32Array; spacing: string } {
  const N = base.numTrainTimesteps;
  const spacing = base.spacing ?? 'linspace';
  const ts: number[] = [];
  if (spacing === 'linspace') {
    // np.linspace(0, N − 1, steps, dtype=float32)[::-1]
    for (let i = steps - 1; i >= 0; i--) ts.push(Math.fround(steps === 1 ? 0 : i === steps - 1 ? N - 1 : (i * (N - 1)) / (steps - 1)));
  } else if (spacing === 'leading') {
    const ratio = Math.floor(N / steps);
    for (let i = steps - 1; i >= 0; i--) ts.push(i * ratio + base.config.stepsOffset);
  } else {
    const ratio = N / steps;
    for (let i = 0; N - i * ratio > 0; i++) ts.push(roundHalfEven(N - i * ratio) - 1);
  }
  if (base.config.interpolationType !== 'linear') throw invalid('scheduler config interpolation_type', "'linear' (the one Euler supports)", base.config.interpolationType);
  const train = trainSigmas(base.alphasCumprod);
  const sigmas = new Float32Array(ts.length + 1);
  ts.forEach((t, i) => {
    if (t < 0 || t > N - 1) throw invalid('steps', `a count whose schedule stays in 0..${N - 1} with this scheduler config (${steps} steps give timestep ${t})`, steps);
    const j = Math.min(Math.floor(t), N - 2);
    sigmas[i] = (train[j + 1]! - train[j]!) * (t - j) + train[j]!; // np.interp
  });
  return { timesteps: ts, sigmas, spacing };
}

/** diffusers' Euler prediction on the σ-scaled sample: x0 = cx·x + ce·m, eps = (x − x0)/σ. */
function vePrediction(type: string, s: number): Prediction {
  let cx: number;
  let ce: number;
  if (type === 'epsilon') return { cx: 1, ce: -s, ex: 0, em: 1 };
  if (type === 'v_prediction') {
    cx = 1 / (s * s + 1);
    ce = -s / Math.sqrt(s * s + 1);
  } else {
    cx = 0;
    ce = 1;
  }
  return { cx, ce, ex: (1 - cx) / s, em: -ce / s };
}

export function eulerSampler(base: DDIMScheduler, steps: number, ancestral: boolean): Sampler {
  const { timesteps, sigmas, spacing } = eulerSchedule(base, steps);
  const max = sigmas.reduce((a, b) => Math.max(a, b), 0);
  const type = base.config.predictionType;
  return {
    name: ancestral ? 'euler-a' : 'euler',
    timesteps,
    initNoiseSigma: spacing === 'leading' ? Math.sqrt(max * max + 1) : max,
    stochastic: ancestral,
    coefficients(i) {
      const s = sigmas[i]!;
      const next = sigmas[i + 1]!;
      const p = vePrediction(type, s);
      const cin = 1 / Math.sqrt(s * s + 1);
      if (!ancestral) return fold(p, { cin, ux: 1, u0: 0, ue: next - s });
      const up = Math.sqrt((next * next * (s * s - next * next)) / (s * s));
      const down = Math.sqrt(Math.max(0, next * next - up * up));
      return fold(p, { cin, ux: 1, u0: 0, ue: down - s, pn: up });
    },
    noiseScales(i) {
      return { a: 1, b: sigmas[i]! };
    },
  };
}
