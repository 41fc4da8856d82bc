/**
 * DDIM scheduler, matching diffusers 0.21.4 `DDIMScheduler.from_config(cfg)` on PyTorch float32.
 *
 * One step, for every element (the shape a fused GPU kernel will take):
 *   x0   = (x − sqrt(1−aT)·ε) / sqrt(aT)                 (epsilon prediction)
 *   prev = sqrt(aPrev)·x0 + sqrt(1 − aPrev − σ²)·ε + σ·noise
 *   σ    = eta · sqrt((1−aPrev)/(1−aT)) · sqrt(1 − aT/aPrev)
 * with aT = alphas_cumprod[t], prevT = t − numTrainTimesteps // steps and
 * aPrev = alphas_cumprod[prevT], or final_alpha_cumprod (1 if set_alpha_to_one else
 * alphas_cumprod[0]) when prevT < 0. The scalar coefficients come from
 * {@link DDIMScheduler.stepCoefficients}; the elementwise work is {@link ddimStepInto}.
 * All arithmetic is rounded to float32 after each operation, in the order torch performs it.
 */
import { readJsonFile } from '../io/configs.js';
import { IdforgeError } from '../errors.js';
import { alphasCumprodF32, makeBetas, rescaleZeroTerminalSnr } from './betas.js';
import { parseSchedulerConfig, type PredictionType, type SchedulerConfig, type TimestepSpacing } from './config.js';
import { fold, roundHalfEven, vpPrediction, type Sampler } from './sampler.js';
import { describe, invalid, shown } from '../validate.js';

const f32 = Math.fround;

export type { PredictionType, TimestepSpacing } from './config.js';

/** The DDIM configuration: the parsed scheduler config with its timestep spacing resolved ("leading" when the config names none). */
export type DDIMConfig = SchedulerConfig & { timestepSpacing: TimestepSpacing };

/** Scalar coefficients of one DDIM step (all float32 values). */
export interface DDIMCoefficients {
  /** alphas_cumprod[t] */
  aT: number;
  /** alphas_cumprod[prevT] or final_alpha_cumprod */
  aPrev: number;
  /** σ = eta · sqrt(variance) */
  sigma: number;
  /** t − numTrainTimesteps // steps (may be negative) */
  prevT: number;
  /** sqrt(aT) */
  sqrtAT: number;
  /** sqrt(1 − aT) */
  sqrtBT: number;
  /** sqrt(aPrev) */
  sqrtAPrev: number;
  /** sqrt(1 − aPrev − σ²), the coefficient of ε in the "direction pointing to x_t" */
  dirCoef: number;
}

export interface DDIMStepOptions {
  /** Number of inference steps of the schedule `t` belongs to. */
  steps: number;
  /** DDIM eta (0 = deterministic), default 0. */
  eta?: number;
  /** Variance noise (same length as the sample); used when eta > 0. */
  noise?: Float32Array;
  /** Standard-normal generator, used when eta > 0 and no `noise` is given. */
  rng?: () => number;
  /** diffusers' use_clipped_model_output (recompute ε from the clipped x0). Default false. */
  useClippedModelOutput?: boolean;
}

export interface DDIMStepResult {
  prevSample: Float32Array;
  predOriginal: Float32Array;
}

function checkSteps(steps: unknown, n: number): number {
  if (typeof steps !== 'number' || !Number.isInteger(steps) || steps < 1 || steps > n) {
    throw invalid('steps', `an integer in [1, ${n}]`, steps);
  }
  return steps;
}

function checkEta(eta: unknown): number {
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0) {
    throw invalid('eta', 'a finite number ≥ 0', eta);
  }
  return eta;
}

/**
 * Elementwise DDIM step with precomputed coefficients (float32 rounding after every operation,
 * in diffusers' order). `noise` is only read when `c.sigma` must be applied (`addNoise`).
 */
export function ddimStepInto(
  prevOut: Float32Array,
  x0Out: Float32Array,
  modelOutput: Float32Array,
  sample: Float32Array,
  c: DDIMCoefficients,
  mode: {
    predictionType: PredictionType;
    clipRange?: number; // clamp x0 to ±clipRange when given
    useClippedModelOutput?: boolean;
    noise?: Float32Array; // added as σ·noise when given
  },
): void {
  const { sqrtAT, sqrtBT, sqrtAPrev, dirCoef, sigma } = c;
  const clip = mode.clipRange;
  const noise = mode.noise;
  const pt = mode.predictionType;
  for (let i = 0; i < sample.length; i++) {
    const x = sample[i]!;
    const m = modelOutput[i]!;
    let x0: number;
    let eps: number;
    if (pt === 'epsilon') {
      x0 = f32(f32(x - f32(sqrtBT * m)) / sqrtAT);
      eps = m;
    } else if (pt === 'v_prediction') {
      x0 = f32(f32(sqrtAT * x) - f32(sqrtBT * m));
      eps = f32(f32(sqrtAT * m) + f32(sqrtBT * x));
    } else {
      x0 = m;
      eps = f32(f32(x - f32(sqrtAT * x0)) / sqrtBT);
    }
    if (clip !== undefined) {
      x0 = x0 < -clip ? f32(-clip) : x0 > clip ? f32(clip) : x0;
      if (mode.useClippedModelOutput) eps = f32(f32(x - f32(sqrtAT * x0)) / sqrtBT);
    }
    let prev = f32(f32(sqrtAPrev * x0) + f32(dirCoef * eps));
    if (noise) prev = f32(prev + f32(sigma * noise[i]!));
    x0Out[i] = x0;
    prevOut[i] = prev;
  }
}

