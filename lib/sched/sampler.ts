/**
 * The samplers generate() offers, behind one interface: each is a schedule (the UNet timesteps,
 * the initial noise scale) plus, per step, the scalar coefficients of one linear update that the
 * backend's SAMPLER_STEP op applies (native/backend.h):
 *
 *   x_in = cin·x                                   (scale_model_input, before the UNet)
 *   x0   = cx·x + ce·m        (clamped to ±clip when clip > 0; m = the guided model output)
 *   next = px·x + p0·x0 + pe·m + pp·state + pn·noise,    state' = x0
 *
 * `state` is the previous step's x0 (what DPM-Solver++ 2M carries); the others ignore it. The op
 * also writes the next step's UNet input, so the scaling never needs a pass of its own. Every
 * coefficient is computed here in float64 from the float32 schedule; the backend applies them.
 * One module per sampler family: ddim.ts, dpmsolver.ts, euler.ts, lcm.ts.
 */
import { IdforgeError } from '../errors.js';
import type { PredictionType } from './config.js';
import { invalid } from '../validate.js';

export const SAMPLERS = ['ddim', 'dpmpp-2m', 'dpmpp-2m-karras', 'euler', 'euler-a', 'lcm'] as const;
export type SamplerName = (typeof SAMPLERS)[number];

/** The coefficients of one step, in the order of SAMPLER_STEP's coefficient input. */
export interface StepCoefficients {
  cin: number;
  cx: number;
  ce: number;
  clip: number;
  px: number;
  p0: number;
  pe: number;
  pp: number;
  pn: number;
}

const ORDER: (keyof StepCoefficients)[] = ['cin', 'cx', 'ce', 'clip', 'px', 'p0', 'pe', 'pp', 'pn'];
/** Length of SAMPLER_STEP's coefficient input. */
export const COEFFICIENTS = ORDER.length;

/**
 * The float32 vector SAMPLER_STEP reads. Its first slot is the op's next_in, the scale of the
 * NEXT step's UNet input (the op writes in' = next_in·x'): callers pass { ...c, cin: next.cin }.
 */
export function packCoefficients(c: StepCoefficients): Float32Array {
  return Float32Array.from(ORDER, (k) => c[k]);
}

export interface Sampler {
  readonly name: SamplerName;
  /** UNet timesteps in the order they run (Euler's are fractional). */
  readonly timesteps: readonly number[];
  /** What generate() multiplies given/seeded latents by (1 for DDIM and DPM-Solver). */
  readonly initNoiseSigma: number;
  /** Whether the update adds fresh noise each step (Euler ancestral, DDIM with eta > 0, LCM). */
  readonly stochastic: boolean;
  /**
   * Image to image: true when the schedule was built from the strength (LCM: every step runs);
   * otherwise the last int(steps·strength) steps run (lib/sampling.ts img2imgStart).
   */
  readonly strengthInSchedule?: boolean;
  /**
   * The update from step i. `first` marks the first step run (image-to-image starts part way in;
   * a multistep solver has no history there).
   */
  coefficients(i: number, first: boolean): StepCoefficients;
  /** scheduler.add_noise at timesteps[i]: noised = a·x0 + b·noise (image-to-image). */
  noiseScales(i: number): { a: number; b: number };
}

/** Options every sampler accepts. */
export interface SamplerOptions {
  /** DDIM's eta (0 = deterministic); the other samplers ignore it. */
  eta?: number;
  /** Image-to-image strength, for a sampler that builds its schedule from it (LCM); the others ignore it. */
  strength?: number;
}


/**
 * The model output m as x0 and eps, linear in (x, m): x0 = cx·x + ce·m, eps = ex·x + em·m.
 * `alpha`, `sigma` are the sample's scales (x = alpha·x0 + sigma·eps): √ᾱ and √(1−ᾱ) for the
 * variance-preserving samplers; Euler's x = x0 + σ·eps is alpha 1 with a v-prediction that
 * diffusers defines on the rescaled sample (see euler.ts).
 */
export interface Prediction {
  cx: number;
  ce: number;
  ex: number;
  em: number;
}

export function vpPrediction(type: PredictionType, alpha: number, sigma: number): Prediction {
  switch (type) {
    case 'epsilon':
      return { cx: 1 / alpha, ce: -sigma / alpha, ex: 0, em: 1 };
    case 'v_prediction':
      return { cx: alpha, ce: -sigma, ex: sigma, em: alpha };
    case 'sample':
      return { cx: 0, ce: 1, ex: 1 / sigma, em: -alpha / sigma };
  }
}

/**
 * Coefficients from an update written as next = ux·x + u0·x0 + ue·eps + pp·state + pn·noise:
 * eps is folded into the x and m terms through the prediction.
 */
export function fold(
  p: Prediction,
  u: { cin?: number; clip?: number; ux: number; u0: number; ue: number; pp?: number; pn?: number },
): StepCoefficients {
  return {
    cin: u.cin ?? 1,
    cx: p.cx,
    ce: p.ce,
    clip: u.clip ?? 0,
    px: u.ux + u.ue * p.ex,
    p0: u.u0,
    pe: u.ue * p.em,
    pp: u.pp ?? 0,
    pn: u.pn ?? 0,
  };
}

export function isSamplerName(v: unknown): v is SamplerName {
  return typeof v === 'string' && (SAMPLERS as readonly string[]).includes(v);
}

export function badSampler(name: unknown): IdforgeError {
  return invalid('sampler', `one of ${SAMPLERS.join(', ')}`, name);
}

/** numpy's round (half to even). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
