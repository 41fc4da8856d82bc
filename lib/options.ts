// The option and result types of the public API (Engine, the runtime, SeFi-IDE learning), in a
// module of types only: lib/validate.ts checks them, the pipelines consume them, and none of those
// has to import another to name them.
import type { FaceChoiceOptions } from './identity/face.js';
import type { Identity } from './identity/identity.js';
import type { ConfigOverrides } from './io/configs.js';

/** Where a model runs; one rule for every model idforge loads (lib/runtime/runtime.ts resolveBackend). */
export interface DeviceOptions {
  /** 'auto' (default) takes CUDA when backends().cuda.available, else the CPU. */
  device?: 'auto' | 'cpu' | 'cuda';
  /** Compute precision: float16 on CUDA by default, float32 on the CPU (the only CPU choice). */
  dtype?: 'float32' | 'float16';
}

export interface LoadOptions extends DeviceOptions {
  /** Prefer `*.fp16.safetensors` files in a diffusers folder. */
  variant?: 'fp16';
  /** Pin config values (e.g. for a single-file checkpoint whose sizes cannot be derived). */
  config?: ConfigOverrides;
}

export interface TextOptions {
  identity?: Identity;
  identities?: Record<string, Identity> | Map<string, Identity>;
  /** Which stage's words to inject (SeFi-IDE identities have 5). */
  stage?: number;
  /** Inject the key ('k', default) or value ('v') words. */
  kind?: 'k' | 'v';
}

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

/** SeFi-IDE learning (lib/learn/learn.ts); defaults in lib/validate.ts validateLearn. */
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
  signal?: AbortSignal;
}

/** The measuring settings of evaluate() (lib/eval/evaluate.ts); defaults in lib/validate.ts validateEvaluate. */
export interface EvalSettings {
  /** Prompts with `<id>` where the person goes (default: the 20 of lib/eval/prompts.ts). */
  prompts?: readonly string[];
  /** One image per prompt and seed (default [0]). */
  seeds?: readonly number[];
  steps?: number;
  width?: number;
  height?: number;
  guidanceScale?: number;
  negativePrompt?: string;
  /** The identity's strength in the identity row (default 1). */
  identityScale?: number;
  /** CLIP cosine from which an image's ID similarity counts towards ID(Prompt) (default 0.23, as in SeFi-IDE). */
  threshold?: number;
  /** Also generate the generic-person row (default true when there is an identity). */
  baseline?: boolean;
}