export class DDIMScheduler {
  readonly config: Readonly<DDIMConfig>;
  /** float32 betas, as diffusers builds them. */
  readonly betas: Float32Array;
  /** float32 cumulative products of (1 − beta), bit-identical to torch's. */
  readonly alphasCumprod: Float32Array;
  /** Used as aPrev for the last step: 1 if set_alpha_to_one else alphas_cumprod[0]. */
  readonly finalAlphaCumprod: number;

  /** The timestep spacing the config names (null: none, each sampler's default applies; DDIM's is "leading"). */
  readonly spacing: TimestepSpacing | null;

  private constructor(config: DDIMConfig, spacing: TimestepSpacing | null) {
    this.config = Object.freeze({ ...config });
    this.spacing = spacing;
    let betas = makeBetas(config);
    if (config.rescaleBetasZeroSnr) betas = rescaleZeroTerminalSnr(betas);
    this.betas = betas;
    this.alphasCumprod = alphasCumprodF32(betas);
    this.finalAlphaCumprod = config.setAlphaToOne ? 1 : this.alphasCumprod[0]!;
  }

  /** Builds a DDIM scheduler from any diffusers scheduler config (snake_case keys; camelCase accepted; lib/sched/config.ts). */
  static fromConfig(cfg: object): DDIMScheduler {
    return DDIMScheduler.fromParsed(parseSchedulerConfig(cfg));
  }

  /** Over a config parseSchedulerConfig returned. */
  static fromParsed(cfg: SchedulerConfig): DDIMScheduler {
    return new DDIMScheduler({ ...cfg, timestepSpacing: cfg.timestepSpacing ?? 'leading' }, cfg.timestepSpacing);
  }

  /** Reads a `scheduler_config.json` (E_NOT_FOUND when absent; a bad value is E_MODEL_FORMAT naming the file). */
  static fromConfigFile(path: string): DDIMScheduler {
    return DDIMScheduler.fromParsed(parseSchedulerConfig(readJsonFile(path), path));
  }

  get numTrainTimesteps(): number {
    return this.config.numTrainTimesteps;
  }

  /**
   * The timesteps of a `steps`-step schedule, in the order they are run (diffusers'
   * set_timesteps). "trailing" reproduces numpy's arange, including its length. Throws
   * E_ARGUMENT when a timestep would fall outside 0..numTrainTimesteps−1 (e.g. "leading" with
   * steps_offset 1 and steps = numTrainTimesteps, where diffusers would index past the table).
   */
  timesteps(steps: number): Int32Array {
    const n = this.config.numTrainTimesteps;
    checkSteps(steps, n);
    let ts: number[];
    switch (this.config.timestepSpacing) {
      case 'leading': {
        const ratio = Math.floor(n / steps);
        ts = [];
        for (let i = steps - 1; i >= 0; i--) ts.push(i * ratio + this.config.stepsOffset);
        break;
      }
      case 'linspace': {
        // np.linspace(0, n - 1, steps).round()[::-1]
        const vals: number[] = [];
        if (steps === 1) vals.push(0);
        else {
          const step = (n - 1) / (steps - 1);
          for (let i = 0; i < steps; i++) vals.push(i * step);
          vals[steps - 1] = n - 1;
        }
        ts = vals.map(roundHalfEven).reverse();
        break;
      }
      case 'trailing': {
        // np.round(np.arange(n, 0, -n / steps)) - 1
        const delta = -n / steps;
        const len = Math.max(0, Math.ceil((0 - n) / delta));
        const d = n + delta - n; // numpy's fill uses buffer[1] - buffer[0]
        ts = [];
        for (let i = 0; i < len; i++) ts.push(roundHalfEven(i === 0 ? n : i === 1 ? n + delta : n + i * d) - 1);
        break;
      }
    }
    for (const t of ts) {
      if (t < 0 || t >= n) throw invalid('steps', `a count whose schedule stays in 0..${n - 1} with this scheduler config (${steps} steps give timestep ${t})`, steps);
    }
    return Int32Array.from(ts);
  }

