// SeFi-IDE learning's options and progress report, and the one resolver of those options
// (lib/learn/learn.ts IdentityLearner.learn reads the result).
import type { FaceChoiceOptions } from '../identity/face.js';
import { bool, integer, invalid, nonNegative, options, seedOf, text } from '../validate.js';

export interface LearnProgress {
  step: number;
  steps: number;
  loss: number;
  lossDiff: number;
  lossAtt: number;
  elapsedMs: number;
}

export interface AugmentOptions {
  flip?: boolean;
  jitter?: boolean;
  /** [min, max] of the random scale (default [0.1, 1]); false disables it. */
  scale?: false | [number, number];
}

/** SeFi-IDE learning (lib/learn/learn.ts); defaults in resolveLearn below. */
export interface LearnOptions {
  steps?: number;
  lr?: number;
  lambda?: number;
  stages?: number;
  /** The word whose embedding initialises every token, and that the reference prompts use. */
  init?: string;
  templates?: readonly string[];
  /** true (default) for all augmentations, false for none, or a selection. */
  augment?: boolean | AugmentOptions;
  seed?: number;
  name?: string;
  /**
   * The crop: a square around the detected face (the default when `init` names a person; the
   * options pick the face and what to do without one: E_NO_FACE by default), or false for the
   * photo's centre square (the default for other init words: SeFi-IDE learns a dog the same way).
   */
  face?: false | FaceChoiceOptions;
  /** Receives preparation warnings (several faces, the no-face fallback). */
  onWarning?: (message: string) => void;
  onProgress?: (p: LearnProgress) => void;
  /**
   * Stops between steps (E_ABORTED). With `checkpoint`, a checkpoint of the steps done is written
   * first, so that a later call continues from there.
   */
  signal?: AbortSignal;
  /**
   * A folder that makes learning resumable. <folder>/checkpoint/ is written every
   * `checkpointEvery` steps, at the end and on an abort: the generator's weights
   * (generator.safetensors), Adam's state, the step (state.json) and identity.safetensors, the
   * identity learned so far (Identity.load reads it). <folder>/cache/ keeps the encoded images.
   * A later call with the same folder, photo and options continues from the checkpoint (without
   * `seed` it takes the checkpoint's): N steps, then a call with `steps: N + M`, learn exactly
   * what one call of N + M steps learns. A checkpoint of other options is E_ARGUMENT.
   */
  checkpoint?: string;
  /** Steps between checkpoints (default 100). */
  checkpointEvery?: number;
  /** Continue from the folder's checkpoint when there is one (default true); false starts afresh and replaces it. */
  resume?: boolean;
}

/** The SeFi-IDE learning options with their defaults (lib/learn/learn.ts): what resolveLearn returns. */
export interface ValidLearn {
  steps: number;
  lr: number;
  lambda: number;
  stages: number;
  init: string;
  templates: readonly string[];
  augment: Required<AugmentOptions>;
  seed: number;
  checkpoint: string | undefined;
  checkpointEvery: number;
  resume: boolean;
}

export function resolveLearn(o: LearnOptions, defaultTemplates: readonly string[]): ValidLearn {
  const where = 'learnIdentity';
  options(o, 'options', where);
  const steps = integer(o.steps ?? 1000, 'steps', 1, 1e6, where);
  const lr = nonNegative(o.lr ?? 0.005, 'lr', { positive: true, where });
  const lambda = nonNegative(o.lambda ?? 0.003, 'lambda', { where });
  const stages = integer(o.stages ?? 5, 'stages', 1, 1000, where);
  const init = o.init ?? 'person';
  text(init, 'init', { nonEmpty: true, where });
  const templates = o.templates ?? defaultTemplates;
  if (!Array.isArray(templates) || templates.length === 0) throw invalid('templates', 'a non-empty array of prompts', templates, { where });
  for (const tp of templates)
    if (typeof tp !== 'string' || (tp.match(/<id>/g) ?? []).length !== 1) throw invalid('every template', 'a string with <id> exactly once', tp, { where });
  const a = o.augment ?? true;
  if (typeof a !== 'boolean' && (typeof a !== 'object' || a === null)) throw invalid('augment', 'a boolean or { flip, jitter, scale }', a, { where });
  const ao: AugmentOptions = typeof a === 'object' ? a : {};
  const on = a === true;
  const scale = typeof a === 'object' ? (ao.scale ?? [0.1, 1]) : on ? ([0.1, 1] as [number, number]) : false;
  if (scale !== false && (!Array.isArray(scale) || scale.length !== 2 || !(scale[0] > 0) || !(scale[1] <= 1) || scale[0] > scale[1]))
    throw invalid('augment.scale', '[min, max] with 0 < min ≤ max ≤ 1, or false', scale, { where });
  const augment = { flip: typeof a === 'object' ? ao.flip ?? true : on, jitter: typeof a === 'object' ? ao.jitter ?? true : on, scale };
  if (o.face !== undefined && o.face !== false && (typeof o.face !== 'object' || o.face === null))
    throw invalid('face', 'false or { faceIndex, noFaceFallback, analyzer }', o.face, { where });
  const seed = seedOf(o.seed, where);
  const checkpoint = o.checkpoint === undefined ? undefined : text(o.checkpoint, 'checkpoint', { nonEmpty: true, where });
  const checkpointEvery = integer(o.checkpointEvery ?? 100, 'checkpointEvery', 1, Number.MAX_SAFE_INTEGER, where);
  const resume = bool(o.resume ?? true, 'resume', where);
  return { steps, lr, lambda, stages, init, templates, augment, seed, checkpoint, checkpointEvery, resume };
}
