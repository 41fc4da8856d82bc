/**
 * LCM: diffusers 0.40's LCMScheduler (latent consistency models, LCM-LoRA), from the model's
 * parsed scheduler config (lib/sched/config.ts: the betas, prediction_type, clip_sample;
 * original_inference_steps 50 and timestep_scaling 10 unless the config names them).
 *
 * Timesteps: k = N // original_steps, the distillation schedule (1..int(original_steps·strength))·k − 1
 * reversed, and `steps` of it at indices floor(linspace(0, len, steps, endpoint=False)). Step i at
 * timestep t, with the boundary-condition scalings of s = t·timestep_scaling,
 *   c_skip = σd² / (s² + σd²),  c_out = s / (s² + σd²)^½,  σd = 0.5,
 *   denoised = c_out·x0 + c_skip·x          (x0 from the model output, clamped when clip_sample)
 *   x'       = √ᾱ_next·denoised + √(1 − ᾱ_next)·noise,   but x' = denoised at the last step,
 * ᾱ_next at the next timestep of the schedule. The result is the last denoised sample: the last
 * step's x'. Linear in (x, x0, noise), so one SAMPLER_STEP per step; the last adds no noise.
 * Image to image builds the schedule from the strength (all `steps` run, from lower timesteps).
 */
import { invalid } from '../validate.js';
import type { DDIMScheduler } from './ddim.js';
import { fold, vpPrediction, type Sampler } from './sampler.js';

const SIGMA_DATA = 0.5;

/** LCMScheduler.set_timesteps(steps, strength=strength). */
export function lcmTimesteps(numTrain: number, originalSteps: number, steps: number, strength = 1): number[] {
  if (!Number.isInteger(originalSteps) || originalSteps < 1 || originalSteps > numTrain)
    throw invalid('scheduler config original_inference_steps', `an integer in [1, num_train_timesteps = ${numTrain}]`, originalSteps);
  if (steps > originalSteps) throw invalid('steps', `at most original_inference_steps (${originalSteps}) with sampler lcm`, steps);
  const k = Math.floor(numTrain / originalSteps);
  const n = Math.floor(originalSteps * strength);
  if (Math.floor(n / steps) < 1)
    throw invalid('strength', `at least ${steps}/${originalSteps} with sampler lcm and ${steps} steps (int(${originalSteps}·strength) = ${n} distillation timesteps are fewer than the steps)`, strength);
  const origin = Array.from({ length: n }, (_, i) => (n - i) * k - 1); // reversed
  const step = n / steps;
  return Array.from({ length: steps }, (_, i) => origin[Math.floor(i * step)]!);
}

/** The boundary-condition scalings at timestep t (float32, as torch computes them from a long t). */
export function lcmScalings(t: number, timestepScaling: number): { cSkip: number; cOut: number } {
  const s = t * timestepScaling;
  const d = Math.fround(s * s + SIGMA_DATA * SIGMA_DATA);
  return { cSkip: Math.fround((SIGMA_DATA * SIGMA_DATA) / d), cOut: Math.fround(s / Math.fround(Math.sqrt(d))) };
}

export function lcmSampler(base: DDIMScheduler, steps: number, strength = 1): Sampler {
  const originalSteps = base.config.originalInferenceSteps ?? 50;
  const scaling = base.config.timestepScaling ?? 10;
  const timesteps = lcmTimesteps(base.numTrainTimesteps, originalSteps, steps, strength);
  const ac = base.alphasCumprod;
  const clip = base.config.clipSample ? base.config.clipSampleRange : 0;
  const type = base.config.predictionType;
  return {
    name: 'lcm',
    timesteps,
    initNoiseSigma: 1,
    stochastic: timesteps.length > 1,
    strengthInSchedule: true,
    coefficients(i) {
      const t = timesteps[i]!;
      const a = ac[t]!;
      const p = vpPrediction(type, Math.fround(Math.sqrt(a)), Math.fround(Math.sqrt(Math.fround(1 - a))));
      const { cSkip, cOut } = lcmScalings(t, scaling);
      if (i === timesteps.length - 1) return fold(p, { clip, ux: cSkip, u0: cOut, ue: 0 });
      const next = ac[timesteps[i + 1]!]!;
      const m = Math.fround(Math.sqrt(next));
      return fold(p, { clip, ux: m * cSkip, u0: m * cOut, ue: 0, pn: Math.fround(Math.sqrt(Math.fround(1 - next))) });
    },
    noiseScales(i) {
      const a = ac[timesteps[i]!]!;
      return { a: Math.sqrt(a), b: Math.sqrt(1 - a) };
    },
  };
}