  private checkT(t: unknown): number {
    const n = this.config.numTrainTimesteps;
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= n) {
      throw invalid('timestep', `an integer in [0, ${n - 1}]`, t);
    }
    return t;
  }

  /** Scalar coefficients of the DDIM step from timestep `t` of a `steps`-step schedule. */
  stepCoefficients(t: number, steps: number, eta: number): DDIMCoefficients {
    this.checkT(t);
    checkSteps(steps, this.config.numTrainTimesteps);
    checkEta(eta);
    const prevT = t - Math.floor(this.config.numTrainTimesteps / steps);
    const aT = this.alphasCumprod[t]!;
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT]! : this.finalAlphaCumprod;
    const betaT = f32(1 - aT);
    const betaPrev = f32(1 - aPrev);
    const variance = f32(f32(betaPrev / betaT) * f32(1 - f32(aT / aPrev)));
    const sigma = f32(f32(eta) * f32(Math.sqrt(variance)));
    // Mathematically ≥ 0 for eta ≤ 1; clamped so that eta > 1 does not give NaN.
    const dir2 = f32(f32(1 - aPrev) - f32(sigma * sigma));
    return {
      aT,
      aPrev,
      sigma,
      prevT,
      sqrtAT: f32(Math.sqrt(aT)),
      sqrtBT: f32(Math.sqrt(betaT)),
      sqrtAPrev: f32(Math.sqrt(aPrev)),
      dirCoef: f32(Math.sqrt(Math.max(0, dir2))),
    };
  }

  /**
   * DDIM as a {@link Sampler}: its step as SAMPLER_STEP coefficients (x0 clamped when clip_sample;
   * diffusers' pipelines never pass use_clipped_model_output, so eps stays the model's).
   */
  sampler(steps: number, eta = 0): Sampler {
    const timesteps = [...this.timesteps(steps)];
    checkEta(eta);
    const clip = this.config.clipSample ? this.config.clipSampleRange : 0;
    return {
      name: 'ddim',
      timesteps,
      initNoiseSigma: 1,
      stochastic: eta > 0,
      coefficients: (i) => {
        const c = this.stepCoefficients(timesteps[i]!, steps, eta);
        const p = vpPrediction(this.config.predictionType, c.sqrtAT, c.sqrtBT);
        return fold(p, { clip, ux: 0, u0: c.sqrtAPrev, ue: c.dirCoef, pn: c.sigma });
      },
      noiseScales: (i) => {
        const a = this.alphasCumprod[timesteps[i]!]!;
        return { a: Math.sqrt(a), b: Math.sqrt(1 - a) };
      },
    };
  }

  /** One DDIM step (diffusers' DDIMScheduler.step) from timestep `t` to `t − numTrain//steps`. */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, opts: DDIMStepOptions): DDIMStepResult {
    if (!(modelOutput instanceof Float32Array) || !(sample instanceof Float32Array)) {
      throw invalid('modelOutput and sample', 'Float32Arrays', shown(`${describe(modelOutput)} and ${describe(sample)}`));
    }
    if (modelOutput.length !== sample.length) {
      throw new IdforgeError('E_SHAPE', `modelOutput has ${modelOutput.length} elements, sample ${sample.length}`);
    }
    if (opts === null || typeof opts !== 'object') throw invalid('step options', 'given ({ steps })', opts);
    const eta = checkEta(opts.eta ?? 0);
    const c = this.stepCoefficients(t, opts.steps, eta);
    let noise: Float32Array | undefined;
    if (eta > 0) {
      if (opts.noise !== undefined) {
        if (!(opts.noise instanceof Float32Array)) throw invalid('noise', 'a Float32Array', opts.noise);
        if (opts.noise.length !== sample.length) {
          throw new IdforgeError('E_SHAPE', `noise has ${opts.noise.length} elements, sample ${sample.length}`);
        }
        noise = opts.noise;
      } else if (typeof opts.rng === 'function') {
        noise = new Float32Array(sample.length);
        for (let i = 0; i < noise.length; i++) noise[i] = opts.rng();
      } else {
        throw invalid('noise or rng', 'given when eta > 0', undefined);
      }
    }
    const prevSample = new Float32Array(sample.length);
    const predOriginal = new Float32Array(sample.length);
    ddimStepInto(prevSample, predOriginal, modelOutput, sample, c, {
      predictionType: this.config.predictionType,
      clipRange: this.config.clipSample ? this.config.clipSampleRange : undefined,
      useClippedModelOutput: opts.useClippedModelOutput === true,
      noise,
    });
    return { prevSample, predOriginal };
  }
}
