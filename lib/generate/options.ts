// generate()'s options and result, and the one resolver that turns the options into a complete
// plan: after resolveGenerate nothing reads the caller's options (lib/engine.ts runs the plan
// through the stages in lib/generate/). The served job (lib/serve/jobs.ts) goes through it too.
import { selectLayers, selectSteps, type AttentionCapture, type CaptureAttentionOptions } from '../attention.js';
import { Identity } from '../identity/identity.js';
import { checkPrompt, MAX_GUIDANCE } from '../io/bounds.js';
import { decodeImage, type RawImage } from '../io/image.js';
import { regionBoxes, type Box } from '../regions.js';
import type { SdRuntime } from '../runtime/sd.js';
import { badSampler, isSamplerName, type Sampler, type SamplerName } from '../sched/sampler.js';
import { makeSampler } from '../sched/samplers.js';
import { Tensor } from '../tensor.js';
import { imageSide, imageTensorShape, integer, invalid, nonNegative, numberIn, seedOf, shown } from '../validate.js';

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
  /** 'ddim' (default), 'dpmpp-2m', 'dpmpp-2m-karras', 'euler', 'euler-a' or 'lcm' (the README says which to use when). */
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
  /**
   * Where each identity goes: identity name → box [x0, y0, x1, y1) in fractions of the image. The
   * identity's slot tokens attend only from inside its box (the conditional branch; an identity
   * without a box is unconfined). E.g. `{ ann: [0, 0, 0.5, 1], bob: [0.5, 0, 1, 1] }`.
   */
  regions?: Record<string, Box> | Map<string, Box>;
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

/** What resolving needs to know of the model (an SdRuntime is one). */
export type GenerateModel = Pick<SdRuntime, 'configs' | 'sizeMultiple' | 'latentFactor' | 'latentMultiple' | 'crossAttentionLayers'>;

/** The attention capture as resolved: these layers at these (1-based) steps. */
export interface CapturePlan {
  layers: readonly string[];
  steps: ReadonlySet<number>;
  /** Average the heads. */
  reduce: boolean;
}

/** A generation, complete and checked: what every stage reads instead of the options. */
export interface GeneratePlan {
  readonly prompt: string;
  readonly negativePrompt: string;
  readonly identities: Map<string, Identity> | undefined;
  readonly identityScale: number;
  /** Identity name → its box (lib/regions.ts; empty: no regions). */
  readonly regions: ReadonlyMap<string, Box>;
  readonly width: number;
  readonly height: number;
  readonly numImages: number;
  /** The batch's latents [numImages, C, h, w]. */
  readonly latentShape: readonly [number, number, number, number];
  readonly seed: number;
  readonly guidanceScale: number;
  /** Classifier-free guidance runs (guidanceScale > 1): each image then has an unconditional row too. */
  readonly guided: boolean;
  readonly sampler: Sampler;
  /** The schedule index of the first step run (image to image starts part way in). */
  readonly start: number;
  /** The timesteps run, in order. */
  readonly timesteps: readonly number[];
  /** Image to image: the init image (width × height) and how much of the schedule runs. */
  readonly init: RawImage | undefined;
  readonly strength: number;
  /** Given initial noise, [numImages·C·h·w]. */
  readonly latents: Float32Array | undefined;
  /** Given per-step noise of a stochastic sampler, [steps run·numImages·C·h·w]. */
  readonly stepNoise: Float32Array | undefined;
  readonly capture: CapturePlan | undefined;
  readonly nonFinite: 'error' | 'warn';
  readonly onProgress: ((p: ProgressInfo) => void) | undefined;
  readonly signal: AbortSignal | undefined;
  /** Notes from resolving (e.g. stepNoise that a deterministic sampler ignores). */
  readonly warnings: string[];
}

/** `identity` or `identities` as one name → Identity map (undefined when neither is given). */
export function identityMap(o: { identity?: Identity; identities?: Record<string, Identity> | Map<string, Identity> }): Map<string, Identity> | undefined {
  if (o.identity !== undefined && o.identities !== undefined) throw invalid('identities', 'left out when identity is given (pass one or the other)');
  if (o.identity !== undefined) {
    if (!(o.identity instanceof Identity)) throw invalid('identity', 'an Identity', o.identity);
    return new Map([[o.identity.name ?? 'id', o.identity]]);
  }
  if (o.identities === undefined) return undefined;
  const m = o.identities instanceof Map ? o.identities : new Map(Object.entries(o.identities));
  for (const [k, v] of m) if (!(v instanceof Identity)) throw invalid(`identities.${k}`, 'an Identity', v);
  return m;
}

/**
 * The first step image-to-image runs: diffusers' StableDiffusionImg2ImgPipeline.get_timesteps,
 * init_timestep = min(int(steps·strength), steps), start = steps − init_timestep. E_ARGUMENT
 * naming `strength` when that leaves no step.
 */
export function img2imgStart(steps: number, strength: number, scheduled: number): number {
  const init = Math.min(Math.floor(steps * strength), steps);
  const start = Math.max(steps - init, 0);
  if (start >= scheduled)
    throw invalid('strength', `at least ${(1 / steps).toPrecision(3)} with ${steps} steps (int(steps·strength) = ${init} leaves no denoising step), or more steps`, strength);
  return start;
}

/** A tensor option checked to be of exactly `want`'s shape (E_SHAPE naming both). */
function exactShape(v: Tensor, name: string, want: readonly number[], meaning: string): Tensor {
  const s = v.shape;
  if (s.length !== want.length || s.some((d, i) => d !== want[i])) throw invalid(name, `${meaning} = ${JSON.stringify(want)}`, s, { code: 'E_SHAPE' });
  return v;
}

