// The option and result types of the public API (Engine, the runtime, SeFi-IDE learning), in a
// module of types only: lib/validate.ts checks them, the pipelines consume them, and none of those
// has to import another to name them.
import type { AttentionCapture, CaptureAttentionOptions } from './attention.js';
import type { FaceChoiceOptions } from './identity/face.js';
import type { Identity } from './identity/identity.js';
import type { ConfigOverrides } from './io/configs.js';
import type { RawImage } from './io/image.js';
import type { Region } from './regions.js';
import type { SamplerName } from './sched/sampler.js';
import type { Tensor } from './tensor.js';

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
  /**
   * A VAE in place of the model's: a diffusers VAE folder (AutoencoderKL, or AutoencoderTiny: TAESD,
   * a fast decoder whose scaling factor is 1), or the original taesd_decoder.safetensors (+ encoder).
   */
  vae?: string;
  /** A VAE (typically TAESD) that decodes a small preview of each step's denoised estimate for onProgress. */
  previewVae?: string;
}

/** One LoRA file of Engine.setLoras. */
export interface LoraOptions {
  /** A .safetensors LoRA (kohya / A1111 naming, or diffusers / PEFT). */
  path: string;
  /** Its strength: W' = W + scale·(alpha/rank)·up@down (default 1; negative subtracts the style). */
  scale?: number;
}

export interface SetLorasOptions {
  /**
   * true (default): a key naming no module of the model, or a shape that does not fit, is
   * E_MODEL_FORMAT. false: those modules are skipped and reported in the result's warnings.
   */
  strict?: boolean;
}

export interface ProgressInfo {
  step: number;
  steps: number;
  timestep: number;
  elapsedMs: number;
  /** The identity stage whose K/V words this step used (0 without an identity). */
  stage: number;
  /**
   * A float32 CPU copy of the latents after this step, [numImages, C, h, w]: a download, made
   * only when called, and only during the callback.
   */
  latents(): Tensor;
  /** Present only on the reports made inside a long step (about every second): the fraction of step `step + 1` done. */
  fraction?: number;
  /**
   * With a preview VAE (LoadOptions.previewVae), on the report after each step: a small image
   * (longer side ≤ 256 px) of each image's current denoised estimate, one per image.
   */
  preview?: RawImage[];
}

/** Engine.predictNoise's options. */
export interface NoiseOptions {
  /** Token indices of the context confined to boxes of the image (fractions [x0, y0, x1, y1)), on every row. */
  regions?: Region[];
}

export interface GenerateOptions {
  prompt: string;
  negativePrompt?: string;
  width?: number;
  height?: number;
  steps?: number;
  guidanceScale?: number;
  eta?: number;
  /**
   * Seeds the documented generator (lib/sched/random.ts): image i draws its initial noise, then
   * (image to image) its VAE posterior sample, then each step's noise from seed + i.
   */
  seed?: number;
  /** 'ddim' (default), 'dpmpp-2m', 'dpmpp-2m-karras', 'euler' or 'euler-a' (the README says which to use when). */
  sampler?: SamplerName;
  /** Images per call, run as one batch (default 1); image i equals a one-image call with seed + i. */
  numImages?: number;
  /** Initial noise [numImages, C, height/8, width/8] (multiplied by the sampler's init_noise_sigma); bypasses the seed for it. */
  latents?: Tensor;
  /** The per-step noise of a stochastic sampler (euler-a, ddim with eta > 0): [steps run, numImages, C, h, w]. */
  stepNoise?: Tensor;
  /** Image to image: the init image (a RawImage, a file path or an encoded Buffer), width × height. */
  image?: RawImage | string | Buffer;
  /** How much of the schedule image to image runs, (0, 1] (default 0.8): int(steps·strength) steps, from the matching noise level. */
  strength?: number;
  onProgress?: (p: ProgressInfo) => void;
  signal?: AbortSignal;
  /** NaN/Inf latents after a step: 'error' (default, E_NUMERIC) or 'warn' (one warning in result.warnings). */
  nonFinite?: 'error' | 'warn';
  /** The identity that `<id>` in the prompt names. */
  identity?: Identity;
  /** Several identities, named in the prompt as `<id:name>`. */
  identities?: Record<string, Identity> | Map<string, Identity>;
  /** Return cross-attention probabilities (result.attention) for the chosen layers and steps. */
  captureAttention?: CaptureAttentionOptions;
  /**
   * Identity strength: each injected word vector becomes p + s·(v − p), p the token embedding of
   * "person". 1 (default) is the identity as learned/encoded, 0 a generic person, > 1 exaggerates.
   */
  identityScale?: number;
}

export interface TextOptions {
  identity?: Identity;
  identities?: Record<string, Identity> | Map<string, Identity>;
  /** Which stage's words to inject (SeFi-IDE identities have 5). */
  stage?: number;
  /** Inject the key ('k', default) or value ('v') words. */
  kind?: 'k' | 'v';
}

export interface GenerateResult {
  /** numImages images. */
  images: RawImage[];
  /** Final latents [numImages, C, h, w] (before the VAE scaling). */
  latents: Tensor;
  /** The decoded images in [0, 1], [numImages, 3, H, W] float32 on the CPU. */
  pixels: Tensor;
  warnings: string[];
  /** Present when captureAttention was given. */
  attention?: AttentionCapture;
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
