// A diffusers scheduler config (scheduler/scheduler_config.json), parsed once: the model loader,
// every sampler (DDIM, DPM-Solver++, Euler, LCM) and DDIMScheduler read this one result.
//
// Keys are diffusers' snake_case (camelCase is accepted: a parsed config parses to itself). A key
// left out takes the value diffusers gives it, which is the __init__ default of the scheduler
// class that reads the config: DDIMScheduler's (linear betas 1e-4 → 0.02, clip_sample and
// set_alpha_to_one true, steps_offset 0) for every key the DDIM family shares — except
// set_alpha_to_one of a config naming PNDMScheduler (SD 1.x ships one): diffusers builds that
// PNDMScheduler first (default False) and a DDIM from_config then reads its False. A
// timestep_spacing left out stays null: each sampler applies its own default (DDIM "leading",
// DPM-Solver and Euler "linspace"). Dynamic thresholding is refused.
import { IdforgeError } from '../errors.js';
import { describe, invalid } from '../validate.js';

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'leading' | 'trailing' | 'linspace';

export interface SchedulerConfig {
  /** _class_name, e.g. "PNDMScheduler" (default "DDIMScheduler"). */
  className: string;
  numTrainTimesteps: number;
  betaStart: number;
  betaEnd: number;
  betaSchedule: BetaSchedule;
  trainedBetas: number[] | null;
  setAlphaToOne: boolean;
  stepsOffset: number;
  clipSample: boolean;
  clipSampleRange: number;
  predictionType: PredictionType;
  /** null when the config names none: each sampler's default applies. */
  timestepSpacing: TimestepSpacing | null;
  rescaleBetasZeroSnr: boolean;
  /** Euler's σ interpolation (only 'linear' is supported there; the other samplers ignore it). */
  interpolationType: string;
  /** LCMScheduler's distillation steps and timestep scaling (null when the config names none: 50 and 10). */
  originalInferenceSteps: number | null;
  timestepScaling: number | null;
}

/** diffusers' DDIMScheduler.__init__ defaults (set_alpha_to_one: see the header). */
const DDIM_DEFAULTS = {
  className: 'DDIMScheduler', numTrainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, betaSchedule: 'linear', trainedBetas: null,
  setAlphaToOne: true, stepsOffset: 0, clipSample: true, clipSampleRange: 1, predictionType: 'epsilon', timestepSpacing: null,
  rescaleBetasZeroSnr: false, interpolationType: 'linear', originalInferenceSteps: null, timestepScaling: null,
} as const satisfies SchedulerConfig;

/** A field's key in diffusers' JSON. */
const keyOf = (k: string) => (k === 'className' ? '_class_name' : k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));

/**
 * The config with diffusers' defaults, every value checked. `file` names the config file the
 * object was read from (a bad value is then E_MODEL_FORMAT naming it); without it the object is
 * an argument (E_ARGUMENT naming the key).
 */
export function parseSchedulerConfig(raw: unknown, file?: string): SchedulerConfig {
  const fail = (key: string, want: string, got: unknown): IdforgeError =>
    file ? new IdforgeError('E_MODEL_FORMAT', `${file}: "${key}" must be ${want}, got ${describe(got)}`) : invalid(`scheduler config ${key}`, want, got);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw file ? fail('(the file)', 'a JSON object', raw) : invalid('scheduler config', 'an object', raw);
  const cfg = raw as Record<string, unknown>;
  /** The value under the snake_case key, else the camelCase one; null counts as absent. */
  const get = (camel: keyof SchedulerConfig | 'thresholding'): unknown => cfg[keyOf(camel)] ?? cfg[camel] ?? undefined;
  const num = (k: keyof SchedulerConfig, dflt: number, ok: (v: number) => boolean, want: string): number => {
    const v = get(k) ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw fail(keyOf(k), want, v);
    return v;
  };
  const bool = (k: keyof SchedulerConfig, dflt: boolean): boolean => {
    const v = get(k) ?? dflt;
    if (typeof v !== 'boolean') throw fail(keyOf(k), 'true or false', v);
    return v;
  };
  const choice = <T extends string>(k: keyof SchedulerConfig, dflt: T | null, allowed: readonly T[]): T | null => {
    const v = get(k) ?? dflt;
    if (v !== null && (typeof v !== 'string' || !allowed.includes(v as T))) throw fail(keyOf(k), `one of ${allowed.join(', ')}`, v);
    return v as T | null;
  };
  const str = (k: keyof SchedulerConfig, dflt: string): string => {
    const v = get(k) ?? dflt;
    if (typeof v !== 'string') throw fail(keyOf(k), 'a string', v);
    return v;
  };
  const className = str('className', DDIM_DEFAULTS.className);
  if (get('thresholding') === true) throw fail('thresholding', 'false (dynamic thresholding is not supported)', true);
  const numTrainTimesteps = num('numTrainTimesteps', DDIM_DEFAULTS.numTrainTimesteps, (v) => Number.isInteger(v) && v >= 1 && v <= 1_000_000, 'an integer in [1, 1000000]');
  const tb = get('trainedBetas');
  if (tb !== undefined && (!Array.isArray(tb) || !tb.every((b) => typeof b === 'number' && Number.isFinite(b)) || tb.length !== numTrainTimesteps))
    throw fail('trained_betas', `null or num_train_timesteps (${numTrainTimesteps}) finite numbers`, tb);
  const unit = (v: number) => v >= 0 && v < 1;
  return {
    className, numTrainTimesteps,
    betaStart: num('betaStart', DDIM_DEFAULTS.betaStart, unit, 'a number in [0, 1)'),
    betaEnd: num('betaEnd', DDIM_DEFAULTS.betaEnd, unit, 'a number in [0, 1)'),
    betaSchedule: choice('betaSchedule', DDIM_DEFAULTS.betaSchedule, ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const)!,
    trainedBetas: tb === undefined ? null : [...(tb as number[])],
    setAlphaToOne: bool('setAlphaToOne', className !== 'PNDMScheduler'),
    stepsOffset: num('stepsOffset', DDIM_DEFAULTS.stepsOffset, (v) => Number.isInteger(v) && v >= 0, 'a non-negative integer'),
    clipSample: bool('clipSample', DDIM_DEFAULTS.clipSample),
    clipSampleRange: num('clipSampleRange', DDIM_DEFAULTS.clipSampleRange, (v) => v > 0, 'a positive number'),
    predictionType: choice('predictionType', DDIM_DEFAULTS.predictionType, ['epsilon', 'v_prediction', 'sample'] as const)!,
    timestepSpacing: choice('timestepSpacing', null, ['leading', 'trailing', 'linspace'] as const),
    rescaleBetasZeroSnr: bool('rescaleBetasZeroSnr', DDIM_DEFAULTS.rescaleBetasZeroSnr),
    interpolationType: str('interpolationType', DDIM_DEFAULTS.interpolationType),
    originalInferenceSteps: get('originalInferenceSteps') === undefined ? null : num('originalInferenceSteps', 50, (v) => Number.isInteger(v) && v >= 1 && v <= numTrainTimesteps, `an integer in [1, ${numTrainTimesteps}]`),
    timestepScaling: get('timestepScaling') === undefined ? null : num('timestepScaling', 10, (v) => v > 0, 'a positive number'),
  };
}