/**
 * generate()'s options with their defaults, checked against the model: every later stage reads
 * the returned plan. Decodes the init image (image to image), builds the sampler, and checks
 * given latents and step noise against the batch and the steps that will run.
 */
export async function resolveGenerate(opts: GenerateOptions, model: GenerateModel): Promise<GeneratePlan> {
  if (!opts || typeof opts.prompt !== 'string') throw invalid('prompt', 'a string (generate needs a prompt)', opts?.prompt);
  const prompt = checkPrompt(opts.prompt, 'prompt'); // huge prompts: a typed error, not a RangeError
  const negativePrompt = checkPrompt(opts.negativePrompt ?? '', 'negativePrompt');
  const init = opts.image !== undefined ? await decodeImage(opts.image, 'image') : undefined;
  const width = imageSide(opts.width ?? init?.width ?? 512, 'width', model.sizeMultiple);
  const height = imageSide(opts.height ?? init?.height ?? 512, 'height', model.sizeMultiple);
  if (init && (init.width !== width || init.height !== height))
    throw invalid('width x height', `the image's size ${init.width}x${init.height} (resize the image or leave width and height out)`, shown(`${width}x${height}`), { code: 'E_SHAPE' });
  const steps = integer(opts.steps ?? 50, 'steps', 1, 1000);
  const guidanceScale = numberIn(opts.guidanceScale ?? 7.5, 'guidanceScale', 0, MAX_GUIDANCE);
  const eta = numberIn(opts.eta ?? 0, 'eta', 0, 1);
  const seed = seedOf(opts.seed);
  if (opts.latents != null && !(opts.latents instanceof Tensor)) throw invalid('latents', 'a Tensor', opts.latents); // null = absent
  const badLatents = opts.latents ? opts.latents.countNonFinite() : 0; // counted where the tensor lives
  if (badLatents) throw invalid('latents', 'finite', shown(`${badLatents} NaN/Inf value(s)`));
  if (opts.nonFinite != null && opts.nonFinite !== 'error' && opts.nonFinite !== 'warn') throw invalid('nonFinite', "'error' or 'warn'", opts.nonFinite);
  const cap = opts.captureAttention;
  if (cap?.reduce !== undefined && cap.reduce !== 'mean') throw invalid('captureAttention.reduce', "'mean' or left out", cap.reduce);
  const identityScale = nonNegative(opts.identityScale ?? 1, 'identityScale');
  const samplerName = opts.sampler ?? 'ddim';
  if (!isSamplerName(samplerName)) throw badSampler(samplerName);
  const numImages = integer(opts.numImages ?? 1, 'numImages', 1, 64);
  // Compared without adding: seed + numImages − 1 rounds back to a safe value near 2^53.
  if (seed > Number.MAX_SAFE_INTEGER - (numImages - 1)) throw invalid('seed + numImages − 1', 'a safe integer (image i is seeded with seed + i)', shown(`${BigInt(seed) + BigInt(numImages - 1)}`));
  if (opts.stepNoise !== undefined && !(opts.stepNoise instanceof Tensor)) throw invalid('stepNoise', 'a Tensor [steps, numImages, C, h, w]', opts.stepNoise);
  if (opts.strength !== undefined && !init) throw invalid('strength', 'left out without an image (it applies to image to image: pass an image too)');
  const strength = numberIn(opts.strength ?? (init ? 0.8 : 1), 'strength', 0, 1, { above: true });
  const identities = identityMap(opts);
  const regions = regionBoxes(opts.regions);

  const ch = model.configs.unet.inChannels;
  const h = height / model.latentFactor;
  const w = width / model.latentFactor;
  const latentShape = [numImages, ch, h, w] as const;
  // LCM builds its image-to-image schedule from the strength (all steps run); the others start part way in.
  const sampler = makeSampler(samplerName, model.configs.scheduler, steps, { eta, ...(init ? { strength } : {}) });
  const start = init && !sampler.strengthInSchedule ? img2imgStart(steps, strength, sampler.timesteps.length) : 0;
  const timesteps = sampler.timesteps.slice(start);
  const warnings: string[] = [];
  let latents: Float32Array | undefined;
  if (opts.latents) {
    imageTensorShape(opts.latents, 'latents', ch, model.latentMultiple);
    latents = exactShape(opts.latents, 'latents', latentShape, `[numImages, C, h, w] for ${numImages} image(s) of ${width}x${height}`).toFloat32();
  }
  let stepNoise: Float32Array | undefined;
  if (opts.stepNoise !== undefined) {
    exactShape(opts.stepNoise, 'stepNoise', [timesteps.length, ...latentShape], '[steps run, numImages, C, h, w]');
    if (sampler.stochastic) stepNoise = opts.stepNoise.toFloat32();
    else warnings.push(`stepNoise is ignored: sampler ${samplerName}${samplerName === 'ddim' ? ' with eta 0' : ''} adds no noise`);
  }
  const levels = model.configs.unet.blockOutChannels.length;
  const capture = cap
    ? { layers: selectLayers(cap.layers, model.crossAttentionLayers, h, levels), steps: selectSteps(cap.steps, timesteps.length), reduce: cap.reduce === 'mean' }
    : undefined;
  return {
    prompt, negativePrompt, identities, identityScale, regions, width, height, numImages, latentShape, seed, guidanceScale,
    guided: guidanceScale > 1, sampler, start, timesteps, init, strength, latents, stepNoise, capture,
    nonFinite: opts.nonFinite === 'warn' ? 'warn' : 'error', onProgress: opts.onProgress, signal: opts.signal, warnings,
  };
}
